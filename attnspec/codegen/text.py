"""Small, safe pieces of generated text that codegen and every backend's emitter share:
literals of tuples, comment lines, statements with their temporaries.

Example:
    >>> tuple_literal(["a", 1, None]), tuple_text(["x"])
    ("('a', 1, None)", '(x,)')
"""

from __future__ import annotations

import textwrap

from attnspec.ir import nodes as ir

from .expr import ExprGenerator, literal


def tuple_text(parts: list[str]) -> str:
    """A tuple of code texts."""
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def tuple_literal(items: list) -> str:
    """A tuple literal of strings, ints and None (each element repr()'d)."""
    return tuple_text([_item(x) for x in items])


def _item(x) -> str:
    if isinstance(x, tuple):
        return tuple_literal(list(x))
    if x is None:
        return "None"
    if isinstance(x, str):
        return repr(x)
    return literal(x)


def comment_lines(notes: tuple[str, ...], width: int = 88) -> list[str]:
    """Plan notes as comment text: wrapped, and only printable characters, so nothing in them
    can end the comment (they quote spec expressions)."""
    out = []
    for note in notes:
        text = "".join(ch if ch.isprintable() else "?" for ch in note)
        out += textwrap.wrap(text, width) or [""]
    return out


def statement(gen: ExprGenerator, expr: ir.Expr, comment: str, line) -> None:
    """Append `comment`, the temporaries of `expr`, then `line(code)`."""
    start = len(gen.lines)
    code = gen.statement(expr)
    gen.lines.insert(start, comment)
    gen.lines.append(line(code))


def mask_and_bias_exprs(attn: ir.AttentionIR) -> list[ir.Expr]:
    """Every mask and score-pipeline expression of `attn`, in spec order."""
    return list(attn.masks) + [s.expr for s in attn.pipeline]
