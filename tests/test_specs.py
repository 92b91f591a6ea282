"""Every attention of every shipped spec (specs/*.attn), compiled with `attnspec.load`, against an
independent dense computation written out here in plain torch.

Nothing from attnspec is used but `attnspec.load`: masks are built from Python predicates, the
softmax, GQA head mapping, projections, ALiBi slopes, T5 buckets, RoPE, RMS norm, graph tables
and BigBird's random-link hash are all re-derived below from the contract
(/work/shared/attnspec-language.md, §4-§9) and the standard library's definitions.

Each test runs in float64 with random inputs and random (non-zero) values for every parameter,
and compares the output and the gradients of every float input and every parameter, obtained
by back-propagating `(out * g).sum()` for one random `g` through both computations.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import attnspec

SPECS = Path(__file__).resolve().parent.parent / "specs"
F64 = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-10}


# --- loading and random data -------------------------------------------------------------------
@functools.cache
def spec(name: str):
    return attnspec.load(SPECS / f"{name}.attn")


def make(spec_name: str, cls_name: str, **overrides) -> torch.nn.Module:
    return getattr(spec(spec_name), cls_name)(**overrides).to(F64)


def randn(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64) * scale


def randint(low: int, high: int, shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, shape, generator=g)


def randomize(m: torch.nn.Module, seed: int) -> None:
    """Every parameter random and non-zero: projection weights N(0, 1/fan_in), the rest N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            std = 1 / math.sqrt(p.shape[1]) if name.endswith("_proj.weight") else 1.0
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * std)


def qkv(b, h, kvh, sq, sk, d, seed, scale=1.0):
    return (randn(b, h, sq, d, seed=seed, scale=scale), randn(b, kvh, sk, d, seed=seed + 1,
                                                            scale=scale),
            randn(b, kvh, sk, d, seed=seed + 2))


# --- the dense reference -----------------------------------------------------------------------
def pair_mask(fn, sq: int, sk: int) -> torch.Tensor:
    """[1, 1, Sq, Sk] bool from a Python predicate of (q, k)."""
    return torch.tensor([[bool(fn(i, j)) for j in range(sk)] for i in range(sq)]).view(
        1, 1, sq, sk)


def batch_mask(fn, b: int, sq: int, sk: int) -> torch.Tensor:
    """[B, 1, Sq, Sk] bool from a Python predicate of (b, q, k)."""
    return torch.tensor([[[bool(fn(n, i, j)) for j in range(sk)] for i in range(sq)]
                         for n in range(b)]).view(b, 1, sq, sk)


def per_head(k: torch.Tensor, heads: int) -> torch.Tensor:
    """GQA written as a loop: query head h reads kv head h // (heads // kv_heads)."""
    group = heads // k.shape[1]
    return torch.stack([k[:, h // group] for h in range(heads)], dim=1)


def raw_scores(q, k, scale):
    return scale * torch.einsum("bhqd,bhkd->bhqk", q, per_head(k, q.shape[1]))


def attend(s, mask, v, sink=None):
    """Softmax over keys, written out: masked entries are dropped from the max and the sum; a
    row with nothing to attend gives 0. A sink is one more always-visible key per head, with
    logit sink[h] and a zero value."""
    heads = s.shape[1]
    v = per_head(v, heads)
    mask = mask.expand(s.shape)
    if sink is not None:
        B, H, Sq, _ = s.shape
        s = torch.cat([s, sink.view(1, H, 1, 1).expand(B, H, Sq, 1)], dim=-1)
        mask = torch.cat([mask, torch.ones(B, H, Sq, 1, dtype=torch.bool)], dim=-1)
        v = torch.cat([v, torch.zeros_like(v[:, :, :1])], dim=-2)
    s = torch.where(mask, s, torch.full_like(s, -math.inf))
    row_max = s.amax(-1, keepdim=True)
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max).detach()
    e = torch.exp(s - row_max) * mask
    total = e.sum(-1, keepdim=True)
    p = e / torch.where(total > 0, total, torch.ones_like(total))
    return torch.einsum("bhqk,bhkd->bhqd", p, v)


def linear(x, P, name):
    out = x @ P[f"{name}.weight"].T
    bias = P.get(f"{name}.bias")
    return out if bias is None else out + bias


def split_heads(t, heads):
    B, S, _ = t.shape
    return t.reshape(B, S, heads, -1).permute(0, 2, 1, 3)


def merge_heads(o):
    B, H, S, D = o.shape
    return o.permute(0, 2, 1, 3).reshape(B, S, H * D)


def layer(x, context, P, heads, kv_heads, core):
    """Layer mode: project, split heads, core(q, k, v) -> [B, H, S, Dv], merge, o_proj."""
    context = x if context is None else context
    q = split_heads(linear(x, P, "q_proj"), heads)
    k = split_heads(linear(context, P, "k_proj"), kv_heads)
    v = split_heads(linear(context, P, "v_proj"), kv_heads)
    return linear(merge_heads(core(q, k, v)), P, "o_proj")


def alibi_paper_slopes(n: int) -> list[float]:
    """`get_slopes` from the ALiBi paper's code (Press et al., ofirpress/attention_with_linear_
    biases), geometric sequence form."""
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + alibi_paper_slopes(2 * closest)[0::2][: n - closest]


def alibi_bias(heads, sq, sk):
    slopes = torch.tensor(alibi_paper_slopes(heads), dtype=F64).view(1, heads, 1, 1)
    dist = torch.tensor([[abs(i - j) for j in range(sk)] for i in range(sq)], dtype=F64)
    return -slopes * dist


def hf_t5_bucket(rel: int, bidirectional: bool = True, num_buckets: int = 32,
                 max_distance: int = 128) -> int:
    """Hugging Face T5's `_relative_position_bucket`, one Python int at a time (float64 log)."""
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        bucket += num_buckets if rel > 0 else 0
        rel = abs(rel)
    else:
        rel = -min(rel, 0)
    max_exact = num_buckets // 2
    if rel < max_exact:
        return bucket + rel
    large = max_exact + int(math.log(rel / max_exact) / math.log(max_distance / max_exact)
                            * (num_buckets - max_exact))
    return bucket + min(large, num_buckets - 1)


def rope_rotate_half(x, positions, base=10000.0):
    """Hugging Face LLaMA rotary embedding on all head_dim channels: positions [S] or [B, S]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=F64) / d))
    positions = torch.as_tensor(positions).to(F64)
    freqs = positions[..., :, None] * inv_freq  # [.., S, d/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    if emb.dim() == 3:
        emb = emb[:, None]
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


def rms(x, weight):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * weight


def softcap(s, c):
    return c * torch.tanh(s / c)


# --- comparison harness ------------------------------------------------------------------------
def check(m, args, ref, seed=0, nonzero_grads=True, **inputs):
    """m(*args, **inputs) against ref(*args, P=params): output and the gradients of every arg
    and parameter. Returns the module's output."""
    randomize(m, seed + 1000)
    params = dict(m.named_parameters())
    args_m = [a.clone().requires_grad_() for a in args]
    out = m(*args_m, **inputs)
    args_r = [a.clone().requires_grad_() for a in args]
    P = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    expected = ref(*args_r, P=P)
    assert out.dtype == F64
    assert_close(out, expected, **TOL)
    g = randn(*out.shape, seed=seed + 2000)
    names = [f"arg{i}" for i in range(len(args))] + list(params)
    got = torch.autograd.grad((out * g).sum(), args_m + list(params.values()), allow_unused=True)
    want = torch.autograd.grad((expected * g).sum(), args_r + list(P.values()),
                               allow_unused=True)
    for name, a, b, t in zip(names, got, want, args_r + list(P.values())):
        a = torch.zeros_like(t) if a is None else a
        b = torch.zeros_like(t) if b is None else b
        assert_close(a, b, **TOL, msg=lambda msg, name=name: f"gradient of {name}: {msg}")
        if nonzero_grads:
            assert b.abs().sum() > 0, f"the reference gradient of {name} is 0: a vacuous test"
    return out.detach()


def kernel_check(m, mask_fn, sq, sk, b=2, seed=0, score_fn=None, sink_name=None, scale=1.0,
                 **inputs):
    """Kernel mode: mask_fn() -> bool broadcastable to [B, H, Sq, Sk]; score_fn(s, P) -> s."""
    q, k, v = qkv(b, m.heads, m.kv_heads, sq, sk, m.head_dim, seed, scale)
    mask = mask_fn()

    def ref(q, k, v, P):
        s = raw_scores(q, k, 1 / math.sqrt(m.head_dim))
        if score_fn is not None:
            s = score_fn(s, P)
        return attend(s, mask, v, None if sink_name is None else P[sink_name])

    assert m.scale == pytest.approx(1 / math.sqrt(m.head_dim), rel=1e-15)
    out = check(m, [q, k, v], ref, seed=seed, **inputs)
    assert out.shape == (b, m.heads, sq, m.head_dim)
    return out, mask


def assert_zero_rows(out, mask):
    """Rows whose mask is all false output exactly 0 (out [B, H, Sq, D] or layer [B, S, dim])."""
    empty = ~mask.any(-1)  # [B or 1, 1, Sq]
    assert empty.any(), "the test meant to have fully masked rows"
    rows = empty.expand(out.shape[0], -1, -1)[:, 0]  # [B, Sq]
    if out.dim() == 4:
        assert torch.equal(out.permute(0, 2, 1, 3)[rows], torch.zeros_like(
            out.permute(0, 2, 1, 3)[rows]))
    else:
        assert torch.equal(out[rows], torch.zeros_like(out[rows]))
    assert (out.abs().sum(-1) > 0).any()


# --- decode.attn: token by token through a cache equals the whole sequence ---------------------
def _decode_steps(step, B: int, S: int) -> torch.Tensor:
    """A prompt of 4 tokens, then one per call; `step(start, stop, lengths)` runs one call."""
    lengths, outs = torch.zeros(B, dtype=torch.int64), []
    for start, stop in [(0, 4)] + [(i, i + 1) for i in range(4, S)]:
        outs.append(step(start, stop, lengths))
        lengths = lengths + (stop - start)
    return outs


def test_decode_specs_decode_like_the_whole_sequence():
    mod, g = spec("decode"), torch.Generator().manual_seed(0)
    B, S = 2, 6
    llama = mod.LlamaDecode(backend="sdpa").double()
    q = torch.randn(B, 32, S, 128, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, 8, S, 128, generator=g, dtype=torch.float64) for _ in range(2))

    def paged():
        return dict(cache_k=torch.zeros(6, 4, 8, 128, dtype=torch.float64),
                    cache_v=torch.zeros(6, 4, 8, 128, dtype=torch.float64),
                    cache_pages=torch.tensor([[3, 0, 5], [1, 4, 2]]))

    cache = paged()
    steps = _decode_steps(lambda a, b, n: llama(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                                cache_len=n, **cache), B, S)
    whole = llama(q, k, v, cache_len=torch.zeros(B, dtype=torch.int64), **paged())
    torch.testing.assert_close(torch.cat(steps, 2), whole)
    layer = mod.AlibiDecode(backend="sdpa").double()
    x = torch.randn(B, S, 512, generator=g, dtype=torch.float64)

    def contiguous():
        return dict(cache_k=torch.zeros(B, 8, 2, 64, dtype=torch.float64),
                    cache_v=torch.zeros(B, 8, 2, 64, dtype=torch.float64))

    cache = contiguous()
    steps = _decode_steps(lambda a, b, n: layer(x[:, a:b], cache_len=n, **cache), B, S)
    whole = layer(x, cache_len=torch.zeros(B, dtype=torch.int64), **contiguous())
    torch.testing.assert_close(torch.cat(steps, 1), whole)


# --- coverage: every attention of every shipped spec has a test here ---------------------------
COVERED = {
    "alibi": {"AlibiCausal6", "AlibiCausal8"},
    "anchor": {"AnchorAttention"},
    "attention_sinks": {"SlidingWindowSinks", "StreamingLLM"},
    "causal_lm": {"CausalLM"},
    "cross_attention": {"CrossAttention", "DecodeWithCache"},
    "decode": {"LlamaDecode", "AlibiDecode"},
    "graph": {"GraphAttention"},
    "key_padding": {"KeyPaddingEager", "KeyPaddingLengths"},
    "local_strided_bigbird": {"Local", "Strided", "BigBird"},
    "mup_layer": {"MupCausalLayer"},
    "packed_documents": {"PackedDocuments"},
    "prefix_lm": {"PrefixLMRuntime", "PrefixLMConstant"},
    "rope": {"RopeCausal", "RopeQKNormGQA"},
    "sliding_window": {"SlidingWindowGQA", "SlidingWindowMistral"},
    "softcap_gemma": {"Gemma2Local", "Gemma2Global"},
    "t5_relative": {"T5Encoder", "T5Decoder"},
}


def test_every_shipped_attention_is_covered():
    found = {}
    for path in sorted(SPECS.glob("*.attn")):
        mod = spec(path.stem)
        found[path.stem] = {name for name, obj in vars(mod).items()
                            if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
                            and obj.__module__ == mod.__name__}
    assert found == COVERED


# --- causal_lm.attn ----------------------------------------------------------------------------
@pytest.mark.parametrize("sq, sk", [(37, 37), (20, 37), (37, 20)])
def test_causal_lm_top_left(sq, sk):
    m = make("causal_lm", "CausalLM", head_dim=16)
    assert (m.heads, m.kv_heads) == (12, 12)
    kernel_check(m, lambda: pair_mask(lambda i, j: i >= j, sq, sk), sq, sk)


# --- alibi.attn --------------------------------------------------------------------------------
def test_alibi_paper_slopes_hand_values():
    assert alibi_paper_slopes(6) == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert alibi_paper_slopes(8) == [2.0**-i for i in range(1, 9)]
    assert alibi_paper_slopes(16) == pytest.approx([2 ** (-i / 2) for i in range(1, 17)])


@pytest.mark.parametrize("name, heads", [("AlibiCausal6", 6), ("AlibiCausal8", 8)])
def test_alibi_causal(name, heads):
    m = make("alibi", name, head_dim=16)
    assert m.heads == heads
    S = 37
    kernel_check(m, lambda: pair_mask(lambda i, j: i >= j, S, S), S, S,
                 score_fn=lambda s, P: s + alibi_bias(heads, S, S))


# --- sliding_window.attn -----------------------------------------------------------------------
def test_sliding_window_gqa_inclusive_window_alibi_softcap():
    # Queries 0..1029 against 12 keys: the window edge (q - k = 1024 in, 1025 out) is crossed by
    # the last queries, e.g. query 1029 sees keys 5..11 only.
    m = make("sliding_window", "SlidingWindowGQA", head_dim=16)
    assert (m.heads, m.kv_heads) == (16, 4)
    sq, sk = 1030, 12
    mask = pair_mask(lambda i, j: i >= j and i - j <= 1024, sq, sk)
    assert mask[0, 0, 1029].nonzero().flatten().tolist() == list(range(5, 12))
    assert mask[0, 0, 1024].all() and not mask[0, 0, 1025, 0]
    kernel_check(m, lambda: mask, sq, sk, b=1, scale=3.0,
                 score_fn=lambda s, P: softcap(s + alibi_bias(16, sq, sk), 30.0))


def test_sliding_window_mistral_4096():
    m = make("sliding_window", "SlidingWindowMistral", head_dim=16)
    assert (m.heads, m.kv_heads) == (32, 8)
    sq, sk = 4100, 9
    mask = pair_mask(lambda i, j: i >= j and i - j <= 4096, sq, sk)
    assert mask[0, 0, 4099].nonzero().flatten().tolist() == [3, 4, 5, 6, 7, 8]
    kernel_check(m, lambda: mask, sq, sk, b=1, scale=3.0)


# --- softcap_gemma.attn ------------------------------------------------------------------------
def test_gemma2_local_window_4095_softcap():
    m = make("softcap_gemma", "Gemma2Local", head_dim=16)
    assert (m.heads, m.kv_heads) == (8, 4)
    sq, sk = 4100, 8
    mask = pair_mask(lambda i, j: i >= j and i - j <= 4095, sq, sk)
    assert mask[0, 0, 4099].nonzero().flatten().tolist() == [4, 5, 6, 7]
    kernel_check(m, lambda: mask, sq, sk, b=1, scale=4.0,
                 score_fn=lambda s, P: softcap(s, 50.0))


def test_gemma2_global_causal_softcap():
    m = make("softcap_gemma", "Gemma2Global", head_dim=16)
    S = 37
    kernel_check(m, lambda: pair_mask(lambda i, j: i >= j, S, S), S, S, scale=4.0,
                 score_fn=lambda s, P: softcap(s, 50.0))


# --- attention_sinks.attn ----------------------------------------------------------------------
def test_sliding_window_sinks():
    m0 = make("attention_sinks", "SlidingWindowSinks")
    assert torch.equal(m0.sink.detach(), torch.zeros(16, dtype=F64))  # init zeros
    m = make("attention_sinks", "SlidingWindowSinks", head_dim=16)
    assert (m.heads, m.kv_heads) == (16, 2)
    S = 150  # crosses the window: query 149 sees keys 22..149 (128 keys)
    mask = pair_mask(lambda i, j: i >= j and i - j <= 127, S, S)
    assert int(mask[0, 0, 149].sum()) == 128
    kernel_check(m, lambda: mask, S, S, sink_name="sink")


def test_sinks_large_logits():
    # Sinks from -30 to 30: the denominator must hold exp(sink[h]) (head 15 outputs ~0).
    m = make("attention_sinks", "SlidingWindowSinks", head_dim=16)
    S = 40
    q, k, v = qkv(1, 16, 2, S, S, 16, seed=5)
    with torch.no_grad():
        m.sink.copy_(torch.linspace(-30.0, 30.0, 16, dtype=F64))
        out = m(q, k, v)
        s = raw_scores(q, k, 0.25)
        expected = attend(s, pair_mask(lambda i, j: i >= j and i - j <= 127, S, S), v,
                          m.sink)
    assert_close(out, expected, **TOL)
    assert out[:, -1].abs().max() < 1e-9  # a sink logit of 30 takes almost all the mass


def test_streaming_llm_first_four_plus_recent():
    m = make("attention_sinks", "StreamingLLM", head_dim=16)
    sq, sk = 1030, 12
    mask = pair_mask(lambda i, j: i >= j and (i - j < 1020 or j < 4), sq, sk)
    assert mask[0, 0, 1029].nonzero().flatten().tolist() == [0, 1, 2, 3, 10, 11]
    kernel_check(m, lambda: mask, sq, sk, b=1)


# --- cross_attention.attn ----------------------------------------------------------------------
@pytest.mark.parametrize("sq, sk", [(5, 37), (1, 37), (37, 37), (40, 37)])
def test_decode_with_cache_bottom_right(sq, sk):
    m = make("cross_attention", "DecodeWithCache", head_dim=16)
    assert (m.heads, m.kv_heads) == (8, 2)
    mask = pair_mask(lambda i, j: j <= i + sk - sq, sq, sk)
    if sq <= sk:
        assert mask[0, 0, -1].all()  # the last query sees the whole cache
    out, mask = kernel_check(m, lambda: mask, sq, sk)
    if sq > sk:
        assert_zero_rows(out, mask)  # queries 0..2 of 40 see no key


def test_cross_attention_layer():
    m = make("cross_attention", "CrossAttention", dim=64, context_dim=48)
    assert (m.heads, m.head_dim) == (8, 8)
    assert m.k_proj.in_features == 48 and m.q_proj.in_features == 64
    x, ctx = randn(2, 19, 64, seed=1), randn(2, 23, 48, seed=2)

    def ref(x, ctx, P):
        return layer(x, ctx, P, 8, 8, lambda q, k, v: attend(
            raw_scores(q, k, 1 / math.sqrt(8)), torch.ones(1, 1, 1, 1, dtype=torch.bool), v))

    out = check(m, [x, ctx], ref)
    assert out.shape == (2, 19, 64)
    with pytest.raises(ValueError, match="context"):
        m(x)


# --- key_padding.attn --------------------------------------------------------------------------
def test_key_padding_bool_mask_and_empty_rows():
    m = make("key_padding", "KeyPaddingEager", head_dim=16)
    S = 37
    valid = torch.rand(3, S, generator=torch.Generator().manual_seed(3)) < 0.6
    valid[1] = False  # every key of example 1 is padding
    valid[2] = True
    out, mask = kernel_check(m, lambda: batch_mask(lambda b, i, j: bool(valid[b, j]), 3, S, S),
                             S, S, b=3, valid=valid)
    assert_zero_rows(out, mask)


def test_key_padding_lengths_and_empty_rows():
    m = make("key_padding", "KeyPaddingLengths", head_dim=16)
    S = 37
    lengths = torch.tensor([0, 20, 37, 50])
    out, mask = kernel_check(m, lambda: batch_mask(lambda b, i, j: j < lengths[b], 4, S, S),
                             S, S, b=4, lengths=lengths)
    assert_zero_rows(out, mask)


# --- packed_documents.attn ---------------------------------------------------------------------
def test_packed_documents():
    m = make("packed_documents", "PackedDocuments", head_dim=16)
    S = 37
    doc = torch.stack([
        torch.tensor([3] * 10 + [1] * 15 + [7] * 12),  # contiguous, ids unsorted
        randint(0, 4, (S,), seed=4),  # interleaved ids: equality is all that counts
    ])
    kernel_check(m, lambda: batch_mask(lambda b, i, j: i >= j and doc[b, i] == doc[b, j], 2, S,
                                       S), S, S, doc=doc)


# --- prefix_lm.attn ----------------------------------------------------------------------------
def test_prefix_lm_runtime():
    m = make("prefix_lm", "PrefixLMRuntime", head_dim=16)
    S = 37
    prefix = torch.tensor([0, 10, 50])
    kernel_check(m, lambda: batch_mask(lambda b, i, j: j < prefix[b] or i >= j, 3, S, S), S, S,
                 b=3, prefix=prefix)


def test_prefix_lm_constant():
    m = make("prefix_lm", "PrefixLMConstant", head_dim=16)
    S = 80
    mask = pair_mask(lambda i, j: j < 64 or i >= j, S, S)
    assert mask[0, 0, 0, 63] and not mask[0, 0, 0, 64]
    kernel_check(m, lambda: mask, S, S)


# --- local_strided_bigbird.attn ----------------------------------------------------------------
def test_local():
    m = make("local_strided_bigbird", "Local", head_dim=16)
    S = 300
    mask = pair_mask(lambda i, j: abs(i - j) <= 128, S, S)
    assert not mask.all()
    kernel_check(m, lambda: mask, S, S, b=1)


def test_strided():
    m = make("local_strided_bigbird", "Strided", head_dim=16)
    S = 150
    kernel_check(m, lambda: pair_mask(lambda i, j: j % 64 == 0, S, S), S, S)


def _rl_mix(x, y):
    return (x * 181 + y * 139 + (x * x) % 32749 + 71) % 32749


def _rl_hash(a, c, s):
    return _rl_mix(_rl_mix(_rl_mix(s % 32749, a % 32749), c % 32749), a % 32749 + 1)


def random_link(i, j, r, seed, kv_len):
    """stdlib `random_links(r, seed)` for one (q, k) pair, in Python integers."""
    return (_rl_hash(i, j, seed) * 32768 + _rl_hash(j, i, seed + 7)) % kv_len < r


def test_bigbird_local_global_random():
    m = make("local_strided_bigbird", "BigBird", head_dim=16)
    S = 200
    local_global = pair_mask(lambda i, j: abs(i - j) <= 64 or i < 8 or j < 8, S, S)
    links = pair_mask(lambda i, j: random_link(i, j, 3, 1234, S), S, S)
    assert 1 < links.sum() / S < 6  # about r = 3 links per query
    assert (links & ~local_global).any()  # the links matter beyond local + global
    kernel_check(m, lambda: local_global | links, S, S, b=1)


# --- t5_relative.attn --------------------------------------------------------------------------
def test_hf_t5_bucket_hand_values():
    assert [hf_t5_bucket(r) for r in (-1, 0, 1, -200, 7, 8, -8, 127, 128, 5000)] == \
        [1, 0, 17, 15, 23, 24, 8, 31, 31, 31]
    assert hf_t5_bucket(-12) == 8 + int(math.log(12 / 8) / math.log(16) * 8)


@pytest.mark.parametrize("name, causal, S", [("T5Encoder", False, 150), ("T5Decoder", True, 140)])
def test_t5_relative_bias(name, causal, S):
    assert not make("t5_relative", name).t5_bias.detach().any()  # init zeros
    m = make("t5_relative", name, dim=64)
    assert (m.heads, m.head_dim, m.scale) == (8, 8, 1.0)
    assert m.t5_bias.shape == (8, 32)
    buckets = torch.tensor([[hf_t5_bucket(j - i) for j in range(S)] for i in range(S)])
    mask = pair_mask(lambda i, j: i >= j or not causal, S, S)
    x = randn(2, S, 64, seed=7)

    def ref(x, P):
        bias = P["t5_bias"][:, buckets].unsqueeze(0)  # [1, H, S, S]
        return layer(x, None, P, 8, 8, lambda q, k, v: attend(raw_scores(q, k, 1.0) + bias,
                                                               mask, v))

    check(m, [x], ref)


# --- rope.attn ---------------------------------------------------------------------------------
def test_rope_causal():
    m = make("rope", "RopeCausal", dim=128)
    assert (m.heads, m.head_dim) == (8, 16)
    S = 37
    mask = pair_mask(lambda i, j: i >= j, S, S)

    def core(q, k, v):
        pos = torch.arange(S)
        q, k = rope_rotate_half(q, pos), rope_rotate_half(k, pos)
        return attend(raw_scores(q, k, 0.25), mask, v)

    check(m, [randn(2, S, 128, seed=8)], lambda x, P: layer(x, None, P, 8, 8, core))


def test_rope_qk_norm_gqa_positions():
    m = make("rope", "RopeQKNormGQA", dim=128)
    assert (m.heads, m.kv_heads, m.head_dim) == (8, 2, 16)
    S = 37
    pos = torch.stack([torch.cat([torch.arange(10), torch.arange(27)]), torch.arange(S) + 5])
    mask = pair_mask(lambda i, j: i >= j, S, S)

    def ref(x, P):
        def core(q, k, v):
            q, k = rms(q, P["q_norm_weight"]), rms(k, P["k_norm_weight"])
            q, k = rope_rotate_half(q, pos), rope_rotate_half(k, pos)
            return attend(raw_scores(q, k, 0.25), mask, v)
        return layer(x, None, P, 8, 2, core)

    check(m, [randn(2, S, 128, seed=9)], ref, pos=pos)


# --- anchor.attn -------------------------------------------------------------------------------
def test_anchor_token_groups_rope():
    m = make("anchor", "AnchorAttention", dim=48)
    assert (m.heads, m.head_dim) == (3, 16)
    sizes = {"sa": 100, "sq": 50, "va": 80, "vq": 60}
    group = []
    for name, n in sizes.items():
        group += [name] * n
    S = len(group)  # 290
    allowed = {"sa": {"sa"}, "sq": {"sa"}, "va": {"va"}, "vq": {"va"}}
    mask = pair_mask(lambda i, j: group[j] in allowed[group[i]], S, S)

    def core(q, k, v):
        pos = torch.arange(S)  # global positions, not positions within a group
        q, k = rope_rotate_half(q, pos), rope_rotate_half(k, pos)
        return attend(raw_scores(q, k, 0.25), mask, v)

    check(m, [randn(2, S, 48, seed=10)], lambda x, P: layer(x, None, P, 3, 3, core))
    with pytest.raises(ValueError):
        m(randn(1, 100, 48, seed=11))


# --- graph.attn --------------------------------------------------------------------------------
def graph_inputs(S, seed):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, S, (70,), generator=g)
    dst = torch.randint(0, S, (70,), generator=g)
    src = torch.where((src == 5) | (src == 17), (src + 1) % S, src)  # 5 and 17: no out-edges
    # duplicates of earlier edges with new types/distances: the last one must win
    src = torch.cat([src, src[:10], src[3:6]])
    dst = torch.cat([dst, dst[:10], dst[3:6]])
    etype = torch.randint(0, 2, (src.numel(),), generator=g)
    dist = torch.randint(0, 45, (src.numel(),), generator=g)  # >= 32 is clamped to 31
    return torch.stack([src, dst]), etype, dist


def graph_tables(index, etype, dist, S):
    edge = torch.zeros(S, S, dtype=torch.bool)
    typ = torch.zeros(S, S, dtype=torch.long)
    dis = torch.zeros(S, S, dtype=torch.long)
    for e in range(index.shape[1]):  # in order: the last duplicate wins
        i, j = int(index[0, e]), int(index[1, e])
        edge[i, j] = True
        typ[i, j] = 0 if etype is None else int(etype[e])
        dis[i, j] = 0 if dist is None else min(int(dist[e]), 31)
    return edge, typ, dis


def graph_ref(S, edge, typ, dis):
    scale = 1.0 * math.sqrt(64 // 8) / 16  # muP: attn_mult * sqrt(base_head_dim) / head_dim

    def ref(x, P):
        def core(q, k, v):
            s = raw_scores(q, k, scale) + P["type_bias"][:, typ].unsqueeze(0)
            s = s * torch.sigmoid(P["gate_logit"][:, typ, dis]).unsqueeze(0)
            return attend(s, edge.view(1, 1, S, S), v)
        return layer(x, None, P, 8, 8, core)

    return ref


def test_graph_typed_gated_mup():
    m = make("graph", "GraphAttention", dim=128)
    assert (m.heads, m.head_dim) == (8, 16)
    assert m.scale == pytest.approx(math.sqrt(8) / 16, rel=1e-15)  # not 1/sqrt(16)
    S = 23
    index, etype, dist = graph_inputs(S, seed=12)
    edge, typ, dis = graph_tables(index, etype, dist, S)
    assert (dist > 31).any() and not edge[5].any() and not edge[17].any()
    out = check(m, [randn(2, S, 128, seed=13)], graph_ref(S, edge, typ, dis),
                graph=index, graph_type=etype, graph_distance=dist)
    assert_zero_rows(out, edge.view(1, 1, S, S))  # no out_bias: nodes 5 and 17 give exactly 0


def test_graph_type_and_distance_default_to_zero():
    """Contract §4.4: edge_type and edge_distance are optional; every edge then reads 0."""
    m = make("graph", "GraphAttention", dim=128)
    S = 23
    index, _, _ = graph_inputs(S, seed=14)
    edge, typ, dis = graph_tables(index, None, None, S)
    check(m, [randn(2, S, 128, seed=15)], graph_ref(S, edge, typ, dis), graph=index)


def test_graph_mup_init_and_param_groups():
    m = make("graph", "GraphAttention")  # dim 256 = 4 x base_dim 64
    assert not m.q_proj.weight.detach().any()  # zero_query
    assert not m.type_bias.detach().any() and not m.gate_logit.detach().any()
    groups = m.mup_param_groups(1.0)
    lrs = {id(p): grp["lr"] for grp in groups for p in grp["params"]}
    assert lrs[id(m.k_proj.weight)] == pytest.approx(0.25)
    assert lrs[id(m.type_bias)] == 1.0 and lrs[id(m.gate_logit)] == 1.0


# --- mup_layer.attn ----------------------------------------------------------------------------
@pytest.mark.parametrize("dim, scale", [(256, 1 / 4), (512, 1 / 8), (1024, 1 / 16)])
def test_mup_scale_is_one_over_d(dim, scale):
    m = make("mup_layer", "MupCausalLayer", dim=dim)
    head_dim = dim // 16
    assert m.head_dim == head_dim
    assert m.scale == pytest.approx(1.0 * math.sqrt(256 // 16) / head_dim, rel=1e-15)
    assert m.scale == pytest.approx(scale, rel=1e-15)


def test_mup_init_and_param_groups():
    torch.manual_seed(0)
    m = spec("mup_layer").MupCausalLayer()  # dim 1024: m = 4
    assert not m.q_proj.weight.detach().any()
    for name in ("q_proj", "k_proj", "v_proj"):
        assert not getattr(m, name).bias.detach().any()
    assert m.o_proj.bias is None
    for name in ("k_proj", "v_proj", "o_proj"):
        w = getattr(m, name).weight.detach()
        assert abs(w.mean().item()) < 1e-4
        assert w.std().item() == pytest.approx(0.02 / math.sqrt(4), rel=0.02)
    groups = m.mup_param_groups(1e-2, weight_decay=0.1)
    seen = {}
    for grp in groups:
        for p in grp["params"]:
            assert id(p) not in seen
            seen[id(p)] = (grp["lr"], grp.get("weight_decay", 0.0))
    assert len(seen) == len(list(m.parameters()))
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        lr, wd = seen[id(getattr(m, name).weight)]
        assert lr == pytest.approx(1e-2 / 4) and wd == pytest.approx(0.1 * 4)
    for name in ("q_proj", "k_proj", "v_proj"):
        lr, wd = seen[id(getattr(m, name).bias)]
        assert lr == pytest.approx(1e-2) and wd == pytest.approx(0.1)


def test_mup_causal_layer():
    m = make("mup_layer", "MupCausalLayer", dim=512)
    assert (m.heads, m.head_dim) == (16, 32)
    assert m.q_proj.bias is not None and m.o_proj.bias is None
    S = 37
    mask = pair_mask(lambda i, j: i >= j, S, S)
    scale = math.sqrt(16) / 32

    def ref(x, P):
        return layer(x, None, P, 16, 16, lambda q, k, v: attend(raw_scores(q, k, scale), mask,
                                                                  v))

    check(m, [randn(2, S, 512, seed=16)], ref)
