"""Every backend generated into a module matches the eager interpreter (the verify harness, on
fresh random inputs, outputs and gradients), and backend selection explains itself."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec import backends
from attnspec.explain import explain_module
from attnspec.verify import cases_for, check_case

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.attn"))
SEED = random.randrange(2**31)  # fresh inputs each run; printed on failure


def spec_backends():
    for path in SPECS:
        module_ir = attnspec.build(path)
        for attn in module_ir.attentions:
            for name in backends.plans(attn):
                if name == "flash":
                    continue  # CUDA only: tests/test_flash.py runs it through a model of flash-attn
                yield pytest.param(path, attn.name, name, id=f"{attn.name}-{name}")


@pytest.mark.parametrize("path, attention, backend", list(spec_backends()))
def test_backend_matches_eager_interpreter(path, attention, backend):
    module_ir, module = attnspec.build(path), attnspec.load(path)
    attn = next(a for a in module_ir.attentions if a.name == attention)
    for i, case in enumerate(cases_for(attn)):
        if case.edge_rows and backend == "flex":
            continue  # refused (one edge list per batch row): tests/test_edges_per_row.py
        result = check_case(attn, getattr(module, attention), backend, case, torch.float32,
                            "cpu", SEED + i, path.name)
        assert result.ok, f"seed {SEED + i}: {result}"


def test_sdpa_is_generated_where_supported():
    module = attnspec.load(ROOT / "specs/causal_lm.attn")
    assert module.CausalLM.BACKENDS == ("eager", "sdpa", "flex", "flash")
    sliding = attnspec.load(ROOT / "specs/sliding_window.attn").SlidingWindowGQA
    assert sliding.BACKENDS == ("eager", "flex")
    assert sliding.AUTO_CPU == "eager" and sliding.AUTO_CUDA == ("flex",)
    assert "SDPA cannot transform scores" in sliding.UNSUPPORTED["sdpa"][0]


PLAN_KINDS = {
    "CausalLM": "causal", "CrossAttention": "full", "DecodeWithCache": "causal_bottom_right",
    "AnchorAttention": "patterns", "PackedDocuments": "dense", "AlibiCausal6": "dense",
}


@pytest.mark.parametrize("attention, kind", PLAN_KINDS.items())
def test_sdpa_plan_kind_by_structure(attention, kind):
    attn = next(a for p in SPECS for a in attnspec.build(p).attentions if a.name == attention)
    assert backends.plans(attn)["sdpa"].kind == kind


def test_causal_written_by_hand_is_causal_for_sdpa():
    text = "attention H {\n heads = 2\n head_dim = 4\n mask !(k > q)\n}\n"
    assert backends.plans(attnspec.build(text).attentions[0])["sdpa"].kind == "causal"


def test_sdpa_dense_mask_rows_with_nothing_to_attend_are_zero():
    text = ("attention P {\n heads = 2\n head_dim = 8\n input n: int[batch]\n"
            " mask key_len(n)\n bias alibi\n}\n")
    mod = attnspec.load(text)
    q = torch.randn(2, 2, 5, 8)
    out = mod.P(backend="sdpa")(q, q, q, n=torch.tensor([0, 3]))
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.isfinite(out).all()


def test_patterns_with_runtime_group_sizes():
    text = ("attention G {\n heads = 2\n head_dim = 8\n tokens { a: 3\n b: *\n c: * }\n"
            " pattern a, c -> a\n pattern b -> b, c\n}\n")
    mod, module_ir = attnspec.load(text), attnspec.build(text)
    q, k, v = (torch.randn(1, 2, 12, 8, dtype=torch.float64) for _ in range(3))
    sizes = {"b": 4}
    eager = mod.G(backend="eager").double()(q, k, v, sizes=sizes)
    sdpa = mod.G(backend="sdpa").double()(q, k, v, sizes=sizes)
    torch.testing.assert_close(sdpa, eager)
    assert module_ir.attentions[0].patterns


def test_explain_names_every_backend_and_the_auto_choice():
    text = explain_module(attnspec.build(ROOT / "specs/sliding_window.attn"))
    assert "mask: band -1024 <= k - q <= 0 (top-left; sliding window 1024)" in text
    assert "sdpa: not supported" in text
    assert "specs/sliding_window.attn:15:5: SDPA cannot transform scores" in text or \
        "sliding_window.attn:15:5" in text
    assert "flash: not supported" in text and "flash: supported (batched)" in text
    gqa = text.split("attention SlidingWindowMistral")[0]
    assert "auto -> eager on CPU, flex on CUDA\n  auto on CUDA tries: flex" in gqa


def test_cli_explain(capsys):
    from attnspec.cli import main

    assert main(["explain", str(ROOT / "specs/anchor.attn")]) == 0
    out = capsys.readouterr().out
    assert "sdpa: supported (patterns)" in out and "auto -> sdpa on CPU, flex on CUDA" in out


def test_cli_verify_json_and_junit(tmp_path, capsys):
    import json
    import xml.etree.ElementTree as ET

    from attnspec.cli import main

    junit = tmp_path / "verify.xml"
    code = main(["verify", str(ROOT / "specs/causal_lm.attn"), "--json", "--junit", str(junit),
                 "--backend", "eager,sdpa", "--seed", "3"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["backend"] for r in rows} == {"eager", "sdpa"} and all(r["ok"] for r in rows)
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == str(len(rows)) and suite.get("failures") == "0"


def test_cuda_cases_add_the_shapes_where_kernels_broke():
    """On CUDA verify also tries 77 and 300 tokens and more queries than keys (flash-attn 4's
    dense dq broke from 77 tokens at head_dim 16); CPU cases stay the quick ones."""
    spec = "attention A {\n heads = 2\n head_dim = 8\n mask causal\n}"
    attn = attnspec.build(spec).attentions[0]
    cpu = [c.name for c in cases_for(attn)]
    assert cpu == ["S=37", "S=1", "Sq=19,Sk=45"]
    assert [c.name for c in cases_for(attn, "cuda:0")] == \
        cpu + ["S=77", "S=300", "Sq=45,Sk=19"]
