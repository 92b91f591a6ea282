"""torch.compile of generated modules: one graph and no graph break with dynamic shapes, so
sequence lengths that vary neither break the graph nor recompile (docs/language.md §8). Checks
that read tensor values on the host (`_read`'s index ranges, an edges input's ranges) become
asserts inside the graph; error messages are built only on failure (a SymInt's `str()` breaks
the graph). The full sweep over specs/*.attn is `python benchmarks/compile_check.py`."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import attnspec
from attnspec import verify

ROOT = Path(__file__).resolve().parent.parent

# A representative subset (plain causal, document ids, key padding, ALiBi, a layer with a
# table param): the sweep measured 1 graph, 0 breaks for every shipped spec on eager and sdpa.
SUBSET = [("causal_lm.attn", "CausalLM", "sdpa"), ("packed_documents.attn", "PackedDocuments",
                                                    "eager"),
          ("key_padding.attn", "KeyPaddingEager", "sdpa"), ("alibi.attn", "AlibiCausal8", "eager"),
          ("anchor.attn", "AnchorAttention", "eager")]


def explain(module, attn, seq: int):
    """torch._dynamo.explain of one call, every size dynamic: the sweep's own measurement
    (benchmarks/compile_check.py), so the test and the sweep count the same way."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from compile_check import explain as sweep_explain
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return sweep_explain(module, attn, seq)


@pytest.mark.parametrize("spec, name, backend", SUBSET)
def test_one_graph_no_break_with_dynamic_shapes(spec, name, backend):
    mod = attnspec.load(ROOT / "specs" / spec)
    attn = next(a for a in attnspec.build(ROOT / "specs" / spec).attentions if a.name == name)
    module = getattr(mod, name)(backend=backend).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = explain(module, attn, verify._group_total(attn) or 19)
    assert (result.graph_count, result.graph_break_count) == (1, 0), result.break_reasons


def test_varying_lengths_compile_once_with_fullgraph():
    mod = attnspec.load(ROOT / "specs/causal_lm.attn")
    module = mod.CausalLM(backend="eager", heads=2, head_dim=8).eval()
    compiled = torch.compile(module, fullgraph=True, dynamic=True, backend="eager")
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for seq in (11, 23, 37):
            q = torch.randn(1, 2, seq, 8)
            torch.testing.assert_close(compiled(q, q, q), module(q, q, q))
    assert counters["stats"]["unique_graphs"] == 1


def test_an_index_out_of_range_still_stops_a_compiled_call():
    # head_dim=8 makes `k % head_dim` reach past the table's 4 columns: eager says which table;
    # compiled, the graph's assert stops the call (RuntimeError), never a garbage read.
    text = ("attention A {\n heads = 2\n head_dim = 4\n param t: float[heads, 4] = zeros\n"
            " bias t[h, k % head_dim]\n}\n")
    module = attnspec.load(text).A(backend="eager", head_dim=8)
    q = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="t: index range"):
        module(q, q, q)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, dynamic=True, backend="eager")
    with pytest.raises(RuntimeError):
        compiled(q, q, q)
