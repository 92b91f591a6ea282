"""The flex backend's calling convention: captured tensors are arguments of one compiled
function, so new document ids (same shapes) never recompile; settings reach it as numbers, so a
new module instance does not recompile either. Dynamo runs with its eager backend here (CPU,
no inductor compile); the H100 run (benchmarks/gpu_flex_check.py) counts the same with inductor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import attnspec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def packed(monkeypatch):
    mod = attnspec.load(ROOT / "specs/packed_documents.attn")
    compiled = {}

    def runner(body, device):  # what the module does on CUDA, with dynamo's eager backend
        return compiled.setdefault(body, torch.compile(body, fullgraph=True, backend="eager"))

    monkeypatch.setattr(mod, "_flex_runner", runner)
    torch._dynamo.reset()
    return mod


def graphs_after_calls(mod, instances: int, calls: int) -> list[int]:
    graphs = []
    for _ in range(instances):
        m = mod.PackedDocuments(backend="flex", head_dim=16)
        for _ in range(calls):
            q, k, v = (torch.randn(2, m.heads, 40, 16) for _ in range(3))
            doc = torch.cumsum((torch.rand(2, 40) < 0.1).long(), -1)
            with torch.no_grad():
                m(q, k, v, doc=doc)
            graphs.append(counters["stats"]["unique_graphs"])
    return graphs


def test_new_document_ids_and_new_instances_do_not_recompile(packed):
    graphs = graphs_after_calls(packed, instances=2, calls=3)
    assert len(set(graphs)) == 1, graphs


def test_flex_refuses_backward_on_cpu():
    mod = attnspec.load(ROOT / "specs/causal_lm.attn")
    q = torch.randn(1, 12, 9, 64, requires_grad=True)
    with pytest.raises(ValueError, match="no backward on CPU"):
        mod.CausalLM(backend="flex")(q, q, q)


def test_override_of_an_index_setting_keeps_the_instance_off_flex():
    text = ("attention A {\n heads = 2\n head_dim = 4\n param t: float[heads, 4] = zeros\n"
            " bias t[h, k % head_dim]\n}\n")
    mod = attnspec.load(text)
    with pytest.raises(attnspec.UnsupportedBackendError, match="overridden head_dim"):
        mod.A(backend="flex", head_dim=8)
    # SDPA re-checks reads at call time
    assert mod.A(head_dim=8)._auto_cuda == ("sdpa-small", "sdpa-dense")
    assert mod.A()._auto_cuda == ("sdpa-small", "flex", "sdpa-dense")  # tables: bf16 training
    assert mod.A(backend="flex", scale=0.5).backend == "flex"  # scale is in no index proof


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_on_the_cpu_says_so():
    """Uncompiled CPU flex is no Triton kernel: `last_backend` (and so `bench`) says `flex-cpu`."""
    layer = attnspec.load(ROOT / "specs/causal_lm.attn").CausalLM(backend="flex")
    q = torch.randn(1, 12, 9, 64)
    with torch.no_grad():
        layer(q, q, q)
    assert layer.last_backend == "flex-cpu"
