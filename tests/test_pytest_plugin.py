"""The pytest plugin (`attnspec.pytest_plugin`, docs/pytest.md), run through `pytester` in
process: items per spec x attention x backend x case, a spec that does not build as one failing
item with its diagnostics, a wrong module as a failure with the worst tensor and ratio, refusals
as skips, `-k`/`-m`/`-x`, JUnit XML, the ini options, and nothing collected unless asked.

Plugin autoloading is off in the inner runs and the plugin is named with `-p`, so the tests do
not depend on whether the `pytest11` entry point is installed.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.verify import Case, check_case

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
# no:unraisableexception: its gc.collect() passes at exit cost seconds per run with torch loaded
PLUGIN = ("-p", "attnspec.pytest_plugin", "-p", "no:cacheprovider", "-p",
          "no:unraisableexception")
TINY = "attention Tiny {\n    heads = 2\n    head_dim = 8\n    mask causal\n}\n"
BROKEN = "attention Broken {\n    heads = 2\n    head_dim = 8\n    mask caual\n}\n"
# sdpa cannot run a score transform; flash can, but not on CPU tensors
SOFTCAP = ("attention Capped {\n    heads = 2\n    head_dim = 16\n"
           "    score = softcap(score, 30.0)\n}")
# Makes the inner run's SDPA wrong by 1%: the eager interpreter does not use it.
WRONG_SDPA = """
import torch

_sdpa = torch.nn.functional.scaled_dot_product_attention

def pytest_configure(config):
    import attnspec
    attnspec._LOADED.clear()  # modules bind SDPA when loaded: load them again, after the patch
    torch.nn.functional.scaled_dot_product_attention = lambda *a, **k: _sdpa(*a, **k) * 1.01

def pytest_unconfigure(config):
    import attnspec
    attnspec._LOADED.clear()  # nor may later runs get a module that bound the wrong SDPA
    torch.nn.functional.scaled_dot_product_attention = _sdpa
"""


def _warm_up() -> None:
    """Import now what the inner runs would import lazily: pytester drops the modules that an
    in-process run imported, and re-importing them costs seconds per run (lark's parser, jinja,
    the sympy behind torch's first backward pass) or fails (torch's C extension)."""
    attention = attnspec.build(TINY).attentions[0]
    check_case(attention, attnspec.load(TINY).Tiny, "sdpa", Case("S=1", 1, 1, 1), torch.float32,
               "cpu", seed=0)


_warm_up()


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with `specs/tiny.attn` and one ordinary test; autoloading off (see above)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.mkdir("specs")
    (pytester.path / "specs" / "tiny.attn").write_text(TINY)
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(*PLUGIN, *args)


def test_import_costs_no_torch():
    code = "import sys, attnspec.pytest_plugin; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_registered_as_pytest11_entry_point():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"attnspec": "attnspec.pytest_plugin"}


def test_without_the_option_nothing_is_collected(project):
    (project.path / "specs" / "broken.attn").write_text(BROKEN)
    result = run(project, "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_plain.py::test_plain PASSED*"])
    result.stdout.no_fnmatch_line("*attnspec: seed*")
    result.stdout.no_fnmatch_line("*.attn*")


def test_passing_spec_gives_one_passed_item_per_backend_and_case(project):
    result = run(project, "--attnspec", "specs", "--attnspec-backend", "eager,sdpa", "-v",
                 "--junitxml=out.xml")
    result.assert_outcomes(passed=7)  # 2 backends x 3 cases, and test_plain
    result.stdout.fnmatch_lines([
        "attnspec: seed 0, device cpu, dtype float32, backends: eager,sdpa*",
        "specs/tiny.attn::Tiny::eager[[]S=37[]] PASSED*",
        "specs/tiny.attn::Tiny::sdpa[[]Sq=19,Sk=45[]] PASSED*",
    ])
    cases = ET.parse(project.path / "out.xml").getroot().iter("testcase")
    assert {c.get("name") for c in cases} >= {"eager[S=1]", "sdpa[S=37]"}


def test_broken_spec_is_one_failed_item_with_the_caret_diagnostic(project):
    (project.path / "specs" / "broken.attn").write_text(BROKEN)
    result = run(project, "--attnspec", "specs/broken.attn", "-rf")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        # fnmatch patterns: `[[]` is a literal `[`
        "specs/broken.attn:4:10: error[[]E201]: unknown name `caual`",
        "      mask caual",
        "           ^^^^^",
        "  hint: did you mean `causal`?",
        "FAILED specs/broken.attn::build - specs/broken.attn:4:10: error[[]E201]: unknow*",
    ])
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*pytest_plugin.py*")


def test_wrong_module_fails_with_worst_tensor_ratio_and_reproduction(project):
    project.makeconftest(WRONG_SDPA)
    result = run(project, "--attnspec", "specs", "--attnspec-backend", "sdpa", "-k", "37 or plain",
                 "--attnspec-seed", "5", "--junitxml=out.xml", "test_plain.py")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "attnspec: seed 5,*",
        "Tiny sdpa[[]S=37[]]: * differs from the eager interpreter: ratio * > 1 (max error *, "
        "allowed *)",
        "  case: * S=37: batch 2, q_len 37, kv_len 37; float32 on cpu; input seed 5 *",
        "  reproduce: * attnspec verify specs/tiny.attn --backend sdpa --dtype float32 "
        "--device cpu --seed 5",
    ])
    result.stdout.no_fnmatch_line("*pytest_plugin.py*")
    failure = next(ET.parse(project.path / "out.xml").getroot().iter("failure"))
    assert "differs from the eager interpreter: ratio" in failure.get("message")


def test_refusals_and_unsupported_backends_are_skipped_with_the_reason(project):
    (project.path / "specs" / "capped.attn").write_text(SOFTCAP)
    result = run(project, "--attnspec", "specs/capped.attn", "--attnspec-backend", "sdpa,flash",
                 "-rs", "-v", "test_plain.py")
    result.assert_outcomes(skipped=4, passed=1)  # sdpa: one item; flash: 3 refused cases
    result.stdout.fnmatch_lines_random([
        "specs/capped.attn::Capped::sdpa SKIPPED*",
        "specs/capped.attn::Capped::flash[[]S=37[]] SKIPPED*",
        "SKIPPED [[]1[]] specs/capped.attn: Capped: backend 'sdpa' cannot run this spec: "
        "specs/capped.attn:4:5: SDPA cannot transform scores*",
        "SKIPPED [[]3[]] specs/capped.attn:1: backend 'flash' runs on CUDA tensors only*",
    ])


def test_k_and_m_select_items_and_markers_are_registered(project):
    result = run(project, "--attnspec", "specs", "--strict-markers", "-m", "attnspec and sdpa",
                 "-k", "Tiny and 45", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["specs/tiny.attn::Tiny::sdpa[[]Sq=19,Sk=45[]] PASSED*"])


def test_x_stops_at_the_first_failure(project):
    (project.path / "specs" / "broken.attn").write_text(BROKEN)
    result = run(project, "--attnspec", "specs", "-x", "test_plain.py")
    result.assert_outcomes(failed=1, passed=1)  # test_plain, then broken.attn; tiny never runs


def test_ini_paths_are_verified_when_pytest_gets_no_paths(project):
    (project.path / "specs" / "broken.attn").write_text(BROKEN)
    project.makeini("[pytest]\nattnspec_paths = specs\n")
    everything = run(project, "--collect-only", "-q")
    everything.stdout.fnmatch_lines_random([
        "specs/broken.attn::build", "specs/tiny.attn::Tiny::flex[[]S=1[]]", "test_plain.py*"])
    # a path argument replaces them, like testpaths; a node id in them selects that one item
    plain = run(project, "--collect-only", "-q", "test_plain.py")
    plain.stdout.no_fnmatch_line("*.attn*")
    one = run(project, "--collect-only", "-q", "specs/tiny.attn::Tiny::sdpa[S=1]")
    one.stdout.fnmatch_lines(["specs/tiny.attn::Tiny::sdpa[[]S=1[]]", "1 test collected*"])


def test_collect_option_takes_every_attn_file_pytest_walks_into(project):
    project.makeini("[pytest]\nattnspec_collect = true\n")
    result = run(project, "--collect-only", "-q", "--attnspec-backend", "eager")
    result.stdout.fnmatch_lines_random(["specs/tiny.attn::Tiny::eager[[]S=37[]]",
                                        "test_plain.py::test_plain", "4 tests collected*"])


@pytest.mark.parametrize("option, message", [
    (("--attnspec-backend", "sdpaa"), "*--attnspec-backend: unknown backend(s) sdpaa*"),
    (("--attnspec-dtype", "float8"), "*--attnspec-dtype: unknown dtype 'float8'*"),
])
def test_bad_options_are_usage_errors(project, option, message):
    result = run(project, "--attnspec", "specs", *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
