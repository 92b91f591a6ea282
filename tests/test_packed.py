"""The packed input form of document specs: `[total, heads, dim]` tensors plus `cu_seqlens`
(and optionally `max_seqlen`) instead of `[B, heads, S, dim]` plus document ids.

Every backend runs it (batch 1, ids derived on the device) and must agree with the ids form;
flash passes `cu_seqlens` straight to flash-attn without deriving anything from the ids (the
model of flash-attn in tests/test_flash.py stands in for the kernel).
"""

from __future__ import annotations

import pytest
import torch
from test_flash import compiled, kernel_spec, with_fake

DOCS = kernel_spec("input doc: int[batch, seq]\n mask causal & same(doc)")
LAYER = ("attention L {\n dim = 32\n heads = 2\n input doc: int[batch, seq]\n"
         " mask causal & same(doc)\n}\n")
CU = torch.tensor([0, 3, 3, 9, 14], dtype=torch.int32)  # an empty document, too


def packed_qkv(total=14, dtype=torch.float32):
    torch.manual_seed(1)
    return (torch.randn(total, 4, 32, dtype=dtype), torch.randn(total, 2, 32, dtype=dtype),
            torch.randn(total, 2, 32, dtype=dtype))


def ids_of(cu, total):
    return (torch.searchsorted(cu.long(), torch.arange(total), right=True) - 1).view(1, -1)


def as_batch(x):
    return x.transpose(0, 1)[None]


def outputs_and_grads(m, q, k, v, **inputs):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = m(*leaves, **inputs)
    return out, torch.autograd.grad(out.float().square().sum(), leaves)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_packed_form_matches_the_ids_form(backend):
    _, mod = compiled(DOCS)
    m = mod.T(backend=backend)
    q, k, v = packed_qkv()
    grad = backend != "flex"  # flex has no CPU backward
    with torch.set_grad_enabled(grad):
        if grad:
            got, grads = outputs_and_grads(m, q, k, v, cu_seqlens=CU, max_seqlen=6)
            want, want_grads = outputs_and_grads(m, *map(as_batch, (q, k, v)), doc=ids_of(CU, 14))
        else:
            got = m(q, k, v, cu_seqlens=CU)
            want = m(*map(as_batch, (q, k, v)), doc=ids_of(CU, 14))
    assert got.shape == (14, 4, 32)
    torch.testing.assert_close(got, want[0].transpose(0, 1))
    if grad:
        for a, b in zip(grads, want_grads):
            torch.testing.assert_close(as_batch(a), b)


def test_flash_takes_cu_seqlens_as_given_and_derives_nothing(monkeypatch):
    _, mod = compiled(DOCS)
    with_fake(monkeypatch, mod, 4)
    seen = []
    library = mod._flash_library(torch.device("cpu"))
    original = library.varlen

    def spy(*args, **kwargs):
        seen.append(kwargs["cu_seqlens_q"])
        return original(*args, **kwargs)

    library.varlen = spy
    monkeypatch.setattr(mod, "_flash_library", lambda device: library)
    monkeypatch.setattr(mod, "_flash_remembered", lambda *a, **k: pytest.fail("derived runs"))
    q, k, v = packed_qkv(dtype=torch.bfloat16)
    got, grads = outputs_and_grads(mod.T(backend="flash"), q, k, v, cu_seqlens=CU,
                                   max_seqlen=6)
    assert seen and seen[0].tolist() == CU.tolist()
    want, want_grads = outputs_and_grads(mod.T(backend="eager"), q, k, v, cu_seqlens=CU)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)


def test_layer_mode_takes_the_packed_form():
    _, mod = compiled(LAYER)
    m = mod.L(backend="eager")
    x = torch.randn(14, 32)
    got = m(x, cu_seqlens=CU.long())
    want = m(x[None], doc=ids_of(CU, 14))[0]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("cu, max_seqlen, message", [
    (torch.tensor([0, 5, 3, 14]), None, "never decreasing"),
    (torch.tensor([0, 5, 13]), None, "from 0 to total = 14"),
    (torch.tensor([1, 5, 14]), None, "from 0 to total = 14"),
    (torch.tensor([0, 5, 14]), 4, "max_seqlen: 4, but cu_seqlens holds a document of 9"),
    (torch.tensor([0.0, 14.0]), None, "cu_seqlens: expected a 1-D int32 or int64 tensor"),
    (torch.tensor([[0, 14]]), None, "got shape \\[1, 2\\]"),
    ([0, 14], None, "got list"),
    (torch.tensor([0, 14]), 0, "max_seqlen: expected a positive int"),
    (torch.tensor([0, 14]), True, "max_seqlen: expected a positive int"),
])
def test_bad_cu_seqlens_raise_value_errors_naming_the_input(cu, max_seqlen, message):
    _, mod = compiled(DOCS)
    with pytest.raises(ValueError, match=message):
        mod.T(backend="eager")(*packed_qkv(), cu_seqlens=cu, max_seqlen=max_seqlen)


def test_ids_and_cu_seqlens_together_are_refused():
    _, mod = compiled(DOCS)
    with pytest.raises(ValueError, match="not both"):
        mod.T()(*packed_qkv(), cu_seqlens=CU, doc=ids_of(CU, 14))


def test_packed_tensors_are_checked_naming_the_input():
    _, mod = compiled(DOCS)
    q, k, v = packed_qkv()
    with pytest.raises(ValueError, match=r"k: expected shape \[total, kv_heads, head_dim\]"):
        mod.T()(q, k[:-1], v, cu_seqlens=CU)


def test_verify_checks_the_packed_form_on_every_backend(monkeypatch):
    from attnspec import verify

    module_ir, mod = compiled(DOCS)
    attn = module_ir.attentions[0]
    assert verify.cases_for(attn)[-1].packed == "doc"
    with_fake(monkeypatch, mod, 4)
    case = verify.cases_for(attn)[-1]
    for backend in ("eager", "sdpa", "flash"):
        dtype = torch.bfloat16 if backend == "flash" else torch.float32
        result = verify.check_case(attn, mod.T, backend, case, dtype, "cpu", seed=2)
        assert result.ok and not result.refused, (backend, result.detail)


def test_specs_without_one_document_split_have_no_packed_form():
    _, mod = compiled(kernel_spec("mask causal"))
    with pytest.raises(ValueError, match="cu_seqlens"):
        mod.T()(*packed_qkv(), cu_seqlens=CU)
