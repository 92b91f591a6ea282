"""The SDPA backend's template context."""

from __future__ import annotations

from attnspec.codegen.text import comment_lines, mask_and_bias_exprs
from attnspec.ir.exprs import free_vars


def emit(emitter, plan, lowered) -> dict:
    """Plan kind, notes, whether the additive bias joins the mask, and the mask's B/H grid
    (B and heads only where the mask or bias reads `b` or `h`)."""
    reads = set().union(*(free_vars(e) for e in mask_and_bias_exprs(emitter.attn)))
    grid = f"{'B' if 'b' in reads else '1'}, {'self.heads' if 'h' in reads else '1'}"
    return {"kind": plan.kind, "summary": comment_lines(plan.notes), "bias": plan.bias,
            "grid": grid}
