"""The layout holds: one room per backend, names spelled once, a plan stage run once.

Backend expectations are one line each: `assert_plans(mask, flash="varlen", ...)` states which
plan (or refusal) every named backend gives for a spec body.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec import backends
from attnspec.backends.base import Backend, Plan
from attnspec.cli import main
from attnspec.compiler import Source, compile_source
from attnspec.lower import analysis
from attnspec.lower.module import lower_module

PACKAGE = Path(attnspec.__file__).parent
ROOT = PACKAGE.parent
REFUSED = None  # in assert_plans: the backend must refuse the spec


def assert_plans(body: str, inputs: str = "", **expected: str | None) -> None:
    """Each named backend's plan kind for `attention A { heads 2, head_dim 16, inputs, body }`
    (None: refused)."""
    text = f"attention A {{\n heads = 2\n head_dim = 16\n{inputs}\n{body}\n}}\n"
    lowered = lower_module(attnspec.build(text)).attentions[0]
    got = {name: (lowered.plans[name].kind if name in lowered.plans else REFUSED)
           for name in expected}
    assert got == expected, body


DOC = " input doc: int[batch, seq]"
VALID = " input valid: bool[batch, seq]"


def test_plans_by_structure():
    assert_plans("", eager="dense", sdpa="full", flex="none", flash="batched")
    assert_plans("mask causal", sdpa="causal", flex="structured", flash="batched")
    assert_plans("mask causal & same(doc)", DOC, sdpa="dense", flex="structured", flash="varlen")
    assert_plans("mask key_valid(valid)", VALID, flash="varlen", flex="structured")
    assert_plans("mask causal_bottom_right", sdpa="causal_bottom_right", flash="batched")
    assert_plans("mask (q + k) % 2 == 0", sdpa="dense", flex="general", flash=REFUSED)
    assert_plans("mask causal\n score = softcap(score, 30.0)", sdpa=REFUSED, flex="structured",
                 flash="batched")
    assert_plans("mask sliding_window(8)\n bias alibi\n score = softcap(score, 30.0)",
                 flash=REFUSED, flex="structured")
    groups = " tokens {\n  a: 4\n  b: *\n }\n pattern a -> a\n pattern b -> a, b"
    assert_plans(groups, sdpa="patterns", flex="general", flash="groups")
    assert_plans(groups + "\n mask key_valid(valid)", VALID, sdpa="dense", flash="groups")
    assert_plans(groups + "\n mask causal", flash=REFUSED)
    assert_plans("mask causal & key_valid(valid)", VALID, flash="varlen")


def test_every_backend_has_its_own_room():
    for backend in backends.REGISTRY:
        assert isinstance(backend, Backend)
        room = PACKAGE / "backends" / backend.name
        assert {"__init__.py", "lowering.py", "emit.py", "method.py.jinja"} <= \
            {p.name for p in room.iterdir()}, backend.name
        assert (PACKAGE / backend.template).is_file()
        assert backend.devices and set(backend.backward_devices) <= set(backend.devices)


def test_plans_are_typed_and_frozen():
    module = attnspec.build(ROOT / "specs" / "packed_documents.attn")
    for lowered in lower_module(module).attentions:
        for plan in lowered.plans.values():
            assert isinstance(plan, Plan) and type(plan) is not Plan
            with pytest.raises(dataclasses.FrozenInstanceError):
                plan.kind = "other"  # type: ignore[misc]


def _code_strings(path: Path):
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            yield node.lineno, node.value


def test_backend_names_are_spelled_only_in_the_registry():
    """Outside attnspec/backends/ (and the runtime that generated code runs), no code string
    names a backend: everything reads names and device facts from the registry."""
    # `edges` is also the language's input type (`input g: edges(...)`): its code strings are
    # that type far more often than the backend, so it is left out of the scan.
    names = set(backends.NAMES) - {"edges"}
    strays = []
    for path in PACKAGE.rglob("*.py"):
        part = path.relative_to(PACKAGE).parts[0]
        if part in ("backends", "runtime") or "templates" in path.parts:
            continue
        for line, text in _code_strings(path):
            if text in names or any(text.startswith(f"{name}-") for name in names):
                strays.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not strays, "backend names outside the registry:\n" + "\n".join(strays)


def test_analysis_runs_once_per_attention_per_compile(monkeypatch):
    calls = []
    original = analysis._mask_items

    def counted(attn):
        calls.append(attn.name)
        return original(attn)

    monkeypatch.setattr(analysis, "_mask_items", counted)
    text = (ROOT / "specs" / "sliding_window.attn").read_text()
    compile_source(Source("sliding_window.attn", text))
    assert sorted(calls) == sorted(a.name for a in attnspec.build(text).attentions)


def test_emit_plan_text_and_json(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["compile", "specs/packed_documents.attn", "--emit", "plan", "-o", "-"]) == 0
    text = capsys.readouterr().out
    assert "flash: varlen" in text and "auto: sdpa on CPU; on CUDA flash" in text
    assert main(["compile", "specs/packed_documents.attn", "--emit", "plan-json", "-o", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    first = data["attentions"][0]
    assert first["plans"]["flash"]["documents"] == "doc"
    assert set(first["plans"]) | set(first["refused"]) == set(backends.NAMES)


def test_header_and_docstring_name_the_default_backend():
    text = "attention A {\n heads = 2\n head_dim = 16\n mask causal\n backend = sdpa\n}\n"
    source = compile_source(Source("a.attn", text))
    assert "A: default backend sdpa; generated: eager, sdpa, flex, flash" in source
    assert "Backend: eager" not in source and "eager backend)" not in source


def test_no_dead_flex_override_guard():
    """The guard against overridden index settings is emitted only where proofs used one."""
    source = compile_source(Source("a.attn", "attention A {\n heads = 2\n head_dim = 16\n"
                                             " mask causal\n}\n"))
    assert "set(())" not in source and "voided" not in source


def test_backend_rooms_seen_by_the_ir_are_the_registry():
    from attnspec.ir.scope import backend_rooms

    assert sorted(backends.NAMES) == list(backend_rooms())


TABLE_SPEC = ("attention S {\n heads = 2\n head_dim = 16\n param slopes: float[heads] = "
              "alibi_slopes\n mask causal\n bias -slopes[h] * abs(q - k)\n}\n")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_refuses_half_precision_training_of_learned_tables():
    """flex's backward rounds score gradients to the input dtype before summing them into
    learned tables (H100 matrix: 1.1-16x the tolerance): such calls are refused, and `auto`
    keeps SDPA's dense mask after flex for them."""
    from attnspec.errors import UnsupportedInputError

    module = attnspec.load(TABLE_SPEC)
    assert module.S.AUTO_CUDA == ("sdpa-small", "flex", "sdpa-dense")
    layer = module.S(backend="flex").bfloat16()
    q = torch.randn(1, 2, 40, 16, dtype=torch.bfloat16)
    with pytest.raises(UnsupportedInputError, match="learned tables \\(slopes\\)"):
        layer(q, q, q)
    with torch.no_grad():  # inference runs
        assert layer(q, q, q).shape == q.shape
    layer.slopes.requires_grad_(False)  # frozen tables run
    assert layer(q, q, q).shape == q.shape


def test_flash_usable_check_accepts_captured_numbers(monkeypatch):
    """A score_mod may capture a setting (a Python number): the FLASH-kernel check must not
    ask it for `requires_grad` (auto crashed on AlibiAttnGym at S=4096 on the H100)."""
    from types import SimpleNamespace

    from attnspec.runtime import flex

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    q = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, device="cuda")
    assert flex._flex_flash_usable(q, (8, torch.ones(2))) in (True, False)
    assert flex._flex_flash_usable(q, (8, torch.ones(2, requires_grad=True))) is False


@pytest.fixture
def deterministic_mode():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_refuses_training_tables_in_deterministic_mode(deterministic_mode):
    """flex's backward adds learned tables' gradients with atomics (run-to-run order varies):
    under torch.use_deterministic_algorithms(True) such calls are refused in every dtype, so
    `auto` steps to the next backend; inference and frozen tables still run."""
    from attnspec.errors import UnsupportedInputError

    layer = attnspec.load(TABLE_SPEC).S(backend="flex")
    q = torch.randn(1, 2, 40, 16)
    with pytest.raises(UnsupportedInputError, match="use_deterministic_algorithms"):
        layer(q, q, q)
    with torch.no_grad():
        assert layer(q, q, q).shape == q.shape
    layer.slopes.requires_grad_(False)
    assert layer(q, q, q).shape == q.shape


def test_flash_passes_the_deterministic_mode_to_flash_attn(deterministic_mode):
    """flash-attn's backward is deterministic only when asked: the runtime passes
    torch.are_deterministic_algorithms_enabled() to both versions' calls."""
    from attnspec.runtime.flash import _FlashLibrary

    for version in (4, 2):
        options = _FlashLibrary(version, None, None).options(0.5, (None, 0), 0.0, None, None)
        assert options["deterministic"] is True
    torch.use_deterministic_algorithms(False)
    assert _FlashLibrary(4, None, None).options(0.5, (None, 0), 0.0, None, None)[
        "deterministic"] is False
