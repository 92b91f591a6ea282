"""Causal masks and windows with key padding on flash: exact through unpadded keys when every
sequence's valid keys come last (left padding, as generation batches pad), refused otherwise.

flash-attn aligns windows at the end of the keys it is given; after unpadding a left-padded
row, key `j` sits at `j - (kv_len - n)` and the bottom-right window over `n` keys is the
spec's band over `kv_len` keys. The model of flash-attn in tests/test_flash.py stands in for
the kernel; outputs and gradients are compared with the eager interpreter.
"""

from __future__ import annotations

import pytest
import torch
from test_flash import compiled, kernel_spec, with_fake

from attnspec import backends
from attnspec.errors import UnsupportedInputError
from attnspec.ir.build import build_text

VALID = "input valid: bool[batch, kv_seq]\n"


def left_padded(B, S, counts):
    return torch.arange(S).view(1, -1) >= (S - torch.tensor(counts)).view(-1, 1)


def run_both(mod, q, k, v, **inputs):
    """(output, grads) of the flash and eager backends, float32."""
    results = []
    for backend in ("flash", "eager"):
        m = mod.T(backend=backend)
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = m(*leaves, **inputs).float()
        grads = torch.autograd.grad(out.square().sum(), leaves)
        results.append((out, grads))
    return results


@pytest.mark.parametrize("mask, sq, sk", [
    ("causal", 12, 12),
    ("sliding_window(3)", 12, 12),
    ("causal_bottom_right", 5, 12),
    ("window(2, 1)", 12, 12),
])
def test_band_with_left_padding_matches_eager(mask, sq, sk, monkeypatch):
    _, mod = compiled(kernel_spec(f"{VALID} mask {mask} & key_valid(valid)"))
    with_fake(monkeypatch, mod, 4)
    torch.manual_seed(0)
    q = torch.randn(3, 4, sq, 32, dtype=torch.bfloat16)
    k, v = (torch.randn(3, 2, sk, 32, dtype=torch.bfloat16) for _ in range(2))
    valid = left_padded(3, sk, [sk, 7, 0])
    (out, grads), (want, want_grads) = run_both(mod, q, k, v, valid=valid)
    torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a.float(), b.float(), atol=6e-2, rtol=6e-2)


def test_right_padding_with_a_band_is_refused_at_call_time(monkeypatch):
    _, mod = compiled(kernel_spec(f"{VALID} mask causal & key_valid(valid)"))
    m = with_fake(monkeypatch, mod, 4).T(backend="flash")
    q, k = torch.randn(2, 4, 8, 32).bfloat16(), torch.randn(2, 2, 8, 32).bfloat16()
    valid = torch.arange(8).view(1, -1) < torch.tensor([[8], [5]])  # right padding
    with pytest.raises(UnsupportedInputError, match="valid keys come last"):
        m(q, k, k, valid=valid)


def test_key_lengths_with_a_band_are_refused_with_the_reason():
    attn = build_text(kernel_spec("input n: int[batch]\n mask causal & key_len(n)"),
                      "t.attn").attentions[0]
    reasons = [r.message for r in backends.reasons(attn)["flash"]]
    assert len(reasons) == 1 and "right padding" in reasons[0]
