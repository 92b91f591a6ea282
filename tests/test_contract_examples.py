"""Every example of the language contract (shared/attnspec-language.md, beside the checkout)
checks, compiles, loads and runs; the standard library matches the contract's §7 listing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.grammar.parser import parse
from attnspec.grammar.printer import ast_text
from attnspec.ir.expr_builder import stdlib_file
from attnspec.verify import cases_for, make_inputs

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "attnspec-language.md"
pytestmark = pytest.mark.skipif(not CONTRACT.exists(), reason="shared/ is not beside the repo")


def blocks() -> list[str]:
    return re.findall(r"```\n(.*?)```", CONTRACT.read_text(), flags=re.S) if CONTRACT.exists() \
        else []


def attention_blocks() -> list[str]:
    return [b for b in blocks() if "attention " in b]


@pytest.mark.parametrize("text", attention_blocks(),
                         ids=lambda t: re.search(r"attention (\w+)", t).group(1))
def test_contract_attention_example_runs(text):
    module_ir = attnspec.build(text)
    module = attnspec.load(text)
    for attn in module_ir.attentions:
        case = cases_for(attn)[0]
        args, inputs, sizes = make_inputs(attn, case, torch.float64, "cpu",
                                          torch.Generator().manual_seed(0))
        out = getattr(module, attn.name)().double()(*args, **inputs,
                                                    **({"sizes": sizes} if sizes else {}))
        assert torch.isfinite(out).all()


def test_contract_let_examples_build():
    lets = next(b for b in blocks() if b.lstrip().startswith("let sliding"))
    spec = lets + ("attention UsesLets {\n heads = 4\n head_dim = 8\n mask sliding(half)\n}\n")
    assert attnspec.build(spec).attentions[0].masks


def _shape(node) -> str:
    """The AST as text without source positions."""
    return re.sub(r" @\d+:\d+", "", ast_text(node))


def _stdlib_lets() -> dict[str, str]:
    return {let.name: _shape(let.body) for let in stdlib_file().lets}


def test_stdlib_matches_the_contract_listing():
    listing = next(b for b in blocks() if "let causal_bottom_right" in b)
    ours = _stdlib_lets()
    checked = 0
    for line in listing.splitlines():
        if not line.startswith("let ") or line.startswith("let t5"):
            continue  # t5 is an intrinsic: it declares a table (docs/language.md §7)
        let = parse(line).lets[0]
        assert ours[let.name] == _shape(let.body), let.name
        checked += 1
    assert checked == 13
