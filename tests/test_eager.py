"""The eager interpreter against dense computations written out here, one feature at a time.

Every reference below is computed directly with torch (or Python loops), never through the
interpreter's own helpers, so a shared mistake cannot hide.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnspec.eager import alibi_slopes, evaluate_mask, run, t5_bucket
from attnspec.ir.build import build_text

F64 = torch.float64
NEG_INF = float("-inf")


# --- helpers -----------------------------------------------------------------------------------
def attention(body: str, name: str = "T"):
    return build_text(f"attention {name} {{\n{body}\n}}").attentions[0]


def rand(*shape, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64) * scale


def qkv(b=2, h=2, kvh=None, sq=5, sk=None, d=4, dv=None, seed=0, scale=1.0):
    kvh, sk, dv = kvh or h, sk or sq, dv or d
    return (rand(b, h, sq, d, seed=seed, scale=scale), rand(b, kvh, sk, d, seed=seed + 1,
                                                            scale=scale),
            rand(b, kvh, sk, dv, seed=seed + 2))


def pair_mask(fn, sq: int, sk: int) -> torch.Tensor:
    """[1, 1, Sq, Sk] from a Python predicate of (q, k)."""
    return torch.tensor([[fn(i, j) for j in range(sk)] for i in range(sq)]).view(1, 1, sq, sk)


def dense(q, k, v, scale, mask=None, score_fn=None, sink=None):
    """Textbook attention (k/v already one per query head): softmax with NaN rows set to 0;
    a sink is an extra logit column whose probability is dropped."""
    s = scale * torch.einsum("bhqd,bhkd->bhqk", q, k)
    if score_fn is not None:
        s = score_fn(s)
    if mask is not None:
        s = s.masked_fill(~mask, NEG_INF)
    if sink is not None:
        column = sink.view(1, -1, 1, 1).expand(*s.shape[:-1], 1)
        p = torch.softmax(torch.cat([s, column], -1), -1)[..., :-1]
    else:
        p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    return p @ v


def rotate_half_rope(x, positions, base, dims=None):
    """GPT-NeoX / Hugging Face LLaMA rotary embedding on the first `dims` channels."""
    dims = dims or x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, dims, 2, dtype=F64) / dims))
    freqs = positions.to(F64)[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos(), emb.sin()
    if cos.dim() == 3:  # [B, S, dims] -> [B, 1, S, dims]
        cos, sin = cos[:, None], sin[:, None]
    rot, rest = x[..., :dims], x[..., dims:]
    x1, x2 = rot[..., : dims // 2], rot[..., dims // 2:]
    rotated = torch.cat([-x2, x1], -1)
    return torch.cat([rot * cos + rotated * sin, rest], -1)


def close(a, b, atol=1e-10):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-9)


# --- masks and alignment -----------------------------------------------------------------------
def test_causal_top_left_vs_bottom_right():
    sq, sk = 3, 5
    top = attention("heads = 2\nhead_dim = 4\nmask causal")
    bottom = attention("heads = 2\nhead_dim = 4\nmask causal_bottom_right")
    top_mask = pair_mask(lambda i, j: j <= i, sq, sk)
    bottom_mask = pair_mask(lambda i, j: j <= i + sk - sq, sq, sk)
    assert torch.equal(evaluate_mask(top, 2, sq, sk), top_mask.expand(2, 2, sq, sk))
    assert torch.equal(evaluate_mask(bottom, 2, sq, sk), bottom_mask.expand(2, 2, sq, sk))
    q, k, v = qkv(sq=sq, sk=sk)
    out_top, out_bottom = run(top, {}, q, k, v), run(bottom, {}, q, k, v)
    close(out_top, dense(q, k, v, 0.5, top_mask))
    close(out_bottom, dense(q, k, v, 0.5, bottom_mask))
    assert not torch.allclose(out_top, out_bottom)


def test_causal_alignments_agree_when_lengths_match():
    top = attention("heads = 1\nhead_dim = 4\nmask causal")
    bottom = attention("heads = 1\nhead_dim = 4\nmask causal_bottom_right")
    assert torch.equal(evaluate_mask(top, 1, 6, 6), evaluate_mask(bottom, 1, 6, 6))


@pytest.mark.parametrize("w", [0, 1, 3])
def test_sliding_window_sees_w_plus_one_keys(w):
    s = 9
    attn = attention(f"heads = 1\nhead_dim = 4\nmask sliding_window({w})")
    mask = evaluate_mask(attn, 1, s, s)[0, 0]
    for i in range(s):
        keys = mask[i].nonzero().flatten().tolist()
        assert keys == list(range(max(0, i - w), i + 1))
    assert mask[s - 1].sum() == w + 1
    q, k, v = qkv(b=1, h=1, sq=s)
    close(run(attn, {}, q, k, v), dense(q, k, v, 0.5, pair_mask(lambda i, j: 0 <= i - j <= w,
                                                                  s, s)))


def test_window_left_right():
    attn = attention("heads = 1\nhead_dim = 4\nmask window(2, 1)")
    expected = pair_mask(lambda i, j: i - 2 <= j <= i + 1, 6, 8)
    assert torch.equal(evaluate_mask(attn, 1, 6, 8), expected)
    q, k, v = qkv(b=1, h=1, sq=6, sk=8)
    close(run(attn, {}, q, k, v), dense(q, k, v, 0.5, expected))


def test_no_mask_attends_everything():
    attn = attention("heads = 2\nhead_dim = 4")
    assert evaluate_mask(attn, 2, 3, 4).all()
    q, k, v = qkv(sq=3, sk=4)
    close(run(attn, {}, q, k, v), dense(q, k, v, 0.5))


def test_several_masks_are_anded():
    attn = attention("heads = 1\nhead_dim = 4\nmask causal\nmask k % 2 == 0")
    assert torch.equal(evaluate_mask(attn, 1, 5, 5),
                       pair_mask(lambda i, j: j <= i and j % 2 == 0, 5, 5))


def test_packed_documents():
    attn = attention("heads = 1\nhead_dim = 4\ninput doc: int[batch, seq]\nmask causal\n"
                     "mask same(doc)")
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 3, 3]])
    mask = evaluate_mask(attn, 2, 6, 6, inputs={"doc": doc})
    for b in range(2):
        expected = pair_mask(lambda i, j, b=b: j <= i and doc[b, i] == doc[b, j], 6, 6)
        assert torch.equal(mask[b:b + 1], expected)


# --- expression semantics ----------------------------------------------------------------------
EXPRESSIONS = [
    ("(q - k) // 3 == -1", lambda b, h, q, k: (q - k) // 3 == -1),
    ("(k - q) % 4 == 1", lambda b, h, q, k: (k - q) % 4 == 1),
    ("q / 2 > k / 3", lambda b, h, q, k: q / 2 > k / 3),
    ("min(q, k) + max(q, k, 3) * 2 > 9", lambda b, h, q, k: min(q, k) + max(q, k, 3) * 2 > 9),
    ("floor(q / 3) == ceil(k / 4)", lambda b, h, q, k: math.floor(q / 3) == math.ceil(k / 4)),
    ("where(q > k, q, 0 - k) % 3 == 0", lambda b, h, q, k: (q if q > k else -k) % 3 == 0),
    ("!(q == k) & clamp(k - q, -2, 2) != 2", lambda b, h, q, k: q != k and k - q < 2),
    ("abs(q - k) <= 2 | k % 2 == 0", lambda b, h, q, k: abs(q - k) <= 2 or k % 2 == 0),
    ("exp2(q) >= k * 3 + 0.5", lambda b, h, q, k: 2.0**q >= k * 3 + 0.5),
    ("sqrt(k) < 2.0 | log2(q + 1) > 2.5", lambda b, h, q, k: k**0.5 < 2 or math.log2(q + 1) > 2.5),
    ("q_len - q > kv_len - k", lambda b, h, q, k: 7 - q > 9 - k),
    ("h * 3 + q > k | b == 1", lambda b, h, q, k: h * 3 + q > k or b == 1),
    ("-q // 2 == -(k // 2)", lambda b, h, q, k: -q // 2 == -(k // 2)),
    ("(q + 0.5) % 2.0 < 1.0", lambda b, h, q, k: (q + 0.5) % 2.0 < 1.0),
    ("tanh(q - k) > 0.5 & sigmoid(k) < 0.99", lambda b, h, q, k: math.tanh(q - k) > 0.5
     and 1 / (1 + math.exp(-k)) < 0.99),
    ("exp(k) > log(q + 1) * 5 | head_dim == k", lambda b, h, q, k: math.exp(k)
     > math.log(q + 1) * 5 or k == 4),
]


@pytest.mark.parametrize("text, fn", EXPRESSIONS, ids=[e[0] for e in EXPRESSIONS])
def test_expression_semantics_match_python(text, fn):
    attn = attention(f"heads = 2\nhead_dim = 4\nmask {text}")
    mask = evaluate_mask(attn, 2, 7, 9)
    expected = torch.tensor([[[[fn(b, h, i, j) for j in range(9)] for i in range(7)]
                              for h in range(2)] for b in range(2)])
    assert torch.equal(mask, expected)


# --- GQA ---------------------------------------------------------------------------------------
def test_gqa_head_mapping_against_a_loop():
    attn = attention("heads = 4\nkv_heads = 2\nhead_dim = 4\nvalue_dim = 3\nmask causal")
    q, k, v = qkv(b=2, h=4, kvh=2, sq=5, sk=6, d=4, dv=3)
    out = run(attn, {}, q, k, v)
    assert out.shape == (2, 4, 5, 3)
    causal = torch.tensor([[j <= i for j in range(6)] for i in range(5)])
    for b in range(2):
        for h in range(4):
            s = 0.5 * q[b, h] @ k[b, h // 2].T
            p = torch.softmax(s.masked_fill(~causal, NEG_INF), -1)
            close(out[b, h], p @ v[b, h // 2])


# --- relative biases ---------------------------------------------------------------------------
def test_alibi_slopes_paper_values():
    assert alibi_slopes(8) == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(6) == [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]
    assert alibi_slopes(1) == [1 / 256]


@pytest.mark.parametrize("heads", [6, 8])
def test_alibi_bias(heads):
    attn = attention(f"heads = {heads}\nhead_dim = 4\nmask causal\nbias alibi")
    slopes = {6: [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125],
              8: [2.0 ** -(i + 1) for i in range(8)]}[heads]
    q, k, v = qkv(b=1, h=heads, sq=6)
    dist = torch.tensor([[abs(i - j) for j in range(6)] for i in range(6)], dtype=F64)
    bias = -torch.tensor(slopes, dtype=F64).view(1, -1, 1, 1) * dist
    expected = dense(q, k, v, 0.5, pair_mask(lambda i, j: j <= i, 6, 6), lambda s: s + bias)
    close(run(attn, {}, q, k, v), expected)


def test_t5_bucket_hand_computed():
    # bidirectional, 32 buckets, max_distance 128: 16 per side, 8 exact, then log-spaced.
    rel = torch.tensor([0, -1, 1, -7, -8, -11, -12, -16, -32, -64, -127, -128, -1000, 5, 12,
                        200])
    expected = [0, 1, 17, 7, 8, 8, 9, 10, 12, 14, 15, 15, 15, 21, 25, 31]
    assert t5_bucket(rel, 32, 128, True).tolist() == expected
    # one-sided (decoder): future positions share bucket 0; 16 exact, then log-spaced to 31.
    rel = torch.tensor([5, 0, -5, -15, -16, -20, -32, -64, -127, -128, -500])
    expected = [0, 0, 5, 15, 16, 17, 21, 26, 31, 31, 31]
    assert t5_bucket(rel, 32, 128, False).tolist() == expected


def _hf_bucket(rel: int, buckets: int, max_distance: int) -> int:
    """HF T5 `_relative_position_bucket` for one bidirectional value, in Python floats."""
    n = buckets // 2
    out = n if rel > 0 else 0
    rel = abs(rel)
    exact = n // 2
    if rel < exact:
        return out + rel
    large = exact + int(math.log(rel / exact) / math.log(max_distance / exact) * (n - exact))
    return out + min(large, n - 1)


def test_t5_bias_table():
    attn = attention("heads = 2\nhead_dim = 4\nscale = 1.0\nbias t5(buckets = 8, "
                     "max_distance = 12)")
    table = rand(2, 8, seed=7)
    q, k, v = qkv(b=1, sq=7, sk=16)
    bias = torch.stack([torch.tensor([[table[h, _hf_bucket(j - i, 8, 12)].item()
                                       for j in range(16)] for i in range(7)], dtype=F64)
                        for h in range(2)])[None]
    close(run(attn, {"t5_bias": table}, q, k, v), dense(q, k, v, 1.0, None,
                                                        lambda s: s + bias))


# --- the score pipeline ------------------------------------------------------------------------
def test_pipeline_order_matters():
    before = attention("heads = 2\nhead_dim = 4\nbias alibi\nscore = softcap(score, 1.5)")
    after = attention("heads = 2\nhead_dim = 4\nscore = softcap(score, 1.5)\nbias alibi")
    q, k, v = qkv(sq=6, scale=2.0)
    dist = torch.tensor([[abs(i - j) for j in range(6)] for i in range(6)], dtype=F64)
    alibi = -torch.tensor([1 / 16, 1 / 256], dtype=F64).view(1, 2, 1, 1) * dist

    def cap(s):
        return 1.5 * torch.tanh(s / 1.5)

    out_before, out_after = run(before, {}, q, k, v), run(after, {}, q, k, v)
    close(out_before, dense(q, k, v, 0.5, None, lambda s: cap(s + alibi)))
    close(out_after, dense(q, k, v, 0.5, None, lambda s: cap(s) + alibi))
    assert (out_before - out_after).abs().max() > 1e-3


def test_score_assignment_replaces_and_is_masked_after():
    attn = attention("heads = 1\nhead_dim = 4\nmask causal\nscore = score * 2.0 + q - k")
    q, k, v = qkv(b=1, h=1, sq=5)
    diff = torch.tensor([[i - j for j in range(5)] for i in range(5)], dtype=F64)
    expected = dense(q, k, v, 0.5, pair_mask(lambda i, j: j <= i, 5, 5),
                     lambda s: s * 2.0 + diff)
    close(run(attn, {}, q, k, v), expected)


def test_constant_score_broadcasts():
    attn = attention("heads = 2\nhead_dim = 4\nmask causal\nscore = 0.0")
    q, k, v = qkv(sq=4)
    counts = torch.arange(1, 5, dtype=F64).view(1, 1, 4, 1)
    expected = torch.cumsum(v, 2) / counts  # uniform over the visible keys
    close(run(attn, {}, q, k, v), expected)


# --- softmax edge cases ------------------------------------------------------------------------
KEY_LEN = "heads = 2\nhead_dim = 4\ninput lengths: int[batch]\nmask key_len(lengths)"


@pytest.mark.parametrize("sinks", [False, True])
def test_fully_masked_rows_give_zero(sinks):
    attn = attention(KEY_LEN + ("\nsinks = true" if sinks else ""))
    q, k, v = qkv(sq=4)
    q.requires_grad_(True)
    state = {"sink": rand(2, seed=3)} if sinks else {}
    out = run(attn, state, q, k, v, inputs={"lengths": torch.tensor([0, 2])})
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # exactly 0
    assert not out.isnan().any()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
    assert torch.equal(q.grad[0], torch.zeros_like(q.grad[0]))


def test_fully_masked_rows_from_minus_inf_bias():
    attn = attention("heads = 1\nhead_dim = 4\nbias where(k > q, -inf, 0.0)\nmask k >= 2")
    q, k, v = qkv(b=1, h=1, sq=4)
    out = run(attn, {}, q, k, v)
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 4, dtype=F64))
    close(out, dense(q, k, v, 0.5, pair_mask(lambda i, j: 2 <= j <= i, 4, 4)))


def test_sinks_join_the_denominator():
    attn = attention("heads = 4\nkv_heads = 2\nhead_dim = 4\nsinks = true\nmask causal")
    q, k, v = qkv(h=4, kvh=2, sq=5)
    sink = torch.tensor([-1.0, 0.0, 2.0, 5.0], dtype=F64)
    out = run(attn, {"sink": sink}, q, k, v)
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    causal = pair_mask(lambda i, j: j <= i, 5, 5)
    close(out, dense(q, kr, vr, 0.5, causal, sink=sink))
    # Explicitly: p = exp(s) / (sum exp(s) + exp(sink)), so outputs shrink as the sink grows.
    s = (0.5 * q @ kr.transpose(-1, -2)).masked_fill(~causal, NEG_INF)
    p = s.exp() / (s.exp().sum(-1, keepdim=True) + sink.view(1, 4, 1, 1).exp())
    close(out, p @ vr)
    assert not torch.allclose(out, dense(q, kr, vr, 0.5, causal))


# --- edges ------------------------------------------------------------------------------------
GRAPH = """heads = 2
head_dim = 4
input graph: edges(types = 3, max_distance = 4{loops})
param type_bias: float[heads, 3] = zeros
param dist_bias: float[heads, 4] = zeros
mask  graph.edge
bias  type_bias[h, graph.type] + dist_bias[h, graph.distance]"""

# (src, dst, type, distance); (0, 1) appears twice: the later one wins; distances clamp to [0, 3].
EDGES = [(0, 1, 1, 2), (0, 2, 0, 7), (1, 1, 2, 0), (0, 1, 2, -3), (3, 4, 1, 9), (4, 0, 0, 1),
         (3, 3, 1, 2)]


def edge_inputs(name="graph"):
    index = torch.tensor([[e[0] for e in EDGES], [e[1] for e in EDGES]])
    return {name: index, f"{name}_type": torch.tensor([e[2] for e in EDGES]),
            f"{name}_distance": torch.tensor([e[3] for e in EDGES])}


def edge_tables(n: int, self_loops: bool):
    edge = torch.zeros(n, n, dtype=torch.bool)
    kind = torch.zeros(n, n, dtype=torch.int64)
    dist = torch.zeros(n, n, dtype=torch.int64)
    if self_loops:
        edge.fill_diagonal_(True)
    for src, dst, t, d in EDGES:  # sequential assignment: the last edge wins
        edge[src, dst], kind[src, dst], dist[src, dst] = True, t, min(max(d, 0), 3)
    return edge, kind, dist


@pytest.mark.parametrize("self_loops", [False, True])
def test_edges_types_distances_last_wins(self_loops):
    attn = attention(GRAPH.format(loops=", self_loops = true" if self_loops else ""))
    edge, kind, dist = edge_tables(5, self_loops)
    assert kind[0, 1] == 2 and dist[0, 1] == 0 and dist[3, 4] == 3
    type_bias, dist_bias = rand(2, 3, seed=4), rand(2, 4, seed=5)
    q, k, v = qkv(sq=5)
    bias = type_bias[:, kind][None] + dist_bias[:, dist][None]
    expected = dense(q, k, v, 0.5, edge[None, None], lambda s: s + bias)
    out = run(attn, {"type_bias": type_bias, "dist_bias": dist_bias}, q, k, v,
              inputs=edge_inputs())
    close(out, expected)
    if not self_loops:
        assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))  # node 2: no out-edges
    assert torch.equal(evaluate_mask(attn, 1, 5, 5, inputs=edge_inputs())[0, 0], edge)


@pytest.mark.parametrize("field, table", [("type", 1), ("distance", 2)])
def test_edge_field_tables(field, table):
    # batch element b tests `field == b`, so the mask spells out the whole table.
    attn = attention("heads = 1\nhead_dim = 4\ninput graph: edges(types = 3, max_distance = 4)\n"
                     f"input value: int[batch]\nmask graph.{field} == value[b]")
    inputs = {**edge_inputs(), "value": torch.arange(4)}
    mask = evaluate_mask(attn, 4, 5, 5, inputs=inputs)
    expected = edge_tables(5, False)[table]
    assert torch.equal((mask[:, 0] * torch.arange(4).view(4, 1, 1)).sum(0), expected)


def test_edges_without_types_or_distances():
    attn = attention(GRAPH.format(loops=""))
    q, k, v = qkv(sq=5)
    index = torch.tensor([[0, 1, 4], [3, 1, 4]])
    state = {"type_bias": rand(2, 3, seed=4), "dist_bias": rand(2, 4, seed=5)}
    edge = torch.zeros(5, 5, dtype=torch.bool)
    edge[0, 3] = edge[1, 1] = edge[4, 4] = True
    bias = (state["type_bias"][:, 0] + state["dist_bias"][:, 0]).view(1, 2, 1, 1)
    close(run(attn, state, q, k, v, inputs={"graph": index}),
          dense(q, k, v, 0.5, edge[None, None], lambda s: s + bias))


# --- token groups and patterns -----------------------------------------------------------------
ANCHOR = """heads = 1
head_dim = 4
tokens {
    sa: 3
    sq: 2
    va: *
    vq: 2
}
pattern sa, sq -> sa
pattern va, vq -> va"""


def group_of(sizes: dict[str, int]) -> list[str]:
    return [name for name, n in sizes.items() for _ in range(n)]


@pytest.mark.parametrize("sizes", [None, {"va": 4}])
def test_anchor_patterns(sizes):
    attn = attention(ANCHOR)
    groups = group_of({"sa": 3, "sq": 2, "va": 4, "vq": 2})
    allowed = {("sa", "sa"), ("sq", "sa"), ("va", "va"), ("vq", "va")}
    expected = pair_mask(lambda i, j: (groups[i], groups[j]) in allowed, 11, 11)
    assert torch.equal(evaluate_mask(attn, 1, 11, 11, sizes=sizes), expected)
    q, k, v = qkv(b=1, h=1, sq=11)
    close(run(attn, {}, q, k, v, sizes=sizes), dense(q, k, v, 0.5, expected))


def test_shipped_anchor_spec_surface_queries_see_only_surface_anchors():
    text = open("specs/anchor.attn").read()
    attn = build_text(text).attentions[0]
    mask = evaluate_mask(attn, 1, 290, 290)[0]
    assert mask.shape == (3, 290, 290)
    surface_queries, surface_anchors = slice(100, 150), slice(0, 100)
    assert mask[:, surface_queries, surface_anchors].all()
    assert mask[:, surface_queries].sum() == 3 * 50 * 100
    assert not mask[:, 150:290, 0:150].any()  # volume tokens never see surface tokens


def test_groups_and_masks_combine():
    attn = attention(ANCHOR + "\nmask causal | k == sq.start\nmask k < va.end - 1 | q in vq")
    groups = group_of({"sa": 3, "sq": 2, "va": 3, "vq": 2})
    allowed = {("sa", "sa"), ("sq", "sa"), ("va", "va"), ("vq", "va")}

    def fn(i, j):
        return ((groups[i], groups[j]) in allowed and (j <= i or j == 3)
                and (j < 7 or groups[i] == "vq"))

    assert torch.equal(evaluate_mask(attn, 1, 10, 10), pair_mask(fn, 10, 10))


def test_group_size_errors():
    attn = attention(ANCHOR)
    with pytest.raises(ValueError, match="add up to the sequence length 11"):
        evaluate_mask(attn, 1, 11, 11, sizes={"va": 5})
    with pytest.raises(ValueError, match="unknown token group"):
        evaluate_mask(attn, 1, 11, 11, sizes={"nope": 1})
    with pytest.raises(ValueError, match="group `sa` of size 3"):
        evaluate_mask(attn, 1, 11, 11, sizes={"sa": 4})
    with pytest.raises(ValueError, match="add up"):
        evaluate_mask(attn, 1, 6, 6)  # 3 + 2 + 2 > 6
    with pytest.raises(ValueError, match="q_len == kv_len"):
        evaluate_mask(attn, 1, 11, 12)


# --- params, gradients -------------------------------------------------------------------------
GRAD_SPEC = """heads = 2
kv_heads = 1
head_dim = 4
sinks = true
qk_norm = rms
input lengths: int[batch]
param hb: float[heads, 3] = zeros
mask causal & key_len(lengths)
bias hb[h, clamp(q - k, 0, 2)]
score = softcap(score, 5.0)
position rope(base = 100)"""


def test_gradcheck_kernel_mode_through_params():
    attn = attention(GRAD_SPEC)
    q, k, v = qkv(b=2, h=2, kvh=1, sq=4, d=4)
    params = [rand(2, seed=9), rand(2, 3, seed=10), rand(4, seed=11) + 1, rand(4, seed=12) + 1]
    tensors = [t.requires_grad_(True) for t in (q, k, v, *params)]
    lengths = torch.tensor([0, 3])

    def fn(q, k, v, sink, hb, qw, kw):
        state = {"sink": sink, "hb": hb, "q_norm_weight": qw, "k_norm_weight": kw}
        return run(attn, state, q, k, v, inputs={"lengths": lengths})

    assert torch.autograd.gradcheck(fn, tensors)


def test_gradcheck_layer_mode_through_weights():
    attn = attention("dim = 4\nheads = 2\nkv_heads = 1\nqkv_bias = true\nout_bias = true\n"
                     "mask causal")
    names = ["q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias", "v_proj.weight",
             "v_proj.bias", "o_proj.weight", "o_proj.bias"]
    shapes = [(4, 4), (4,), (2, 4), (2,), (2, 4), (2,), (4, 4), (4,)]
    weights = [rand(*s, seed=20 + i).requires_grad_(True) for i, s in enumerate(shapes)]
    x = rand(1, 3, 4, seed=30).requires_grad_(True)

    def fn(x, *ws):
        return run(attn, dict(zip(names, ws, strict=True)), x)

    assert torch.autograd.gradcheck(fn, (x, *weights))


def test_float_inputs_and_params_get_gradients():
    attn = attention("heads = 2\nhead_dim = 4\ninput rel: float[batch, heads, seq, seq]\n"
                     "param gain: float[heads] = ones\nbias rel[b, h, q, k] * gain[h]")
    q, k, v = qkv(sq=3)
    rel, gain = rand(2, 2, 3, 3, seed=40).requires_grad_(True), rand(2, seed=41)
    gain.requires_grad_(True)
    out = run(attn, {"gain": gain}, q, k, v, inputs={"rel": rel})
    close(out, dense(q, k, v, 0.5, None, lambda s: s + rel * gain.view(1, 2, 1, 1)))
    out.sum().backward()
    assert rel.grad.abs().sum() > 0 and gain.grad.abs().sum() > 0


# --- layer mode -----------------------------------------------------------------------------------
MUP = """dim = 16
heads = 2
qkv_bias = true
mask causal
mup {
    base_dim = 8
    attn_mult = 2.0
}"""


def layer_state(dim, heads, head_dim, kv_heads=None, value_dim=None, context_dim=None,
                qkv_bias=True, out_bias=False, seed=50):
    kv_heads, value_dim = kv_heads or heads, value_dim or head_dim
    context_dim = context_dim or dim
    shapes = {"q_proj.weight": (heads * head_dim, dim),
              "k_proj.weight": (kv_heads * head_dim, context_dim),
              "v_proj.weight": (kv_heads * value_dim, context_dim),
              "o_proj.weight": (dim, heads * value_dim)}
    if qkv_bias:
        shapes.update({"q_proj.bias": (heads * head_dim,), "k_proj.bias": (kv_heads * head_dim,),
                       "v_proj.bias": (kv_heads * value_dim,)})
    if out_bias:
        shapes["o_proj.bias"] = (dim,)
    return {n: rand(*s, seed=seed + i, scale=0.5) for i, (n, s) in enumerate(shapes.items())}


def manual_layer(state, x, context, heads, kv_heads, head_dim, value_dim, scale, mask_fn=None):
    """x @ W.T + b projections, split heads, dense attention, merge heads, output projection."""
    b, s, _ = x.shape
    src = x if context is None else context
    sk = src.shape[1]

    def proj(name, t):
        out = t @ state[f"{name}.weight"].T
        return out + state[f"{name}.bias"] if f"{name}.bias" in state else out

    q = proj("q_proj", x).view(b, s, heads, head_dim).transpose(1, 2)
    k = proj("k_proj", src).view(b, sk, kv_heads, head_dim).transpose(1, 2)
    v = proj("v_proj", src).view(b, sk, kv_heads, value_dim).transpose(1, 2)
    rep = heads // kv_heads
    mask = pair_mask(mask_fn, s, sk) if mask_fn else None
    o = dense(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), scale, mask)
    return proj("o_proj", o.transpose(1, 2).reshape(b, s, heads * value_dim))


@pytest.mark.parametrize("dim", [16, 32])
def test_layer_mode_mup(dim):
    attn = attention(MUP)
    head_dim = dim // 2
    scale = 2.0 * math.sqrt(4) / head_dim  # attn_mult * sqrt(base_head_dim) / head_dim
    state = layer_state(dim, 2, head_dim)
    x = rand(2, 5, dim, seed=60)
    out = run(attn, state, x, overrides={"dim": dim} if dim != 16 else None)
    assert out.shape == (2, 5, dim)
    close(out, manual_layer(state, x, None, 2, 2, head_dim, head_dim, scale,
                            lambda i, j: j <= i))


def test_cross_attention_with_context():
    attn = attention("dim = 8\ncontext_dim = 6\nheads = 2\nkv_heads = 1\nout_bias = true")
    state = layer_state(8, 2, 4, kv_heads=1, context_dim=6, qkv_bias=False, out_bias=True)
    x, context = rand(2, 3, 8, seed=70), rand(2, 7, 6, seed=71)
    close(run(attn, state, x, context),
          manual_layer(state, x, context, 2, 1, 4, 4, 0.5))
    with pytest.raises(ValueError, match="context"):
        run(attn, state, x)


def test_sinusoidal_position_added_to_x_only():
    attn = attention("dim = 6\nheads = 2\nposition sinusoidal")
    state = layer_state(6, 2, 3, qkv_bias=False)
    x = rand(1, 4, 6, seed=80)
    pe = torch.tensor([[math.sin(p / 10000 ** (i / 6)) if i % 2 == 0
                        else math.cos(p / 10000 ** ((i - 1) / 6)) for i in range(6)]
                       for p in range(4)], dtype=F64)
    close(run(attn, state, x), manual_layer(state, x + pe, None, 2, 2, 3, 3, 3 ** -0.5))
    context = rand(1, 5, 6, seed=81)  # a context is not position-encoded
    close(run(attn, state, x, context), manual_layer(state, x + pe, context, 2, 2, 3, 3,
                                                     3 ** -0.5))


def test_learned_position():
    attn = attention("dim = 4\nheads = 1\nposition learned(max_len = 6)")
    state = {**layer_state(4, 1, 4, qkv_bias=False), "position_embedding": rand(6, 4, seed=90)}
    x = rand(2, 5, 4, seed=91)
    close(run(attn, state, x),
          manual_layer(state, x + state["position_embedding"][:5], None, 1, 1, 4, 4, 0.5))
    with pytest.raises(ValueError, match="max_len=6"):
        run(attn, state, rand(1, 7, 4))


# --- rope and qk_norm --------------------------------------------------------------------------
def test_rope_matches_rotate_half():
    attn = attention("heads = 2\nhead_dim = 8\nmask causal\nposition rope(base = 10000)")
    q, k, v = qkv(sq=6, d=8)
    qr = rotate_half_rope(q, torch.arange(6), 10000.0)
    kr = rotate_half_rope(k, torch.arange(6), 10000.0)
    close(run(attn, {}, q, k, v), dense(qr, kr, v, 8 ** -0.5, pair_mask(lambda i, j: j <= i,
                                                                         6, 6)))


def test_rope_positions_when_lengths_differ():
    attn = attention("heads = 1\nhead_dim = 4\nposition rope(base = 50)")
    q, k, v = qkv(b=1, h=1, sq=3, sk=5)
    qr = rotate_half_rope(q, torch.arange(3), 50.0)
    kr = rotate_half_rope(k, torch.arange(5), 50.0)
    close(run(attn, {}, q, k, v), dense(qr, kr, v, 0.5))


def test_rope_interleaved_partial_with_positions():
    attn = attention("heads = 2\nhead_dim = 8\ninput pos: int[batch, seq]\n"
                     "position rope(base = 100, dims = 4, interleaved = true, positions = pos)")
    q, k, v = qkv(sq=5, d=8)
    pos = torch.tensor([[0, 1, 2, 0, 1], [3, 4, 5, 6, 7]])

    def complex_rope(x):  # the original LLaMA formulation: pairs (2i, 2i+1) as complex numbers
        inv_freq = 100.0 ** (-torch.arange(0, 4, 2, dtype=F64) / 4)
        angles = pos.to(F64)[..., None] * inv_freq  # [B, S, 2]
        rot = torch.view_as_complex(x[..., :4].reshape(*x.shape[:-1], 2, 2).contiguous())
        rot = torch.view_as_real(rot * torch.polar(torch.ones_like(angles), angles)[:, None])
        return torch.cat([rot.flatten(-2), x[..., 4:]], -1)

    expected = dense(complex_rope(q), complex_rope(k), v, 8 ** -0.5)
    close(run(attn, {}, q, k, v, inputs={"pos": pos}), expected)


def test_rope_freqs_input():
    attn = attention("heads = 1\nhead_dim = 4\ninput f: float[batch, seq, 2]\n"
                     "position rope(freqs = f)")
    q, k, v = qkv(b=2, h=1, sq=3)
    f = rand(2, 3, 2, seed=100)

    def rope(x):
        cos, sin = torch.cat([f, f], -1).cos()[:, None], torch.cat([f, f], -1).sin()[:, None]
        return x * cos + torch.cat([-x[..., 2:], x[..., :2]], -1) * sin

    close(run(attn, {}, q, k, v, inputs={"f": f}), dense(rope(q), rope(k), v, 0.5))


def test_qk_norm_before_rope():
    attn = attention("dim = 8\nheads = 2\nkv_heads = 1\nqk_norm = rms\nmask causal\n"
                     "position rope(base = 10000)")
    state = {**layer_state(8, 2, 4, kv_heads=1, qkv_bias=False),
             "q_norm_weight": rand(4, seed=110), "k_norm_weight": rand(4, seed=111)}
    x = rand(2, 5, 8, seed=112)

    def rms(t, w):
        return t / torch.sqrt((t * t).mean(-1, keepdim=True) + 1e-6) * w

    q = (x @ state["q_proj.weight"].T).view(2, 5, 2, 4).transpose(1, 2)
    k = (x @ state["k_proj.weight"].T).view(2, 5, 1, 4).transpose(1, 2)
    v = (x @ state["v_proj.weight"].T).view(2, 5, 1, 4).transpose(1, 2)
    q = rotate_half_rope(rms(q, state["q_norm_weight"]), torch.arange(5), 10000.0)
    k = rotate_half_rope(rms(k, state["k_norm_weight"]), torch.arange(5), 10000.0)
    o = dense(q, k.expand(2, 2, 5, 4), v.expand(2, 2, 5, 4), 0.5,
              pair_mask(lambda i, j: j <= i, 5, 5))
    expected = o.transpose(1, 2).reshape(2, 5, 8) @ state["o_proj.weight"].T
    close(run(attn, state, x), expected)


# --- dtypes, dropout, errors -------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_computes_in_float32(dtype):
    attn = attention("heads = 2\nhead_dim = 4\nmask causal\nbias alibi")
    q, k, v = qkv(sq=6)
    ref = run(attn, {}, q, k, v)
    out = run(attn, {}, q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.to(F64), ref, atol=3e-2, rtol=3e-2)


def test_params_are_cast_to_float64():
    attn = attention("heads = 2\nhead_dim = 4\nsinks = true")
    q, k, v = qkv(sq=3)
    sink32 = torch.tensor([0.25, -1.0])
    out = run(attn, {"sink": sink32}, q, k, v)
    assert out.dtype == F64
    close(out, dense(q, k, v, 0.5, sink=sink32.to(F64)))


def test_dropout_only_in_training():
    attn = attention("heads = 2\nhead_dim = 4\ndropout = 0.5")
    q, k, v = qkv(sq=8)
    close(run(attn, {}, q, k, v), dense(q, k, v, 0.5))
    torch.manual_seed(0)
    first = run(attn, {}, q, k, v, training=True)
    torch.manual_seed(0)
    assert torch.equal(first, run(attn, {}, q, k, v, training=True))
    assert not torch.allclose(first, dense(q, k, v, 0.5))


def test_bad_inputs_name_the_input_and_shape():
    attn = attention("heads = 4\nkv_heads = 2\nhead_dim = 8\ninput doc: int[batch, seq]\n"
                     "sinks = true\nmask same(doc)")
    q, k, v = qkv(h=4, kvh=2, sq=5, d=8)
    good = {"doc": torch.zeros(2, 5, dtype=torch.int64)}
    state = {"sink": torch.zeros(4)}
    cases = [
        ((q[..., :4], k, v), good, state, r"`?q`? must have shape \[B, heads=4, Sq, head_dim=8\]"),
        ((q, k[:, :1], v), good, state, r"k must have shape \[B=2, kv_heads=2"),
        ((q, k, v[:, :, :3]), good, state, r"v must have shape .*Sk=5"),
        ((q, k, v), {}, state, r"missing input `doc`: expected int\[batch=2, seq=5\]"),
        ((q, k, v), {"doc": torch.zeros(2, 4, dtype=torch.int64)}, state,
         r"input `doc` .* must have shape \[batch=2, seq=5\], got \(2, 4\)"),
        ((q, k, v), {"doc": torch.zeros(2, 5)}, state, r"input `doc` must be int\[batch=2"),
        ((q, k, v), {**good, "dco": good["doc"]}, state, r"unknown input\(s\) dco"),
        ((q, k, v), good, {}, r"missing param `sink` in state: expected float\[heads=4\]"),
        ((q, k, v), good, {"sink": torch.zeros(2)}, r"param `sink` must have shape"),
        ((q.long(), k, v), good, state, r"`q` must be a floating-point tensor"),
        ((q, k), good, state, r"pass \(q, k, v\)"),
    ]
    for args, inputs, st, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            run(attn, st, *args, inputs=inputs)


def test_seq_inputs_need_equal_lengths():
    attn = attention("heads = 1\nhead_dim = 4\ninput doc: int[batch, seq]\nmask same(doc)")
    q, k, v = qkv(b=1, h=1, sq=3, sk=4)
    with pytest.raises(ValueError, match="`doc` has a `seq` dimension"):
        run(attn, {}, q, k, v, inputs={"doc": torch.zeros(1, 3, dtype=torch.int64)})


def test_bad_edges_and_layer_weights():
    attn = attention(GRAPH.format(loops=""))
    q, k, v = qkv(sq=5)
    state = {"type_bias": rand(2, 3), "dist_bias": rand(2, 4)}
    bad_type = {**edge_inputs(), "graph_type": torch.tensor([0, 1, 2, 3, 0, 0, 0])}
    with pytest.raises(ValueError, match=r"graph_type.*\[0, 3\)"):
        run(attn, state, q, k, v, inputs=bad_type)
    with pytest.raises(ValueError, match=r"graph_distance.*E=7"):
        run(attn, state, q, k, v, inputs={**edge_inputs(), "graph_distance": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"key positions in \[0, 5\)"):
        run(attn, state, q, k, v, inputs={"graph": torch.tensor([[0], [5]])})
    with pytest.raises(ValueError, match="missing input `graph`"):
        run(attn, state, q, k, v)
    layer = attention("dim = 8\nheads = 2")
    with pytest.raises(ValueError, match=r"q_proj.weight.*\[heads\*head_dim=8, dim=8\]"):
        run(layer, {}, rand(1, 3, 8))
    with pytest.raises(ValueError, match=r"`?x`? must have shape \[B, S, dim=8\]"):
        run(layer, {}, rand(1, 3, 7))


# --- every shipped spec runs -------------------------------------------------------------------
def _shipped():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "specs"
    return [a for p in sorted(root.glob("*.attn")) for a in build_text(p.read_text()).attentions]


def _random_inputs(attn, b, s):
    inputs = {}
    for i, decl in enumerate(attn.inputs):
        g = torch.Generator().manual_seed(i)
        if decl.dtype == "edges":
            index = torch.randint(0, s, (2, 3 * s), generator=g)
            inputs.update({decl.name: index,
                           f"{decl.name}_type": torch.randint(0, decl.edges.types, (3 * s,),
                                                              generator=g),
                           f"{decl.name}_distance": torch.randint(0, 50, (3 * s,), generator=g)})
            continue
        shape = [{"batch": b}.get(d.kind, s) for d in decl.dims]
        value = torch.randint(0, 3, shape, generator=g)
        inputs[decl.name] = value.bool() if decl.dtype == "bool" else value
    return inputs


@pytest.mark.parametrize("attn", _shipped(), ids=lambda a: a.name)
def test_shipped_specs_run_in_float64(attn):
    from attnspec.ir.consts import eval_const, resolve_settings

    cfg = resolve_settings(attn)
    b, s = 2, sum(g.size for g in attn.groups) if attn.groups else 12
    sizes = {"heads": cfg["heads"], "kv_heads": cfg["kv_heads"]}
    state = {p.name: rand(*[sizes.get(d.kind) or eval_const(d.size, cfg) for d in p.dims])
             for p in attn.params}
    if attn.mode == "kernel":
        args = qkv(b=b, h=cfg["heads"], kvh=cfg["kv_heads"], sq=s, d=cfg["head_dim"],
                   dv=cfg["value_dim"])
    else:
        state.update(layer_state(cfg["dim"], cfg["heads"], cfg["head_dim"], cfg["kv_heads"],
                                 cfg["value_dim"], cfg.get("context_dim"), attn.qkv_bias,
                                 attn.out_bias))
        args = (rand(b, s, cfg["dim"]),) + ((rand(b, s, cfg["context_dim"]),)
                                            if attn.cross else ())
    inputs = _random_inputs(attn, b, s)
    if attn.kv_cache is not None:  # decoding: the s tokens follow 3 and 5 cached ones
        from attnspec.verify import Case, _cache_values

        case = Case("decode", b, s, 5 + s, cache_lens=(3, 5))
        inputs.update(_cache_values(attn.kv_cache, cfg, case, F64, "cpu",
                                    torch.Generator().manual_seed(0)))
    out = run(attn, state, *args, inputs=inputs)
    assert out.dtype == F64 and not out.isnan().any()
