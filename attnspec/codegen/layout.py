"""Line layout for generated code: long statements are split at brackets, commas and the
lowest-precedence operators (in the manner of black), so that the generated modules read well.

Only layout changes: each split statement must parse to the same AST as the line it replaces,
else the line stays as it was; lines that are not whole statements on their own (parts of
multi-line statements) and lines inside triple-quoted strings are left alone. Checking per
statement instead of per module keeps `attnspec compile` fast.

Example:
    >>> print(reflow("x = f(" + ", ".join(["argument"] * 12) + ")", width=40))
    x = f(
        argument,
        argument,
        argument,
        argument,
        argument,
        argument,
        argument,
        argument,
        argument,
        argument,
        argument,
        argument,
    )
"""

from __future__ import annotations

import ast
import textwrap

_OPEN, _CLOSE = "([{", ")]}"
_OPERATORS = (" | ", " & ", " + ", " - ")


def reflow(source: str, width: int = 100) -> str:
    """Split every over-long statement line of `source` (comments and strings are left alone)."""
    out: list[str] = []
    in_string = False  # inside a triple-quoted string (generated code writes only \"\"\")
    for line in source.split("\n"):
        if in_string or len(line) <= width or line.lstrip().startswith("#"):
            out.append(line)
        else:
            out.extend(_reflowed(line, width))
        if line.count('"""') % 2:
            in_string = not in_string
    return "\n".join(out)


def _reflowed(line: str, width: int) -> list[str]:
    """`line` split, when it is a whole statement on its own and the split lines parse to the
    same AST; else `line` unchanged (a line of a multi-line statement, say)."""
    indent = len(line) - len(line.lstrip())
    lines = _split(line.strip(), indent, width)
    if len(lines) > 1 and _same_statement(line, "\n".join(lines)):
        return lines
    return [line]


def _same_statement(before: str, after: str) -> bool:
    """Whether two texts of one statement parse to the same AST (a block header gets a body)."""
    body = "\n pass" if before.rstrip().endswith(":") else ""
    try:
        return ast.dump(ast.parse(textwrap.dedent(before) + body)) == \
            ast.dump(ast.parse(textwrap.dedent(after) + body))
    except SyntaxError:
        return False


def _split(text: str, indent: int, width: int) -> list[str]:
    pad = " " * indent
    if indent + len(text) <= width:
        return [pad + text]
    group = _widest_group(text)
    if group is None:
        return [pad + text]
    start, end = group
    head, body, tail = text[: start + 1], text[start + 1 : end], text[end:]
    inner = indent + 4
    if inner + len(body) <= width:
        return [pad + head, " " * inner + body, pad + tail]
    items = _top_level(body, (", ",))
    if len(items) > 1:
        lines = []
        for item in items:
            lines += _split(item.strip() + ",", inner, width)
        return [pad + head] + lines + [pad + tail]
    for op in _OPERATORS:
        parts = _top_level(body, (op,))
        if len(parts) > 1:
            lines = _split(parts[0].strip(), inner, width)
            for part in parts[1:]:
                lines += _split(op.strip() + " " + part.strip(), inner, width)
            return [pad + head] + lines + [pad + tail]
    return [pad + head] + _split(body, inner, width) + [pad + tail]


def _widest_group(text: str) -> tuple[int, int] | None:
    """(open, close) positions of the top-level bracket pair with the most text inside."""
    best, depth, start = None, 0, 0
    for i, ch in _code_chars(text):
        if ch in _OPEN:
            if depth == 0:
                start = i
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
            if depth == 0 and (best is None or i - start > best[1] - best[0]):
                best = (start, i)
    return best if best is not None and best[1] - best[0] > 1 else None


def _top_level(text: str, separators: tuple[str, ...]) -> list[str]:
    """`text` split at separators outside brackets and strings."""
    parts, depth, last = [], 0, 0
    positions = dict(_code_chars(text))
    i = 0
    while i < len(text):
        ch = positions.get(i)
        if ch is not None and ch in _OPEN:
            depth += 1
        elif ch is not None and ch in _CLOSE:
            depth -= 1
        elif ch is not None and depth == 0:
            sep = next((s for s in separators if text.startswith(s, i)), None)
            if sep is not None:
                parts.append(text[last:i])
                i += len(sep)
                last = i
                continue
        i += 1
    parts.append(text[last:])
    return parts


def _code_chars(text: str):
    """(index, char) for every character outside string literals."""
    quote = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        else:
            yield i, ch
        i += 1
