"""The pipeline as one call: spec text -> AST -> IR (checked) -> Python source. Imports no torch.

Example:
    >>> ir_module = build(Source("a.attn", "attention A {\\n heads = 2\\n head_dim = 8\\n}"))
    >>> ir_module.attentions[0].name
    'A'
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from attnspec.errors import AttnSpecError, Diagnostic, Source
from attnspec.grammar import ast
from attnspec.grammar.parser import parse
from attnspec.ir import nodes as ir
from attnspec.ir.build import build_text

MAX_SPEC_BYTES = 4 * 1024 * 1024


# Not blocking on a FIFO swapped in between the stat and the open (no effect on regular files).
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("a FIFO", ...): reading anything but a regular
    file can block forever (a FIFO without a writer) or never end (/dev/zero).

    >>> file_kind(stat.S_IFREG), file_kind(stat.S_IFIFO)
    (None, 'a FIFO')
    """
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "a special file")


def read_spec(path: str | Path) -> Source:
    """Read a spec file as UTF-8; unreadable, binary, oversized or non-regular files raise
    `AttnSpecError`. At most MAX_SPEC_BYTES + 1 bytes are read."""
    path = Path(path)
    name = str(path)
    try:
        data = _read_regular(path, MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise AttnSpecError([Diagnostic("error", "cannot read file: it does not exist",
                                        code="E001")],
                            Source(name, "")) from None
    except _NotRegular as e:
        raise AttnSpecError([Diagnostic("error", f"cannot read file: it is {e}, not a regular "
                                        "file", code="E002")], Source(name, "")) from None
    except OSError as e:
        raise AttnSpecError([Diagnostic("error", f"cannot read file: {e.strerror or e}",
                                        code="E002")],
                            Source(name, "")) from None
    except ValueError:  # a path with a NUL byte, which no file system accepts
        raise AttnSpecError([Diagnostic("error", "cannot read file: the path contains a NUL "
                                        "byte", code="E002")],
                            Source(name.replace("\x00", "?"), "")) from None
    return decode_spec(data, name)


class _NotRegular(Exception):
    """The path names something other than a regular file; the message says what."""


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of the regular file `path`. The kind is checked before opening (so
    a device is never opened) and again on the open descriptor (the path may change between)."""
    kind = file_kind(os.stat(path).st_mode)
    if kind is not None:
        raise _NotRegular(kind)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise _NotRegular(kind)
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(limit - size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def decode_spec(data: bytes, name: str) -> Source:
    if len(data) > MAX_SPEC_BYTES:
        raise AttnSpecError([Diagnostic("error", f"file is larger than {MAX_SPEC_BYTES} bytes",
                                        code="E003")],
                            Source(name, ""))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        from attnspec.errors import Span

        message = f"file is not UTF-8 text (invalid byte at offset {e.start})"
        raise AttnSpecError([Diagnostic("error", message, Span.point(line, 1), code="E004")],
                            Source(name, "")) from None
    if "\x00" in text:
        raise AttnSpecError([Diagnostic("error", "file contains NUL bytes: not a spec",
                                        code="E005")],
                            Source(name, ""))
    return Source(name, text.removeprefix("\ufeff"))


def parse_source(source: Source) -> ast.File:
    return parse(source.text, source.name)


def build(source: Source, warnings: list[Diagnostic] | None = None) -> ir.ModuleIR:
    """Parse, build and check; raises `AttnSpecError` listing every error. Warnings are
    appended to `warnings` when a list is given."""
    return build_text(source.text, source.name, warnings)


def compile_source(source: Source, backend: str | None = None, link: str = "standalone") -> str:
    """Spec text -> the generated module's Python source; `link` is "standalone" (the runtime
    helpers it uses inlined) or "import" (imported from attnspec.runtime).

    >>> src = compile_source(Source("a.attn", "attention A {\\n heads = 2\\n head_dim = 8\\n}"),
    ...                      link="import")
    >>> "from attnspec.runtime.checks import" in src
    True
    """
    from attnspec.codegen.emit import generate

    return generate(build(source), backend, link)


def as_source(path_or_text: str | Path) -> Source:
    """A `Path`, or a string that looks like a path (`_looks_like_path`), is read; other strings
    are spec text. A path-like string naming no file is an error that says so, not a parse error
    on the path's text (`load("specs/causal_lm.atn")` is a mistyped path, not a spec)."""
    if isinstance(path_or_text, Path):
        return read_spec(path_or_text)
    if _looks_like_path(path_or_text):
        return read_spec(path_or_text)  # reports a missing file, a directory, a FIFO, ...
    return Source("<spec>", path_or_text)


# A file-like suffix: `.attn`, `.atn`, `.txt`, ... (letters, then at most 5 more characters).
_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,5}\Z")


def _looks_like_path(text: str) -> bool:
    """Spec text has a `{` (every attention has a body): a one-line string without one is a
    path when something exists there, it ends in a file suffix, or it has a `/` or `\\` and
    no whitespace (one-line spec text such as `let r = 1/2` has spaces).

    >>> [_looks_like_path(t) for t in ("specs/a.atn", "a.attn", "a.txt", "attention A { }",
    ...                                "let r = 1/2", "dir/file")]
    [True, True, True, False, False, True]
    """
    if "\n" in text or "{" in text:
        return False
    if _exists(text) or _SUFFIX.search(text):
        return True
    return ("/" in text or "\\" in text) and not any(c.isspace() for c in text)


def _exists(text: str) -> bool:
    """Whether anything (a directory, a FIFO) is at `text`; read_spec says what it is."""
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def _is_file(text: str) -> bool:
    """Whether `text` names an existing file; a string no path can be (too long, NUL) is not
    one (`Path.is_file` raises OSError for a name over the system's limit)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False
