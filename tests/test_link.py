"""The link step (attnspec/codegen/link.py): standalone modules inline exactly the runtime they
reach (nothing unread, imports of torch and the standard library only); import-linked modules
import it from attnspec.runtime and compute the same outputs."""

from __future__ import annotations

import ast
import builtins
import json
import symtable
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import torch
from test_codegen import F64, call_inputs, load, seq_len, tensors

import attnspec
from attnspec.cache import cached_json
from attnspec.codegen import link
from attnspec.codegen.emit import generate
from attnspec.errors import UnsupportedBackendError
from attnspec.ir import scope
from attnspec.ir.build import build_text
from attnspec.runtime import MODULES, source

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "specs").glob("*.attn")) + sorted((ROOT / "specs/cookbook").glob("*.attn"))
BACKENDS = (None, "eager", "sdpa", "flex", "flash")  # None: the spec's own (mostly auto)


@cache
def module_ir(path: Path):
    return build_text(path.read_text(), str(path.relative_to(ROOT)))


def sources(path: Path, mode: str = "standalone") -> dict[str | None, str]:
    """The module of every backend its attentions support (None: the spec's own default)."""
    found = {}
    for backend in BACKENDS:
        try:
            found[backend] = generate(module_ir(path), backend, mode)
        except UnsupportedBackendError:
            continue
    assert None in found and "eager" in found
    return found


def unread(src: str, attentions: set[str]) -> set[str]:
    """Top-level names (defs, classes, assignments, imports) that no other top-level statement
    reads; the attention classes and SPEC_SOURCE are what the module is for."""
    body = ast.parse(src).body
    reads = [{n.id for n in ast.walk(s) if isinstance(n, ast.Name)} for s in body]
    readers = Counter(name for r in reads for name in r)  # statements reading each name
    never = {name for stmt, own in zip(body, reads) for name in source.bound_names(stmt)
             if readers[name] - (name in own) == 0}
    return never - attentions - {"SPEC_SOURCE"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_standalone_modules_hold_nothing_unread(path):
    """Every top-level function, class, assignment and import of the module of every shipped
    spec, on every backend it supports, is read by another top-level statement."""
    attentions = {a.name for a in module_ir(path).attentions}
    for src in set(sources(path).values()):
        assert not unread(src, attentions), (src.splitlines()[:3], unread(src, attentions))


@pytest.mark.parametrize("path", SHIPPED[:6], ids=lambda p: p.stem)
def test_standalone_modules_import_only_torch_and_the_standard_library(path):
    """Besides the optional import of attnspec's own error classes (inside try/except)."""
    for src in sources(path).values():
        tree = ast.parse(src)
        for node in tree.body:
            if isinstance(node, ast.Try):  # attnspec's error classes, flex's AuxRequest
                assert [h.type.id for h in node.handlers] == ["ImportError"]
                assert node.body[0].module in ("attnspec.runtime.errors",
                                               "torch.nn.attention.flex_attention")
                continue
            for name in _imported_modules(node):
                assert name.split(".")[0] in sys.stdlib_module_names or name.split(".")[0] == \
                    "torch", name


def _imported_modules(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


@pytest.mark.parametrize("path", SHIPPED[:6], ids=lambda p: p.stem)
def test_import_linked_modules_define_no_runtime(path):
    """An import-linked module is the spec's own code: its top-level statements are imports,
    SPEC_SOURCE, the attention classes and their module-level functions; every runtime name it
    reads comes from attnspec.runtime.<module>, and it imports nothing it does not read."""
    attentions = {a.name for a in module_ir(path).attentions}
    for src in sources(path, "import").values():
        tree = ast.parse(src)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.name in attentions or node.name.startswith(
                    scope.ATTENTION_FUNCTION_PREFIXES), node.name
                assert node.name not in source.top_level_names()
            elif isinstance(node, ast.ImportFrom) and node.module.startswith("attnspec"):
                module = node.module.removeprefix("attnspec.runtime.")
                assert module in MODULES
                assert {a.name for a in node.names} <= source.top_level_names()
        assert not unread(src, attentions)


def local_names(table: symtable.SymbolTable) -> set[str]:
    """Names that are local (not global) in some function or class scope below `table`."""
    found = set()
    for child in table.get_children():
        found |= {s.get_name() for s in child.get_symbols() if not s.is_global()}
        found |= local_names(child)
    return found


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_no_local_takes_a_runtime_name(path):
    """The link step reads every Name the runtime binds as the runtime's: so no argument or
    local of the spec's own code (an import-linked module) may carry a runtime name."""
    src = generate(module_ir(path), None, "import")
    clash = local_names(symtable.symtable(src, "<test>", "exec")) & source.top_level_names()
    assert not clash


def test_links_are_deterministic_and_ordered():
    """Runtime module order, then source order; the same text every time."""
    path = ROOT / "specs" / "graph.attn"
    src = generate(module_ir(path), "flex")
    assert generate(module_ir(path), "flex") == src
    headings = [line.split()[2] for line in src.splitlines() if line.startswith("# --- attnspec.")]
    assert headings == [f"attnspec.runtime.{m}" for m in MODULES if f"attnspec.runtime.{m}"
                        in headings]
    assert headings[:2] == ["attnspec.runtime.errors", "attnspec.runtime.checks"]
    flex = src[src.index("# --- attnspec.runtime.flex"):src.index("\nclass ")]
    order = [n.name for n in ast.parse(flex).body if isinstance(n, ast.FunctionDef)]
    in_source = [n.name for n in source.tree("flex").body if isinstance(n, ast.FunctionDef)]
    assert order == [n for n in in_source if n in order]


def test_standalone_inlines_the_runtime_source_verbatim():
    """Each inlined definition is the runtime's text, comments included."""
    src = generate(module_ir(ROOT / "specs" / "graph.attn"), "flex")
    for name in ("_flex_run", "_cached_block_mask", "_edge_tables", "_softmax_rows"):
        module = next(m for m in MODULES if any(
            name in source.bound_names(s) for s in source.tree(m).body))
        stmt = next(s for s in source.tree(module).body if name in source.bound_names(s))
        text = "\n".join(source.text(module).split("\n")[stmt.lineno - 1:stmt.end_lineno])
        assert text in src, name
    assert "# Bodies whose Triton kernel needs smaller tiles" in src  # a comment above a global


def test_standalone_keeps_the_decorators_of_runtime_functions():
    """A decorated runtime function is inlined with its decorators (a def's line number is its
    `def` line): `_edge_kernels` is cached once per interpreter mode."""
    src = generate(module_ir(ROOT / "specs" / "graph.attn"), "edges")
    assert "@functools.cache\ndef _edge_kernels(" in src and "import functools" in src


def test_unknown_link_is_refused():
    with pytest.raises(ValueError, match="unknown link 'static'; expected one of standalone, "
                                         "import"):
        attnspec.compile(str(ROOT / "specs" / "causal_lm.attn"), link="static")


def test_import_link_is_much_shorter():
    """graph.attn on flex: the import-linked module holds only the spec's own code."""
    path = ROOT / "specs" / "graph.attn"
    standalone = generate(module_ir(path), "flex").count("\n")
    imported = generate(module_ir(path), "flex", "import").count("\n")
    assert imported < standalone - 300


# --- same outputs, either link -----------------------------------------------------------------
SAME = ["causal_lm", "graph", "anchor", "t5_relative", "key_padding", "rope"]


@pytest.mark.parametrize("name", SAME)
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_import_link_gives_the_same_outputs_and_gradients(name, backend):
    path = ROOT / "specs" / f"{name}.attn"
    ir_module = module_ir(path)
    try:
        modules = [load(generate(ir_module, backend, mode), f"{name}-{mode}.py")
                   for mode in ("standalone", "import")]
    except UnsupportedBackendError:
        pytest.skip(f"{name} has no {backend}")
    for attn in ir_module.attentions:
        results = []
        for mod in modules:
            torch.manual_seed(0)  # the same initial params in both
            inst = getattr(mod, attn.name)().double()
            gen = torch.Generator().manual_seed(1)
            S, sizes = seq_len(attn)
            args = tensors(attn, inst, 2, S, gen)
            kw = call_inputs(attn, inst, 2, S, gen)
            if attn.cross:
                kw["context"] = torch.randn(2, 5, inst.context_dim, generator=gen, dtype=F64)
            out = inst(*args, **kw, sizes=sizes)
            out.sum().backward()
            results.append((out, [a.grad for a in args]))
        (out_a, grads_a), (out_b, grads_b) = results
        assert torch.equal(out_a, out_b), attn.name
        assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b)), attn.name


def test_standalone_module_runs_without_attnspec(monkeypatch):
    """Where attnspec cannot be imported, a standalone module defines the error classes itself
    and runs: it needs torch and the standard library only."""
    src = generate(module_ir(ROOT / "specs" / "packed_documents.attn"))
    for name in ("attnspec", "attnspec.runtime", "attnspec.runtime.errors"):
        monkeypatch.setitem(sys.modules, name, None)  # importing them fails
    mod = load(src, "packed.py")
    assert mod.UnsupportedBackendError is not attnspec.errors.UnsupportedBackendError
    m = mod.PackedDocuments()
    q = torch.randn(1, m.heads, 6, m.head_dim)
    assert m(q, q, q, doc=torch.tensor([[0, 0, 1, 1, 1, 2]])).shape == q.shape
    with pytest.raises(mod.UnsupportedBackendError, match="unknown backend 'warp'"):
        mod.PackedDocuments(backend="warp")


def test_import_linked_module_raises_attnspec_errors():
    mod = load(generate(module_ir(ROOT / "specs" / "causal_lm.attn"), None, "import"), "c.py")
    with pytest.raises(attnspec.errors.UnsupportedBackendError):
        mod.CausalLM(backend="warp")


# --- the index and its cache ---------------------------------------------------------------------
def test_every_runtime_statement_reads_only_runtime_names_and_builtins():
    """What the index records as read resolves (a name missing from the runtime would be a
    NameError only when that helper runs)."""
    names = source.top_level_names()
    for definition in set(link._index().definitions.values()):
        missing = definition.reads - names - set(dir(builtins))
        assert not missing, (definition.module, sorted(definition.binds), missing)


def test_index_is_the_same_from_the_cache_and_computed(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path))  # a fixed key: never a stale file
    cached_json("runtime-link-test", "k", link._index_data)  # written
    assert cached_json("runtime-link-test", "k", link._index_data) == json.loads(
        json.dumps(link._index_data()))


def test_cached_json_recomputes_on_a_new_key(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    assert cached_json("x", "a", compute) == {"n": 1}
    assert cached_json("x", "a", compute) == {"n": 1}  # from the file
    assert cached_json("x", "b", compute) == {"n": 2}  # another key: computed again
    (tmp_path / "x.json").write_text("{not json")
    assert cached_json("x", "b", compute) == {"n": 3}
    (tmp_path / "x.json").chmod(0o666)  # writable by others: never trusted
    assert cached_json("x", "b", compute) == {"n": 4}
