"""Keys and values that a key-only mask term excludes (key padding `v[b, k]`, key lengths
`k < n[b]`: the padding of a batch, the slots of a KV cache beyond its length) never matter:
NaN or ±inf there gives exactly the outputs and gradients of zeros there, on every backend and
in the interpreter (docs/language.md §9). On CPU: eager, sdpa, flex (forward only) and flash
through the model of flash-attn (tests/test_flash.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
from test_flash import with_fake

import attnspec
from attnspec import eager, verify

FILLS = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}


@dataclass(frozen=True)
class Case:
    """A kernel-mode spec and call: `inputs` make the mask, `excluded` [B, Sk] the keys it
    excludes for every query."""

    body: str
    Sq: int
    Sk: int
    inputs: dict = field(default_factory=dict)
    extra: str = ""

    @property
    def text(self) -> str:
        return (f"attention T {{\n heads = 4\n kv_heads = 2\n head_dim = 32\n{self.extra}\n"
                f"{self.body}\n}}\n")

    @property
    def excluded(self) -> torch.Tensor:
        keep = torch.ones(len(next(iter(self.inputs.values()))), self.Sk, dtype=torch.bool)
        if "valid" in self.inputs:
            keep &= self.inputs["valid"]
        if "n" in self.inputs:
            keep &= torch.arange(self.Sk) < self.inputs["n"].view(-1, 1)
        return ~keep


VALID = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [0] * 7, [1, 1, 0, 1, 1, 1, 0]], dtype=torch.bool)
CASES = {
    # Right and inner padding, and a batch row of nothing but padding (its rows are exactly 0).
    "key_valid": Case(" input valid: bool[batch, seq]\n mask key_valid(valid)", 7, 7,
                      {"valid": VALID}),
    # Lengths: 0 (nothing to attend), inside, and beyond the keys (nothing excluded).
    "causal_key_len": Case(" input n: int[batch]\n mask causal & key_len(n)", 7, 7,
                           {"n": torch.tensor([4, 0, 9])}),
    # Decoding over a KV cache: the slots beyond each sequence's length hold garbage.
    "kv_cache": Case(" input n: int[batch]\n mask key_len(n)", 1, 9,
                     {"n": torch.tensor([3, 9, 0])}),
    # Both terms, with q/k transforms and sinks, which all see the excluded keys first.
    "transforms": Case(" input valid: bool[batch, kv_seq]\n input n: int[batch]\n"
                       " mask key_valid(valid) & key_len(n)", 5, 7,
                       {"valid": VALID, "n": torch.tensor([3, 7, 6])},
                       " qk_norm = rms\n sinks = true\n position rope"),
}
COMPILED: dict = {}


def compiled(name: str):
    """(attention IR, generated module) of a case, compiled once per session."""
    if name not in COMPILED:
        text = CASES[name].text
        COMPILED[name] = (attnspec.build(text).attentions[0], attnspec.load(text))
    return COMPILED[name]


def qkv(case: Case, dtype=torch.float32, fill: float = 0.0):
    """Fixed random q, k, v with `fill` in k and v at every excluded key."""
    gen = torch.Generator().manual_seed(0)
    B = case.excluded.shape[0]
    q = torch.randn(B, 4, case.Sq, 32, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, 2, case.Sk, 32, generator=gen, dtype=torch.float64) for _ in "kv")
    where = case.excluded[:, None, :, None]
    k, v = (t.masked_fill(where, fill) for t in (k, v))
    return tuple(t.to(dtype) for t in (q, k, v))


def module(name: str, backend: str, dtype=torch.float32):
    """An instance with random params (sinks, norm gains), so that they matter."""
    m = compiled(name)[1].T(backend=backend).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return m


def outputs_and_grads(fn, args, params=(), backward=True):
    if not backward:  # flex on CPU: forward only (params that require grad included)
        with torch.no_grad():
            return fn(*args), []
    leaves = [a.clone().requires_grad_() for a in args]
    out = fn(*leaves)
    grads = torch.autograd.grad(out.float().square().sum(), [*leaves, *params])
    return out.detach(), list(grads)


def assert_same_as_zeros(name, fn, dtype, params=(), backward=True):
    """Poisoned keys and values give bit for bit what zeros there give, forward and backward,
    and the gradients of the excluded keys and values are 0."""
    case = CASES[name]
    want, want_grads = outputs_and_grads(fn, qkv(case, dtype), params, backward)
    assert torch.isfinite(want).all()
    for fill in FILLS.values():
        got, grads = outputs_and_grads(fn, qkv(case, dtype, fill), params, backward)
        assert torch.equal(got, want), f"fill {fill}: outputs differ from zeros"
        for g, w in zip(grads, want_grads, strict=True):
            assert torch.isfinite(g).all() and torch.equal(g, w), f"fill {fill}: gradients"
        if grads:
            excluded = case.excluded[:, None, :, None].expand_as(grads[1])
            assert (grads[1][excluded] == 0).all() and (grads[2][excluded] == 0).all()


# --- the interpreter ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_the_interpreter_ignores_excluded_keys_and_values(name):
    attn, _ = compiled(name)
    state = {k: v.double() for k, v in module(name, "eager").state_dict().items()}
    params = [t.requires_grad_() for t in state.values()]
    run = lambda q, k, v: eager.run(attn, state, q, k, v, inputs=CASES[name].inputs)  # noqa: E731
    assert_same_as_zeros(name, run, torch.float64, params)


def test_rows_with_nothing_to_attend_stay_exactly_zero():
    attn, _ = compiled("key_valid")
    out = eager.run(attn, {}, *qkv(CASES["key_valid"], fill=math.nan),
                    inputs=CASES["key_valid"].inputs)
    assert (out[1] == 0).all() and torch.isfinite(out).all()


# --- every backend that runs on CPU ------------------------------------------------------------
def cpu_backends():
    for name in CASES:
        for backend in compiled(name)[1].T.BACKENDS:
            if verify.runs_on(backend, "cpu"):
                yield pytest.param(name, backend, id=f"{name}-{backend}")


@pytest.mark.parametrize("name, backend", list(cpu_backends()))
def test_backends_ignore_excluded_keys_and_values(name, backend):
    m = module(name, backend)
    backward = verify.has_backward(backend, "cpu")
    run = lambda q, k, v: m(q, k, v, **CASES[name].inputs)  # noqa: E731
    assert_same_as_zeros(name, run, torch.float32, list(m.parameters()), backward)


@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("name, backend", list(cpu_backends()))
def test_backends_match_the_interpreter_with_poisoned_keys(name, backend, fill):
    """Against the interpreter in float64 on the same poisoned inputs; rows with nothing to
    attend exactly 0 (the harness checks both, and refuses non-finite values)."""
    attn, _ = compiled(name)
    m = module(name, backend)
    args = qkv(CASES[name], fill=FILLS[fill])
    grad_out = torch.randn(m(*args, **CASES[name].inputs).shape) \
        if verify.has_backward(backend, "cpu") else None
    result = verify.check_inputs(attn, m, args, CASES[name].inputs, None, torch.float32, grad_out)
    assert result.ok, result


@pytest.mark.parametrize("name", [n for n in CASES if "flash" in compiled(n)[1].T.BACKENDS])
def test_flash_model_ignores_excluded_keys_and_values(name, monkeypatch):
    with_fake(monkeypatch, compiled(name)[1], 4)
    m = module(name, "flash", torch.bfloat16)
    run = lambda q, k, v: m(q, k, v, **CASES[name].inputs)  # noqa: E731
    assert_same_as_zeros(name, run, torch.bfloat16, list(m.parameters()))



# --- layer mode: k and v are projections of the context ----------------------------------------
LAYER = """attention C {
 dim = 32
 context_dim = 24
 heads = 4
 kv_heads = 2
 qkv_bias = true
 input valid: bool[batch, kv_seq]
 mask key_valid(valid)
}
"""


def layer_inputs(fill: float = 0.0):
    """x [3, 5, 32]; context [3, 7, 24] with `fill` at every padded position."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 32, generator=gen)
    context = torch.randn(3, 7, 24, generator=gen).masked_fill(~VALID[..., None], fill)
    return x, context


@pytest.mark.parametrize("backend", ["eager", "sdpa", "flex"])
def test_layer_mode_ignores_padded_context(backend):
    """NaN or inf in the context at padded positions: the output, dx and dcontext are those of
    zeros there (dcontext 0 there). The projection weights' gradients are not: 0 * NaN in
    dW = dk^T @ context is NaN, so such a context needs zeros for training (docs/language.md)."""
    attn, mod = attnspec.build(LAYER).attentions[0], attnspec.load(LAYER)
    m = mod.C(backend=backend)
    backward = verify.has_backward(backend, "cpu")
    run = lambda x, context: m(x, context, valid=VALID)  # noqa: E731
    want, want_grads = outputs_and_grads(run, layer_inputs(), (), backward)
    for fill in FILLS.values():
        args = layer_inputs(fill)
        got, grads = outputs_and_grads(run, args, (), backward)
        assert torch.equal(got, want), f"fill {fill}"
        for g, w in zip(grads, want_grads, strict=True):
            assert torch.isfinite(g).all() and torch.equal(g, w), f"fill {fill}: gradients"
        if grads:
            assert (grads[1][~VALID] == 0).all()
        result = verify.check_inputs(attn, m, args, {"valid": VALID}, None, torch.float32)
        assert result.ok, result
