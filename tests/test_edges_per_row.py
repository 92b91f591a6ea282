"""`edges` inputs in the per-row form: one edge list per batch row, `g` int [B, 2, E] padded
with -1 (docs/language.md, "Batches of graphs"). Every CPU backend against the interpreter,
the per-row form against each batch row run alone with the shared [2, E] form, the
ValueErrors, flex's refusal and `auto` stepping past it, context parallelism's rows."""

from __future__ import annotations

import random

import pytest
import torch
from test_edges import BODIES as EDGE_BODIES
from test_edges import GRAPH

import attnspec
from attnspec.errors import UnsupportedInputError
from attnspec.verify import Case, cases_for, check_case

SEED = random.randrange(2**31)  # fresh inputs each run; printed on failure
# The graph declaration and two bodies are test_edges.py's (one definition of each spec).
BODIES = {
    "typed gated": EDGE_BODIES["typed gated"],
    "b, padding, documents": ("input doc: int[batch, seq]\n input valid: bool[batch, seq]\n"
                              " input mix: float[batch, heads]\n"
                              " mask same(doc) & valid[b, k] & g.edge & (b + q) % 3 != 1\n"
                              " bias mix[b, h] - 0.1 * g.distance"),
    "gqa sinks": "kv_heads = 2\n sinks = true\n mask g.edge\n bias where(g.type == 1, -1.0, 0.5)",
    "self loops": EDGE_BODIES["self loops"],
}
# The user story runs each batch row alone: as row 0, where a mask that reads `b` itself would
# differ; the documents and key padding without it.
ALONE = {**{n: body for n, body in BODIES.items() if "(b + q)" not in body},
         "padding, documents": BODIES["b, padding, documents"].replace(" & (b + q) % 3 != 1", "")}
CASE = Case("edges per row S=13", 3, 13, 13, edge_rows=True)


def spec(name: str) -> str:
    loops = ", self_loops = true" if name == "self loops" else ""
    return (f"attention A {{\n heads = 4\n head_dim = 8\n{GRAPH.format(loops=loops)} "
            f"{ALONE.get(name) or BODIES[name]}\n}}\n")


def _load(name: str):
    return attnspec.build(spec(name)).attentions[0], attnspec.load(spec(name)).A


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", BODIES)
def test_every_cpu_backend_matches_the_interpreter(name, dtype):
    attn, cls = _load(name)
    for backend in [b for b in cls.BACKENDS if b != "flex"] + ["auto"]:
        result = check_case(attn, cls, backend, CASE, dtype, "cpu", SEED)
        assert result.ok, f"{backend}, seed {SEED}: {result}"


def test_cross_lengths_match_the_interpreter():
    attn, cls = _load("typed gated")
    case = Case("edges per row Sq=7,Sk=19", 2, 7, 19, edge_rows=True)
    for backend in ("eager", "edges"):
        result = check_case(attn, cls, backend, case, torch.float64, "cpu", SEED)
        assert result.ok, f"{backend}, seed {SEED}: {result}"


def test_verify_adds_one_per_row_case_and_counts_flex_as_refused():
    attn, cls = _load("self loops")
    per_row = [c for c in cases_for(attn) if c.edge_rows]
    assert [(c.name, c.batch, c.q_len, c.kv_len) for c in per_row] == [
        ("edges per row S=23", 3, 23, 23)]
    plain = attnspec.build("attention P {\n heads = 1\n head_dim = 4\n mask causal\n}\n")
    assert not any(c.edge_rows for c in cases_for(plain.attentions[0]))
    with pytest.raises(UnsupportedInputError, match="per-row lists run on edges, eager or sdpa"):
        check_case(attn, cls, "flex", CASE, torch.float32, "cpu", SEED)


def _per_row_inputs(gen: torch.Generator, B=3, S=9, E=20):
    """Per-row edges with duplicates, padding among them and a row without edges."""
    index = torch.stack([torch.randint(0, S, (B, E), generator=gen),
                         torch.randint(0, S, (B, E), generator=gen)], dim=1)
    index[0, :, 3] = index[0, :, 1]  # a duplicate: the later one (its type) wins
    index[1, :, ::3] = -1
    index[B - 1] = -1  # the last row has no edges at all
    types = torch.randint(0, 3, (B, E), generator=gen)
    distance = torch.randint(0, 12, (B, E), generator=gen)
    return index, types, distance


@pytest.mark.parametrize("name", ALONE)
def test_per_row_equals_each_row_alone_with_a_shared_list(name):
    """The user story: a batch of different graphs gives what each graph gives alone."""
    gen = torch.Generator().manual_seed(SEED)
    index, types, distance = _per_row_inputs(gen)
    B, S = index.shape[0], 9
    _, cls = _load(name)
    kv_heads = 2 if name == "gqa sinks" else 4
    q = torch.randn(B, 4, S, 8, dtype=torch.float64, generator=gen)
    k, v = (torch.randn(B, kv_heads, S, 8, dtype=torch.float64, generator=gen) for _ in "kv")
    extra = {}
    if "doc" in ALONE[name]:
        extra = {"doc": torch.randint(0, 2, (B, S), generator=gen).sort(-1).values,
                 "valid": torch.rand(B, S, generator=gen) < 0.8,
                 "mix": torch.randn(B, 4, dtype=torch.float64, generator=gen)}
    for backend in [b for b in cls.BACKENDS if b != "flex"]:
        layer = cls(backend=backend).double()
        torch.manual_seed(0)
        for p in layer.parameters():
            torch.nn.init.normal_(p)
        out = layer(q, k, v, g=index, g_type=types, g_distance=distance, **extra)
        for b in range(B):
            keep = index[b, 0] >= 0
            alone = layer(q[b:b + 1], k[b:b + 1], v[b:b + 1], g=index[b][:, keep],
                          g_type=types[b][keep], g_distance=distance[b][keep],
                          **{n: t[b:b + 1] for n, t in extra.items()})
            torch.testing.assert_close(out[b:b + 1], alone, msg=f"{backend}, row {b}")
        if name != "self loops":  # the last row has no edges: exactly 0
            assert torch.equal(out[B - 1], torch.zeros_like(out[B - 1])), backend


def test_per_row_gradients_and_lse_match_eager():
    gen = torch.Generator().manual_seed(SEED)
    index, types, distance = _per_row_inputs(gen)
    _, cls = _load("typed gated")
    eager, edges = cls(backend="eager").double(), cls(backend="edges").double()
    edges.load_state_dict(eager.state_dict())
    qkv = [torch.randn(3, 4, 9, 8, dtype=torch.float64, generator=gen) for _ in range(3)]
    results = []
    for layer in (eager, edges):
        leaves = [t.clone().requires_grad_() for t in qkv]
        out, lse = layer(*leaves, g=index, g_type=types, g_distance=distance, return_lse=True)
        (out.square().sum() + lse.clamp(min=-50).sum()).backward()
        results.append([out, lse] + [t.grad for t in leaves] + [layer.tb.grad, layer.gate.grad])
    for want, got in zip(*results):
        torch.testing.assert_close(got, want)


BAD = [
    ("B mismatch", lambda i, t: (i[:2], t[:2]), r"g: expected shape \[B, 2, E\] = \[3, 2, \*\]"),
    ("one -1", lambda i, t: (i.index_put((torch.tensor(0), torch.tensor(0), torch.tensor(0)),
                                         torch.tensor(-1)), t),
     "g: a padding entry of edge_index .* -1 in only one"),
    ("out of range", lambda i, t: (i.index_put((torch.tensor(0), torch.tensor(1),
                                                torch.tensor(0)), torch.tensor(9)), t),
     "g: edge index out of range"),
    ("types out of range", lambda i, t: (i, t.index_put((torch.tensor(0), torch.tensor(0)),
                                                        torch.tensor(3))),
     "g_type: edge types must be in"),
    ("types shape", lambda i, t: (i, t[0]), r"g_type: expected shape \[B, E\] = \[3, 20\]"),
]


@pytest.mark.parametrize("what, change, message", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("backend", ["eager", "edges"])
def test_bad_per_row_inputs_raise_value_errors_naming_the_input(backend, what, change, message):
    gen = torch.Generator().manual_seed(SEED)
    index, types, _ = _per_row_inputs(gen)
    index[1, :, 0] = 4  # row 1's first entry an edge, not padding: the changes below hit it
    index[0, :, 0] = 4
    index, types = change(index, types)
    q = torch.randn(3, 4, 9, 8)
    with pytest.raises(ValueError, match=message):
        _load("typed gated")[1](backend=backend)(q, q, q, g=index, g_type=types)


def test_padding_types_are_ignored():
    """Types and distances at padding entries may hold anything (out of range included)."""
    gen = torch.Generator().manual_seed(SEED)
    index, types, distance = _per_row_inputs(gen)
    junk = types.masked_fill(index[:, 0] < 0, 99)
    q = torch.randn(3, 4, 9, 8, dtype=torch.float64)
    layer = _load("typed gated")[1](backend="edges").double()
    torch.testing.assert_close(layer(q, q, q, g=index, g_type=junk, g_distance=distance),
                               layer(q, q, q, g=index, g_type=types, g_distance=distance))


def test_auto_on_cuda_steps_past_flex_refusal():
    """`_attend_auto` (auto's CUDA walk) on CPU tensors: flex-small refuses the per-row form,
    the edge list runs it."""
    gen = torch.Generator().manual_seed(SEED)
    index, types, distance = _per_row_inputs(gen)
    _, cls = _load("typed gated")
    layer = cls(backend="auto").double()
    assert layer.AUTO_CUDA[0] == "flex-small"
    q = torch.randn(3, 4, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        out = layer._attend_auto(q, q, q, g=index, g_type=types, g_distance=distance,
                                 sizes=None)
    assert layer.last_backend == "edges"
    edges = cls(backend="edges").double()
    edges.load_state_dict(layer.state_dict())
    torch.testing.assert_close(out, edges(q, q, q, g=index, g_type=types, g_distance=distance))


@pytest.mark.parametrize("backend", ["eager", "sdpa", "edges"])
def test_context_parallel_rows_match_the_whole_call(backend):
    """A rank's call (q at the global positions q_pos, every key) gives those rows of the
    whole call: the tables are cut by rows, the edge list by query."""
    gen = torch.Generator().manual_seed(SEED)
    index, types, distance = _per_row_inputs(gen)
    _, cls = _load("self loops")
    layer = cls(backend=backend).double()
    q, k, v = (torch.randn(3, 4, 9, 8, dtype=torch.float64, generator=gen) for _ in range(3))
    inputs = {"g": index, "g_type": types, "g_distance": distance}
    whole = layer(q, k, v, **inputs)
    q_pos = torch.tensor([7, 0, 3, 8])
    attend = getattr(layer, f"_attend_{backend}")
    part = attend(q[:, :, q_pos], k, v, **inputs, sizes=None, q_pos=q_pos)
    torch.testing.assert_close(part, whole[:, :, q_pos])


def test_interpreter_tables_are_per_row():
    from attnspec import eager

    attn, _ = _load("self loops")
    q = torch.randn(2, 4, 3, 8, dtype=torch.float64)
    index = torch.tensor([[[0, -1], [2, -1]], [[-1, -1], [-1, -1]]])
    out = eager.run(attn, {}, q, q, q, inputs={"g": index})
    assert out.shape == (2, 4, 3, 8)
    with pytest.raises(ValueError, match=r"int\[B, 2, E\] with B=2"):
        eager.run(attn, {}, q, q, q, inputs={"g": index[:1]})
