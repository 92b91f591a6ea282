"""`auto`: which backend a generated module runs, best first, from every backend's plan.

The cost model, from the suite's numbers on the H100 (docs/performance.md): flash-attn 4 is the
fastest kernel wherever it expresses the spec (causal, windows, documents); SDPA's own kernels
(cuDNN on Hopper) match it for plain causal/full attention and need no BlockMask; flex runs
everything else, on its FLASH kernel (flash-attn 4's CuTe DSL) where that can run the call, else
on Triton; a dense-mask SDPA call beats flex's fixed costs only for small sizes (Sq·Sk <= 2^20:
0.21 vs 0.27 ms at 1024², 0.08 vs 0.26 ms at 256²); token-group patterns go to flex first (one
call instead of SDPA's one per pattern). flash's `groups` plan (every pattern in one varlen
call of dense (query run -> gathered keys) segments; issue 15, benchmarks/gpu_tokengroups.py)
and its band with left padding join `auto` once they have passed the GPU matrix (a plan's
`unverified` says why not yet).

A choice is a backend name, or a backend name and a condition after a dash ("sdpa-small":
SDPA only when Sq·Sk <= 2^20; "sdpa-dense": SDPA with its dense mask).

Example:
    >>> from attnspec.backends import plans
    >>> import attnspec
    >>> a = attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> order(plans(a.attentions[0]), "cuda"), order(plans(a.attentions[0]), "cpu")
    (('sdpa',), ('sdpa',))
"""

from __future__ import annotations

from collections.abc import Mapping

from attnspec.backends import eager, edges, flash, flex, sdpa
from attnspec.backends.base import Plan

EAGER, SDPA, FLEX, FLASH, EDGES = (m.BACKEND.name for m in (eager, sdpa, flex, flash, edges))
SDPA_SMALL, SDPA_DENSE = f"{SDPA}-small", f"{SDPA}-dense"
FLEX_SMALL = f"{FLEX}-small"

# Why each choice stands where it does (`attnspec explain`).
REASONS = {
    FLASH: "flash-attn 4 (else 2) where installed, for fp16/bf16 inputs it accepts",
    SDPA: "SDPA's fused kernels, no mask tensor",
    SDPA_SMALL: "SDPA with a dense mask when Sq·Sk <= 2^20",
    FLEX: "FlexAttention: FLASH kernel for inference where usable, else Triton",
    FLEX_SMALL: "FlexAttention when Sq·Sk <= 2^22 (graphs: its dense edge tables grow as N²)",
    SDPA_DENSE: "SDPA with a dense mask",
    EDGES: "the edge list: O(E) memory, per-edge pipeline (no [Sq, Sk] tables)",
    EAGER: "the eager reference",
}


def order(available: Mapping[str, Plan], device: str) -> tuple[str, ...]:
    """What `backend="auto"` tries on `device` ("cpu" or "cuda"), best first; at call time the
    module runs the first that can run the call ("flash" steps aside for float32 inputs or a
    missing library, "sdpa-small" for large sizes).

    On CPU: SDPA (with a dense mask where it needs one), else eager (flex has no CPU backward)."""
    sdpa_plan = available.get(SDPA)
    if EDGES in available:
        # Graphs: every other backend builds dense [Sq, Sk] edge tables (O(N²) memory; flex ran
        # out of memory from 65k nodes on the H200, and its backward serialises on the learned
        # tables' atomics: 377 ms vs 16 ms for a plain edge list at 8k nodes, fwd+bwd). On CUDA
        # flex keeps small graphs (its fused kernel, verified on the GPU matrix) and the edge
        # list takes the rest, and every call flex refuses, instead of eager's dense scores.
        return (FLEX_SMALL, EDGES) if device == "cuda" and FLEX in available else (EDGES,)
    if device != "cuda":
        return (SDPA,) if sdpa_plan is not None else (EAGER,)
    if available[EAGER].kind == "decode":
        # Decoding: flash-attn 4 and flex read the cache in place (seqused_k / page_table, a
        # BlockMask over the pool) and should lead. Both passed the GPU matrix's decode cases
        # (H100, 2026-12-07) but neither is measured yet (benchmarks/gpu_decode.py): until
        # then auto runs SDPA's dense gather, and backend="flash"/"flex" run them on request.
        return (SDPA,) if SDPA in available else (EAGER,)
    native = sdpa_plan is not None and sdpa_plan.native
    # flash first wherever it has a plan: its call-time checks (dtype, library, head dims, the
    # backward's head-dim floor, left padding under a band) step aside to the next choice.
    first = [FLASH] if FLASH in available and not available[FLASH].unverified else []
    if native and sdpa_plan.kind == "patterns" and FLEX in available:
        # Token groups: one flex call beats SDPA's call per pattern for training (suite:
        # 3.28 vs 3.96 ms fwd+bwd at 8k; forward 0.95 vs 0.88 ms).
        return (*first, FLEX, SDPA)
    if native:
        return (*first, SDPA)
    if FLEX in available:
        # flex refuses half-precision training of learned score tables and training with
        # dropout: SDPA's dense mask (else eager, where the loop ends) takes those calls.
        refuses = available[FLEX].tables or available[FLEX].dropout
        after = [SDPA_DENSE] if sdpa_plan is not None and refuses else []
        return (*first, *([SDPA_SMALL] if sdpa_plan is not None else []), FLEX, *after)
    return (*first, SDPA_DENSE if sdpa_plan is not None else EAGER)


def cp_order(available: Mapping[str, Plan], device: str) -> tuple[str, ...]:
    """What `backend="auto"` tries under context parallelism, best first, among the backends
    that run the spec under it (`available`). Each rank attends its rows to all S keys: on CUDA
    flex first (its BlockMask skips masked tiles; SDPA would need a dense [rows, S] mask for
    any mask, is_causal included), then SDPA; on CPU as without it (SDPA, or the edge list for
    graphs). Not measured on GPUs yet (a separate issue): this is the memory argument."""
    if device == "cuda":
        preferred = (FLEX, SDPA, EDGES, EAGER)
    else:
        preferred = (EDGES, SDPA, EAGER) if EDGES in available else (SDPA, EAGER)
    return tuple(name for name in preferred if name in available)


def first_backend(choices: tuple[str, ...]) -> str:
    """The backend of the first choice ("sdpa-small" -> "sdpa")."""
    return backend_of(choices[0])


def backend_of(choice: str) -> str:
    """The backend a choice runs.

    >>> backend_of("sdpa-dense"), backend_of("flex")
    ('sdpa', 'flex')
    """
    return choice.split("-")[0]
