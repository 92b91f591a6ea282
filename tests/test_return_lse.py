"""`forward(..., return_lse=True)`: each query row's log-sum-exp (issue 18).

Every CPU backend that returns one (eager, flex, edges, `auto`) is checked against the
interpreter in float64 on specs with the features that change the lse (windows, biases and a
softcap, sinks, key padding with rows that attend nothing, key lengths, token groups, graphs,
layer mode, packed documents, decoding, context parallelism); then the user story: two
partial attentions over disjoint key sets, merged by their lse, give the full attention.
flash runs against tests/test_flash.py's model of flash-attn (its varlen softmax_lse layout,
flash-attn 2's +inf rows).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_flash import compiled, kernel_spec, with_fake

import attnspec
from attnspec import eager, verify
from attnspec.errors import UnsupportedInputError

HEAD = "heads = 4\n kv_heads = 2\n head_dim = 8\n"
SPECS = {
    "causal": "mask causal",
    "window_alibi_softcap": "mask sliding_window(3)\n bias alibi\n score = softcap(score, 5.0)",
    "sinks": "sinks = true\n mask sliding_window(3)",
    "key_padding": "input valid: bool[batch, seq]\n mask key_valid(valid) & causal",
    "key_padding_sinks": "sinks = true\n input valid: bool[batch, seq]\n mask key_valid(valid)",
    "key_lengths": "input n: int[batch]\n mask key_len(n)",
    "groups": "tokens {\n a: 3\n b: *\n c: 2\n }\n pattern a, c -> a\n pattern b -> a, b",
    "graph": "input g: edges(types = 2, max_distance = 4)\n param tb: float[heads, 2] = zeros\n"
             " mask g.edge\n bias tb[h, g.type]",
    "layer": "dim = 32\n mask causal",
}


def spec(body: str, name: str = "T") -> str:
    head = HEAD.replace("head_dim = 8\n", "") if "dim = 32" in body else HEAD
    return f"attention {name} {{\n {head} {body}\n}}\n"


def build(name: str):
    text = spec(SPECS[name])
    return attnspec.build(text).attentions[0], attnspec.load(text).T


def inputs_for(attn, module, case: verify.Case, seed: int = 0):
    """Random args and inputs in float64 (verify's: a batch row all padding, a length 0, random
    edges), and the module's params randomised the same way."""
    gen = torch.Generator().manual_seed(seed)
    verify._randomise_params(module, gen)
    return verify.make_inputs(attn, case, torch.float64, "cpu", gen)


def reference(attn, module, args, inputs, sizes):
    return eager.run(attn, module.state_dict(), *args, inputs=_copies(inputs),
                     sizes=sizes or None, return_lse=True)


def _copies(inputs: dict) -> dict:
    """Each call gets its own caches: a decoding call writes its new tokens into them."""
    return {name: t.clone() for name, t in inputs.items()}


def assert_lse_close(got, want, atol=1e-10):
    assert got.shape == want.shape and got.dtype == want.dtype
    empty = torch.isneginf(want)
    assert torch.equal(torch.isneginf(got), empty), "-inf exactly on rows with nothing to attend"
    torch.testing.assert_close(got[~empty], want[~empty], atol=atol, rtol=0)


def cpu_backends(cls) -> list[str]:
    return [b for b in cls.LSE_BACKENDS if b != "flash"] + ["auto"]


# --- every CPU backend against the interpreter -------------------------------------------------
@pytest.mark.parametrize("name", SPECS)
def test_backends_match_the_interpreter(name):
    attn, cls = build(name)
    module = cls().double()
    case = verify.Case("S=9", 2, 9, 9) if not attn.groups else verify.Case("groups", 2, 12, 12)
    args, inputs, sizes = inputs_for(attn, module, case)
    want_out, want_lse = reference(attn, module, args, inputs, sizes)
    assert want_lse.shape == (2, 4, case.q_len)
    for backend in cpu_backends(cls):
        module.backend = backend
        with torch.no_grad():
            out, lse = module(*args, **inputs, **({"sizes": sizes} if sizes else {}),
                              return_lse=True)
        assert_lse_close(lse, want_lse)
        torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)


def test_empty_rows_are_minus_inf_or_the_sink():
    """The convention: a row with nothing to attend has lse -inf; with sinks, its one term
    is the sink logit, so lse = sink[h] (and out = 0)."""
    for name, sinks in (("key_padding", False), ("key_padding_sinks", True)):
        attn, cls = build(name)
        module = cls().double()
        args, inputs, _ = inputs_for(attn, module, verify.Case("S=6", 2, 6, 6))
        assert not inputs["valid"][0].any()  # batch row 0: every key is padding
        for backend in cpu_backends(cls):
            module.backend = backend
            with torch.no_grad():
                out, lse = module(*args, **inputs, return_lse=True)
            assert torch.equal(out[0], torch.zeros_like(out[0]))
            want = module.sink.detach().view(-1, 1).expand(4, 6) if sinks else \
                torch.full((4, 6), -math.inf, dtype=torch.float64)
            assert torch.equal(lse[0], want), backend


def test_no_keys_and_no_rows():
    """Empty sizes run no kernel on any backend: kv_len 0 gives -inf (the sink with sinks),
    B = 0 an empty lse."""
    _, cls = build("sinks")
    module = cls(backend="flex").double()
    q = torch.randn(2, 4, 3, 8, dtype=torch.float64)
    k = v = torch.randn(2, 2, 0, 8, dtype=torch.float64)
    out, lse = module(q, k, v, return_lse=True)
    assert torch.equal(lse, module.sink.detach().view(1, -1, 1).expand(2, 4, 3))
    assert torch.equal(out, torch.zeros_like(out))
    _, lse = module(q[:0], k[:0], v[:0], return_lse=True)
    assert lse.shape == (0, 4, 3)


@pytest.mark.parametrize("name", ["key_padding_sinks", "key_padding", "graph", "layer"])
def test_gradients_through_the_lse_match_the_interpreter(name):
    """lse is differentiable on eager and edges (flex: on CUDA): the gradients of
    `(lse * g).sum()` for q, k, v (x in layer mode) and every param match the interpreter's;
    rows of -inf take no gradient and leave every gradient finite."""
    attn, cls = build(name)
    case = verify.Case("S=7", 2, 7, 7)
    for backend in [b for b in cls.LSE_BACKENDS if b not in ("flex", "flash")]:
        module = cls(backend=backend).double()
        args, inputs, _ = inputs_for(attn, module, case, seed=2)
        grad_lse = torch.randn(2, 4, 7, dtype=torch.float64)
        got, want = lse_gradients(attn, module, args, inputs, grad_lse)
        for g, w in zip(got, want):
            if w is None:  # v (and o_proj) do not reach the lse
                assert g is None or not g.any()
                continue
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def lse_gradients(attn, module, args, inputs, grad_lse) -> tuple[list, list]:
    """Gradients of `(lse * grad_lse).sum()` for the args and params: the module's, then the
    interpreter's (on copies of the params)."""
    params = dict(module.named_parameters())
    state = {n: p.detach().clone().requires_grad_() for n, p in params.items()}

    def module_lse(*leaves):
        return module(*leaves, **inputs, return_lse=True)[1]

    def reference_lse(*leaves):
        return eager.run(attn, state, *leaves, inputs=inputs, return_lse=True)[1]

    results = []
    for run, named in ((module_lse, params), (reference_lse, state)):
        leaves = [a.detach().clone().requires_grad_() for a in args]
        run(*leaves).backward(grad_lse)
        results.append([t.grad for t in leaves] + [p.grad for p in named.values()])
    return results[0], results[1]


# --- the user story: merging partial attentions ------------------------------------------------
def merge(out1, lse1, out2, lse2):
    """Two attentions of the same queries over disjoint key sets, as one: weights
    exp(lse_i - lse); rows empty in both stay 0 (lse -inf), as docs/language.md §8 writes it."""
    lse = torch.logaddexp(lse1, lse2)
    w1 = torch.exp(lse1 - lse).nan_to_num(0.0).unsqueeze(-1)
    w2 = torch.exp(lse2 - lse).nan_to_num(0.0).unsqueeze(-1)
    return w1 * out1 + w2 * out2, lse


@pytest.mark.parametrize("sinks", [False, True])
def test_merging_partials_over_split_keys_gives_the_full_attention(sinks):
    """Keys split in two chunks (ring attention's, or a cache's pages): each chunk attended on
    its own, then merged by the lse, equals attention over all keys. The score pipeline runs
    per key (a softcap here), so chunks need no positions."""
    text = spec(("sinks = true\n" if sinks else "") + "score = softcap(score, 2.0)")
    cls = attnspec.load(text).T
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 7, 8, dtype=torch.float64) for _ in range(2))
    for backend in cpu_backends(cls):
        full, rest = cls(backend=backend).double(), cls(backend=backend).double()
        if sinks:  # the sink is a key with value 0: exactly one partial may hold it
            with torch.no_grad():
                full.sink.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
                rest.sink.fill_(-math.inf)
        with torch.no_grad():
            want, want_lse = full(q, k, v, return_lse=True)
            first = full(q, k[:, :, :3], v[:, :, :3], return_lse=True)
            second = rest(q, k[:, :, 3:], v[:, :, 3:], return_lse=True)
        got, lse = merge(*first, *second)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        torch.testing.assert_close(lse, want_lse, atol=1e-12, rtol=0)


def test_merging_with_an_empty_partial():
    """A partial with no keys (lse -inf, out 0) merges into nothing, on every backend."""
    _, cls = build("causal")
    q = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    k = v = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    for backend in cpu_backends(cls):
        module = cls(backend=backend).double()
        with torch.no_grad():
            want = module(q, k, v, return_lse=True)
            none = module(q, k[:, :, :0], v[:, :, :0], return_lse=True)
        got, lse = merge(*want, *none)
        torch.testing.assert_close(got, want[0], atol=0, rtol=0)
        assert torch.equal(lse, want[1])


# --- refusals and auto -------------------------------------------------------------------------
def test_sdpa_refuses_with_a_reason_and_auto_runs_another():
    attn, cls = build("causal")
    assert cls.LSE_BACKENDS == ("eager", "flex") and cls.AUTO_CPU == "sdpa"
    q = torch.randn(1, 4, 5, 8)
    k = v = torch.randn(1, 2, 5, 8)
    with pytest.raises(UnsupportedInputError, match="backend 'sdpa' cannot return_lse=True.*"
                                                   "'eager' or 'flex'"):
        cls(backend="sdpa")(q, k, v, return_lse=True)
    module = cls(backend="auto")
    module._attend_sdpa = _never  # auto on CPU would run SDPA: asked for an lse, it must not
    out, lse = module(q, k, v, return_lse=True)
    want, want_lse = cls(backend="eager")(q, k, v, return_lse=True)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    del module._attend_sdpa
    assert torch.equal(module(q, k, v), cls(backend="sdpa")(q, k, v))  # without: SDPA, as ever


def _never(*args, **kwargs):
    raise AssertionError("SDPA ran a call that asked for the lse")


def test_auto_on_cuda_steps_past_sdpa():
    """`_attend_auto` (CUDA's per-call walk, run here on CPU tensors): choices without an lse
    are skipped; flex runs on Triton (no FLASH kernel for an lse); eager ends the walk."""
    _, cls = build("window_alibi_softcap")
    module = cls()
    module._attend_sdpa = _never
    q = torch.randn(1, 4, 5, 8)
    k = v = torch.randn(1, 2, 5, 8)
    want = cls(backend="eager")(q, k, v, return_lse=True)
    for choices, ran in ((("sdpa-small", "flex"), "flex-cpu"), (("sdpa-dense",), "eager")):
        module._auto_cuda = choices
        with torch.no_grad():
            out, lse = module._attend_auto(q, k, v, sizes=None, return_lse=True)
        assert module.last_backend == ran
        torch.testing.assert_close(lse, want[1])
        torch.testing.assert_close(out, want[0])


def test_return_lse_is_a_reserved_input_name():
    with pytest.raises(attnspec.AttnSpecError, match="return_lse"):
        attnspec.build(spec("input return_lse: bool[batch, seq]\n mask key_valid(return_lse)"))


# --- packed, decoding, context parallelism -----------------------------------------------------
def test_packed_form_returns_heads_by_tokens():
    text = spec("input doc: int[batch, seq]\n mask same(doc) & causal")
    attn, cls = attnspec.build(text).attentions[0], attnspec.load(text).T
    lengths = [3, 0, 5]
    cu = torch.tensor([0, 3, 3, 8], dtype=torch.int32)
    doc = torch.tensor([[0, 0, 0, 2, 2, 2, 2, 2]])
    q = torch.randn(8, 4, 8, dtype=torch.float64)
    k, v = (torch.randn(8, 2, 8, dtype=torch.float64) for _ in range(2))
    _, want = eager.run(attn, {}, *(t.transpose(0, 1)[None] for t in (q, k, v)),
                        inputs={"doc": doc}, return_lse=True)
    assert sum(lengths) == 8
    for backend in cpu_backends(cls):
        with torch.no_grad():
            out, lse = cls(backend=backend).double()(q, k, v, cu_seqlens=cu, return_lse=True)
        assert out.shape == (8, 4, 8) and lse.shape == (4, 8)  # flash-attn's varlen layout
        assert_lse_close(lse, want[0])


@pytest.mark.parametrize("layer, sinks", [(False, True), (True, False)])
def test_decoding_returns_the_lse_over_the_cache(layer, sinks):
    head = ("dim = 32\n " if layer else "") + ("sinks = true\n " if sinks else "")
    text = spec(f"{head}input cache: kv_cache\n mask sliding_window(6)\n bias alibi")
    attn, cls = attnspec.build(text).attentions[0], attnspec.load(text).T
    case = verify._decode_cases("cpu")[1]  # 3 new tokens after 17 and 2 cached
    module = cls().double()
    args, inputs, _ = inputs_for(attn, module, case)
    want_out, want = reference(attn, module, args, inputs, None)
    for backend in cpu_backends(cls):
        module.backend = backend
        with torch.no_grad():
            out, lse = module(*args, **_copies(inputs), return_lse=True)
        assert lse.shape == (2, 4, 3)
        assert_lse_close(lse, want)
        torch.testing.assert_close(out, want_out, atol=1e-10, rtol=0)
    if sinks:
        return  # SDPA has no sinks
    module.backend = "sdpa"
    cache_k = inputs["cache_k"].clone()
    with pytest.raises(UnsupportedInputError, match="sdpa"):
        module(*args, **inputs, return_lse=True)
    assert torch.equal(inputs["cache_k"], cache_k)  # refused before the cache is written


@pytest.mark.parametrize("name", ["key_padding", "graph"])
def test_context_parallel_ranks_return_their_rows(name, monkeypatch):
    """Under `cp=plan` each rank gets the lse of its own rows (every key is gathered): checked
    on both ranks of a 2-way head-tail plan with the gather played by hand."""
    from attnspec.runtime.cp import CPPlan, _cp_assignment

    text = spec(SPECS[name])
    attn, mod = attnspec.build(text).attentions[0], attnspec.load(text)
    module = mod.T().double()
    (q, k, v), inputs, _ = inputs_for(attn, module, verify.Case("S=10", 1, 10, 10), seed=3)
    _, want = reference(attn, module, (q, k, v), inputs, None)
    monkeypatch.setattr(mod, "_cp_gather", lambda plan, t, dim, name: {"k": k, "v": v}[name])
    for rank in (0, 1):
        plan = CPPlan(None, 2, rank, 10, "head_tail", _cp_assignment(10, 2, "head_tail"))
        rows = plan.positions
        for backend in cpu_backends(mod.T):
            module.backend = backend
            with torch.no_grad():
                _, lse = module(q[:, :, rows], k[:, :, rows], v[:, :, rows], **inputs, cp=plan,
                                return_lse=True)
            assert_lse_close(lse, want[:, :, rows])
    if "sdpa" in mod.T.BACKENDS:
        module.backend = "sdpa"
        with pytest.raises(UnsupportedInputError, match="sdpa"):
            module(q[:, :, rows], k[:, :, rows], v[:, :, rows], **inputs, cp=plan,
                   return_lse=True)


# --- flash, through tests/test_flash.py's model of flash-attn ----------------------------------
FLASH_SPECS = {
    "dense": "mask causal",
    "documents": "input doc: int[batch, seq]\n mask same(doc) & causal",
    "key_padding": "input valid: bool[batch, seq]\n mask key_valid(valid)",
    "key_padding_sinks": "sinks = true\n input valid: bool[batch, seq]\n mask key_valid(valid)",
    "groups": "tokens {\n a: 4\n b: *\n }\n pattern a -> a\n pattern b -> a, b",
}


@pytest.mark.parametrize("version", [4, 2])
@pytest.mark.parametrize("name", FLASH_SPECS)
def test_flash_lse_matches_the_interpreter(name, version, monkeypatch):
    """flash-attn's softmax_lse ([B, H, Sq] dense, [H, total_q] varlen, flash-attn 2's +inf
    on empty rows) comes back as [B, H, Sq] with the language's empty-row convention."""
    module_ir, mod = compiled(kernel_spec(FLASH_SPECS[name], head_dim=32))
    attn = module_ir.attentions[0]
    if version == 2 and (attn.sinks or attn.groups):
        pytest.skip("flash-attn 2 runs neither sinks nor padded token groups")
    cls = with_fake(monkeypatch, mod, version).T
    module = cls(backend="flash").to(torch.bfloat16)
    case = verify.Case("groups", 2, 11, 11) if attn.groups else verify.Case("S=10", 2, 10, 10)
    args, inputs, sizes = inputs_for(attn, module, case, seed=5)
    args = tuple(a.to(torch.bfloat16) for a in args)
    with torch.no_grad():
        out, lse = module(*args, **inputs, **({"sizes": sizes} if sizes else {}),
                          return_lse=True)
    state = {n: t.double() for n, t in module.state_dict().items()}
    _, want = eager.run(attn, state, *(a.double() for a in args), inputs=inputs,
                        sizes=sizes or None, return_lse=True)
    assert lse.dtype == torch.float32
    assert_lse_close(lse.double(), want, atol=1e-4)


def test_flash_2_refuses_an_lse_it_cannot_differentiate(monkeypatch):
    _, mod = compiled(kernel_spec("mask causal"))
    module = with_fake(monkeypatch, mod, 2).T(backend="flash").to(torch.bfloat16)
    q, k, v = (torch.randn(1, h, 6, 32, dtype=torch.bfloat16, requires_grad=True)
               for h in (4, 2, 2))
    with pytest.raises(UnsupportedInputError, match="flash-attn 2's backward ignores"):
        module(q, k, v, return_lse=True)
    module(q, k, v)  # without an lse: trains as before
    with torch.no_grad():
        module(q, k, v, return_lse=True)  # inference: runs


def test_flash_decode_returns_the_lse(monkeypatch):
    from test_decode import fake_fa4_decode

    text = spec("sinks = true\n input cache: kv_cache\n mask causal").replace("head_dim = 8",
                                                                              "head_dim = 32")
    attn, mod = attnspec.build(text).attentions[0], attnspec.load(text)
    monkeypatch.setattr(mod, "_flash_library", lambda device: mod._FlashLibrary(
        4, None, fake_fa4_decode))
    module = mod.T(backend="flash").to(torch.bfloat16)
    args, inputs, _ = inputs_for(attn, module, verify._decode_cases("cpu")[1])
    args = tuple(a.to(torch.bfloat16) for a in args)
    inputs = {n: t.to(torch.bfloat16) if t.is_floating_point() else t for n, t in inputs.items()}
    with torch.no_grad():
        _, lse = module(*args, **_copies(inputs), return_lse=True)
    state = {n: t.double() for n, t in module.state_dict().items()}
    _, want = eager.run(attn, state, *(a.double() for a in args),
                        inputs={n: t.double() if t.is_floating_point() else t
                                for n, t in inputs.items()}, return_lse=True)
    assert_lse_close(lse.double(), want, atol=1e-4)


def test_flash_unpacks_the_varlen_layout():
    rt = attnspec.load(kernel_spec("mask causal"))
    packed = torch.arange(3 * 2 * 5.0).view(3, 10)  # [H, B * Sq], query rows in order
    got = rt._flash_unpack_lse(packed, 2, 5)
    assert got.shape == (2, 3, 5) and got[1, 2, 4] == packed[2, 9] and got[0, 1, 3] == packed[1, 3]


# --- verify compares the lse -------------------------------------------------------------------
def test_verify_catches_a_wrong_lse():
    attn, cls = build("key_padding")
    module = cls(backend="eager").double()
    args, inputs, _ = inputs_for(attn, module, verify.Case("S=6", 2, 6, 6))
    assert verify.check_inputs(attn, module, args, inputs, None, torch.float32).ok
    forward = module.forward

    def shifted(*a, **kw):
        out = forward(*a, **kw)
        return (out[0], out[1] + 1e-3) if kw.get("return_lse") else out
    module.forward = shifted
    result = verify.check_inputs(attn, module, args, inputs, None, torch.float32)
    assert not result.ok and result.worst_tensor == "lse"

    def finite(*a, **kw):
        out = forward(*a, **kw)
        return (out[0], out[1].nan_to_num(neginf=-1e9)) if kw.get("return_lse") else out
    module.forward = finite
    result = verify.check_inputs(attn, module, args, inputs, None, torch.float32)
    assert not result.ok and "not -inf exactly" in result.detail
