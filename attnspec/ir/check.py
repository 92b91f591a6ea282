"""Semantic checks on the IR, run after build: identifier safety (contract §2/§9), setting values,
mode requirements, pattern coverage, index ranges and int32 range (contract §5).

All problems are returned at once as diagnostics; nothing here raises.

Example:
    >>> from attnspec.ir.build import build_file
    >>> from attnspec.grammar.parser import parse
    >>> from attnspec.errors import Source
    >>> text = "attention A {\\n heads = 4\\n head_dim = 8\\n mask q * k > 0\\n}"
    >>> module, _ = build_file(parse(text), Source("a", text))
    >>> [d.message for d in check_module(module)]
    ["`q * k` may overflow int32: it can reach about 2^48, past int32's ±2^31"]
"""

from __future__ import annotations

import math

from attnspec.errors import Diagnostic, Span
from attnspec.ir import nodes as ir
from attnspec.ir import scope
from attnspec.ir.consts import ConstError, eval_const, resolve_settings
from attnspec.ir.exprs import children, walk
from attnspec.ir.intervals import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    MAX_SEQ,
    Intervals,
)
from attnspec.ir.printer import expr_text


def check_module(module: ir.ModuleIR, warnings: bool = True) -> list[Diagnostic]:
    """Every problem in the module. `warnings=False` drops warnings (after build errors they
    are mostly echoes, e.g. an input unused because its use failed to build)."""
    out: list[Diagnostic] = []
    for attn in module.attentions:
        out += AttentionChecker(attn).run()
    return [d for d in out if warnings or d.severity == "error"]


def _span(s: ir.SpanIR) -> Span:
    return Span(s.line, s.col, s.end_line, s.end_col)


class AttentionChecker:
    def __init__(self, attn: ir.AttentionIR):
        self.attn = attn
        self.out: list[Diagnostic] = []
        self.values: dict | None = None

    def error(self, code: str, message: str, span: ir.SpanIR, hint: str | None = None) -> None:
        self.out.append(Diagnostic("error", message, _span(span), hint, code=code))

    def warning(self, code: str, message: str, span: ir.SpanIR, hint: str | None = None) -> None:
        self.out.append(Diagnostic("warning", message, _span(span), hint, code=code))

    def run(self) -> list[Diagnostic]:
        self._identifiers()
        self._settings()
        self._mode()
        self._groups_and_patterns()
        self._inputs()
        self._positions()
        self._decoding()
        if self.values is not None:
            intervals = Intervals(self.attn, self.values)
            for expr in self._expressions():
                self._indices(expr, intervals)
                self._int32(expr, intervals)
                self._t5_buckets(expr)
        self._unused_inputs()
        return self.out

    def _expressions(self) -> list[ir.Expr]:
        """Masks and pipeline expressions whose inputs and params were all built (after build
        errors the IR is partial)."""
        exprs = list(self.attn.masks) + [s.expr for s in self.attn.pipeline]
        return [e for e in exprs if self._declarations_built(e)]

    def _declarations_built(self, expr: ir.Expr) -> bool:
        for node in walk(expr):
            if isinstance(node, ir.InputRef) and self.attn.input(node.name) is None:
                return False
            if isinstance(node, ir.ParamRef) and self.attn.param(node.name) is None:
                return False
            if isinstance(node, ir.EdgeField) and self.attn.input(node.input) is None:
                return False
        return True

    # names ------------------------------------------------------------------------------------
    def _identifiers(self) -> None:
        a = self.attn
        if self._identifier(a.name, a.span, "attention") \
                and a.name in scope.RESERVED_BY_KIND["attention"]:
            self.error("E208",
                       f"attention name `{a.name}` is reserved by the generated module", a.span)
        declared = [(i.name, i.span, "input") for i in a.inputs]
        declared += [(p.name, p.span, "param") for p in a.params if p.origin == "param"]
        declared += [(g.name, g.span, "group") for g in a.groups]
        for name, span, what in declared:
            if self._identifier(name, span, what) and name in scope.RESERVED_BY_KIND[what]:
                self.error("E208",
                           f"{what} name `{name}` is reserved by the generated module", span,
                           hint="choose another name")
        names = {i.name for i in a.inputs}
        for i in a.inputs:
            for extra in (f"{i.name}_type", f"{i.name}_distance") if i.edges else ():
                if extra in names:
                    self.error("E208",
                               f"input `{extra}` clashes with the `{extra}=` argument of edges "
                               f"input `{i.name}`", i.span)

    def _identifier(self, name: str, span: ir.SpanIR, what: str) -> bool:
        problem = scope.identifier_problem(name)
        if problem is None and name in scope.KEYWORDS:
            problem = f"`{name}` is a keyword of the language"
        if problem is None and name.startswith("_"):
            problem = f"`{name}` starts with `_` (reserved for attnspec)"
        if problem is not None:
            self.error("E208", f"{what} name cannot become Python: {problem}", span,
                       hint="names become Python identifiers in the generated module")
            return False
        return True

    # settings ---------------------------------------------------------------------------------
    def _settings(self) -> None:
        try:
            self.values = resolve_settings(self.attn)
        except ConstError as e:
            self.error("E303", str(e), self.attn.span)
            return
        v = self.values
        for name in ("heads", "kv_heads", "head_dim", "value_dim", "dim", "context_dim",
                     "base_dim", "base_head_dim"):
            if name in v and v[name] < 1:
                self._setting_error(name, f"`{name}` must be at least 1, got {v[name]}")
        if v["kv_heads"] >= 1 and v["heads"] % v["kv_heads"]:
            self._setting_error("kv_heads", f"kv_heads = {v['kv_heads']} must divide heads = "
                                f"{v['heads']}")
        if not 0.0 <= v["dropout"] < 1.0:
            self._setting_error("dropout", f"dropout must be in [0, 1), got {v['dropout']}")
        for s in self.attn.numeric:  # NaN or inf would make every output NaN or 0, silently
            if s.type == "float" and not math.isfinite(v[s.name]):
                self._setting_error(s.name, f"`{s.name}` must be a finite number, got "
                                    f"{v[s.name]}")
        if v.get("init_std", 0.0) < 0:  # else the constructor raises
            self._setting_error("init_std", f"init_std must be at least 0, got {v['init_std']}")
        if self.attn.mode == "layer" and v["head_dim"] < 1:
            self._setting_error("head_dim", "dim // heads is 0: set head_dim or a larger dim")
        if any(v.get(n, 1) < 1 for n in ("heads", "kv_heads", "head_dim", "value_dim")):
            self.values = None  # later checks would divide by these

    def _setting_error(self, name: str, message: str) -> None:
        setting = self.attn.setting(name)
        # Every setting error is a value out of its range (E401, attnspec.rules).
        self.error("E401", message, setting.span if setting else self.attn.span)

    def _mode(self) -> None:
        a = self.attn
        if a.mode == "kernel":
            for name in ("qkv_bias", "out_bias"):
                if getattr(a, name):
                    self.error("E402", f"`{name}` needs layer mode (set `dim`)", a.span)
            if a.mup is not None:
                self.error("E402", "`mup` needs layer mode: the width multiplier is dim / base_dim",
                           a.mup.span, hint="set `dim = N`")
            if a.absolute_position is not None:
                self.error("E402", f"`position {a.absolute_position.kind}` needs layer mode: it is "
                           "added to x", a.absolute_position.span, hint="set `dim = N`")
        if a.cross and (a.groups or a.patterns):
            self.error("E402", "token groups split one sequence; they cannot be used with "
                       "cross-attention (`context_dim`)", a.groups[0].span if a.groups else a.span)
        if self.values and a.absolute_position and a.absolute_position.kind == "sinusoidal" \
                and self.values.get("dim", 0) % 2:
            self.error("E401",
                       "`position sinusoidal` needs an even `dim`", a.absolute_position.span)

    # groups -----------------------------------------------------------------------------------
    def _groups_and_patterns(self) -> None:
        a = self.attn
        for g in a.groups:
            if g.size is not None and g.size < 1:
                self.error("E401", f"group `{g.name}` must have at least 1 token", g.span)
        if not a.patterns:
            return
        as_query: dict[str, list[ir.Pattern]] = {g.name: [] for g in a.groups}
        for p in a.patterns:
            for name in p.queries:
                as_query[name].append(p)
        for g in a.groups:
            uses = as_query[g.name]
            if not uses:
                self.error("E403", f"group `{g.name}` is not a query in any pattern", g.span,
                           hint=f"add e.g. `pattern {g.name} -> {g.name}`; every group must be "
                           "a query in exactly one pattern")
            for extra in uses[1:]:
                self.error("E403",
                           f"group `{g.name}` is a query in more than one pattern", extra.span,
                           hint=f"first used on line {uses[0].span.line}; merge the key lists")

    # inputs and positions ---------------------------------------------------------------------
    def _decoding(self) -> None:
        """What a decoding attention (a `kv_cache` input) cannot hold yet: its queries sit at
        per-row positions, so per-position inputs, token groups and sequence lengths have no
        single meaning (docs/language.md, "Decoding")."""
        a, cache = self.attn, self.attn.kv_cache
        if cache is None:
            return
        self._identifier(cache.name, cache.span, "input")
        for extra in cache.argument_names():
            if a.input(extra) is not None:
                self.error("E208", f"input `{extra}` clashes with the `{extra}=` argument of "
                           f"kv_cache input `{cache.name}`", a.input(extra).span)
        if a.cross:
            self.error("E407", "a `kv_cache` holds the attention's own keys: cross-attention "
                       "(`context_dim`) cannot decode with one", cache.span,
                       hint="project the context once and run a kernel-mode attention on it")
        if a.absolute_position is not None:
            self.error("E407", f"`position {a.absolute_position.kind}` cannot decode yet: it is "
                       "added to x at positions 0, 1, ...", a.absolute_position.span,
                       hint="use `position rope`, or `bias alibi` / `t5`")
        if a.groups or a.patterns:
            self.error("E407", "token groups cannot be decoded: queries sit at per-row positions",
                       a.groups[0].span if a.groups else a.span)
        for i in a.inputs:
            if i.dtype == "edges" or any(d.kind in ("seq", "q_seq", "kv_seq") for d in i.dims):
                self.error("E407", f"input `{i.name}`: a decoding attention takes per-row inputs "
                           "(int[batch], ...) only, not per-position ones", i.span,
                           hint="positions are absolute: `q` is the query's position")
        if a.rope is not None and (a.rope.positions or a.rope.freqs):
            self.error("E407", "with a kv_cache, RoPE positions come from the cache (`q` = "
                       f"{cache.name}_len[b] + index); drop `positions =` / `freqs =`",
                       a.rope.span)
        for expr in list(a.masks) + [s.expr for s in a.pipeline]:
            for node in walk(expr):
                if isinstance(node, ir.SeqLen):
                    self.error("E407", f"`{node.name}` has no single value in a decoding "
                               "attention: each row has its own length", node.span,
                               hint="positions are absolute, so `causal` is aligned at each "
                                    "row's end (use it, not causal_bottom_right)")
                    break

    def _inputs(self) -> None:
        for i in self.attn.inputs:
            kinds = [d.kind for d in i.dims]
            if self.attn.cross and "seq" in kinds:
                self.error("E406", f"input `{i.name}`: in cross-attention use `q_seq` or `kv_seq`",
                           i.span)
            for d in i.dims:
                self._const_dim(d, i.span)
        for p in self.attn.params:
            for d in p.dims:
                self._const_dim(d, p.span)

    def _const_dim(self, dim: ir.Dim, span: ir.SpanIR) -> None:
        if dim.kind != "const" or self.values is None:
            return
        try:
            size = eval_const(dim.size, self.values)
        except ConstError as e:
            self.error("E303", str(e), span)
            return
        if not isinstance(size, int) or size < 1:
            self.error("E401", f"dimension must be a positive integer, got {size}", span)

    def _positions(self) -> None:
        rope = self.attn.rope
        if rope is None:
            return
        if self.values is not None:
            try:
                dims = eval_const(rope.dims, self.values)
            except ConstError as e:
                self.error("E303", str(e), rope.span)
                return
            if not isinstance(dims, int) or dims < 2 or dims % 2 or dims > self.values["head_dim"]:
                self.error("E401", f"rope dims must be even and in [2, head_dim = "
                           f"{self.values['head_dim']}], got {dims}", rope.span)
        if not 0 < rope.base < math.inf:
            self.error("E401", f"rope base must be positive and finite, got {rope.base}", rope.span)
        self._rope_input(rope.positions, ("int", "float"), 2, rope.span)
        self._rope_input(rope.freqs, ("float",), 3, rope.span)
        self._freqs_width(rope)

    def _rope_input(self, name: str | None, dtypes, rank: int, span: ir.SpanIR) -> None:
        if name is None:
            return
        decl = self.attn.input(name)
        if decl is None:
            return  # its declaration failed to build and was reported
        shape = "[batch, seq]" if rank == 2 else "[batch, seq, dims/2]"
        kinds = [d.kind for d in decl.dims]
        if decl.dtype not in dtypes or len(kinds) != rank or kinds[:2] != ["batch", "seq"]:
            self.error("E406", f"rope input `{name}` must be {'/'.join(dtypes)}{shape}", span)

    def _freqs_width(self, rope: ir.Rope) -> None:
        decl = self.attn.input(rope.freqs) if rope.freqs else None
        if decl is None or len(decl.dims) != 3 or self.values is None:
            return
        try:
            half = eval_const(rope.dims, self.values) // 2
            width = eval_const(decl.dims[2].size, self.values) if decl.dims[2].size else None
        except ConstError:
            return
        if width != half:
            self.error("E406",
                       f"rope freqs input `{decl.name}` must have dims / 2 = {half} angles in "
                       f"its last dimension, got {width}", decl.span)

    def _unused_inputs(self) -> None:
        used = set()
        for expr in self._expressions():
            used |= {n.name for n in walk(expr) if isinstance(n, ir.InputRef)}
            used |= {n.input for n in walk(expr) if isinstance(n, ir.EdgeField)}
        if self.attn.rope:
            used |= {self.attn.rope.positions, self.attn.rope.freqs}
        for i in self.attn.inputs:
            if i.name not in used:
                self.warning("W401", f"input `{i.name}` is never used", i.span)

    def _t5_buckets(self, expr: ir.Expr) -> None:
        """T5's bucketing divides by log(max_distance / max_exact): both must make sense."""
        for node in walk(expr):
            if not (isinstance(node, ir.Call) and node.func == "t5_bucket"):
                continue
            try:
                buckets, max_distance, both = (eval_const(a, self.values) for a in node.args[1:])
            except ConstError:
                continue
            exact = (buckets // 2 if both else buckets) // 2
            if exact < 1 or max_distance <= exact:
                self.error("E401",
                           f"t5 buckets = {buckets}, max_distance = {max_distance} leave no "
                           "log-spaced buckets", node.span,
                           hint=f"use at least {4 if both else 2} buckets and max_distance > "
                           f"{max(exact, 1)}")

    # index ranges -----------------------------------------------------------------------------
    def _indices(self, expr: ir.Expr, intervals: Intervals) -> None:
        for node in walk(expr):
            if isinstance(node, (ir.InputRef, ir.ParamRef)):
                decl = self.attn.input(node.name) or self.attn.param(node.name)
                for dim, index in zip(decl.dims, node.indices):
                    problem = self._index_problem(dim, index, intervals)
                    if problem:
                        self.error("E404", f"`{node.name}`: {problem}", index.span,
                                   hint=_index_hint(dim.kind))

    def _index_problem(self, dim: ir.Dim, index: ir.Expr, iv: Intervals) -> str | None:
        kind = dim.kind
        if kind == "batch":
            return None if _is_index(index, "b") else "a batch dimension is indexed with `b`"
        if kind in ("seq", "q_seq", "kv_seq"):
            allowed = {"seq": ("q", "k"), "q_seq": ("q",), "kv_seq": ("k",)}[kind]
            if any(_is_index(index, n) for n in allowed) or _clamped_to_seq(index, kind, iv):
                return None
            return f"a `{kind}` dimension is indexed with {' or '.join(allowed)} (or a clamp)"
        if kind == "heads":
            return None if _is_index(index, "h") else "a heads dimension is indexed with `h`"
        if kind == "kv_heads":
            return None if self._kv_head_index(index) else \
                "a kv_heads dimension is indexed with `h // (heads // kv_heads)`"
        try:
            size = eval_const(dim.size, self.values)
        except ConstError:  # reported at the declaration (_const_dim)
            return None
        if not float(size).is_integer():
            return None  # a follow-on of the declaration's error (_const_dim)
        lo, hi = iv.of(index) or (None, None)
        if lo is None or lo < 0 or hi > size - 1:
            return (f"index `{expr_text(index)}` may be out of range 0..{int(size) - 1}: "
                    f"{_reach(lo, hi, int(size) - 1)}")
        return None

    def _kv_head_index(self, index: ir.Expr) -> bool:
        if _is_index(index, "h"):
            kv = self.attn.setting("kv_heads")
            return kv is not None and not kv.explicit
        if not (isinstance(index, ir.Binary) and index.op == "//" and _is_index(index.left, "h")):
            return False
        r = index.right
        return (isinstance(r, ir.Binary) and r.op == "//" and _is_setting(r.left, "heads")
                and _is_setting(r.right, "kv_heads"))

    def _int32(self, expr: ir.Expr, intervals: Intervals) -> None:
        for node in _post_order(expr):
            if node.type != "int":
                continue
            r = intervals.of(node)
            if r is None or INT64_MIN in r or INT64_MAX in r:
                continue  # call-time values: unknown, no claim (see intervals.py)
            if r[0] < INT32_MIN or r[1] > INT32_MAX:
                worst = r[1] if r[1] > INT32_MAX else r[0]
                self.error("E405", f"`{expr_text(node)}` may overflow int32: it can reach "
                           f"{_power_of_two(worst)}, past int32's ±2^31", node.span,
                           hint="kernels use int32 indices; sequences may be up to 2^24 long")
                return


def _post_order(expr: ir.Expr) -> list[ir.Expr]:
    out: list[ir.Expr] = []

    def visit(node: ir.Expr) -> None:
        for child in children(node):
            visit(child)
        out.append(node)

    visit(expr)
    return out


def _is_index(expr: ir.Expr, name: str) -> bool:
    return isinstance(expr, ir.IndexVar) and expr.name == name


def _is_setting(expr: ir.Expr, name: str) -> bool:
    return isinstance(expr, ir.SettingRef) and expr.name == name


def _clamped_to_seq(index: ir.Expr, kind: str, iv: Intervals) -> bool:
    """`clamp(e, lo, L - c)` with lo >= 0, c >= 1 and L the dimension's length."""
    if not (isinstance(index, ir.Call) and index.func == "clamp"):
        return False
    _, lo, hi = index.args
    lo_range = iv.of(lo)
    lengths = {"seq": ("q_len", "kv_len"), "q_seq": ("q_len",), "kv_seq": ("kv_len",)}[kind]
    return (lo_range is not None and lo_range[0] >= 0 and isinstance(hi, ir.Binary)
            and hi.op == "-" and isinstance(hi.left, ir.SeqLen) and hi.left.name in lengths
            and isinstance(hi.right, ir.Const) and hi.right.value >= 1)


# Bounds this large come from the longest sequence the checker allows (2^24), not from the spec:
# they are said in words rather than printed as 16777215.
_SEQUENCE_SCALE = MAX_SEQ // 2


def _reach(lo: int | None, hi: int | None, top: int) -> str:
    """What an index can reach, in the user's terms."""
    if lo is None:
        return "its value is only known at call time"
    parts = []
    if lo < 0:
        parts.append("it can be negative" if lo <= -_SEQUENCE_SCALE else f"it can be {lo}")
    if hi > top:
        parts.append("it grows with the sequence length" if hi >= _SEQUENCE_SCALE
                     else f"it can reach {hi}")
    return " and ".join(parts)


def _power_of_two(value: int) -> str:
    """`about -2^48` for a value too long to read."""
    if abs(value) < 2**32:
        return str(value)
    sign = "-" if value < 0 else ""
    return f"about {sign}2^{round(math.log2(abs(value)))}"


def _index_hint(kind: str) -> str | None:
    return {
        "const": "clamp it, e.g. `clamp(e, 0, N - 1)`",
        "seq": "use `q` or `k`, or `clamp(e, 0, q_len - 1)`",
        "kv_heads": "query head h uses kv head `h // (heads // kv_heads)`",
    }.get(kind)
