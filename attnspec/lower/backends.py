"""The backend registry: name -> module with `supports()` and `lower()`. Adding a backend is a
module here, a template in `attnspec/codegen/templates/` and its tests.

Example:
    >>> import attnspec
    >>> a = attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> [p.backend for p in plans(a.attentions[0]).values()]
    ['eager', 'sdpa', 'flex']
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


# The cost model of `auto`, from the suite's numbers on the H100 (docs/performance.md):
# flash-attn 4 is the fastest kernel wherever it expresses the spec (causal, windows, documents);
# SDPA's own kernels (cuDNN on Hopper) match it for plain causal/full attention and need no
# BlockMask; flex runs everything else, on its FLASH kernel (flash-attn 4's CuTe DSL) where that
# can run the call, else on Triton; a dense-mask SDPA call beats flex's fixed costs only for
# small sizes (Sq·Sk <= 2^20: 0.21 vs 0.27 ms at 1024², 0.08 vs 0.26 ms at 256²); token-group
# patterns go to flex first (one call instead of one per pattern).
AUTO_REASONS = {
    "flash": "flash-attn 4 (else 2) where installed, for fp16/bf16 inputs it accepts",
    "sdpa": "SDPA's fused kernels, no mask tensor",
    "sdpa-small": "SDPA with a dense mask when Sq·Sk <= 2^20",
    "flex": "FlexAttention: FLASH kernel for inference where usable, else Triton",
    "sdpa-dense": "SDPA with a dense mask",
    "eager": "the eager reference",
}


def auto_order(attn: ir.AttentionIR, device: str) -> tuple[str, ...]:
    """What `backend="auto"` tries on `device` ("cpu" or "cuda"), best first; at call time the
    module runs the first that can run the call ("flash" steps aside for float32 inputs or a
    missing library, "sdpa-small" for large sizes).

    On CPU: SDPA where it needs no dense mask, else SDPA with one, else eager (flex has no CPU
    backward)."""
    available = plans(attn)
    sdpa_plan = available.get("sdpa")
    native = sdpa_plan is not None and sdpa_plan.kind in NATIVE_SDPA
    if device != "cuda":
        return ("sdpa",) if sdpa_plan is not None else ("eager",)
    order = ["flash"] if "flash" in available else []
    if native and sdpa_plan.kind == "patterns" and "flex" in available:
        # Token groups: one flex call beats SDPA's call per pattern for training (suite:
        # 3.28 vs 3.96 ms fwd+bwd at 8k; forward 0.95 vs 0.88 ms).
        return (*order, "flex", "sdpa")
    if native:
        return (*order, "sdpa")
    if "flex" in available:
        return (*order, *(["sdpa-small"] if sdpa_plan is not None else []), "flex")
    return (*order, "sdpa-dense" if sdpa_plan is not None else "eager")


def auto(attn: ir.AttentionIR, device: str) -> str:
    """The backend `auto` runs on `device` when every call suits its first choice."""
    first = auto_order(attn, device)[0]
    return {"sdpa-small": "sdpa", "sdpa-dense": "sdpa"}.get(first, first)
