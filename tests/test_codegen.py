"""Code generation (eager backend): every shipped spec compiles to a module that imports, runs,
trains and checks its inputs; the source is deterministic, torch-free to produce, and built
only from the spec's checked names, repr() literals and the generator's own vocabulary."""

from __future__ import annotations

import ast
import functools
import io
import math
import re
import subprocess
import sys
import tokenize
import types
from pathlib import Path

import pytest
import torch
from runtimes import identifiers as tree_identifiers
from runtimes import runtime_identifiers

import attnspec
from attnspec.codegen.emit import GENERATED_NAMES, generate
from attnspec.codegen.layout import reflow
from attnspec.errors import UnsupportedBackendError
from attnspec.ir import nodes as ir
from attnspec.ir.build import build_text
from attnspec.runtime.source import top_level_names
from attnspec.verify import Case
from attnspec.verify import _cache_values as verify_cache_values

ROOT = Path(__file__).resolve().parent.parent
# Names made from checked spec names: temporaries, flex functions, captured params and edges.
PER_SPEC = (r"_t\d+|_(flex|mask_mod|block_lists|decode_flex|decode_mask)_[A-Za-z]\w*"
            r"|_[pes]\d*_\w+|a\d+")
# Standalone modules inline parts of the runtime verbatim: its own identifiers are known.
RUNTIME_NAMES = runtime_identifiers()
SPECS = sorted((ROOT / "specs").glob("*.attn"))
SPEC_IDS = [p.stem for p in SPECS]
F64 = torch.float64

# Builtins and operators the shipped specs do not reach.
EXOTIC = """
let half = head_dim // 2
attention Exotic {
    heads = 4
    kv_heads = 2
    head_dim = 16
    value_dim = 8
    sinks = true
    qk_norm = rms
    input w: float[batch, seq]
    input n: int[]
    input tab: float[heads, half]
    param pb: float[heads, 3] = uniform(-0.5, 0.5)
    param sl: float[heads] = alibi_slopes
    mask !(q < k) | k == 0 | where(q > 3, k % 3 == 1, false)
    mask max(q, k, 2) - min(q, 5) >= -100 & abs(q - k) <= clamp(q_len // 2, 1, 9)
    bias where(k > q // 2, 0.25, -1.5) * sl[h]
    bias tab[h, clamp(k - q + 4, 0, half - 1)] + floor(sqrt(q + 1.0)) - ceil(log2(k + 1.0))
    bias exp2(-abs(q - k) / 4) + sigmoid(w[b, k]) + exp(-0.5) * log(2.0) / sqrt(head_dim)
    bias t5_bucket(q - k, 16, 64, false) * 0.01 + pb[h, 2] * n + alibi_slope(1) * 0.0
    score = where(score > 2.0, score, score * 0.5) + tanh(score) / (1 + heads)
    score = floor(score * 4) / 4
    position rope(base = 500.0, dims = 8, interleaved = true)
}
attention Groups {
    heads = 2
    head_dim = 8
    tokens {
        a: 3
        rest: *
        c: 4
    }
    pattern a, c -> a, rest
    pattern rest -> c
    mask q < rest.end | k >= c.start & k < c.start + c.size | (q in a)
    bias where(k in rest, 1.0, 0.0) * a.size
}
attention Graph2 {
    heads = 2
    head_dim = 8
    input g: edges(types = 3, max_distance = 4, self_loops = true)
    input fr: float[batch, seq, 2]
    mask g.edge | q == k + 1
    bias g.distance * 0.5 - g.type
    score = 1.0
    position rope(freqs = fr, dims = 4)
}
attention LayerAbs {
    dim = 24
    heads = 3
    value_dim = 4
    qkv_bias = true
    out_bias = true
    position learned(max_len = 40)
    input pos: float[batch, seq]
    position rope(positions = pos)
    score = q - k
    mask causal
}
attention LayerSin {
    dim = 24
    heads = 3
    context_dim = 10
    position sinusoidal
    input lens: int[batch]
    mask k < lens[b]
    bias -0.1 * abs(q - k)
}
"""


# --- helpers --------------------------------------------------------------------------------------
@functools.cache
def compiled(path_or_text: str, name: str = "spec.attn"):
    """(IR, generated source, executed module) for a spec file path or spec text."""
    text = Path(path_or_text).read_text() if path_or_text.endswith(".attn") else path_or_text
    source_name = str(Path(path_or_text).relative_to(ROOT)) if path_or_text.endswith(
        ".attn") else name
    module_ir = build_text(text, source_name)
    src = generate(module_ir)
    return module_ir, src, load(src, source_name)


def load(src: str, name: str) -> types.ModuleType:
    mod = types.ModuleType("attnspec_generated")
    exec(compile(src, name, "exec"), mod.__dict__)
    return mod


def seq_len(attn: ir.AttentionIR, default: int = 12) -> tuple[int, dict | None]:
    """A sequence length that fits the spec (token groups need their exact total)."""
    if not attn.groups:
        return default, None
    fixed = sum(g.size for g in attn.groups if g.size is not None)
    stars = [g.name for g in attn.groups if g.size is None]
    return fixed + 3 * len(stars), {name: 3 for name in stars} or None


def call_inputs(attn: ir.AttentionIR, inst, B: int, S: int, gen: torch.Generator) -> dict:
    """Random keyword inputs of the right shapes and dtypes."""
    kw = {}
    for decl in attn.inputs:
        if decl.dtype == "edges":
            n_edges = 3 * S
            kw[decl.name] = torch.randint(0, S, (2, n_edges), generator=gen)
            kw[f"{decl.name}_type"] = torch.randint(0, decl.edges.types, (n_edges,), generator=gen)
            kw[f"{decl.name}_distance"] = torch.randint(0, 2 * decl.edges.max_distance,
                                                        (n_edges,), generator=gen)
            continue
        sizes = {"batch": B, "seq": S, "q_seq": S, "kv_seq": S, "heads": inst.heads,
                 "kv_heads": inst.kv_heads}
        shape = [sizes.get(d.kind) or int(eval_size(d, inst)) for d in decl.dims]
        if decl.dtype == "bool":
            kw[decl.name] = torch.rand(shape, generator=gen) > 0.3
        elif decl.dtype == "int":
            kw[decl.name] = torch.randint(0, max(S, 1), shape, generator=gen)
        else:
            kw[decl.name] = torch.randn(shape, generator=gen, dtype=F64)
    if attn.kv_cache is not None:  # decoding: S new tokens after a few cached ones per row
        lens = tuple(range(3, 3 + B))
        case = Case("decode", B, S, max(lens) + S, cache_lens=lens)
        kw.update(verify_cache_values(attn.kv_cache, {"kv_heads": inst.kv_heads,
                                                      "head_dim": inst.head_dim,
                                                      "value_dim": inst.value_dim},
                                      case, F64, "cpu", gen))
    return kw


def eval_size(dim: ir.Dim, inst) -> int:
    from attnspec.ir.consts import eval_const

    return eval_const(dim.size, {n: getattr(inst, n) for n in inst.SETTINGS})


def tensors(attn: ir.AttentionIR, inst, B: int, S: int, gen: torch.Generator) -> tuple:
    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_()

    if attn.mode == "layer":
        return (rand(B, S, inst.dim),)
    return (rand(B, inst.heads, S, inst.head_dim), rand(B, inst.kv_heads, S, inst.head_dim),
            rand(B, inst.kv_heads, S, inst.value_dim))


def run_attention(mod, attn: ir.AttentionIR, B: int = 2, seed: int = 0, **overrides):
    gen = torch.Generator().manual_seed(seed)
    inst = getattr(mod, attn.name)(**overrides).double()
    S, sizes = seq_len(attn)
    args = tensors(attn, inst, B, S, gen)
    kw = call_inputs(attn, inst, B, S, gen)
    if attn.cross:
        kw["context"] = torch.randn(B, 5, inst.context_dim, generator=gen, dtype=F64)
    out = inst(*args, **kw, sizes=sizes)
    return inst, args, kw, out


def attentions(paths=SPECS):
    for path in paths:
        module_ir, _, mod = compiled(str(path))
        for attn in module_ir.attentions:
            yield pytest.param(attn, mod, id=f"{path.stem}.{attn.name}")


def identifiers(src: str) -> set[str]:
    """Every identifier the generated source writes (`runtimes.identifiers` of its tree)."""
    return tree_identifiers(ast.parse(src))


def spec_names(module_ir: ir.ModuleIR) -> set[str]:
    names = set()
    for a in module_ir.attentions:
        names |= {a.name} | {s.name for s in a.numeric} | {p.name for p in a.params}
        for i in a.inputs:
            names.add(i.name)
            if i.dtype == "edges":
                names |= {f"{i.name}_type", f"{i.name}_distance"}
    return names


# --- every shipped spec ---------------------------------------------------------------------------
@pytest.mark.parametrize("attn, mod", list(attentions()))
def test_forward_backward_float64(attn, mod):
    inst, args, kw, out = run_attention(mod, attn)
    B = args[0].shape[0]
    if attn.mode == "layer":
        assert out.shape == args[0].shape
    else:
        assert out.shape == (B, inst.heads, args[0].shape[2], inst.value_dim)
    assert out.dtype == F64
    assert torch.isfinite(out).all()
    weights = torch.randn(out.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    assert args[0].grad is not None and torch.isfinite(args[0].grad).all()
    for name, p in inst.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_source_is_deterministic_and_parses(path):
    module_ir, src, _ = compiled(str(path))
    again = generate(build_text(path.read_text(), str(path.relative_to(ROOT))))
    assert again == src
    tree = ast.parse(src)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)
               and n.name not in top_level_names()]  # runtime classes (CPPlan) aside
    assert classes == [a.name for a in module_ir.attentions]
    assert src.startswith(f"# Generated by attnspec from {path.relative_to(ROOT)} — do not edit.")
    assert max(len(line) for line in src.splitlines()) <= 100


@pytest.mark.parametrize("path", SPECS, ids=SPEC_IDS)
def test_source_uses_only_known_names(path):
    module_ir, src, mod = compiled(str(path))
    allowed = GENERATED_NAMES | spec_names(module_ir) | RUNTIME_NAMES
    unknown = {n for n in identifiers(src) - allowed if not re.fullmatch(PER_SPEC, n)}
    assert not unknown
    imports = {a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import)
               for a in n.names}
    assert imports <= {"torch", "math", "collections", "importlib.util", "warnings", "difflib",
                       "functools", "os",
                       "torch.distributed",  # context parallelism, inside its functions
                       "triton"}  # the fused edge kernels, inside `_edge_kernels`
    # the one optional import: attnspec's own error classes, so that users can catch one type
    from_imports = [(n.module, [a.name for a in n.names]) for n in ast.walk(ast.parse(src))
                    if isinstance(n, ast.ImportFrom)]
    allowed_from = {("attnspec.runtime.errors", ("UnsupportedBackendError",)),
                    ("attnspec.runtime.errors", ("UnsupportedBackendError",
                                                 "UnsupportedInputError")),
                    # annotations of the inlined runtime
                    ("collections.abc", ("Callable",)),
                    ("collections.abc", ("Callable", "Iterable")),
                    # flash-attn, imported when a flash call first runs
                    ("flash_attn.cute", ("flash_attn_varlen_func",)),
                    ("flash_attn", ("flash_attn_varlen_func",)),
                    ("flash_attn.cute", ("flash_attn_func",)),
                    ("flash_attn", ("flash_attn_func",)),
                    ("torch.nn.attention.flex_attention", ("create_block_mask",)),
                    ("torch.nn.attention.flex_attention", ("flex_attention",)),
                    ("torch.nn.attention.flex_attention", ("AuxRequest",)),
                    ("torch.nn.attention.flex_attention", ("BlockMask",)),
                    ("torch.nn.attention.flex_attention", ("noop_mask",)),
                    # context parallelism's collectives, imported when a cp call first runs
                    ("torch.distributed", ("_functional_collectives",))}
    assert {(m, tuple(n)) for m, n in from_imports} <= allowed_from
    assert any(m == "attnspec.runtime.errors" and n[0] == "UnsupportedBackendError"
               for m, n in from_imports)
    assert mod.SPEC_SOURCE == path.read_text()


def test_exotic_builtins_run_and_use_known_names():
    module_ir, src, mod = compiled(EXOTIC, "exotic.attn")
    allowed = GENERATED_NAMES | spec_names(module_ir) | RUNTIME_NAMES
    assert {n for n in identifiers(src) - allowed if not re.fullmatch(PER_SPEC, n)} == set()
    for attn in module_ir.attentions:
        gen = torch.Generator().manual_seed(0)
        inst = getattr(mod, attn.name)().double()
        S, sizes = (13, {"rest": 6}) if attn.groups else (13, None)
        args = tensors(attn, inst, 2, S, gen)
        kw = call_inputs(attn, inst, 2, S, gen)
        if attn.cross:
            kw["context"] = torch.randn(2, 5, inst.context_dim, dtype=F64)
        out = inst(*args, **kw, sizes=sizes)
        assert torch.isfinite(out).all(), attn.name
        out.sum().backward()


def test_exotic_matches_interpreter():
    eager = pytest.importorskip("attnspec.eager")
    module_ir, _, mod = compiled(EXOTIC, "exotic.attn")
    for attn in module_ir.attentions:
        gen = torch.Generator().manual_seed(3)
        inst = getattr(mod, attn.name)().double()
        with torch.no_grad():
            for p in inst.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.5)
        S, sizes = (13, {"rest": 6}) if attn.groups else (13, None)
        args = tuple(t.detach() for t in tensors(attn, inst, 2, S, gen))
        kw = call_inputs(attn, inst, 2, S, gen)
        ref_args = args
        if attn.cross:
            kw["context"] = torch.randn(2, 5, inst.context_dim, generator=gen, dtype=F64)
            ref_args = args + (kw["context"],)
        out = inst(*args, **kw, sizes=sizes)
        ref_kw = {k: v for k, v in kw.items() if k != "context"}
        ref = eager.run(attn, inst.state_dict(), *ref_args, inputs=ref_kw, sizes=sizes)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, msg=attn.name)


def test_compiling_imports_no_torch():
    code = ("import sys; from attnspec.ir.build import build_text; "
            "from attnspec.codegen.emit import generate; "
            f"generate(build_text(open({str(SPECS[0])!r}).read())); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- settings and overrides -----------------------------------------------------------------------
def test_overrides_change_shapes():
    _, _, mod = compiled(str(ROOT / "specs/rope.attn"))
    layer = mod.RopeCausal(dim=256)
    assert (layer.dim, layer.head_dim) == (256, 32)
    assert layer.q_proj.weight.shape == (256, 256)
    out = layer(torch.randn(2, 5, 256))
    assert out.shape == (2, 5, 256)
    _, _, mod = compiled(str(ROOT / "specs/causal_lm.attn"))
    kernel = mod.CausalLM(head_dim=32, heads=4)
    q = torch.randn(1, 4, 6, 32)
    assert kernel(q, q, q).shape == (1, 4, 6, 32)
    assert kernel.scale == pytest.approx(1 / math.sqrt(32))


@pytest.mark.parametrize("overrides, message", [
    ({"dimm": 3}, "unknown setting(s) dimm; valid: heads"),
    ({"heads": 0}, "heads must be a positive integer, got 0"),
    ({"heads": 2.5}, "heads must be a positive integer, got 2.5"),
    ({"heads": True}, "heads must be a positive integer, got True"),
    ({"kv_heads": 5}, "heads (12) must be a multiple of kv_heads (5)"),
    ({"dropout": 1.5}, "in [0.0, 1.0), got 1.5"),
    ({"dropout": 1.0}, "in [0.0, 1.0), got 1.0"),
    ({"scale": "big"}, "scale must be a finite number"),
])
def test_bad_overrides_raise(overrides, message):
    _, _, mod = compiled(str(ROOT / "specs/causal_lm.attn"))
    with pytest.raises(ValueError) as err:
        mod.CausalLM(**overrides)
    assert message in str(err.value)


def test_integral_float_override_is_an_int():
    _, _, mod = compiled(str(ROOT / "specs/causal_lm.attn"))
    assert type(mod.CausalLM(heads=4.0).heads) is int


# --- input checks ---------------------------------------------------------------------------------
def test_wrong_input_shape_names_the_input():
    _, _, mod = compiled(str(ROOT / "specs/packed_documents.attn"))
    m = mod.PackedDocuments()
    q = torch.randn(2, 8, 100, 64)
    with pytest.raises(ValueError, match=re.escape(
            "doc: expected shape [B, S] = [2, 100], got [2, 99]")):
        m(q, q, q, doc=torch.zeros(2, 99, dtype=torch.long))
    with pytest.raises(ValueError, match="doc: missing input"):
        m(q, q, q)
    with pytest.raises(ValueError, match="doc: expected an int tensor"):
        m(q, q, q, doc=torch.zeros(2, 100))
    with pytest.raises(ValueError, match=re.escape("q: expected shape [B, heads, Sq, head_dim]")):
        m(q[:, :4], q, q, doc=torch.zeros(2, 100, dtype=torch.long))
    with pytest.raises(ValueError, match="sizes: this attention has no token groups"):
        m(q, q, q, doc=torch.zeros(2, 100, dtype=torch.long), sizes={"a": 1})


def test_bool_input_dtype_and_layer_shapes():
    _, _, mod = compiled(str(ROOT / "specs/key_padding.attn"))
    q = torch.randn(1, 8, 4, 64)
    with pytest.raises(ValueError, match="valid: expected a bool tensor"):
        mod.KeyPaddingEager()(q, q, q, valid=torch.ones(1, 4, dtype=torch.long))
    _, _, mod = compiled(str(ROOT / "specs/cross_attention.attn"))
    with pytest.raises(ValueError, match="context: missing input"):
        mod.CrossAttention()(torch.randn(1, 3, 512))
    with pytest.raises(ValueError, match=re.escape("x: expected shape [B, S, dim] = [*, *, 512]")):
        mod.CrossAttention()(torch.randn(1, 3, 511), torch.randn(1, 4, 768))
    assert mod.CrossAttention()(torch.randn(1, 3, 512), torch.randn(1, 4, 768)).shape == (1, 3, 512)


def test_edge_inputs_are_checked():
    _, _, mod = compiled(str(ROOT / "specs/graph.attn"))
    m = mod.GraphAttention()
    x = torch.randn(1, 6, 256)
    edges = torch.tensor([[0, 1, 2], [1, 2, 3]])
    ok = {"graph_type": torch.tensor([0, 1, 1]), "graph_distance": torch.tensor([1, 2, 99])}
    assert m(x, graph=edges, **ok).shape == (1, 6, 256)
    with pytest.raises(ValueError, match="graph: edge index out of range"):
        m(x, graph=torch.tensor([[0], [6]]), graph_type=torch.tensor([0]),
          graph_distance=torch.tensor([0]))
    with pytest.raises(ValueError, match="graph_type: edge types must be in"):
        m(x, graph=edges, graph_type=torch.tensor([0, 2, 1]), graph_distance=ok["graph_distance"])
    wrong_length = re.escape("graph_type: expected shape [E] = [3]")
    with pytest.raises(ValueError, match=wrong_length):
        m(x, graph=edges, graph_type=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=re.escape("graph: expected shape [2, E]")):
        m(x, graph=edges[0], **ok)


def test_token_group_lengths_are_checked():
    _, _, mod = compiled(str(ROOT / "specs/anchor.attn"))
    m = mod.AnchorAttention()
    assert m(torch.randn(1, 290, 192)).shape == (1, 290, 192)
    with pytest.raises(ValueError, match="add up to 290, but the sequence has 289 tokens"):
        m(torch.randn(1, 289, 192))


# --- semantics, against plain torch ---------------------------------------------------------------
def test_causal_matches_sdpa():
    _, _, mod = compiled(str(ROOT / "specs/causal_lm.attn"))
    q, k, v = (torch.randn(2, 12, 9, 64, dtype=F64) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(mod.CausalLM()(q, k, v), ref)


def test_fully_masked_rows_give_zero_and_half_precision_keeps_dtype():
    _, _, mod = compiled(str(ROOT / "specs/key_padding.attn"))
    q = torch.randn(2, 8, 5, 64, dtype=torch.bfloat16)
    valid = torch.tensor([[True] * 5, [False] * 5])
    out = mod.KeyPaddingEager()(q, q, q, valid=valid)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all() and (out[1] == 0).all() and (out[0] != 0).any()


def test_sinks_join_the_denominator():
    _, _, mod = compiled(str(ROOT / "specs/attention_sinks.attn"))
    m = mod.SlidingWindowSinks().double()
    with torch.no_grad():
        m.sink.copy_(torch.linspace(-1, 1, 16, dtype=F64))
    q = torch.randn(1, 16, 3, 64, dtype=F64)
    k, v = torch.randn(1, 2, 3, 64, dtype=F64), torch.randn(1, 2, 3, 64, dtype=F64)
    kk, vv = k.repeat_interleave(8, 1), v.repeat_interleave(8, 1)
    s = (q @ kk.transpose(-1, -2)) / 8.0
    s = s.masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), -math.inf)
    e = torch.exp(s)
    ref = (e / (e.sum(-1, keepdim=True) + torch.exp(m.sink).view(1, -1, 1, 1))) @ vv
    torch.testing.assert_close(m(q, k, v), ref)


def test_alibi_slopes_follow_the_paper():
    _, _, mod = compiled(str(ROOT / "specs/alibi.attn"))
    assert mod._alibi_slopes(6) == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert mod._alibi_slopes(8) == [2.0 ** -(i + 1) for i in range(8)]


def hf_t5_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128):
    """Hugging Face T5's `_relative_position_bucket`, with the log in float64."""
    buckets = 0
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).to(torch.long) * num_buckets
        rel = torch.abs(rel)
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (torch.log(rel.double() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rel, large)


def test_t5_bucket_matches_hugging_face():
    _, _, mod = compiled(str(ROOT / "specs/t5_relative.attn"))
    rel = torch.arange(-300, 300)
    for bidirectional in (True, False):
        assert torch.equal(mod._t5_bucket(rel, 32, 128, bidirectional),
                           hf_t5_bucket(rel, bidirectional))


def test_dropout_only_in_training():
    _, _, mod = compiled(str(ROOT / "specs/causal_lm.attn"))
    m = mod.CausalLM(dropout=0.5)
    q = torch.randn(1, 12, 6, 64)
    m.eval()
    torch.testing.assert_close(m(q, q, q), m(q, q, q))
    m.train()
    torch.manual_seed(0)
    assert not torch.allclose(m(q, q, q), m.eval()(q, q, q))


def test_mup_init_and_param_groups():
    _, _, mod = compiled(str(ROOT / "specs/mup_layer.attn"))
    m = mod.MupCausalLayer(dim=512)
    assert m.scale == pytest.approx(1.0 * math.sqrt(16) / 32)
    assert (m.q_proj.weight == 0).all() and (m.q_proj.bias == 0).all()
    assert m.k_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2), rel=0.05)
    groups = m.mup_param_groups(lr=1e-3, weight_decay=0.1)
    assert groups[0]["lr"] == pytest.approx(1e-3 / 2)
    assert groups[0]["weight_decay"] == pytest.approx(0.2)
    assert len(groups[0]["params"]) == 4 and groups[1]["lr"] == 1e-3
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    torch.optim.AdamW(groups)


# --- backends and safety --------------------------------------------------------------------------
def test_backends():
    module_ir = build_text((ROOT / "specs/causal_lm.attn").read_text())
    assert generate(module_ir, "auto") == generate(module_ir)
    assert "def _attend_flash" in generate(module_ir, "flash")
    with pytest.raises(UnsupportedBackendError, match="flash-attn expresses windows"):
        generate(build_text((ROOT / "specs/prefix_lm.attn").read_text()), "flash")
    _, _, mod = compiled(str(ROOT / "specs/causal_lm.attn"))
    assert mod.CausalLM.BACKENDS == ("eager", "sdpa", "flex", "flash")
    assert mod.CausalLM().backend == "auto"
    assert mod.CausalLM.AUTO_CPU == "sdpa" and mod.CausalLM.AUTO_CUDA == ("flash", "sdpa")
    assert mod.CausalLM(backend="eager").backend == "eager"
    assert mod.CausalLM(backend="flash").backend == "flash"
    graph = attnspec.load(ROOT / "specs/graph.attn").GraphAttention
    with pytest.raises(attnspec.UnsupportedBackendError, match="backend 'flash' cannot run"):
        graph(backend="flash")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        mod.CausalLM(backend="fast")


def test_unsupported_backend_lists_every_reason():
    text = ("attention S {\n heads = 2\n head_dim = 4\n sinks = true\n"
            " score = softcap(score, 5.0)\n}\n")
    with pytest.raises(UnsupportedBackendError) as err:
        generate(build_text(text, "s.attn"), "sdpa")
    message = str(err.value)
    assert "s.attn:5:2: SDPA cannot transform scores" in message
    assert "SDPA has no sink logit" in message
    mod = attnspec.load(text)
    assert mod.S.BACKENDS == ("eager", "flex")
    with pytest.raises(attnspec.UnsupportedBackendError, match="no sink logit"):
        mod.S(backend="sdpa")


NASTY = ("attention A {\n  heads = 2\n  head_dim = 4 # \r import os; os.system('x') "
         "\u2028 \"\"\" '''"
         " \\ \x0b \x0c \x1c \x85\n  mask causal # \rprint(1)\n}\n")


def test_spec_text_only_inside_string_literals():
    src = generate(build_text(NASTY, "evil\nimport os.attn"))
    tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    names = {t.string for t in tokens if t.type == tokenize.NAME}
    assert not names & {"os", "system", "print"}
    comments = [t.string for t in tokens if t.type == tokenize.COMMENT]
    assert comments[0] == "# Generated by attnspec from 'evil\\nimport os.attn' — do not edit."
    assert all(c.isprintable() for c in comments)
    assert load(src, "nasty").SPEC_SOURCE == NASTY


@pytest.mark.parametrize("bad", ["__class__", "class", "a-b", "torch", "ValueError", "_t1"])
def test_unsafe_attention_names_are_refused(bad):
    module_ir = build_text("attention A {\n heads = 2\n head_dim = 4\n}")
    attn = module_ir.attentions[0].model_copy(update={"name": bad})
    with pytest.raises(ValueError, match="cannot generate code"):
        generate(module_ir.model_copy(update={"attentions": (attn,)}))


def test_input_names_that_shadow_generated_names_are_refused():
    module_ir = build_text("attention A {\n heads = 2\n head_dim = 4\n input doc: int[batch, seq]"
                           "\n mask same(doc)\n}")
    attn = module_ir.attentions[0]
    renamed = attn.model_copy(update={"inputs": (attn.inputs[0].model_copy(
        update={"name": "probs"}),)})
    with pytest.raises(ValueError, match="input `probs` would shadow"):
        generate(module_ir.model_copy(update={"attentions": (renamed,)}))


def test_reflow_keeps_the_ast():
    line = "value = function(" + ", ".join(f"argument_{i} + other_{i}" for i in range(9)) + ")"
    out = reflow(line + "\n")
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(line))
    assert max(len(x) for x in out.splitlines()) <= 100


def test_override_that_breaks_an_index_proof_is_a_value_error():
    """The checker proved `t[h, k % head_dim]` in range for head_dim = 4; an override of
    head_dim = 8 reads past the table, which the module reports instead of reading garbage."""
    text = ("attention A {\n heads = 2\n head_dim = 4\n param t: float[heads, 4] = zeros\n"
            " bias t[h, k % head_dim]\n}\n")
    mod = attnspec.load(text)
    q = torch.randn(1, 2, 9, 8)
    with pytest.raises(ValueError, match=r"t: index range \[0, 7\] is outside dimension 1"):
        mod.A(head_dim=8)(q, q, q)
    assert mod.A()(q[..., :4], q[..., :4], q[..., :4]).shape == (1, 2, 9, 4)
