"""The analysis pass (`attnspec.lower.analysis`): recognition by form, and soundness.

Tests are data: each table row is a spec snippet and the classification expected of it. The
soundness test draws random conjunctions of mask snippets, turns the recognised structure back
into a dense mask with the tiny evaluator below (written from the item definitions, not from the
analysis code) and compares it with the eager interpreter's mask on random inputs.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.eager import evaluate_mask
from attnspec.ir import nodes as ir
from attnspec.ir.consts import eval_const, resolve_settings
from attnspec.ir.printer import expr_text
from attnspec.lower.analysis import (
    Band,
    Bias,
    Gate,
    KeyLength,
    KeyPadding,
    Other,
    OtherScore,
    Patterns,
    PrefixOrBand,
    Segment,
    Softcap,
    analyze,
)

SPECS = Path(__file__).resolve().parent.parent / "specs"

# Inputs every snippet may use. `seq` dims need q_len == kv_len; the cross template has none.
SAME_INPUTS = """
    input doc: int[batch, seq]
    input valid: bool[batch, seq]
    input lengths: int[batch]
    input prefix: int[batch]
"""
CROSS_INPUTS = """
    input valid: bool[batch, kv_seq]
    input lengths: int[batch]
    input prefix: int[batch]
"""


@cache
def attention(body: str, inputs: str = SAME_INPUTS) -> ir.AttentionIR:
    text = f"attention T {{\n    heads = 2\n    head_dim = 4\n{inputs}\n{body}\n}}"
    return attnspec.build(text).attentions[0]


def analysis_of(body: str, inputs: str = SAME_INPUTS):
    return analyze(attention(body, inputs))


# --- normal forms for the tables ---------------------------------------------------------------
def B(lo, hi, align="top_left"):  # noqa: N802 - reads like the class it stands for
    return ("band", lo, hi, align)


CAUSAL = B(None, 0)
OTHER = ("other",)


def offset(o):
    return o if o is None or isinstance(o, int) else expr_text(o)


def norm(item):
    """A mask item as a small tuple; symbolic offsets as their printed text."""
    if isinstance(item, Band):
        return B(offset(item.lo), offset(item.hi), item.align)
    if isinstance(item, PrefixOrBand):
        return ("prefix", offset(item.prefix), norm(item.band))
    if isinstance(item, Patterns):
        return ("patterns", len(item.groups), len(item.rules))
    if isinstance(item, Other):
        return OTHER
    kind = {Segment: "segment", KeyPadding: "padding", KeyLength: "length"}[type(item)]
    return (kind, item.input)


def norm_score(step):
    if isinstance(step, Bias):
        detail = {"alibi": step.scale, "table": step.table, "general": None}[step.kind]
        return (step.kind, detail) if detail is not None else (step.kind,)
    if isinstance(step, Softcap):
        return ("softcap", step.cap if isinstance(step.cap, float) else expr_text(step.cap))
    return ("gate",) if isinstance(step, Gate) else ("other",)


# --- shipped specs -----------------------------------------------------------------------------
# attention -> (mask_kind, mask items, score steps)
SHIPPED = {
    "AlibiCausal6": ("causal", [CAUSAL], [("alibi", -1.0)]),
    "AlibiCausal8": ("causal", [CAUSAL], [("alibi", -1.0)]),
    "AnchorAttention": ("structured", [("patterns", 4, 2)], []),
    "SlidingWindowSinks": ("structured", [B(-127, 0)], []),
    "StreamingLLM": ("structured", [CAUSAL, ("prefix", 4, B(-1019, None))], []),
    "CausalLM": ("causal", [CAUSAL], []),
    "CrossAttention": ("none", [], []),
    "DecodeWithCache": ("causal", [B(None, 0, "bottom_right")], []),
    "LlamaDecode": ("causal", [CAUSAL], []),
    "AlibiDecode": ("structured", [B(-4096, 0)], [("alibi", -1.0)]),
    "GraphAttention": ("general", [OTHER], [("table", "type_bias"), ("gate",)]),
    "KeyPaddingEager": ("structured", [("padding", "valid")], []),
    "KeyPaddingLengths": ("structured", [("length", "lengths")], []),
    "Local": ("structured", [B(-128, 128)], []),
    "Strided": ("general", [OTHER], []),
    "BigBird": ("general", [OTHER], []),
    "MupCausalLayer": ("causal", [CAUSAL], []),
    "PackedDocuments": ("structured", [CAUSAL, ("segment", "doc")], []),
    "PrefixLMRuntime": ("structured", [("prefix", "prefix[b]", CAUSAL)], []),
    "PrefixLMConstant": ("structured", [("prefix", 64, CAUSAL)], []),
    "RopeCausal": ("causal", [CAUSAL], []),
    "RopeQKNormGQA": ("causal", [CAUSAL], []),
    "SlidingWindowGQA": ("structured", [B(-1024, 0)], [("alibi", -1.0), ("softcap", 30.0)]),
    "SlidingWindowMistral": ("structured", [B(-4096, 0)], []),
    "Gemma2Local": ("structured", [B(-4095, 0)], [("softcap", 50.0)]),
    "Gemma2Global": ("causal", [CAUSAL], [("softcap", 50.0)]),
    "T5Encoder": ("none", [], [("table", "t5_bias")]),
    "T5Decoder": ("causal", [CAUSAL], [("table", "t5_bias")]),
}


def shipped_attentions():
    return [(path.name, a) for path in sorted(SPECS.glob("*.attn"))
            for a in attnspec.build(path).attentions]


def test_every_shipped_attention_is_in_the_table():
    assert sorted(a.name for _, a in shipped_attentions()) == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spec(name):
    attn = next(a for _, a in shipped_attentions_cached() if a.name == name)
    kind, mask, score = SHIPPED[name]
    result = analyze(attn)
    assert result.mask_kind == kind
    assert [norm(i) for i in result.mask] == mask
    assert [norm_score(s) for s in result.score] == score


@cache
def shipped_attentions_cached():
    return tuple(shipped_attentions())


# --- masks written by hand ---------------------------------------------------------------------
MASK_CASES = [
    # causal, written many ways
    ("mask q >= k", [CAUSAL]),
    ("mask k <= q", [CAUSAL]),
    ("mask q - k >= 0", [CAUSAL]),
    ("mask !(k > q)", [CAUSAL]),
    ("mask 0 <= q - k", [CAUSAL]),
    ("mask k - q <= 0", [CAUSAL]),
    ("mask q + 1 > k", [CAUSAL]),
    ("mask k < q + 1", [CAUSAL]),
    ("mask !!(q >= k)", [CAUSAL]),
    ("mask 2 * q >= 2 * k", [CAUSAL]),
    ("mask -(k - q) >= 0", [CAUSAL]),
    ("mask q - k >= -0.5", [CAUSAL]),
    ("mask causal", [CAUSAL]),
    # bands and windows
    ("mask k >= q - 3 & k <= q + 2", [B(-3, 2)]),
    ("mask q - k <= 4 & q >= k", [B(-4, 0)]),
    ("mask window(3, 2)", [B(-3, 2)]),
    ("mask sliding_window(5)", [B(-5, 0)]),
    ("mask local(6)", [B(-3, 3)]),
    ("mask abs(q - k) <= 2", [B(-2, 2)]),
    ("mask abs(k - q) < 3", [B(-2, 2)]),
    ("mask 3 > abs(q - k)", [B(-2, 2)]),
    ("mask q == k", [B(0, 0)]),
    ("mask q - k < 2.5", [B(-2, None)]),
    ("mask k > q - 4 & k < q", [B(-3, -1)]),
    ("mask 3 * k <= 3 * q + 7", [B(None, 2)]),
    ("mask causal\n    mask q - k <= 7", [B(-7, 0)]),
    ("mask !(q < k | q - k > 3)", [B(-3, 0)]),
    ("mask sliding_window(5) & window(2, 9)", [B(-2, 0)]),
    # symbolic offsets stay expressions over settings
    ("mask sliding_window(head_dim)", [B("-head_dim", 0)]),
    ("mask q - k <= head_dim // 2 + 1", [B("-(head_dim // 2) - 1", None)]),
    ("mask sliding_window(head_dim) & q - k <= 3", [B("max(-head_dim, -3)", 0)]),
    ("mask abs(q - k) <= heads", [B("-heads", "heads")]),
    # bottom-right alignment
    ("mask causal_bottom_right", [B(None, 0, "bottom_right")]),
    ("mask k <= q + kv_len - q_len", [B(None, 0, "bottom_right")]),
    ("mask k - q + q_len - kv_len <= 0", [B(None, 0, "bottom_right")]),
    ("mask k >= q + kv_len - q_len - 3 & causal_bottom_right", [B(-3, 0, "bottom_right")]),
    ("mask causal & causal_bottom_right", [CAUSAL, OTHER]),
    # not bands
    ("mask q - k <= kv_len", [OTHER]),
    ("mask q >= 2 * k", [OTHER]),
    ("mask q - k <= h", [OTHER]),
    ("mask q - k != 0", [OTHER]),
    ("mask q - k + 0.1 <= 2.1", [OTHER]),  # float arithmetic rounds: not rewritten
    ("mask q - k <= lengths[b]", [OTHER]),
    ("mask k < 4", [OTHER]),
    ("mask false", [OTHER]),
    ("mask true", []),
    # segments, padding, lengths
    ("mask same(doc)", [("segment", "doc")]),
    ("mask doc[b, k] == doc[b, q]", [("segment", "doc")]),
    ("mask !(doc[b, q] != doc[b, k])", [("segment", "doc")]),
    ("mask doc[b, q] == doc[b, q]", [OTHER]),
    ("mask key_valid(valid)", [("padding", "valid")]),
    ("mask valid[b, q]", [OTHER]),
    ("mask key_len(lengths)", [("length", "lengths")]),
    ("mask lengths[b] > k", [("length", "lengths")]),
    ("mask k <= lengths[b] - 1", [("length", "lengths")]),
    ("mask !(k >= lengths[b])", [("length", "lengths")]),
    ("mask k < lengths[b] + 1", [OTHER]),
    ("mask q < lengths[b]", [OTHER]),
    ("mask causal & same(doc) & key_valid(valid)",
     [CAUSAL, ("segment", "doc"), ("padding", "valid")]),
    # prefix-LM
    ("mask prefix_lm(8)", [("prefix", 8, CAUSAL)]),
    ("mask q >= k | k < 8", [("prefix", 8, CAUSAL)]),
    ("mask k <= 7 | k <= q", [("prefix", 8, CAUSAL)]),
    ("mask k < prefix[b] | causal", [("prefix", "prefix[b]", CAUSAL)]),
    ("mask k < head_dim | causal", [("prefix", "head_dim", CAUSAL)]),
    ("mask !(k >= 8 & q < k)", [("prefix", 8, CAUSAL)]),
    ("mask k < 2 | (q >= k & q - k < 5)", [("prefix", 2, B(-4, 0))]),
    ("mask prefix_lm(8) & prefix_lm(4)", [("prefix", 8, CAUSAL), OTHER]),
    ("mask k < prefix[b] + 1 | causal", [OTHER]),
    ("mask k < 8 | q < 8 | causal", [OTHER]),
    # no canonical form
    ("mask strided(4)", [OTHER]),
    ("mask random_links(2, 7)", [OTHER]),
    ("mask dilated(6, 2)", [B(-6, 6), OTHER]),
    ("mask local(4) | q < 2 | k < 2", [OTHER]),
]


@pytest.mark.parametrize("body, expected", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_mask_forms(body, expected):
    assert [norm(i) for i in analysis_of(body).mask] == expected


def test_group_predicate_by_hand_is_other_beside_patterns():
    body = """
    tokens { a: 2
             c: 3 }
    pattern a -> a
    pattern c -> a, c
    mask q in c | k in a
    """
    result = analysis_of(body, inputs="")
    assert [norm(i) for i in result.mask] == [OTHER, ("patterns", 2, 2)]
    assert result.patterns == Patterns((("a", 2), ("c", 3)), ((("a",), ("a",)),
                                                              (("c",), ("a", "c"))))
    assert result.mask_kind == "general"


# --- the score pipeline ------------------------------------------------------------------------
SCORE_CASES = [
    ("bias alibi", [("alibi", -1.0)]),
    ("bias -(alibi_slope(h) * abs(k - q))", [("alibi", -1.0)]),
    ("bias alibi_slope(h) * abs(q - k) * -0.5", [("alibi", -0.5)]),
    ("bias -abs(q - k) * alibi_slope(h) / 4", [("alibi", -0.25)]),
    ("score = score - alibi_slope(h) * abs(q - k)", [("alibi", -1.0)]),
    ("bias alibi_slope(h) * (k - q)", [("general",)]),
    ("bias -alibi_slope(h) * abs(q - k + 1)", [("general",)]),
    ("bias t5(buckets = 8, max_distance = 16)", [("table", "t5_bias")]),
    ("param tb: float[heads, 2] = zeros\n    bias tb[h, 1]", [("table", "tb")]),
    ("bias 0.5", [("general",)]),
    ("score = score + 1.0", [("general",)]),
    ("score = softcap(score, 30.0)", [("softcap", 30.0)]),
    ("score = tanh(score / 20) * 20", [("softcap", 20.0)]),
    ("score = -5.0 * tanh(score / -5.0)", [("softcap", 5.0)]),
    ("score = head_dim * tanh(score / head_dim)", [("softcap", "head_dim")]),
    ("score = 30.0 * tanh(score / 20.0)", [("other",)]),
    ("score = score * 0.5", [("gate",)]),
    ("score = sigmoid(h * 1.0) * score", [("gate",)]),
    ("score = score * score", [("other",)]),
    ("score = exp(score)", [("other",)]),
    ("bias alibi\n    score = softcap(score, 30.0)\n    score = score * 2.0",
     [("alibi", -1.0), ("softcap", 30.0), ("gate",)]),
]


@pytest.mark.parametrize("body, expected", SCORE_CASES, ids=[c[0] for c in SCORE_CASES])
def test_score_forms(body, expected):
    assert [norm_score(s) for s in analysis_of(body).score] == expected


# --- summary properties ------------------------------------------------------------------------
def test_summary_of_a_plain_causal_mask():
    a = analysis_of("mask k <= q")
    assert (a.mask_kind, a.is_causal_top_left, a.is_causal_bottom_right) == ("causal", True, False)
    assert a.band == Band(None, 0) and a.band.is_causal
    assert a.score_is_identity and a.softcap is None and a.biases == ()
    assert not a.reads_batch and not a.reads_head


def test_summary_of_bottom_right_and_of_structured_masks():
    br = analysis_of("mask causal_bottom_right")
    assert (br.is_causal_bottom_right, br.is_causal_top_left) == (True, False)
    docs = analysis_of("mask causal & same(doc)")
    assert docs.mask_kind == "structured" and not docs.is_causal_top_left
    assert docs.segments == (Segment("doc"),) and docs.reads_batch
    prefix = analysis_of("mask k < prefix[b] | causal")
    assert prefix.prefix.prefix_input == "prefix" and prefix.reads_batch
    assert analysis_of("mask prefix_lm(3)").prefix.prefix_input is None
    assert analysis_of("mask key_len(lengths)").key_lengths == (KeyLength("lengths"),)
    assert analysis_of("mask key_valid(valid)").key_padding == (KeyPadding("valid"),)


def test_reads_batch_and_head_of_other_conjuncts():
    assert analysis_of("mask (q + h) % 2 == 0").reads_head
    assert not analysis_of("mask (q + h) % 2 == 0").reads_batch
    by_batch = analysis_of("mask doc[b, k] % 2 == 0")
    assert by_batch.reads_batch and not by_batch.reads_head
    assert not analysis_of("mask strided(3)").reads_batch


def test_band_window_accessors():
    band = analysis_of("mask window(3, 2)").band
    assert (band.left, band.right) == (3, 2)
    assert expr_text(analysis_of("mask sliding_window(head_dim)").band.left) == "head_dim"
    assert analysis_of("mask causal").band.left is None


def test_softcap_and_biases_summary():
    a = analysis_of("bias alibi\n    score = softcap(score, 30.0)")
    assert a.softcap == 30.0 and [b.kind for b in a.biases] == ["alibi"]
    assert not a.score_is_identity
    twice = analysis_of("score = softcap(score, 30.0)\n    score = softcap(score, 20.0)")
    assert twice.softcap is None  # ambiguous: the lowering must read `score` in order
    assert isinstance(analysis_of("score = exp(score)").score[0], OtherScore)


DESCRIBE_CASES = [
    ("mask sliding_window(1024)",
     ["mask: band -1024 <= k - q <= 0 (top-left; sliding window 1024)"]),
    ("mask causal", ["mask: band k - q <= 0 (top-left; causal)"]),
    ("mask causal_bottom_right",
     ["mask: band k - q <= kv_len - q_len (bottom-right; causal)"]),
    ("mask window(3, 2)", ["mask: band -3 <= k - q <= 2 (top-left; window (3, 2))"]),
    ("mask local(8)", ["mask: band -4 <= k - q <= 4 (top-left; local |k - q| <= 4)"]),
    ("mask same(doc)", ["mask: segments equal (doc)"]),
    ("mask key_valid(valid)", ["mask: key padding (valid[b, k])"]),
    ("mask key_len(lengths)", ["mask: key length k < lengths[b]"]),
    ("mask prefix_lm(4)", ["mask: prefix k < 4 or band k - q <= 0 (top-left; causal)"]),
    ("mask strided(4)", ["mask: other k % 4 == 0"]),
    ("mask doc[b, k] > h", ["mask: other doc[b, k] > h (reads b, h)"]),
    ("", ["mask: none (full attention)"]),
    ("score = softcap(score, 30.0)", ["mask: none (full attention)", "score: softcap 30.0"]),
    ("bias alibi", ["mask: none (full attention)",
                    "score: bias alibi -1 * alibi_slope(h) * |q - k|"]),
    ("score = score * 2.0", ["mask: none (full attention)", "score: gate score * 2.0"]),
]


@pytest.mark.parametrize("body, expected", DESCRIBE_CASES, ids=[c[0] for c in DESCRIBE_CASES])
def test_describe(body, expected):
    assert analysis_of(body).describe() == expected


def test_analysis_is_frozen_and_spans_do_not_matter():
    a, b = analysis_of("mask causal"), analysis_of("mask     k  <=  q")
    assert a.mask == b.mask
    with pytest.raises(AttributeError):
        a.mask = ()


def test_analysis_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, attnspec.lower.analysis as m; import attnspec.ir.build; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- soundness: the recognised structure means exactly the mask --------------------------------
def dense(result, attn, B, Sq, Sk, inputs, overrides):
    """The mask that the analysis items describe, [B, heads, Sq, Sk], from their definitions."""
    settings = resolve_settings(attn, overrides)
    mask = torch.ones(B, int(settings["heads"]), Sq, Sk, dtype=torch.bool)
    for item in result.mask:
        mask &= item_mask(item, attn, B, Sq, Sk, inputs, settings, overrides)
    return mask


def value(o, settings, inputs):
    if isinstance(o, int):
        return o
    if isinstance(o, ir.InputRef):
        return inputs[o.name].view(-1, 1, 1, 1)
    return eval_const(o, settings)


def band_mask(band, Sq, Sk, settings):
    q, k = torch.arange(Sq).view(-1, 1), torch.arange(Sk).view(1, -1)
    d = k - q - (Sk - Sq if band.align == "bottom_right" else 0)
    lo, hi = (None if o is None else value(o, settings, {}) for o in (band.lo, band.hi))
    return (d >= (lo if lo is not None else -(10**9))) & (d <= (hi if hi is not None else 10**9))


def item_mask(item, attn, B, Sq, Sk, inputs, settings, overrides):
    k = torch.arange(Sk).view(1, 1, 1, -1)
    if isinstance(item, Band):
        return band_mask(item, Sq, Sk, settings)
    if isinstance(item, Segment):
        x = inputs[item.input]
        return x[:, None, :, None] == x[:, None, None, :]
    if isinstance(item, KeyPadding):
        return inputs[item.input][:, None, None, :]
    if isinstance(item, KeyLength):
        return k < inputs[item.input].view(-1, 1, 1, 1)
    if isinstance(item, PrefixOrBand):
        return (k < value(item.prefix, settings, inputs)) | band_mask(item.band, Sq, Sk, settings)
    assert isinstance(item, Other)
    alone = attn.model_copy(update={"masks": (item.expr,)})
    return evaluate_mask(alone, B, Sq, Sk, inputs, overrides=overrides)


SAME_SNIPPETS = [
    "causal", "k <= q", "!(k > q)", "0 <= q - k", "q - k >= -0.5", "2 * q >= 2 * k",
    "sliding_window(3)", "window(2, 1)", "k >= q - 3 & k <= q + 2", "local(4)",
    "abs(k - q) < 3", "q == k", "k > q - 4 & k < q", "q - k < 2.5", "3 * k <= 3 * q + 7",
    "sliding_window(head_dim)", "q - k <= head_dim // 2 + 1", "abs(q - k) <= heads",
    "!(q < k | q - k > 3)", "causal_bottom_right", "k >= q + kv_len - q_len - 2",
    "same(doc)", "doc[b, k] == doc[b, q]", "!(doc[b, q] != doc[b, k])",
    "key_valid(valid)", "key_len(lengths)", "lengths[b] > k", "k <= lengths[b] - 1",
    "!(k >= lengths[b])", "prefix_lm(2)", "k < prefix[b] | causal", "!(k >= 3 & q < k)",
    "k < 2 | (q >= k & q - k < 3)", "k < head_dim | q - k <= 1", "k < prefix[b] | q == k",
    "strided(3)", "random_links(2, 7)", "dilated(4, 2)", "q - k <= kv_len - 6",
    "k < lengths[b] + 1", "q - k != 1", "q - k + 0.5 <= 2", "q * 2.0 - k * 2.0 <= 3.0",
]
CROSS_SNIPPETS = [s for s in SAME_SNIPPETS if "doc" not in s]


def random_inputs(rng: torch.Generator, B, Sq, Sk, same: bool):
    inputs = {
        "valid": torch.rand(B, Sk, generator=rng) < 0.7,
        "lengths": torch.randint(0, Sk + 1, (B,), generator=rng),
        "prefix": torch.randint(0, Sk + 2, (B,), generator=rng),
    }
    if same:
        inputs["doc"] = torch.randint(0, 3, (B, Sq), generator=rng).cumsum(-1) // 2
    return inputs


@pytest.mark.parametrize("same", [True, False], ids=["Sq==Sk", "Sq!=Sk"])
def test_recognition_never_changes_the_mask(same):
    pick, rng = random.Random(1234 + same), torch.Generator().manual_seed(5678 + same)
    snippets, inputs_text = (SAME_SNIPPETS, SAME_INPUTS) if same else (CROSS_SNIPPETS,
                                                                        CROSS_INPUTS)
    shapes = [(7, 7), (9, 9), (1, 1)] if same else [(5, 9), (9, 5), (3, 11)]
    for _ in range(60):
        chosen = pick.sample(snippets, pick.randint(1, 3))
        # Separate `mask` lines and `&` inside one line must mean the same.
        joiner = "\n    mask " if pick.random() < 0.5 else " & "
        body = "mask " + joiner.join(f"({s})" if "|" in s else s for s in chosen)
        attn = attention(body, inputs_text)
        result = analyze(attn)
        overrides = {"head_dim": pick.choice([2, 4, 6])}
        for Sq, Sk in shapes:
            inputs = random_inputs(rng, 2, Sq, Sk, same)
            expected = evaluate_mask(attn, 2, Sq, Sk, inputs, overrides=overrides)
            got = dense(result, attn, 2, Sq, Sk, inputs, overrides)
            assert torch.equal(got, expected), (body, Sq, Sk, result.describe())


def test_every_snippet_alone_is_sound_and_mostly_recognised():
    """Each snippet by itself, so a wrong recognition cannot hide behind a narrower conjunct."""
    rng = torch.Generator().manual_seed(0)
    recognised = 0
    for s in SAME_SNIPPETS:
        attn = attention(f"mask {s}")
        result = analyze(attn)
        recognised += not result.other
        for Sq, Sk in [(8, 8)]:
            inputs = random_inputs(rng, 2, Sq, Sk, True)
            assert torch.equal(dense(result, attn, 2, Sq, Sk, inputs, None),
                               evaluate_mask(attn, 2, Sq, Sk, inputs)), s
    assert recognised >= len(SAME_SNIPPETS) - 7


def test_patterns_item_matches_eager():
    body = """
    tokens { a: 2
             c: 3
             e: 2 }
    pattern a, c -> a
    pattern e -> c, e
    mask causal
    """
    attn = attention(body, "")
    result = analyze(attn)
    assert [norm(i) for i in result.mask] == [CAUSAL, ("patterns", 3, 2)]
    starts, pos = {}, 0
    for name, size in result.patterns.groups:
        starts[name], pos = (pos, pos + size), pos + size
    idx = torch.arange(pos)

    def inside(names):
        return torch.stack([(idx >= starts[n][0]) & (idx < starts[n][1]) for n in names]).any(0)

    pattern = torch.zeros(pos, pos, dtype=torch.bool)
    for queries, keys in result.patterns.rules:
        pattern |= inside(queries)[:, None] & inside(keys)[None, :]
    expected = evaluate_mask(attn, 1, pos, pos)
    assert torch.equal(band_mask(result.band, pos, pos, {}) & pattern, expected[0, 0])
