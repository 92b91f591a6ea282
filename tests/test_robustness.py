"""Bad input of any kind gives attnspec's own error (API) or a clean report and exit 1 (CLI),
never a foreign exception or a traceback.

A short seeded run of the front-end fuzzers of `tests/fuzzing.py` (each generator, every
backend generated and parsed, a few inputs through the CLI), plus regression tests for what the
long run (`benchmarks/fuzz_frontend.py`) found. `ATTNSPEC_FUZZ_ROUNDS` sets the inputs per
generator (default 80), `ATTNSPEC_FUZZ_SEED` the seed (default 0).
"""

from __future__ import annotations

import ast as python_ast
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from fuzzing import GENERATORS, SPECS, check_input, input_for

import attnspec
from attnspec.codegen.emit import generate
from attnspec.compiler import decode_spec
from attnspec.errors import AttnSpecError
from attnspec.grammar.parser import MAX_DEPTH
from attnspec.ir.build import build_text

# 64 rounds keep the suite under its time; the long run is benchmarks/fuzz_frontend.py.
ROUNDS = int(os.environ.get("ATTNSPEC_FUZZ_ROUNDS", "64"))
SEED = int(os.environ.get("ATTNSPEC_FUZZ_SEED", "0"))
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("generator", list(GENERATORS))
def test_fuzz_inputs_raise_only_attnspec_errors(generator):
    """Each input: decode, build, explain, generate every backend and parse the module; every
    fourth module is also executed and its classes built."""
    outcomes = set()
    for index in range(ROUNDS):
        result = check_input(input_for(generator, SEED, index), load=index % 4 == 0)
        assert result.finding is None, (
            f"{generator} input {index} (seed {SEED}; fuzzing.input_for({generator!r}, {SEED}, "
            f"{index}) rebuilds it):\n{result.finding}")
        outcomes.add(result.outcome)
    if ROUNDS >= 50:  # the generators reach past the parser
        assert outcomes & {"check error", "generated"}, outcomes


@pytest.mark.parametrize("generator", list(GENERATORS))
def test_fuzz_inputs_through_the_cli(tmp_path, generator):
    """One input per generator through the CLI, with the long run's checks."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from fuzz_frontend import cli_problem
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    index = list(GENERATORS).index(generator) * 2  # check, explain, compile --backend flex, sdpa
    data = input_for(generator, SEED, index)
    path = tmp_path / "fuzz.attn"
    path.write_bytes(data)
    assert cli_problem(path, index, check_input(data)) is None


def test_random_bytes_are_reported_not_crashed():
    rng = random.Random(7)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        try:
            build_text(decode_spec(data, "junk.attn").text)
        except AttnSpecError as e:
            assert str(e)


# --- regressions found by fuzzing -----------------------------------------------------------------

HEAD = "attention A {\n    heads = 2; head_dim = 8\n"
# Statements whose expression is n levels deep.
DEEP = {
    "neg": lambda n: "mask " + "-" * (n - 2) + "q <= k",
    "not": lambda n: "mask " + "!" * (n - 1) + "true",
    "and": lambda n: "mask " + " & ".join(["q >= k"] * (n - 1)),
    "sum": lambda n: "bias " + " + ".join(["k * 0.5"] * (n - 1)),
    "abs": lambda n: "bias " + "abs(" * (n - 2) + "q * 1.0" + ")" * (n - 2),
    "where": lambda n: "mask " + "where(q >= k, " * (n - 2) + "true" + ", false)" * (n - 2),
    "parens": lambda n: "bias " + "(-" * (n - 2) + "k * 1.0" + ")" * (n - 2),
    "setting": lambda n: "scale = " + "-" * (n - 1) + "1.0",
}


@pytest.mark.parametrize("form", list(DEEP))
def test_deep_expressions_compile_or_report(form):
    """At MAX_DEPTH levels an expression compiles to a module Python parses (it used to exceed
    Python's 200 nested brackets or the recursion limit in code generation); one level more is
    a syntax error at the place where it gets too deep."""
    module = attnspec.build(HEAD + DEEP[form](MAX_DEPTH) + "\n}")
    for backend in (None, "eager"):
        python_ast.parse(generate(module, backend))
    with pytest.raises(AttnSpecError, match=f"nested deeper than {MAX_DEPTH} levels") as e:
        attnspec.build(HEAD + DEEP[form](MAX_DEPTH + 1) + "\n}")
    assert e.value.errors[0].span.line == 3


@pytest.mark.parametrize("n", [330, 490, 3000])
def test_very_deep_expressions_report_a_position(n):
    """Once a RecursionError in code generation (330), a lark VisitError (490) and an error at
    1:1 (3000 terms): now the parser reports where the expression gets too deep."""
    for text in (HEAD + "mask " + " & ".join(["q >= k"] * n) + "\n}",
                 HEAD + "bias " + "-" * n + "k * 1.0\n}"):
        with pytest.raises(AttnSpecError, match=f"nested deeper than {MAX_DEPTH}") as e:
            attnspec.build(text)
        assert e.value.errors[0].span.line == 3 and e.value.errors[0].span.col > 5


def test_deep_let_expansion_is_reported_at_the_use():
    """Each let adds a level when expanded: a chain past MAX_DEPTH is an error at the use."""
    lets = "\n".join(f"let m{i}(x) = m{i + 1}(x) + 1" for i in range(MAX_DEPTH))
    text = f"{lets}\nlet m{MAX_DEPTH}(x) = x\n{HEAD}    bias m0(k) * 1.0\n}}"
    with pytest.raises(AttnSpecError, match="after macro expansion") as e:
        attnspec.build(text)
    assert (e.value.errors[0].span.line, e.value.errors[0].span.col) == (MAX_DEPTH + 4, 10)


def test_text_that_no_path_can_be_is_spec_text():
    """`attnspec.build` on a long string without a newline raised OSError (file name too long)
    from its is-this-a-path check; a path with a NUL byte raised ValueError."""
    with pytest.raises(AttnSpecError, match="unexpected name"):
        attnspec.build("x" * 5000)
    with pytest.raises(AttnSpecError, match="cannot read file"):
        attnspec.build("x" * 5000 + ".attn")
    with pytest.raises(AttnSpecError, match="NUL byte"):
        attnspec.build("a\x00b.attn")


@pytest.mark.parametrize("separator", ["\x0c", "\u2028", "\x85", "\x1c", "\r"])
def test_diagnostics_show_the_line_the_parser_counted(separator):
    """Only `\\n` ends a line for the parser; the report used str.splitlines, so a form feed or a
    U+2028 in a comment made the caret show a different line."""
    text = f"attention A {{\r\n heads = 2 # x{separator}y\r\n head_dim = 8\n mask caual\r\n}}"
    with pytest.raises(AttnSpecError) as e:
        attnspec.build(text)
    assert str(e.value).split("\n")[:3] == [
        "<spec>:4:7: error[E201]: unknown name `caual`", "   mask caual", "        ^^^^^"]


def test_caret_keeps_tabs_and_far_columns_in_view():
    text = "attention A {\n\theads = 2; head_dim = 8\n\t\tmask caual\n}"
    with pytest.raises(AttnSpecError) as e:
        attnspec.build(text)
    assert str(e.value).split("\n")[1:3] == ["  \t\tmask caual", "  \t\t     ^^^^^"]
    text = HEAD + "    mask " + "q + " * 80 + "caual >= k\n}"
    with pytest.raises(AttnSpecError) as e:
        attnspec.build(text)
    shown, caret = str(e.value).split("\n")[1:3]
    assert len(caret) < 100 and shown[caret.index("^"):].startswith("caual")


@pytest.mark.parametrize(("statement", "message"), [
    ("scale = inf - inf", "`scale` must be a finite number, got nan"),
    ("scale = -inf", "`scale` must be a finite number"),
    ("param t: float[heads] = normal(-1)\n    bias t[h]", "needs std >= 0"),
    ("param t: float[heads] = uniform(1, 0)\n    bias t[h]", "needs lo <= hi"),
    ("param t: float[heads] = normal(inf)\n    bias t[h]", "takes finite numbers"),
    ("position rope(base = 1e999)", "rope base must be positive and finite"),
    ("position rope(base = inf - inf)", "rope base must be positive and finite"),
])
def test_values_that_would_fail_or_poison_the_module_are_check_errors(statement, message):
    """These checked, then the constructor raised torch's RuntimeError (normal, uniform) or the
    module computed NaN or zeros everywhere (scale, rope base)."""
    with pytest.raises(AttnSpecError, match=message) as e:
        attnspec.build(HEAD + "    " + statement + "\n}")
    assert e.value.errors[0].span.line in (1, 3)


def test_mup_init_std_is_checked():
    text = "attention A {\n    dim = 16; heads = 2\n    mup { base_dim = 8; init_std = %s }\n}"
    with pytest.raises(AttnSpecError, match="init_std must be at least 0"):
        attnspec.build(text % "-1.0")
    with pytest.raises(AttnSpecError, match="`init_std` must be a finite number"):
        attnspec.build(text % "inf")
    attnspec.build(text % "0.0")


# --- the CLI ----------------------------------------------------------------------------------

def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnspec.cli", *args], capture_output=True,
                          text=True, input=stdin, timeout=120)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00junk", b"attention {", b"attention A {\n}\n",
                                     b"(" * 100_000])
def test_cli_reports_without_traceback(tmp_path, content):
    path = tmp_path / "bad.attn"
    path.write_bytes(content)
    result = run_cli("check", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "bad.attn:" in result.stderr


def test_cli_check_clean_specs_exit_zero():
    result = run_cli("check", str(ROOT / "specs"))
    assert result.returncode == 0, result.stderr
    assert f"no errors or warnings (checked {len(SPECS)} files)" in result.stderr


def test_cli_missing_file(tmp_path):
    result = run_cli("check", str(tmp_path / "nope.attn"))
    assert result.returncode == 1
    assert "cannot read file" in result.stderr


@pytest.mark.parametrize("path", ["specs/causal_lm.atn", "causal_lm.txt", "specs/causal_lm",
                                  "no/such/dir/x.attn"])
def test_a_mistyped_path_is_a_missing_file_not_spec_text(path):
    """A one-line string without `{` that has a `/` or a file suffix is a path: a mistyped one
    says the file does not exist (it was parsed as spec text: "unexpected name `specs`")."""
    with pytest.raises(AttnSpecError, match="cannot read file: it does not exist"):
        attnspec.load(path)


def test_one_line_spec_text_with_a_slash_is_still_text():
    assert not attnspec.build("let r = 1/2").attentions  # parsed as text, not opened
