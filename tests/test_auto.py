"""`backend="auto"`: the cost model's order per spec, the call-time walk down that order, the
structured BlockMask cache and the FLASH-kernel fallback of flex.

The CUDA walk (`_attend_auto`) is called directly on CPU tensors here: flash refuses them (or a
fake flash-attn runs them), which exercises each step of the order without a GPU.
"""

import warnings
from pathlib import Path

import pytest
import torch
from test_flash import with_fake

import attnspec
from attnspec import backends
from attnspec.explain import explain_module

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64


def spec_attention(path, name):
    module = attnspec.build((ROOT / "specs" / path).read_text())
    return next(a for a in module.attentions if a.name == name)


@pytest.mark.parametrize("path, name, cuda, cpu", [
    ("causal_lm.attn", "CausalLM", ("flash", "sdpa"), ("sdpa",)),
    ("packed_documents.attn", "PackedDocuments", ("flash", "sdpa-small", "flex"), ("sdpa",)),
    ("alibi.attn", "AlibiCausal8", ("flash", "sdpa-small", "flex"), ("sdpa",)),
    ("prefix_lm.attn", "PrefixLMConstant", ("sdpa-small", "flex"), ("sdpa",)),
    ("anchor.attn", "AnchorAttention", ("flex", "sdpa"), ("sdpa",)),  # flash groups: GPU first
    ("graph.attn", "GraphAttention", ("flex-small", "edges"), ("edges",)),
    ("sliding_window.attn", "SlidingWindowGQA", ("flex",), ("eager",)),
    ("attention_sinks.attn", "SlidingWindowSinks", ("flash", "flex"), ("eager",)),
])
def test_auto_order(path, name, cuda, cpu):
    attn = spec_attention(path, name)
    assert backends.auto_order(attn, "cuda") == cuda
    assert backends.auto_order(attn, "cpu") == cpu
    assert backends.auto(attn, "cuda") == cuda[0].split("-")[0]


def test_explain_shows_the_order_and_why():
    text = explain_module(attnspec.build((ROOT / "specs/packed_documents.attn").read_text()))
    assert "auto on CUDA tries: flash -> sdpa-small -> flex" in text
    assert "flash-attn 4" in text and "Sq·Sk <= 2^20" in text


def documents(batch, length, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.cumsum((torch.rand(batch, length, generator=gen) < 0.1).long(), -1)


def qkv(batch, heads, kv_heads, length, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=gen, dtype=F64).to(dtype)
    k, v = (torch.randn(batch, kv_heads, length, dim, generator=gen, dtype=F64).to(dtype)
            for _ in range(2))
    return q, k, v


def packed(monkeypatch=None):
    module = attnspec.load(ROOT / "specs/packed_documents.attn")
    return module, module.PackedDocuments()


def test_auto_walk_skips_flash_that_refuses_and_takes_dense_sdpa_when_small():
    module, layer = packed()
    q, k, v = qkv(2, 8, 8, 40, 64, F64)
    doc = documents(2, 40, 1)
    ref = layer._attend_eager(q, k, v, doc=doc, sizes=None)
    # flash refuses CPU float64 tensors (UnsupportedInputError): the walk goes on to SDPA
    out = layer._attend_auto(q, k, v, doc=doc, sizes=None)
    assert layer.last_backend == "sdpa-small"
    torch.testing.assert_close(out, ref)


def test_auto_walk_takes_flex_above_the_small_size(monkeypatch):
    module, layer = packed()
    monkeypatch.setattr(module, "_SMALL_DENSE", 0)
    calls = []
    original = module.PackedDocuments._attend_flex

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("fast"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(module.PackedDocuments, "_attend_flex", spy)
    q, k, v = qkv(1, 8, 8, 40, 64, torch.float32)
    doc = documents(1, 40, 2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # uncompiled flex on CPU warns
        out = layer._attend_auto(q, k, v, doc=doc, sizes=None)
    assert calls == [True]  # auto asks flex for its fast (FLASH) kernel where usable
    assert layer.last_backend == "flex-cpu"  # FLASH needs CUDA; no Triton on the CPU either
    torch.testing.assert_close(out, layer._attend_eager(q, k, v, doc=doc, sizes=None),
                               atol=1e-5, rtol=1e-5)


def test_auto_walk_runs_flash_when_it_accepts(monkeypatch):
    module, layer = packed()
    with_fake(monkeypatch, module, 4)
    monkeypatch.setattr(module.PackedDocuments, "_attend_sdpa",
                        lambda *a, **k: pytest.fail("flash accepted: SDPA must not run"))
    q, k, v = qkv(2, 8, 8, 40, 64, torch.bfloat16)
    doc = documents(2, 40, 3)
    out = layer._attend_auto(q, k, v, doc=doc, sizes=None)
    assert layer.last_backend == "flash"
    ref = layer._attend_eager(q.double(), k.double(), v.double(), doc=doc, sizes=None)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


def test_auto_walk_steps_past_flash_for_unsorted_documents(monkeypatch):
    module, layer = packed()
    with_fake(monkeypatch, module, 4)
    q, k, v = qkv(1, 8, 8, 30, 64, torch.bfloat16)
    doc = torch.tensor([[0] * 10 + [1] * 10 + [0] * 10])  # flex/SDPA run it, varlen cannot
    out = layer._attend_auto(q, k, v, doc=doc, sizes=None)
    ref = layer._attend_eager(q.double(), k.double(), v.double(), doc=doc, sizes=None)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


# --- structured BlockMask cache ----------------------------------------------------------------
def test_structured_block_masks_are_reused_for_the_same_unmodified_inputs():
    module, layer = packed()
    doc = documents(2, 300, 4)

    def build(ids, length=300):
        return module._structured_block_mask(
            module._block_lists_PackedDocuments, None, 2, length, length, ids.device, (ids,))

    first = build(doc)
    assert build(doc) is first  # same tensor, unmodified: every layer of a model reuses it
    assert build(doc.clone()) is not first  # equal values, another tensor: built again
    assert build(doc, 299 + 1) is first
    doc.zero_()  # modified in place (one document now): its version moved on
    rebuilt = build(doc)
    assert rebuilt is not first
    assert rebuilt.full_kv_num_blocks.sum() > first.full_kv_num_blocks.sum()


def test_structured_block_mask_cache_is_bounded():
    module, _ = packed()
    tensors = [documents(1, 130, seed) for seed in range(module._FLEX_MASKS_KEPT + 5)]
    for ids in tensors:
        module._structured_block_mask(module._block_lists_PackedDocuments, None, 1, 130, 130,
                                      ids.device, (ids,))
    assert len(module._FLEX_MASKS) == module._FLEX_MASKS_KEPT


def test_block_lists_q_side_is_the_transpose_of_the_kv_side():
    """The q-side lists built from the classes equal what `from_kv_blocks` derives."""
    from torch.nn.attention.flex_attention import BlockMask

    module, _ = packed()
    doc = documents(2, 700, 5)
    lists = module._block_lists_PackedDocuments(2, 700, 700, doc.device, doc)
    ref = BlockMask.from_kv_blocks(*lists[:4], BLOCK_SIZE=128, seq_lengths=(700, 700))
    for ours, theirs in zip(lists[4:], (ref.q_num_blocks, ref.q_indices, ref.full_q_num_blocks,
                                         ref.full_q_indices), strict=True):
        assert ours.dtype == torch.int32 and torch.equal(ours, theirs)


# --- flex's FLASH kernel: used where usable, Triton after a failed compile ------------------------
def test_flex_flash_kernel_is_not_usable_on_cpu_or_for_captured_gradients():
    module, _ = packed()
    q = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16)
    assert not module._flex_flash_usable(q, ())  # CPU
    assert not module._flex_flash_usable(q, (torch.zeros(2, requires_grad=True),))


def test_spread_replicates_params_and_sums_their_gradients():
    from attnspec.runtime.flex import _spread  # the packed-documents module has no params

    param = torch.randn(3, 2, requires_grad=True)
    copies = _spread(param)
    assert copies.shape == (3, 2, 32) and torch.equal(copies[..., 7], param.detach())
    copies[..., 5].sum().backward()
    assert torch.equal(param.grad, torch.ones(3, 2))
    assert _spread(torch.zeros(1 << 19)).shape[-1] == 2  # big tables: fewer copies


def test_flex_run_falls_back_to_triton_once_flash_fails(monkeypatch):
    module, _ = packed()
    seen = []

    def body(q, kernel_options=None):
        seen.append(kernel_options)
        if kernel_options is not None:
            raise ValueError("Type mismatch, store Int64 (-> Int64) to Tensor of Int32")
        return q + 1, None

    monkeypatch.setattr(module, "_flex_flash_usable", lambda q, captured: True)
    q = torch.zeros(2)
    with pytest.warns(UserWarning, match="FLASH kernel cannot run it"):
        (out, _), kernel = module._flex_run(body, (q,), (), True)
    assert torch.equal(out, q + 1) and kernel == "cpu"  # the Triton path, uncompiled on CPU
    assert seen == [module._FLEX_FLASH_OPTIONS, None]
    module._flex_run(body, (q,), (), True)  # remembered: straight to Triton, no new warning
    assert seen[-1] is None and len(seen) == 3
    module._flex_run(lambda q, kernel_options=None: (q, kernel_options), (q,), (), False)
    module._FLEX_FLASH_FAILED.discard(body)


def test_general_block_masks_are_reused_for_the_same_captured_values():
    module = attnspec.load(ROOT / "specs/anchor.attn")
    layer = module.AnchorAttention()
    groups = module._token_groups(layer.GROUPS, None, 290, 290)
    mask_mod = module._mask_mod_AnchorAttention(groups)
    first = module._general_block_mask(mask_mod, None, None, 290, 290, torch.device("cpu"))
    again = module._mask_mod_AnchorAttention(groups)  # a new closure, same values
    assert module._general_block_mask(again, None, None, 290, 290, torch.device("cpu")) is first
    other = module._general_block_mask(mask_mod, None, None, 290, 300, torch.device("cpu"))
    assert other is not first


def test_verify_checks_auto_on_cuda_by_default():
    from attnspec.verify import default_backends, verify_spec

    module = attnspec.load(ROOT / "specs/packed_documents.attn")
    assert default_backends(module.PackedDocuments, "cuda")[-1] == "auto"
    assert "auto" not in default_backends(module.PackedDocuments, "cpu")
    results = verify_spec(attnspec.build((ROOT / "specs/packed_documents.attn").read_text()),
                          module, ["auto"], torch.float32, "cpu", 0)
    assert results and all(r.ok and r.backend == "auto" for r in results)


def test_padding_the_head_dim_keeps_attention_exact():
    """flex on CUDA zero-pads head dims below 16 (Inductor's minimum): q.k and the sliced
    output are unchanged. Checked with SDPA, which takes the same explicit scale."""
    module, _ = packed()
    q, k, v = (torch.randn(1, 2, 5, d, dtype=torch.float64) for d in (8, 8, 2))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    padded = [module._pad_head_dim(t, 16) for t in (q, k, v)]
    assert all(t.shape[-1] == 16 for t in padded)
    got = torch.nn.functional.scaled_dot_product_attention(*padded, scale=0.3)[..., :2]
    torch.testing.assert_close(got, want)
    assert module._pad_head_dim(q, 4) is q


@pytest.mark.parametrize("bias, fast", [("where(k % 2 == 0, -inf, 0.0)", False),
                                        ("where(k % 2 == 0, -1e4, 0.0)", True)])
def test_infinite_scores_keep_flex_off_its_flash_kernel(bias, fast):
    """flex's FLASH kernel gave wrong results for -inf scores on the H100
    (tests/corpus/flex_flash_neg_inf_bias.attn): auto asks for it only without them (and
    without a returned log-sum-exp)."""
    source = attnspec.compile(f"attention A {{\n heads = 2\n head_dim = 16\n mask causal\n"
                              f" bias {bias}\n}}")
    assert ("fast=not return_lse" in source) == fast


def test_flex_flash_kernel_runs_inference_only(monkeypatch):
    """flex's FLASH kernel is flash-attn 4's CuTe code: its backward gave wrong gradients on the
    H200 matrix (head_dim 16; score_mods with GQA at 32 and 256), so a call needing gradients
    runs on Triton; inference still uses it."""
    module, _ = packed()
    monkeypatch.setattr(module, "_flex_flash_usable", lambda q, captured: True)

    def body(q, k, v, kernel_options=None):
        return (q, kernel_options), None

    def kernel(d, grad):
        qkv = [torch.zeros(1, 1, 4, d, requires_grad=grad) for _ in range(3)]
        return module._flex_run(body, qkv, (), True)[1]

    assert kernel(16, True) == "cpu"  # the Triton path (uncompiled: these are CPU tensors)
    assert kernel(16, False) == "flash"
    assert kernel(128, True) == "cpu"
    assert kernel(128, False) == "flash"
    with torch.no_grad():
        assert kernel(16, True) == "flash"
