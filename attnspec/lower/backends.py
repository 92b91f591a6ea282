"""The backend registry: name -> module with `supports()` and `lower()`. Adding a backend is a
module here, a template in `attnspec/codegen/templates/` and its tests.

Example:
    >>> import attnspec
    >>> a = attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> [p.backend for p in plans(a.attentions[0]).values()]
    ['eager', 'sdpa']
"""

from __future__ import annotations

from attnspec.errors import UnsupportedBackendError
from attnspec.ir import nodes as ir
from attnspec.lower import eager, sdpa
from attnspec.lower.analysis import analyze
from attnspec.lower.plan import Plan, Reason

BACKENDS = {"eager": eager, "sdpa": sdpa}
# Planned backends: named so that a request gets a clear answer instead of "unknown".
NOT_YET = {
    "flex": "FlexAttention code generation is not implemented in this version",
    "flash": "flash-attn code generation is not implemented in this version",
}
# `auto` picks the first supported backend in this order (the cost model is future work).
AUTO_ORDER = ("sdpa", "eager")


def reasons(attn: ir.AttentionIR) -> dict[str, list[Reason]]:
    """Every backend's reasons it cannot run `attn` (empty list = supported)."""
    analysis = analyze(attn)
    out = {name: module.supports(attn, analysis) for name, module in BACKENDS.items()}
    out.update({name: [Reason(why)] for name, why in NOT_YET.items()})
    return out


def plans(attn: ir.AttentionIR) -> dict[str, Plan]:
    """The plan of every backend that supports `attn`."""
    analysis = analyze(attn)
    return {name: module.lower(attn, analysis) for name, module in BACKENDS.items()
            if not module.supports(attn, analysis)}


def resolve(attn: ir.AttentionIR, requested: str, source_name: str = "<spec>") -> str:
    """The backend `requested` ("auto" or a name) selects, or `UnsupportedBackendError` with
    every reason."""
    why = reasons(attn)
    if requested == "auto":
        return next(name for name in AUTO_ORDER if not why[name])
    if requested not in why:
        raise UnsupportedBackendError(
            f"{attn.name}: unknown backend {requested!r}; backends: auto, {', '.join(why)}")
    if why[requested]:
        lines = "\n".join(f"  - {r.format(source_name)}" for r in why[requested])
        raise UnsupportedBackendError(f"{attn.name}: backend {requested!r} cannot run this "
                                      f"spec:\n{lines}")
    return requested
