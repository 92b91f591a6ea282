"""The `attnspec.show` package imports one way: pictures <- text, pictures <- plot, and all
three <- cli; no module imports one that imports it back (read from the source with `ast`,
imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import attnspec.show

PACKAGE = "attnspec.show"
ROOT = Path(attnspec.show.__file__).parent
# What each module may import of its package (the package itself is `__init__`).
ALLOWED = {"pictures": set(), "text": {"pictures"}, "plot": {"pictures"},
           "cli": {"pictures", "text", "plot"}}


def _modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(ROOT.glob("*.py"))}


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The package's module that importing `name` (dotted, absolute) runs last, or None."""
    if name == PACKAGE:
        return "__init__"
    if name.startswith(PACKAGE + "."):
        first = name[len(PACKAGE) + 1:].split(".")[0]
        return first if first in modules else None
    return None


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports (`from attnspec.show import x` is module x
    when x is one, else the package's `__init__`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {_target(alias.name, modules) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package
                base = ".".join(filter(None, [PACKAGE, base]))
            for alias in node.names:
                sub = _target(f"{base}.{alias.name}", modules)
                found.add(sub if base == PACKAGE and sub else _target(base, modules))
    return found - {None}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _graph()
    assert set(graph) == {"__init__", *ALLOWED}, "a new module: add it to ALLOWED"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle in attnspec.show: " + " -> ".join(cycle or [])


def test_imports_follow_the_roles():
    graph = _graph()
    for name, allowed in ALLOWED.items():
        assert graph[name] <= allowed, f"attnspec.show.{name} imports {graph[name] - allowed}"


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
