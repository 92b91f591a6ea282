"""The link step: a rendered module (header, SPEC_SOURCE, the attention classes and their
module-level functions, no runtime) becomes a whole module, reaching the runtime package
(`attnspec.runtime`) in one of two ways:

* `standalone` (the default): exactly the runtime statements the module reaches, transitively,
  are inlined, with the imports they need: the module imports only torch and the standard
  library (flash-attn stays a lazy import inside functions);
* `import`: the names the module reads are imported from `attnspec.runtime.<module>`.

The names the rendered text reads are resolved against the top-level statements of the
runtime modules: each statement knows the names it binds and the module-level names it reads
(found with `symtable` once, then kept in attnspec's cache). Statements come out in runtime
module order, then source order, so the same module always gives the same text. No torch is
imported: the runtime is read as source (`attnspec.runtime.source`).

Example:
    >>> text = '\"\"\"A module.\"\"\"\\n\\n\\ndef f(x):\\n    return _compute_dtype(x)\\n'
    >>> print(link(text, "import"))
    \"\"\"A module.\"\"\"
    <BLANKLINE>
    from attnspec.runtime.core import _compute_dtype
    <BLANKLINE>
    <BLANKLINE>
    def f(x):
        return _compute_dtype(x)
    <BLANKLINE>
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import symtable
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from attnspec.cache import cached_json
from attnspec.runtime import MODULES, source

LINKS = ("standalone", "import")
# Runtime modules whose definitions a standalone module takes from attnspec when it is
# installed (so that `except attnspec.errors.UnsupportedInputError` catches what it raises),
# and inlines otherwise.
SHARED = ("errors",)
PACKAGE = "attnspec.runtime"
_BUILTINS = frozenset(dir(builtins))
_WIDTH = 100


@dataclass(frozen=True)
class Definition:
    """A top-level statement of a runtime module other than an import."""

    module: str
    text: str  # its source lines, with the comment lines just above it
    binds: frozenset[str]
    reads: frozenset[str]  # module-level names it reads, builtins left out
    simple: bool  # neither a def nor a class: kept close to its neighbours
    gap: int  # blank lines before it (and its comments) in the source


@dataclass(frozen=True)
class Import:
    """One imported name of a runtime module: `import math`, `from torch... import X as _X`."""

    name: str
    origin: str | None = None  # the module of a from-import
    alias: str | None = None

    @property
    def binds(self) -> str:
        return self.alias or self.name.split(".")[0]

    @property
    def root(self) -> str:
        return (self.origin or self.name).split(".")[0]


@dataclass(frozen=True)
class _Index:
    definitions: dict[str, Definition]  # by each name it binds
    imports: dict[str, Import]  # by the name it binds
    order: dict[Definition, int]  # runtime module order, then source order


def link(text: str, mode: str = "standalone") -> str:
    """The whole module of `text`, a rendered module without runtime (see the module doc).

    Raises ValueError for an unknown `mode`.
    """
    if mode not in LINKS:
        raise ValueError(f"unknown link {mode!r}; expected one of {', '.join(LINKS)}")
    lines = text.split("\n")
    table = symtable.symtable(text, "<link>", "exec")  # no code object: names only
    top = set(table.get_identifiers())
    first = min((c.get_lineno() for c in table.get_children() if c.get_name() in top),
                default=len(lines) + 1)  # the first top-level def or class
    head = _docstring_end("\n".join(lines[:first - 1]))
    imports, runtime = _linked(_identifiers(table), mode)
    parts = [(lines[:head], 0), (_import_lines(imports), 1), (lines[head:first - 1], 1),
             (runtime, 2), (lines[first - 1:], 2)]
    return "\n".join(_joined(parts))


def _linked(free: set[str], mode: str) -> tuple[list[Import], list[str]]:
    """The imports and the runtime block of a module whose names are `free`. Each name the
    runtime binds means the runtime's: those names are reserved (no spec name, no argument or
    local of the template takes one; tests/test_link.py checks the template's)."""
    needed, imports = _resolve(free)
    if mode == "standalone":
        needed, imports = _closure(needed, imports)
        return imports, _inlined(needed)
    runtime = [Import(name, f"{PACKAGE}.{d.module}") for d in needed for name in d.binds & free]
    return sorted(imports + runtime, key=_import_key), []


def _identifiers(table: symtable.SymbolTable) -> set[str]:
    """Every name of every scope of a module (what its code reads, binds or takes as an
    argument; attributes, strings and comments are not names). `symtable` costs half of
    `ast.parse`, whose Python objects this does not need: it runs on every module written.

    >>> sorted(_identifiers(symtable.symtable("x = f(y.z)", "<doc>", "exec")))
    ['f', 'x', 'y']
    """
    names = set(table.get_identifiers())
    for child in table.get_children():
        names |= _identifiers(child)
    return names


def _docstring_end(head: str) -> int:
    """The last line of the module docstring that `head` starts with, else 0."""
    body = ast.parse(head).body
    return body[0].end_lineno or 0 if body and _is_docstring(body[0]) else 0


# --- the runtime's statements ----------------------------------------------------------------
@cache
def _index() -> _Index:
    """Every top-level statement of the runtime modules, by the names it binds: computed once
    per process, and kept in attnspec's cache (parsing the runtime costs more than compiling
    a spec)."""
    key = f"{source.digest()}:{_own_digest()}:{sys.version_info[:2]}"
    data: dict = cached_json("runtime-link", key, _index_data)
    definitions: dict[str, Definition] = {}
    order: dict[Definition, int] = {}
    for fields in data["definitions"]:
        d = Definition(fields[0], fields[1], frozenset(fields[2]), frozenset(fields[3]),
                       *fields[4:])
        order[d] = len(order)
        definitions.update(dict.fromkeys(d.binds, d))
    imports = {i.binds: i for i in (Import(*fields) for fields in data["imports"])}
    return _Index(definitions, imports, order)


def _own_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _index_data() -> dict:
    """The runtime's statements as JSON data, in runtime module order, then source order; a
    name bound twice (two definitions, or one name imported two ways) is an error."""
    definitions: list[list] = []
    imports: dict[str, Import] = {}
    bound: set[str] = set()
    for module in MODULES:
        for item in _statements(module):
            if isinstance(item, Import):
                if imports.setdefault(item.binds, item) != item:
                    raise ValueError(f"runtime: {item.binds} is imported two ways")
                continue
            if bound & item.binds:
                raise ValueError(f"runtime: {sorted(bound & item.binds)} defined twice")
            bound |= item.binds
            definitions.append([item.module, item.text, sorted(item.binds), sorted(item.reads),
                                item.simple, item.gap])
    return {"definitions": definitions,
            "imports": [[i.name, i.origin, i.alias] for i in imports.values()]}


def _statements(module: str) -> Iterable[Definition | Import]:
    """The definitions and imports of one runtime module; its docstring and its imports from
    other runtime modules (resolved by name through the index) left out."""
    lines = source.text(module).split("\n")
    body = source.tree(module).body
    previous_end = 0
    for stmt in body:
        # A def's lineno is its `def` line: its decorators start above it.
        first = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", ()))])
        start, end = _comment_start(lines, first, previous_end), stmt.end_lineno
        gap = start - 1 - previous_end
        previous_end = end
        if _is_docstring(stmt) or (isinstance(stmt, ast.ImportFrom) and stmt.level):
            continue
        if isinstance(stmt, ast.Import):
            yield from (Import(a.name, None, a.asname) for a in stmt.names)
        elif isinstance(stmt, ast.ImportFrom):
            yield from (Import(a.name, stmt.module, a.asname) for a in stmt.names)
        else:
            text = "\n".join(lines[start - 1:end])
            binds = frozenset(source.bound_names(stmt))
            yield Definition(module, text, binds, frozenset(_statement_reads(text) - binds),
                             not isinstance(stmt, (ast.FunctionDef, ast.ClassDef)), gap)


def _comment_start(lines: list[str], lineno: int, previous_end: int) -> int:
    """The first line of the comment lines directly above line `lineno` (or `lineno`)."""
    start = lineno
    while start - 1 > previous_end and lines[start - 2].startswith("#"):
        start -= 1
    return start


def _statement_reads(text: str) -> set[str]:
    return _module_reads(symtable.symtable(text, "<link>", "exec")) - _BUILTINS


def _module_reads(table: symtable.SymbolTable) -> set[str]:
    """Names read at module level by a module's statements, or from inside their functions
    and classes (where such a name is global)."""
    names = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
    return names | set(_global_reads(table))


def _global_reads(table: symtable.SymbolTable) -> Iterable[str]:
    for child in table.get_children():
        yield from (s.get_name() for s in child.get_symbols()
                    if s.is_global() and (s.is_referenced() or s.is_assigned()))
        yield from _global_reads(child)


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and \
        isinstance(stmt.value.value, str)


# --- resolving -------------------------------------------------------------------------------
def _resolve(names: Iterable[str]) -> tuple[list[Definition], list[Import]]:
    """The runtime definitions and imports that bind some of `names` (the others are builtins,
    or the module's own)."""
    index = _index()
    definitions, imports = set(), set()
    for name in names:
        if name in index.definitions:
            definitions.add(index.definitions[name])
        elif name in index.imports:
            imports.add(index.imports[name])
    return sorted(definitions, key=index.order.__getitem__), sorted(imports, key=_import_key)


def _closure(definitions: list[Definition],
             imports: list[Import]) -> tuple[list[Definition], list[Import]]:
    """The definitions and imports reached from these, transitively."""
    found, todo = set(definitions), list(definitions)
    wanted = set(imports)
    while todo:
        more, new_imports = _resolve(todo.pop().reads)
        wanted.update(new_imports)
        todo += [d for d in more if d not in found]
        found.update(more)
    order = _index().order
    return sorted(found, key=order.__getitem__), sorted(wanted, key=_import_key)


# --- writing ---------------------------------------------------------------------------------
def _import_key(item: Import) -> tuple:
    """isort's order: standard library, torch, attnspec; `import x` before `from x import y`."""
    group = 0 if item.root in sys.stdlib_module_names else 2 if item.root == "attnspec" else 1
    return group, item.origin is not None, item.origin or item.name, item.name


def _import_lines(imports: list[Import]) -> list[str]:
    """Import statements, one blank line between groups; a from-import's plain names share a
    statement, wrapped in parentheses past the line width."""
    out: list[str] = []
    group = None
    for key, items in _grouped(imports):
        if group is not None and key[0] != group:
            out.append("")
        group = key[0]
        out += _import_statement(items)
    return out


def _grouped(imports: list[Import]) -> list[tuple[tuple, list[Import]]]:
    groups: list[tuple[tuple, list[Import]]] = []
    for item in imports:
        key = _import_key(item)[:3] + ((item.name,) if item.alias or not item.origin else ("",))
        if groups and groups[-1][0] == key:
            groups[-1][1].append(item)
        else:
            groups.append((key, [item]))
    return groups


def _import_statement(items: list[Import]) -> list[str]:
    first = items[0]
    if first.origin is None:
        return [f"import {first.name}" + (f" as {first.alias}" if first.alias else "")]
    names = ", ".join(i.name + (f" as {i.alias}" if i.alias else "") for i in items)
    line = f"from {first.origin} import {names}"
    if len(line) <= _WIDTH:
        return [line]
    wrapped = textwrap.wrap(names + ",", _WIDTH - 4, break_on_hyphens=False)
    return [f"from {first.origin} import ("] + ["    " + w for w in wrapped] + [")"]


def _inlined(definitions: list[Definition]) -> list[str]:
    """The runtime block of a standalone module: per runtime module a heading, then its
    definitions (those of SHARED modules behind an import of attnspec's own)."""
    out: list[str] = []
    for module in MODULES:
        mine = [d for d in definitions if d.module == module]
        if not mine:
            continue
        if out:
            out += ["", ""]
        out.append(f"# --- {PACKAGE}.{module} ".ljust(_WIDTH - 1, "-"))
        out += _shared(module, mine) if module in SHARED else _spaced(mine)
    return out


def _spaced(definitions: list[Definition]) -> list[str]:
    """Definitions with two blank lines around defs and classes; consecutive assignments keep
    the spacing they have in the runtime source."""
    out: list[str] = []
    previous = None
    for d in definitions:
        if previous is not None:
            close = d.simple and previous.simple and previous.module == d.module
            out += [""] * (min(d.gap, 1) if close else 2)
        out += d.text.split("\n")
        previous = d
    return out


def _shared(module: str, definitions: list[Definition]) -> list[str]:
    names = ", ".join(sorted(n for d in definitions for n in d.binds))
    body = textwrap.indent("\n\n".join(d.text for d in definitions), "    ")
    return ["try:  # attnspec's own when it is installed: its `except` clauses catch these",
            f"    from {PACKAGE}.{module} import {names}",
            "except ImportError:  # the module stands alone", ""] + body.split("\n")


def _joined(parts: list[tuple[list[str], int]]) -> list[str]:
    """The parts of a module, each without its blank edges, after the blank lines it asks for
    (none before the first)."""
    out: list[str] = []
    for lines, blank in parts:
        start, end = 0, len(lines)
        while start < end and not lines[start].strip():
            start += 1
        while end > start and not lines[end - 1].strip():
            end -= 1
        if start < end:
            out += ([""] * blank if out else []) + lines[start:end]
    return out + [""]
