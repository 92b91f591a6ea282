"""The verification harness: run a generated module against the eager interpreter (the reference,
in float64) on fresh random inputs, outputs and gradients, with flash-attn's tolerance rule:

    |out - ref|_max <= 2 * |eager_t - ref|_max + atol(t) * scale

where `eager_t` is the interpreter run in the backend's dtype `t` and `scale` is the largest
reference magnitude of the case (at least 1), which makes atol relative. `attnspec verify` and the
test-suite use this module. A backend that returns the log-sum-exp (`LSE_BACKENDS`) is also
called once more with `return_lse=True` (forward only): that call's output and lse are checked
by the same rule, and its lse must be -inf exactly where the reference's is.

Example:
    >>> import attnspec
    >>> spec = "attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}"
    >>> results = verify_spec(attnspec.build(spec), attnspec.load(spec))
    >>> sorted({r.backend for r in results}), all(r.ok for r in results)
    (['eager', 'flex', 'sdpa'], True)
"""

from __future__ import annotations

import json
import math
import random
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from attnspec import eager
from attnspec.backends import has_backward, runs_on  # device facts: the registry
from attnspec.console import Progress
from attnspec.errors import UnsupportedInputError
from attnspec.ir import nodes as ir
from attnspec.ir.consts import eval_const, resolve_settings

ATOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    q_len: int
    kv_len: int
    # Constructor overrides of this case (e.g. `(("head_dim", 16),)`): the module and the
    # interpreter both run with them, so one spec is checked at other head dims or widths.
    overrides: tuple[tuple[str, float], ...] = ()
    # The ids input a packed call replaces: the module gets `[total, ...]` tensors and
    # `cu_seqlens` of those ids (batch 1), the interpreter the ids form.
    packed: str | None = None
    # Decoding (a kv_cache): tokens each row holds before the call (q_len new ones follow);
    # kv_len is then the longest row's key count.
    cache_lens: tuple[int, ...] = ()
    # Edges inputs as one edge list per batch row ([B, 2, E], padded with -1) instead of one
    # list shared by the batch.
    edge_rows: bool = False
    # Whether the module is also called with `return_lse=True` (one more forward): `cases_for`
    # asks it of the first case only, which checks each backend's lse path without doubling
    # the cost of every check (flex on the CPU runs uncompiled).
    lse_check: bool = True


@dataclass
class Result:
    spec: str
    attention: str
    backend: str
    case: str
    ok: bool
    worst_ratio: float  # max over tensors of err / (2 * eager_err + atol); <= 1 passes
    worst_tensor: str
    detail: str = ""
    refused: bool = False  # the backend refused these inputs (UnsupportedInputError): not run

    @property
    def status(self) -> str:
        return "refused" if self.refused else "pass" if self.ok else "FAIL"


# --- cases and inputs --------------------------------------------------------------------------
def cases_for(attn: ir.AttentionIR, device: str = "cpu") -> list[Case]:
    """Lengths that are not multiples of 128; q_len != kv_len where the spec allows it. On CUDA
    also the lengths where kernels broke (77: flash-attn 4's dense dq at head_dim 16; 300:
    several tiles) and more queries than keys: a check at friendly shapes proves nothing. The
    first case also checks the log-sum-exp (`Case.lse_check`)."""
    cases = _cases(attn, device)
    return cases[:1] + [replace(c, lse_check=False) for c in cases[1:]]


def _cases(attn: ir.AttentionIR, device: str) -> list[Case]:
    if attn.kv_cache is not None:
        return _decode_cases(device)
    fixed = _group_total(attn)
    if fixed is not None:
        return [Case(f"groups S={fixed}", 2, fixed, fixed)]
    cases = [Case("S=37", 2, 37, 37), Case("S=1", 1, 1, 1)]
    different = _allows_different_lengths(attn)
    if different:
        cases.append(Case("Sq=19,Sk=45", 2, 19, 45))
    packed = _packed_input(attn)
    if packed is not None:
        cases.append(Case("packed S=37", 1, 37, 37, packed=packed))
    if any(decl.edges is not None for decl in attn.inputs):
        cases.append(Case("edges per row S=23", 3, 23, 23, edge_rows=True))
    if str(device).startswith("cuda"):
        cases += [Case("S=77", 2, 77, 77), Case("S=300", 2, 300, 300)]
        cases += [Case("Sq=45,Sk=19", 2, 45, 19)] if different else []
    return cases


def _packed_input(attn: ir.AttentionIR) -> str | None:
    """The ids input of a spec that takes the packed form (one `same(ids)`, self-attention)."""
    from attnspec.lower.analysis import analyze

    segments = analyze(attn).segments
    return segments[0].input if len(segments) == 1 and not attn.cross else None


def _decode_cases(device: str) -> list[Case]:
    """One new token and a few, rows of ragged lengths (an empty cache among them); on CUDA
    longer rows across several pages and key tiles."""
    def case(name: str, q_len: int, lens: tuple[int, ...]) -> Case:
        return Case(name, len(lens), q_len, max(lens) + q_len, cache_lens=lens)

    cases = [case("decode Sq=1 len=0,5,40", 1, (0, 5, 40)),
             case("decode Sq=3 len=17,2", 3, (17, 2))]
    if str(device).startswith("cuda"):
        cases += [case("decode Sq=1 len=300,77,1", 1, (300, 77, 1)),
                  case("decode Sq=4 len=129,0", 4, (129, 0))]
    return cases


def _group_total(attn: ir.AttentionIR) -> int | None:
    if not attn.groups:
        return None
    return sum(g.size if g.size is not None else 7 for g in attn.groups)


def _allows_different_lengths(attn: ir.AttentionIR) -> bool:
    if attn.mode == "layer" and not attn.cross:
        return False
    if attn.rope is not None and (attn.rope.positions or attn.rope.freqs):
        return False
    return not any(d.kind == "seq" for i in attn.inputs for d in i.dims) and not attn.groups


def make_inputs(attn: ir.AttentionIR, case: Case, dtype: torch.dtype, device: str,
                gen: torch.Generator) -> tuple[tuple, dict, dict]:
    """(positional args, input kwargs, sizes) of fresh random values for one case."""
    values = resolve_settings(attn, dict(case.overrides))
    B, Sq, Sk = case.batch, case.q_len, case.kv_len

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)

    if attn.kv_cache is not None and attn.mode == "layer":
        args = (randn(B, Sq, values["dim"]),)
    elif attn.kv_cache is not None:
        args = (randn(B, values["heads"], Sq, values["head_dim"]),
                randn(B, values["kv_heads"], Sq, values["head_dim"]),
                randn(B, values["kv_heads"], Sq, values["value_dim"]))
    elif attn.mode == "kernel":
        args = (randn(B, values["heads"], Sq, values["head_dim"]),
                randn(B, values["kv_heads"], Sk, values["head_dim"]),
                randn(B, values["kv_heads"], Sk, values["value_dim"]))
    else:
        args = (randn(B, Sq, values["dim"]),)
        if attn.cross:
            args += (randn(B, Sk, values["context_dim"]),)
    inputs: dict = {}
    for decl in attn.inputs:
        inputs.update(_input_values(attn, decl, values, case, device, gen))
    if attn.kv_cache is not None:
        inputs.update(_cache_values(attn.kv_cache, values, case, dtype, device, gen))
    sizes = {g.name: 7 for g in attn.groups if g.size is None}
    return args, inputs, sizes


PAGE_SIZE = 16  # verify's pages: several per row, partly filled ones


def _cache_values(cache: ir.KVCache, values: dict, case: Case, dtype: torch.dtype,
                  device: str, gen: torch.Generator) -> dict:
    """A cache holding `case.cache_lens` random tokens per row (zeros after them); paged: the
    rows' pages shuffled over a pool with spare pages, table entries past a row's pages -1."""
    lens = torch.tensor(case.cache_lens)
    pages_per_row = -(-case.kv_len // PAGE_SIZE) + 1
    capacity = pages_per_row * PAGE_SIZE
    shape_k = (case.batch, capacity, values["kv_heads"], values["head_dim"])
    shape_v = shape_k[:3] + (values["value_dim"],)
    keep = (torch.arange(capacity).view(1, -1) < lens.view(-1, 1))[:, :, None, None]
    ck = torch.randn(shape_k, generator=gen, dtype=torch.float64) * keep
    cv = torch.randn(shape_v, generator=gen, dtype=torch.float64) * keep
    names = cache.argument_names()
    out = {names[2]: lens}
    if not cache.paged:
        out.update({names[0]: ck, names[1]: cv})
    else:
        count = case.batch * pages_per_row
        order = torch.randperm(count + 2, generator=gen)[:count]  # out of order, 2 spare
        pool_k = torch.zeros((count + 2, PAGE_SIZE) + shape_k[2:], dtype=torch.float64)
        pool_v = torch.zeros((count + 2, PAGE_SIZE) + shape_v[2:], dtype=torch.float64)
        pool_k[order] = ck.reshape((count, PAGE_SIZE) + shape_k[2:])
        pool_v[order] = cv.reshape((count, PAGE_SIZE) + shape_v[2:])
        table = order.view(case.batch, pages_per_row).clone()
        table[:, -1] = -1  # the spare last entry of every row: never read
        out.update({names[0]: pool_k, names[1]: pool_v, names[3]: table})
    return {name: t.to(device, dtype) if t.is_floating_point() else t.to(device)
            for name, t in out.items()}


def _input_values(attn, decl: ir.InputDecl, values: dict, case: Case, device: str,
                  gen: torch.Generator) -> dict:
    if decl.edges is not None:
        return _edges(decl, case, device, gen)
    shape = [_dim_size(d, values, case) for d in decl.dims]
    if decl.dtype == "float":
        # `shape`, not `*shape`: a 0-d input (`float[]`) has no dims, and randn() needs a size
        return {decl.name: torch.randn(shape, generator=gen, dtype=torch.float64).to(device)}
    if decl.dtype == "bool":
        valid = torch.rand(shape, generator=gen) < 0.7
        if valid.dim() >= 1:
            valid[0] = False  # a batch row with nothing to attend
        return {decl.name: valid.to(device)}
    return {decl.name: _int_values(attn, decl, shape, case, gen).to(device)}


def _int_values(attn, decl: ir.InputDecl, shape: list[int], case: Case,
                gen: torch.Generator) -> torch.Tensor:
    kinds = [d.kind for d in decl.dims]
    if kinds == ["batch"]:  # lengths, prefixes: include 0 (empty rows) and full length
        out = torch.randint(0, case.kv_len + 1, shape, generator=gen)
        out[0] = 0
        return out
    if kinds[:1] == ["batch"] and len(kinds) == 2 and kinds[1] in ("seq", "q_seq", "kv_seq"):
        if attn.rope is not None and attn.rope.positions == decl.name:
            return _document_positions(shape, gen)
        # segment ids: non-decreasing runs, like packed documents
        starts = (torch.rand(shape, generator=gen) < 0.15).long()
        return torch.cumsum(starts, dim=-1)
    return torch.randint(0, 4, shape, generator=gen)


def _document_positions(shape: list[int], gen: torch.Generator) -> torch.Tensor:
    starts = torch.rand(shape, generator=gen) < 0.15
    starts[..., 0] = True
    index = torch.arange(shape[-1]).expand(shape)
    last_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=-1).values
    return index - last_start


def _dim_size(d: ir.Dim, values: dict, case: Case) -> int:
    if d.kind == "const":
        return int(eval_const(d.size, values))
    return {"batch": case.batch, "seq": case.q_len, "q_seq": case.q_len,
            "kv_seq": case.kv_len, "heads": values["heads"],
            "kv_heads": values["kv_heads"]}[d.kind]


def _edges(decl: ir.InputDecl, case: Case, device: str, gen: torch.Generator) -> dict:
    """Random edges (duplicates among them), types, and distances up to twice the maximum (to
    exercise clamping): one list shared by the batch, or with `case.edge_rows` one per batch
    row, padded (`_pad_rows`)."""
    spec = decl.edges
    count = max(1, case.q_len * case.kv_len // 4)
    shape = (case.batch, count) if case.edge_rows else (count,)
    index = torch.stack([torch.randint(0, case.q_len, shape, generator=gen),
                         torch.randint(0, case.kv_len, shape, generator=gen)], dim=-2)
    if case.edge_rows:
        index = _pad_rows(index, gen)
    return {
        decl.name: index.to(device),
        f"{decl.name}_type": torch.randint(0, spec.types, shape, generator=gen).to(device),
        f"{decl.name}_distance": torch.randint(0, 2 * spec.max_distance, shape,
                                               generator=gen).to(device),
    }


def _pad_rows(index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Edge lists [B, 2, E] with a different number of edges per batch row (all of them in
    the first row, none in the last), the rest padding (-1 in both rows) at random places."""
    batch, count = index.shape[0], index.shape[2]
    for b in range(batch):
        kept = count * (batch - 1 - b) // max(batch - 1, 1)
        index[b, :, torch.randperm(count, generator=gen)[kept:]] = -1
    return index


# --- comparison --------------------------------------------------------------------------------
def check_case(attn: ir.AttentionIR, module_cls, backend: str, case: Case, dtype: torch.dtype,
               device: str, seed: int, spec_name: str = "") -> Result:
    """Outputs and gradients of one module instance against the interpreter."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    overrides = dict(case.overrides)
    module = module_cls(backend=backend, **overrides).to(device=device, dtype=dtype).eval()
    _randomise_params(module, gen)
    args, inputs, sizes = make_inputs(attn, case, dtype, device, gen)
    grad_out = torch.randn(_output_shape(attn, case), generator=gen, dtype=torch.float64)
    if not has_backward(backend, device) or attn.kv_cache is not None:
        # Forward only: flex on CPU; decoding (inference: flash decodes without a backward).
        grad_out = None
    return check_inputs(attn, module, args, inputs, sizes, dtype, grad_out,
                        Result(spec_name, attn.name, backend, case.name, True, 0.0, ""),
                        overrides, case.packed, case.lse_check)


def check_inputs(attn: ir.AttentionIR, module, args: tuple, inputs: dict, sizes: dict | None,
                 dtype: torch.dtype, grad_out: torch.Tensor | None = None,
                 result: Result | None = None,
                 overrides: dict | None = None, packed: str | None = None,
                 lse_check: bool = True) -> Result:
    """One module instance (on its device, in `dtype`) on the given inputs against the
    interpreter: outputs, and gradients of `(out * grad_out).sum()` when `grad_out` is given.
    Rows the reference makes exactly 0 (nothing to attend) must be exactly 0 (contract §9.4).
    A module whose backend returns the log-sum-exp (`returns_lse`) is called once more with
    `return_lse=True` (unless `lse_check` is False), forward only (the plain call stays the
    path every check covers): that
    output and lse are checked too (`lse_out`, `lse`); a backend that refuses the lse for these
    inputs (flash-attn 2 in training) skips it.

    >>> import attnspec
    >>> spec = "attention A {\\n heads = 1\\n head_dim = 4\\n mask k > q\\n}"
    >>> attn, cls = attnspec.build(spec).attentions[0], attnspec.load(spec).A
    >>> q = torch.randn(1, 1, 3, 4)
    >>> check_inputs(attn, cls(backend="sdpa"), (q, q, q), {}, None, torch.float32).ok
    True
    """
    result = result or Result("", attn.name, getattr(module, "backend", ""), "inputs", True,
                              0.0, "")
    with_lse = lse_check and returns_lse(module)
    runs = {name: _run(attn, module, name, args, inputs, sizes, run_dtype, grad_out,
                       overrides, packed if name == "module" else None,
                       lse=with_lse and name != "module")
            for name, run_dtype in (("module", dtype), ("ref", torch.float64),
                                    ("eager_t", dtype))}
    if with_lse:
        runs["module"][0].update(_lse_run(attn, module, args, inputs, sizes, dtype, packed))
    return _compare(runs, dtype, result)


def returns_lse(module) -> bool:
    """Whether `module`'s backend returns the log-sum-exp: an explicit backend of its class's
    LSE_BACKENDS. `auto` is checked as it runs without one (asking for an lse would move it off
    SDPA, the path it takes otherwise)."""
    return getattr(module, "backend", None) in getattr(module, "LSE_BACKENDS", ())


def _output_shape(attn: ir.AttentionIR, case: Case) -> tuple[int, ...]:
    values = resolve_settings(attn, dict(case.overrides))
    if attn.mode == "kernel":
        return (case.batch, values["heads"], case.q_len, values["value_dim"])
    return (case.batch, case.q_len, values["dim"])


def _randomise_params(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Zero-initialised tables (and muP's zero query) would hide bugs: give every parameter
    random values, projections at the usual 1/sqrt(fan_in) scale so scores stay moderate."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = 0.5
            if name.endswith("_proj.weight"):
                std = p.shape[1] ** -0.5
            elif name.endswith("_proj.bias"):
                std = 0.1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)


def default_backends(cls, device: str) -> list[str]:
    """Every backend generated into `cls` that runs on `device`, and on CUDA also `auto`
    (whose choices there, such as flex's FLASH kernel, no single backend name covers)."""
    names = [b for b in cls.BACKENDS if runs_on(b, device)]
    return names + ["auto"] if str(device).startswith("cuda") else names


def _run(attn, module, which: str, args, inputs, sizes, dtype, grad_out, overrides=None,
         packed=None, lse=False):
    """One forward and (with `grad_out`) backward: the module, or the interpreter in `dtype`.
    Returns ({"out": out, and with `lse` (interpreter runs) "lse": its lse}, {gradient name:
    tensor})."""
    grad = grad_out is not None
    leaves = [a.detach().to(dtype).requires_grad_(grad) for a in args]
    state = {k: v.detach().to(dtype).requires_grad_(grad and v.is_floating_point())
             for k, v in module.state_dict().items()}
    # The interpreter's lse is the reference of the module's lse call, asked only when the
    # check compares one.
    with torch.set_grad_enabled(grad):
        result = _forward(attn, module, which, leaves, state, inputs, sizes, overrides, packed,
                          return_lse=lse)
    out, lse_value = result if lse else (result, None)
    outputs = {"out": out.detach()} | ({"lse": lse_value.detach()} if lse else {})
    if not grad:
        return outputs, {}
    named = dict(module.named_parameters()) if which == "module" else \
        {k: v for k, v in state.items() if v.requires_grad}
    out.backward(grad_out.to(device=out.device, dtype=out.dtype))
    arg_names = ("q", "k", "v") if attn.mode == "kernel" else ("x", "context")
    grads = {f"d{n}": leaf.grad for n, leaf in zip(arg_names, leaves)}
    grads.update({f"d{n}": p.grad for n, p in named.items()})
    return outputs, grads


def _lse_run(attn, module, args, inputs, sizes, dtype, packed) -> dict:
    """The module's `return_lse=True` call, forward only: {"lse_out": out, "lse": lse}, or {}
    when the backend refuses the lse for these inputs (UnsupportedInputError, before any work)."""
    leaves = [a.detach().to(dtype) for a in args]
    try:
        with torch.no_grad():
            out, lse = _forward(attn, module, "module", leaves, {}, inputs, sizes, None, packed,
                                return_lse=True)
    except UnsupportedInputError:
        return {}
    return {"lse_out": out, "lse": lse}


def _forward(attn, module, which: str, leaves, state, inputs, sizes, overrides, packed=None,
             return_lse=False):
    dtype = leaves[0].dtype
    # Copies: a decoding call writes its new tokens into the cache, and each run gets its own.
    call_inputs = {k: (v.to(dtype, copy=True) if v.is_floating_point() else v)
                   for k, v in inputs.items()}
    lse = {"return_lse": True} if return_lse else {}
    if packed is not None:
        return _packed_forward(attn, module, leaves, call_inputs, packed, return_lse)
    if which == "module":
        return module(*leaves, **call_inputs, **({"sizes": sizes} if sizes else {}), **lse)
    return eager.run(attn, state, *leaves, inputs=call_inputs, sizes=sizes or None,
                     overrides=overrides, **lse)


def _packed_forward(attn, module, leaves, inputs: dict, name: str, return_lse: bool = False):
    """The module's packed call on a batch-1 case, returned in the ids form's layout: tensors
    `[total, ...]`, `cu_seqlens` from the runs of the ids (int32, as a data loader has them);
    the lse [heads, total] as [1, heads, total]."""
    ids = inputs.pop(name)[0]
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[1:] = ids[1:] != ids[:-1]
    bounds = torch.cat([starts.nonzero().flatten(), ids.new_tensor([ids.numel()])])
    cu = bounds.to(torch.int32)
    lse = {"return_lse": True} if return_lse else {}
    if attn.mode == "kernel":
        out = module(*(t[0].transpose(0, 1) for t in leaves), cu_seqlens=cu, **inputs, **lse)
        if return_lse:
            return out[0].transpose(0, 1)[None], out[1][None]
        return out.transpose(0, 1)[None]
    out = module(leaves[0][0], cu_seqlens=cu, **inputs, **lse)
    return (out[0][None], out[1][None]) if return_lse else out[None]


def _compare(runs: dict, dtype: torch.dtype, result: Result) -> Result:
    outputs, grads = runs["module"]
    ref, ref_grads = runs["ref"]
    eager_t, eager_grads = runs["eager_t"]
    # "lse_out": the output of the return_lse=True call, against the same reference.
    tensors = {name: (got, ref[name.removeprefix("lse_")], eager_t[name.removeprefix("lse_")])
               for name, got in outputs.items()}
    for name, g in grads.items():
        tensors[name] = (g, ref_grads.get(name), eager_grads.get(name))
    # The lse (a log, of another unit) leaves the scale, and so every other tensor's rule, as is.
    scale = _problem_scale({name: t for name, t in tensors.items() if name != "lse"})
    for name, (got, want, base) in tensors.items():
        check = _lse_ratio if name == "lse" else _ratio
        ratio, detail = check(got, want, base, dtype, scale)
        if ratio > result.worst_ratio or math.isnan(ratio):
            result.worst_ratio, result.worst_tensor, result.detail = ratio, name, detail
    rows = sum(_nonzero_empty_rows(outputs[name], ref["out"])
               for name in ("out", "lse_out") if name in outputs)
    if rows and result.worst_ratio <= 1.0:  # else the failure is reported already
        result.worst_ratio, result.worst_tensor = math.inf, "out"
        result.detail = f"{rows} row(s) with nothing to attend are not exactly 0"
    result.ok = result.worst_ratio <= 1.0
    return result


def _nonzero_empty_rows(out: torch.Tensor, ref: torch.Tensor) -> int:
    """How many rows (last dim) the reference makes exactly 0 are not exactly 0 in `out`. With
    random values only a row with nothing to attend is exactly 0 in the float64 reference."""
    if out.shape != ref.shape or not out.numel():
        return 0
    empty = (ref == 0).all(-1).to(out.device)
    return int((out[empty] != 0).any(-1).sum())


def _problem_scale(tensors: dict) -> float:
    """The largest reference magnitude of a case (at least 1): atol is relative to it, so the
    rule does not depend on the units of the inputs. (A gradient that is exactly 0, e.g. dk
    with one key, still carries kernel rounding of the size of the other tensors.)"""
    sizes = [want.abs().max().item() for _, want, _ in tensors.values()
             if want is not None and want.numel() and torch.isfinite(want).all()]
    return max([1.0, *sizes])


def _lse_ratio(got, want, base, dtype, scale: float = 1.0) -> tuple[float, str]:
    """`_ratio` of a log-sum-exp: -inf exactly on the reference's rows with nothing to attend
    (and no sink), the rule on every other row."""
    got, want, base = got.double().cpu(), want.double().cpu(), base.double().cpu()
    if got.shape != want.shape:
        return math.inf, f"lse of shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    empty = torch.isneginf(want)
    if not torch.equal(torch.isneginf(got), empty):
        return math.inf, "lse is not -inf exactly on the rows with nothing to attend"
    return _ratio(got[~empty], want[~empty], base[~empty], dtype, scale)


def _ratio(got, want, base, dtype, scale: float = 1.0) -> tuple[float, str]:
    if got is None and want is None:
        return 0.0, ""
    if got is None or want is None or base is None:
        return math.inf, "gradient missing on one side"
    got, want, base = got.double().cpu(), want.double().cpu(), base.double().cpu()
    if not torch.isfinite(got).all():
        return math.inf, "non-finite values"
    err = (got - want).abs().max().item() if got.numel() else 0.0
    allowed = 2 * ((base - want).abs().max().item() if base.numel() else 0.0) \
        + ATOL[dtype] * scale
    return err / allowed, f"max error {err:.3g}, allowed {allowed:.3g}"


# --- whole specs -------------------------------------------------------------------------------
def verify_spec(module_ir: ir.ModuleIR, py_module, backends: Sequence[str] | None = None,
                dtype: torch.dtype = torch.float32, device: str = "cpu",
                seed: int | None = None,
                progress: Callable[[str], None] | None = None) -> list[Result]:
    """Every attention x backend x case of one compiled spec. `backends` None means every
    backend generated into each class that runs on `device`; a requested backend a spec cannot
    run is skipped; one that refuses a case's inputs gives a `refused` result. `progress` is
    called after each check with a short description."""
    seed = random.randrange(2**31) if seed is None else seed
    results = []
    for attn, cls, backend, i, case in planned_checks(module_ir, py_module, backends, device):
        results.append(_safe_check(attn, cls, backend, case, dtype, device, seed + i,
                                   module_ir.source_name))
        if progress:
            progress(f"{attn.name} {backend} {case.name}")
    return results


def planned_checks(module_ir: ir.ModuleIR, py_module, backends: Sequence[str] | None,
                   device: str) -> list[tuple]:
    """(attention IR, class, backend, case index, case) for every check `verify_spec` runs."""
    planned = []
    for attn in module_ir.attentions:
        cls = getattr(py_module, attn.name)
        wanted = default_backends(cls, device) if backends is None else backends
        planned += [(attn, cls, backend, i, case)
                    for backend in wanted if backend == "auto" or backend in cls.BACKENDS
                    for i, case in enumerate(cases_for(attn, device))]
    return planned


def _safe_check(attn, cls, backend, case, dtype, device, seed, spec_name) -> Result:
    try:
        return check_case(attn, cls, backend, case, dtype, device, seed, spec_name)
    except UnsupportedInputError as e:  # a documented refusal, not a wrong result
        return Result(spec_name, attn.name, backend, case.name, True, 0.0, "",
                      " ".join(line.strip() for line in str(e).splitlines()), refused=True)
    except Exception as e:  # noqa: BLE001 — a crash is a failed check, reported in the table
        return Result(spec_name, attn.name, backend, case.name, False, math.inf, "",
                      f"{type(e).__name__}: {e}")


def format_table(results: list[Result]) -> str:
    """One row per check (rich's table, as plain text) and a summary line."""
    from attnspec.console import table

    header = ("spec", "attention", "backend", "case", "ratio", "result")
    rows = [(r.spec, r.attention, r.backend, r.case,
             "-" if r.refused else f"{r.worst_ratio:.3f}",
             r.status if r.ok and not r.refused else f"{r.status} {r.worst_tensor} {r.detail}"
             .replace("  ", " ").strip()) for r in results]
    lines = [table(header, rows)]
    failed = sum(not r.ok for r in results)
    refused = sum(r.refused for r in results)
    lines.append(f"{len(results) - failed - refused} passed, {failed} failed"
                 + (f", {refused} refused (the backend declined those inputs)" if refused else ""))
    return "\n".join(lines)


def junit_xml(results: list[Result]) -> str:
    """JUnit XML (one testcase per spec x attention x backend x case, and one per spec that does
    not build) for CI dashboards."""
    # The attributes CI tools read (Jenkins, GitLab, GitHub test reporters): the counts on the
    # suite (`errors` is 0: a crashed check is a failure), classname and name per testcase, a
    # <failure message=...> with the detail as text, <skipped message=...> for refusals.
    suite = ET.Element("testsuite", name="attnspec verify", tests=str(len(results)),
                       failures=str(sum(not r.ok for r in results)), errors="0",
                       skipped=str(sum(r.refused for r in results)))
    for r in results:
        built = r.backend != BUILD
        case = ET.SubElement(suite, "testcase",
                             classname=f"{r.spec}.{r.attention}" if built else r.spec,
                             name=f"{r.backend}[{r.case}]" if built else BUILD)
        if r.refused:
            ET.SubElement(case, "skipped", message=r.detail)
        elif not r.ok:
            message = f"ratio {r.worst_ratio:.3g} ({r.worst_tensor})" if built else r.detail
            failure = ET.SubElement(case, "failure", message=message)
            failure.text = r.detail
    return ET.tostring(suite, encoding="unicode") + "\n"


BUILD = "build"  # the backend column of a spec that does not build: one failed entry per file


def build_failure(path, message: str | None) -> Result:
    """The failed entry of a spec that does not build, so that --json and --junit list it."""
    return Result(str(path), "", BUILD, "", False, math.inf, "",
                  message or "the spec does not build")


def run_cli(args, loaded, build_errors: dict | None = None) -> int:
    """`attnspec verify`: `loaded` is [(path, source, module_ir or None)]; `build_errors` maps a
    path that does not build to its first error. Exit 0 when every check passed; 1 on a failure,
    an unusable device or when nothing was verified (a run that checked nothing must not pass)."""
    import attnspec

    dtype = DTYPES.get(args.dtype)
    if dtype is None:
        print(f"attnspec: unknown dtype {args.dtype!r}; use one of {', '.join(DTYPES)}",
              file=sys.stderr)
        return 1
    problem = _device_problem(args.device)
    if problem is not None:  # one clear error, not one crashed row per case
        print(f"attnspec: {problem}", file=sys.stderr)
        return 1
    backends = None if args.backend == "all" else tuple(args.backend.split(","))
    modules = {path: (module_ir, attnspec.load(path)) for path, _source, module_ir in loaded
               if module_ir is not None}
    total = sum(len(planned_checks(m, py, backends, args.device)) for m, py in modules.values())
    results = []
    # Live bar on a terminal only: in a log the final table already lists every check.
    with Progress(total, label="verify", quiet=args.json or not sys.stderr.isatty()) as progress:
        for path, _source, module_ir in loaded:
            if module_ir is None:
                results.append(build_failure(path, (build_errors or {}).get(path)))
                continue
            results += verify_spec(*modules[path], backends, dtype, args.device, args.seed,
                                   progress=progress)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        print(format_table(results))
    if args.junit and not _write_junit(args.junit, results):
        return 1
    empty = _nothing_verified(loaded, results)
    if empty is not None:
        print(f"attnspec: nothing verified: {empty}", file=sys.stderr)
        return 1
    return 1 if any(not r.ok for r in results) else 0


def _device_problem(device: str) -> str | None:
    """Why `device` cannot run anything here, or None."""
    try:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            return f"--device {device}: no CUDA device here; use --device cpu"
        torch.empty(1, device=device)  # e.g. cuda:7 on a one-GPU machine
    except Exception as e:  # noqa: BLE001 — torch raises RuntimeError, AssertionError, ...
        return f"--device {device} is not usable here ({type(e).__name__}: {e})"
    return None


def _write_junit(path: str, results: list[Result]) -> bool:
    """Write the JUnit XML, creating its directory; False (after saying why) if that fails."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(junit_xml(results), encoding="utf-8")
    except OSError as e:
        print(f"attnspec: cannot write --junit {path}: {e.strerror or e}", file=sys.stderr)
        return False
    return True


def _nothing_verified(loaded, results: list[Result]) -> str | None:
    """Why no check ran and passed, or None. Failures are their own report."""
    if not loaded:
        return "no .attn files found"
    if any(not r.ok for r in results) or any(r.ok and not r.refused for r in results):
        return None
    if not results:
        return ("no checks planned: no requested backend is generated for these specs (see "
                "`attnspec explain`)")
    return "every check was refused (see the table): choose a backend and device that run them"
