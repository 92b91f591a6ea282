"""Verify the cookbook specs (specs/cookbook/*.attn, docs/cookbook.md) on a CUDA GPU: every
attention on every generated backend (compiled flex, flash-attn, SDPA's CUDA kernels, auto),
outputs and gradients against the float64 eager interpreter, in bfloat16 by default.

The CPU test-suite (tests/test_cookbook.py) covers eager, SDPA and uncompiled flex forward only;
this covers what only a GPU runs. One case per attention and backend (q_len != kv_len where the
spec allows it, else the first case) keeps compiled-flex compiles to one shape per attention;
`--all-cases` runs every case of `attnspec verify`.

Run on the GPU machine from the repository root (stage lark/pydantic/rich wheels as
benchmarks/gpu_verify.sh says):

    python3 benchmarks/gpu_verify_cookbook.py [--backend flash,sdpa,flex,auto] [--dtype bfloat16]
                                              [--all-cases] [--seed 1]

Prints one line per failure, then a table of passed / failed / refused per backend with the
seconds spent; exits 1 on any failure. Refused = the backend declined those inputs
(`UnsupportedInputError`, e.g. ALiBi with only flash-attn 4), not a failure.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import attnspec  # noqa: E402
from attnspec.verify import DTYPES, Result, _safe_check, cases_for, default_backends  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    wanted = None if args.backend == "all" else args.backend.split(",")
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for path in sorted((ROOT / "specs" / "cookbook").glob("*.attn")):
        for result, seconds in _verify_file(path, wanted, DTYPES[args.dtype], args):
            counts[result.backend][result.status] += 1
            counts[result.backend]["seconds"] += seconds
            if not result.ok:
                print(f"FAIL {path.name} {result.attention} {result.backend} {result.case}: "
                      f"{result.worst_tensor} {result.detail}"[:200], flush=True)
    _print_table(counts)
    return 1 if any(c["FAIL"] for c in counts.values()) else 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="all", help="comma-separated backends, or all "
                   "(every generated backend that runs on CUDA, and auto)")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--all-cases", action="store_true", help="every case, not one per backend")
    p.add_argument("--device", default="cuda", help="cuda (cpu only to try the script)")
    return p


def _verify_file(path: Path, wanted, dtype: torch.dtype, args):
    """(result, seconds) for every attention x backend x chosen case of one spec file."""
    module_ir, module = attnspec.build(path), attnspec.load(path)
    for attn in module_ir.attentions:
        cls = getattr(module, attn.name)
        backends = default_backends(cls, args.device) if wanted is None else wanted
        cases = cases_for(attn)
        if not args.all_cases:
            cases = [cases[-1] if len(cases) == 3 else cases[0]]
        for backend in backends:
            if backend != "auto" and backend not in cls.BACKENDS:
                continue
            for i, case in enumerate(cases):
                start = time.perf_counter()
                # _safe_check: verify's own wrapper (refusals and crashes become results)
                result: Result = _safe_check(attn, cls, backend, case, dtype, args.device,
                                             args.seed + i, path.name)
                yield result, time.perf_counter() - start


def _print_table(counts) -> None:
    print(f"{'backend':8} {'passed':>7} {'failed':>7} {'refused':>8} {'seconds':>8}")
    for backend, c in sorted(counts.items()):
        print(f"{backend:8} {c['pass']:7} {c['FAIL']:7} {c['refused']:8} {c['seconds']:8.1f}")


if __name__ == "__main__":
    sys.exit(main())
