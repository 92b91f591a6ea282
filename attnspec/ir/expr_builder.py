"""Expressions AST -> IR: resolve names, expand `let` macros and the standard library, infer types.

Macro arguments are passed by name: a parameter stands for the caller's expression, built in the
caller's scope where the body uses it (so `same(doc)` can index `doc`). Bodies see only their
parameters and global names, never the caller's parameters (hygiene).

Example:
    >>> from attnspec.ir.build import build_text
    >>> m = build_text("attention A {\\n heads = 4\\n head_dim = 8\\n mask sliding_window(2)\\n}")
    >>> m.attentions[0].masks[0].op
    '&'
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from attnspec.errors import Diagnostic, Span, did_you_mean
from attnspec.grammar import ast
from attnspec.grammar.parser import MAX_DEPTH, parse
from attnspec.ir import nodes as ir
from attnspec.ir import scope
from attnspec.ir.consts import ConstError, eval_const
from attnspec.ir.exprs import FLOAT_FUNCS, binary_type, depth, free_vars, promote
from attnspec.ir.int_params import float_argument, int_params
from attnspec.ir.printer import expr_text

MAX_EXPANDED_NODES = 20_000  # per expression, after macro expansion
# All expressions of one file together, after macro expansion: the per-expression cap alone
# lets many expressions just under it take minutes. The largest shipped spec has ~1,000.
MAX_FILE_NODES = 200_000
_TOO_LARGE_HINT = ("every use of a `let` parameter repeats its argument, so a `let` that uses "
                   "its parameter twice doubles the size at each level: simplify the lets")


def span_ir(span: Span) -> ir.SpanIR:
    return ir.SpanIR(line=span.line, col=span.col, end_line=span.end_line, end_col=span.end_col)


class Diagnostics:
    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    """The diagnostics of one build; each call names its rule's code (attnspec.rules)."""

    def error(self, code: str, message: str, span: Span, hint: str | None = None,
              cause: Span | None = None) -> None:
        self.items.append(Diagnostic("error", message, span, hint, cause=cause, code=code))

    def warning(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.items.append(Diagnostic("warning", message, span, hint, code=code))

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)


@dataclass(frozen=True)
class Macro:
    let: ast.Let
    from_stdlib: bool


@dataclass(frozen=True)
class Binding:
    """A macro argument: the caller's expression and the environment to build it in."""

    expr: ast.Expr
    env: Env


@dataclass(frozen=True)
class Env:
    bindings: Mapping[str, Binding] = field(default_factory=dict)
    expanding: tuple[str, ...] = ()
    site: Span | None = None  # inside the standard library: the user's call site

    def where(self, span: Span) -> Span:
        return self.site or span


@functools.lru_cache(maxsize=1)
def stdlib_file() -> ast.File:
    text = (Path(__file__).parent.parent / "stdlib.attn").read_text()
    return parse(text, "<stdlib>")


# --- the attention's names ---------------------------------------------------------------------
@dataclass
class AttnScope:
    """What names mean inside one attention block."""

    settings: dict[str, str]  # numeric setting -> "int" | "float"
    inputs: dict[str, ast.InputDecl]
    params: dict[str, ast.ParamDecl]
    groups: dict[str, ast.GroupDecl]
    implicit_params: dict[str, ir.ParamDecl] = field(default_factory=dict)
    input_types: dict[str, ir.InputDecl] = field(default_factory=dict)
    param_types: dict[str, ir.ParamDecl] = field(default_factory=dict)


@dataclass
class Budget:
    """Nodes one file's expressions have been expanded to so far (its attentions share one)."""

    spent: int = 0


class ExprBuilder:
    """Builds typed IR expressions. `ctx` is "const" (settings and literals only), "pair"
    (masks and biases: indices, inputs, params, groups) or "score" (pair plus `score`)."""

    def __init__(self, macros: Mapping[str, Macro], attn: AttnScope, diags: Diagnostics,
                 budget: Budget | None = None):
        self.macros = macros
        self.attn = attn
        self.diags = diags
        self.count = 0
        self.budget = budget or Budget()
        self.lets = {name: macro.let for name, macro in macros.items()}
        self.int_params_memo: dict[str, frozenset[str]] = {}

    # entry point ------------------------------------------------------------------------------
    def build(self, expr: ast.Expr, ctx: str, env: Env | None = None) -> ir.Expr | None:
        self.count = 0
        env = env or Env()
        try:
            built = self._build(expr, env, ctx)
        except _TooLarge:  # check_expansion stops this before building: a second line of defence
            whole_file = self.count <= MAX_EXPANDED_NODES
            self.diags.error("E307", _too_large_message("this expression", whole_file),
                             env.where(expr.span), hint=_TOO_LARGE_HINT)
            return None
        except RecursionError:  # far deeper than MAX_DEPTH
            return self._too_deep(expr, env)
        if built is not None and depth(built) > MAX_DEPTH:
            return self._too_deep(expr, env)
        return built

    def _too_deep(self, expr: ast.Expr, env: Env) -> None:
        self.diags.error("E106", f"expression nested deeper than {MAX_DEPTH} levels after macro "
                         "expansion", env.where(expr.span),
                         hint="each operator, call and index is a level, every `let` expanded")

    def _build(self, expr: ast.Expr, env: Env, ctx: str) -> ir.Expr | None:
        self.count += 1
        self.budget.spent += 1
        if self.count > MAX_EXPANDED_NODES or self.budget.spent > MAX_FILE_NODES:
            raise _TooLarge()
        method = getattr(self, "_" + type(expr).__name__.lower())
        return method(expr, env, ctx)

    def _error(self, code: str, message: str, span: Span, env: Env,
               hint: str | None = None) -> None:
        self.diags.error(code, message, env.where(span), hint)

    # literals ---------------------------------------------------------------------------------
    def _num(self, e: ast.Num, env: Env, ctx: str):
        if isinstance(e.value, int) and abs(e.value) >= 2**53:
            self._error("E107", f"integer literal {e.value} is too large", e.span, env,
                        hint="integers must stay below 2^31 in kernels")
            return None
        kind = "float" if isinstance(e.value, float) else "int"
        return ir.Const(value=e.value, type=kind, span=span_ir(env.where(e.span)))

    def _bool(self, e: ast.Bool, env: Env, ctx: str):
        return ir.Const(value=e.value, type="bool", span=span_ir(env.where(e.span)))

    def _scoreref(self, e: ast.ScoreRef, env: Env, ctx: str):
        if ctx != "score":
            self._error("E304", "`score` is only defined inside `score = ...`", e.span, env,
                        hint="a bias is added to the score: `bias EXPR`")
            return None
        return ir.ScoreRef(span=span_ir(env.where(e.span)))

    # names ------------------------------------------------------------------------------------
    def _name(self, e: ast.Name, env: Env, ctx: str):
        if e.name in env.bindings:
            binding = env.bindings[e.name]
            return self._build(binding.expr, binding.env, ctx)
        span = span_ir(env.where(e.span))
        if e.name in scope.INDEX_NAMES:
            if ctx == "const":
                return self._not_constant(e, env)
            return ir.IndexVar(name=e.name, span=span)
        if e.name in self.attn.settings:
            return ir.SettingRef(name=e.name, type=self.attn.settings[e.name], span=span)
        if e.name in scope.SEQ_LEN_NAMES:
            return self._not_constant(e, env) if ctx == "const" else ir.SeqLen(name=e.name,
                                                                               span=span)
        if e.name in self.macros:
            return self._expand(e.name, (), e.span, env, ctx)
        if e.name in self.attn.inputs or e.name in self.attn.params:
            return self._bare_tensor(e, env, ctx)
        if e.name in scope.INTRINSIC_MACROS:
            self._error("E302", f"`{e.name}` needs parentheses", e.span, env,
                        hint=f"write `{e.name}()` for the defaults")
            return None
        return self._unknown_name(e.name, e.span, env)

    def _not_constant(self, e: ast.Name, env: Env):
        self._error("E303", f"`{e.name}` is not a constant here", e.span, env,
                    hint="settings and sizes must be constant expressions")
        return None

    def _bare_tensor(self, e: ast.Name, env: Env, ctx: str):
        if self._is_cache(e.name):
            return self._cache_value(e.name, e.span, env)
        if e.name in self.attn.inputs and self._input_rank(e.name) == 0:
            return self._index_ref(e.name, (), e.span, env, ctx)
        if e.name in self.attn.inputs and self._is_edges(e.name):
            self._error("E304", f"edges input `{e.name}` is used through its fields", e.span, env,
                        hint=f"`{e.name}.edge`, `{e.name}.type` or `{e.name}.distance`")
            return None
        self._error("E304", f"`{e.name}` must be indexed", e.span, env,
                    hint=f"e.g. `{e.name}[{', '.join(self._index_example(e.name))}]`")
        return None

    def _unknown_name(self, name: str, span: Span, env: Env):
        if name in self.attn.groups:
            self._error("E304", f"group `{name}` is not a value", span, env,
                        hint=f"use `q in {name}`, `{name}.start`, `{name}.end` or `{name}.size`")
            return None
        if name in scope.ALL_SETTINGS or name in scope.ALL_MUP_SETTINGS:
            self._error("E201", f"setting `{name}` is not set in this attention", span, env)
            return None
        known = (list(scope.INDEX_NAMES) + list(self.attn.settings) + list(self.macros)
                 + list(self.attn.inputs) + list(self.attn.params) + list(scope.SEQ_LEN_NAMES))
        hint = _PYTHON_LITERALS.get(name) or did_you_mean(name, known)
        self._error("E201", f"unknown name `{name}`", span, env, hint=hint)
        return None

    # operators --------------------------------------------------------------------------------
    def _unary(self, e: ast.Unary, env: Env, ctx: str):
        operand = self._build(e.operand, env, ctx)
        if operand is None:
            return None
        want_bool = e.op == "!"
        if (operand.type == "bool") != want_bool:
            need = "a bool" if want_bool else "a number"
            self._error("E301", f"`{e.op}` needs {need}, got {operand.type}", e.span, env)
            return None
        return ir.Unary(op=e.op, operand=operand, type=operand.type,
                        span=span_ir(env.where(e.span)))

    def _binary(self, e: ast.Binary, env: Env, ctx: str):
        left, right = self._build(e.left, env, ctx), self._build(e.right, env, ctx)
        if left is None or right is None:
            return None
        result = binary_type(e.op, left.type, right.type)
        if result is None:
            self._error("E301",
                        f"`{e.op}` cannot combine {left.type} and {right.type}", e.span, env,
                        hint=_operator_hint(e.op))
            return None
        if e.op in ("/", "//", "%") and isinstance(right, ir.Const) and right.value == 0:
            self._error("E306", "division by zero", e.right.span, env)
            return None
        node = ir.Binary(op=e.op, left=left, right=right, type=result,
                         span=span_ir(env.where(e.span)))
        return _fold(node) if isinstance(left, ir.Const) and isinstance(right, ir.Const) else node

    def _ingroup(self, e: ast.InGroup, env: Env, ctx: str):
        group = self._group_name(e.group, e.group_span, env)
        operand = self._build(e.operand, env, ctx)
        if group is None or operand is None:
            return None
        if operand.type != "int":
            self._error("E301",
                        f"`in {group}` needs an int position, got {operand.type}", e.span, env)
            return None
        return ir.InGroup(operand=operand, group=group, span=span_ir(env.where(e.span)))

    def _group_name(self, name: str, span: Span, env: Env) -> str | None:
        """A group named directly or through a macro parameter bound to a name."""
        binding = env.bindings.get(name)
        if binding is not None and isinstance(binding.expr, ast.Name):
            return self._group_name(binding.expr.name, binding.expr.span, binding.env)
        if name in self.attn.groups:
            return name
        hint = did_you_mean(name, self.attn.groups) or (
            "declare groups in a `tokens { ... }` block" if not self.attn.groups else None)
        self._error("E203", f"unknown token group `{name}`", span, env, hint=hint)
        return None

    # fields and indexing ----------------------------------------------------------------------
    def _field(self, e: ast.Field, env: Env, ctx: str):
        target = self._target_name(e.target, env)
        if target is None:
            self._error("E304", "only groups and edges inputs have fields", e.span, env)
            return None
        name, tspan, tenv = target
        span = span_ir(env.where(e.span))
        if name in self.attn.groups:
            if e.name not in ("start", "end", "size"):
                return self._bad_field(e, env, name, ("start", "end", "size"))
            return ir.GroupBound(group=name, which=e.name, span=span)
        if name in self.attn.inputs and self._is_edges(name):
            if ctx == "const":
                return self._not_constant(ast.Name(name, tspan), tenv)
            if e.name not in ("edge", "type", "distance"):
                return self._bad_field(e, env, name, ("edge", "type", "distance"))
            kind = "bool" if e.name == "edge" else "int"
            return ir.EdgeField(input=name, field=e.name, type=kind, span=span)
        return self._unknown_target(name, tspan, tenv, "has no fields")

    def _bad_field(self, e: ast.Field, env: Env, owner: str, fields: tuple[str, ...]):
        self._error("E304", f"`{owner}` has no field `{e.name}`", e.name_span, env,
                    hint=did_you_mean(e.name, fields) or f"fields: {', '.join(fields)}")
        return None

    def _target_name(self, target: ast.Expr, env: Env) -> tuple[str, Span, Env] | None:
        """Resolve `NAME` in `NAME[...]` / `NAME.f`, following macro parameters."""
        if not isinstance(target, ast.Name):
            return None
        binding = env.bindings.get(target.name)
        if binding is not None:
            return self._target_name(binding.expr, binding.env)
        return target.name, target.span, env

    def _unknown_target(self, name: str, span: Span, env: Env, what: str):
        if name in self.macros or name in scope.INDEX_NAMES or name in self.attn.settings:
            self._error("E304", f"`{name}` {what}", span, env)
            return None
        return self._unknown_name(name, span, env)

    def _index(self, e: ast.Index, env: Env, ctx: str):
        target = self._target_name(e.target, env)
        if target is None:
            self._error("E304", "only inputs and params can be indexed", e.span, env)
            return None
        name, tspan, tenv = target
        if name not in self.attn.inputs and name not in self.attn.params:
            return self._unknown_target(name, tspan, tenv, "cannot be indexed")
        return self._index_ref(name, e.indices, e.span, env, ctx)

    def _index_ref(self, name: str, indices: tuple, span: Span, env: Env, ctx: str):
        if self._is_cache(name):
            return self._cache_value(name, span, env)
        if ctx == "const":
            self._error("E303", f"`{name}` is not a constant", span, env)
            return None
        if self._is_edges(name):
            self._error("E304", f"edges input `{name}` cannot be indexed", span, env,
                        hint=f"use `{name}.edge`, `{name}.type` or `{name}.distance`")
            return None
        rank = self._input_rank(name) if name in self.attn.inputs else self._param_rank(name)
        if len(indices) != rank:
            self._error("E302",
                        f"`{name}` has {rank} dimension(s), indexed with {len(indices)}", span,
                        env, hint=f"e.g. `{name}[{', '.join(self._index_example(name))}]`")
            return None
        built = [self._build(i, env, ctx) for i in indices]
        if any(b is None for b in built):
            return None
        for index_ast, index in zip(indices, built):
            if index.type != "int":
                self._error("E301", f"index must be int, got {index.type}", index_ast.span, env)
                return None
        sp = span_ir(env.where(span))
        if name in self.attn.params:
            return ir.ParamRef(name=name, indices=tuple(built), span=sp)
        dtype = _tensor_base(self.attn.inputs[name])
        if dtype not in ("int", "float", "bool"):
            return None  # the declaration's bad type is reported there
        return ir.InputRef(name=name, indices=tuple(built), type=dtype, span=sp)

    def _is_edges(self, name: str) -> bool:
        decl = self.attn.inputs.get(name)
        return decl is not None and isinstance(decl.type, ast.CallType) and \
            decl.type.base != "kv_cache"

    def _is_cache(self, name: str) -> bool:
        decl = self.attn.inputs.get(name)
        return decl is not None and isinstance(decl.type, ast.CallType) and \
            decl.type.base == "kv_cache"

    def _cache_value(self, name: str, span: Span, env: Env):
        self._error("E304", f"kv_cache input `{name}` is not a value in expressions", span, env,
                    hint="with a cache, `q` is already the query's position in the row "
                         f"(`{name}_len[b]` + its index): write masks with `q` and `k`")
        return None

    def _input_rank(self, name: str) -> int:
        t = self.attn.inputs[name].type
        return len(t.dims) if isinstance(t, ast.TensorType) else 0

    def _param_rank(self, name: str) -> int:
        if name in self.attn.implicit_params:
            return len(self.attn.implicit_params[name].dims)
        t = self.attn.params[name].type
        return len(t.dims) if isinstance(t, ast.TensorType) else 0

    def _index_example(self, name: str) -> list[str]:
        decl = self.attn.inputs.get(name) or self.attn.params.get(name)
        dims = decl.type.dims if decl is not None and isinstance(decl.type, ast.TensorType) else ()
        names = {"batch": "b", "heads": "h", "seq": "q", "q_seq": "q", "kv_seq": "k"}
        return [names.get(d.name, "i") if isinstance(d, ast.Name) else "i" for d in dims]

    # calls ------------------------------------------------------------------------------------
    def _call(self, e: ast.Call, env: Env, ctx: str):
        if e.func in env.bindings:
            self._error("E304", f"macro parameter `{e.func}` cannot be called", e.func_span, env)
            return None
        if e.func in self.macros:
            return self._expand(e.func, e.args, e.span, env, ctx)
        if e.func == "t5":
            return self._t5(e, env, ctx)
        if e.func in scope.BUILTINS:
            return self._builtin(e, env, ctx)
        known = list(scope.BUILTINS) + list(self.macros) + list(scope.INTRINSIC_MACROS)
        self._error("E202", f"unknown function `{e.func}`", e.func_span, env,
                    hint=did_you_mean(e.func, known))
        return None

    def _builtin(self, e: ast.Call, env: Env, ctx: str):
        lo, hi = scope.BUILTINS[e.func]
        if any(a.name is not None for a in e.args):
            self._error("E302", f"builtin `{e.func}` takes positional arguments only", e.span, env)
            return None
        if len(e.args) < lo or (hi is not None and len(e.args) > hi):
            self._error("E302",
                        f"`{e.func}` takes {_arity(lo, hi)}, got {len(e.args)}", e.span, env)
            return None
        args = [self._build(a.value, env, ctx) for a in e.args]
        if any(a is None for a in args):
            return None
        if e.func in ("min", "max") and len(args) > 2:
            return self._fold_minmax(e, args, env)
        result = self._builtin_type(e, args, env)
        if result is None:
            return None
        return ir.Call(func=e.func, args=tuple(args), type=result, span=span_ir(env.where(e.span)))

    def _fold_minmax(self, e: ast.Call, args: list, env: Env):
        acc = args[0]
        for arg in args[1:]:
            if "bool" in (acc.type, arg.type):
                self._error("E301", f"`{e.func}` needs numbers", e.span, env)
                return None
            acc = ir.Call(func=e.func, args=(acc, arg), type=promote(acc.type, arg.type),
                          span=span_ir(env.where(e.span)))
        return acc

    def _builtin_type(self, e: ast.Call, args: list, env: Env) -> str | None:
        types = [a.type for a in args]
        f = e.func
        if f == "where":
            if types[0] != "bool":
                self._error("E301", "`where` needs a bool condition", e.args[0].span, env)
                return None
            if (types[1] == "bool") != (types[2] == "bool"):
                self._error("E301",
                            "`where` branches must both be bool or both numbers", e.span, env)
                return None
            return "bool" if types[1] == "bool" else promote(types[1], types[2])
        if "bool" in types and f != "t5_bucket":
            self._error("E301", f"`{f}` needs numbers, got bool", e.span, env)
            return None
        if f == "t5_bucket":
            return self._t5_bucket_type(e, args, env)
        if f == "alibi_slope":
            return "float" if types[0] == "int" else self._int_arg_error(e, env)
        if f in FLOAT_FUNCS:
            return "float"
        if f in ("floor", "ceil"):
            return "int"
        return promote(*types)

    def _int_arg_error(self, e: ast.Call, env: Env):
        self._error("E301", f"`{e.func}` needs an int argument", e.span, env)
        return None

    def _t5_bucket_type(self, e: ast.Call, args: list, env: Env) -> str | None:
        want = ("int", "int", "int", "bool")
        for a_ast, a, t in zip(e.args, args, want):
            if a.type != t:
                self._error("E301",
                            f"`t5_bucket` argument must be {t}, got {a.type}", a_ast.span, env,
                            hint="t5_bucket(rel, buckets, max_distance, bidirectional)")
                return None
        for a_ast, a in zip(e.args[1:], args[1:]):
            if free_vars(a):
                self._error("E303",
                            "`t5_bucket` needs constant buckets, max_distance, bidirectional",
                            a_ast.span, env)
                return None
        return "int"

    # t5: a macro that declares a learned table ------------------------------------------------
    def _t5(self, e: ast.Call, env: Env, ctx: str):
        bound = self._bind(("buckets", "max_distance"), {"buckets": _num(32),
                                                         "max_distance": _num(128)},
                           "t5", e, env)
        if bound is None:
            return None
        if ctx == "const":
            self._error("E303", "`t5` is not a constant", e.span, env)
            return None
        buckets = self._build(bound["buckets"].expr, bound["buckets"].env, "const")
        max_distance = self._build(bound["max_distance"].expr, bound["max_distance"].env, "const")
        if buckets is None or max_distance is None:
            return None
        sp = span_ir(env.where(e.span))
        table = ir.ParamDecl(name="t5_bias", dims=(ir.Dim(kind="heads"),
                                                   ir.Dim(kind="const", size=buckets)),
                             init=ir.Init(kind="zeros"), origin="t5", span=sp)
        previous = self.attn.implicit_params.get("t5_bias")
        if previous is not None and expr_text(previous.dims[1].size) != expr_text(buckets):
            self._error("E207",
                        "a second `t5` with other buckets would need a second `t5_bias` table",
                        e.span, env)
            return None
        self.attn.implicit_params["t5_bias"] = table
        rel = ir.Binary(op="-", left=ir.IndexVar(name="k", span=sp),
                        right=ir.IndexVar(name="q", span=sp), type="int", span=sp)
        bucket = ir.Call(func="t5_bucket", type="int", span=sp, args=(
            rel, buckets, max_distance, ir.Const(value=True, type="bool", span=sp)))
        return ir.ParamRef(name="t5_bias", indices=(ir.IndexVar(name="h", span=sp), bucket),
                           span=sp)

    # macros -----------------------------------------------------------------------------------
    def _expand(self, name: str, args: tuple, span: Span, env: Env, ctx: str):
        macro = self.macros[name]
        let = macro.let
        if name in env.expanding:
            chain = " -> ".join(env.expanding[env.expanding.index(name):] + (name,))
            self._error("E210", f"recursive macro: {chain}", span, env)
            return None
        if let.params is None:
            if args:
                self._error("E302", f"`{name}` takes no arguments", span, env,
                            hint=f"write `{name}` without parentheses")
                return None
            bindings: dict[str, Binding] = {}
        else:
            defaults = {p.name: p.default for p in let.params if p.default is not None}
            call = ast.Call(name, span, args, span)
            bindings = self._bind(tuple(p.name for p in let.params), defaults, name, call, env)
            if bindings is None or self._float_for_int(name, bindings):
                return None
        site = env.site or (span if macro.from_stdlib else None)
        body_env = Env(bindings=bindings, expanding=env.expanding + (name,), site=site)
        return self._build(let.body, body_env, ctx)

    def _float_for_int(self, name: str, bindings: Mapping[str, Binding]) -> bool:
        """Report each argument that is not a whole number where `name` needs one (a window, a
        stride: `q - k <= 0.5` would quietly act as `q - k <= 0`); True if any was."""
        found = False
        for param in sorted(int_params(name, self.lets, self.int_params_memo)):
            binding = bindings[param]
            what = float_argument(binding.expr, self.lets)
            if what is not None:
                self._error("E305", f"`{name}` needs a whole number for `{param}`, got {what}",
                            binding.expr.span, binding.env, hint=_whole_number_hint(what))
                found = True
        return found

    def _bind(self, params: tuple[str, ...], defaults: Mapping[str, ast.Expr], name: str,
              call: ast.Call, env: Env) -> dict[str, Binding] | None:
        """Match call arguments to parameters (positional, then keyword, then defaults)."""
        signature = f"{name}({', '.join(params)})"
        positional = [a for a in call.args if a.name is None]
        keywords = [a for a in call.args if a.name is not None]
        if len(positional) > len(params):
            self._error("E302", f"`{name}` takes {len(params)} argument(s), got {len(call.args)}",
                        call.span, env, hint=f"`{signature}`")
            return None
        bound = {p: Binding(a.value, env) for p, a in zip(params, positional)}
        for kw in keywords:
            if kw.name not in params or kw.name in bound:
                problem = "unknown" if kw.name not in params else "repeated"
                self._error("E205", f"{problem} argument `{kw.name}` for `{name}`", kw.span, env,
                            hint=did_you_mean(kw.name, params) or f"`{signature}`")
                return None
            bound[kw.name] = Binding(kw.value, env)
        for p in params:
            if p not in bound and p in defaults:
                bound[p] = Binding(defaults[p], Env(site=env.where(call.span)))
        missing = [p for p in params if p not in bound]
        if missing:
            self._error("E302", f"`{name}` takes {len(params)} argument(s), got {len(call.args)}",
                        call.span, env, hint=f"missing {', '.join(missing)}: `{signature}`")
            return None
        return bound


# --- expansion sizes, before building -------------------------------------------------------
def check_expansion(file: ast.File, macros: Mapping[str, Macro], diags: Diagnostics) -> bool:
    """Report, before anything is built, each expression of the file with more than
    MAX_EXPANDED_NODES nodes after macro expansion, and the expression that takes the whole
    file past MAX_FILE_NODES: sized without building, a blow-up fails in milliseconds. True
    when something was reported (the file must then not be built)."""
    size = ExpansionSize(macros)
    total, found = 0, False
    try:
        for expr in file_expressions(file):
            n = size.of(expr)
            if n > MAX_EXPANDED_NODES:  # not built, so not counted in the file's total
                _report_size(size, expr, diags, whole_file=False)
                found = True
                continue
            total += n
            if total > MAX_FILE_NODES:
                _report_size(size, expr, diags, whole_file=True)
                return True
    except RecursionError:  # lets nested past Python's stack: the builder reports them too deep
        pass
    return found


def _report_size(size: ExpansionSize, expr: ast.Expr, diags: Diagnostics,
                 whole_file: bool) -> None:
    """The error at the use: the outermost macro use that makes `expr` large, if one does."""
    site = size.use_site(expr)
    if site is not expr and (whole_file or size.of(site) > MAX_EXPANDED_NODES):
        name = site.func + "(...)" if isinstance(site, ast.Call) else getattr(site, "name", "")
        what = f"`{name}`"
    else:
        site, what = expr, "this expression"
    diags.error("E307", _too_large_message(what, whole_file), site.span, hint=_TOO_LARGE_HINT)


def _too_large_message(what: str, whole_file: bool) -> str:
    if whole_file:
        return (f"with {what}, this file expands to more than {MAX_FILE_NODES} nodes after "
                "macro expansion")
    return f"{what} expands to more than {MAX_EXPANDED_NODES} nodes after macro expansion"


def file_expressions(file: ast.File) -> Iterator[ast.Expr]:
    """Every expression written in the file's attention blocks: all that the builder may build
    (a `let` body is sized where it is used)."""
    for attention in file.attentions:
        yield from _expressions(attention.body)


def _expressions(node) -> Iterator[ast.Expr]:
    if isinstance(node, ast.Expr):
        yield node
    elif isinstance(node, tuple):
        for item in node:
            yield from _expressions(item)
    elif dataclasses.is_dataclass(node) and not isinstance(node, Span):
        for f in dataclasses.fields(node):
            yield from _expressions(getattr(node, f.name))


class ExpansionSize:
    """How many nodes `ExprBuilder` builds for an expression (an upper bound: it counts what an
    error would stop early), computed without building. A macro's size is memoised per the
    sizes of its arguments, so a chain of lets that doubles at each level costs one visit per
    level; sizes saturate at `cap`, so nothing is sized past it."""

    def __init__(self, macros: Mapping[str, Macro], cap: int = MAX_FILE_NODES + 1):
        self.macros = macros
        self.cap = cap
        self._memo: dict[tuple, int] = {}
        self._active: set[str] = set()  # macros being sized: recursion is the builder's error

    def of(self, expr: ast.Expr, args: Mapping[str, int] | None = None) -> int:
        """Nodes built for `expr`, where a macro parameter `p` stands for an argument of
        `args[p]` nodes (built again at each use, as the builder passes arguments by name)."""
        args = args or {}
        if isinstance(expr, ast.Name) and expr.name in args:
            return self._total((args[expr.name],))
        if isinstance(expr, ast.Name) and expr.name in self.macros:
            return self._total((self._macro(expr.name, (), args),))
        if isinstance(expr, ast.Call) and expr.func in args:
            return 1  # calling a parameter is an error
        if isinstance(expr, ast.Call) and expr.func in self.macros:
            return self._total((self._macro(expr.func, expr.args, args),))
        extra = (2,) if isinstance(expr, ast.Call) and expr.func == "t5" else ()  # its defaults
        return self._total(itertools.chain(extra, (self.of(c, args) for c in _children(expr))))

    def use_site(self, expr: ast.Expr) -> ast.Expr:
        """The largest outermost macro use in `expr`, else `expr`."""
        site = expr
        while not self._is_macro_use(site):
            children = _children(site)
            if not children:
                return expr
            site = max(children, key=self.of)
        return site

    def _is_macro_use(self, expr: ast.Expr) -> bool:
        name = expr.func if isinstance(expr, ast.Call) else getattr(expr, "name", None)
        return isinstance(expr, (ast.Call, ast.Name)) and name in self.macros

    def _macro(self, name: str, call_args: tuple[ast.Arg, ...], args: Mapping[str, int]) -> int:
        """Nodes built for the body of `name` called with `call_args` (bound like `_bind`)."""
        let = self.macros[name].let
        params = let.params or ()
        bound = {p.name: a.value for p, a in zip(params, [a for a in call_args if a.name is None])}
        for a in call_args:
            if a.name is not None:
                bound.setdefault(a.name, a.value)
        sizes = tuple(self.of(bound[p.name], args) if p.name in bound
                      else self.of(p.default) if p.default is not None else 0 for p in params)
        key = (name, sizes)
        if key not in self._memo:
            if name in self._active:
                return 0
            self._active.add(name)
            try:
                self._memo[key] = self.of(let.body, {p.name: n for p, n in zip(params, sizes)})
            finally:
                self._active.discard(name)
        return self._memo[key]

    def _total(self, sizes: Iterable[int]) -> int:
        """1 (the node itself) plus `sizes`, read lazily and saturated at the cap."""
        total = 1
        for n in sizes:
            total += n
            if total >= self.cap:
                return self.cap
        return total


def _children(expr: ast.Expr) -> tuple[ast.Expr, ...]:
    """The subexpressions the builder builds for `expr` when it is no macro use: the target of
    an index or a field is resolved, never built."""
    if isinstance(expr, (ast.Unary, ast.InGroup)):
        return (expr.operand,)
    if isinstance(expr, ast.Binary):
        return (expr.left, expr.right)
    if isinstance(expr, ast.Index):
        return expr.indices
    if isinstance(expr, ast.Call):
        return tuple(a.value for a in expr.args)
    return ()


def _fold(node: ir.Binary) -> ir.Expr:
    """Literal op literal -> literal (settings are never folded: overrides may change them)."""
    try:
        value = eval_const(node, {})
    except ConstError:
        return node
    if node.type == "int" and abs(value) >= 2**53:
        return node
    value = {"bool": bool, "int": int, "float": float}[node.type](value)
    return ir.Const(value=value, type=node.type, span=node.span)


class _TooLarge(Exception):
    """More nodes than MAX_EXPANDED_NODES (this expression) or MAX_FILE_NODES (the file)."""


# Python's spelling of a literal, which Python users type by habit (did_you_mean would not find
# `true` for `True`: the candidates are names in scope, and keywords are not among them).
_PYTHON_LITERALS = {"True": "write `true` (lower case)", "False": "write `false` (lower case)",
                    "None": "attnspec has no `None`; leave the value out or use `0`"}


def _whole_number_hint(what: str) -> str:
    if "/" in what:
        return "use `//` (floor division) for a whole number"
    return "it counts positions: write a whole number (`floor(x)` or `ceil(x)` of a computed one)"


def _num(value) -> ast.Num:
    return ast.Num(value, Span(1, 1, 1, 2))


def _arity(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"at least {lo} arguments"
    return f"{lo} argument" + ("s" if lo != 1 else "") if lo == hi else f"{lo} to {hi} arguments"


def _operator_hint(op: str) -> str | None:
    if op in ("&", "|"):
        return "`&` and `|` combine bools; compare numbers first, e.g. `q - k <= w`"
    if op in ("+", "-", "*", "/", "//", "%"):
        return "bools cannot be used in arithmetic; use `where(cond, a, b)`"
    return None


def _tensor_base(decl: ast.InputDecl) -> str:
    return decl.type.base if isinstance(decl.type, ast.TensorType) else "bool"
