"""`attnspec compile --link {standalone,import}`: how the written module reaches the runtime.

Every case runs in-process through `attnspec.cli.main`, as in test_cli_hardening.py.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnspec.cli import LINKS, main
from attnspec.codegen import link

ROOT = Path(__file__).resolve().parent.parent
SPEC = "attention A {\n heads = 2\n head_dim = 8\n mask causal\n}\n"


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "a.attn"
    path.write_text(SPEC)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "internal error" not in err and "Traceback" not in err
    return code, out, err


def from_imports(src: str) -> set[str]:
    return {n.module for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)}


def test_the_cli_offers_the_links_of_the_link_step():
    assert LINKS == link.LINKS


def test_default_is_standalone(capsys, spec):
    code, out, _ = run(capsys, "compile", str(spec), "-o", "-")
    assert code == 0
    assert "def _softmax_rows(" in out  # inlined
    assert from_imports(out) <= {"attnspec.runtime.errors", "collections.abc",
                                 "torch.nn.attention.flex_attention",
                                 "torch.distributed"}  # context parallelism, lazily
    assert out == run(capsys, "compile", str(spec), "--link", "standalone", "-o", "-")[1]


def test_import_link_imports_the_runtime(capsys, spec, tmp_path):
    code, out, _ = run(capsys, "compile", str(spec), "--link", "import", "-o", "-")
    assert code == 0 and "def _softmax_rows(" not in out
    assert ("from attnspec.runtime.core import _compute_dtype, _index_grids, _softmax_lse, "
            "_softmax_rows") in out
    assert "# Regenerate: attnspec compile " in out and " --link import -o <this file>" in out
    # the written file imports and runs like any module
    target = tmp_path / "a_import.py"
    assert run(capsys, "compile", str(spec), "--link", "import", "-o", str(target))[0] == 0
    module_spec = importlib.util.spec_from_file_location("a_import", target)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    q = torch.randn(1, 2, 5, 8)
    assert module.A()(q, q, q).shape == (1, 2, 5, 8)


def test_unknown_link_is_a_usage_error(capsys, spec):
    code, _, err = run(capsys, "compile", str(spec), "--link", "static")
    assert code == 2 and "invalid choice: 'static'" in err


def test_help_documents_the_links(capsys):
    assert main(["compile", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--link {standalone,import}" in out and "attnspec.runtime" in out


def test_compile_with_either_link_imports_no_torch(spec):
    code = ("import sys; from attnspec.cli import main; "
            f"assert main(['compile', {str(spec)!r}, '--link', 'import', '-o', '-']) == 0; "
            f"assert main(['compile', {str(spec)!r}, '-o', '-']) == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
