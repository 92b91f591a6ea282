"""attnspec's per-user cache directory (compile-time caches only; nothing of a spec is cached).

The caches there (Lark's tables: a pickle; jinja2's compiled template: marshalled code) run code
when loaded, so the directory and every file in it are checked first: owned by this user and
writable by no one else. A symlinked directory counts as its target (both the link and the
target must be this user's); a cache file must be a regular file, never a symlink. Parent
directories are not checked.

Example:
    >>> import os, tempfile
    >>> os.environ["ATTNSPEC_CACHE_DIR"] = tempfile.mkdtemp()
    >>> cache_dir() == os.environ.pop("ATTNSPEC_CACHE_DIR")
    True
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import BinaryIO

_POSIX = hasattr(os, "geteuid")  # owners and permission bits to check (not on Windows)
_WARNED: set[str] = set()  # directories already refused (and warned about) in this process


def cache_root(platform: str | None = None, environ: Mapping[str, str] | None = None,
               home: str | None = None) -> str:
    """Where the cache directory is: `$ATTNSPEC_CACHE_DIR`, else the platform's user cache
    directory, as platformdirs' `user_cache_dir("attnspec")` would say (without the dependency):

    - Linux and other Unix: `$XDG_CACHE_HOME/attnspec` (an absolute `$XDG_CACHE_HOME` only, as
      the XDG spec says), else `~/.cache/attnspec`;
    - macOS: `~/Library/Caches/attnspec`;
    - Windows: `%LOCALAPPDATA%\\attnspec\\Cache`, else `~\\AppData\\Local\\attnspec\\Cache`.

    >>> cache_root("darwin", {}, "/Users/ada")
    '/Users/ada/Library/Caches/attnspec'
    >>> cache_root("linux", {"XDG_CACHE_HOME": "/var/cache/ada"}, "/home/ada")
    '/var/cache/ada/attnspec'
    """
    platform = platform or sys.platform  # read per call: tests set it
    environ = os.environ if environ is None else environ
    if environ.get("ATTNSPEC_CACHE_DIR"):
        return environ["ATTNSPEC_CACHE_DIR"]
    home = home or os.path.expanduser("~")
    if platform == "win32":
        import ntpath  # Windows paths whatever the platform running this (tests on Linux)

        local = environ.get("LOCALAPPDATA") or ntpath.join(home, "AppData", "Local")
        return ntpath.join(local, "attnspec", "Cache")
    if platform == "darwin":
        return os.path.join(home, "Library", "Caches", "attnspec")
    xdg = environ.get("XDG_CACHE_HOME", "")
    return os.path.join(xdg if os.path.isabs(xdg) else os.path.join(home, ".cache"), "attnspec")


def cache_dir() -> str | None:
    """`cache_root()`, created readable by this user only. None when it cannot be created, or
    when it exists but is not this user's private directory (then one warning says why and how
    to fix it)."""
    root = cache_root()
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError:
        return None
    problem = directory_problem(root)
    if problem is not None:
        _warn_once(root, problem)
        return None
    return root


def directory_problem(path: str) -> str | None:
    """Why `path` must not hold caches, or None: a directory (or a symlink to one) that this
    user owns and that group and others cannot write."""
    try:
        entry = os.lstat(path)
        target = os.stat(path) if stat.S_ISLNK(entry.st_mode) else entry
    except OSError as e:
        return f"it cannot be inspected ({e.strerror})"
    if not _POSIX:  # Windows: no owners or modes in stat; %LOCALAPPDATA% is per-user by ACL
        return None if stat.S_ISDIR(target.st_mode) else "it is not a directory"
    for st in (entry, target):
        if st.st_uid != os.geteuid():
            return f"it is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    if not stat.S_ISDIR(target.st_mode):
        return "it is not a directory"
    return _mode_problem(target)


def file_problem(st: os.stat_result) -> str | None:
    """Why a cache file (its `os.fstat`) must not be loaded, or None: a regular file that this
    user owns and that group and others cannot write. A file planted while the directory was
    open stays after the directory is fixed; this catches it."""
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if not _POSIX:
        return None
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by you"
    return _mode_problem(st)


def _mode_problem(st: os.stat_result) -> str | None:
    if st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def open_trusted(path: str) -> BinaryIO | None:
    """`path` opened for reading when `file_problem` finds nothing, else None (also when it is
    missing). The check is on the opened file itself, so it cannot be swapped in between; a
    symlink is not followed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    f = os.fdopen(fd, "rb")
    if file_problem(os.fstat(fd)) is not None:
        f.close()
        return None
    return f


def write_private(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(f)`: into a new file of mode 0600 (never writable by anyone
    else, whatever the umask), renamed over `path` once complete. Errors are swallowed: a cache
    that cannot be written only costs time."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except Exception:  # noqa: BLE001 — see the docstring
        try:
            os.remove(tmp)
        except OSError:
            pass


def cached_json(name: str, key: str, compute: Callable[[], object]) -> object:
    """`compute()` (JSON data), kept in the cache directory as `<name>.json` and reused while
    `key` (a digest of everything the value depends on) stays the same. Loaded only through
    `open_trusted`: the value may hold code text that reaches generated modules. Without a
    cache directory, or with a stale or unreadable file, it is computed."""
    root = cache_dir()
    path = os.path.join(root, f"{name}.json") if root else None
    f = open_trusted(path) if path else None
    if f is not None:
        with f:
            try:
                stored = json.load(f)
            except ValueError:  # a torn or foreign file: computed again, then replaced
                stored = None
        if isinstance(stored, dict) and stored.get("key") == key and "value" in stored:
            return stored["value"]
    value = compute()
    if path:
        data = json.dumps({"key": key, "value": value}).encode()
        write_private(path, lambda out: out.write(data))
    return value


def _warn_once(root: str, problem: str) -> None:
    if root in _WARNED:
        return
    _WARNED.add(root)
    warnings.warn(
        f"attnspec: not using the cache directory {root}: {problem}. Its caches are code that "
        f"would run when loaded. Fix: `chmod go-w {root}` if it is yours (files others left "
        "there are skipped), or set ATTNSPEC_CACHE_DIR to a directory only you can write. "
        "Without a cache attnspec only compiles a little slower.", UserWarning, stacklevel=3)
