"""Readable text for the IR (`attnspec compile --emit ir`): expressions back in the language's
own infix syntax, macros expanded, with the minimum of parentheses.

Example:
    >>> from attnspec.ir.build import build_text
    >>> a = build_text("attention A {\\n heads = 2\\n head_dim = 4\\n mask sliding_window(8)\\n}")
    >>> expr_text(a.attentions[0].masks[0])
    'q >= k & q - k <= 8'
"""

from __future__ import annotations

from attnspec.ir import nodes as ir

_PRECEDENCE = {"|": 1, "&": 2, "in": 3, "==": 4, "!=": 4, "<": 4, "<=": 4, ">": 4, ">=": 4,
               "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6}
_UNARY = 7
_ATOM = 8


def expr_text(expr: ir.Expr) -> str:
    return _text(expr)[0]


def _text(e: ir.Expr) -> tuple[str, int]:
    """(text, precedence of its outermost operator)."""
    if isinstance(e, ir.Const):
        return _const(e.value), _ATOM
    if isinstance(e, (ir.IndexVar, ir.SettingRef, ir.SeqLen)):
        return e.name, _ATOM
    if isinstance(e, ir.GroupBound):
        return f"{e.group}.{e.which}", _ATOM
    if isinstance(e, ir.EdgeField):
        return f"{e.input}.{e.field}", _ATOM
    if isinstance(e, ir.ScoreRef):
        return "score", _ATOM
    if isinstance(e, ir.InGroup):
        return f"{_wrap(e.operand, _PRECEDENCE['in'] + 1)} in {e.group}", _PRECEDENCE["in"]
    if isinstance(e, ir.Unary):
        return f"{e.op}{_wrap(e.operand, _UNARY)}", _UNARY
    if isinstance(e, ir.Binary):
        p = _PRECEDENCE[e.op]
        # left-associative: the right operand needs parentheses at equal precedence
        right_min = p + 1 if p != 4 else p + 1
        return f"{_wrap(e.left, p if p != 4 else p + 1)} {e.op} {_wrap(e.right, right_min)}", p
    if isinstance(e, ir.Call):
        return f"{e.func}({', '.join(expr_text(a) for a in e.args)})", _ATOM
    if isinstance(e, (ir.InputRef, ir.ParamRef)):
        if not e.indices:
            return e.name, _ATOM
        return f"{e.name}[{', '.join(expr_text(i) for i in e.indices)}]", _ATOM
    raise TypeError(f"unknown IR node {e!r}")


def _wrap(e: ir.Expr, min_precedence: int) -> str:
    text, p = _text(e)
    return text if p >= min_precedence else f"({text})"


def _const(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == float("inf"):
        return "inf"
    if value == float("-inf"):
        return "-inf"
    return repr(value)


def _dim_text(d: ir.Dim) -> str:
    return expr_text(d.size) if d.kind == "const" else d.kind


def attention_text(a: ir.AttentionIR) -> str:
    """The whole attention, one fact per line."""
    lines = [f"attention {a.name} ({a.mode} mode{', cross' if a.cross else ''})"]
    for s in a.numeric:
        origin = "" if s.explicit else "   # default"
        lines.append(f"  {s.name}: {s.type} = {expr_text(s.expr)}{origin}")
    lines.append(f"  qk_norm = {a.qk_norm}, backend = {a.backend}, qkv_bias = {a.qkv_bias}, "
                 f"out_bias = {a.out_bias}, sinks = {a.sinks}")
    for g in a.groups:
        lines.append(f"  group {g.name}: {'*' if g.size is None else g.size}")
    for p in a.patterns:
        lines.append(f"  pattern {', '.join(p.queries)} -> {', '.join(p.keys)}")
    for i in a.inputs:
        if i.edges:
            e = i.edges
            lines.append(f"  input {i.name}: edges(types = {e.types}, max_distance = "
                         f"{e.max_distance}, self_loops = {str(e.self_loops).lower()})")
        else:
            lines.append(f"  input {i.name}: {i.dtype}[{', '.join(map(_dim_text, i.dims))}]")
    for p in a.params:
        args = f"({', '.join(map(repr, p.init.args))})" if p.init.args else ""
        lines.append(f"  param {p.name}: float[{', '.join(map(_dim_text, p.dims))}] = "
                     f"{p.init.kind}{args}   # {p.origin}")
    lines += [f"  mask {expr_text(m)}" for m in a.masks]
    for step in a.pipeline:
        lines.append(f"  {'bias' if step.kind == 'bias' else 'score ='} {expr_text(step.expr)}")
    if a.rope:
        r = a.rope
        source = f", positions = {r.positions}" if r.positions else \
            f", freqs = {r.freqs}" if r.freqs else ""
        lines.append(f"  position rope(base = {r.base!r}, dims = {expr_text(r.dims)}, "
                     f"interleaved = {str(r.interleaved).lower()}{source})")
    if a.absolute_position:
        ap = a.absolute_position
        lines.append(f"  position {ap.kind}" + (f"(max_len = {ap.max_len})" if ap.max_len else ""))
    if a.mup:
        lines.append(f"  mup (zero_query = {str(a.mup.zero_query).lower()})")
    return "\n".join(lines)


def module_text(m: ir.ModuleIR) -> str:
    return "\n\n".join(attention_text(a) for a in m.attentions) + "\n"
