"""Numerical edge cases on every backend that runs on CPU (contract §9.4): rows with nothing to
attend give exactly 0 with finite (zero) gradients, huge and tiny scores stay finite, lengths
1, 129 and 200, half precision; each against the eager interpreter in float64 on fresh random
inputs (`attnspec.verify.check_inputs`).

The cases are the catalogue of benchmarks/gpu_edge_cases.py, which runs them on CUDA (flash,
flex's Triton and FLASH kernels, SDPA, auto); here eager and SDPA run them in four dtypes with
gradients, flex (forward only on CPU) a part of them, and flash through the model of flash-attn
from tests/test_flash.py. Kernels that write NaN into rows without keys are simulated to check
that the generated module never lets one through, forward or backward.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import random
import sys
from pathlib import Path

import pytest
import torch
from test_flash import FAKES, dense_fake

import attnspec
from attnspec import eager, verify

ROOT = Path(__file__).resolve().parent.parent
SEED = random.randrange(2**31)  # fresh inputs each run; printed on failure


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_edge_cases",
                                                  ROOT / "benchmarks" / "gpu_edge_cases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


edge = _load_script()
# Two long cases with one batch row instead of two on CPU (the GPU script runs both rows).
CPU_BATCH = {"documents_200": 1, "large_inputs_window": 1}
CASES = {c.name: dataclasses.replace(c, B=CPU_BATCH.get(c.name, c.B)) for c in edge.CASES}
COMPILED: dict = {}
LONG = {c.name for c in edge.CASES if max(c.Sq, c.Sk) > 128}


def compiled(name: str):
    """(attention IR, class) of a case, compiled once per session."""
    if name not in COMPILED:
        COMPILED[name] = edge.compile_case(CASES[name])
    return COMPILED[name]


def run(name: str, backend: str, dtype: torch.dtype):
    row = edge.run_case(CASES[name], compiled(name), backend, dtype, "cpu", SEED)
    assert row.status == "pass", f"seed {SEED}: {row}"


# Cases also run in float64 and float16 (the others: float32 and bfloat16; the long ones, which
# cost the most, float32 only): empty rows of each kind in every dtype.
ALL_DTYPES = {"key_padding_full_batch", "empty_token_groups", "sinks_empty_rows",
              "neg_inf_bias_alternate", "layer_cross_no_keys"}


def eager_sdpa_params():
    for name in CASES:
        dtypes = ("float32",) if name in LONG else ("float32", "bfloat16")
        if name in ALL_DTYPES:
            dtypes += ("float64", "float16")
        for dtype in dtypes:
            yield pytest.param(name, dtype, id=f"{name}-{dtype}")


@pytest.mark.parametrize("name, dtype", list(eager_sdpa_params()))
def test_eager_and_sdpa_match_the_interpreter(name, dtype):
    cls = compiled(name)[1]
    for backend in ("eager", "sdpa"):
        if backend in cls.BACKENDS:
            run(name, backend, verify.DTYPES[dtype])


# flex on CPU is uncompiled and forward only (each call ~0.1 s): the cases where its mask_mod,
# score_mod, BlockMask and sinks meet rows with nothing to attend.
FLEX_CASES = ["no_key_attendable", "key_padding_full_batch", "empty_token_groups",
              "sinks_empty_rows", "neg_inf_bias_alternate", "neg_inf_bias_rows_sinks",
              "bottom_right_more_queries", "huge_biases"]


@pytest.mark.parametrize("name", FLEX_CASES)
def test_flex_matches_the_interpreter(name):
    run(name, "flex", torch.float32)


def test_flex_in_bfloat16_with_empty_rows():
    run("key_len_out_of_range", "flex", torch.bfloat16)


# --- flash, through the model of flash-attn ------------------------------------------------------
FLASH_CASES = {  # case -> the refusal expected from flash-attn 4 (None: it runs)
    "key_padding_full_batch": None, "key_len_out_of_range": None,
    "bottom_right_more_queries": None, "sinks_empty_rows": None, "decode_129_keys": None,
    "documents_200": None, "length_1": None, "large_inputs_softcap": None,
    "top_left_fewer_queries": "flash-attn needs both >= 0",
    "alibi_200": "flash-attn 4 has no alibi_slopes",
}


def nan_rows(fake):
    """A fake flash-attn that writes NaN into every row without keys, as a real kernel may."""
    def kernel(*args, **kwargs):
        out = fake(*args, **kwargs)
        tensor = out[0] if isinstance(out, tuple) else out
        empty = (tensor == 0).all(-1, keepdim=True)
        tensor = tensor + torch.where(empty, math.nan, 0.0).to(tensor.dtype)
        return (tensor, *out[1:]) if isinstance(out, tuple) else tensor
    return kernel


@pytest.mark.parametrize("name, refusal", FLASH_CASES.items())
def test_flash_model_matches_the_interpreter(name, refusal, monkeypatch):
    attn, cls = compiled(name)
    assert "flash" in cls.BACKENDS, name
    namespace = cls.forward.__globals__  # the generated module (two cases may share a name)
    library = namespace["_FlashLibrary"](4, nan_rows(dense_fake(FAKES[4], 4)), nan_rows(FAKES[4]))
    monkeypatch.setitem(namespace, "_flash_library", lambda device: library)
    row = edge.run_case(CASES[name], (attn, cls), "flash", torch.bfloat16, "cpu", SEED)
    if refusal is None:
        assert row.status == "pass", f"seed {SEED}: {row}"
    else:
        assert row.status == "refused" and refusal in row.detail, row


def test_flash_attn_2_runs_alibi(monkeypatch):
    attn, cls = compiled("alibi_200")
    library = cls.forward.__globals__["_FlashLibrary"](2, dense_fake(FAKES[2], 2), FAKES[2])
    monkeypatch.setitem(cls.forward.__globals__, "_flash_library", lambda device: library)
    row = edge.run_case(CASES["alibi_200"], (attn, cls), "flash", torch.float16, "cpu", SEED)
    assert row.status == "pass", f"seed {SEED}: {row}"


# --- semantics that the catalogue relies on ------------------------------------------------------
def spec(body: str, extra: str = "") -> str:
    return f"attention T {{\n heads = 2\n head_dim = 8\n{extra}\n {body}\n}}\n"


def test_a_row_of_minus_inf_bias_is_a_masked_row():
    """`bias -inf` on every key of a row leaves it with nothing to attend, exactly like a mask:
    output 0, gradients finite and 0 for its query."""
    by_bias = attnspec.build(spec("bias where(q == 2 | k == 0, -inf, 0.0)")).attentions[0]
    by_mask = attnspec.build(spec("mask !(q == 2 | k == 0)")).attentions[0]
    q, k, v = (torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    outs, grads = [], []
    for attn in (by_bias, by_mask):
        out = eager.run(attn, {}, q, k, v)
        grads.append(torch.autograd.grad(out.sum(), (q, k, v)))
        outs.append(out)
    assert torch.equal(outs[0], outs[1]) and (outs[0][:, :, 2] == 0).all()
    for g_bias, g_mask in zip(*grads):
        assert torch.isfinite(g_bias).all()
        torch.testing.assert_close(g_bias, g_mask)
    assert (grads[0][0][:, :, 2] == 0).all()


def test_plus_inf_and_nan_scores_are_not_defined():
    """Only -inf has a meaning (nothing to attend); a +inf score makes its row NaN in the
    interpreter too (documented: undefined)."""
    attn = attnspec.build(spec("bias where(k == 0, inf, 0.0)")).attentions[0]
    q = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    assert torch.isnan(eager.run(attn, {}, q, q, q)).all()


def naive_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):
    """SDPA as a kernel without a guard: NaN in rows whose mask keeps nothing, forward and
    backward (some CUDA kernels behave so)."""
    if enable_gqa:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    score = scale * q @ k.transpose(-2, -1)
    if attn_mask is not None:
        score = score.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool \
            else score + attn_mask
    return torch.softmax(score, dim=-1) @ v


@pytest.mark.parametrize("body", ["mask k > q + 2",
                                  "bias where(q % 2 == 0, -inf, 0.0)",
                                  "input n: int[batch]\n mask key_len(n)"])
def test_sdpa_never_hands_a_kernel_a_row_without_keys(body, monkeypatch):
    mod = attnspec.load(spec(body))
    monkeypatch.setattr(mod, "_sdpa", naive_sdpa)
    m = mod.T(backend="sdpa")
    q, k, v = (torch.randn(2, 2, 5, 8, requires_grad=True) for _ in range(3))
    inputs = {"n": torch.tensor([0, 3])} if "key_len" in body else {}
    out = m(q, k, v, **inputs)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = eager.run(attnspec.build(spec(body)).attentions[0], {}, q, k, v, inputs=inputs)
    empty = (ref == 0).all(-1)
    assert empty.any() and (out[empty] == 0).all()
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-5)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][empty] == 0).all()


@pytest.mark.parametrize("sizes", [(0, 2, 5, 5), (2, 2, 0, 5), (2, 2, 5, 0), (1, 2, 0, 0)])
def test_empty_batches_and_sequences(sizes):
    """B, Sq or Sk of 0: no kernel runs; rows without keys are 0, gradients exist."""
    B, H, Sq, Sk = sizes
    text = spec("input valid: bool[batch, kv_seq]\n mask causal_bottom_right & key_valid(valid)")
    mod, attn = attnspec.load(text), attnspec.build(text).attentions[0]
    valid = torch.ones(B, Sk, dtype=torch.bool)
    for backend in mod.T.BACKENDS:
        q = torch.randn(B, H, Sq, 8, requires_grad=backend != "flex")
        k, v = torch.randn(B, H, Sk, 8), torch.randn(B, H, Sk, 8)
        out = mod.T(backend=backend)(q, k, v, valid=valid)
        assert out.shape == (B, H, Sq, 8) and (out == 0).all()
        assert torch.equal(out, eager.run(attn, {}, q, k, v, inputs={"valid": valid}))
        if q.requires_grad:
            (grad,) = torch.autograd.grad(out.sum(), q, allow_unused=True)
            assert grad is None or (grad == 0).all()


def test_flex_on_cpu_runs_inputs_that_require_grad_under_no_grad():
    mod = attnspec.load(spec("mask causal"))
    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    with torch.no_grad():
        out = mod.T(backend="flex")(q, q, q)
    torch.testing.assert_close(out, mod.T(backend="eager")(q, q, q).detach())


def test_the_gpu_script_runs_on_cpu(capsys):
    code = edge.main(["--device", "cpu", "--dtypes", "float32", "--backends", "eager,sdpa",
                      "--cases", "length_1,no_keys_at_all", "--seed", str(SEED)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "length_1" in out and "no_keys_at_all" in out and "0 failed" in out


def test_a_kernel_that_writes_nan_fails_and_the_script_exits_1(monkeypatch, capsys):
    attn, cls = compiled("no_key_attendable")
    naive = lambda score, sink=None: torch.softmax(score, dim=-1)  # noqa: E731 — NaN rows
    monkeypatch.setitem(cls.forward.__globals__, "_softmax_rows", naive)
    row = edge.run_case(CASES["no_key_attendable"], (attn, cls), "eager", torch.float32, "cpu",
                        SEED)
    assert row.status == "FAIL" and "non-finite" in row.detail, row
    monkeypatch.setattr(edge, "compile_case", lambda case: (attn, cls))
    code = edge.main(["--device", "cpu", "--dtypes", "float32", "--backends", "eager",
                      "--cases", "no_key_attendable"])
    assert code == 1 and "1 failed" in capsys.readouterr().out


def test_rows_that_are_almost_zero_fail(monkeypatch):
    """Within the tolerance is not enough for a row with nothing to attend: exactly 0."""
    # (not a padded case: zeroed padded values would keep those rows 0 whatever the softmax does)
    attn, cls = compiled("no_key_attendable")
    exact = cls.forward.__globals__["_softmax_rows"]
    monkeypatch.setitem(cls.forward.__globals__, "_softmax_rows",
                        lambda score, sink=None: exact(score, sink) + 1e-12)
    row = edge.run_case(CASES["no_key_attendable"], (attn, cls), "eager", torch.float32,
                        "cpu", SEED)
    assert row.status == "FAIL" and "not exactly 0" in row.detail, row
