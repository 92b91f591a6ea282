"""Bad runtime input to generated modules: every problem is a ValueError (or its subclass
UnsupportedInputError for a per-backend refusal) whose message names the input and what was
expected, on every backend, before any kernel runs: never an IndexError, RuntimeError or
TypeError from deep inside torch. Devices: the `meta` device stands in for a second device."""

from __future__ import annotations

import random
import re
from functools import cache

import pytest
import torch
from test_flash import with_fake

import attnspec
from attnspec.errors import UnsupportedInputError

SEED = random.randrange(2**31)

KERNEL = """
attention K {
    heads = 4
    kv_heads = 2
    head_dim = 16
    value_dim = 8
    sinks = true
    input doc: int[batch, seq]
    input valid: bool[batch, seq]
    mask causal & same(doc) & key_valid(valid)
}
attention Docs {
    heads = 4
    kv_heads = 2
    head_dim = 16
    input doc: int[batch, seq]
    mask causal & same(doc)
}
attention Groups {
    heads = 2
    head_dim = 8
    tokens { anchors: 3
             queries: *
             extra: * }
    pattern anchors, queries -> anchors
    pattern extra -> extra, anchors
}
attention Graph {
    heads = 2
    head_dim = 8
    input graph: edges(types = 3, max_distance = 4)
    param type_bias: float[heads, 3] = zeros
    mask graph.edge
    bias type_bias[h, graph.type]
}
attention Cross {
    dim = 32
    heads = 4
    context_dim = 24
    input n: int[batch]
    mask key_len(n)
}
attention SelfLayer {
    dim = 32
    heads = 4
    mask causal
}
"""


@cache
def module():
    return attnspec.load(KERNEL)


def backends(name: str) -> list[str]:
    """Every backend of the class, flash included (its input checks run before the kernel
    lookup), and auto."""
    return [*getattr(module(), name).BACKENDS, "auto"]


def kernel_call(B=2, S=6, H=4, Hk=2, D=16, Dv=8, dtype=torch.float32):
    q = torch.randn(B, H, S, D, dtype=dtype)
    k, v = torch.randn(B, Hk, S, D, dtype=dtype), torch.randn(B, Hk, S, Dv, dtype=dtype)
    inputs = {"doc": torch.zeros(B, S, dtype=torch.long),
              "valid": torch.ones(B, S, dtype=torch.bool)}
    return [q, k, v], inputs


def raises(fn, pattern: str):
    """fn() raises a ValueError whose message matches `pattern` (re.escape'd)."""
    with pytest.raises(ValueError, match=re.escape(pattern)) as info:
        fn()
    return info.value


def replace(items, index, value):
    items = list(items)
    items[index] = value
    return items


# --- q, k, v -------------------------------------------------------------------------------------
QKV_CASES = {  # label: (which tensor, how it changes, what the message says)
    "q rank": (0, lambda t: t[0], "q: expected shape [B, heads, Sq, head_dim] = [*, 4, *, 16], "
                                  "got [4, 6, 16]"),
    "k batch": (1, lambda t: t[:1], "k: expected shape [B, kv_heads, Sk, head_dim] = "
                                    "[2, 2, *, 16], got [1, 2, 6, 16]"),
    "q heads": (0, lambda t: t[:, :3], "got [2, 3, 6, 16]"),
    "k heads": (1, lambda t: t[:, :1], "k: expected shape [B, kv_heads, Sk, head_dim]"),
    "head_dim": (1, lambda t: t[..., :8], "got [2, 2, 6, 8]"),
    "value_dim": (2, lambda t: t[..., :4], "v: expected shape [B, kv_heads, Sk, value_dim] = "
                                           "[2, 2, 6, 8], got [2, 2, 6, 4]"),
    "Sk of v": (2, lambda t: t[:, :, :5], "v: expected shape [B, kv_heads, Sk, value_dim] = "
                                          "[2, 2, 6, 8], got [2, 2, 5, 8]"),
    "int q": (0, lambda t: t.long(), "q: expected a float tensor, got dtype torch.int64"),
    "bool q": (0, lambda t: t > 0, "q: expected a float tensor, got dtype torch.bool"),
    "k dtype": (1, lambda t: t.double(), "q, k, v must have one dtype, got q: torch.float32, "
                                         "k: torch.float64"),
    "k device": (1, lambda t: t.to("meta"), "q, k, v must be on one device, got q: cpu, "
                                            "k: meta"),
    "v not a tensor": (2, lambda t: t.tolist(), "v: expected a tensor of shape"),
}


@pytest.mark.parametrize("label", QKV_CASES)
@pytest.mark.parametrize("backend", backends("K"))
def test_q_k_v_problems(backend, label):
    which, change, message = QKV_CASES[label]
    args, inputs = kernel_call()
    m = module().K(backend=backend)
    raises(lambda: m(*replace(args, which, change(args[which])), **inputs), message)


# --- call-time inputs ----------------------------------------------------------------------------
INPUT_CASES = {  # label: (input changes, what the message says)
    "missing doc": ({"doc": None}, "doc: missing input, expected shape [B, S] = [2, 6]"),
    "doc shape": ({"doc": torch.zeros(2, 5, dtype=torch.long)},
                  "doc: expected shape [B, S] = [2, 6], got [2, 5]"),
    "float ids": ({"doc": torch.zeros(2, 6)}, "doc: expected an int tensor, got dtype "
                                              "torch.float32"),
    "int mask": ({"valid": torch.ones(2, 6, dtype=torch.long)},
                 "valid: expected a bool tensor, got dtype torch.int64"),
    "doc device": ({"doc": torch.zeros(2, 6, dtype=torch.long, device="meta")},
                   "doc: expected a tensor on cpu (the device of the attention's inputs), got "
                   "one on meta"),
    "typo": ({"vaild": torch.ones(2, 6, dtype=torch.bool)},
             "K: unexpected input(s) 'vaild' (did you mean 'valid'?); this attention takes q, k, "
             "v, doc, valid, cu_seqlens, max_seqlen, sizes"),
    "unknown": ({"mask": 1}, "K: unexpected input(s) 'mask'"),
    "sizes without groups": ({"sizes": {"a": 1}}, "sizes: this attention has no token groups"),
}


@pytest.mark.parametrize("label", INPUT_CASES)
@pytest.mark.parametrize("backend", backends("K"))
def test_input_problems(backend, label):
    changes, message = INPUT_CASES[label]
    args, inputs = kernel_call()
    inputs.update(changes)
    if "vaild" in changes:
        del inputs["valid"]
    inputs = {k: v for k, v in inputs.items() if v is not None}
    raises(lambda: module().K(backend=backend)(*args, **inputs), message)


def test_seq_inputs_need_equal_lengths():
    (q, k, v), inputs = kernel_call()
    raises(lambda: module().K()(q, k[:, :, :5], v[:, :, :5], **inputs),
           "doc, valid: a `seq` dimension needs q_len == kv_len, got q_len 6 and kv_len 5 "
           "(the lengths of q and k)")


@pytest.mark.parametrize("backend", backends("K"))
def test_module_on_another_device(backend):
    args, inputs = kernel_call()
    m = module().K(backend=backend).to("meta")
    raises(lambda: m(*args, **inputs),
           "q: on cpu, but K's parameters are on meta; move one of them (module.to('cpu'))")


# --- flash's precondition on document ids: a per-backend refusal ------------------------------
def unsorted_docs():
    doc = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
    q, k, v = (torch.randn(2, h, 6, 16, dtype=torch.bfloat16) for h in (4, 2, 2))
    return (q, k, v), doc


def test_flash_refuses_unsorted_document_ids_naming_the_input(monkeypatch):
    mod = with_fake(monkeypatch, module(), 4)
    (q, k, v), doc = unsorted_docs()
    error = raises(lambda: mod.Docs(backend="flash").bfloat16()(q, k, v, doc=doc),
                   "backend 'flash' needs the document ids `doc` non-decreasing")
    assert isinstance(error, UnsupportedInputError)


def test_auto_passes_unsorted_document_ids_to_the_next_backend(monkeypatch):
    mod = with_fake(monkeypatch, module(), 4)
    (q, k, v), doc = unsorted_docs()
    m = mod.Docs().bfloat16()
    out = m._attend_auto(q, k, v, doc=doc, sizes=None)  # what auto runs for CUDA tensors
    assert m.last_backend == "sdpa-small"
    torch.testing.assert_close(out, mod.Docs(backend="eager").bfloat16()(q, k, v, doc=doc),
                               atol=1e-2, rtol=2e-2)  # bfloat16 kernels round differently


def test_lengths_outside_the_sequence_are_defined_not_errors():
    """`key_len(n)` compares: n <= 0 keeps no key, n >= Sk every key (no range to check)."""
    m = module().Cross()
    x, context = torch.randn(4, 5, 32), torch.randn(4, 7, 24)
    n = torch.tensor([-3, 0, 7, 100])
    out = m(x, context, n=n)
    assert torch.equal(out[:2], torch.zeros_like(out[:2]))
    torch.testing.assert_close(out[3], m(x[3:], context[3:], n=torch.tensor([7]))[0])


# --- sizes= --------------------------------------------------------------------------------------
SIZES_CASES = {
    "unknown group": ({"querys": 4}, "sizes: unknown token group(s) ['querys'] (did you mean "
                                     "'queries'?); groups: ['anchors', 'queries', 'extra']"),
    "missing * group": (None, "sizes: give the sizes of the `*` groups ['queries', 'extra'] "
                              "(all but one)"),
    "negative": ({"queries": -1}, "sizes['queries'] must be a non-negative integer, got -1"),
    "not an int": ({"queries": 4.0}, "sizes['queries'] must be a non-negative integer, got 4.0"),
    "total": ({"queries": 4, "extra": 4}, "token groups: sizes {'anchors': 3, 'queries': 4, "
                                          "'extra': 4} add up to 11, but the sequence has 10"),
    "too large": ({"queries": 9}, "token groups: fixed sizes exceed the sequence length 10"),
    "fixed group": ({"anchors": 2, "queries": 4}, "sizes['anchors']: the group has fixed size "
                                                  "3, got 2"),
    "not a dict": ([4], "sizes: expected a dict of group sizes, got list"),
}


@pytest.mark.parametrize("label", SIZES_CASES)
@pytest.mark.parametrize("backend", backends("Groups"))
def test_sizes_problems(backend, label):
    sizes, message = SIZES_CASES[label]
    q = torch.randn(1, 2, 10, 8)
    raises(lambda: module().Groups(backend=backend)(q, q, q, sizes=sizes), message)


def test_sizes_that_fit_run():
    q = torch.randn(1, 2, 10, 8)
    m = module().Groups()
    torch.testing.assert_close(m(q, q, q, sizes={"queries": 4}),
                               m(q, q, q, sizes={"queries": 4, "extra": 3}))


# --- edges ---------------------------------------------------------------------------------------
EDGES = torch.tensor([[0, 1, 2], [1, 2, 3]])
OUTSIDE = "graph: edge index out of range, expected 0 <= row 0 < Sq = 6 and 0 <= row 1 < Sk = 6"
EDGE_CASES = {
    "negative index": ({"graph": torch.tensor([[-1], [0]])}, OUTSIDE),
    "query index >= Sq": ({"graph": torch.tensor([[6], [0]])}, OUTSIDE),
    "key index >= Sk": ({"graph": torch.tensor([[0], [6]])}, OUTSIDE),
    "type >= types": ({"graph_type": torch.tensor([0, 3, 1])},
                      "graph_type: edge types must be in [0, 3)"),
    "negative type": ({"graph_type": torch.tensor([0, -1, 1])},
                      "graph_type: edge types must be in [0, 3)"),
    "shape [E, 2]": ({"graph": EDGES.T.contiguous()},
                     "graph: expected shape [2, E] = [2, *], got [3, 2]"),
    "shape [E]": ({"graph": EDGES[0]}, "graph: expected shape [2, E] = [2, *], got [3]"),
    "type length": ({"graph_type": torch.tensor([0, 1])},
                    "graph_type: expected shape [E] = [3], got [2]"),
    "distance length": ({"graph_distance": torch.tensor([0, 1, 1, 1])},
                        "graph_distance: expected shape [E] = [3], got [4]"),
    "float index": ({"graph": EDGES.float()}, "graph: expected an int tensor"),
    "missing": ({"graph": None}, "graph: missing input, expected shape [2, E]"),
    "typo": ({"graph_types": torch.tensor([0, 1, 1])},
             "Graph: unexpected input(s) 'graph_types' (did you mean 'graph_type'?)"),
}


@pytest.mark.parametrize("label", EDGE_CASES)
@pytest.mark.parametrize("backend", backends("Graph"))
def test_edge_problems(backend, label):
    changes, message = EDGE_CASES[label]
    inputs = {"graph": EDGES, **changes}
    q = torch.randn(1, 2, 6, 8)
    with torch.no_grad():  # flex on CPU runs forward only
        raises(lambda: module().Graph(backend=backend)(q, q, q, **inputs), message)


def test_edge_distances_outside_the_range_are_clamped():
    q = torch.randn(1, 2, 6, 8)
    m = module().Graph()
    torch.testing.assert_close(m(q, q, q, graph=EDGES, graph_distance=torch.tensor([-5, 2, 99])),
                               m(q, q, q, graph=EDGES, graph_distance=torch.tensor([0, 2, 3])))


# --- layer mode ----------------------------------------------------------------------------------
LAYER_CASES = {  # label: (x, context, message)
    "x width": (lambda: torch.randn(2, 5, 16), lambda: torch.randn(2, 7, 24),
                "x: expected shape [B, S, dim] = [*, *, 32], got [2, 5, 16]"),
    "x rank": (lambda: torch.randn(5, 32), lambda: torch.randn(2, 7, 24),
               "x: expected shape [B, S, dim] = [*, *, 32], got [5, 32]"),
    "context width": (lambda: torch.randn(2, 5, 32), lambda: torch.randn(2, 7, 32),
                      "context: expected shape [B, Sk, context_dim] = [2, *, 24], got [2, 7, 32]"),
    "context batch": (lambda: torch.randn(2, 5, 32), lambda: torch.randn(1, 7, 24),
                      "context: expected shape [B, Sk, context_dim] = [2, *, 24], got [1, 7, 24]"),
    "missing context": (lambda: torch.randn(2, 5, 32), lambda: None,
                        "context: missing input, expected shape [B, Sk, context_dim]"),
    "x dtype": (lambda: torch.randn(2, 5, 32, dtype=torch.float64),
                lambda: torch.randn(2, 7, 24, dtype=torch.float64),
                "x: dtype torch.float64, but Cross's parameters are torch.float32"),
    "context dtype": (lambda: torch.randn(2, 5, 32), lambda: torch.randn(2, 7, 24).half(),
                      "context: dtype torch.float16, but Cross's parameters are torch.float32"),
    "context device": (lambda: torch.randn(2, 5, 32), lambda: torch.randn(2, 7, 24, device="meta"),
                       "context: expected a tensor on cpu (the device of the attention's inputs)"),
    "x device": (lambda: torch.randn(2, 5, 32, device="meta"),
                 lambda: torch.randn(2, 7, 24, device="meta"),
                 "x: on meta, but Cross's parameters are on cpu"),
    "int x": (lambda: torch.ones(2, 5, 32, dtype=torch.long), lambda: torch.randn(2, 7, 24),
              "x: expected a float tensor, got dtype torch.int64"),
}


@pytest.mark.parametrize("label", LAYER_CASES)
@pytest.mark.parametrize("backend", backends("Cross"))
def test_layer_problems(backend, label):
    x, context, message = LAYER_CASES[label]
    m = module().Cross(backend=backend)
    raises(lambda: m(x(), context(), n=torch.tensor([3, 7])), message)


def test_self_attention_layer_checks_context_too():
    m = module().SelfLayer()
    x = torch.randn(2, 5, 32)
    raises(lambda: m(x, torch.randn(2, 4, 32, dtype=torch.float64)),
           "context: dtype torch.float64, but SelfLayer's parameters are torch.float32")
    raises(lambda: m(x, cotext=x), "SelfLayer: unexpected input(s) 'cotext' (did you mean "
                                   "'context'?); this attention takes x, context, sizes")


def test_autocast_runs_a_float32_layer_on_bfloat16_inputs():
    m = module().Cross()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(2, 5, 32, dtype=torch.bfloat16), torch.randn(2, 7, 24),
                n=torch.tensor([3, 7]))
    assert out.shape == (2, 5, 32) and torch.isfinite(out.float()).all()


# --- a random sweep: any broken call is a ValueError naming what is wrong ----------------------
def broken_calls(rng: random.Random, count: int):
    """Valid calls of K with one random thing broken: (description, args, inputs)."""
    for _ in range(count):
        B, S = rng.randint(1, 3), rng.randint(1, 9)
        args, inputs = kernel_call(B=B, S=S)
        which = rng.choice(["q", "k", "v", "doc", "valid"])
        how = rng.choice(["shape", "dtype", "rank", "device"])
        value = args["qkv".index(which)] if which in "qkv" else inputs[which]
        if how == "shape":
            axis = rng.randrange(value.dim())
            value = value.narrow(axis, 0, value.shape[axis] - 1) if value.shape[axis] > 1 \
                else torch.cat([value, value], dim=axis)
        elif how == "dtype":
            value = value.float() if value.dtype != torch.float32 else value.long()
        elif how == "rank":
            value = value.unsqueeze(0)
        else:
            value = value.to("meta")
        if which in "qkv":
            args[("qkv".index(which))] = value
        else:
            inputs[which] = value
        yield f"{which} {how} (B={B}, S={S})", which, args, inputs


@pytest.mark.parametrize("backend", backends("K"))
def test_random_broken_calls_are_value_errors_naming_the_input(backend):
    rng = random.Random(SEED)
    m = module().K(backend=backend)
    for what, which, args, inputs in broken_calls(rng, 40):
        with pytest.raises(ValueError) as info:
            m(*args, **inputs)
        # doc and valid are checked against q's sizes: the message names them; a broken q,
        # k or v may show as a mismatch with another of the three, which the message names
        names = (which,) if which in ("doc", "valid") else ("q", "k", "v")
        message = str(info.value)
        assert any(re.search(rf"\b{n}\b", message) for n in names), \
            f"seed {SEED}, {what}: {message}"
