"""Indented text of the AST (`attnspec compile --emit ast`): one node per line with its position.

Example:
    >>> from attnspec.grammar.parser import parse
    >>> print(ast_text(parse("let w = 3")), end="")
    File
      Let w @1:1
        Num 3 @1:9
"""

from __future__ import annotations

import dataclasses

from attnspec.errors import Span

_LABELS = ("name", "op", "func", "kind", "base", "group", "value", "size")


def ast_text(node) -> str:
    return "\n".join(_lines(node, 0)) + "\n"


def _lines(node, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(node, tuple):
        return [line for item in node for line in _lines(item, depth)]
    if not dataclasses.is_dataclass(node):
        return [f"{pad}{node!r}"]
    fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    labels = [_label(fields[k]) for k in _LABELS if k in fields and _is_scalar(fields[k])]
    span = fields.get("span")
    where = f" @{span.line}:{span.col}" if isinstance(span, Span) else ""
    out = [f"{pad}{type(node).__name__}{''.join(' ' + x for x in labels)}{where}"]
    for name, value in fields.items():
        if name in _LABELS and _is_scalar(value) or name == "source_name":
            continue
        if isinstance(value, Span) or value is None or value == ():
            continue
        out += _lines(value, depth + 1)
    return out


def _is_scalar(value) -> bool:
    return isinstance(value, (str, int, float, bool))


def _label(value) -> str:
    return value if isinstance(value, str) else repr(value)
