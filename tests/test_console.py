"""Terminal output: coloured diagnostics only on terminals, progress bars, `--json` on the
commands a machine reads (check, explain; verify and bench have their own tests)."""

from __future__ import annotations

import io
import json

import pytest

from attnspec.cli import main
from attnspec.console import Progress, colour_diagnostics, use_colour

BAD = "attention A {\n heads = 2\n head_dim = 4\n mask caual\n}\n"
GOOD = "attention A {\n heads = 2\n head_dim = 4\n mask causal\n}\n"


class Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def no_colour_env(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def test_colour_only_on_a_terminal(no_colour_env, monkeypatch):
    assert use_colour(Tty()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert use_colour(io.StringIO())


def test_coloured_diagnostic_keeps_its_text(no_colour_env):
    text = "m.attn:4:7: error: unknown name `caual`\n   mask caual\n        ^^^^^\n" \
           "  hint: did you mean `causal`?"
    coloured = colour_diagnostics(text, Tty())
    assert "\x1b[1;31merror:" in coloured and "\x1b[1;32m^^^^^" in coloured
    assert _strip_ansi(coloured) == text
    assert colour_diagnostics(text, io.StringIO()) == text


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_cli_diagnostics_plain_when_piped(tmp_path, capsys, no_colour_env):
    path = tmp_path / "bad.attn"
    path.write_text(BAD)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "bad.attn:4:7: error[E201]: unknown name `caual`" in err and "\x1b[" not in err


def test_check_json(tmp_path, capsys):
    (tmp_path / "bad.attn").write_text(BAD)
    (tmp_path / "good.attn").write_text(GOOD)
    assert main(["check", "--json", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(r["file"].rsplit("/", 1)[-1], r["ok"]) for r in report] == \
        [("bad.attn", False), ("good.attn", True)]
    (diag,) = report[0]["diagnostics"]
    assert (diag["line"], diag["col"], diag["severity"]) == (4, 7, "error")
    assert diag["hint"] == "did you mean `causal`?"


def test_explain_json(tmp_path, capsys):
    path = tmp_path / "good.attn"
    path.write_text(GOOD)
    assert main(["explain", "--json", str(path)]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["attention"] == "A" and report["backends"]["sdpa"]["supported"]
    assert report["auto"]["cpu"] == "sdpa"
    assert report["auto"]["cuda_order"][0]["backend"] == report["auto"]["cuda"]
    assert all(step["why"] for step in report["auto"]["cuda_order"])


def test_plain_progress_writes_a_line_per_step():
    stream = io.StringIO()
    with Progress(2, stream, label="verify") as progress:
        progress("a")
        progress("b")
    assert stream.getvalue().splitlines() == [f"[{'.' * 24}] 1/2 a",
                                              f"[{'#' * 12}{'.' * 12}] 2/2 b"]


def test_quiet_progress_writes_nothing():
    stream = Tty()
    with Progress(2, stream, quiet=True) as progress:
        progress("a")
    assert stream.getvalue() == ""


def test_rich_progress_on_a_terminal():
    pytest.importorskip("rich")
    stream = Tty()
    with Progress(3, stream, label="verify") as progress:
        for step in "abc":
            progress(step)
    assert progress.done == 3 and progress._rich is None  # stopped
