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
from attnspec.lower import eager, flash, flex, sdpa
from attnspec.lower.analysis import analyze
from attnspec.lower.plan import Plan, Reason

BACKENDS = {"eager": eager, "sdpa": sdpa, "flex": flex, "flash": flash}
# SDPA plans that run on SDPA's own kernels, without a dense mask.
NATIVE_SDPA = ("full", "causal", "patterns")


def reasons(attn: ir.AttentionIR) -> dict[str, list[Reason]]:
    """Every backend's reasons it cannot run `attn` (empty list = supported)."""
    analysis = analyze(attn)
    return {name: module.supports(attn, analysis) for name, module in BACKENDS.items()}


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
        return auto(attn, "cpu")
    if requested not in why:
        raise UnsupportedBackendError(
            f"{attn.name}: unknown backend {requested!r}; backends: auto, {', '.join(why)}")
    if why[requested]:
        lines = "\n".join(f"  - {r.format(source_name)}" for r in why[requested])
        raise UnsupportedBackendError(f"{attn.name}: backend {requested!r} cannot run this "
                                      f"spec:\n{lines}")
    return requested


def auto(attn: ir.AttentionIR, device: str) -> str:
    """What `backend="auto"` runs on `device` ("cpu" or "cuda"): SDPA where it needs no dense
    mask, else flex on CUDA (on CPU flex has no backward), else SDPA with a dense mask, else
    eager. (A cost model measured on the GPU is future work.)"""
    available = plans(attn)
    sdpa_plan = available.get("sdpa")
    if sdpa_plan is not None and sdpa_plan.kind in NATIVE_SDPA:
        return "sdpa"
    if device == "cuda" and "flex" in available:
        return "flex"
    return "sdpa" if sdpa_plan is not None else "eager"
