"""The GPU verification matrix: every shipped spec on every backend and `auto`, at the shapes
that break kernels, outputs and every gradient against the float64 eager interpreter.

Each attention is checked at head dims 16, 32, 256 and its own (kernel mode: `head_dim=`; layer
mode: `dim = heads * head_dim`, through constructor overrides that the interpreter also gets),
at lengths 77, 300 and 1000, Sq != Sk both ways (45/300, 300/45) where the spec allows it,
1, 128 and 4096 at its own head dim, in bfloat16 (and float16 at its own head dim). A check
passes, fails, or is refused by the backend with a documented reason (`UnsupportedInputError`):
refusals are how capability rules show, a failure is a wrong number that reached the user.

Work is spread over worker processes (compiling flex is CPU-bound), whole attentions per
worker (see `assign`), most fragile shapes first; each worker stops at `--deadline` seconds and
the table says how many checks it did not reach. Raw rows: $OUT/matrix-<backends>.jsonl.

Run on the GPU machine (lark and pydantic wheels on the path; flash-attn 4 for flash/auto):
    SITE=/tmp/fa4site python3 benchmarks/gpu_matrix.py --backends flash,auto --deadline 400
    python3 benchmarks/gpu_matrix.py --backends sdpa,flex,eager --deadline 400
"""

from __future__ import annotations

import argparse
import json
import math
import os
import site
import sys
import time
from dataclasses import replace
from pathlib import Path

if os.environ.get("SITE"):  # flash-attn 4's CUTLASS DSL needs its .pth processed
    site.addsitedir(os.environ["SITE"])

import torch  # noqa: E402
from gpu_workers import run_workers  # noqa: E402

import attnspec  # noqa: E402
from attnspec import verify  # noqa: E402
from attnspec.ir.consts import resolve_settings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HEAD_DIMS = (16, 32, 256)


def head_dim_overrides(attn, hd: int) -> tuple:
    """Constructor overrides that give `attn` head dim `hd`."""
    values = resolve_settings(attn)
    if values.get("head_dim") == hd:
        return ()
    if attn.mode == "kernel" or attn.setting("head_dim") is not None:
        return (("head_dim", hd),)
    return (("dim", values["heads"] * hd),)


def cases(attn, cls) -> list[verify.Case]:
    """Every case of one attention; head dims its class refuses to build with are left out."""
    own = resolve_settings(attn).get("head_dim")
    planned = []
    for hd in sorted({*HEAD_DIMS, own}):
        overrides = head_dim_overrides(attn, hd)
        try:
            cls(backend="eager", **dict(overrides))
        except ValueError:  # e.g. rope dims larger than this head dim
            continue
        if attn.kv_cache is not None:  # decoding: verify's cases (ragged rows, pages)
            planned += [replace(c, name=f"{c.name} hd={hd}", overrides=overrides)
                        for c in verify.cases_for(attn, "cuda")]
            continue
        if attn.groups:
            base = verify.cases_for(attn)[0]
            lengths = [(base.name, base.batch, base.q_len, base.kv_len)]
        else:
            # 77 first: each worker's first compile of a body at a head dim is static, at the
            # small-query shape where flex's static kernel choice went wrong before (issue 20).
            lengths = [(f"S={s}", 2, s, s) for s in (77, 300, 1000)]
            if verify._allows_different_lengths(attn):
                lengths += [("Sq=45,Sk=300", 2, 45, 300), ("Sq=300,Sk=45", 2, 300, 45)]
            if hd == own:
                lengths += [("S=1", 2, 1, 1), ("S=128", 2, 128, 128), ("S=4096", 1, 4096, 4096)]
        planned += [verify.Case(f"{name} hd={hd}", b, sq, sk, overrides)
                    for name, b, sq, sk in lengths]
    return planned


def _builds(cls, backend: str, overrides: tuple) -> bool:
    """Whether the class builds on `backend` with these overrides (flex refuses overrides of
    settings its index proofs used, with `UnsupportedBackendError`: a documented refusal)."""
    try:
        cls(backend=backend, **dict(overrides))
    except ValueError:
        return False
    return True


def work_items(backends: list[str], pattern: str = "specs/*.attn") -> list[tuple]:
    """(priority, spec path, attention name, backend, case, dtype) for every planned check,
    the most fragile head dims first."""
    items = []
    for path in sorted(ROOT.glob(pattern)):
        module_ir, module = attnspec.build(path), attnspec.load(path)
        for attn in module_ir.attentions:
            cls = getattr(module, attn.name)
            own = resolve_settings(attn).get("head_dim")
            for case in cases(attn, cls):
                hd = int(case.name.rsplit("hd=", 1)[1])
                priority = {16: 0, 32: 1, 256: 2}.get(hd, 3)
                for backend in backends:
                    if backend != "auto" and backend not in cls.BACKENDS:
                        continue
                    if not _builds(cls, backend, case.overrides):
                        continue
                    items.append((priority, str(path), attn.name, backend, case, "bfloat16"))
                    if hd == own and case.name.startswith("S=300"):
                        items.append((priority, str(path), attn.name, backend, case, "float16"))
    return sorted(items, key=lambda item: (item[0], item[1], item[2]))


_COMPILING = ("flex", "auto", "edges")  # backends whose checks may compile a kernel


def assign(items: list[tuple], workers: int) -> list[list[tuple]]:
    """Split the checks over `workers` by attention: each worker checks whole attentions, so a
    generated body compiles once per head dim (static, at 77 tokens) and once more with dynamic
    shapes, then serves every other length; a round-robin over all checks compiled each body in
    every worker and reached 40% of the matrix in 9 minutes. Attentions go to the least-loaded
    worker, most expensive first; within a worker, the most fragile head dims come first."""
    units: dict[tuple, list[tuple]] = {}
    for item in items:
        units.setdefault((item[1], item[2]), []).append(item)
    load, plan = [0] * workers, [[] for _ in range(workers)]
    for unit in sorted(units.values(), key=lambda u: -_cost(u)):
        w = load.index(min(load))
        load[w] += _cost(unit)
        plan[w] += unit
    return [sorted(part, key=lambda item: (item[0], item[1], item[2])) for part in plan]


def _cost(unit: list[tuple]) -> int:
    return sum(4 if item[3] in _COMPILING else 1 for item in unit)


def remaining(items: list[tuple], resume: str | None) -> list[tuple]:
    """The checks that the rows file `resume` (an earlier run's) has no result for, or only an
    error: a matrix larger than one device call runs as several calls, and a crash is tried
    again."""
    if not resume:
        return items
    done = {(r["spec"], r["attention"], r["backend"], r["case"], r["dtype"])
            for r in map(json.loads, Path(resume).read_text().splitlines())
            if "status" in r and not _errored(r)}
    return [item for item in items
            if (Path(item[1]).name, item[2], item[3], item[4].name, item[5]) not in done]


# Errors that say the card was crowded, not that the check is wrong: the workers share one GPU,
# and on 2026-12-07 fourteen of them ran it out of memory at 4,096 tokens (and cuDNN's attention
# failed to execute beside them). Such a check runs again after the others have had time.
_CROWDED = ("out of memory", "mha_graph.execute")


def _check_with_retries(attn, cls, backend, case, dtype: str, seed: int, spec: str,
                        attempts: int = 4):
    """verify's check, run again (up to `attempts` times, with a growing pause and the cache
    allocator emptied) while it ends in an error of a crowded card; (result, retries)."""
    for attempt in range(attempts):
        result = verify._safe_check(attn, cls, backend, case, verify.DTYPES[dtype], "cuda",
                                    seed, spec)
        crowded = result.status == "FAIL" and any(m in result.detail for m in _CROWDED)
        if not crowded or attempt == attempts - 1:
            return result, attempt
        torch.cuda.empty_cache()
        time.sleep(5 * (attempt + 1))


def worker(args) -> None:
    torch._dynamo.config.recompile_limit = 512  # a silent fallback would verify nothing
    if args.dynamic_first:
        # Experiment: compile with dynamic shapes from the first call (the generated module
        # compiles static first): tells whether the static first compile is what goes wrong.
        torch._dynamo.config.assume_static_by_default = False
    deadline = time.monotonic() + args.deadline
    items = assign(remaining(work_items(args.backends.split(","), args.specs), args.resume),
                   args.workers)[args.index]
    loaded: dict = {}
    with open(args.rows, "w") as out:
        for n, (_, path, name, backend, case, dtype) in enumerate(items):
            if time.monotonic() > deadline:
                out.write(json.dumps({"unreached": len(items) - n}) + "\n")
                break
            if path not in loaded:
                loaded[path] = (attnspec.build(path), attnspec.load(path))
            module_ir, module = loaded[path]
            attn = next(a for a in module_ir.attentions if a.name == name)
            started = time.monotonic()
            result, retries = _check_with_retries(attn, getattr(module, name), backend, case,
                                                  dtype, 1000 + n, Path(path).name)
            row = {"spec": Path(path).name, "attention": name, "backend": backend,
                   "case": case.name, "dtype": dtype, "status": result.status,
                   "ratio": result.worst_ratio, "tensor": result.worst_tensor,
                   "detail": result.detail[:300],
                   "seconds": round(time.monotonic() - started, 2), "retries": retries}
            out.write(json.dumps(row) + "\n")
            out.flush()


def _errored(row: dict) -> bool:
    return row.get("status") == "FAIL" and not _wrong_number(row)


def _wrong_number(row: dict) -> bool:
    """A failed check whose numbers were compared and missed (an error has an infinite ratio)."""
    return row.get("status") == "FAIL" and row["ratio"] is not None and \
        math.isfinite(row["ratio"])


def summary(rows: list[dict]) -> str:
    """Per backend and head dim: pass / refused / wrong (a number outside the tolerance) /
    error (the check crashed) counts, then every failure."""
    counts: dict = {}
    for r in rows:
        if "status" in r:
            hd = r["case"].rsplit("hd=", 1)[1]
            key = (r["backend"], r["dtype"], int(hd))
            kind = r["status"] if r["status"] != "FAIL" else \
                "wrong" if _wrong_number(r) else "error"
            counts.setdefault(key, {"pass": 0, "refused": 0, "wrong": 0, "error": 0})[kind] += 1
    lines = [f"{'backend':8} {'dtype':9} {'hd':>4} {'pass':>5} {'refused':>8} {'wrong':>6} "
             f"{'error':>6}"]
    for (backend, dtype, hd), c in sorted(counts.items()):
        lines.append(f"{backend:8} {dtype:9} {hd:>4} {c['pass']:>5} {c['refused']:>8} "
                     f"{c['wrong']:>6} {c['error']:>6}")
    fails = [r for r in rows if r.get("status") == "FAIL"]
    lines += [f"FAIL {r['spec']} {r['attention']} {r['backend']} {r['case']} {r['dtype']}: "
              f"{r['tensor']} {r['ratio']:.3g} {r['detail'][:140]}" for r in fails[:40]]
    unreached = sum(r.get("unreached", 0) for r in rows)
    total = sum(sum(c.values()) for c in counts.values())
    retried = sum(1 for r in rows if r.get("retries"))
    lines.append(f"{total} checks: {sum(c['pass'] for c in counts.values())} passed, "
                 f"{sum(c['wrong'] for c in counts.values())} wrong numbers, "
                 f"{sum(c['error'] for c in counts.values())} errors, "
                 f"{sum(c['refused'] for c in counts.values())} refused"
                 + (f" ({retried} ran again after an error of a crowded card)" if retried else "")
                 + (f"; {unreached} not reached before the deadline" if unreached else ""))
    return "\n".join(lines)


def driver(args) -> int:
    out_dir = Path(os.environ.get("OUT", "gpu-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / f"matrix-{args.backends.replace(',', '-')}.jsonl"
    print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
    common = ["--workers", str(args.workers), "--backends", args.backends, "--deadline",
              str(args.deadline), "--specs", args.specs] + \
        (["--resume", args.resume] if args.resume else []) + \
        (["--dynamic-first"] if args.dynamic_first else [])
    rows = run_workers(__file__, [["--index", str(i), *common] for i in range(args.workers)],
                       rows_path)
    if args.resume:  # one table and one rows file for the whole matrix
        earlier = [json.loads(line) for line in Path(args.resume).read_text().splitlines()]
        rows = [r for r in earlier if "status" in r and not _errored(r)] + rows
        rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(summary(rows))
    return 1 if any(r.get("status") == "FAIL" for r in rows) else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", default="flash,sdpa,flex,auto")
    p.add_argument("--deadline", type=float, default=400.0, help="seconds per worker")
    p.add_argument("--workers", type=int, default=6)
    p.add_argument("--specs", default="specs/*.attn", help="glob under the repository root, "
                   "e.g. 'specs/**/*.attn' for the cookbook too")
    p.add_argument("--resume", help="rows (.jsonl) of an earlier run: check only what it lacks")
    p.add_argument("--dynamic-first", action="store_true", help="compile flex with dynamic "
                   "shapes from the first call (an experiment, see docs/verification.md)")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--rows")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
