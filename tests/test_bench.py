"""`attnspec bench` on the CPU: rows, JSON, progress and bad arguments (timings themselves are
measured on the GPU: docs/performance.md)."""

import io
import json
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.bench import bench_inputs, bench_source, density, random_documents
from attnspec.cli import main
from attnspec.console import Progress

ROOT = Path(__file__).resolve().parent.parent
SPEC = "attention A {\n heads = 2\n head_dim = 8\n input doc: int[batch, seq]\n mask causal\n" \
       " mask same(doc)\n}\n"


def test_rows_for_every_backend_and_auto():
    rows = bench_source(SPEC, device="cpu", dtype=torch.float32, seqs=(64,), batch=2, reps=2,
                        warmup=1)
    assert [(r.backend, r.pass_) for r in rows] == [
        ("eager", "fwd"), ("eager", "fwd+bwd"), ("sdpa", "fwd"), ("sdpa", "fwd+bwd"),
        ("flex", "fwd"), ("auto", "fwd"), ("auto", "fwd+bwd")]  # flex: no CPU backward
    for r in rows:
        assert r.ms > 0 and r.tflops > 0 and not r.note
        assert 0 < r.density < 0.6  # causal within documents
    flex = next(r for r in rows if r.backend == "flex")
    assert flex.ran == "flex-cpu" and flex.block_mask_ms is not None


def test_density_matches_the_dense_mask():
    attn = attnspec.build(SPEC).attentions[0]
    gen = torch.Generator().manual_seed(0)
    _, inputs, sizes = bench_inputs(attn, 2, 50, 50, torch.float32, "cpu", gen)
    dense = attnspec.eager.evaluate_mask(attn, 2, 50, 50, inputs)
    assert density(attn, 2, 50, 50, inputs, sizes, "cpu") == pytest.approx(
        dense.float().mean().item())


def test_random_documents_are_runs_of_the_asked_lengths():
    ids = random_documents(3, 5000, torch.Generator().manual_seed(1), 100, 300)
    assert ids.shape == (3, 5000) and bool((ids[:, 1:] >= ids[:, :-1]).all())
    for row in ids:
        counts = torch.bincount(row)
        assert int(counts[:-1].min()) >= 100 and int(counts.max()) <= 300


def test_cli_json(tmp_path, capsys):
    path = tmp_path / "a.attn"
    path.write_text(SPEC)
    code = main(["bench", str(path), "--device", "cpu", "--dtype", "float32", "--seq", "48",
                 "--batch", "1", "--reps", "2", "--backend", "sdpa,auto", "--json"])
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert code == 0 and {r["backend"] for r in rows} == {"sdpa", "auto"}
    assert "2/2" in out.err  # the progress line


@pytest.mark.parametrize("extra, message", [
    (["--name", "B"], "no attention 'B'; it has A"),
])
def test_cli_errors(tmp_path, capsys, extra, message):
    path = tmp_path / "a.attn"
    path.write_text(SPEC)
    assert main(["bench", str(path), "--device", "cpu", *extra]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--seq", "12x"], "argument --seq: takes comma-separated integers"),
    (["--seq", "0"], "argument --seq: must be in"),
    (["--dtype", "int8"], "argument --dtype: unknown dtype 'int8'; use one of float64"),
])
def test_cli_usage_errors(tmp_path, capsys, extra, message):
    path = tmp_path / "a.attn"
    path.write_text(SPEC)
    assert main(["bench", str(path), "--device", "cpu", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cli_without_cuda(tmp_path, capsys):
    path = tmp_path / "a.attn"
    path.write_text(SPEC)
    assert main(["bench", str(path), "--device", "cuda"]) == 1
    assert "no CUDA device here; use --device cpu" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU default")
def test_cli_defaults_to_the_device_that_exists(tmp_path, capsys):
    path = tmp_path / "a.attn"
    path.write_text(SPEC)
    assert main(["bench", str(path), "--dtype", "float32", "--seq", "32", "--batch", "1",
                 "--reps", "1", "--backend", "eager", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["backend"] == "eager" and "CUDA" not in out.err


def test_progress_is_rich_live_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = Progress(2, stream)
    assert progress._rich is not None  # rich's bar, not a line per step
    progress("a")
    progress("b")
    progress.close()
    assert "[" + "." * 24 + "]" not in stream.getvalue()
