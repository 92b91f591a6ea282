"""Differential fuzzing, long mode: random specs x every backend against the eager interpreter.

Draws specs with the hypothesis strategies of `tests/specgen.py` (seeded: the same `--seed`
draws the same specs), checks each one with `tests/diffcheck.py` (the verify harness on every
generated backend that runs on `--device`, outputs and gradients, plus flex's BlockMask at
token level and cases over several 128-tiles), writes every failing spec to `--corpus` with a
comment saying what broke, and prints a table last: per backend the specs it ran, the checks
(spec x case), passes, refusals and failures. Exit status 1 when anything failed.

On CPU (flash is CUDA only; flex runs uncompiled and forward only):
    nice -n 10 python benchmarks/fuzz_differential.py --device cpu --examples 300 --seed 1

On the GPU (eager, sdpa, flex compiled forward+backward, flash, auto; flex compiles per spec,
so `--flex-every 3` and `--max-seconds 540` keep a run inside a 10-minute command):
    python3 -m pip download --no-deps -d .wheels hypothesis attrs sortedcontainers  # here, once
    bash benchmarks/gpu_fuzz_differential.sh        # there; arguments are passed on

Other modes: `--replay FILES_OR_DIRS` checks given specs the same way (the corpus on the GPU:
`--replay tests/corpus`); `--shrink` re-runs the first failure under hypothesis to minimise it
and writes the minimal spec too.
"""

from __future__ import annotations

import argparse
import datetime
import os
import site
import sys
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

if os.environ.get("SITE"):  # flash-attn 4's CUTLASS DSL needs its .pth processed (GPU machine)
    site.addsitedir(os.environ["SITE"])

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import diffcheck  # noqa: E402
import specgen  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402

from attnspec.verify import DTYPES, Result  # noqa: E402


class Tally:
    """Counts per backend, failing specs, features seen."""

    def __init__(self) -> None:
        self.specs: dict[str, int] = Counter()
        self.rows: dict[str, Counter] = defaultdict(Counter)
        self.features: Counter = Counter()
        self.failed_specs: list[str] = []
        self.examples = 0
        self.skipped = 0
        self.duplicates = 0
        self.seen: set[int] = set()  # crc32 of every spec text checked

    def add(self, results: list[Result]) -> None:
        for backend in {r.backend for r in results}:
            self.specs[backend] += 1
        for r in results:
            self.rows[r.backend][r.status] += 1

    def table(self) -> str:
        header = ("backend", "specs", "checks", "passed", "refused", "failed")
        rows = [(b, self.specs[b], sum(c.values()), c["pass"], c["refused"], c["FAIL"])
                for b, c in sorted(self.rows.items())]
        total = ("all", self.examples, *(sum(r[i] for r in rows) for i in range(2, 6)))
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, total)]
        return "\n".join("  ".join(str(x).rjust(w) if i else str(x).ljust(w)
                                   for i, (x, w) in enumerate(zip(row, widths)))
                         for row in (header, *rows, total))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--examples", type=int, default=100, help="specs to draw")
    p.add_argument("--seed", type=int, default=0, help="draws specs and inputs reproducibly")
    p.add_argument("--corpus", type=Path, default=ROOT / "tests" / "corpus",
                   help="where failing specs are written")
    p.add_argument("--profiles", default=",".join(specgen.PROFILES))
    p.add_argument("--flash-head-dims", default="8,16",
                   help="head dims of the flash profile (e.g. 64,128 if a flash-attn build "
                        "lacks small ones)")
    p.add_argument("--flex-every", type=int, default=1,
                   help="check flex on every K-th spec only (it compiles per spec on CUDA)")
    p.add_argument("--no-long", action="store_true", help="skip the cases over several tiles")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop drawing after this long and print the table")
    p.add_argument("--shrink", action="store_true",
                   help="minimise the first failure with hypothesis and write it too")
    p.add_argument("--replay", nargs="+", type=Path, default=None,
                   help="check these spec files / directories instead of drawing specs")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (tiny tensors: one is fastest on CPU)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per spec")
    return p.parse_args(argv)


def check(text: str, args, index: int) -> list[Result]:
    """One spec on every backend (flex only every `--flex-every`-th spec)."""
    dtype = DTYPES[args.dtype]
    seed = diffcheck.spec_seed(text, args.seed)
    # Every spec's mods are new closures: drop the compiled ones of earlier specs, so caches
    # and guard checks do not grow over a long run (and no recompile limit is reached).
    torch._dynamo.reset()
    backends = None
    if index % args.flex_every:
        backends = [b for b in _backends_of(text, args.device) if b != "flex"]
    return diffcheck.check_spec(text, dtype=dtype, device=args.device, seed=seed,
                                backends=backends, long=not args.no_long)


def _backends_of(text: str, device: str) -> list[str]:
    import attnspec
    from attnspec import verify

    module = attnspec.load(text)
    return sorted({b for a in attnspec.build(text).attentions
                   for b in verify.default_backends(getattr(module, a.name), device)})


def record_failure(text: str, results: list[Result], args, prefix: str = "fuzz") -> Path:
    """Write a failing spec to the corpus with a comment saying what broke."""
    bad = diffcheck.failures(results)
    args.corpus.mkdir(parents=True, exist_ok=True)
    path = args.corpus / f"{prefix}-{zlib.crc32(text.encode()):08x}.attn"
    seed = diffcheck.spec_seed(text, args.seed)
    lines = [f"# Found by benchmarks/fuzz_differential.py --seed {args.seed} --device "
             f"{args.device} --dtype {args.dtype}", f"# on {datetime.date.today()} (input seed "
             f"{seed}). What broke:"]
    lines += [f"#   {r.backend} [{r.case}] {r.worst_tensor} {r.detail}"[:300] for r in bad[:6]]
    path.write_text("\n".join(lines) + "\n" + text)
    return path


def _strategy(args):
    return specgen.specs(tuple(args.profiles.split(",")),
                         tuple(int(d) for d in args.flash_head_dims.split(",")))


def run_fuzz(args, tally: Tally) -> None:
    """The hypothesis loop: draws `--examples` specs; never raises, so it keeps exploring."""
    start = time.monotonic()

    @hypothesis_seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(_strategy(args))
    def explore(spec: specgen.GeneratedSpec) -> None:
        if args.max_seconds and time.monotonic() - start > args.max_seconds:
            tally.skipped += 1
            return
        digest = zlib.crc32(spec.text.encode())
        if digest in tally.seen:  # hypothesis sometimes draws the very same spec again
            tally.duplicates += 1
            return
        tally.seen.add(digest)
        tally.examples += 1
        tally.features.update(spec.features)
        results = check(spec.text, args, tally.examples)
        tally.add(results)
        if diffcheck.failures(results):
            path = record_failure(spec.text, results, args)
            tally.failed_specs.append(str(path))
            seed = diffcheck.spec_seed(spec.text, args.seed)
            print(diffcheck.report(spec.text, results, seed, args.dtype), flush=True)
            print(f"written to {path}\n", flush=True)
        elif args.verbose:
            print(f"{tally.examples:5d} ok  {len(results):3d} checks  {spec.profile:10s} "
                  f"{' '.join(sorted(spec.features))[:120]}", flush=True)

    explore()


def run_shrink(args) -> Path | None:
    """Same seed, same draws; the first failure raises, hypothesis shrinks it, the last failing
    spec it tried (the minimal one, replayed at the end) is written to the corpus."""
    last: dict[str, object] = {}

    @hypothesis_seed(args.seed)
    @settings(max_examples=args.examples, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(_strategy(args))
    def minimise(spec: specgen.GeneratedSpec) -> None:
        results = check(spec.text, args, 0)
        if diffcheck.failures(results):
            last.update(text=spec.text, results=results)
            raise AssertionError(spec.text)

    try:
        minimise()
    except AssertionError:
        return record_failure(last["text"], last["results"], args, prefix="min")
    return None


def run_replay(args, tally: Tally) -> None:
    files = [f for p in args.replay for f in (sorted(p.glob("*.attn")) if p.is_dir() else [p])]
    for path in files:
        text = path.read_text()
        tally.examples += 1
        results = check(text, args, tally.examples)
        tally.add(results)
        bad = diffcheck.failures(results)
        print(f"{path}: {len(results)} checks, {len(bad)} failed", flush=True)
        if bad:
            tally.failed_specs.append(str(path))
            print(diffcheck.report(text, results, diffcheck.spec_seed(text, args.seed),
                                   args.dtype), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, "
          f"seed {args.seed}", flush=True)
    tally, start = Tally(), time.monotonic()
    if args.replay:
        run_replay(args, tally)
    else:
        run_fuzz(args, tally)
        if tally.failed_specs and args.shrink:
            minimal = run_shrink(args)
            print(f"minimal failing spec written to {minimal}", flush=True)
    common = ", ".join(f"{k} {v}" for k, v in tally.features.most_common(12))
    print(f"\nfeatures (most drawn): {common}" if common else "")
    for path in tally.failed_specs:
        print(f"FAILED: {path}")
    skipped = f", {tally.duplicates} duplicate draws skipped" if tally.duplicates else ""
    if tally.skipped:
        skipped += f", {tally.skipped} drawn after --max-seconds and skipped"
    print(f"{tally.examples} specs in {time.monotonic() - start:.0f} s{skipped}")
    print(tally.table())
    return 1 if tally.failed_specs else 0


if __name__ == "__main__":
    sys.exit(main())
