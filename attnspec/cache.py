"""attnspec's per-user cache directory (compile-time caches only; nothing of a spec is cached).

Example:
    >>> import os, tempfile
    >>> os.environ["ATTNSPEC_CACHE_DIR"] = tempfile.mkdtemp()
    >>> cache_dir() == os.environ.pop("ATTNSPEC_CACHE_DIR")
    True
"""

from __future__ import annotations

import os


def cache_dir() -> str | None:
    """`$ATTNSPEC_CACHE_DIR` (else `$XDG_CACHE_HOME/attnspec`, else `~/.cache/attnspec`), made
    writable by this user only: the caches there (Lark's tables, jinja2's compiled templates)
    are pickled or marshalled code, never read from a shared place. None when it cannot be
    created."""
    root = os.environ.get("ATTNSPEC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "attnspec")
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return root
