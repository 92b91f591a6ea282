"""Backends without attention dropout (flex, flash) still run a spec that declares `dropout`:
they refuse only a call that would apply it (training with dropout > 0), with
UnsupportedInputError, which `auto` steps past (docs/backends.md, the dropout row)."""

from __future__ import annotations

import warnings

import pytest
import torch

import attnspec
from attnspec import backends
from attnspec.errors import UnsupportedInputError
from attnspec.ir.build import build_text

SPEC = """attention Dropped {
    heads = 4
    kv_heads = 2
    head_dim = 32
    dropout = 0.5
    mask sliding_window(8)
}
"""


@pytest.fixture(scope="module")
def mod():
    return attnspec.load(SPEC)


def qkv(seq=24):
    torch.manual_seed(0)
    return (torch.randn(2, 4, seq, 32), torch.randn(2, 2, seq, 32), torch.randn(2, 2, seq, 32))


def test_flex_and_flash_have_no_compile_time_reason():
    attn = build_text(SPEC, "d.attn").attentions[0]
    reasons = backends.reasons(attn)
    assert reasons["flex"] == [] and reasons["flash"] == []


def test_both_are_generated_and_auto_may_try_them(mod):
    assert {"flex", "flash"} <= set(mod.Dropped.BACKENDS)
    assert "flex" not in mod.Dropped.UNSUPPORTED and "flash" not in mod.Dropped.UNSUPPORTED
    assert "flex" in mod.Dropped.AUTO_CUDA


def test_flex_runs_in_eval_and_with_dropout_zero(mod):
    q, k, v = qkv()
    reference = mod.Dropped(backend="eager").eval()(q, k, v)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncompiled flex on CPU warns
        out = mod.Dropped(backend="flex").eval()(q, k, v)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
        out = mod.Dropped(backend="flex", dropout=0.0).train()(q, k, v)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["flex", "flash"])
def test_training_with_dropout_is_refused_with_unsupported_input(mod, backend):
    q, k, v = qkv()
    with pytest.raises(UnsupportedInputError, match="no attention dropout"):
        mod.Dropped(backend=backend).train()(q, k, v)


def test_flash_in_eval_gets_past_the_dropout_check(mod):
    # On CPU flash then refuses the device, not the dropout.
    q, k, v = qkv()
    with pytest.raises(UnsupportedInputError) as error:
        mod.Dropped(backend="flash").eval()(q, k, v)
    assert "dropout" not in str(error.value)


def test_auto_walk_steps_past_flex_and_flash_in_training(mod):
    # The CUDA walk, called on CPU tensors: every kernel backend refuses the dropout call, so
    # the eager fallback runs it, and applies dropout (the output differs from eval's).
    layer = mod.Dropped().train()
    q, k, v = qkv()
    torch.manual_seed(1)
    out = layer._attend_auto(q, k, v, sizes=None)
    assert out.shape == (2, 4, 24, 32)
    assert not torch.allclose(out, layer.eval()._attend_eager(q, k, v, sizes=None))
