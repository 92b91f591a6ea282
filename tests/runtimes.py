"""The runtime package (attnspec/runtime) for the tests: fresh copies of its modules, and every
identifier its source writes (generated modules inline parts of it verbatim)."""

import ast
import importlib.util
import sys
from functools import cache
from pathlib import Path

from attnspec.runtime import MODULES

RUNTIME = Path(__file__).resolve().parent.parent / "attnspec" / "runtime"


def load_runtime(name: str):
    """A fresh copy of attnspec.runtime.<name> (e.g. "flex"), its caches empty; it shares the
    other runtime modules (its relative imports resolve in attnspec.runtime)."""
    spec = importlib.util.spec_from_file_location(f"attnspec.runtime._fresh_{name}",
                                                  RUNTIME / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.compile looks functions' modules up by name
    spec.loader.exec_module(module)
    return module


def identifiers(tree: ast.AST) -> set[str]:
    """Every identifier the tree writes: names, attributes, arguments, keywords, defs, imports."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.arg):
            found.add(node.arg)
        elif isinstance(node, ast.keyword) and node.arg:
            found.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.alias):
            found.add(node.asname or node.name)
    return found


@cache
def runtime_identifiers() -> frozenset[str]:
    """Identifiers of the runtime modules that standalone modules inline from."""
    return frozenset(name for module in MODULES
                     for name in identifiers(ast.parse((RUNTIME / f"{module}.py").read_text())))
