"""The runtime's own source, read as text and parsed with `ast`, never imported: what the
compiler links into generated modules (`attnspec.codegen.link`) and what spec names must not
shadow (`attnspec.ir.scope`). Standard library only: `attnspec compile` imports no torch.

Example:
    >>> "_softmax_rows" in top_level_names() and "torch" in top_level_names()
    True
    >>> sorted(bound_names(ast.parse("import importlib.util\\nx = y = 1").body[0]))
    ['importlib']
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from . import MODULES

_HERE = Path(__file__).parent


@functools.cache
def text(module: str) -> str:
    """The source text of the runtime module `module` ("flex" for attnspec/runtime/flex.py)."""
    if module not in MODULES:
        raise ValueError(f"no runtime module {module!r}; there are {', '.join(MODULES)}")
    return (_HERE / f"{module}.py").read_text(encoding="utf-8")


@functools.cache
def digest() -> str:
    """A digest of the runtime's source and of this file: what computed facts about the runtime
    (kept in attnspec's cache) depend on."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for module in MODULES:
        h.update(module.encode() + b"\0" + text(module).encode())
    return h.hexdigest()


@functools.cache
def tree(module: str) -> ast.Module:
    """The parsed source of a runtime module, parsed once per process."""
    return ast.parse(text(module), f"attnspec/runtime/{module}.py")


def bound_names(stmt: ast.stmt) -> set[str]:
    """The names a top-level statement binds in its module: defs, classes, assignment targets,
    imports (`import a.b` binds `a`), and those of `try` / `if` blocks."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {stmt.name}
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return {a.asname or a.name.split(".")[0] for a in stmt.names}
    if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    if isinstance(stmt, (ast.Try, ast.If)):
        blocks = [stmt.body, stmt.orelse] + [getattr(stmt, "finalbody", [])]
        blocks += [h.body for h in getattr(stmt, "handlers", [])]
        return {name for block in blocks for s in block for name in bound_names(s)}
    return set()


@functools.cache
def top_level_names() -> frozenset[str]:
    """Every name some runtime module binds at top level: the names a generated module may
    define or import from the runtime."""
    return frozenset(name for module in MODULES for stmt in tree(module).body
                     for name in bound_names(stmt))
