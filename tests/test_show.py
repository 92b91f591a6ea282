"""`attnspec show`: mask counts and block classes against the interpreter's dense mask, the bias
against a dense score pipeline, weights against the module's output, text snapshots, pictures
and the command's errors.

Snapshots: after an intended change, regenerate with
`ATTNSPEC_UPDATE_GOLDEN=1 pytest tests/test_show.py` and review the diff."""

from __future__ import annotations

import json
import os
import random
import struct
import sys
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec import eager, show
from attnspec.cli import main
from attnspec.ir.consts import resolve_settings
from attnspec.show import pictures

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"

# Masks that read every index, a per-batch input, a per-head setting, edges and a param.
MIXED = """
attention Mixed {
    heads = 3
    head_dim = 8
    input lengths: int[batch]
    param w: float[heads] = zeros
    mask k < lengths[b] & (q - k <= 4 * h + 3 | k % 7 == 0)
    bias w[h] * (q - k)
    score = score * sigmoid(w[h] + 0.1 * k)
}
"""


def _seed() -> int:
    seed = random.randrange(2**31)
    print(f"seed {seed}")  # shown when a test fails
    return seed


def _counts(mask: torch.Tensor, tq: int, tk: int) -> torch.Tensor:
    """Brute force: kept entries per tq x tk tile of a dense bool [Sq, Sk] mask."""
    rows = [mask[i:i + tq] for i in range(0, mask.shape[0], tq)]
    return torch.tensor([[int(r[:, j:j + tk].sum()) for j in range(0, mask.shape[1], tk)]
                         for r in rows])


CASES = [  # (spec, attention index, q_len, kv_len, cell, block)
    ("specs/local_strided_bigbird.attn", 2, 150, 150, (7, 5), 32),
    ("specs/packed_documents.attn", 0, 200, 200, (3, 3), 32),
    ("specs/anchor.attn", 0, 290, 290, (10, 4), 128),
    ("specs/graph.attn", 0, 90, 90, (4, 4), 16),
    ("specs/cross_attention.attn", 1, 13, 150, (1, 9), 16),
    (MIXED, 0, 70, 53, (6, 5), 16),
]


@pytest.mark.parametrize("spec,index,q_len,kv_len,cell,block", CASES)
def test_counts_and_block_classes_match_the_dense_mask(spec, index, q_len, kv_len, cell, block,
                                                       monkeypatch):
    monkeypatch.setattr(pictures, "CHUNK", 997)  # many chunks, most ending inside a tile
    seed = _seed()
    attn = attnspec.build(ROOT / spec if spec.endswith(".attn") else spec).attentions[index]
    batch, batch_index, head = 3, 2, int(resolve_settings(attn)["heads"]) - 1
    _, inputs = show.show_inputs(attn, batch, q_len, kv_len, seed)
    _, _, sizes = show.show_lengths(attn, q_len, kv_len)
    state = show.random_state(attn, seed)
    pic = show.mask_picture(attn, q_len, kv_len, cell=cell, block=block, batch_index=batch_index,
                            head=head, inputs=inputs, sizes=sizes, state=state)
    dense = eager.evaluate_mask(attn, batch, q_len, kv_len, inputs, sizes,
                                state=state)[batch_index, head]
    assert torch.equal(pic.cells, _counts(dense, *cell))
    blocks = _counts(dense, block, block)
    assert torch.equal(pic.blocks, blocks)
    area = _counts(torch.ones_like(dense), block, block)
    expected = torch.where(blocks == 0, 0, torch.where(blocks == area, 2, 1))
    assert torch.equal(pic.block_classes.long(), expected)
    assert pic.density == pytest.approx(dense.double().mean().item())


def test_the_mask_is_evaluated_in_chunks(monkeypatch):
    """Long sequences never evaluate more than CHUNK entries (or one row of keys) at once."""
    attn = attnspec.build(ROOT / "specs/causal_lm.attn").attentions[0]
    seen = []
    original = pictures.window_mask

    def spy(frame, qs, ks, *args):
        seen.append(len(qs) * len(ks))
        return original(frame, qs, ks, *args)

    monkeypatch.setattr(pictures, "window_mask", spy)
    monkeypatch.setattr(pictures, "CHUNK", 4096)
    pic = show.mask_picture(attn, 1000, 1000, cell=100, block=128)
    assert max(seen) <= 4096 and sum(seen) == 1000 * 1000
    assert pic.block_counts() == {"full": 28, "partial": 8, "empty": 28}


def test_bias_and_gain_match_the_dense_score_pipeline():
    seed = _seed()
    attn = attnspec.build(MIXED).attentions[0]
    q_len, kv_len, cell, head = 40, 33, (3, 4), 2
    _, inputs = show.show_inputs(attn, 1, q_len, kv_len, seed)
    state = show.random_state(attn, seed)
    bias = show.bias_picture(attn, q_len, kv_len, cell=cell, head=head, inputs=inputs,
                             state=state)
    frame = show.make_frame(attn, 1, q_len, kv_len, inputs, state=state)

    def pipeline(value: float) -> torch.Tensor:  # the full [1, H, Sq, Sk] pipeline
        score = torch.full((1, 3, q_len, kv_len), value, dtype=torch.float64)
        return eager.score_pipeline(frame, score)[0, head]

    mask = eager.evaluate_mask(attn, 1, q_len, kv_len, inputs, state=state)[0, head]
    rows, cols = bias.qs[:, None], bias.ks[None, :]
    kept = mask[rows, cols]
    offset, eps = pipeline(0.0)[rows, cols], 1e-4
    gain = ((pipeline(eps) - pipeline(-eps)) / (2 * eps))[rows, cols]
    assert torch.equal(bias.offset.isnan(), ~kept) and bool(kept.any())
    assert torch.allclose(bias.offset[kept], offset[kept])
    assert torch.allclose(bias.gain[kept], gain[kept], atol=1e-6)
    assert bias.qs.tolist() == [min(i + 1, q_len - 1) for i in range(0, q_len, 3)]


@pytest.mark.parametrize("spec,index", [("specs/key_padding.attn", 1),
                                        ("specs/attention_sinks.attn", 0),
                                        ("specs/anchor.attn", 0)])
def test_weights_are_the_probabilities_the_module_uses(spec, index):
    seed = _seed()
    attn = attnspec.build(ROOT / spec).attentions[index]
    py_module = attnspec.load(ROOT / spec)
    q_len, kv_len, sizes = show.show_lengths(attn, 40 if not attn.groups else None, None)
    args, inputs = show.show_inputs(attn, 2, q_len, kv_len, seed)
    if "lengths" in inputs:
        inputs["lengths"][0] = 0  # a batch row with nothing to attend
    weights = show.random_weights(attn, py_module, args, inputs, sizes, seed)
    rows = weights.sum(-1)
    mask = eager.evaluate_mask(attn, 2, q_len, kv_len, inputs, sizes or None)
    attended = mask.any(-1)
    assert bool((weights[~mask] == 0).all())
    if attn.sinks:  # the sink takes part of every row
        assert bool((rows[attended] < 1).all()) and bool((rows[attended] > 0).all())
    else:
        assert torch.allclose(rows[attended], torch.ones_like(rows[attended]), atol=1e-5)
    assert bool((rows[~attended] == 0).all())
    if "lengths" in inputs:
        assert not bool(attended[0].any())


def test_weights_times_v_is_the_module_output():
    spec = ROOT / "specs/sliding_window.attn"
    cls = attnspec.load(spec).SlidingWindowGQA
    module = cls(backend="eager")
    q = torch.randn(1, 16, 50, 128)
    k, v = torch.randn(1, 4, 50, 128), torch.randn(1, 4, 50, 128)
    weights = show.attention_weights(module, q, k, v)
    expected = module(q, k, v)
    got = weights @ v.repeat_interleave(4, dim=1)
    assert weights.shape == (1, 16, 50, 50)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(show.attention_weights(cls, q, k, v), weights)  # a class works too
    with pytest.raises(TypeError, match="not an attention class"):
        show.attention_weights(torch.nn.Linear(2, 2), q, k, v)


# --- text ---------------------------------------------------------------------------------------
SNAPSHOTS = {
    "local_strided_bigbird": ["--q-len", "512"],
    "anchor": [],
    "packed_documents": ["--q-len", "600", "--head", "1"],
    "sliding_window": ["--name", "SlidingWindowGQA", "--q-len", "200", "--head", "3",
                       "--ascii"],
}


@pytest.mark.parametrize("name", sorted(SNAPSHOTS))
def test_terminal_rendering_matches_snapshot(name, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["show", f"specs/{name}.attn", "--width", "80", *SNAPSHOTS[name]]) == 0
    got = capsys.readouterr().out
    expected = GOLDEN / f"show_{name}.txt"
    if os.environ.get("ATTNSPEC_UPDATE_GOLDEN"):
        expected.write_text(got)
    assert expected.exists(), f"missing snapshot {expected}; set ATTNSPEC_UPDATE_GOLDEN=1"
    assert got == expected.read_text()
    picture = [line for line in got.splitlines() if line[:1] == " " or line[:4].strip()
               .isdigit()]
    assert picture and max(map(len, picture)) <= 80


def test_json(capsys):
    assert main(["show", str(ROOT / "specs/local_strided_bigbird.attn"), "--name", "Local",
                 "--q-len", "256", "--head", "0", "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["attention"] == "Local" and report["blocks"] == {
        "full": 2, "partial": 2, "empty": 0}
    assert report["block_classes"] == ["FP", "PF"]
    assert report["bias"]["steps"] == 0 and 0 < report["density"] < 1


# --- pictures -----------------------------------------------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    out = tmp_path / "m.png"
    assert main(["show", str(ROOT / "specs/sliding_window.attn"), "--q-len", "300",
                 "-o", str(out)]) == 0
    gqa, mistral = tmp_path / "m_SlidingWindowGQA.png", tmp_path / "m_SlidingWindowMistral.png"
    assert _png_size(gqa) == (1800, 640)  # mask, bias and gain (softcap is a `score =`)
    assert _png_size(mistral) == (600, 640)  # the mask alone
    pixels = imread(mistral)
    assert pixels.shape[:2] == (640, 600) and pixels[..., :3].std() > 0.05
    assert "wrote" in capsys.readouterr().err
    weights = tmp_path / "w.png"
    assert main(["show", str(ROOT / "specs/causal_lm.attn"), "--weights", "--q-len", "32",
                 "--head", "3", "-o", str(weights)]) == 0
    assert _png_size(weights) == (320, 320)  # one head: one 3.2-inch panel
    assert capsys.readouterr().out == ""  # the picture is the output: no text dump beside it


def test_without_matplotlib_a_picture_is_a_clean_error(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = main(["show", str(ROOT / "specs/causal_lm.attn"), "-o", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert code == 1 and "pip install 'attnspec[plot]'" in err and "Traceback" not in err
    assert not (tmp_path / "m.png").exists()


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--name", "bigbird"], "no attention 'bigbird' (did you mean 'BigBird'?)"),
    (["--head", "8"], "head must be in [0, 8)"),
])
def test_errors(argv, message, capsys):
    code = main(["show", str(ROOT / "specs/local_strided_bigbird.attn"), "--q-len", "64",
                 *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--block", "0"], "argument --block: must be in 1..32768"),
    (["--q-len", "0"], "argument --q-len: must be in 1..32768"),
    (["--sizes", "a=x"], "argument --sizes: takes GROUP=N"),
])
def test_usage_errors(argv, message, capsys):
    code = main(["show", str(ROOT / "specs/local_strided_bigbird.attn"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_spec_errors(tmp_path, capsys):
    bad = tmp_path / "bad.attn"
    bad.write_text("attention A {\n heads = 2\n head_dim = 8\n mask q <\n}\n")
    assert main(["show", str(bad)]) == 1
    assert f"{bad}:4:" in capsys.readouterr().err
    assert main(["show", str(ROOT / "specs/anchor.attn"), "--kv-len", "100"]) == 1
    assert "kv_len must equal q_len" in capsys.readouterr().err
    assert main(["show", str(ROOT / "specs/anchor.attn"), "--q-len", "300"]) == 1
    assert "must add up to the sequence length 300" in capsys.readouterr().err
    assert main(["show", str(ROOT / "specs/causal_lm.attn"), "-o",
                 str(tmp_path / "missing" / "m.png")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_legend_swatch_is_the_drawn_colour_of_a_full_block():
    """The legend's "full" patch shows the colour a full block has in the picture (its tint
    over the grey of attended cells), not the bare tint over white."""
    pytest.importorskip("matplotlib")
    import numpy as np

    from attnspec.show import mask_picture
    from attnspec.show.plot import plot_mask, swatch

    attn = attnspec.build(ROOT / "specs/causal_lm.attn").attentions[0]
    pic = mask_picture(attn, 512, 512, block=128, cell=(1, 1))
    fig = plot_mask(pic, None)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    ax = fig.axes[0]
    x, y = ax.transData.transform((64, 448))  # the centre of a full block below the diagonal
    drawn = pixels[int(round(pixels.shape[0] - y)), int(round(x))]
    assert np.abs(drawn - np.array(swatch(2, 1.0))).max() < 0.03


def test_text_lists_every_group_name_in_full(capsys):
    """Axis labels cut names to the room their columns leave; one line names them all."""
    assert main(["show", str(ROOT / "specs/anchor.attn"), "--width", "60"]) == 0
    out = capsys.readouterr().out
    for name in ("surface_anchors", "surface_queries", "volume_anchors", "volume_queries"):
        assert name in out.split("groups:", 1)[1]


# --- --bias per-head | mean: ALiBi's slopes span 2^8 across heads -----------------------------
ALIBI_SOFTCAP = ("attention A {\n heads = 4\n head_dim = 8\n mask causal\n bias alibi\n"
                 " score = softcap(score, 5.0)\n}\n")


def test_mean_bias_is_the_mean_of_the_heads():
    attn = attnspec.build(ALIBI_SOFTCAP).attentions[0]
    heads = show.bias_per_head(attn, 12, 12, cell=2)
    assert [b.head for b in heads] == [0, 1, 2, 3]
    mean = show.mean_bias(heads)
    stacked = torch.stack([b.offset for b in heads])
    kept = ~stacked[0].isnan()
    assert torch.allclose(mean.offset[kept], stacked.mean(0)[kept])
    assert torch.equal(mean.offset.isnan(), ~kept) and mean.gain is not None
    assert mean.label == "mean over 4 heads" and mean.stats()["over_heads"] == 4


def test_per_head_text_has_a_line_per_head_on_its_own_scale(tmp_path, capsys):
    spec = tmp_path / "a.attn"
    spec.write_text(ALIBI_SOFTCAP)
    assert main(["show", str(spec), "--q-len", "32", "--width", "60", "--bias", "per-head"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if "per head" in line)
    rows = lines[start + 1:start + 5]
    assert [row.split()[0] for row in rows] == ["h=0", "h=1", "h=2", "h=3"]
    scales = [row.split()[-1] for row in rows]  # min..max per head: they differ
    assert len(set(scales)) == 4 and all(".." in s for s in scales)


def test_bias_views_in_json(tmp_path, capsys):
    spec = tmp_path / "a.attn"
    spec.write_text(ALIBI_SOFTCAP)
    assert main(["show", str(spec), "--q-len", "16", "--json", "--bias", "per-head"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert [b["head"] for b in report["bias"]] == [0, 1, 2, 3]
    assert main(["show", str(spec), "--q-len", "16", "--json", "--bias", "mean"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["bias"]["over_heads"] == 4


def test_per_head_picture_is_a_grid_beside_the_mask(tmp_path):
    pytest.importorskip("matplotlib")
    attn = attnspec.build(ALIBI_SOFTCAP).attentions[0]
    pic = show.mask_picture(attn, 16, 16, block=8)
    fig = show.plot_mask(pic, show.bias_per_head(attn, 16, 16))
    assert len(fig.subfigs) == 2 and len(fig.subfigs[1].axes) >= 4
