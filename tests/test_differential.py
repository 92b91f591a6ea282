"""Differential fuzzing: random valid specs (tests/specgen.py) on every backend against the eager
interpreter (tests/diffcheck.py: the verify harness, outputs and gradients, plus flex's
BlockMask at token level), and every spec of the failure corpus (tests/corpus/*.attn).

Environment:
- `ATTNSPEC_DIFF_EXAMPLES` (default 100): specs drawn for eager and SDPA; flex, which traces
  its mods with dynamo on every new spec (~1.5 s each on CPU), gets a sixth of that.
- `ATTNSPEC_DIFF_SEED`: unset, the draws are derandomised (CI sees the same specs every run);
  an integer seeds them; `random` picks a fresh seed and prints it.
- `ATTNSPEC_DIFF_LONG=1`: also the verify cases over several 128-tiles (S=300).
Long mode: `ATTNSPEC_DIFF_EXAMPLES=2000 ATTNSPEC_DIFF_SEED=random pytest
tests/test_differential.py`, or `benchmarks/fuzz_differential.py` (counts, writes failing specs
to the corpus, runs on CUDA).

A failure prints the spec (minimised by hypothesis), the failing rows and the input seed; save
the spec as tests/corpus/NAME.attn with a comment saying what broke.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from diffcheck import block_mask_problem, check_spec, failures, report, spec_seed
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from specgen import GeneratedSpec, specs
from torch.nn.attention.flex_attention import BlockMask

import attnspec
from attnspec.verify import DTYPES

CORPUS = Path(__file__).resolve().parent / "corpus"
EXAMPLES = int(os.environ.get("ATTNSPEC_DIFF_EXAMPLES", "100"))
LONG = os.environ.get("ATTNSPEC_DIFF_LONG") == "1"


def _seed() -> int | None:
    value = os.environ.get("ATTNSPEC_DIFF_SEED")
    if value == "random":
        value = str(random.randrange(2**31))
        print(f"ATTNSPEC_DIFF_SEED={value}")
    return None if value is None else int(value)


SEED = _seed()
COUNTS: dict[str, Counter] = {"eager/sdpa": Counter(), "flex": Counter()}
PASSED: set[tuple[str, ...]] = set()  # (spec text, *backends) checked and passed


def fuzz(examples: int):
    """hypothesis settings for a differential test: derandomised unless a seed is given,
    no example database (a failure is reproduced from the printed spec and seed)."""
    def decorate(test):
        test = settings(max_examples=max(1, examples), deadline=None, database=None,
                        derandomize=SEED is None,
                        suppress_health_check=[HealthCheck.too_slow])(test)
        return test if SEED is None else hypothesis_seed(SEED)(test)
    return decorate


def run_checks(spec: GeneratedSpec, backends: list[str], counts: Counter) -> None:
    """Check one spec; refusals are allowed and counted, anything else must pass. A text that
    passed already is not checked again (hypothesis draws some texts twice; the inputs come
    from the text, so the result would be the same)."""
    if (spec.text, *backends) in PASSED:
        return
    seed = spec_seed(spec.text, SEED or 0)
    results = check_spec(spec.text, seed=seed, backends=backends, long=LONG)
    counts.update(r.status for r in results)
    counts["specs"] += 1
    assert results, f"no backend ran:\n{spec.text}"
    assert not failures(results), report(spec.text, results, seed)
    PASSED.add((spec.text, *backends))


@fuzz(EXAMPLES)
@given(spec=specs())
def test_eager_and_sdpa_match_the_interpreter(spec: GeneratedSpec):
    run_checks(spec, ["eager", "sdpa"], COUNTS["eager/sdpa"])


@fuzz(EXAMPLES // 6)
@given(spec=specs())
def test_flex_matches_the_interpreter(spec: GeneratedSpec):
    # One dynamo trace per new spec and shape: a new module's mods are new closures.
    torch._dynamo.reset()
    run_checks(spec, ["flex"], COUNTS["flex"])


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_summary():
    """One intra-op thread: these tensors are tiny, and two OpenMP threads on a busy 2-core
    machine spin against each other (measured: 73 s instead of 9.5 s for the eager/SDPA test).
    Afterwards, print what ran (`pytest -s` shows it): passes and refusals per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for name, counts in COUNTS.items():
        if counts:
            print(f"\ndifferential {name}: {counts['pass']} passed, "
                  f"{counts['refused']} refused, {counts['specs']} distinct specs")


def test_the_block_mask_check_catches_wrong_block_masks():
    """The token-level check is not vacuous: a pair outside the listed tiles and a masked pair
    inside a full tile are both reported."""
    q, k = torch.arange(300)[:, None], torch.arange(300)[None, :]
    causal = (q >= k).expand(1, 1, 300, 300)
    # Causal over 3 x 3 tiles of 128: the diagonal tiles partial, those below it full.
    rows = torch.arange(3, dtype=torch.int32)
    diagonal = torch.stack([rows, (rows + 1) % 3, (rows + 2) % 3], -1)  # row r lists tile r
    below = rows.expand(3, 3).contiguous()  # row r lists tiles 0 .. r-1
    block_mask = BlockMask.from_kv_blocks(
        torch.ones(1, 1, 3, dtype=torch.int32), diagonal.view(1, 1, 3, 3),
        rows.view(1, 1, 3), below.view(1, 1, 3, 3), BLOCK_SIZE=128, seq_lengths=(300, 300))
    assert block_mask_problem(block_mask, causal) is None
    assert "unlisted tile" in block_mask_problem(block_mask, causal | (k == q + 200))
    assert "full tile" in block_mask_problem(block_mask, causal & (k != 3))


def _corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.attn"))


def test_the_corpus_is_not_empty():
    assert len(_corpus_files()) >= 5


def _directive(text: str, name: str) -> str | None:
    """The value of a `# NAME: value` comment line of a corpus spec (None without one)."""
    for line in text.splitlines():
        if line.startswith(f"# {name}:"):
            return line.split(":", 1)[1].strip()
    return None


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.stem)
def test_corpus_spec(path: Path):
    """Every spec that ever failed, on every backend, with fresh random inputs; in the dtypes
    of its `# verify dtypes:` line (default float32), over several tiles with `# long: true`."""
    text = path.read_text()
    attnspec.build(text)  # still a valid spec
    torch._dynamo.reset()
    long = LONG or _directive(text, "long") == "true"
    for name in (_directive(text, "verify dtypes") or "float32").split(","):
        seed = random.randrange(2**31)
        results = check_spec(text, dtype=DTYPES[name.strip()], seed=seed, long=long)
        assert not failures(results), report(text, results, seed, name.strip())
