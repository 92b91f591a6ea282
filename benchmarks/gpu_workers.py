"""Shared pieces of the GPU scripts: `timed` (CUDA-event medians) and `run_workers`, which runs
one script's workers side by side and gathers their rows (the GPU scripts' compile time is
CPU-bound and their GPU work small, so several processes share the one GPU).

Each worker is `python SCRIPT --worker ARGS... --rows PART` and writes one JSON row a line to
PART; `run_workers` waits for all, merges the parts into `rows_path` and returns the rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_workers(script: str, worker_args: list[list[str]], rows_path: Path) -> list[dict]:
    """Start a worker per argument list, wait for every one, return their rows (in order)."""
    parts = [Path(f"{rows_path}.{i}") for i in range(len(worker_args))]
    procs = [subprocess.Popen([sys.executable, script, "--worker", *args, "--rows", str(part)])
             for args, part in zip(worker_args, parts)]
    for proc in procs:
        proc.wait()
    rows = [json.loads(line) for part in parts if part.exists()
            for line in part.read_text().splitlines() if line]
    for part in parts:
        part.unlink(missing_ok=True)
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def timed(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of `fn()` on the current CUDA device over `reps` runs, after `warmup`
    calls (CUDA events around each call, synchronised)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
