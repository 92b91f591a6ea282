"""The eager backend's template context: nothing beyond the class's own (`_mask`, `_score`)."""

from __future__ import annotations


def emit(emitter, plan, lowered) -> dict:
    """The eager method reads only the common context."""
    return {"kind": plan.kind}
