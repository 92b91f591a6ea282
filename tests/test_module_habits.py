"""torch.nn.Module habits of every generated class: `reset_parameters()` (meta-device init +
`to_empty()` + `reset_parameters()`, FSDP's path), `extra_repr()`, `device=`/`dtype=` factory
arguments like torch.nn.Linear, and a validated `backend` attribute (docs/language.md §8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.errors import UnsupportedBackendError

ROOT = Path(__file__).resolve().parent.parent

PARAMS = """attention Tables {
    heads = 4
    head_dim = 8
    param z: float[heads] = zeros
    param o: float[heads] = ones
    param n: float[heads, 3] = normal(0.5)
    param u: float[heads] = uniform(-0.1, 0.2)
    bias z[h] + o[h] + n[h, 0] + u[h]
}
"""

CASES = [(ROOT / "specs/mup_layer.attn", "MupCausalLayer"),   # muP init of the projections
         (ROOT / "specs/t5_relative.attn", "T5Encoder"),      # a table param + projections
         (ROOT / "specs/alibi.attn", "AlibiCausal8"),         # no params
         (PARAMS, "Tables")]                                  # every param init


def cls_of(spec, name):
    return getattr(attnspec.load(spec), name)


@pytest.mark.parametrize("spec, name", CASES)
def test_meta_init_then_to_empty_then_reset_parameters_matches_a_seeded_construction(spec, name):
    cls = cls_of(spec, name)
    torch.manual_seed(0)
    reference = cls().state_dict()
    with torch.device("meta"):
        module = cls()
    assert all(p.is_meta for p in module.parameters())
    module.to_empty(device="cpu")
    torch.manual_seed(0)
    module.reset_parameters()
    state = module.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_reset_parameters_keeps_mup_zero_query_and_scaled_std():
    layer = cls_of(ROOT / "specs/mup_layer.attn", "MupCausalLayer")(device="meta")
    layer.to_empty(device="cpu")
    layer.reset_parameters()
    std = layer.init_std / (layer.dim / layer.base_dim) ** 0.5
    assert abs(layer.k_proj.weight.std().item() - std) < 0.1 * std  # not Linear's default


@pytest.mark.parametrize("spec, name", CASES)
def test_device_and_dtype_factory_arguments(spec, name):
    cls = cls_of(spec, name)
    module = cls(device="meta", dtype=torch.float64)
    assert all(p.is_meta and p.dtype == torch.float64 for p in module.parameters())
    assert all(p.dtype == torch.float64 for p in cls(dtype=torch.float64).parameters())


def test_extra_repr():
    attn = cls_of(ROOT / "specs/causal_lm.attn", "CausalLM")(heads=8, head_dim=64)
    assert attn.extra_repr() == "heads=8, kv_heads=8, head_dim=64, backend='auto'"
    assert repr(attn) == "CausalLM(heads=8, kv_heads=8, head_dim=64, backend='auto')"
    layer = cls_of(ROOT / "specs/mup_layer.attn", "MupCausalLayer")(device="meta")
    assert layer.extra_repr().startswith("dim=1024, heads=16")


def test_backend_assignment_is_validated():
    attn = cls_of(ROOT / "specs/causal_lm.attn", "CausalLM")()
    with pytest.raises(UnsupportedBackendError, match="unknown backend 'nosuch'"):
        attn.backend = "nosuch"
    assert attn.backend == "auto"  # unchanged by the refused assignment
    attn.backend = "eager"
    assert attn.backend == "eager"
    graph = cls_of(ROOT / "specs/graph.attn", "GraphAttention")
    with pytest.raises(UnsupportedBackendError, match="cannot run this spec"):
        graph(device="meta").backend = "sdpa"


def test_a_param_named_like_a_new_method_is_refused():
    text = ("attention A {\n heads = 2\n head_dim = 4\n"
            " param reset_parameters: float[heads] = zeros\n}\n")
    # The checker knows the name (ir/scope): an error at the param's line, with a span.
    with pytest.raises(attnspec.AttnSpecError, match="`reset_parameters` is reserved"):
        attnspec.compile(text)


def test_backend_assignment_keeps_the_constructor_refusals():
    # head_dim is in flex's index proofs: overriding it keeps this instance off flex, also when
    # the backend is assigned later.
    text = ("attention A {\n heads = 2\n head_dim = 4\n param t: float[heads, 4] = zeros\n"
            " bias t[h, k % head_dim]\n}\n")
    attn = attnspec.load(text).A(head_dim=8)
    with pytest.raises(UnsupportedBackendError, match="overridden head_dim"):
        attn.backend = "flex"
    attnspec.load(text).A().backend = "flex"  # no override: allowed
