"""`attnspec mup-check`: muP keeps activations flat across widths where standard parametrization
blows up; the probe reads the scores the module really uses; table, JSON, PNG and errors.

Thresholds come from specs/mup_layer.attn at the defaults (widths 64..512, 5 Adam steps at lr
1e-2), ratio = mean |x| at width 512 / at width 64 after the last step, measured over seeds 0-9:
muP q 0.84-1.09, k 0.86-1.06, logits 0.51-0.87, out 0.59-1.00 (asserted: 0.4 <= ratio <= 1.5);
SP q 3.5-4.0, k 3.3-3.7, logits 23-28, out 3.8-6.7 (asserted: > 2.5, logits > 10).
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec import eager
from attnspec.cli import main
from attnspec.mup_check import QUANTITIES, _make_model, _Probe, coord_check

ROOT = Path(__file__).resolve().parent.parent
MUP_LAYER = ROOT / "specs" / "mup_layer.attn"
SMALL = "attention Small {\n dim = 64\n heads = 4\n mask causal\n mup { base_dim = 32 }\n}\n"


@pytest.fixture(scope="module")
def check():
    module_ir = attnspec.build(MUP_LAYER)
    attn = module_ir.attentions[0]
    return coord_check(attn, getattr(attnspec.load(MUP_LAYER), attn.name), seed=0)


def test_mup_stays_flat_across_widths(check):
    assert check.widths == [64, 128, 256, 512] and check.head_dims == [4, 8, 16, 32]
    for quantity in QUANTITIES:
        assert 0.4 <= check.ratio("mup", quantity) <= 1.5, quantity
    assert check.mean_abs["mup"]["q"][0] == [0.0] * 4  # zero query at init


def test_sp_grows_with_width(check):
    for quantity in QUANTITIES:
        assert 0.8 <= check.ratio("sp", quantity, step=0) <= 1.25, quantity  # init: flat
        assert check.ratio("sp", quantity) > 2.5, quantity
    assert check.ratio("sp", "logits") > 10
    # every step after the first update grows, not just the last one
    assert all(check.ratio("sp", "logits", step) > 5 for step in range(1, check.steps + 1))


def test_probe_logits_are_the_modules_scores():
    """softmax(probe logits) @ v through o_proj reproduces the eager interpreter's layer output:
    the probe reads q, k, heads (GQA included) and scale as the module uses them."""
    spec = "attention G {\n dim = 96\n heads = 4\n kv_heads = 2\n mup { base_dim = 48 }\n}\n"
    attn = attnspec.build(spec).attentions[0]
    model = _make_model(attn, attnspec.load(spec).G, 96, "mup", "eager").double()
    layer = model.attention
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.3)  # muP's zero query would make every score 0
    x = torch.randn(2, 11, 96, dtype=torch.float64)
    probe = _Probe(layer)
    with torch.no_grad():
        layer(x)
        logits = layer.scale * probe_scores(probe, layer)
        v = layer.v_proj(x).view(2, 11, 2, 24).transpose(1, 2).repeat_interleave(2, dim=1)
        heads = torch.softmax(logits, dim=-1) @ v
        out = layer.o_proj(heads.transpose(1, 2).reshape(2, 11, 96))
        ref = eager.run(attn, layer.state_dict(), x)
    probe.close()
    torch.testing.assert_close(out, ref)
    assert probe.stats()["logits"] == pytest.approx(logits.abs().mean().item())
    assert probe.stats()["out"] == pytest.approx(ref.abs().mean().item())
    assert not layer.q_proj._forward_hooks  # closed: the module is left as it was


def probe_scores(probe: _Probe, layer) -> torch.Tensor:
    q = probe.seen["q_proj"].view(2, 11, layer.heads, layer.head_dim).transpose(1, 2)
    k = probe.seen["k_proj"].view(2, 11, layer.kv_heads, layer.head_dim).transpose(1, 2)
    return q @ k.repeat_interleave(layer.heads // layer.kv_heads, dim=1).transpose(-2, -1)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["mup-check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_shape(capsys, tmp_path):
    spec = tmp_path / "small.attn"
    spec.write_text(SMALL)
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    code, out, err = run_cli(capsys, str(spec), "--widths", "32,64", "--steps", "2", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["attention"] == "Small" and data["widths"] == [32, 64]
    assert data["heads"] == [4, 4] and data["head_dims"] == [8, 16] and data["base_dim"] == 32
    for param in ("mup", "sp"):
        assert set(data["mean_abs"][param]) == set(QUANTITIES)
        for rows in data["mean_abs"][param].values():
            assert len(rows) == 3 and all(len(r) == 2 for r in rows)  # [step][width]
        assert len(data["loss"][param]) == 3
        assert set(data["ratios"][param]) == set(QUANTITIES)
    # the check leaves the global RNG and thread count as it found them
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_cli_table(capsys, tmp_path):
    spec = tmp_path / "small.attn"
    spec.write_text(SMALL)
    code, out, _ = run_cli(capsys, str(spec), "--widths", "32,64", "--steps", "1")
    assert code == 0
    for quantity in QUANTITIES:
        assert f"mean |{quantity}|" in out
    assert re.search(r"^head_dim +8 +16$", out, re.MULTILINE)
    rows = [line.split()[:2] for line in out.splitlines() if line[:4] in ("muP ", "SP  ")]
    assert rows.count(["muP", "1"]) == rows.count(["SP", "1"]) == len(QUANTITIES)


def test_cli_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    spec, png = tmp_path / "small.attn", tmp_path / "coord.png"
    spec.write_text(SMALL)
    code, _, err = run_cli(capsys, str(spec), "--widths", "32,64,128", "--steps", "2",
                           "-o", str(png))
    assert code == 0, err
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert struct.unpack(">II", head[16:24]) == (1600, 700)


def test_png_without_matplotlib(capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as when not installed
    code, _, err = run_cli(capsys, str(MUP_LAYER), "-o", "x.png")
    assert code == 1 and "pip install 'attnspec[plot]'" in err and "Traceback" not in err


@pytest.mark.parametrize("spec, argv, message", [
    ("attention K {\n heads = 2\n head_dim = 8\n}\n", (),
     "k.attn:1:11: error[E501]: attention `K` has no `mup` block"),
    ("attention L {\n dim = 64\n heads = 2\n}\n", (), "L` has no `mup` block"),
    (SMALL, ("--name", "Nope"), "no attention 'Nope'; it has Small"),
    (SMALL + SMALL.replace("Small", "Other"), (), "several attentions have `mup` (Small, Other)"),
    (SMALL, ("--widths", "2,64"), "width 2: head_dim must be a positive integer"),
    ("attention M {\n heads = 2\n head_dim = 8\n mup { base_dim = 4 }\n}\n", (),
     "`mup` needs layer mode"),
])
def test_errors(capsys, tmp_path, spec, argv, message):
    path = tmp_path / "k.attn"
    path.write_text(spec)
    code, out, err = run_cli(capsys, str(path), *argv)
    assert code == 1 and message in err and "Traceback" not in err and not out


@pytest.mark.parametrize("argv, message", [
    (("--widths", "32,x"), "argument --widths: takes comma-separated integers"),
    (("--widths", "64"), "argument --widths: needs at least 2 distinct values"),
    (("--steps", "0"), "argument --steps: must be in"),
])
def test_usage_errors(capsys, tmp_path, argv, message):
    path = tmp_path / "k.attn"
    path.write_text(SMALL)
    code, out, err = run_cli(capsys, str(path), *argv)
    assert code == 2 and message in err and "Traceback" not in err and not out
