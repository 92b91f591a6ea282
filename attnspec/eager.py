"""The eager interpreter: the reference semantics of an attention, read directly from the IR.

Every backend is verified against this module (in float64), so it is written for clarity, not
speed: every score is materialised as a dense `[B, heads, Sq, Sk]` tensor. It shares no code with
lowering or code generation; it uses only the IR, `attnspec.ir.consts` for constant settings and
`attnspec.ir.exprs.free_vars`.

Example:
    >>> import torch
    >>> from attnspec.ir.build import build_text
    >>> spec = "attention A {\\n heads = 2\\n head_dim = 4\\n mask causal\\n}"
    >>> attn = build_text(spec).attentions[0]
    >>> q = k = v = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    >>> run(attn, {}, q, k, v).shape
    torch.Size([1, 2, 3, 4])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import reduce

import torch
import torch.nn.functional as F
from torch import Tensor

from attnspec.ir import nodes as ir
from attnspec.ir.consts import eval_const, resolve_settings
from attnspec.ir.exprs import free_vars

__all__ = ["run", "evaluate_mask", "alibi_slopes", "t5_bucket", "ExprInterpreter", "Frame",
           "score_pipeline", "recording_weights"]

RMS_EPS = 1e-6
_COMPARE = {
    "==": torch.eq, "!=": torch.ne, "<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge,
}
_ARITH = {"+": torch.add, "-": torch.sub, "*": torch.mul}
_FLOAT_FUNCS = {
    "exp": torch.exp, "exp2": torch.exp2, "log": torch.log, "log2": torch.log2,
    "sqrt": torch.sqrt, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
}


# --- public helpers ----------------------------------------------------------------------------
def alibi_slopes(heads: int) -> list[float]:
    """The ALiBi paper's per-head slopes (`_get_slopes(heads)` of Press et al.).

    >>> alibi_slopes(4)
    [0.25, 0.0625, 0.015625, 0.00390625]
    >>> alibi_slopes(6)[4:]
    [0.5, 0.125]
    """
    if heads < 1:
        raise ValueError(f"alibi_slopes needs heads >= 1, got {heads}")
    n = 1 << (heads.bit_length() - 1)  # the largest power of two <= heads
    slopes = [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]
    if n == heads:
        return slopes
    return slopes + alibi_slopes(2 * n)[0::2][: heads - n]


def t5_bucket(rel: Tensor, buckets: int, max_distance: int, bidirectional: bool) -> Tensor:
    """HF T5's `_relative_position_bucket(rel, bidirectional, buckets, max_distance)` (int64),
    with the logarithm taken in float64.

    >>> t5_bucket(torch.tensor([-1, 0, 1, -200]), 32, 128, True).tolist()
    [1, 0, 17, 15]
    """
    rel = torch.as_tensor(rel).to(torch.int64)
    n = int(buckets) // 2 if bidirectional else int(buckets)
    max_exact = n // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError(f"t5_bucket needs more buckets ({buckets}) and max_distance "
                         f"({max_distance}) > {max_exact}")
    offset = torch.zeros_like(rel)
    if bidirectional:
        offset = (rel > 0).to(torch.int64) * n
        rel = rel.abs()
    else:
        rel = -rel.clamp(max=0)
    # Every distance from 0 to max_distance gets its bucket on the host (Python's float64 log),
    # then a table lookup: a device `log` one ulp off would move exact boundaries (16, 32, 64 for
    # 32 buckets over 128) into the bucket below, so CPU and CUDA would disagree.
    table = torch.tensor([_t5_one_bucket(r, n, max_exact, max_distance)
                          for r in range(max_distance + 1)], device=rel.device)
    return offset + table[rel.clamp(max=max_distance)]


def _t5_one_bucket(rel: int, n: int, max_exact: int, max_distance: int) -> int:
    """HF T5's bucket of one non-negative distance (the formula of docs/language.md)."""
    if rel < max_exact:
        return rel
    ratio = math.log(rel / max_exact) / math.log(max_distance / max_exact)
    return min(max_exact + int(ratio * (n - max_exact)), n - 1)


# --- call-time state ---------------------------------------------------------------------------
@dataclass
class Frame:
    """Everything an expression may read during one call (all tensors on `device`)."""

    attn: ir.AttentionIR
    settings: Mapping[str, int | float]
    dtype: torch.dtype  # the float compute dtype
    device: torch.device
    batch: int
    q_len: int
    kv_len: int
    groups: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, end)
    inputs: Mapping[str, Tensor] = field(default_factory=dict)
    params: Mapping[str, Tensor] = field(default_factory=dict)
    edges: Mapping[str, Mapping[str, Tensor]] = field(default_factory=dict)
    # Decoding (a kv_cache): each query's position [B, Sq] and each row's key count [B].
    q_positions: Tensor | None = None
    key_count: Tensor | None = None

    @property
    def heads(self) -> int:
        return int(self.settings["heads"])


class ExprInterpreter:
    """Evaluates IR expressions to tensors broadcastable to `[B, heads, Sq, Sk]`.

    One method per node kind (`eval_<kind>`) and per builtin (`call_<func>`), in the style of
    `torch.fx.Interpreter`. Ints are int64, floats the frame's dtype, bools bool.

    >>> from attnspec.ir.build import build_text
    >>> a = build_text("attention A {\\n heads = 1\\n head_dim = 4\\n mask q - k <= 1\\n}")
    >>> attn = a.attentions[0]
    >>> frame = Frame(attn, resolve_settings(attn), torch.float64, torch.device("cpu"), 1, 3, 3)
    >>> ExprInterpreter(frame).run(attn.masks[0]).int().squeeze().tolist()
    [[1, 1, 1], [1, 1, 1], [0, 1, 1]]
    """

    def __init__(self, frame: Frame, score: Tensor | None = None):
        self.frame = frame
        self.score = score
        dev = frame.device
        self.grids = {
            "b": torch.arange(frame.batch, device=dev).view(-1, 1, 1, 1),
            "h": torch.arange(frame.heads, device=dev).view(1, -1, 1, 1),
            "q": torch.arange(frame.q_len, device=dev).view(1, 1, -1, 1)
            if frame.q_positions is None else frame.q_positions[:, None, :, None],
            "k": torch.arange(frame.kv_len, device=dev).view(1, 1, 1, -1),
        }

    def run(self, node: ir.Expr) -> Tensor:
        return getattr(self, f"eval_{node.kind}")(node)

    # values of a type --------------------------------------------------------------------------
    def scalar(self, value, kind: str) -> Tensor:
        return torch.tensor(value, dtype=self.dtype_of(kind), device=self.frame.device)

    def dtype_of(self, kind: str) -> torch.dtype:
        return {"bool": torch.bool, "int": torch.int64, "float": self.frame.dtype}[kind]

    def cast(self, value: Tensor, kind: str) -> Tensor:
        return value.to(self.dtype_of(kind))

    # leaves ------------------------------------------------------------------------------------
    def eval_const(self, node: ir.Const) -> Tensor:
        return self.scalar(node.value, node.type)

    def eval_index(self, node: ir.IndexVar) -> Tensor:
        return self.grids[node.name]

    def eval_setting(self, node: ir.SettingRef) -> Tensor:
        return self.scalar(self.frame.settings[node.name], node.type)

    def eval_seq_len(self, node: ir.SeqLen) -> Tensor:
        return self.scalar(self.frame.q_len if node.name == "q_len" else self.frame.kv_len, "int")

    def eval_group_bound(self, node: ir.GroupBound) -> Tensor:
        start, end = self.frame.groups[node.group]
        value = {"start": start, "end": end, "size": end - start}[node.which]
        return self.scalar(value, "int")

    def eval_edge(self, node: ir.EdgeField) -> Tensor:
        return self.frame.edges[node.input][node.field]

    def eval_score(self, node: ir.ScoreRef) -> Tensor:
        if self.score is None:
            raise ValueError("`score` is only defined inside `score = ...`")
        return self.score

    # tensors -----------------------------------------------------------------------------------
    def eval_input(self, node: ir.InputRef) -> Tensor:
        return self._gather(self.frame.inputs[node.name], node.indices)

    def eval_param(self, node: ir.ParamRef) -> Tensor:
        if node.name not in self.frame.params:
            raise ValueError(f"param `{node.name}` is missing from the state")
        return self._gather(self.frame.params[node.name], node.indices)

    def _gather(self, tensor: Tensor, indices: Sequence[ir.Expr]) -> Tensor:
        if not indices:
            return tensor
        # Advanced indexing with broadcast int64 index tensors; differentiable in `tensor`.
        return tensor[tuple(self.run(i) for i in indices)]

    # operators ---------------------------------------------------------------------------------
    def eval_in_group(self, node: ir.InGroup) -> Tensor:
        start, end = self.frame.groups[node.group]
        x = self.run(node.operand)
        return (x >= start) & (x < end)

    def eval_unary(self, node: ir.Unary) -> Tensor:
        operand = self.run(node.operand)
        if node.op == "!":
            return torch.logical_not(operand)
        return torch.neg(self.cast(operand, node.type))

    def eval_binary(self, node: ir.Binary) -> Tensor:
        left, right = self.run(node.left), self.run(node.right)
        op = node.op
        if op in ("&", "|"):
            return (torch.logical_and if op == "&" else torch.logical_or)(left, right)
        if op in _COMPARE:
            common = _common_type(node.left.type, node.right.type)
            return _COMPARE[op](self.cast(left, common), self.cast(right, common))
        left, right = self.cast(left, node.type), self.cast(right, node.type)
        if op == "/":
            return left / right
        if op == "//":
            return torch.div(left, right, rounding_mode="floor")
        if op == "%":
            return torch.remainder(left, right)  # sign of the divisor, as Python
        return _ARITH[op](left, right)

    def eval_call(self, node: ir.Call) -> Tensor:
        if node.func in _FLOAT_FUNCS:
            return _FLOAT_FUNCS[node.func](self.cast(self.run(node.args[0]), "float"))
        return getattr(self, f"call_{node.func}")(node)

    # builtins ----------------------------------------------------------------------------------
    def _args(self, node: ir.Call) -> list[Tensor]:
        return [self.cast(self.run(a), node.type) for a in node.args]

    def call_abs(self, node: ir.Call) -> Tensor:
        return torch.abs(self._args(node)[0])

    def call_min(self, node: ir.Call) -> Tensor:
        return reduce(torch.minimum, self._args(node))

    def call_max(self, node: ir.Call) -> Tensor:
        return reduce(torch.maximum, self._args(node))

    def call_clamp(self, node: ir.Call) -> Tensor:
        x, lo, hi = self._args(node)
        return torch.minimum(torch.maximum(x, lo), hi)

    def call_where(self, node: ir.Call) -> Tensor:
        cond = self.run(node.args[0])
        a, b = (self.cast(self.run(x), node.type) for x in node.args[1:])
        return torch.where(cond, a, b)

    def call_floor(self, node: ir.Call) -> Tensor:
        return self._round(node, torch.floor)

    def call_ceil(self, node: ir.Call) -> Tensor:
        return self._round(node, torch.ceil)

    def _round(self, node: ir.Call, fn) -> Tensor:
        x = self.run(node.args[0])
        return x if node.args[0].type == "int" else fn(x).to(torch.int64)

    def call_alibi_slope(self, node: ir.Call) -> Tensor:
        slopes = torch.tensor(alibi_slopes(self.frame.heads), dtype=self.frame.dtype,
                              device=self.frame.device)
        return slopes[self.cast(self.run(node.args[0]), "int")]

    def call_t5_bucket(self, node: ir.Call) -> Tensor:
        rel = self.cast(self.run(node.args[0]), "int")
        buckets, max_distance, bidirectional = (self.run(a).item() for a in node.args[1:])
        return t5_bucket(rel, int(buckets), int(max_distance), bool(bidirectional))


def _common_type(left: str, right: str) -> str:
    if "bool" in (left, right):
        return "bool"
    return "float" if "float" in (left, right) else "int"


# --- validation and call-time tables -----------------------------------------------------------
def _shape_text(labels: Sequence[str], sizes: Sequence[int | None]) -> str:
    parts = [label if size is None else f"{label}={size}" for label, size in
             zip(labels, sizes, strict=True)]
    return "[" + ", ".join(parts) + "]"


def _check_shape(what: str, t: Tensor, labels: Sequence[str], sizes: Sequence[int | None]):
    """Raise ValueError naming `what` unless `t` has len(labels) dims matching `sizes`."""
    ok = t.dim() == len(sizes) and all(s is None or s == n for s, n in
                                       zip(sizes, t.shape, strict=False))
    if not ok:
        raise ValueError(f"{what} must have shape {_shape_text(labels, sizes)}, "
                         f"got {tuple(t.shape)}")


def _compute_dtype(t: Tensor, name: str) -> tuple[torch.dtype, torch.dtype]:
    """(compute dtype, output dtype): float64 stays float64, half types compute in float32."""
    if not isinstance(t, Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"`{name}` must be a floating-point tensor, got {got}")
    if t.dtype == torch.float64:
        return torch.float64, torch.float64
    return torch.float32, t.dtype


def _check_settings(settings: Mapping[str, int | float]) -> None:
    heads, kv_heads = int(settings["heads"]), int(settings["kv_heads"])
    if heads < 1 or kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"kv_heads ({kv_heads}) must divide heads ({heads})")


def _dim_size(dim: ir.Dim, frame: Frame, name: str) -> tuple[str, int]:
    if dim.kind == "const":
        return "const", int(eval_const(dim.size, frame.settings))
    if dim.kind == "seq" and frame.q_len != frame.kv_len:
        raise ValueError(f"input `{name}` has a `seq` dimension, which needs q_len == kv_len; "
                         f"got q_len={frame.q_len}, kv_len={frame.kv_len} (use q_seq / kv_seq)")
    sizes = {"batch": frame.batch, "seq": frame.q_len, "q_seq": frame.q_len,
             "kv_seq": frame.kv_len, "heads": frame.heads,
             "kv_heads": int(frame.settings["kv_heads"])}
    return dim.kind, sizes[dim.kind]


def _expected(decl_dims: Sequence[ir.Dim], frame: Frame, name: str):
    pairs = [_dim_size(d, frame, name) for d in decl_dims]
    return [p[0] for p in pairs], [p[1] for p in pairs]


_DTYPE_OK = {
    "bool": lambda t: t.dtype == torch.bool,
    "int": lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
    "float": lambda t: t.is_floating_point(),
}


def _tensor_input(decl: ir.InputDecl, value, frame: Frame) -> Tensor:
    labels, sizes = _expected(decl.dims, frame, decl.name)
    want = f"{decl.dtype}{_shape_text(labels, sizes)}"
    if value is None:
        raise ValueError(f"missing input `{decl.name}`: expected {want}")
    t = torch.as_tensor(value)
    if not _DTYPE_OK[decl.dtype](t):
        raise ValueError(f"input `{decl.name}` must be {want}, got dtype {t.dtype}")
    _check_shape(f"input `{decl.name}` ({decl.dtype})", t, labels, sizes)
    return t.to(device=frame.device, dtype={"bool": torch.bool, "int": torch.int64,
                                            "float": frame.dtype}[decl.dtype])


def _int_vector(name: str, value, shape: tuple[int, ...], form: str = "int[E]") -> Tensor:
    t = torch.as_tensor(value)
    if not _DTYPE_OK["int"](t) or t.shape != shape:
        sizes = ", ".join(f"{d}={n}" for d, n in zip(form[4:-1].split(", "), shape))
        raise ValueError(f"input `{name}` must be {form} with {sizes} (one per edge), "
                         f"got {t.dtype} {tuple(t.shape)}")
    return t.to(torch.int64)


def _edge_tables(decl: ir.InputDecl, inputs: Mapping[str, Tensor], frame: Frame):
    """Dense tables `edge`, `type`, `distance`; the last duplicate edge wins. `[1, 1, Sq, Sk]`
    for one edge list shared by the batch (edge_index int[2, E]), `[B, 1, Sq, Sk]` for one
    list per batch row (int[B, 2, E], padded with -1 in both rows; types [B, E])."""
    name = decl.name
    index = inputs.get(name)
    if index is None:
        raise ValueError(f"missing input `{name}`: expected edge_index int[2, E] or "
                         "int[B, 2, E]")
    index = torch.as_tensor(index)
    if index.dim() != 3:
        if not _DTYPE_OK["int"](index) or index.dim() != 2 or index.shape[0] != 2:
            raise ValueError(f"input `{name}` (edge_index) must be int[2, E] or int[B, 2, E], "
                             f"got {index.dtype} {tuple(index.shape)}")
        tables = _edge_cells(decl, index.to(frame.device, torch.int64),
                             _edge_values(inputs, name, (index.shape[1],), "int[E]", frame), frame)
        return {k: t.view(1, 1, frame.q_len, frame.kv_len) for k, t in tables.items()}
    if not _DTYPE_OK["int"](index) or index.shape[:2] != (frame.batch, 2):
        raise ValueError(f"input `{name}` (edge_index per batch row) must be int[B, 2, E] with "
                         f"B={frame.batch}, got {index.dtype} {tuple(index.shape)}")
    index = index.to(frame.device, torch.int64)
    values = _edge_values(inputs, name, (frame.batch, index.shape[2]), "int[B, E]", frame)
    rows = []
    for b in range(frame.batch):  # each row alone, its padding (-1 in both rows) dropped
        pad = (index[b, 0] == -1) & (index[b, 1] == -1)
        if ((index[b, 0] == -1) != (index[b, 1] == -1)).any():
            raise ValueError(f"input `{name}` (edge_index) padding must be -1 in both rows")
        rows.append(_edge_cells(decl, index[b][:, ~pad],
                                {k: None if v is None else v[b][~pad]
                                 for k, v in values.items()}, frame))
    if not rows:  # an empty batch: empty tables of the one-list-per-row shape
        rows = [_edge_cells(decl, index.new_zeros(2, 0), {}, frame)]
    return {k: torch.stack([r[k] for r in rows])[:frame.batch].view(
        frame.batch, 1, frame.q_len, frame.kv_len) for k in rows[0]}


def _edge_values(inputs: Mapping[str, Tensor], name: str, shape: tuple[int, ...], form: str,
                 frame: Frame) -> dict[str, Tensor | None]:
    """`NAME_type` and `NAME_distance` checked to `shape` (None where not given)."""
    return {f: None if inputs.get(f"{name}_{f}") is None else
            _int_vector(f"{name}_{f}", inputs[f"{name}_{f}"], shape, form).to(frame.device)
            for f in ("type", "distance")}


def _edge_cells(decl: ir.InputDecl, index: Tensor, values: Mapping[str, Tensor | None],
                frame: Frame) -> dict[str, Tensor]:
    """One edge list [2, E] (and its types and distances, None: 0) as flat [Sq * Sk] tables."""
    name, spec, sq, sk = decl.name, decl.edges, frame.q_len, frame.kv_len
    n_edges = index.shape[1]
    src, dst = index[0], index[1]
    if n_edges and (src.min() < 0 or src.max() >= sq or dst.min() < 0 or dst.max() >= sk):
        raise ValueError(f"input `{name}` (edge_index) must hold query positions in [0, {sq}) "
                         f"in row 0 and key positions in [0, {sk}) in row 1")
    zeros = torch.zeros(n_edges, dtype=torch.int64, device=frame.device)
    types = zeros if values.get("type") is None else values["type"].to(frame.device)
    if n_edges and (types.min() < 0 or types.max() >= spec.types):
        raise ValueError(f"input `{name}_type` values must lie in [0, {spec.types})")
    dist = zeros if values.get("distance") is None else values["distance"].to(frame.device)
    dist = dist.clamp(0, spec.max_distance - 1)
    # The winner of each cell is its highest edge number (-1: none); slot 0 holds "no edge".
    order = torch.arange(n_edges, device=frame.device)
    winner = torch.full((sq * sk,), -1, dtype=torch.int64, device=frame.device)
    winner = winner.scatter_reduce(0, src * sk + dst, order, reduce="amax")
    pad = torch.zeros(1, dtype=torch.int64, device=frame.device)
    edge = winner >= 0
    if spec.self_loops:
        diag = torch.arange(min(sq, sk), device=frame.device)
        edge[diag * sk + diag] = True  # type and distance stay 0 where the loop is implicit
    return {"edge": edge, "type": torch.cat([pad, types])[winner + 1],
            "distance": torch.cat([pad, dist])[winner + 1]}


def _prepare_inputs(frame: Frame, inputs: Mapping[str, Tensor]) -> None:
    attn = frame.attn
    allowed = {d.name for d in attn.inputs}
    allowed |= {f"{d.name}_{f}" for d in attn.inputs if d.dtype == "edges"
                for f in ("type", "distance")}
    unknown = sorted(set(inputs) - allowed)
    if unknown:
        raise ValueError(f"unknown input(s) {', '.join(unknown)} for {attn.name}; "
                         f"inputs: {', '.join(sorted(allowed)) or 'none'}")
    tensors, edges = {}, {}
    for decl in attn.inputs:
        if decl.dtype == "edges":
            edges[decl.name] = _edge_tables(decl, inputs, frame)
        else:
            tensors[decl.name] = _tensor_input(decl, inputs.get(decl.name), frame)
    frame.inputs, frame.edges = tensors, edges


def _prepare_params(frame: Frame, state: Mapping[str, Tensor], required: bool) -> None:
    params = {}
    for decl in frame.attn.params:
        labels, sizes = _expected(decl.dims, frame, decl.name)
        value = state.get(decl.name)
        if value is None:
            if required:
                raise ValueError(f"missing param `{decl.name}` in state: expected float"
                                 f"{_shape_text(labels, sizes)}")
            continue
        _check_shape(f"param `{decl.name}`", value, labels, sizes)
        params[decl.name] = value.to(device=frame.device, dtype=frame.dtype)
    frame.params = params


def _group_layout(attn: ir.AttentionIR, q_len: int, kv_len: int,
                  sizes: Mapping[str, int] | None) -> dict[str, tuple[int, int]]:
    """Each token group's (start, end); a single `*` group not in `sizes` takes the rest."""
    sizes = {name: int(n) for name, n in (sizes or {}).items()}
    names = [g.name for g in attn.groups]
    unknown = sorted(set(sizes) - set(names))
    if unknown:
        raise ValueError(f"sizes= names unknown token group(s) {', '.join(unknown)}; "
                         f"groups: {', '.join(names) or 'none'}")
    if not attn.groups:
        return {}
    if q_len != kv_len:
        raise ValueError(f"token groups need q_len == kv_len, got {q_len} and {kv_len}")
    resolved, open_groups = _group_sizes(attn.groups, sizes)
    if len(open_groups) > 1:
        raise ValueError(f"groups {', '.join(open_groups)} have size `*`: give all but one "
                         "of them in sizes=")
    if open_groups:
        resolved[open_groups[0]] = q_len - sum(resolved.values())
    total = sum(resolved.values())
    if total != q_len or min(resolved.values()) < 0:
        listing = " + ".join(f"{g}={n}" for g, n in resolved.items())
        raise ValueError(f"token groups ({listing}) must add up to the sequence length {q_len}")
    layout, start = {}, 0
    for name in names:
        layout[name] = (start, start + resolved[name])
        start += resolved[name]
    return layout


def _group_sizes(groups: Sequence[ir.Group], sizes: Mapping[str, int]):
    resolved: dict[str, int] = {}
    open_groups = []
    for g in groups:
        if g.name in sizes:
            if sizes[g.name] < 0 or (g.size is not None and sizes[g.name] != g.size):
                raise ValueError(f"sizes={{'{g.name}': {sizes[g.name]}}} does not fit group "
                                 f"`{g.name}` of size {g.size if g.size is not None else '*'}")
            resolved[g.name] = sizes[g.name]
        elif g.size is not None:
            resolved[g.name] = g.size
        else:
            open_groups.append(g.name)
    return resolved, open_groups


def _make_frame(attn, settings, dtype, device, batch, q_len, kv_len, state, inputs, sizes,
                params_required: bool = True) -> Frame:
    frame = Frame(attn, settings, dtype, device, batch, q_len, kv_len,
                  groups=_group_layout(attn, q_len, kv_len, sizes))
    _prepare_inputs(frame, dict(inputs or {}))
    _prepare_params(frame, state or {}, params_required)
    return frame


# --- masks and the softmax ---------------------------------------------------------------------
def _combined_mask(interp: ExprInterpreter) -> Tensor | None:
    """AND of every mask and of the pattern predicate; None when everything is attended."""
    attn = interp.frame.attn
    parts = [interp.run(m) for m in attn.masks]
    if attn.patterns:
        parts.append(_pattern_predicate(interp))
    if interp.frame.key_count is not None:  # decoding: a row's keys end after its last query
        parts.append(interp.grids["k"] < interp.frame.key_count.view(-1, 1, 1, 1))
    return reduce(torch.logical_and, parts) if parts else None


def _zero_excluded_keys(frame: Frame, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """k and v [B, KVH, Sk, *] with 0 at every key that a key-only mask conjunct excludes (key
    padding, key lengths): whatever those slots hold, NaN and inf included, then reaches no
    output or gradient (0 * NaN in `p @ v`, or in a norm's backward, would be NaN). Their
    gradients are 0, as for any key that no query attends."""
    keep = _key_only_mask(ExprInterpreter(frame))
    if keep is None:
        return k, v
    keep = torch.broadcast_to(keep, (frame.batch, 1, 1, frame.kv_len)).transpose(-1, -2)
    return (torch.where(keep, k, torch.zeros((), dtype=k.dtype, device=k.device)),
            torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device)))


def _key_only_mask(interp: ExprInterpreter) -> Tensor | None:
    """AND of the mask conjuncts that read neither q nor h (an edges field reads q): the keys
    any query may attend at all, broadcastable to [B, 1, 1, Sk]; None when there is none."""
    parts = []
    for mask in interp.frame.attn.masks:
        for conjunct, negated in _conjuncts(mask):
            if not free_vars(conjunct) & {"q", "h"}:
                value = interp.run(conjunct)
                parts.append(torch.logical_not(value) if negated else value)
    return reduce(torch.logical_and, parts) if parts else None


def _conjuncts(e: ir.Expr, negated: bool = False) -> list[tuple[ir.Expr, bool]]:
    """The terms whose AND is `e`, each with whether it is negated: `a & b`, `!(a | b)`, `!!a`."""
    if isinstance(e, ir.Unary) and e.op == "!":
        return _conjuncts(e.operand, not negated)
    if isinstance(e, ir.Binary) and e.op == ("|" if negated else "&"):
        return _conjuncts(e.left, negated) + _conjuncts(e.right, negated)
    return [(e, negated)]


def _pattern_predicate(interp: ExprInterpreter) -> Tensor:
    groups = interp.frame.groups

    def inside(x: Tensor, names: Sequence[str]) -> Tensor:
        return reduce(torch.logical_or, [(x >= groups[n][0]) & (x < groups[n][1])
                                         for n in names])

    q, k = interp.grids["q"], interp.grids["k"]
    return reduce(torch.logical_or, [inside(q, p.queries) & inside(k, p.keys)
                                     for p in interp.frame.attn.patterns])


def _softmax(score: Tensor, sink: Tensor | None) -> Tensor:
    """Softmax over keys where an all -inf row gives 0 (never NaN); `sink` [1, H, 1, 1] joins
    every row's denominator. The shift `m` is detached: the result does not depend on it."""
    if score.shape[-1] == 0:  # no keys at all (kv_len 0): every row attends nothing -> 0
        return score
    m = score.detach().amax(-1, keepdim=True)
    if sink is not None:
        m = torch.maximum(m, sink.detach())
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    e = torch.exp(score - m)
    denom = e.sum(-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink - m)
    # Rows with nothing to attend have e == 0: divide by 1 to give 0 with finite gradients.
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


def _log_sum_exp(score: Tensor, sink: Tensor | None) -> Tensor:
    """Each row's log-sum-exp [B, H, Sq]: the natural log of the softmax's denominator, over the
    keys and the sink logit (a term like any key's, whose value is 0). A row whose every term is
    -inf (nothing to attend, no sink) gives -inf, with gradient 0 (torch.logsumexp's would be
    NaN there)."""
    terms = score
    if sink is not None:
        terms = torch.cat([score, sink.expand(*score.shape[:-1], 1).to(score.dtype)], dim=-1)
    empty = torch.isneginf(terms).all(dim=-1, keepdim=True)
    lse = torch.logsumexp(terms.masked_fill(empty, 0.0), dim=-1)
    return lse.masked_fill(empty.squeeze(-1), float("-inf"))


def score_pipeline(frame: Frame, score: Tensor,
                   interpreter: Callable[[Frame, Tensor], ExprInterpreter] = ExprInterpreter
                   ) -> Tensor:
    """`score` after every step of the attention's score pipeline, in order (`bias e` adds e,
    `score = e` replaces it). `interpreter(frame, score)` makes each step's evaluator:
    `attnspec.show` passes one whose q/k grids are a window of positions.

    >>> from attnspec.ir.build import build_text
    >>> attn = build_text("attention A {\\n heads = 1\\n head_dim = 4\\n bias q - k\\n"
    ...                   " score = 2 * score\\n}").attentions[0]
    >>> frame = Frame(attn, resolve_settings(attn), torch.float64, torch.device("cpu"), 1, 2, 2)
    >>> score_pipeline(frame, torch.zeros(1, 1, 2, 2)).squeeze().tolist()
    [[0.0, -2.0], [2.0, 0.0]]
    """
    for step in frame.attn.pipeline:
        value = interpreter(frame, score).run(step.expr).to(frame.dtype)
        score = score + value if step.kind == "bias" else torch.broadcast_to(value, score.shape)
    return score


_WEIGHTS: ContextVar[list[Tensor] | None] = ContextVar("attnspec_eager_weights", default=None)


@contextmanager
def recording_weights() -> Iterator[list[Tensor]]:
    """Collect the attention probabilities `[B, heads, Sq, Sk]` (after the softmax, before
    dropout; detached) of every `run` inside the block, in call order.

    >>> from attnspec.ir.build import build_text
    >>> attn = build_text("attention A {\\n heads = 1\\n head_dim = 4\\n mask causal\\n}")
    >>> q = k = v = torch.randn(1, 1, 2, 4, dtype=torch.float64)
    >>> with recording_weights() as weights:
    ...     _ = run(attn.attentions[0], {}, q, k, v)
    >>> weights[0][0, 0, 0].tolist()
    [1.0, 0.0]
    """
    record: list[Tensor] = []
    token = _WEIGHTS.set(record)
    try:
        yield record
    finally:
        _WEIGHTS.reset(token)


# --- q/k transforms ----------------------------------------------------------------------------
def _rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * weight


def _rope_angles(frame: Frame, rope: ir.Rope, length: int, half: int, dims: int) -> Tensor:
    """Angles `[B or 1, 1, length, half]` for positions 0..length-1 (or the given ones)."""
    if rope.freqs is not None:
        angles = frame.inputs[rope.freqs]
        _check_shape(f"input `{rope.freqs}` (rope freqs)", angles, ("batch", "seq", "dims/2"),
                     (frame.batch, length, half))
        return angles[:, None]
    if rope.positions is not None:
        pos = frame.inputs[rope.positions]
        _check_shape(f"input `{rope.positions}` (rope positions)", pos, ("batch", "seq"),
                     (frame.batch, length))
        pos = pos.to(frame.dtype)
    elif frame.q_positions is not None:  # decoding: the new tokens' own positions
        pos = frame.q_positions.to(frame.dtype)
    else:
        pos = torch.arange(length, device=frame.device, dtype=frame.dtype)[None]
    i = torch.arange(half, device=frame.device, dtype=frame.dtype)
    inv_freq = rope.base ** (-2.0 * i / dims)
    return (pos[..., None] * inv_freq)[:, None]


def _rotate(x: Tensor, angles: Tensor, dims: int, interleaved: bool) -> Tensor:
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot, rest = x[..., :dims], x[..., dims:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).flatten(-2)
    else:
        x1, x2 = rot[..., : dims // 2], rot[..., dims // 2:]
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)
    return torch.cat((out, rest), -1)


def _apply_rope(frame: Frame, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    rope = frame.attn.rope
    dims = int(eval_const(rope.dims, frame.settings))
    head_dim = int(frame.settings["head_dim"])
    if dims < 2 or dims % 2 or dims > head_dim:
        raise ValueError(f"rope dims must be even and in [2, head_dim={head_dim}], got {dims}")
    half = dims // 2
    q_angles = _rope_angles(frame, rope, frame.q_len, half, dims)
    k_angles = _rope_angles(frame, rope, frame.kv_len, half, dims)
    return (_rotate(q, q_angles, dims, rope.interleaved),
            _rotate(k, k_angles, dims, rope.interleaved))


# --- the attention core ------------------------------------------------------------------------
def _transform_qk(frame: Frame, q: Tensor, k: Tensor, storage: torch.dtype):
    """qk_norm, then RoPE, of q and k (in the compute dtype)."""
    attn = frame.attn
    if attn.qk_norm == "rms":
        q = _rms_norm(q, frame.params["q_norm_weight"])
        k = _rms_norm(k, frame.params["k_norm_weight"])
    if attn.rope is not None:
        q, k = _apply_rope(frame, q, k)
    if attn.qk_norm == "rms" or attn.rope is not None:
        # Transformed q and k are stored in the caller's dtype, as a kernel receives them: the
        # reference in half precision rounds where any real implementation must.
        q, k = q.to(storage).to(frame.dtype), k.to(storage).to(frame.dtype)
    return q, k


def _attend(frame: Frame, q: Tensor, k: Tensor, v: Tensor, training: bool,
            storage: torch.dtype, transform: bool = True) -> tuple[Tensor, Tensor]:
    """q [B, H, Sq, D], k [B, KVH, Sk, D], v [B, KVH, Sk, Dv] in the compute dtype; `storage`
    is the caller's dtype. `transform=False`: q and k are already normed and rotated.
    Returns (out [B, H, Sq, Dv], lse [B, H, Sq]): each row's log-sum-exp of its final scores
    (after the pipeline and the mask, the sink included; `_log_sum_exp`)."""
    attn, settings = frame.attn, frame.settings
    k, v = _zero_excluded_keys(frame, k, v)
    if transform:
        q, k = _transform_qk(frame, q, k, storage)
    group = int(settings["heads"]) // int(settings["kv_heads"])  # head h reads kv head h // group
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    score = score_pipeline(frame, float(settings["scale"]) * (q @ k.transpose(-1, -2)))
    mask = _combined_mask(ExprInterpreter(frame))
    if mask is not None:
        score = score.masked_fill(~mask, float("-inf"))
    sink = frame.params["sink"].view(1, -1, 1, 1) if attn.sinks else None
    p = _softmax(score, sink)
    record = _WEIGHTS.get()
    if record is not None:
        record.append(p.detach())
    if training and float(settings["dropout"]) > 0:
        p = F.dropout(p, float(settings["dropout"]), training=True)
    score = torch.broadcast_to(score, (*p.shape[:-1], score.shape[-1]))
    return p @ v, _log_sum_exp(score, sink)


def _run_kernel(attn, settings, state, args, inputs, sizes, training) -> tuple[Tensor, Tensor]:
    if len(args) != 3:
        raise ValueError(f"{attn.name} is a kernel-mode attention: pass (q, k, v), "
                         f"got {len(args)} tensor(s)")
    q, k, v = args
    dtype, out_dtype = _compute_dtype(q, "q")
    for name, t in (("k", k), ("v", v)):
        _compute_dtype(t, name)
    heads, kv_heads = int(settings["heads"]), int(settings["kv_heads"])
    head_dim, value_dim = int(settings["head_dim"]), int(settings["value_dim"])
    _check_shape("q", q, ("B", "heads", "Sq", "head_dim"), (None, heads, None, head_dim))
    batch, q_len = q.shape[0], q.shape[2]
    _check_shape("k", k, ("B", "kv_heads", "Sk", "head_dim"), (batch, kv_heads, None, head_dim))
    kv_len = k.shape[2]
    _check_shape("v", v, ("B", "kv_heads", "Sk", "value_dim"),
                 (batch, kv_heads, kv_len, value_dim))
    if attn.kv_cache is not None:
        return _run_decode(attn, settings, state, q, k, v, dict(inputs or {}), sizes, training)
    frame = _make_frame(attn, settings, dtype, q.device, batch, q_len, kv_len, state, inputs,
                        sizes)
    out, lse = _attend(frame, q.to(dtype), k.to(dtype), v.to(dtype), training, out_dtype)
    return out.to(out_dtype), lse


# --- decoding with a kv_cache ------------------------------------------------------------------
def _cache_tensor(what: str, value, kind: str, labels: Sequence[str],
                  sizes: Sequence[int | None]) -> Tensor:
    want = f"{kind}{_shape_text(labels, sizes)}"
    if value is None:
        raise ValueError(f"missing input `{what}`: expected {want}")
    t = torch.as_tensor(value)
    if not _DTYPE_OK[kind](t):
        raise ValueError(f"input `{what}` must be {want}, got dtype {t.dtype}")
    _check_shape(f"input `{what}`", t, labels, sizes)
    return t


def _cache_inputs(attn: ir.AttentionIR, settings, inputs: Mapping[str, Tensor], batch: int,
                  q_len: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(cache_k, cache_v, cache_len, pages), checked: lengths leave room for the q_len new
    tokens and every page a row uses exists."""
    cache = attn.kv_cache
    names = cache.argument_names()
    kv_heads, head_dim = int(settings["kv_heads"]), int(settings["head_dim"])
    first = ("num_pages", "page_size") if cache.paged else ("B", "capacity")
    sizes = (None, None) if cache.paged else (batch, None)
    ck = _cache_tensor(names[0], inputs.get(names[0]), "float", first + ("kv_heads", "head_dim"),
                       sizes + (kv_heads, head_dim))
    cv = _cache_tensor(names[1], inputs.get(names[1]), "float", first + ("kv_heads", "value_dim"),
                       tuple(ck.shape[:2]) + (kv_heads, int(settings["value_dim"])))
    lengths = _cache_tensor(names[2], inputs.get(names[2]), "int", ("B",), (batch,))
    pages = None
    capacity = ck.shape[1]
    if cache.paged:
        pages = _cache_tensor(names[3], inputs.get(names[3]), "int", ("B", "max_pages"),
                              (batch, None)).to(torch.int64)
        capacity = ck.shape[1] * pages.shape[1]
    lengths = lengths.to(device=ck.device, dtype=torch.int64)
    if batch and (lengths.min() < 0 or lengths.max() + q_len > capacity):
        raise ValueError(f"input `{names[2]}` must lie in [0, {capacity - q_len}] (capacity "
                         f"{capacity} less {q_len} new tokens)")
    return ck, cv, lengths, pages


def _cache_slot(cache_k: Tensor, pages: Tensor | None, row: int, position: int,
                what: str) -> tuple[int, int]:
    """Where position `position` of row `row` lives: (first, second) index into the cache."""
    if pages is None:
        return row, position
    page_size = cache_k.shape[1]
    page = int(pages[row, position // page_size])
    if not 0 <= page < cache_k.shape[0]:
        raise ValueError(f"input `{what}` [B, max_pages]: row {row} uses page {page}, outside "
                         f"[0, {cache_k.shape[0]})")
    return page, position % page_size


def _run_decode(attn, settings, state, q, k, v, inputs, sizes, training
                ) -> tuple[Tensor, Tensor]:
    """Decoding: q, k, v hold the Sq new tokens of every row. They sit at positions
    `len[b] + i`; the transformed new keys and the values are written into the cache there (in
    place), then the queries attend the row's keys 0 .. len[b] + Sq - 1, read from the cache."""
    dtype, out_dtype = _compute_dtype(q, "q")
    batch, q_len = q.shape[0], q.shape[2]
    if k.shape[2] != q_len:
        raise ValueError(f"k must hold the {q_len} new tokens of q (a kv_cache attention): "
                         f"expected k [B, kv_heads, Sq={q_len}, head_dim], got {tuple(k.shape)}")
    names = attn.kv_cache.argument_names()
    ck, cv, lengths, pages = _cache_inputs(attn, settings, inputs, batch, q_len)
    kv_len = int(lengths.max()) + q_len if batch else q_len
    other = {n: t for n, t in inputs.items() if n not in names}
    frame = _make_frame(attn, settings, dtype, q.device, batch, q_len, kv_len, state, other,
                        sizes)
    frame.q_positions = lengths.view(-1, 1) + torch.arange(q_len, device=q.device)
    frame.key_count = lengths + q_len
    q, k = _transform_qk(frame, q.to(dtype), k.to(dtype), q.dtype)
    keys = torch.zeros(batch, kv_len, k.shape[1], k.shape[3], dtype=dtype, device=q.device)
    values = torch.zeros(batch, kv_len, v.shape[1], v.shape[3], dtype=dtype, device=q.device)
    for row in range(batch):
        count = int(lengths[row])
        for position in range(count + q_len):
            slot = _cache_slot(ck, pages, row, position, names[-1])
            if position >= count:  # a new token: written into the cache first
                ck[slot] = k[row, :, position - count].to(ck.dtype)
                cv[slot] = v[row, :, position - count].to(cv.dtype)
            keys[row, position], values[row, position] = ck[slot], cv[slot]
    out, lse = _attend(frame, q, keys.transpose(1, 2), values.transpose(1, 2), training, q.dtype,
                       transform=False)
    return out.to(out_dtype), lse


def _weight(state: Mapping[str, Tensor], name: str, shape: tuple[int, ...],
            labels: tuple[str, ...], like: Tensor) -> Tensor:
    value = state.get(name)
    if value is None:
        raise ValueError(f"missing `{name}` in state: expected shape {_shape_text(labels, shape)}")
    _check_shape(f"`{name}`", value, labels, shape)
    return value.to(device=like.device, dtype=like.dtype)


def _linear(state, prefix: str, n_in: int, n_out: int, bias: bool, x: Tensor,
            labels: tuple[str, str]) -> Tensor:
    """`nn.Linear(n_in, n_out)` named `prefix` in `state`, applied in x's dtype."""
    w = _weight(state, f"{prefix}.weight", (n_out, n_in), labels, x)
    b = _weight(state, f"{prefix}.bias", (n_out,), labels[:1], x) if bias else None
    return F.linear(x, w, b)


def _absolute_position(frame: Frame, length: int, dim: int) -> Tensor:
    pos = frame.attn.absolute_position
    if pos.kind == "learned":
        if length > pos.max_len:
            raise ValueError(f"`x` has {length} positions, more than the learned position "
                             f"embedding's max_len={pos.max_len}")
        return frame.params["position_embedding"][:length]
    position = torch.arange(length, dtype=frame.dtype, device=frame.device)[:, None]
    i = torch.arange(0, dim, 2, dtype=frame.dtype, device=frame.device)
    angle = position / 10000.0 ** (i / dim)
    pe = torch.zeros(length, dim, dtype=frame.dtype, device=frame.device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)[:, : dim // 2]
    return pe


def _run_layer(attn, settings, state, args, inputs, sizes, training) -> tuple[Tensor, Tensor]:
    if len(args) not in (1, 2):
        raise ValueError(f"{attn.name} is a layer-mode attention: pass (x,) or (x, context), "
                         f"got {len(args)} tensor(s)")
    x, context = args[0], (args[1] if len(args) == 2 else None)
    if attn.kv_cache is not None:
        return _run_layer_decode(attn, settings, state, x, context, inputs, sizes, training)
    dtype, out_dtype = _compute_dtype(x, "x")
    dim, heads, kv_heads = (int(settings[n]) for n in ("dim", "heads", "kv_heads"))
    head_dim, value_dim = int(settings["head_dim"]), int(settings["value_dim"])
    context_dim = int(settings.get("context_dim", dim))
    _check_shape("x", x, ("B", "S", "dim"), (None, None, dim))
    batch, length = x.shape[0], x.shape[1]
    if context is None and attn.cross:
        raise ValueError(f"{attn.name} is cross-attention: pass context "
                         f"[B={batch}, S_kv, context_dim={context_dim}]")
    if context is not None:
        _compute_dtype(context, "context")
        _check_shape("context", context, ("B", "S_kv", "context_dim"),
                     (batch, None, context_dim))
    kv_len = length if context is None else context.shape[1]
    frame = _make_frame(attn, settings, dtype, x.device, batch, length, kv_len, state, inputs,
                        sizes)
    # Projections run in the input's dtype, as nn.Linear does in a user's model; the attention
    # core runs in `dtype` (float32 or wider).
    if attn.absolute_position is not None:
        x = x + _absolute_position(frame, length, dim).to(x.dtype)
    source = x if context is None else context.to(x.dtype)
    qkv = attn.qkv_bias
    q = _linear(state, "q_proj", dim, heads * head_dim, qkv, x,
                ("heads*head_dim", "dim"))
    k = _linear(state, "k_proj", context_dim, kv_heads * head_dim, qkv, source,
                ("kv_heads*head_dim", "context_dim"))
    v = _linear(state, "v_proj", context_dim, kv_heads * value_dim, qkv, source,
                ("kv_heads*value_dim", "context_dim"))
    q = q.view(batch, length, heads, head_dim).transpose(1, 2).to(dtype)
    k = k.view(batch, kv_len, kv_heads, head_dim).transpose(1, 2).to(dtype)
    v = v.view(batch, kv_len, kv_heads, value_dim).transpose(1, 2).to(dtype)
    out, lse = _attend(frame, q, k, v, training, x.dtype)
    out = out.transpose(1, 2).reshape(batch, length, -1).to(x.dtype)
    out = _linear(state, "o_proj", heads * value_dim, dim, attn.out_bias, out,
                  ("dim", "heads*value_dim"))
    return out.to(out_dtype), lse


def _run_layer_decode(attn, settings, state, x, context, inputs, sizes, training
                      ) -> tuple[Tensor, Tensor]:
    """Decoding in layer mode: q, k, v of the new tokens projected from x (in x's dtype), the
    kernel-mode decode step, then the output projection."""
    if context is not None:
        raise ValueError("a decoding attention attends its own cache: pass x only")
    _compute_dtype(x, "x")
    dim, heads, kv_heads = (int(settings[n]) for n in ("dim", "heads", "kv_heads"))
    head_dim, value_dim = int(settings["head_dim"]), int(settings["value_dim"])
    _check_shape("x", x, ("B", "S", "dim"), (None, None, dim))
    batch, length = x.shape[0], x.shape[1]
    qkv = attn.qkv_bias
    q = _linear(state, "q_proj", dim, heads * head_dim, qkv, x, ("heads*head_dim", "dim"))
    k = _linear(state, "k_proj", dim, kv_heads * head_dim, qkv, x, ("kv_heads*head_dim", "dim"))
    v = _linear(state, "v_proj", dim, kv_heads * value_dim, qkv, x,
                ("kv_heads*value_dim", "dim"))
    q = q.view(batch, length, heads, head_dim).transpose(1, 2)
    k = k.view(batch, length, kv_heads, head_dim).transpose(1, 2)
    v = v.view(batch, length, kv_heads, value_dim).transpose(1, 2)
    out, lse = _run_decode(attn, settings, state, q, k, v, dict(inputs or {}), sizes, training)
    out = out.transpose(1, 2).reshape(batch, length, -1).to(x.dtype)
    return _linear(state, "o_proj", heads * value_dim, dim, attn.out_bias, out,
                   ("dim", "heads*value_dim")), lse


# --- public entry points -----------------------------------------------------------------------
def run(attn: ir.AttentionIR, state: Mapping[str, Tensor], *args: Tensor,
        inputs: Mapping[str, Tensor] | None = None, sizes: Mapping[str, int] | None = None,
        overrides: Mapping[str, float] | None = None, training: bool = False,
        return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Run one attention on tensors, exactly as the language defines it (the reference).

    Kernel mode: `run(attn, state, q, k, v)` with q `[B, heads, Sq, head_dim]`, k
    `[B, kv_heads, Sk, head_dim]`, v `[B, kv_heads, Sk, value_dim]` -> `[B, heads, Sq, value_dim]`.
    Layer mode: `run(attn, state, x)` or `run(attn, state, x, context)` -> `[B, S, dim]`, with
    the projections in `state` (`q_proj.weight`, ...). `state` also holds every param by name;
    `inputs` the call-time tensors (an edges input `G` as `G`, `G_type`, `G_distance`).
    Computes in float64 for float64 inputs and in float32 (cast back) for float32/16 and bf16.

    `return_lse=True` returns (out, lse): lse `[B, heads, Sq]` in the compute dtype is each
    query row's log-sum-exp of its final scores (after the pipeline and the mask, the sink
    logit included as one more term; layer mode: per head, before `o_proj`), -inf for a row
    with nothing to attend. Then `probs = exp(score - lse)`: partial attentions over disjoint
    key sets merge by their lse (docs/language.md §8).

    >>> from attnspec.ir.build import build_text
    >>> spec = "attention A {\\n heads = 2\\n head_dim = 4\\n sinks = true\\n mask causal\\n}"
    >>> attn = build_text(spec).attentions[0]
    >>> q = k = v = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    >>> run(attn, {"sink": torch.zeros(2)}, q, k, v).dtype
    torch.float64
    >>> out, lse = run(attn, {"sink": torch.zeros(2)}, q, k, v, return_lse=True)
    >>> lse.shape
    torch.Size([1, 2, 5])
    """
    settings = resolve_settings(attn, overrides)
    _check_settings(settings)
    runner = _run_kernel if attn.mode == "kernel" else _run_layer
    out, lse = runner(attn, settings, state, args, inputs, sizes, training)
    return (out, lse) if return_lse else out


def evaluate_mask(attn: ir.AttentionIR, B: int, Sq: int, Sk: int,
                  inputs: Mapping[str, Tensor] | None = None,
                  sizes: Mapping[str, int] | None = None,
                  overrides: Mapping[str, float] | None = None, *,
                  state: Mapping[str, Tensor] | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """The combined mask (every `mask` ANDed with the pattern predicate) as a bool tensor
    `[B, heads, Sq, Sk]`; true = attend. `state` is needed only when a mask reads a param.

    >>> from attnspec.ir.build import build_text
    >>> spec = "attention A {\\n heads = 1\\n head_dim = 4\\n mask causal\\n}"
    >>> attn = build_text(spec).attentions[0]
    >>> evaluate_mask(attn, 1, 2, 3).int().tolist()
    [[[[1, 0, 0], [1, 1, 0]]]]
    """
    settings = resolve_settings(attn, overrides)
    _check_settings(settings)
    frame = _make_frame(attn, settings, torch.float64, torch.device(device or "cpu"), B, Sq, Sk,
                        state, inputs, sizes, params_required=False)
    mask = _combined_mask(ExprInterpreter(frame))
    shape = (B, frame.heads, Sq, Sk)
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=frame.device)
    return torch.broadcast_to(mask, shape).clone()


def mask_density(attn: ir.AttentionIR, B: int, Sq: int, Sk: int,
                 inputs: Mapping[str, Tensor] | None = None,
                 sizes: Mapping[str, int] | None = None, *,
                 device: torch.device | str | None = None) -> float:
    """The fraction of (batch, head, query, key) entries the combined mask keeps, without
    broadcasting it to [B, H, Sq, Sk] (broadcasting repeats entries evenly, so the mean of the
    unbroadcast mask is the same).

    >>> from attnspec.ir.build import build_text
    >>> spec = "attention A {\\n heads = 4\\n head_dim = 4\\n mask causal\\n}"
    >>> mask_density(build_text(spec).attentions[0], 2, 4, 4)
    0.625
    """
    settings = resolve_settings(attn)
    frame = _make_frame(attn, settings, torch.float64, torch.device(device or "cpu"), B, Sq, Sk,
                        None, inputs, sizes, params_required=False)
    mask = _combined_mask(ExprInterpreter(frame))
    if mask is None:
        return 1.0
    return float(mask.sum(dtype=torch.int64)) / mask.numel()
