"""The fused edge kernels (runtime `_edge_kernels`: per-edge dot products and per-row weighted
sums in Triton, no atomics) against the torch formulation and against the interpreter, run on
the CPU by Triton's interpreter (TRITON_INTERPRET=1). Shapes exercise every loop and mask of
the kernels: head dims above one block, rows with more edges than a block, rows with none,
edge lists out of query order (context parallelism cuts them so), batch and heads.

Triton's interpreter must be on before triton is imported (its own library functions are made
then), so the suite runs this file again in a subprocess with TRITON_INTERPRET=1; the tests
below run only there."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.runtime import edges
from attnspec.verify import Case, cases_for, check_case

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter runs kernels through numpy

SEED = random.randrange(2**31)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
inside = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess")


@pytest.mark.skipif(INTERPRETED, reason="the subprocess itself")
def test_kernels_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=600)
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-3000:]
    assert " 1 skipped" in done.stdout.splitlines()[-1], done.stdout[-500:]  # only this test


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _graph(gen, sq, sk, n_edges, sort):
    src = torch.randint(0, sq, (n_edges,), generator=gen)
    src[src == 1] = 0  # query 1 has no edges; query 0 has many (more than one block of 16)
    src[: 40] = 0
    dst = torch.randint(0, sk, (n_edges,), generator=gen)
    if sort:
        order = torch.argsort(src, stable=True)
        src, dst = src[order], dst[order]
    return src, dst


def _run(q, k, v, src, dst, upstream):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    q, k, v = leaves
    score = edges._edge_scores(q, k, src, dst, torch.float32)
    probs = torch.sigmoid(score)  # any per-edge function: gradients flow through both kernels
    out = edges._edge_aggregate(probs, v, src, dst, q.shape[2])
    (out * upstream).sum().backward()
    return [out.detach(), *(t.grad for t in leaves)]


@inside
@pytest.mark.parametrize("B,H,head_dim,value_dim,sort", [(1, 1, 200, 72, True),
                                                         (2, 2, 20, 12, False)])
def test_kernels_match_the_torch_formulation(monkeypatch, B, H, head_dim, value_dim, sort):
    gen = torch.Generator().manual_seed(SEED)
    Sq, Sk = 9, 11
    q = torch.randn(B, H, Sq, head_dim, generator=gen)
    k = torch.randn(B, H, Sk, head_dim, generator=gen)
    v = torch.randn(B, H, Sk, value_dim, generator=gen).transpose(2, 3).contiguous() \
        .transpose(2, 3)  # strided values: the kernels take strides, not contiguity
    src, dst = _graph(gen, Sq, Sk, 70, sort)
    upstream = torch.randn(B, H, Sq, value_dim, generator=gen)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reference = _run(q, k, v, src, dst, upstream)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fused = _run(q, k, v, src, dst, upstream)
    for name, got, want in zip(("out", "dq", "dk", "dv"), fused, reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item(),
                                   msg=f"{name}, seed {SEED}")
    assert torch.equal(fused[0][:, :, 1], torch.zeros(B, H, value_dim))  # no edges: exactly 0


@inside
def test_kernels_are_deterministic(interpret):
    gen = torch.Generator().manual_seed(SEED)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=gen) for _ in range(3))
    src, dst = _graph(gen, 9, 9, 64, True)
    upstream = torch.randn(1, 2, 9, 8, generator=gen)
    first, second = _run(q, k, v, src, dst, upstream), _run(q, k, v, src, dst, upstream)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_csr_segments_keep_the_given_order():
    ptr, perm = edges._csr(torch.tensor([3, 0, 3, 1, 0]), 5)
    assert ptr.tolist() == [0, 2, 3, 3, 5, 5] and perm.tolist() == [1, 4, 3, 0, 2]


@inside
def test_kernels_are_used_where_they_should_be(interpret, monkeypatch):
    """The interpreter runs them on the CPU; float64 keeps the torch formulation (the kernels
    accumulate in float32)."""
    assert edges._edge_triton(torch.zeros(1))
    assert not edges._edge_triton(torch.zeros(1, dtype=torch.float64))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not edges._edge_triton(torch.zeros(1))


GRAPH_SPECS = {
    "typed gated": ("param tb: float[heads, 3] = normal(1.0)\n"
                    "param gate: float[heads, 3, 8] = normal(1.0)\n mask g.edge\n"
                    " bias tb[h, g.type]\n score = score * sigmoid(gate[h, g.type, g.distance])"),
    "gqa sinks": "kv_heads = 1\n sinks = true\n mask g.edge\n score = softcap(score, 5.0)",
}


@inside
@pytest.mark.parametrize("name", GRAPH_SPECS)
def test_edges_backend_on_the_kernels_matches_the_interpreter(interpret, name):
    """A whole spec on the edges backend with the kernels (outputs and every gradient, learned
    tables and sinks included) against the float64 interpreter, under verify's rule."""
    text = (f"attention A {{\n heads = 4\n head_dim = 8\n input g: edges(types = 3, "
            f"max_distance = 8)\n {GRAPH_SPECS[name]}\n}}\n")
    module_ir, module = attnspec.build(text), attnspec.load(text)
    attn = module_ir.attentions[0]
    before = module._edge_kernels.cache_info()
    every = cases_for(attn)
    # The typed spec with one edge list per batch row (flattened into one graph), the other at
    # 13 tokens, its lse too: the interpreter is slow, one small case each.
    chosen = [c for c in every if c.edge_rows] if name == "typed gated" else \
        [Case("S=13", 1, 13, 13)]
    assert chosen
    for i, case in enumerate(chosen):
        result = check_case(attn, module.A, "edges", case, torch.float32, "cpu", SEED + i)
        assert result.ok, f"seed {SEED + i}: {result}"
    after = module._edge_kernels.cache_info()
    assert after.hits + after.misses > before.hits + before.misses  # the kernels ran
