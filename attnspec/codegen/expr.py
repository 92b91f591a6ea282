"""IR expressions -> Python source text, one method per IR node kind (as sqlglot's generators).

Values fixed for a module instance (literals, settings) or for one call (`q_len`, group bounds)
become plain Python math (`self.heads // self.kv_heads`); values that vary over (b, h, q, k)
become torch ops on broadcast index tensors. Subexpressions that repeat inside one statement
(macro expansion copies arguments) are bound once to temporaries `_t1`, `_t2`, ...

A backend configures the names it runs under (`index_names`, `settings_owner`, `dtype_name`)
and may override any node method; FlexAttention's mask_mod/score_mod see the same names as 0-d
tensors, so the same text works there.

Example:
    >>> from attnspec.ir.build import build_text
    >>> a = build_text("attention A {\\n heads = 2\\n head_dim = 8\\n mask sliding_window(4)\\n}")
    >>> ExprGenerator().statement(a.attentions[0].masks[0]).text
    '(q >= k) & (q - k <= 4)'
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from attnspec.ir import nodes as ir
from attnspec.ir.consts import ConstError, eval_const
from attnspec.ir.exprs import children

# Python operator precedence, low to high (the language reference, "Operator precedence").
P_COND, P_NOT, P_CMP, P_OR, P_AND, P_ADD, P_MUL, P_UNARY, P_POW, P_ATOM = (
    1, 4, 5, 6, 8, 10, 11, 12, 13, 15)

_BINARY_PREC = {"|": P_OR, "&": P_AND, "+": P_ADD, "-": P_ADD, "*": P_MUL, "/": P_MUL,
                "//": P_MUL, "%": P_MUL, "==": P_CMP, "!=": P_CMP, "<": P_CMP, "<=": P_CMP,
                ">": P_CMP, ">=": P_CMP}

_TORCH_FUNCS = {"exp": "torch.exp", "exp2": "torch.exp2", "log": "torch.log",
                "log2": "torch.log2", "sqrt": "torch.sqrt", "tanh": "torch.tanh",
                "sigmoid": "torch.sigmoid"}
_MATH_FUNCS = {"exp": "math.exp", "log": "math.log", "log2": "math.log2", "sqrt": "math.sqrt",
               "tanh": "math.tanh"}

_TENSOR_LEAVES = (ir.IndexVar, ir.InputRef, ir.ParamRef, ir.EdgeField, ir.ScoreRef)


@dataclass(frozen=True)
class Code:
    """Generated text for one expression.

    `prec` is the Python precedence of its outermost operator; `tensor` says whether it is a
    torch tensor (else a plain Python number or bool); `type` is the IR type."""

    text: str
    prec: int
    type: str
    tensor: bool


def literal(value: bool | int | float) -> str:
    """A Python literal for a number or bool, made only from repr() of real numbers.

    >>> literal(float("inf")), literal(3), literal(0.5), literal(True)
    ('float("inf")', '3', '0.5', 'True')
    """
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return repr(int(value))
    if not isinstance(value, float):
        raise TypeError(f"not a number: {type(value).__name__}")
    value = float(value)
    if value != value:
        return 'float("nan")'
    if value in (float("inf"), float("-inf")):
        return 'float("inf")' if value > 0 else '-float("inf")'
    return repr(value)


@dataclass
class ExprGenerator:
    """Translates IR expressions; collects temporaries (`lines`) and the free names it used."""

    index_names: dict[str, str] = field(
        default_factory=lambda: {"b": "b", "h": "h", "q": "q", "k": "k"})
    settings_owner: str = "self"
    dtype_name: str = "dtype"
    temp_prefix: str = "_t"
    cse: bool = True
    uses: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    _temps: dict[int, str] = field(default_factory=dict)
    _keys: dict[int, int] = field(default_factory=dict)
    _tensor: dict[int, bool] = field(default_factory=dict)
    _hoist: set[int] = field(default_factory=set)
    _intern: dict[tuple, int] = field(default_factory=dict)
    _literal: dict[int, bool] = field(default_factory=dict)

    # --- entry points --------------------------------------------------------------------------
    def statement(self, expr: ir.Expr) -> Code:
        """Translate one statement's expression. Subexpressions that occur more than once are
        assigned to temporaries appended to `self.lines` (evaluate those lines first)."""
        self._temps, self._keys, self._tensor, self._intern, self._literal = {}, {}, {}, {}, {}
        self._hoist = self._repeated(expr) if self.cse else set()
        return self.generate(expr)

    def constant(self, expr: ir.Expr) -> Code:
        """A constant expression (settings and literals) as plain Python."""
        code = self.statement(expr)
        if code.tensor:
            raise ValueError("not a constant expression")
        return code

    def generate(self, expr: ir.Expr) -> Code:
        folded = self._fold(expr)
        if folded is not None:
            return folded
        key = self._key(expr)
        if key in self._temps:
            return Code(self._temps[key], P_ATOM, expr.type, self._is_tensor(expr))
        code = getattr(self, expr.kind)(expr)
        if key in self._hoist:
            name = f"{self.temp_prefix}{next(self._counter)}"
            self.lines.append(f"{name} = {code.text}")
            self._temps[key] = name
            return Code(name, P_ATOM, code.type, code.tensor)
        return code

    # --- leaves --------------------------------------------------------------------------------
    def const(self, e: ir.Const) -> Code:
        value = e.value
        if e.type == "float":
            value = float(value)
        text = literal(value)
        return Code(text, P_UNARY if text.startswith("-") else P_ATOM, e.type, False)

    def index(self, e: ir.IndexVar) -> Code:
        name = self.index_names[e.name]
        self.uses.add(name)
        return Code(name, P_ATOM, "int", True)

    def setting(self, e: ir.SettingRef) -> Code:
        return Code(f"{self.settings_owner}.{e.name}", P_ATOM, e.type, False)

    def seq_len(self, e: ir.SeqLen) -> Code:
        self.uses.add(e.name)
        return Code(e.name, P_ATOM, "int", False)

    def group_range(self, group: str) -> str:
        """A `range` of the group's positions (known at call time)."""
        self.uses.add("groups")
        return f"groups[{group!r}]"

    def group_bound(self, e: ir.GroupBound) -> Code:
        rng = self.group_range(e.group)
        if e.which == "size":
            return Code(f"len({rng})", P_ATOM, "int", False)
        return Code(f"{rng}.{'start' if e.which == 'start' else 'stop'}", P_ATOM, "int", False)

    def score(self, e: ir.ScoreRef) -> Code:
        self.uses.add("score")
        return Code("score", P_ATOM, "float", True)

    def edge(self, e: ir.EdgeField) -> Code:
        """`graph.edge` etc.: the call's dense [Sq, Sk] tables, which broadcast like (q, k)."""
        self.uses.add(e.input)
        return Code(f"{e.input}.{e.field}", P_ATOM, e.type, True)

    def input(self, e: ir.InputRef) -> Code:
        self.uses.add(e.name)
        return self._subscript(e.name, e.name, e.indices, e.type)

    def param(self, e: ir.ParamRef) -> Code:
        """Params are read in the score dtype (a bf16 module still computes in float32)."""
        self.uses.add(self.dtype_name)
        target = f"{self.settings_owner}.{e.name}.to({self.dtype_name})"
        return self._subscript(target, e.name, e.indices, "float")

    def _subscript(self, target: str, name: str, indices: tuple[ir.Expr, ...],
                   kind: str) -> Code:
        """Reads go through `_read`, which checks every index against the tensor's shape: the
        checker proved them in range for the spec's settings, but constructor overrides
        (e.g. a smaller head_dim) can break that proof."""
        if not indices:
            return Code(target, P_ATOM, kind, True)
        parts = ", ".join(self.generate(i).text for i in indices)
        return Code(f"_read({target}, {name!r}, {parts})", P_ATOM, kind, True)

    # --- operators -----------------------------------------------------------------------------
    def in_group(self, e: ir.InGroup) -> Code:
        operand = self.generate(e.operand)
        rng = self.group_range(e.group)
        if not operand.tensor:
            return Code(f"{self.wrap(operand, P_CMP + 1)} in {rng}", P_CMP, "bool", False)
        return Code(f"_in_group({operand.text}, {rng})", P_ATOM, "bool", True)

    def unary(self, e: ir.Unary) -> Code:
        operand = self.generate(e.operand)
        if e.op == "!":
            if operand.tensor:
                return Code(f"~{self.wrap(operand, P_UNARY + 1)}", P_UNARY, "bool", True)
            return Code(f"not {self.wrap(operand, P_NOT)}", P_NOT, "bool", False)
        return Code(f"-{self.wrap(operand, P_UNARY + 1)}", P_UNARY, e.type, operand.tensor)

    def binary(self, e: ir.Binary) -> Code:
        left, right = self.generate(e.left), self.generate(e.right)
        if e.type == "float":
            left, right = self.as_float(left), self.as_float(right)
        prec = _BINARY_PREC[e.op]
        # Comparisons never chain and `&`/`|` bind tighter than comparisons in Python: wrap
        # operands of the same or lower precedence; on the right always (non-associative ops).
        left_min = prec + 1 if prec == P_CMP else prec
        text = f"{self.wrap(left, left_min)} {e.op} {self.wrap(right, prec + 1)}"
        return Code(text, prec, e.type, left.tensor or right.tensor)

    # --- builtins ------------------------------------------------------------------------------
    def call(self, e: ir.Call) -> Code:
        return getattr(self, f"call_{e.func}")(e)

    def _float_func(self, e: ir.Call) -> Code:
        arg = self.as_float(self.generate(e.args[0]))
        if arg.tensor:
            return Code(f"{_TORCH_FUNCS[e.func]}({arg.text})", P_ATOM, "float", True)
        if e.func == "exp2":
            return Code(f"2.0 ** {self.wrap(arg, P_UNARY)}", P_POW, "float", False)
        if e.func == "sigmoid":
            return Code(f"1.0 / (1.0 + math.exp(-{self.wrap(arg, P_UNARY + 1)}))", P_MUL,
                        "float", False)
        return Code(f"{_MATH_FUNCS[e.func]}({arg.text})", P_ATOM, "float", False)

    call_exp = call_exp2 = call_log = call_log2 = call_sqrt = call_tanh = _float_func
    call_sigmoid = _float_func

    def call_abs(self, e: ir.Call) -> Code:
        arg = self.generate(e.args[0])
        func = "torch.abs" if arg.tensor else "abs"
        return Code(f"{func}({arg.text})", P_ATOM, e.type, arg.tensor)

    def _rounding(self, e: ir.Call) -> Code:
        arg = self.generate(e.args[0])
        if arg.type == "int":
            return arg
        if arg.tensor:
            return Code(f"torch.{e.func}({arg.text}).long()", P_ATOM, "int", True)
        return Code(f"math.{e.func}({arg.text})", P_ATOM, "int", False)

    call_floor = call_ceil = _rounding

    def call_min(self, e: ir.Call) -> Code:
        return self._minmax("min", [self.generate(a) for a in e.args], e.type)

    def call_max(self, e: ir.Call) -> Code:
        return self._minmax("max", [self.generate(a) for a in e.args], e.type)

    def _minmax(self, func: str, args: list[Code], kind: str) -> Code:
        if kind == "float":
            args = [self.as_float(a) for a in args]
        acc = args[0]
        for arg in args[1:]:
            acc = self._minmax2(func, acc, arg, kind)
        return acc

    def _minmax2(self, func: str, a: Code, b: Code, kind: str) -> Code:
        if not a.tensor and not b.tensor:
            text = f"{func}({a.text}, {b.text})"
            return Code(f"float({text})" if kind == "float" else text, P_ATOM, kind, False)
        if a.tensor and b.tensor:
            name = "torch.minimum" if func == "min" else "torch.maximum"
            return Code(f"{name}({a.text}, {b.text})", P_ATOM, kind, True)
        tensor, scalar = (a, b) if a.tensor else (b, a)
        bound = "max" if func == "min" else "min"
        return Code(f"torch.clamp({tensor.text}, {bound}={scalar.text})", P_ATOM, kind, True)

    def call_clamp(self, e: ir.Call) -> Code:
        x, lo, hi = (self.generate(a) for a in e.args)
        if e.type == "float":
            x, lo, hi = self.as_float(x), self.as_float(lo), self.as_float(hi)
        if x.tensor and not lo.tensor and not hi.tensor:
            return Code(f"torch.clamp({x.text}, {lo.text}, {hi.text})", P_ATOM, e.type, True)
        return self._minmax2("min", self._minmax2("max", x, lo, e.type), hi, e.type)

    def call_where(self, e: ir.Call) -> Code:
        cond, a, b = (self.generate(x) for x in e.args)
        if e.type == "float":
            a, b = self.as_float(a), self.as_float(b)
        if not cond.tensor and not a.tensor and not b.tensor:
            text = f"{self.wrap(a, P_COND + 1)} if {self.wrap(cond, P_COND + 1)} else " \
                   f"{self.wrap(b, P_COND)}"
            if e.type == "float":
                return Code(f"float({text})", P_ATOM, "float", False)
            return Code(text, P_COND, e.type, False)
        if not cond.tensor:
            cond = Code(f"torch.tensor({cond.text})", P_ATOM, "bool", True)
        if not a.tensor and not b.tensor:
            cond = self.bind(cond)
            a = self.scalar_tensor(a, like=cond.text)
        return Code(f"torch.where({cond.text}, {a.text}, {b.text})", P_ATOM, e.type, True)

    def call_alibi_slope(self, e: ir.Call) -> Code:
        arg = self.generate(e.args[0])
        if arg.tensor:
            self.uses.add(self.dtype_name)
            text = f"_alibi_slope({arg.text}, {self.settings_owner}.heads, {self.dtype_name})"
            return Code(text, P_ATOM, "float", True)
        text = f"_alibi_slopes({self.settings_owner}.heads)[{arg.text}]"
        return Code(text, P_ATOM, "float", False)

    def call_t5_bucket(self, e: ir.Call) -> Code:
        rel, buckets, max_distance, bidirectional = (self.generate(a) for a in e.args)
        text = f"_t5_bucket({rel.text}, {buckets.text}, {max_distance.text}, {bidirectional.text})"
        return Code(text, P_ATOM, "int", True)

    # --- helpers -------------------------------------------------------------------------------
    @staticmethod
    def wrap(code: Code, min_prec: int) -> str:
        """The text, parenthesised unless it binds at least as tightly as `min_prec`."""
        return code.text if code.prec >= min_prec else f"({code.text})"

    def bind(self, code: Code) -> Code:
        """The value as a temporary (unless it is already a plain name), to use it twice."""
        if code.text.isidentifier():
            return code
        name = f"{self.temp_prefix}{next(self._counter)}"
        self.lines.append(f"{name} = {code.text}")
        return Code(name, P_ATOM, code.type, code.tensor)

    def as_float(self, code: Code) -> Code:
        """Int/bool tensors become the score dtype, so that float math on them happens in that
        dtype (an int64 tensor times a Python float would give torch's default float32)."""
        if code.tensor and code.type != "float":
            self.uses.add(self.dtype_name)
            text = f"{self.wrap(code, P_ATOM)}.to({self.dtype_name})"
            return Code(text, P_ATOM, "float", True)
        return code

    def scalar_tensor(self, code: Code, like: str) -> Code:
        """A Python value as a tensor shaped and placed like `like` (for torch.where)."""
        if code.type == "float":
            self.uses.add(self.dtype_name)
            text = f"torch.full_like({like}, {code.text}, dtype={self.dtype_name})"
        else:
            text = f"torch.full_like({like}, {code.text}, dtype=torch.{_TORCH_TYPES[code.type]})"
        return Code(text, P_ATOM, code.type, True)

    def _fold(self, expr: ir.Expr) -> Code | None:
        """Literal-only compound subexpressions (`256 // 2`) are computed here, once."""
        if isinstance(expr, ir.Const) or not self._is_literal(expr):
            return None
        try:
            value = eval_const(expr, {})
        except (ConstError, TypeError, ArithmeticError):
            return None
        if expr.type == "float":
            value = float(value)
        elif expr.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return None
        elif expr.type == "bool":
            value = bool(value)
        text = literal(value)
        return Code(text, P_UNARY if text.startswith("-") else P_ATOM, expr.type, False)

    def _key(self, expr: ir.Expr) -> int:
        """A small int naming the expression's structure (spans ignored), memoised by id."""
        found = self._keys.get(id(expr))
        if found is not None:
            return found
        attrs = tuple((k, v) for k, v in expr.__dict__.items()
                      if k != "span" and not isinstance(v, (ir.Node, tuple)))
        structure = (expr.kind, attrs, tuple(self._key(c) for c in children(expr)))
        key = self._intern.setdefault(structure, len(self._intern))
        self._keys[id(expr)] = key
        return key

    def _is_tensor(self, expr: ir.Expr) -> bool:
        found = self._tensor.get(id(expr))
        if found is None:
            if isinstance(expr, _TENSOR_LEAVES):
                found = True
            elif isinstance(expr, ir.Call) and expr.func == "t5_bucket":
                found = True
            else:
                found = any(self._is_tensor(c) for c in children(expr))
            self._tensor[id(expr)] = found
        return found

    def _is_literal(self, expr: ir.Expr) -> bool:
        """Built only from literals (no settings, indices, inputs, ...)."""
        found = self._literal.get(id(expr))
        if found is None:
            kids = children(expr)
            found = isinstance(expr, ir.Const) or (
                bool(kids) and isinstance(expr, (ir.Unary, ir.Binary, ir.Call))
                and all(self._is_literal(c) for c in kids))
            self._literal[id(expr)] = found
        return found

    def _repeated(self, expr: ir.Expr) -> set[int]:
        """Keys of tensor-valued compound subexpressions that occur more than once."""
        counts: dict[int, int] = {}
        stack = [expr]
        while stack:
            node = stack.pop()
            kids = children(node)
            if not kids or not self._is_tensor(node):
                continue
            key = self._key(node)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == 1:  # count the children of the first occurrence only
                stack.extend(kids)
        return {k for k, n in counts.items() if n > 1}


_TORCH_TYPES = {"int": "long", "bool": "bool"}
