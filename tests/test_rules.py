"""Diagnostic codes (attnspec.rules): every diagnostic has a registered code, every code is
emitted somewhere, the docs table is the registry, and every output format shows the code.

The emit check reads the compiler's source (ast, not regexes): each call that makes a
diagnostic (`Diagnostic(...)`, `.error(...)`, `.warning(...)`, `._error(...)`) names a code as
a string literal, an `E` code for an error and a `W` code for a warning.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from attnspec.cli import main
from attnspec.errors import AttnSpecError
from attnspec.ir.build import build_text
from attnspec.rules import _TABLE, BY_NAME, CODE, RULES, explain, lookup, markdown_table

ROOT = Path(__file__).resolve().parents[1]
# The modules that report diagnostics (errors.py only defines them).
EMITTERS = ["attnspec/grammar/parser.py", "attnspec/ir/build.py", "attnspec/ir/check.py",
            "attnspec/ir/expr_builder.py", "attnspec/compiler.py", "attnspec/mup_check.py"]
DIAGNOSTIC_CALLS = {"error": "E", "warning": "W", "_error": "E"}


def _calls(path: str):
    """(line, kind, code or None) of each diagnostic-making call in `path`."""
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "Diagnostic":
            code = next((k.value for k in node.keywords if k.arg == "code"), None)
            severity = node.args[0].value if node.args else None
            yield node.lineno, {"error": "E", "warning": "W"}.get(severity), _literal(code)
        elif name in DIAGNOSTIC_CALLS and not _is_logging(func):
            first = node.args[0] if node.args else None
            if name == "_error" and path.endswith("parser.py"):  # _error(source, code, ...)
                first = node.args[1] if len(node.args) > 1 else None
            yield node.lineno, DIAGNOSTIC_CALLS[name], _literal(first)


PASS_THROUGH = "<code>"  # a helper handing on its own `code` parameter: its callers are checked


def _literal(node) -> str | None:
    if isinstance(node, ast.Name) and node.id == "code":
        return PASS_THROUGH
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_logging(func) -> bool:
    return isinstance(func, ast.Attribute) and getattr(func.value, "id", "") in ("warnings",)


def test_codes_are_unique_and_well_formed():
    codes = [code for code, _, _ in _TABLE]
    names = [name for _, name, _ in _TABLE]
    assert len(codes) == len(set(codes)), "a code registered twice"
    assert len(names) == len(set(names)), "a name registered twice"
    for code, name, summary in _TABLE:
        assert CODE.match(code) and name == name.lower() and " " not in name, code
        assert summary and "\n" not in summary, code
    assert len(RULES) == len(BY_NAME) == len(codes)


def test_every_diagnostic_call_names_a_registered_code_of_its_severity():
    calls = [(path, *call) for path in EMITTERS for call in _calls(path)]
    assert len(calls) > 100  # the scan finds the call sites (about 130)
    for path, line, letter, code in calls:
        if code == PASS_THROUGH:
            continue
        assert code in RULES, f"{path}:{line}: a diagnostic without a registered code"
        assert letter is None or code[0] == letter, f"{path}:{line}: {code} for an {letter}"


def test_every_registered_code_is_emitted_somewhere():
    emitted = {code for path in EMITTERS for _, _, code in _calls(path)}
    assert set(RULES) - emitted == set(), "registered codes that nothing emits"


def test_the_docs_table_is_the_registry():
    doc = (ROOT / "docs/diagnostics.md").read_text()
    assert markdown_table() in doc
    assert "diagnostics.md" in (ROOT / "docs/index.md").read_text()


@pytest.mark.parametrize(("text", "code"), [
    ("attention A {\n heads = 2\n head_dim = 4\n mask caual\n}", "E201"),
    ("attention A {\n heads = 2\n head_dim = 4\n maks causal\n}", "E105"),
    ("attention A {\n heads = 2\n head_dim = 4\n mask causal and k < 3\n}", "E104"),
    ("attention A {\n heads = 2\n head_dim = 4\n mask sliding_window(0.5)\n}", "E305"),
    ("attention A {\n heads = 0\n head_dim = 4\n}", "E401"),
])
def test_built_diagnostics_carry_their_code(text, code):
    with pytest.raises(AttnSpecError) as info:
        build_text(text)
    assert info.value.diagnostics[0].code == code
    assert f"error[{code}]: " in str(info.value)


def test_warnings_carry_their_code():
    warnings: list = []
    build_text("attention A {\n heads = 2\n head_dim = 4\n input doc: int[batch, seq]\n}",
               warnings=warnings)
    assert [d.code for d in warnings] == ["W401"]


def test_every_output_format_shows_the_code(tmp_path, capsys):
    spec = tmp_path / "a.attn"
    spec.write_text("attention A {\n heads = 2\n head_dim = 4\n mask caual\n}\n")
    assert main(["check", str(spec)]) == 1
    assert "a.attn:4:7: error[E201]: unknown name `caual`" in capsys.readouterr().err
    assert main(["check", str(spec), "--output-format", "concise"]) == 1
    assert ": error[E201]: unknown name" in capsys.readouterr().out
    assert main(["check", str(spec), "--output-format", "github"]) == 1
    assert "title=attnspec E201::E201 unknown name" in capsys.readouterr().out
    assert main(["check", str(spec), "--output-format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["diagnostics"][0]["code"] == "E201"


def test_rule_and_explain_print_the_description(capsys):
    assert main(["rule", "E201"]) == 0
    assert capsys.readouterr().out == explain("E201") + "\n"
    assert main(["check", "--explain", "unused-input"]) == 0
    assert capsys.readouterr().out.startswith("W401 unused-input (warning): ")
    assert main(["rule"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(RULES)
    assert main(["rule", "unknwn-name"]) == 1
    assert "did you mean `unknown-name`?" in capsys.readouterr().err
    assert main(["check"]) == 2


def test_lookup_takes_codes_and_names_in_any_case():
    assert lookup("e201") is lookup("Unknown-Name") is RULES["E201"]
    assert lookup("E999") is None and explain("nothing") is None
