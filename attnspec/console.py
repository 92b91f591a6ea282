"""Terminal output shared by the commands, through rich: colour for diagnostics, tables and a
progress bar.

Colour and live progress only when the stream is a terminal; plain text otherwise (CI logs,
pipes, files), following the NO_COLOR / FORCE_COLOR conventions (https://no-color.org), which
rich reads.

Example:
    >>> import io
    >>> colour_diagnostics("m.attn:1:1: error[E201]: oops", io.StringIO())  # not a terminal
    'm.attn:1:1: error[E201]: oops'
    >>> print(table(("name", "n"), [("a", "1"), ("bb", "22")]))
    name  n
    a     1
    bb    22
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.theme import Theme

# Parts of a formatted diagnostic (errors.Diagnostic.format), each styled by the theme entry of
# its group's name.
_THEME = Theme({"location": "bold", "error": "bold red", "warning": "bold yellow",
                "caret": "bold green", "hint": "cyan"})
_PARTS = [re.compile(r"^(?P<location>\S+:\d+:\d+:) (?:(?P<error>error(\[\w+\])?:)|"
                     r"(?P<warning>warning(\[\w+\])?:))"),
          re.compile(r"^\s+(?P<caret>\^+)$"),
          re.compile(r"^\s+(?P<hint>hint:)")]
_WIDE = 1 << 16  # render width: rich must never wrap a diagnostic or a table row


def use_colour(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is a terminal and colour is not turned off."""
    console = Console(file=stream or sys.stderr)
    return console.color_system is not None and not console.no_color


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False


def colour_diagnostics(text: str, stream: TextIO | None = None, force: bool = False) -> str:
    """`text` (formatted diagnostics) with colours if `stream` wants them (or `force`)."""
    if not (force or use_colour(stream)):
        return text
    styled = Text(text)
    for pattern in _PARTS:
        styled.highlight_regex(re.compile(pattern.pattern, re.MULTILINE))
    return _render(styled, colour=True)


def table(header: Sequence[str], rows: Sequence[Sequence[str]],
          stream: TextIO | None = None, right: int = 0) -> str:
    """`rows` under `header` as aligned text columns two spaces apart (trailing blanks cut), the
    header bold when `stream` is a terminal that wants colour; the columns from index `right`
    on (numbers) right-justified when `right` > 0."""
    grid = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False,
                 header_style="bold" if stream is not None and use_colour(stream) else "")
    for index, name in enumerate(header):
        justify = "right" if 0 < right <= index else "left"
        grid.add_column(name, no_wrap=True, justify=justify)
    for row in rows:
        grid.add_row(*(str(cell) for cell in row))
    colour = stream is not None and use_colour(stream)
    lines = _render(grid, colour).rstrip("\n").split("\n")
    return "\n".join(line.rstrip() for line in lines)


def _render(renderable, colour: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=_WIDE, theme=_THEME, highlight=False,
                      force_terminal=colour, no_color=not colour,
                      color_system="standard" if colour else None)
    console.print(renderable, end="", soft_wrap=True)
    return out.getvalue()


class Progress:
    """Progress over `total` steps on stderr: `progress(what)` marks one step done.

    On a terminal: rich's live bar; elsewhere a plain line per step (`[####....] 2/4 what`), so
    CI logs show where a long run is. Use as a context manager or call `close()`; `quiet=True`
    prints nothing.
    """

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "",
                 quiet: bool = False):
        self.total, self.done, self.label = total, 0, label
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and _isatty(self.stream)
        self._rich = _rich_bar(self.stream, total, label) if self.live else None

    def __call__(self, what: str) -> None:
        self.done += 1
        if self.quiet:
            return
        if self._rich is not None:
            bar, task = self._rich
            bar.update(task, advance=1, description=f"{self.label} {what}".strip())
            return
        width = 24
        filled = width * (self.done - 1) // max(self.total, 1)
        self.stream.write(f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                          f"{what}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._rich is not None:
            self._rich[0].stop()
            self._rich = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rich_bar(stream: TextIO, total: int, label: str):
    """(rich Progress, task id), started."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(file=stream), transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return bar, task
