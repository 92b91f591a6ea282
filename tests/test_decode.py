"""Decoding with a KV cache (issue 19): a generated module decodes token by token with a
contiguous and a paged cache and matches running the whole sequence through the same module,
on every CPU backend that claims it; the eager interpreter is the reference; bad inputs raise
ValueError naming the input and its expected shape; flash-attn 4's decode call is checked
against a pure-torch model of its kernel (tests/test_flash.py does the same for training)."""

import math

import pytest
import torch
from test_flash import flash_window_mask

import attnspec
from attnspec import eager
from attnspec.errors import AttnSpecError
from attnspec.lower.module import lower_module

SPEC = """
attention Rope {{
    heads = 4
    kv_heads = 2
    head_dim = 16
    input cache: kv_cache{cache}
    mask causal
    position rope(base = 10000)
}}

attention Alibi {{
    heads = 4
    kv_heads = 2
    head_dim = 16
    input cache: kv_cache{cache}
    mask sliding_window(4)
    bias alibi
}}
"""
B, S, PROMPT, PAGE = 2, 9, 4, 4
PAGE_TABLE = torch.tensor([[5, 1, 7, 3], [0, 6, 2, 4]])  # pages out of order


@pytest.fixture(scope="module", params=["contiguous", "paged"])
def module(request):
    cache = "(paged = true)" if request.param == "paged" else ""
    return request.param, attnspec.load(SPEC.format(cache=cache))


def new_cache(paged: bool, dtype=torch.float64) -> dict:
    if paged:
        pool = torch.zeros(8, PAGE, 2, 16, dtype=dtype)
        return dict(cache_k=pool, cache_v=pool.clone(), cache_pages=PAGE_TABLE.clone())
    return dict(cache_k=torch.zeros(B, 16, 2, 16, dtype=dtype),
                cache_v=torch.zeros(B, 16, 2, 16, dtype=dtype))


def one_row(cache: dict, paged: bool) -> dict:
    """The cache of a batch of one: the first row (contiguous) or page table row (paged)."""
    keys = ("cache_pages",) if paged else ("cache_k", "cache_v")
    return {key: value[:1] if key in keys else value for key, value in cache.items()}


def qkv(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 4, S, 16, generator=g, dtype=dtype),
            torch.randn(B, 2, S, 16, generator=g, dtype=dtype),
            torch.randn(B, 2, S, 16, generator=g, dtype=dtype))


def decode(m, paged, q, k, v):
    """A prompt of PROMPT tokens, then one token per call; the outputs concatenated."""
    cache, lengths, outs = new_cache(paged, q.dtype), torch.zeros(B, dtype=torch.int64), []
    for start, stop in [(0, PROMPT)] + [(i, i + 1) for i in range(PROMPT, S)]:
        part = [t[:, :, start:stop] for t in (q, k, v)]
        outs.append(m(*part, cache_len=lengths, **cache))
        lengths = lengths + (stop - start)
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("name", ["Rope", "Alibi"])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_token_by_token_matches_the_whole_sequence(module, name, backend):
    layout, mod = module
    m = getattr(mod, name)(backend=backend)
    q, k, v = qkv()
    whole = m(q, k, v, cache_len=torch.zeros(B, dtype=torch.int64), **new_cache(layout == "paged"))
    torch.testing.assert_close(decode(m, layout == "paged", q, k, v), whole)


@pytest.mark.parametrize("name", ["Rope", "Alibi"])
def test_decoding_is_the_training_spec_and_the_interpreter(module, name):
    """The whole sequence through the cache equals the spec without a cache (training), and
    the eager interpreter decodes the same."""
    layout, mod = module
    text = SPEC.format(cache="").replace("    input cache: kv_cache\n", "")
    plain = getattr(attnspec.load(text), name)(backend="eager")
    q, k, v = qkv(1)
    m = getattr(mod, name)(backend="sdpa")
    torch.testing.assert_close(decode(m, layout == "paged", q, k, v), plain(q, k, v))
    attn = next(a for a in attnspec.build(SPEC.format(
        cache="(paged = true)" if layout == "paged" else "")).attentions if a.name == name)
    cache = new_cache(layout == "paged")
    lengths = torch.tensor([3, 0])
    part = [t[:, :, :2] for t in (q, k, v)]
    ref = eager.run(attn, {}, *part, inputs=dict(cache, cache_len=lengths))
    cache2 = new_cache(layout == "paged")
    torch.testing.assert_close(m(*part, cache_len=lengths, **cache2), ref)
    torch.testing.assert_close(cache2["cache_k"], cache["cache_k"])  # the same appends


def test_ragged_rows_and_the_append_helper(module):
    """Rows of different lengths in one batch, the cache written by `kv_cache_append` (from
    attnspec and from the generated module), agree with each row decoded on its own."""
    layout, mod = module
    m, paged = mod.Alibi(backend="sdpa"), layout == "paged"
    q, k, v = qkv(2)
    lengths = torch.tensor([5, 2])
    cache = new_cache(paged)
    pages = cache.get("cache_pages")
    for append in (attnspec.kv_cache_append, mod.kv_cache_append):  # prefill: ALiBi needs no RoPE
        append(cache["cache_k"], cache["cache_v"], k[:, :, :5], v[:, :, :5],
               torch.zeros(B, dtype=torch.int64), pages)
    step = [t[:, :, 5:7] for t in (q, k, v)]
    out = m(*step, cache_len=lengths, **cache)
    for row in range(B):  # row b alone: its own prefix, then the same two new tokens
        n = int(lengths[row])
        alone = mod.Alibi(backend="eager")(*[torch.cat([t[row:row + 1, :, :n], s[row:row + 1]], 2)
                                             for t, s in zip((q, k, v), step)],
                                           cache_len=torch.zeros(1, dtype=torch.int64),
                                           **one_row(new_cache(paged), paged))
        torch.testing.assert_close(out[row:row + 1], alone[:, :, n:])


@pytest.mark.parametrize("change, message", [
    (dict(cache_len=torch.tensor([15, 0])), "cache_len must lie in [0, capacity - Sq]"),
    (dict(cache_len=torch.tensor([0.0, 1.0])), "cache_len must be int[B=2]"),
    (dict(cache_k=torch.zeros(B, 16, 3, 16)), "cache_k must have shape [B=2, capacity, "
                                              "kv_heads=2, head_dim=16]"),
    (dict(cache_v=None), "cache_v must be a float[B=2, capacity=16, kv_heads=2, value_dim=16]"),
])
def test_bad_contiguous_inputs_name_the_input(change, message):
    mod = attnspec.load(SPEC.format(cache=""))
    q, k, v = qkv(dtype=torch.float32)
    args = {**new_cache(False, torch.float32), "cache_len": torch.tensor([1, 2]), **change}
    with pytest.raises(ValueError, match=_re(message)):
        mod.Rope()(q[:, :, :2], k[:, :, :2], v[:, :, :2], **args)


@pytest.mark.parametrize("change, message", [
    (dict(cache_pages=torch.tensor([[5, 1, 9, 3], [0, 6, 2, 4]])),
     "cache_pages [B, max_pages] must hold page numbers in [0, 8)"),
    (dict(cache_pages=torch.tensor([[5, 1], [0, 6]])), "cache_len must lie in [0, capacity - Sq]"),
    (dict(cache_pages=torch.tensor([5, 1])), "cache_pages must have shape [B=2, max_pages]"),
])
def test_bad_paged_inputs_name_the_input(change, message):
    mod = attnspec.load(SPEC.format(cache="(paged = true)"))
    q, k, v = qkv(dtype=torch.float32)
    args = {**new_cache(True, torch.float32), "cache_len": torch.tensor([8, 2]), **change}
    with pytest.raises(ValueError, match=_re(message)):
        mod.Rope()(q[:, :, :2], k[:, :, :2], v[:, :, :2], **args)


def _re(text: str) -> str:
    import re
    return re.escape(text)


def test_k_must_hold_the_new_tokens():
    mod = attnspec.load(SPEC.format(cache=""))
    q, k, v = qkv(dtype=torch.float32)
    wanted = r"k: expected shape \[B, kv_heads, Sq, head_dim\] = \[2, 2, 2, 16\]"
    with pytest.raises(ValueError, match=wanted):
        mod.Rope()(q[:, :, :2], k, v, cache_len=torch.tensor([1, 2]),
                   **new_cache(False, torch.float32))


@pytest.mark.parametrize("text, message", [
    ("input cache: kv_cache\n mask causal_bottom_right", "`kv_len` has no single value"),
    ("input cache: kv_cache\n input doc: int[batch, seq]\n mask same(doc)",
     "a decoding attention takes per-row inputs"),
    ("input cache: kv_cache(paged = 1)", "`kv_cache(paged = ...)` must be true or false"),
    ("input cache: kv_cache\n bias cache", "kv_cache input `cache` is not a value"),
    ("input cache: kv_cache\n input cache_len: int[batch]", "clashes with the `cache_len=`"),
])
def test_spec_errors(text, message):
    with pytest.raises(AttnSpecError, match=_re(message)):
        attnspec.build(f"attention A {{\n heads = 2\n head_dim = 16\n {text}\n}}")


# --- flash-attn 4, modelled in torch -------------------------------------------------------
def fake_fa4_decode(q, k, v, *, seqused_k, page_table, softmax_scale, causal, window_size,
                    learnable_sink, softcap, deterministic=False, return_lse=False):
    """flash_attn.cute.flash_attn_varlen_func with seqused_k (and page_table): q [B, Sq, H, D],
    k/v [B, capacity, Hk, D] or a pool; each row aligned bottom-right at its own seqused_k.
    The sink logit joins each row's denominator; (out, lse [B, H, Sq] with `return_lse`)."""
    assert seqused_k.dtype == torch.int32 and q.dtype in (torch.float16, torch.bfloat16)
    assert page_table is None or page_table.dtype == torch.int32
    Bq, Sq, H, _ = q.shape
    out = torch.zeros(Bq, Sq, H, v.shape[-1])
    lse = torch.zeros(Bq, H, Sq)
    left, right = (None, 0) if causal else window_size
    for b in range(Bq):
        n = int(seqused_k[b])
        if page_table is None:
            keys, values = k[b, :n], v[b, :n]
        else:
            pos = torch.arange(n)
            page = page_table[b, pos // k.shape[1]].long()
            keys, values = k[page, pos % k.shape[1]], v[page, pos % k.shape[1]]
        keys = keys.float().repeat_interleave(H // k.shape[2], 1)
        values = values.float().repeat_interleave(H // k.shape[2], 1)
        s = softmax_scale * torch.einsum("qhd,khd->hqk", q[b].float(), keys)
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(~flash_window_mask(left, right, Sq, n), -math.inf)
        if learnable_sink is not None:  # one more logit per head, with a value of 0
            s = torch.cat([s, learnable_sink.float().view(H, 1, 1).expand(H, Sq, 1)], -1)
        out[b] = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1)[..., :n], values)
        lse[b] = torch.logsumexp(s, -1)
    return out.to(q.dtype), (lse if return_lse else None)


@pytest.mark.parametrize("paged", [False, True])
def test_flash_decode_reads_the_cache_in_place(paged, monkeypatch):
    text = SPEC.format(cache="(paged = true)" if paged else "").replace(
        "    bias alibi\n", "    score = softcap(score, 20.0)\n")
    mod = attnspec.load(text)
    monkeypatch.setattr(mod, "_flash_library", lambda device: mod._FlashLibrary(
        4, None, fake_fa4_decode))
    q, k, v = (t.to(torch.bfloat16) for t in qkv(3))
    for name in ("Rope", "Alibi"):
        flash, ref = getattr(mod, name)(backend="flash"), getattr(mod, name)(backend="eager")
        with torch.no_grad():
            got = decode(flash, paged, q, k, v)
            want = decode(ref, paged, q, k, v)
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_flash_refusals_and_plans():
    lowered = lower_module(attnspec.build(SPEC.format(cache="(paged = true)")))
    rope, alibi = lowered.attentions
    assert rope.plans["flash"].kind == "decode_paged"
    assert rope.plans["flex"].kind == rope.plans["sdpa"].kind == "decode"
    assert "not bias alibi" in alibi.reasons("flash")[0].message
    assert "edges" in alibi.refusals


@pytest.mark.parametrize("name", ["Rope", "Alibi"])
def test_flex_reads_pages_of_whole_blocks_in_place(name):
    """Pages of 128 tokens: flex reads the pool in place (one shared key sequence, a BlockMask
    listing each row's pages in its order) and agrees with the eager gather."""
    mod = attnspec.load(SPEC.format(cache="(paged = true)"))
    g = torch.Generator().manual_seed(4)
    pool_k = torch.randn(6, 128, 2, 16, generator=g, dtype=torch.float64)
    pool_v = torch.randn(6, 128, 2, 16, generator=g, dtype=torch.float64)
    table = torch.tensor([[4, 1, -1], [5, 0, 2]])  # -1: a row's unused entry
    lengths = torch.tensor([200, 7])
    q, k, v = (t[:, :, :2] for t in qkv(5))
    outs = {}
    for backend in ("flex", "eager"):
        cache = dict(cache_k=pool_k.clone(), cache_v=pool_v.clone(), cache_pages=table)
        outs[backend] = getattr(mod, name)(backend=backend)(q, k, v, cache_len=lengths, **cache)
    torch.testing.assert_close(outs["flex"], outs["eager"])


LAYER = """
attention Layer {{
    dim      = 32
    heads    = 4
    kv_heads = 2
    qk_norm  = rms
{cache}    mask causal
    position rope(base = 10000)
}}
"""


@pytest.mark.parametrize("paged", [False, True])
def test_layer_mode_decodes_like_training(paged):
    """Layer mode: x of the new tokens in, projections, the cache, the output projection; token
    by token equals the same layer without a cache on the whole sequence."""
    cache_line = f"    input cache: kv_cache{'(paged = true)' if paged else ''}\n"
    plain = attnspec.load(LAYER.format(cache="")).Layer(backend="eager").double()
    m = attnspec.load(LAYER.format(cache=cache_line)).Layer(backend="sdpa").double()
    m.load_state_dict(plain.state_dict())
    x = torch.randn(B, S, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    cache, lengths, outs = new_cache(paged), torch.zeros(B, dtype=torch.int64), []
    cache = {key: (val[..., :8] if val.is_floating_point() else val) for key, val in cache.items()}
    for start, stop in [(0, PROMPT)] + [(i, i + 1) for i in range(PROMPT, S)]:
        outs.append(m(x[:, start:stop], cache_len=lengths, **cache))
        lengths = lengths + (stop - start)
    torch.testing.assert_close(torch.cat(outs, 1), plain(x))
