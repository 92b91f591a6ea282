"""AST -> IR for whole files and attention blocks: settings, groups, inputs, params, the
score pipeline, positions, muP. Expressions are built by `expr_builder.ExprBuilder`.

Example:
    >>> m = build_text("attention A {\\n dim = 64\\n heads = 4\\n mask causal\\n}")
    >>> [s.name for s in m.attentions[0].numeric][:3]
    ['heads', 'dim', 'kv_heads']
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from attnspec.errors import AttnSpecError, Diagnostic, Source, Span, closest, did_you_mean
from attnspec.grammar import ast
from attnspec.grammar.parser import parse
from attnspec.ir import nodes as ir
from attnspec.ir import scope
from attnspec.ir.consts import ConstError, eval_const, evaluate_settings
from attnspec.ir.expr_builder import (
    AttnScope,
    Budget,
    Diagnostics,
    ExprBuilder,
    Macro,
    check_expansion,
    span_ir,
    stdlib_file,
)


def macro_table(file: ast.File, diags: Diagnostics) -> dict[str, Macro]:
    """Standard library first, then the file's lets (which shadow, with a warning)."""
    table = {let.name: Macro(let, True) for let in stdlib_file().lets}
    seen: set[str] = set()
    for let in file.lets:
        if let.name in seen:
            diags.error("E207", f"`let {let.name}` is defined twice", let.name_span)
            continue
        seen.add(let.name)
        for param in let.params or ():  # in the body the word would mean the keyword
            if param.name in scope.KEYWORDS:
                diags.error("E208", f"`{param.name}` is a keyword and cannot name a parameter",
                            param.span)
        if let.name in table:
            diags.warning("W201", f"`let {let.name}` shadows the standard library's `{let.name}`",
                          let.name_span)
        clash = _let_clash(let.name)
        if clash:
            diags.error("E208", clash, let.name_span)
            continue
        table[let.name] = Macro(let, False)
    return table


def _let_clash(name: str) -> str | None:
    if name in scope.KEYWORDS:
        return f"`{name}` is a keyword"
    if name in scope.ALL_SETTINGS or name in scope.ALL_MUP_SETTINGS:
        return f"`{name}` is a setting name; a `let` of that name would never be used"
    if name in scope.INDEX_NAMES or name in scope.SEQ_LEN_NAMES:
        return f"`{name}` is a built-in name and cannot be redefined"
    if name in scope.BUILTINS or name in scope.INTRINSIC_MACROS:
        return f"`{name}` is a builtin function and cannot be redefined"
    return None


def _init_problem(kind: str, args: list[float]) -> str | None:
    """Why `kind(*args)` cannot initialise a param (torch would raise building the module)."""
    if not all(math.isfinite(a) for a in args):
        return f"`{kind}` takes finite numbers, got {', '.join(map(str, args))}"
    if kind == "normal" and args[0] < 0:
        return f"`normal(std)` needs std >= 0, got {args[0]}"
    if kind == "uniform" and args[0] > args[1]:
        return f"`uniform(lo, hi)` needs lo <= hi, got {args[0]} > {args[1]}"
    return None


def build_file(file: ast.File, source: Source) -> tuple[ir.ModuleIR, list[Diagnostic]]:
    """Build the IR of a parsed file; returns (module, diagnostics). With errors, the module
    holds what could be built (for further checking) and must not be compiled."""
    diags = Diagnostics()
    macros = macro_table(file, diags)
    if check_expansion(file, macros, diags):  # sized first: building a blow-up takes minutes
        return ir.ModuleIR(source_name=source.name, source_text=source.text,
                           attentions=()), diags.items
    attentions = []
    names: set[str] = set()
    budget = Budget()  # MAX_FILE_NODES for all attentions together
    for attention in file.attentions:
        if attention.name in names:
            diags.error("E207",
                        f"attention `{attention.name}` is defined twice", attention.name_span)
        names.add(attention.name)
        built = build_attention(attention, macros, diags, budget)
        if built is not None:
            attentions.append(built)
    if not file.attentions and not diags.has_errors:
        diags.warning("W202", "no `attention` block in this file", Span(1, 1, 1, 2))
    module = ir.ModuleIR(source_name=source.name, source_text=source.text,
                         attentions=tuple(attentions))
    return module, diags.items


def build_text(text: str, source_name: str = "<spec>",
               warnings: list[Diagnostic] | None = None) -> ir.ModuleIR:
    """Parse, build and check spec text; raises `AttnSpecError` with every error found.
    Warnings are appended to `warnings` when a list is given."""
    from attnspec.ir.check import check_module

    source = Source(source_name, text)
    module, diagnostics = build_file(parse(text, source_name), source)
    built_ok = not any(d.severity == "error" for d in diagnostics)
    diagnostics = _unique(diagnostics + check_module(module, warnings=built_ok))
    if any(d.severity == "error" for d in diagnostics):
        raise AttnSpecError(diagnostics, source)
    if warnings is not None:
        warnings.extend(diagnostics)
    return module


def _unique(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Sorted by position; a macro that uses its argument twice reports its error once."""
    seen: dict[tuple, Diagnostic] = {}
    for d in diagnostics:
        seen.setdefault((d.span, d.severity, d.message), d)
    return sorted(seen.values(), key=Diagnostic.order)


# --- attention blocks --------------------------------------------------------------------------
_STATEMENT_KINDS = {
    ast.Setting: "setting", ast.Tokens: "tokens", ast.Pattern: "pattern", ast.InputDecl: "input",
    ast.ParamDecl: "param", ast.Mask: "mask", ast.Bias: "bias", ast.ScoreAssign: "score",
    ast.Position: "position", ast.Mup: "mup",
}


def build_attention(node: ast.Attention, macros: Mapping[str, Macro], diags: Diagnostics,
                    budget: Budget | None = None) -> ir.AttentionIR | None:
    """Build one attention block; errors go to `diags`. What could not be built is left out,
    so the checker can still report the rest; None only when the settings are unusable.
    `budget` counts expanded nodes across the attentions of one file."""
    return _AttentionBuilder(node, macros, diags, budget).build()


class _AttentionBuilder:
    def __init__(self, node: ast.Attention, macros: Mapping[str, Macro], diags: Diagnostics,
                 budget: Budget | None = None):
        self.node = node
        self.diags = diags
        self.by_kind: dict[str, list] = {k: [] for k in _STATEMENT_KINDS.values()}
        for stmt in node.body:
            self.by_kind[_STATEMENT_KINDS[type(stmt)]].append(stmt)
        self.misspelt: dict[str, ast.Setting] = {}  # setting name -> a setting that misspells it
        self.settings = self._unique_settings(self.by_kind["setting"], scope.ALL_SETTINGS)
        mups = self.by_kind["mup"]
        self.mup_settings = self._unique_settings(mups[0].settings, scope.ALL_MUP_SETTINGS) \
            if mups else {}
        self.layer = "dim" in self.settings
        self.sinks = self._flag(self.settings, "sinks", False)
        self.qk_norm = self._enum("qk_norm")
        self.scope = AttnScope(settings=self._numeric_names(), inputs=self._declared("input"),
                               params=self._declared("param"), groups=self._groups_by_name())
        self.exprs = ExprBuilder(macros, self.scope, diags, budget)

    # declarations -----------------------------------------------------------------------------
    def _unique_settings(self, stmts, allowed: tuple[str, ...]) -> dict[str, ast.Setting]:
        found: dict[str, ast.Setting] = {}
        for s in stmts:
            if s.name not in allowed:
                meant = closest(s.name, allowed)
                if meant is not None:  # a later "needs `heads = N`" follows from this typo
                    self.misspelt.setdefault(meant, s)
                self.diags.error("E204", f"unknown setting `{s.name}`", s.name_span,
                                 hint=f"did you mean `{meant}`?" if meant
                                 else f"settings: {', '.join(allowed)}")
            elif s.name in found:
                self.diags.error("E207", f"setting `{s.name}` is set twice", s.name_span,
                                 hint=f"first set on line {found[s.name].span.line}")
            else:
                found[s.name] = s
        return found

    def _missing_setting(self, name: str, wanted: str) -> None:
        """A required setting is missing; if a misspelling of it was set, this error follows
        from that one and is listed after it."""
        typo = self.misspelt.get(name)
        hint = cause = None
        if typo is not None:
            hint = f"line {typo.span.line} sets `{typo.name}`: did you mean `{name}`?"
            cause = typo.name_span
        self.diags.error("E209",
                         f"attention `{self.node.name}` needs {wanted}", self.node.name_span,
                         hint=hint, cause=cause)

    def _numeric_names(self) -> dict[str, str]:
        names = {"heads": "int", "kv_heads": "int", "head_dim": "int", "value_dim": "int",
                 "scale": "float", "dropout": "float"}
        if self.layer:
            names["dim"] = "int"
        if "context_dim" in self.settings:
            names["context_dim"] = "int"
        if self.by_kind["mup"]:
            names.update(base_dim="int", base_head_dim="int", attn_mult="float",
                         init_std="float")
        return names

    def _declared(self, kind: str) -> dict:
        found: dict = {}
        for decl in self.by_kind[kind]:
            if decl.name in found:
                self.diags.error("E207", f"{kind} `{decl.name}` is declared twice", decl.name_span,
                                 hint=f"first declared on line {found[decl.name].span.line}")
                continue
            found[decl.name] = decl
        return found

    def _groups_by_name(self) -> dict[str, ast.GroupDecl]:
        tokens = self.by_kind["tokens"]
        for extra in tokens[1:]:
            self.diags.error("E207", "at most one `tokens` block is allowed", extra.span)
        groups: dict[str, ast.GroupDecl] = {}
        for g in tokens[0].groups if tokens else ():
            if g.name in groups:
                self.diags.error("E207", f"group `{g.name}` is declared twice", g.span)
            groups[g.name] = g
        return groups

    # the whole block --------------------------------------------------------------------------
    def build(self) -> ir.AttentionIR | None:
        self._check_names()
        numeric = self._numeric()
        self.values = self._setting_values(numeric)
        inputs = tuple(filter(None, (self._input(d) for d in self.by_kind["input"]
                                     if not _is_cache_decl(d))))
        kv_cache = self._kv_cache()
        params = [p for p in (self._param(d) for d in self.by_kind["param"]) if p]
        masks = tuple(filter(None, (self._mask(m) for m in self.by_kind["mask"])))
        pipeline = tuple(filter(None, (self._step(s) for s in self._pipeline_statements())))
        rope, absolute = self._positions()
        params += self._implicit_params(absolute)
        if numeric is None:
            return None
        return ir.AttentionIR(
            name=self.node.name, mode="layer" if self.layer else "kernel",
            cross="context_dim" in self.settings, numeric=numeric,
            qk_norm=self.qk_norm, backend=self._enum("backend"),
            qkv_bias=self._flag(self.settings, "qkv_bias", False),
            out_bias=self._flag(self.settings, "out_bias", False),
            sinks=self.sinks,
            groups=self._groups(), patterns=self._patterns(), inputs=inputs,
            params=tuple(params), masks=masks, pipeline=pipeline, rope=rope,
            absolute_position=absolute, mup=self._mup(), span=span_ir(self.node.name_span),
            kv_cache=kv_cache)

    def _check_names(self) -> None:
        inputs, params = self.scope.inputs, self.scope.params
        for name in set(inputs) & set(params):
            self.diags.error("E207", f"`{name}` is declared as both an input and a param",
                             params[name].name_span)
        for name, decl in list(inputs.items()) + list(params.items()):
            if name in scope.INDEX_NAMES or name in scope.SEQ_LEN_NAMES or name in scope.BUILTINS:
                self.diags.error("E208", f"`{name}` is a built-in name", decl.name_span)

    # settings ---------------------------------------------------------------------------------
    def _numeric(self) -> tuple[ir.NumericSetting, ...] | None:
        exprs: dict[str, ir.Expr] = {}
        explicit: set[str] = set()
        for name in self.scope.settings:
            stmt = self.settings.get(name) or self.mup_settings.get(name)
            if stmt is None:
                continue
            built = self.exprs.build(stmt.value, "const")
            if built is None:
                return None  # reported; the other settings may depend on it
            exprs[name] = built
            explicit.add(name)
        if "heads" not in self.settings:
            self._missing_setting("heads", "`heads = N`")
            return None
        if not self.layer and "head_dim" not in self.settings:
            self._missing_setting("head_dim", "`head_dim = N` (or `dim` for layer mode)")
            return None
        if self.by_kind["mup"] and "base_dim" not in self.mup_settings:
            self.diags.error("E209", "`mup` needs `base_dim = N`", self.by_kind["mup"][0].span)
            return None
        for name, default in self._defaults(exprs).items():
            exprs.setdefault(name, default)
        return self._ordered(exprs, explicit)

    def _defaults(self, exprs: dict[str, ir.Expr]) -> dict[str, ir.Expr]:
        sp = span_ir(self.node.name_span)

        def ref(name: str) -> ir.SettingRef:
            return ir.SettingRef(name=name, type=self.scope.settings[name], span=sp)

        def const(value) -> ir.Const:
            return ir.Const(value=value, type="float" if isinstance(value, float) else "int",
                            span=sp)

        def binary(op: str, a: ir.Expr, b: ir.Expr, kind: str) -> ir.Binary:
            return ir.Binary(op=op, left=a, right=b, type=kind, span=sp)

        def sqrt(a: ir.Expr) -> ir.Call:
            return ir.Call(func="sqrt", args=(a,), type="float", span=sp)

        defaults: dict[str, ir.Expr] = {"kv_heads": ref("heads"), "value_dim": ref("head_dim"),
                                        "dropout": const(0.0)}
        if self.layer:
            defaults["head_dim"] = binary("//", ref("dim"), ref("heads"), "int")
        defaults["scale"] = binary("/", const(1.0), sqrt(ref("head_dim")), "float")
        if self.by_kind["mup"]:
            head_dim = exprs.get("head_dim", defaults.get("head_dim"))
            defaults["base_head_dim"] = _substitute(head_dim, "dim", ref("base_dim"))
            defaults["attn_mult"] = const(1.0)
            defaults["init_std"] = const(0.02)
            mult_root = binary("*", ref("attn_mult"), sqrt(ref("base_head_dim")), "float")
            defaults["scale"] = binary("/", mult_root, ref("head_dim"), "float")
        return defaults

    def _ordered(self, exprs: dict[str, ir.Expr],
                 explicit: set[str]) -> tuple[ir.NumericSetting, ...] | None:
        """Settings in dependency order; a cycle is an error."""
        order: list[str] = []
        state: dict[str, str] = {}

        def visit(name: str, chain: tuple[str, ...]) -> bool:
            if state.get(name) == "done":
                return True
            if state.get(name) == "active":
                cycle = " -> ".join(chain[chain.index(name):] + (name,))
                self.diags.error("E210", f"settings depend on each other: {cycle}",
                                 self._setting_span(name))
                return False
            state[name] = "active"
            deps = [n.name for n in _setting_refs(exprs[name])]
            ok = all(visit(d, chain + (name,)) for d in deps if d in exprs)
            state[name] = "done"
            order.append(name)
            return ok

        if not all(visit(name, ()) for name in exprs):
            return None
        return tuple(self._numeric_setting(n, exprs[n], n in explicit) for n in order)

    def _numeric_setting(self, name: str, expr: ir.Expr, explicit: bool) -> ir.NumericSetting:
        kind = self.scope.settings[name]
        if expr.type == "bool" or (kind == "int" and expr.type == "float"):
            self.diags.error("E308",
                             f"`{name}` must be {'an integer' if kind == 'int' else 'a number'}"
                             f", got {expr.type}", self._setting_span(name))
        return ir.NumericSetting(name=name, expr=expr, type=kind, explicit=explicit,
                                 span=span_ir(self._setting_span(name)))

    @staticmethod
    def _setting_values(numeric: tuple[ir.NumericSetting, ...] | None) -> dict:
        """The spec's own setting values, for constant arguments (`edges(types = ...)`, inits,
        `learned(max_len = ...)`); empty when they cannot be evaluated (the checker says why)."""
        try:
            return evaluate_settings(numeric or ())
        except ConstError:
            return {}

    def _setting_span(self, name: str) -> Span:
        stmt = self.settings.get(name) or self.mup_settings.get(name)
        return stmt.span if stmt else self.node.name_span

    def _enum(self, name: str) -> str:
        choices = scope.enum_choices(name)
        stmt = self.settings.get(name)
        if stmt is None:
            return choices[0]
        if isinstance(stmt.value, ast.Name) and stmt.value.name in choices:
            return stmt.value.name
        got = stmt.value.name if isinstance(stmt.value, ast.Name) else None
        self.diags.error("E308", f"`{name}` must be one of {', '.join(choices)}", stmt.value.span,
                         hint=did_you_mean(got, choices) if got else None)
        return choices[0]

    def _flag(self, settings: dict[str, ast.Setting], name: str, default: bool) -> bool:
        stmt = settings.get(name)
        if stmt is None:
            return default
        if isinstance(stmt.value, ast.Bool):
            return stmt.value.value
        self.diags.error("E308", f"`{name}` must be `true` or `false`", stmt.value.span)
        return default

    # groups and patterns ----------------------------------------------------------------------
    def _groups(self) -> tuple[ir.Group, ...]:
        return tuple(ir.Group(name=g.name, size=g.size, span=span_ir(g.span))
                     for g in self.scope.groups.values())

    def _patterns(self) -> tuple[ir.Pattern, ...]:
        patterns = []
        for p in self.by_kind["pattern"]:
            names = [self._group_ref(r) for r in p.queries + p.keys]
            if all(names):
                patterns.append(ir.Pattern(queries=tuple(r.name for r in p.queries),
                                           keys=tuple(r.name for r in p.keys),
                                           span=span_ir(p.span)))
        return tuple(patterns)

    def _group_ref(self, ref: ast.NameRef) -> str | None:
        if ref.name in self.scope.groups:
            return ref.name
        hint = did_you_mean(ref.name, self.scope.groups) or (
            None if self.scope.groups else "declare groups in a `tokens { ... }` block")
        self.diags.error("E203", f"unknown token group `{ref.name}`", ref.span, hint=hint)
        return None

    # inputs and params ------------------------------------------------------------------------
    def _input(self, decl: ast.InputDecl) -> ir.InputDecl | None:
        t = decl.type
        if isinstance(t, ast.CallType):
            return self._edges_input(decl, t)
        if t.base not in ("int", "float", "bool"):
            self.diags.error("E206", f"unknown input type `{t.base}`", t.span,
                             hint=did_you_mean(t.base, ("int", "float", "bool", "edges")))
            return None
        dims = self._dims(t.dims, input_dims=True)
        if dims is None:
            return None
        return ir.InputDecl(name=decl.name, dtype=t.base, dims=dims, span=span_ir(decl.span))

    def _kv_cache(self) -> ir.KVCache | None:
        """The one `input NAME: kv_cache(paged = false)` of a decoding attention, if any."""
        decls = [d for d in self.by_kind["input"] if _is_cache_decl(d)]
        for extra in decls[1:]:
            self.diags.error("E207", "a second `kv_cache` input", extra.span,
                             hint="an attention reads one cache (one per layer: one module "
                                  "instance per layer)")
        if not decls:
            return None
        decl = decls[0]
        args = self._const_args(decl.type.args, {"paged": False}, "kv_cache", decl.type.span)
        if args is None:
            return None
        if not isinstance(args["paged"], bool):
            self.diags.error("E308", "`kv_cache(paged = ...)` must be true or false",
                             decl.type.span)
            return None
        return ir.KVCache(name=decl.name, paged=args["paged"], span=span_ir(decl.span))

    def _edges_input(self, decl: ast.InputDecl, t: ast.CallType) -> ir.InputDecl | None:
        if t.base != "edges":
            self.diags.error("E206", f"unknown input type `{t.base}`", t.span,
                             hint=did_you_mean(t.base, ("edges", "kv_cache", "int", "float",
                                                        "bool"))
                             or "input types: int[...], float[...], bool[...], edges(...), "
                                "kv_cache")
            return None
        args = self._const_args(t.args, {"types": 1, "max_distance": 1, "self_loops": False},
                                "edges", t.span)
        if args is None:
            return None
        for key in ("types", "max_distance"):
            if not isinstance(args[key], int) or isinstance(args[key], bool) or args[key] < 1:
                self.diags.error("E401", f"`edges({key} = ...)` must be a positive integer", t.span)
                return None
        if not isinstance(args["self_loops"], bool):
            self.diags.error("E308", "`edges(self_loops = ...)` must be true or false", t.span)
            return None
        edges = ir.EdgesSpec(types=args["types"], max_distance=args["max_distance"],
                             self_loops=args["self_loops"])
        return ir.InputDecl(name=decl.name, dtype="edges", dims=(), edges=edges,
                            span=span_ir(decl.span))

    def _const_args(self, args: tuple[ast.Arg, ...], defaults: dict, what: str,
                    span: Span) -> dict | None:
        """Keyword-or-positional constant arguments, evaluated with default settings."""
        names = list(defaults)
        values = dict(defaults)
        for i, arg in enumerate(args):
            key = arg.name or (names[i] if i < len(names) else None)
            if key not in defaults:
                self.diags.error("E205", f"unknown argument `{arg.name or i + 1}` for `{what}`",
                                 arg.span, hint=did_you_mean(arg.name or "", names)
                                 or f"arguments: {', '.join(names)}")
                return None
            value = self._const_value(arg.value)
            if value is None:
                return None
            values[key] = value
        return values

    def _const_value(self, expr: ast.Expr):
        if isinstance(expr, ast.Bool):
            return expr.value
        built = self.exprs.build(expr, "const")
        if built is None:
            return None
        try:
            return eval_const(built, self.values)
        except ConstError as e:
            self.diags.error("E303", str(e), expr.span)
            return None

    def _dims(self, dims: tuple[ast.Expr, ...], input_dims: bool) -> tuple[ir.Dim, ...] | None:
        out = []
        allowed = ("batch", "seq", "q_seq", "kv_seq", "heads", "kv_heads") if input_dims \
            else ("heads", "kv_heads")
        for d in dims:
            if isinstance(d, ast.Name) and d.name in allowed:
                out.append(ir.Dim(kind=d.name))
                continue
            if isinstance(d, ast.Name) and d.name in ("batch", "seq", "q_seq", "kv_seq"):
                self.diags.error("E406", f"a param cannot have a `{d.name}` dimension", d.span,
                                 hint="params are fixed-size: use constants, heads, kv_heads")
                return None
            size = self.exprs.build(d, "const")
            if size is None:
                return None
            if size.type != "int":
                self.diags.error("E301", f"a dimension must be an integer, got {size.type}", d.span)
                return None
            out.append(ir.Dim(kind="const", size=size))
        return tuple(out)

    def _param(self, decl: ast.ParamDecl) -> ir.ParamDecl | None:
        t = decl.type
        if not isinstance(t, ast.TensorType) or t.base != "float":
            self.diags.error("E301", "a param must be `float[DIMS]`", t.span)
            return None
        dims = self._dims(t.dims, input_dims=False)
        init = self._init(decl.init)
        if dims is None or init is None:
            return None
        if init.kind == "alibi_slopes" and [d.kind for d in dims] != ["heads"]:
            self.diags.error("E406",
                             "`alibi_slopes` initialises a `float[heads]` param", decl.init.span)
            return None
        return ir.ParamDecl(name=decl.name, dims=dims, init=init, origin="param",
                            span=span_ir(decl.span))

    def _init(self, expr: ast.Expr) -> ir.Init | None:
        name = expr.name if isinstance(expr, ast.Name) else \
            expr.func if isinstance(expr, ast.Call) else None
        if name not in scope.INIT_KINDS:
            self.diags.error("E206", "unknown initialiser", expr.span,
                             hint=did_you_mean(name or "", scope.INIT_KINDS)
                             or "zeros, ones, normal(std), uniform(lo, hi), alibi_slopes")
            return None
        args = expr.args if isinstance(expr, ast.Call) else ()
        if len(args) != scope.INIT_KINDS[name] or any(a.name for a in args):
            self.diags.error("E302",
                             f"`{name}` takes {scope.INIT_KINDS[name]} positional argument(s)",
                             expr.span)
            return None
        values = [self._const_value(a.value) for a in args]
        if any(v is None or isinstance(v, bool) for v in values):
            return None
        problem = _init_problem(name, [float(v) for v in values])
        if problem is not None:
            self.diags.error("E401", problem, expr.span)
            return None
        return ir.Init(kind=name, args=tuple(float(v) for v in values))

    # masks and the score pipeline -------------------------------------------------------------
    def _mask(self, stmt: ast.Mask) -> ir.Expr | None:
        built = self.exprs.build(stmt.expr, "pair")
        if built is not None and built.type != "bool":
            self.diags.error("E301", f"a mask must be bool, got {built.type}", stmt.expr.span,
                             hint="compare it, e.g. `q - k <= 128`, or use it as a `bias`")
            return None
        return built

    def _pipeline_statements(self) -> list:
        return [s for s in self.node.body if isinstance(s, (ast.Bias, ast.ScoreAssign))]

    def _step(self, stmt) -> ir.Step | None:
        is_bias = isinstance(stmt, ast.Bias)
        built = self.exprs.build(stmt.expr, "pair" if is_bias else "score")
        if built is None:
            return None
        if built.type == "bool":
            what = "a bias" if is_bias else "a score"
            self.diags.error("E301", f"{what} must be a number, got bool", stmt.expr.span,
                             hint="use `mask` for bool conditions, or `where(c, 0.0, -inf)`")
            return None
        return ir.Step(kind="bias" if is_bias else "assign", expr=built, span=span_ir(stmt.span))

    # positions --------------------------------------------------------------------------------
    def _positions(self) -> tuple[ir.Rope | None, ir.AbsolutePosition | None]:
        rope = absolute = None
        for stmt in self.by_kind["position"]:
            if stmt.kind not in scope.POSITION_KINDS:
                self.diags.error("E206", f"unknown position encoding `{stmt.kind}`", stmt.kind_span,
                                 hint=did_you_mean(stmt.kind, scope.POSITION_KINDS)
                                 or "rope, sinusoidal, learned; relative encodings are biases")
            elif stmt.kind == "rope":
                rope = self._once(rope, stmt, self._rope)
            else:
                absolute = self._once(absolute, stmt, self._absolute)
        return rope, absolute

    def _once(self, previous, stmt: ast.Position, build):
        if previous is not None:
            self.diags.error("E207", f"a second `position {stmt.kind}`", stmt.span,
                             hint="one rotary and one absolute encoding at most")
            return previous
        return build(stmt)

    def _rope(self, stmt: ast.Position) -> ir.Rope | None:
        sp = span_ir(stmt.span)
        values: dict = {"base": 10000.0, "interleaved": False}
        tensors: dict[str, str | None] = {"positions": None, "freqs": None}
        dims: ir.Expr = ir.SettingRef(name="head_dim", type="int", span=sp)
        for i, arg in enumerate(stmt.args):
            key = arg.name or (scope.ROPE_ARGS[i] if i < len(scope.ROPE_ARGS) else None)
            if key not in scope.ROPE_ARGS:
                self.diags.error("E205", f"unknown argument `{arg.name}` for `rope`", arg.span,
                                 hint=did_you_mean(arg.name or "", scope.ROPE_ARGS))
                return None
            if key in tensors:
                tensors[key] = self._rope_input(arg, key)
            elif key == "dims":
                dims = self.exprs.build(arg.value, "const") or dims
            else:
                values[key] = self._const_value(arg.value)
        if tensors["positions"] and tensors["freqs"]:
            self.diags.error("E302", "`rope` takes `positions` or `freqs`, not both", stmt.span)
        if not isinstance(values["interleaved"], bool):
            self.diags.error("E308", "`rope(interleaved = ...)` must be true or false", stmt.span)
            return None
        if isinstance(values["base"], bool) or not isinstance(values["base"], (int, float)):
            return None
        return ir.Rope(base=float(values["base"]), dims=dims, interleaved=values["interleaved"],
                       positions=tensors["positions"], freqs=tensors["freqs"], span=sp)

    def _rope_input(self, arg: ast.Arg, key: str) -> str | None:
        if not isinstance(arg.value, ast.Name) or arg.value.name not in self.scope.inputs:
            name = arg.value.name if isinstance(arg.value, ast.Name) else ""
            self.diags.error("E304", f"`rope({key} = ...)` must name an input", arg.value.span,
                             hint=did_you_mean(name, self.scope.inputs)
                             or f"declare e.g. `input {name or 'pos'}: int[batch, seq]`")
            return None
        return arg.value.name

    def _absolute(self, stmt: ast.Position) -> ir.AbsolutePosition | None:
        if stmt.kind == "sinusoidal":
            if stmt.args:
                self.diags.error("E302", "`sinusoidal` takes no arguments", stmt.span)
            return ir.AbsolutePosition(kind="sinusoidal", span=span_ir(stmt.span))
        args = self._const_args(stmt.args, {"max_len": None}, "learned", stmt.span)
        if args is None:
            return None
        max_len = args["max_len"]
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            self.diags.error("E209",
                             "`learned` needs `max_len = N` (a positive integer)", stmt.span)
            return None
        return ir.AbsolutePosition(kind="learned", max_len=max_len, span=span_ir(stmt.span))

    def _implicit_params(self, absolute: ir.AbsolutePosition | None) -> list[ir.ParamDecl]:
        sp = span_ir(self.node.name_span)
        out = list(self.scope.implicit_params.values())
        if self.sinks:
            out.append(ir.ParamDecl(name="sink", dims=(ir.Dim(kind="heads"),),
                                    init=ir.Init(kind="zeros"), origin="sinks", span=sp))
        if self.qk_norm == "rms":
            head_dim = ir.Dim(kind="const", size=ir.SettingRef(name="head_dim", type="int",
                                                               span=sp))
            for name in ("q_norm_weight", "k_norm_weight"):
                out.append(ir.ParamDecl(name=name, dims=(head_dim,), init=ir.Init(kind="ones"),
                                        origin="qk_norm", span=sp))
        if absolute is not None and absolute.kind == "learned" and self.layer:
            length = ir.Const(value=absolute.max_len, type="int", span=sp)
            dim = ir.SettingRef(name="dim", type="int", span=sp)
            out.append(ir.ParamDecl(name="position_embedding",
                                    dims=(ir.Dim(kind="const", size=length),
                                          ir.Dim(kind="const", size=dim)),
                                    init=ir.Init(kind="normal", args=(0.02,)),
                                    origin="position", span=sp))
        for p in out:
            if p.name in self.scope.params or p.name in self.scope.inputs:
                self.diags.error("E208", f"`{p.name}` is declared by attnspec here ({p.origin}); "
                                 "rename your declaration", self._decl_span(p.name))
        return out

    def _decl_span(self, name: str) -> Span:
        decl = self.scope.params.get(name) or self.scope.inputs.get(name)
        return decl.name_span if decl else self.node.name_span

    def _mup(self) -> ir.Mup | None:
        if not self.by_kind["mup"]:
            return None
        stmt = self.by_kind["mup"][0]
        for extra in self.by_kind["mup"][1:]:
            self.diags.error("E207", "at most one `mup` block is allowed", extra.span)
        return ir.Mup(zero_query=self._flag(self.mup_settings, "zero_query", True),
                      span=span_ir(stmt.span))


def _is_cache_decl(decl: ast.InputDecl) -> bool:
    """`input NAME: kv_cache` or `kv_cache(...)`: the cache of a decoding attention."""
    return isinstance(decl.type, ast.CallType) and decl.type.base == "kv_cache"


def _setting_refs(expr: ir.Expr) -> list[ir.SettingRef]:
    from attnspec.ir.exprs import walk

    return [n for n in walk(expr) if isinstance(n, ir.SettingRef)]


def _substitute(expr: ir.Expr, name: str, replacement: ir.Expr) -> ir.Expr:
    """Replace every `SettingRef(name)` in `expr`."""
    if isinstance(expr, ir.SettingRef) and expr.name == name:
        return replacement
    updates = {}
    for attr in ("operand", "left", "right"):
        child = getattr(expr, attr, None)
        if child is not None:
            updates[attr] = _substitute(child, name, replacement)
    for attr in ("args", "indices"):
        items = getattr(expr, attr, None)
        if items is not None:
            updates[attr] = tuple(_substitute(c, name, replacement) for c in items)
    return expr.model_copy(update=updates) if updates else expr
