"""The context-parallel cases (tests/test_context_parallel.py): each runs sharded in every rank
of a gloo group (tests/cp_worker.py) and whole in one process with the eager backend; both
build the same module and inputs from the case and a seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch

import attnspec

SPECS = Path(__file__).resolve().parent.parent / "specs"
B = 2
DTYPE = torch.float64


@dataclass(frozen=True)
class Case:
    """One spec under context parallelism: `backends` run it (flex forward only: no CPU
    backward), under each of `balances`."""

    name: str
    spec: str  # a file under specs/ or spec text
    cls: str
    seq: int
    backends: tuple[str, ...]
    balances: tuple[str, ...] = ("head_tail",)
    overrides: dict = field(default_factory=dict)
    inputs: str = ""  # which call-time inputs to make: "doc", "graph", "pos"
    batch: int = B


CAUSAL = "attention Causal {\n heads = 4\n head_dim = 8\n mask causal\n}"
WINDOW_GQA = ("attention WindowGQA {\n heads = 4\n kv_heads = 2\n head_dim = 8\n"
              " mask sliding_window(5)\n}")
SINUSOIDAL = ("attention Sinusoidal {\n dim = 16\n heads = 2\n mask causal\n"
              " position sinusoidal\n}")
LEARNED = ("attention Learned {\n dim = 16\n heads = 2\n kv_heads = 1\n qkv_bias = true\n"
           " position learned(max_len = 40)\n}")

CASES = (
    Case("causal", CAUSAL, "Causal", 21, ("eager", "sdpa", "flex"), ("head_tail", "none")),
    Case("window_gqa", WINDOW_GQA, "WindowGQA", 19, ("eager", "sdpa", "flex"), ("none",)),
    Case("documents", "packed_documents.attn", "PackedDocuments", 23, ("eager", "sdpa", "flex"),
         ("documents", "head_tail"), {"heads": 2, "head_dim": 8}, "doc"),
    Case("alibi", "alibi.attn", "AlibiCausal6", 20, ("eager", "sdpa", "flex"),
         overrides={"head_dim": 8}),
    Case("softcap_alibi_gqa", "sliding_window.attn", "SlidingWindowGQA", 17, ("eager", "flex"),
         overrides={"heads": 4, "kv_heads": 2, "head_dim": 8}),
    Case("t5_layer", "t5_relative.attn", "T5Decoder", 22, ("eager", "sdpa", "flex"),
         overrides={"dim": 16, "heads": 2}),
    Case("token_groups_rope", "anchor.attn", "AnchorAttention", 290, ("eager", "sdpa", "flex"),
         ("none",), {"dim": 12}, batch=1),
    Case("graph", "graph.attn", "GraphAttention", 18, ("eager", "flex", "edges"), ("none",),
         {"dim": 16, "heads": 2}, "graph"),
    Case("rope_positions_gqa", "rope.attn", "RopeQKNormGQA", 20, ("eager", "sdpa", "flex"),
         overrides={"dim": 16, "heads": 4, "kv_heads": 2}, inputs="pos"),
    Case("sinusoidal", SINUSOIDAL, "Sinusoidal", 15, ("eager", "sdpa")),
    Case("learned", LEARNED, "Learned", 16, ("eager", "sdpa"), ("none",)),
)


# flex runs uncompiled on the CPU, and each new spec costs it a dynamo trace of ~2-3 s: the
# 2-rank run covers position scores with a causal mask (ALiBi, the score_mod torch's own flex CP
# gets wrong) and edge tables in mask_mod and score_mod with learned tables (graph); the
# BlockMask under CP is checked at token level in-process. The 3-rank run (uneven shards,
# 6 head-tail chunks) runs eager everywhere, and the backends' own CP paths: SDPA's dense mask
# in place of is_causal and of per-pattern slices, the edge list cut by query.
FLEX_CASES = ("alibi", "graph")
THREE_RANKS = {"causal": ("sdpa",), "token_groups_rope": ("sdpa",), "graph": ("edges",)}
WORLDS = (2, 3)


def runs(world: int) -> list[tuple[Case, str, str]]:
    """(case, backend, balance) of every run a `world`-rank group makes."""
    return [(case, backend, balance) for case in CASES for backend in case.backends
            for balance in case.balances if _runs(world, case.name, backend)]


def _runs(world: int, name: str, backend: str) -> bool:
    if world == 2:
        return backend != "flex" or name in FLEX_CASES
    return backend == "eager" or backend in THREE_RANKS.get(name, ())


@cache
def load(spec: str):
    """A case's generated module (standalone: its own inlined runtime), compiled once."""
    return attnspec.load(spec if "\n" in spec else SPECS / spec)


def build(case: Case, backend: str) -> torch.nn.Module:
    """The case's attention, its params drawn from a fixed seed (nonzero tables), float64."""
    torch.manual_seed(0)
    module = getattr(load(case.spec), case.cls)(backend=backend, dtype=DTYPE, **case.overrides)
    with torch.no_grad():
        for p in module.parameters():  # zeros-initialised tables would hide index mistakes
            p.copy_(torch.randn_like(p) * 0.5)
    return module


def inputs(case: Case, module: torch.nn.Module) -> tuple[dict, dict, torch.Tensor]:
    """(sequence tensors, whole call-time inputs, the output's incoming gradient), seeded."""
    g = torch.Generator().manual_seed(1)
    S, Bn = case.seq, case.batch

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=DTYPE)

    if hasattr(module, "q_proj"):
        seq = {"x": randn(Bn, S, module.dim)}
        grad = randn(Bn, S, module.dim)
    else:
        seq = {"q": randn(Bn, module.heads, S, module.head_dim),
               "k": randn(Bn, module.kv_heads, S, module.head_dim),
               "v": randn(Bn, module.kv_heads, S, module.value_dim)}
        grad = randn(Bn, module.heads, S, module.value_dim)
    return seq, _call_inputs(case, g), grad


def _call_inputs(case: Case, g: torch.Generator) -> dict:
    S, Bn = case.seq, case.batch
    if case.inputs == "doc":  # documents of uneven lengths, different per batch row
        cuts = [torch.sort(torch.randint(0, S, (3,), generator=g)).values for _ in range(Bn)]
        return {"doc": torch.stack([torch.bucketize(torch.arange(S), c) for c in cuts])}
    if case.inputs == "pos":  # document-local positions
        return {"pos": torch.arange(S).remainder(7).expand(Bn, S).clone()}
    if case.inputs == "graph":
        E = 3 * S
        return {"graph": torch.randint(0, S, (2, E), generator=g),
                "graph_type": torch.randint(0, 2, (E,), generator=g),
                "graph_distance": torch.randint(0, 40, (E,), generator=g)}
    return {}


def documents(case: Case, kwargs: dict) -> torch.Tensor | None:
    """The ids a "documents" balance splits by: batch row 0's."""
    return kwargs["doc"][0] if "doc" in kwargs else None


def seq_dim(name: str) -> int:
    """The sequence dimension of a sequence tensor (x [B, S, dim]; q, k, v [B, H, S, D])."""
    return 1 if name == "x" else 2
