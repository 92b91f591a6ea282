"""Diagnostics: every problem in a spec carries a span and is reported with its source line.

Example:
    >>> src = Source("m.attn", "attention A {\\n  mask caual\\n}\\n")
    >>> d = Diagnostic("error", "unknown name `caual`", Span(2, 8, 2, 13),
    ...                hint="did you mean `causal`?", code="E201")
    >>> print(d.format(src))
    m.attn:2:8: error[E201]: unknown name `caual`
        mask caual
             ^^^^^
      hint: did you mean `causal`?
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

# The very classes generated modules raise (they live in the runtime, which imports nothing of
# the compiler): `except attnspec.errors.UnsupportedInputError` catches what a module raises.
from attnspec.runtime.errors import UnsupportedBackendError, UnsupportedInputError  # noqa: F401


@dataclass(frozen=True)
class Span:
    """A 1-based, end-exclusive region of a source file."""

    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def point(line: int, col: int) -> Span:
        return Span(line, col, line, col + 1)


NO_SPAN = Span(1, 1, 1, 2)


@dataclass(frozen=True)
class Source:
    """A spec's text and the name it is reported under."""

    name: str
    text: str

    def line(self, number: int) -> str:
        """Line `number` as the parser counts lines: only `\\n` ends one (`str.splitlines` would
        also split at `\\r`, form feeds, U+2028 and more, which a spec may hold as whitespace or
        in comments, and the caret would show another line)."""
        lines = self.text.split("\n")
        return lines[number - 1].removesuffix("\r") if 0 < number <= len(lines) else ""


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error" or "warning"
    message: str
    span: Span = NO_SPAN
    hint: str | None = None
    source_name: str | None = None
    # Where the error this one follows from is: a report lists it after that one (a setting
    # `haeds` on line 2 comes before "needs `heads = N`" at the attention's name on line 1).
    cause: Span | None = None
    # The rule's code in attnspec.rules (`E201`); `attnspec rule E201` explains it. Every
    # diagnostic the compiler emits has one (tests/test_rules.py).
    code: str = ""

    @property
    def label(self) -> str:
        """`error[E201]`: the severity and, where there is one, the code."""
        return f"{self.severity}[{self.code}]" if self.code else self.severity

    def order(self) -> tuple:
        """Sort key: by position, a follow-on right after its cause."""
        if self.cause is not None:
            return (self.cause.line, self.cause.col, 1, self.span.line, self.span.col)
        return (self.span.line, self.span.col, 0)

    def format(self, source: Source | None = None) -> str:
        name = source.name if source else (self.source_name or "<spec>")
        head = f"{name}:{self.span.line}:{self.span.col}: {self.label}: {self.message}"
        parts = [head]
        if source is not None:
            # On a very long line, the part around the column: the caret stays in view.
            start = self.span.col - 61 if self.span.col > 300 else 0
            text = _printable(source.line(self.span.line)[start:])
            if text.strip():
                col = self.span.col - start
                one_line = self.span.end_line == self.span.line
                width = self.span.end_col - self.span.col if one_line else 1
                width = max(1, min(width, len(text) - col + 2))
                parts.append("  " + text)
                # Tabs copied, so the caret lines up wherever the terminal's tab stops are.
                indent = "".join("\t" if c == "\t" else " " for c in text[:col - 1])
                parts.append("  " + indent + "^" * width)
        if self.hint:
            parts.append(f"  hint: {self.hint}")
        return "\n".join(parts)

    def as_dict(self, source: Source | None = None) -> dict:
        """The diagnostic as JSON-ready data (`--json` output of the commands).

        >>> Diagnostic("error", "oops", Span(2, 3, 2, 5)).as_dict(Source("m.attn", ""))["line"]
        2
        """
        return {"file": source.name if source else self.source_name, "severity": self.severity,
                "code": self.code or None, "message": self.message, "line": self.span.line,
                "col": self.span.col, "end_line": self.span.end_line,
                "end_col": self.span.end_col, "hint": self.hint}


def _printable(line: str) -> str:
    """Keep a source line on one terminal line whatever bytes it holds."""
    return "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in line)[:400]


@dataclass
class AttnSpecError(Exception):
    """Raised by the API for any problem in a spec; holds every diagnostic found.

    `str(err)` is the formatted report, the same text `attnspec check` prints.
    """

    diagnostics: list[Diagnostic] = field(default_factory=list)
    source: Source | None = None

    def __str__(self) -> str:
        return "\n".join(d.format(self.source) for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, or None.

    >>> did_you_mean("caual", ["causal", "local"])
    'did you mean `causal`?'
    """
    close = closest(name, candidates)
    return f"did you mean `{close}`?" if close else None


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name`, if any is close enough to be a misspelling of it."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return close[0] if close else None
