"""Evaluate constant expressions: settings of a module instance, constant dims, init arguments.

Example:
    >>> from attnspec.ir.build import build_text
    >>> a = build_text("attention A {\\n dim = 64\\n heads = 4\\n}").attentions[0]
    >>> resolve_settings(a)["head_dim"], resolve_settings(a, {"dim": 128})["head_dim"]
    (16, 32)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from attnspec.ir import nodes as ir


class ConstError(ValueError):
    """A constant expression could not be evaluated (division by zero, bad override, ...)."""


def resolve_settings(attn: ir.AttentionIR, overrides: Mapping[str, float] | None = None) -> dict:
    """Every numeric setting's value for one module instance; overrides replace settings."""
    return evaluate_settings(attn.numeric, overrides, attn.name)


def evaluate_settings(numeric: Sequence[ir.NumericSetting],
                      overrides: Mapping[str, float] | None = None,
                      owner: str = "the attention") -> dict:
    """The values of settings listed in dependency order (as `AttentionIR.numeric`)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {s.name for s in numeric})
    if unknown:
        raise ConstError(f"unknown setting(s) {', '.join(unknown)} for {owner}")
    values: dict[str, float] = {}
    for setting in numeric:
        if setting.name in overrides:
            value = overrides[setting.name]
        else:
            value = eval_const(setting.expr, values)
        values[setting.name] = _coerce(setting, value)
    return values


def _coerce(setting: ir.NumericSetting, value) -> int | float:
    if setting.type == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return _int64(value)
        if isinstance(value, bool) or not float(value).is_integer():
            raise ConstError(f"{setting.name} must be an integer, got {value!r}")
        return int(value)
    return float(value)


_BINARY = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b, "//": lambda a, b: a // b, "%": lambda a, b: a % b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "&": lambda a, b: a and b, "|": lambda a, b: a or b,
}

_UNARY_FUNCS = {
    "abs": abs, "exp": math.exp, "exp2": lambda x: 2.0**x, "log": math.log, "log2": math.log2,
    "sqrt": math.sqrt, "tanh": math.tanh, "sigmoid": lambda x: 1 / (1 + math.exp(-x)),
    "floor": math.floor, "ceil": math.ceil,
}


def eval_const(expr: ir.Expr, values: Mapping[str, float]):
    """Evaluate an expression built only from literals and settings in `values`."""
    try:
        return _eval(expr, values)
    except (ZeroDivisionError, ValueError, OverflowError) as e:
        raise ConstError(f"cannot evaluate constant: {e}") from None


def _eval(expr: ir.Expr, values: Mapping[str, float]):
    if isinstance(expr, ir.Const):
        return expr.value
    if isinstance(expr, ir.SettingRef):
        if expr.name not in values:
            raise ConstError(f"setting `{expr.name}` is not known yet")
        return values[expr.name]
    if isinstance(expr, ir.Unary):
        operand = _eval(expr.operand, values)
        return -operand if expr.op == "-" else not operand
    if isinstance(expr, ir.Binary):
        return _int64(_BINARY[expr.op](_eval(expr.left, values), _eval(expr.right, values)))
    if isinstance(expr, ir.Call):
        return _call(expr, [_eval(a, values) for a in expr.args])
    raise ConstError(f"`{expr.kind}` is not a constant")


def _int64(value):
    """`value`, unless it is an int outside int64 (the language's integer semantics, §5): Python
    ints would grow without bound (and past 4300 digits cannot even be printed)."""
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ConstError("integer constant overflows int64")
    return value


def _call(expr: ir.Call, args: list):
    if expr.func in _UNARY_FUNCS:
        return _UNARY_FUNCS[expr.func](args[0])
    if expr.func == "min":
        return min(args)
    if expr.func == "max":
        return max(args)
    if expr.func == "clamp":
        return min(max(args[0], args[1]), args[2])
    if expr.func == "where":
        return args[1] if args[0] else args[2]
    raise ConstError(f"`{expr.func}` is not available in constant expressions")
