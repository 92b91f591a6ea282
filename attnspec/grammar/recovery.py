"""Syntax-error recovery: after an error, blank out the statement that holds it and parse again,
so that independent syntax errors of one file are all reported (ruff's habit), without the
follow-on errors a careless skip would cause.

The parser (LALR) stops at the first error. The statement around it is found from the text:
from the line of the outermost bracket still open at the error (newlines inside brackets do not
end a statement) to the line where those brackets close. Its characters become spaces, newlines
kept, so every later line and column stays where it was. Braces keep the block structure:
a `}` stays; a region holding a `{` at the top level becomes `attention _ {` (the body after it
is still checked); a `{` inside a block is skipped together with its block.

Example:
    >>> text = "attention A {\\n  mask q <<< k\\n  bias alibi\\n}"
    >>> print(blank_statement(text, text.index("<<")).replace(" ", "."))
    attention.A.{
    ............
    ..bias.alibi
    }
"""

from __future__ import annotations

# Written over a top-level statement whose `{` opens a block: the block's body then parses as
# an attention's (a misspelt `attentoin A {` must not turn every line of its body into an error).
_HEADER = "attention _ "


# A line starting with one of these continues the statement before it (`mask causal &` then
# `& k < 3` on the next line: the statement is broken at the first line's end, not twice).
_CONTINUATION = tuple("&|*/%<>=+-.,)]")


def blank_statement(text: str, offset: int) -> str:
    """`text` with the statement holding character `offset` blanked (see the module doc)."""
    start = _statement_start(text, offset)
    end = _statement_end(text, offset)
    if not text[offset:_line_end(text, offset)].strip():  # stopped at the line's end
        end = _continuation_end(text, end)
    brace = next((i for i, char in _code_chars(text, start, end) if char == "{"), None)
    if brace is not None:
        return _blank_with_block(text, start, brace, end)
    return text[:start] + _blank(text[start:end], keep="}") + text[end:]


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def _line_end(text: str, offset: int) -> int:
    end = text.find("\n", offset)
    return len(text) if end < 0 else end


def _code_chars(text: str, start: int, end: int):
    """(offset, char) of text[start:end] outside comments (a `#` comments to the line's end; the
    language has no strings)."""
    comment = False
    for i in range(start, end):
        char = text[i]
        if char == "\n":
            comment = False
        elif char == "#":
            comment = True
        if not comment:
            yield i, char


def _open_brackets(text: str, offset: int) -> list[int]:
    """Offsets of the `(` and `[` still open at `offset`, outermost first (a brace closes any:
    brackets never hold one)."""
    stack: list[int] = []
    for i, char in _code_chars(text, 0, offset):
        if char in "([":
            stack.append(i)
        elif char in ")]" and stack:
            stack.pop()
        elif char in "{}":
            stack.clear()
    return stack


def _statement_start(text: str, offset: int) -> int:
    opened = _open_brackets(text, offset)
    return _line_start(text, opened[0] if opened else offset)


def _continuation_end(text: str, end: int) -> int:
    """`end` moved past the lines after it that continue its statement."""
    while end < len(text):
        following = _line_end(text, end + 1)
        if not text[end + 1:following].lstrip().startswith(_CONTINUATION):
            break
        end = following
    return end


def _statement_end(text: str, offset: int) -> int:
    """The end of the line where the brackets open at `offset` close; before a brace or the end
    of the file when they never do (an unclosed bracket), and before the line of `offset` when
    that line starts with it: the parser read on past the open bracket into the next statement.
    """
    depth = len(_open_brackets(text, offset))
    if depth and not text[_line_start(text, offset):offset].strip():
        return max(_line_start(text, offset) - 1, 0)
    for i, char in _code_chars(text, offset, len(text)):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth = max(0, depth - 1)
        elif char in "{}" and depth > 0:
            return max(_line_start(text, i) - 1, _line_end(text, offset))
        elif char == "\n" and depth == 0:
            return i
    return len(text)


def _brace_depth(text: str, offset: int) -> int:
    depth = 0
    for _, char in _code_chars(text, 0, offset):
        depth += (char == "{") - (char == "}")
    return max(depth, 0)


def _blank_with_block(text: str, start: int, brace: int, end: int) -> str:
    if _brace_depth(text, start) == 0:
        lines = "\n" * text.count("\n", start, brace)  # later lines keep their numbers
        return text[:start] + lines + _HEADER + text[brace:end] + text[end:]
    close = _matching_brace(text, brace)
    return text[:start] + _blank(text[start:close + 1]) + text[close + 1:]


def _matching_brace(text: str, brace: int) -> int:
    """The offset of the `}` closing the `{` at `brace`, or the last character of the text."""
    depth = 0
    for i, char in _code_chars(text, brace, len(text)):
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return i
    return len(text) - 1


def _blank(region: str, keep: str = "") -> str:
    return "".join(c if c == "\n" or c in keep else " " for c in region)
