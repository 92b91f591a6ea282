"""Golden snapshots of every pipeline stage (`attnspec compile --emit ast|ir|py`) for a few specs.

After an intended change, regenerate with `ATTNSPEC_UPDATE_GOLDEN=1 pytest tests/test_golden.py`
and review the diff like code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attnspec.cli import main

ROOT = Path(__file__).parent.parent
GOLDEN = Path(__file__).parent / "golden"
SPECS = ["causal_lm", "sliding_window", "anchor", "graph", "decode"]
STAGES = ["ast", "ir", "py"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("name", SPECS)
def test_stage_matches_snapshot(name, stage, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the module header names the spec path as given
    assert main(["compile", f"specs/{name}.attn", "--emit", stage, "-o", "-"]) == 0
    got = capsys.readouterr().out
    expected_path = GOLDEN / f"{name}.{stage}.txt"
    if os.environ.get("ATTNSPEC_UPDATE_GOLDEN"):
        expected_path.write_text(got)
    assert expected_path.exists(), f"missing snapshot {expected_path}; set ATTNSPEC_UPDATE_GOLDEN=1"
    assert got == expected_path.read_text()


def test_output_is_byte_identical_across_runs(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    outputs = []
    for _ in range(2):
        main(["compile", "specs/graph.attn", "-o", "-"])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
