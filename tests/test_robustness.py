"""Bad input of any kind gives attnspec's own error (API) or a clean report and exit 1 (CLI),
never a foreign exception or a traceback. A short mutation-fuzz run; longer runs: set
ATTNSPEC_FUZZ_ROUNDS."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from attnspec.compiler import decode_spec
from attnspec.errors import AttnSpecError
from attnspec.ir.build import build_text

SPECS = sorted(Path(__file__).parent.parent.joinpath("specs").glob("*.attn"))
PIECES = list("(){}[]<>=!&|+-*/%,.;:#\n\r\t _0123456789") + [
    "causal", "score", "in", "let", "attention", "inf", "1e999", "9" * 30, "q", "k", "h", "b",
    "mask", "bias", "tokens", "pattern", "param", "input", "__x", "class", "é", "\x00", "\u2028",
]


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(text) + 1)
        op = rng.random()
        if op < 0.4:
            text = text[:pos] + rng.choice(PIECES) + text[pos:]
        elif op < 0.8:
            text = text[:pos] + text[pos + rng.randint(1, 5):]
        else:
            start = rng.randrange(len(text) + 1)
            text = text[:pos] + text[start:start + 20] + text[pos:]
    return text


def test_mutated_specs_raise_only_attnspec_errors():
    rounds = int(os.environ.get("ATTNSPEC_FUZZ_ROUNDS", "1500"))
    rng = random.Random(rounds)
    texts = [p.read_text() for p in SPECS]
    for _ in range(rounds):
        text = mutate(rng.choice(texts), rng)
        try:
            build_text(text)
        except AttnSpecError as e:
            assert str(e)  # formatting never fails either


def test_random_bytes_are_reported_not_crashed():
    rng = random.Random(7)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        try:
            build_text(decode_spec(data, "junk.attn").text)
        except AttnSpecError as e:
            assert str(e)


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
    result = run_cli("check", str(SPECS[0].parent))
    assert result.returncode == 0, result.stderr
    assert f"checked {len(SPECS)} file(s): 0 with errors" in result.stderr


def test_cli_missing_file(tmp_path):
    result = run_cli("check", str(tmp_path / "nope.attn"))
    assert result.returncode == 1
    assert "cannot read file" in result.stderr
