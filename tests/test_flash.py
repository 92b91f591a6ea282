"""The flash backend on CPU: recognition, the varlen packing, window alignment and refusals.

flash-attn itself needs a GPU (benchmarks/gpu_verify_flash.sh runs the real kernels). Here a
small pure-torch model of flash-attn's varlen semantics (`flash_model`, written from
DESIGN.md §3 and the flash-attn docs, independent of the runtime) stands in for the kernels,
behind fakes with the real call signatures of flash-attn 4 and flash-attn 2. The generated
modules then run their flash path on CPU and are checked against the eager interpreter with
the verification harness, outputs and gradients.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from runtimes import RUNTIME, load_runtime

import attnspec
from attnspec import backends, verify
from attnspec.errors import UnsupportedInputError
from attnspec.ir.build import build_text
from attnspec.ir.consts import eval_const, resolve_settings
from attnspec.lower.analysis import analyze

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.attn"))


rt = load_runtime("flash")


# --- a model of flash-attn ---------------------------------------------------------------------
def flash_model(q, k, v, cu_q, cu_k, scale, window, softcap=0.0, alibi=None, sink=None,
                used=None):
    """flash-attn varlen, one sequence at a time in float32: windows aligned bottom-right per
    sequence, softcap then ALiBi (-slope * |i + sk - sq - j|), sink in the denominator, rows
    with no key 0. `used` (seqused_k): sequence i reads keys cu_k[i] : cu_k[i] + used[i].
    Returns (out [total_q, H, Dv], softmax_lse [H, total_q] float32: the natural log of each
    row's denominator, the sink's term included; -inf for a row with nothing in it)."""
    left, right = window
    H, Hk = q.shape[1], k.shape[1]
    pieces, lses = [], []
    for i in range(cu_q.numel() - 1):
        qs = q[cu_q[i]:cu_q[i + 1]].float()
        end = cu_k[i + 1] if used is None else cu_k[i] + used[i]
        ks = k[cu_k[i]:end].float().repeat_interleave(H // Hk, dim=1)
        vs = v[cu_k[i]:end].float().repeat_interleave(H // Hk, dim=1)
        sq, sk = qs.shape[0], ks.shape[0]
        s = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        rows = torch.arange(sq).view(-1, 1) + sk - sq
        cols = torch.arange(sk).view(1, -1)
        if alibi is not None:
            s = s - alibi.float().view(-1, 1, 1) * (rows - cols).abs()
        keep = torch.ones(sq, sk, dtype=torch.bool)
        if left is not None:
            keep &= cols >= rows - left
        if right is not None:
            keep &= cols <= rows + right
        s = s.masked_fill(~keep, -math.inf)
        m = s.amax(-1, keepdim=True) if sk else torch.full((H, sq, 1), -math.inf)
        if sink is not None:
            m = torch.maximum(m, sink.float().view(-1, 1, 1))
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = torch.exp(s - m)
        denom = e.sum(-1, keepdim=True)
        if sink is not None:
            denom = denom + torch.exp(sink.float().view(-1, 1, 1) - m)
        p = e / torch.where(denom > 0, denom, torch.ones_like(denom))
        pieces.append(torch.einsum("hqk,khd->qhd", p, vs))
        lses.append(torch.where(denom > 0, m + denom.log(), -math.inf).squeeze(-1))
    return torch.cat(pieces).to(q.dtype), torch.cat(lses, dim=1)


def _check_call(q, k, v, cu_q, cu_k, max_q, max_k):
    """What the real kernels demand of a call."""
    assert q.dim() == k.dim() == v.dim() == 3 and q.dtype in (torch.float16, torch.bfloat16)
    assert cu_q.dtype == cu_k.dtype == torch.int32
    assert cu_q[-1] == q.shape[0] and cu_k[-1] == k.shape[0] == v.shape[0]
    # max_seqlen_q/k are bounds (flash-attn sizes its grid by them): never below a length
    assert isinstance(max_q, int) and max_q >= int((cu_q[1:] - cu_q[:-1]).max())
    assert isinstance(max_k, int) and max_k >= int((cu_k[1:] - cu_k[:-1]).max())


def fake_fa4(q, k, v, *, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
             max_seqlen_k=None, softmax_scale, causal, window_size, learnable_sink, softcap,
             seqused_k=None, page_table=None, deterministic=False, return_lse=False):
    """flash_attn.cute.flash_attn_varlen_func's signature (the keywords the runtime uses):
    (out, lse [H, total_q] with `return_lse`, else None); batched q with `seqused_k` and no
    cu_seqlens: decoding from a (paged) cache (tests/test_decode.py's model)."""
    if cu_seqlens_q is None and q.dim() == 4:
        from test_decode import fake_fa4_decode

        assert deterministic is torch.are_deterministic_algorithms_enabled()
        return fake_fa4_decode(q, k, v, seqused_k=seqused_k, page_table=page_table,
                               softmax_scale=softmax_scale, causal=causal,
                               window_size=window_size, learnable_sink=learnable_sink,
                               softcap=softcap, return_lse=return_lse)
    _check_call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    assert deterministic is torch.are_deterministic_algorithms_enabled()
    if seqused_k is not None:
        assert seqused_k.dtype == torch.int32 and seqused_k.shape == (cu_seqlens_k.numel() - 1,)
        assert bool((seqused_k <= cu_seqlens_k[1:] - cu_seqlens_k[:-1]).all())
    window = (window_size[0], 0) if causal else window_size
    out, lse = flash_model(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, window, softcap,
                           sink=learnable_sink, used=seqused_k)
    return out, (lse if return_lse else None)


def fake_fa2(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
             softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
             alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash_attn.flash_attn_varlen_func's signature: -1 is an unbounded window side;
    `return_attn_probs` -> (out, softmax_lse [H, total_q], S_dmask), lse +inf for rows with
    nothing to attend (flash-attn 2's kernels write INFINITY there)."""
    _check_call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    assert deterministic is torch.are_deterministic_algorithms_enabled()
    assert dropout_p == 0.0
    left, right = (None if w < 0 else w for w in window_size)
    window = (left, 0) if causal else (left, right)
    out, lse = flash_model(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, window, softcap,
                           alibi=alibi_slopes)
    if not return_attn_probs:
        return out
    return out, lse.masked_fill(lse == -math.inf, math.inf), None


def dense_fake(varlen, version):
    """flash_attn_func of either version: [B, S, H, D] tensors (views with a contiguous last
    dim), through the varlen model; its lse, when asked for, is [B, H, Sq]."""
    def dense(q, k, v, **options):
        assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        (B, Sq, H, _), Sk, Dv = q.shape, k.shape[1], v.shape[3]
        cu_q = torch.arange(0, (B + 1) * Sq, Sq, dtype=torch.int32)
        cu_k = torch.arange(0, (B + 1) * Sk, Sk, dtype=torch.int32)
        flat = [t.reshape(-1, *t.shape[2:]) for t in (q, k, v)]
        if version == 4:
            out, lse = varlen(*flat, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=Sq,
                              max_seqlen_k=Sk, **options)
        else:
            result = varlen(*flat, cu_q, cu_k, Sq, Sk, **options)
            out, lse = result[:2] if isinstance(result, tuple) else (result, None)
        out = out.view(B, Sq, H, Dv)
        if lse is not None:  # [H, B * Sq] -> flash_attn_func's [B, H, Sq]
            lse = lse.view(H, B, Sq).transpose(0, 1).contiguous()
        if version == 4:
            return out, lse
        return out if lse is None else (out, lse, None)
    return dense


FAKES = {4: fake_fa4, 2: fake_fa2}


def with_fake(monkeypatch, mod, version):
    monkeypatch.setattr(mod, "_flash_library", lambda device: mod._FlashLibrary(
        version, dense_fake(FAKES[version], version), FAKES[version]))
    return mod


def compiled(text, name="t.attn"):
    return build_text(text, name), attnspec.load(text)


def kernel_spec(body, heads=4, kv_heads=2, head_dim=32, extra=""):
    return (f"attention T {{\n heads = {heads}\n kv_heads = {kv_heads}\n head_dim = {head_dim}"
            f"\n{extra}\n{body}\n}}\n")


# --- recognition -------------------------------------------------------------------------------
FLASH_ATTENTIONS = {
    "AlibiCausal6", "AlibiCausal8", "SlidingWindowSinks", "CausalLM", "CrossAttention",
    "DecodeWithCache", "KeyPaddingEager", "AnchorAttention", "KeyPaddingLengths", "Local",
    "MupCausalLayer",
    "PackedDocuments", "RopeCausal", "RopeQKNormGQA", "SlidingWindowMistral", "Gemma2Local",
    "Gemma2Global", "LlamaDecode",
}


def test_shipped_specs_that_flash_runs():
    runs = set()
    for path in SPECS:
        for attn in build_text(path.read_text(), path.name).attentions:
            if not backends.reasons(attn)["flash"]:
                runs.add(attn.name)
    assert runs == FLASH_ATTENTIONS


@pytest.mark.parametrize("body, extra, expected", [
    ("mask prefix_lm(8)", "", "not this mask (prefix"),
    ("mask strided(4)", "", "not this mask (other"),
    ("input n: int[batch]\n mask sliding_window(8) & key_len(n)", "",
     "key lengths keep a prefix of the keys (right padding)"),
    ("mask causal\n bias alibi\n score = softcap(score, 30.0)", "",
     "flash-attn adds ALiBi after the softcap"),
    ("mask causal\n score = score * 2.0", "", "nothing else in the score pipeline (gate"),
    ("input a: int[batch, seq]\n input c: int[batch, seq]\n mask same(a) & same(c)", "",
     "one document split"),
    ("mask k < q", "", "ends 1 key(s) before it"),
    ("mask k > q", "", "starts 1 key(s) after it"),
    ("mask causal", " value_dim = 12", "value_dim a multiple of 8"),
    ("mask causal", " value_dim = 8", "value_dim a multiple of 8 from 16"),
    ("input n: int[batch]\n mask key_len(n)\n score = softcap(score, 5.0)", "",
     "softcap over unpadded keys"),
    ("input valid: bool[batch, seq]\n mask key_valid(valid)\n bias alibi", "",
     "unpadded keys would move it"),
])
def test_reasons(body, extra, expected):
    attn = build_text(kernel_spec(body, extra=extra), "r.attn").attentions[0]
    reasons = backends.reasons(attn)["flash"]
    assert any(expected in r.message for r in reasons), [r.message for r in reasons]
    assert all(r.span is not None for r in reasons)


def test_supported_combinations_have_no_reasons():
    for body in ["", "mask causal", "mask causal_bottom_right", "mask sliding_window(7)",
                 "mask window(3, 2)", "mask abs(q - k) <= 4",
                 "input doc: int[batch, seq]\n mask causal & same(doc)",
                 "input doc: int[batch, seq]\n input valid: bool[batch, seq]\n"
                 " mask same(doc) & key_valid(valid)",
                 "mask causal\n score = softcap(score, 20.0)\n bias alibi",
                 "mask sliding_window(5)\n bias alibi",
                 "input doc: int[batch, seq]\n input valid: bool[batch, seq]\n mask causal\n"
                 " mask key_valid(valid)"]:
        attn = build_text(kernel_spec(body), "ok.attn").attentions[0]
        assert backends.reasons(attn)["flash"] == [], body


# --- the runtime pieces ------------------------------------------------------------------------
def test_cu_seqlens_from_document_runs():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 7, 7]])
    cu, longest = rt._flash_runs(ids, 2, 6, ids.device)
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 2, 5, 6, 10, 12] and longest == 4
    cu, longest = rt._flash_runs(None, 3, 5, ids.device)
    assert cu.tolist() == [0, 5, 10, 15] and longest == 5


def test_unpadding_keys_keeps_each_sequences_valid_keys_in_order():
    valid = torch.tensor([[True, False, True, True], [False, False, False, False],
                          [True, True, False, True]])
    cu_rows, _ = rt._flash_runs(None, 3, 4, valid.device)
    keep, cu, longest = rt._flash_keep_keys(valid, cu_rows)
    assert keep.tolist() == [0, 2, 3, 8, 9, 11]
    assert cu.tolist() == [0, 3, 3, 6] and cu.dtype == torch.int32 and longest == 3
    # documents split each row further: runs [0, 2) [2, 4) in row 0, ...
    cu_docs = torch.tensor([0, 2, 4, 8, 10, 12], dtype=torch.int32)
    _, cu, longest = rt._flash_keep_keys(valid, cu_docs)
    assert cu.tolist() == [0, 1, 3, 3, 5, 6] and longest == 2


def test_pack_and_unpack_round_trip():
    x = torch.randn(2, 3, 5, 4)
    packed = rt._flash_pack(x)
    assert packed.shape == (10, 3, 4)
    assert torch.equal(packed[7], x[1, :, 2])
    assert torch.equal(packed.view(2, 5, 3, 4).transpose(1, 2), x)
    keep = torch.tensor([1, 6, 9])
    assert torch.equal(rt._flash_pack(x, keep), torch.stack([x[0, :, 1], x[1, :, 1], x[1, :, 4]]))


def band_mask(lo, hi, bottom_right, sq, sk):
    shift = sk - sq if bottom_right else 0
    d = torch.arange(sk).view(1, -1) - torch.arange(sq).view(-1, 1) - shift
    return (d >= (lo if lo is not None else -10**9)) & (d <= (hi if hi is not None else 10**9))


def flash_window_mask(left, right, sq, sk):
    rows = torch.arange(sq).view(-1, 1) + sk - sq
    cols = torch.arange(sk).view(1, -1)
    keep = torch.ones(sq, sk, dtype=torch.bool)
    if left is not None:
        keep &= cols >= rows - left
    if right is not None:
        keep &= cols <= rows + right
    return keep


@pytest.mark.parametrize("lo, hi, bottom_right, sq, sk, window", [
    (None, 0, False, 8, 8, (None, 0)),      # causal, equal lengths
    (None, 0, True, 3, 8, (None, 0)),       # causal_bottom_right: flash's own causal
    (-1024, 0, False, 9, 9, (1024, 0)),     # sliding_window(1024): w + 1 keys
    (None, 0, False, 8, 3, (None, 5)),      # top-left causal, more queries than keys
    (-3, 2, False, 5, 7, (5, 0)),           # window(3, 2) top-left shifted by kv_len - q_len
])
def test_window_arguments(lo, hi, bottom_right, sq, sk, window):
    assert rt._flash_window("T", lo, hi, bottom_right, sq, sk) == window


def test_top_left_causal_with_fewer_queries_is_refused():
    with pytest.raises(UnsupportedInputError, match=r"window_size=\(None, -5\)"):
        rt._flash_window("T", None, 0, False, 3, 8)


def test_window_alignment_matches_the_band_whenever_it_is_accepted():
    rng = random.Random(0)
    accepted = refused = 0
    for _ in range(3000):
        lo = rng.choice([None, *range(-6, 2)])
        hi = rng.choice([None, *range(-1, 6)])
        br, sq, sk = rng.random() < 0.5, rng.randint(1, 9), rng.randint(1, 9)
        try:
            left, right = rt._flash_window("T", lo, hi, br, sq, sk)
        except UnsupportedInputError:
            refused += 1
            continue
        accepted += 1
        assert torch.equal(flash_window_mask(left, right, sq, sk), band_mask(lo, hi, br, sq, sk))
    assert accepted > 1000 and refused > 100


def test_empty_rows_match_brute_force():
    rng = random.Random(1)
    for _ in range(300):
        lengths_q = [rng.randint(0, 6) for _ in range(4)]
        lengths_k = [rng.randint(0, 6) for _ in range(4)]
        right = rng.choice([None, 0, 1, 3])
        cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32)
        cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32)
        want = []
        for sq, sk in zip(lengths_q, lengths_k):
            want += flash_window_mask(None, right, sq, sk).any(-1).logical_not().tolist()
        got = rt._flash_empty_rows(cu_q, cu_k, sum(lengths_q), right)
        assert got.tolist() == want


# --- end to end: shipped specs through the model of flash-attn, against the interpreter ---------
@pytest.mark.parametrize("version", [4, 2])
@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_on_flash_match_the_interpreter(path, version, monkeypatch):
    module_ir = build_text(path.read_text(), path.name)
    if not any(not backends.reasons(a)["flash"] for a in module_ir.attentions):
        pytest.skip("no attention of this spec runs on flash")
    mod = with_fake(monkeypatch, attnspec.load(path), version)
    results = verify.verify_spec(module_ir, mod, ["flash"], torch.bfloat16, "cpu", seed=7)
    failed = [r for r in results if not r.ok]
    assert not failed, verify.format_table(failed)
    for r in results:  # exactly the documented refusals, each with its reason
        attn = next(a for a in module_ir.attentions if a.name == r.attention)
        expected = _expected_refusal(attn, version, r.case)
        assert r.refused == (expected is not None), (r.case, r.detail)
        assert expected is None or expected in r.detail, r.detail


def _expected_refusal(attn, version, case):
    if attn.kv_cache is not None and version == 2:
        return "decodes with flash-attn 4"
    analysis = analyze(attn)
    if any(b.kind == "alibi" for b in analysis.biases) and version == 4:
        return "flash-attn 4 has no alibi_slopes"
    if attn.sinks and version == 2:
        return "flash-attn 2 has no learnable_sink"
    band = analysis.band
    if case == "Sq=19,Sk=45" and band is not None:  # a top-left band may shift out of reach
        values = resolve_settings(attn)
        lo, hi = (b if b is None or isinstance(b, int) else int(eval_const(b, values))
                  for b in (band.lo, band.hi))
        try:
            rt._flash_window("T", lo, hi, band.align == "bottom_right", 19, 45)
        except UnsupportedInputError:
            return "flash-attn needs both >= 0"
    return None


# --- call-time refusals ------------------------------------------------------------------------
def packed_docs(monkeypatch, version=4):
    module_ir, mod = compiled(kernel_spec("input doc: int[batch, seq]\n mask causal & same(doc)"))
    return with_fake(monkeypatch, mod, version).T(backend="flash").to(torch.bfloat16)


def qkv(B=2, S=10, dtype=torch.bfloat16, heads=4, kv_heads=2, d=32):
    return (torch.randn(B, heads, S, d, dtype=dtype), torch.randn(B, kv_heads, S, d, dtype=dtype),
            torch.randn(B, kv_heads, S, d, dtype=dtype))


def test_unsorted_document_ids_are_refused_naming_the_input(monkeypatch):
    m = packed_docs(monkeypatch)
    doc = torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2, 2, 2]] * 2)
    with pytest.raises(UnsupportedInputError, match="document ids `doc` non-decreasing"):
        m(*qkv(), doc=doc)
    m(*qkv(), doc=torch.sort(doc, dim=1).values)  # sorted: runs


def test_float32_is_refused(monkeypatch):
    m = packed_docs(monkeypatch).float()
    with pytest.raises(UnsupportedInputError, match="float16/bfloat16 only"):
        m(*qkv(dtype=torch.float32), doc=torch.zeros(2, 10, dtype=torch.long))


def test_cpu_without_a_fake_is_refused():
    _, mod = compiled(kernel_spec("mask causal"))
    with pytest.raises(UnsupportedInputError, match="CUDA tensors only"):
        mod.T(backend="flash")(*qkv())


def test_library_limits_are_refused_with_every_reason(monkeypatch):
    _, mod = compiled(kernel_spec("mask causal\n bias alibi", head_dim=16, extra=" value_dim = 24"))
    m = with_fake(monkeypatch, mod, 4).T(backend="flash").to(torch.bfloat16)
    q, k, _ = qkv(d=16)
    v = torch.randn(2, 2, 10, 24, dtype=torch.bfloat16)
    with pytest.raises(UnsupportedInputError, match="flash-attn 4 has no alibi_slopes"):
        m(q, k, v)
    with_fake(monkeypatch, mod, 2)
    with pytest.raises(UnsupportedInputError) as err:
        m(q, k, v)
    assert "head_dim == value_dim" in str(err.value)


def test_missing_library_message():
    message = rt._find_flash((9, 0))
    if not isinstance(message, str):
        pytest.skip("flash-attn is installed here")
    assert "pip install flash-attn-4" in message and "flash_attn.cute" in message
    assert "sm80" in rt._find_flash((8, 0))


def test_rows_without_keys_are_zero_with_finite_gradients(monkeypatch):
    _, mod = compiled(kernel_spec("input valid: bool[batch, seq]\n mask key_valid(valid)"))
    m = with_fake(monkeypatch, mod, 4).T(backend="flash").to(torch.bfloat16)
    q, k, v = (t.requires_grad_() for t in qkv())
    valid = torch.rand(2, 10) < 0.5
    valid[0] = False
    out = m(q, k, v, valid=valid)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_verify_reports_refusals_without_failing(monkeypatch):
    module_ir, mod = compiled(kernel_spec("mask causal\n bias alibi"))
    with_fake(monkeypatch, mod, 4)
    results = verify.verify_spec(module_ir, mod, ["flash"], torch.bfloat16, "cpu", seed=1)
    assert results and all(r.refused and r.ok for r in results)
    table = verify.format_table(results)
    assert "refused" in table and "0 failed" in table
    assert 'skipped message="' in verify.junit_xml(results)


def test_default_verify_on_cpu_leaves_flash_out():
    module_ir, mod = compiled(kernel_spec("mask causal"))
    assert "flash" in mod.T.BACKENDS
    assert {r.backend for r in verify.verify_spec(module_ir, mod, seed=0)} == \
        {"eager", "sdpa", "flex"}


def test_runtime_top_level_names_are_reserved_for_spec_names():
    """The runtime defines module-level names; the checker must keep spec names off them
    (scope.GENERATED_MODULE_NAMES computes them with attnspec.runtime.source: this checks it
    with a scan of its own)."""
    import ast

    from attnspec.ir.scope import GENERATED_MODULE_NAMES

    for runtime in ("flex", "flash"):
        tree = ast.parse((RUNTIME / f"{runtime}.py").read_text())
        names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets}
        names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
                  for a in n.names}
        assert names <= GENERATED_MODULE_NAMES, names - GENERATED_MODULE_NAMES


# --- kernel trust: where flash-attn 4's backward is wrong (benchmarks/gpu_kernel_probe.py) -----
def test_gradients_below_the_backward_head_dim_are_refused(monkeypatch):
    """flash-attn 4's dq is wrong at head_dim 16 (H200 matrix): a call that needs gradients
    there is refused with the reason, one that does not (inference) runs."""
    _, mod = compiled(kernel_spec("mask causal", head_dim=16))
    m = with_fake(monkeypatch, mod, 4).T(backend="flash").to(torch.bfloat16)
    q, k, v = qkv(d=16)
    with torch.no_grad():
        assert m(q, k, v).shape == (2, 4, 10, 16)
    assert m(q, k, v).shape == (2, 4, 10, 16)  # no tensor wants a gradient
    with pytest.raises(UnsupportedInputError, match="backward is wrong below 32"):
        m(q, k.requires_grad_(), v)


def test_auto_steps_past_flash_when_gradients_are_needed_below_its_head_dim(monkeypatch):
    _, mod = compiled(kernel_spec("mask causal", head_dim=16))
    m = with_fake(monkeypatch, mod, 4).T(backend="auto").to(torch.bfloat16)
    q, k, v = (t.requires_grad_() for t in qkv(d=16))
    assert mod.T.AUTO_CUDA[0] == "flash"
    out = m._attend_auto(q, k, v, sizes=None)  # auto's CUDA path, on CPU tensors
    assert m.last_backend != "flash"
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_explain_states_the_backward_rule():
    from attnspec.explain import explain_module

    text = explain_module(build_text(kernel_spec("mask causal", head_dim=16), "t.attn"))
    assert "training refused at head_dim 16, value_dim 16" in text
    assert "training refused" not in explain_module(build_text(kernel_spec("mask causal"), "t"))
