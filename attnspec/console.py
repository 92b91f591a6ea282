"""Terminal output shared by the commands: colour for diagnostics and a progress bar.

Colour and live progress only when the stream is a terminal; plain text otherwise (CI logs,
pipes, files), following the NO_COLOR / FORCE_COLOR conventions (https://no-color.org). The
live progress bar is rich's when rich is installed, else a one-line bar of our own.

Example:
    >>> import io
    >>> colour_diagnostics("m.attn:1:1: error: oops", io.StringIO())  # not a terminal
    'm.attn:1:1: error: oops'
    >>> print(colour_diagnostics("m.attn:1:1: error: oops", force=True))
    \x1b[1mm.attn:1:1:\x1b[0m \x1b[1;31merror:\x1b[0m oops
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

_RESET = "\x1b[0m"
_STYLES = {"location": "\x1b[1m", "error": "\x1b[1;31m", "warning": "\x1b[1;33m",
           "caret": "\x1b[1;32m", "hint": "\x1b[36m"}
_HEAD = re.compile(r"^(?P<loc>\S+:\d+:\d+:) (?P<sev>error|warning)(?P<code>\[[EW]\d{3}\])?:")
_CARET = re.compile(r"^(\s+)(\^+)$")
_HINT = re.compile(r"^(\s+)(hint:)")


def use_colour(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is a terminal and colour is not turned off."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    stream = stream or sys.stderr
    return _isatty(stream) and os.environ.get("TERM") != "dumb"


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False


def colour_diagnostics(text: str, stream: TextIO | None = None, force: bool = False) -> str:
    """`text` (formatted diagnostics) with ANSI colours if `stream` wants them (or `force`)."""
    if not (force or use_colour(stream)):
        return text
    return "\n".join(_colour_line(line) for line in text.split("\n"))


def _colour_line(line: str) -> str:
    head = _HEAD.match(line)
    if head:
        sev = head["sev"]
        label = sev + (head["code"] or "")
        return (f"{_STYLES['location']}{head['loc']}{_RESET} {_STYLES[sev]}{label}:{_RESET}"
                + line[head.end():])
    caret = _CARET.match(line)
    if caret:
        return f"{caret[1]}{_STYLES['caret']}{caret[2]}{_RESET}"
    hint = _HINT.match(line)
    if hint:
        return f"{hint[1]}{_STYLES['hint']}{hint[2]}{_RESET}" + line[hint.end():]
    return line


class Progress:
    """Progress over `total` steps on stderr: `progress(what)` marks one step done.

    On a terminal: rich's live bar (or a one-line bar rewritten in place without rich);
    elsewhere a plain line per step, so CI logs show where a long run is. Use as a context
    manager or call `close()`; `quiet=True` prints nothing; `use_rich=False` keeps our own bar.
    """

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "",
                 quiet: bool = False, use_rich: bool = True):
        self.total, self.done, self.label = total, 0, label
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and _isatty(self.stream)
        self._rich = _rich_bar(self.stream, total, label) if self.live and use_rich else None

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
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {what}"
        self.stream.write(f"\r{line[:100]:<100}" if self.live else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._rich is not None:
            self._rich[0].stop()
            self._rich = None
        elif self.live:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rich_bar(stream: TextIO, total: int, label: str):
    """(rich Progress, task id), started; None when rich is not installed."""
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        return None
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(file=stream), transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return bar, task
