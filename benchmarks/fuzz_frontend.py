"""Front-end fuzzing, the long run: random and mutated specs through the API and the CLI.

Every input comes from one of the generators of `tests/fuzzing.py` (`text`, `bytes`, `tokens`,
`grammar`, in turn) and goes through decode, `attnspec.build`, explain, and code generation with
`ast.parse` of the module: for the spec's own backend and one more in turn, every other backend
only resolved (modules differ between backends only in the constructor's default; all six with
`--all-backends`); every `--load-every`-th module is also executed and each class built with its
default settings. Only `AttnSpecError` (and `UnsupportedBackendError` from code generation) may
come out; every diagnostic must format and point inside the file. Every K-th input also runs
through `attnspec check|compile|explain` in a subprocess: the exit code must be 0 or 1 (and
agree with the API), with no `Traceback` and no `internal error` on stderr. Anything else, or an
input taking more than `--timeout` CPU seconds (plus 1 per 10 kB of input), is a finding: the
input is saved to the crash directory with a `.txt` report, the run goes on, and the exit code
is 1. (CPU seconds, not wall time: on a shared machine a busy neighbour must not look like a
hang.)

Inputs are reproducible from (generator, seed, index): a finding's file name holds all three.

Usage:
    nice -n 10 python benchmarks/fuzz_frontend.py --count 100000 --seed 1 --cli-every 400 \\
        --load-every 4 --crashes /tmp/attnspec-crashes --jobs 2
    python benchmarks/fuzz_frontend.py --replay /tmp/attnspec-crashes/*.attn
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fuzzing  # noqa: E402  (tests/fuzzing.py: the generators and the check)

CLI_TIMEOUT = 120
# CLI invocations, in turn: the command line after `attnspec`, and which API result must agree
# with its exit code (None: exit code 0 or 1 either way).
CLI_RUNS: list[tuple[list[str], str | None]] = [
    (["check", "{path}"], "check"),
    (["compile", "{path}", "-o", "-"], "None"),
    (["explain", "{path}"], "check"),
    (["compile", "{path}", "-o", "-", "--emit", "ast"], None),
    (["compile", "{path}", "-o", "-", "--backend", "flex"], "flex"),
    (["compile", "{path}", "-o", "-", "--emit", "ir"], "check"),
    (["compile", "{path}", "-o", "-", "--backend", "sdpa"], "sdpa"),
    (["compile", "{path}", "-o", "-", "--emit", "ir-json"], "check"),
]


def main(argv: list[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    if args.replay:
        return replay(args.replay)
    return Run(args).run()


def _arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000, help="number of inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crashes", default="fuzz-crashes", help="where findings are saved")
    p.add_argument("--cli-every", type=int, default=500, metavar="K",
                   help="every K-th input also goes through the CLI (0: never)")
    p.add_argument("--timeout", type=float, default=5.0,
                   help="CPU seconds one input may take, plus 1 per 10 kB of input (wall time: "
                   "20 times that)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--load-every", type=int, default=4, metavar="L",
                   help="every L-th input's module is executed and its classes built (0: never)")
    p.add_argument("--all-backends", action="store_true", help="generate every input's module "
                   "for every backend (default: the spec's own and one more, in turn; the "
                   "others are only resolved)")
    p.add_argument("--generators", default=",".join(fuzzing.GENERATORS),
                   help="comma-separated generators, used in turn")
    p.add_argument("--replay", nargs="+", metavar="FILE", help="re-check saved inputs and exit")
    return p


def cli_problem(path: Path, index: int, result: fuzzing.Result) -> str | None:
    """Run CLI invocation number `index % len(CLI_RUNS)` on `path`; what went wrong, or None."""
    template, agrees_with = CLI_RUNS[index % len(CLI_RUNS)]
    command = [part.replace("{path}", str(path)) for part in template]
    try:
        done = subprocess.run([sys.executable, "-m", "attnspec.cli", *command],
                              capture_output=True, text=True, timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"`attnspec {' '.join(command)}` ran longer than {CLI_TIMEOUT} s"
    problems = []
    if done.returncode not in (0, 1):
        problems.append(f"exit code {done.returncode}")
    for bad in ("Traceback", "internal error"):
        if bad in done.stderr:
            problems.append(f"`{bad}` on stderr")
    expected = _expected_exit(result, agrees_with)
    if expected is not None and done.returncode in (0, 1) and done.returncode != expected:
        problems.append(f"exit code {done.returncode}, but the API says {expected}")
    if not problems:
        return None
    return (f"`attnspec {' '.join(command)}`: {'; '.join(problems)}\n"
            f"--- stderr (last 4000 characters)\n{done.stderr[-4000:]}")


def _expected_exit(result: fuzzing.Result, agrees_with: str | None) -> int | None:
    if agrees_with is None:
        return None
    if result.outcome not in ("built", "generated"):
        return 1
    if agrees_with == "check":
        return 0
    return 0 if result.backends.get(agrees_with) == "generated" else 1


def _worker(conn: Connection, args: argparse.Namespace, tmp: str) -> None:
    """Checks inputs (generator, index) sent on `conn` until it closes; sends each result."""
    seed, cli_every, load_every = args.seed, args.cli_every, args.load_every
    while True:
        try:
            generator, index = conn.recv()
        except EOFError:
            return
        start = time.process_time()
        data = fuzzing.input_for(generator, seed, index)
        generate_for = fuzzing.BACKENDS if args.all_backends else (
            None, fuzzing.BACKENDS[1 + index % (len(fuzzing.BACKENDS) - 1)])
        load = bool(load_every) and index % load_every == 0
        result = fuzzing.check_input(data, generate_for, load)
        cli = None
        if cli_every and index % cli_every == 0:
            path = Path(tmp) / f"in{index}.attn"
            path.write_bytes(data)
            cli = cli_problem(path, index // cli_every, result)
            path.unlink()
        conn.send((result, cli, bool(cli_every and index % cli_every == 0),
                   time.process_time() - start))


class Run:
    """One fuzzing run: hands inputs to worker processes, watches their time, counts."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.generators = args.generators.split(",")
        unknown = set(self.generators) - set(fuzzing.GENERATORS)
        if unknown:
            raise SystemExit(f"unknown generators: {', '.join(sorted(unknown))}")
        self.outcomes: collections.Counter = collections.Counter()
        self.backends: collections.Counter = collections.Counter()
        self.findings: list[tuple[str, int, str]] = []
        self.cli_runs = 0
        self.loaded = 0
        self.slowest = (0.0, "", -1)
        self.tmp = tempfile.mkdtemp(prefix="attnspec-fuzz-")
        self.context = multiprocessing.get_context("fork")
        if args.load_every:
            import torch  # noqa: F401  (once, here: forked workers start with it loaded)
        self.processes: dict[Connection, multiprocessing.Process] = {}

    def run(self) -> int:
        start = time.perf_counter()
        tasks = iter(range(self.args.count))
        # conn -> (process, generator, index, (wall clock, CPU seconds at the start, limit))
        workers: dict[Connection, tuple] = {}
        for _ in range(max(1, self.args.jobs)):
            self._assign(self._spawn(), tasks, workers)
        last_report = time.perf_counter()
        while workers:
            ready = wait(list(workers), timeout=1.0)
            for conn in ready:
                process, generator, index, _ = workers.pop(conn)
                try:
                    result, cli, ran_cli, seconds = conn.recv()
                except EOFError:
                    process.join()
                    self.outcomes[generator, "finding"] += 1
                    self._finding(generator, index, f"the worker died (exit code "
                                  f"{process.exitcode})")
                    conn = self._spawn()
                else:
                    self._count(generator, index, result, cli, ran_cli, seconds)
                self._assign(conn, tasks, workers)
            self._kill_hung(workers, tasks)
            if time.perf_counter() - last_report > 60:
                last_report = time.perf_counter()
                self._progress(start)
        for conn in list(workers):
            conn.close()
        self._summary(time.perf_counter() - start)
        return 1 if self.findings else 0

    def _spawn(self) -> Connection:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker, daemon=True, args=(
            child, self.args, self.tmp))
        process.start()
        child.close()
        self.processes[parent] = process
        return parent

    def _assign(self, conn: Connection, tasks, workers: dict) -> None:
        index = next(tasks, None)
        if index is None:
            conn.close()
            self.processes.pop(conn).join(timeout=5)
            return
        generator = self.generators[index % len(self.generators)]
        conn.send((generator, index))
        process = self.processes[conn]
        # Lark parses some 50,000 tokens a CPU second and an input is parsed a few times: big
        # inputs get 1 s per 10 kB more. Generating it again here costs well under a ms.
        limit = self.args.timeout + len(fuzzing.input_for(generator, self.args.seed, index)) / 1e4
        if self.args.cli_every and index % self.args.cli_every == 0:
            limit += CLI_TIMEOUT  # the subprocess's CPU time is not the worker's
        workers[conn] = (process, generator, index, (time.perf_counter(),
                                                     _cpu_seconds(process.pid), limit))

    def _kill_hung(self, workers: dict, tasks) -> None:
        """A worker past its input's time limit (CPU, or 20 times that in wall time) is killed
        and replaced; the input is a finding."""
        now = time.perf_counter()
        for conn, (process, generator, index, (wall, cpu, limit)) in list(workers.items()):
            used = _cpu_seconds(process.pid) - cpu
            if used > limit or now - wall > 20 * limit:
                process.kill()
                process.join()
                del workers[conn]
                self.processes.pop(conn)
                conn.close()
                self.outcomes[generator, "finding"] += 1
                self._finding(generator, index, f"took more than {limit:.0f} CPU seconds or "
                              f"{20 * limit:.0f} s (a hang)")
                self._assign(self._spawn(), tasks, workers)

    def _count(self, generator: str, index: int, result: fuzzing.Result, cli: str | None,
               ran_cli: bool, seconds: float) -> None:
        self.outcomes[generator, result.outcome] += 1
        for backend, what in result.backends.items():
            self.backends[backend, what] += 1
        self.cli_runs += ran_cli
        self.loaded += result.loaded
        self.slowest = max(self.slowest, (seconds, generator, index))
        if result.finding:
            self._finding(generator, index, result.finding)
        if cli:
            self._finding(generator, index, "CLI: " + cli)

    def _finding(self, generator: str, index: int, report: str) -> None:
        """Save the input and the report to the crash directory."""
        self.findings.append((generator, index, report))
        crashes = Path(self.args.crashes)
        crashes.mkdir(parents=True, exist_ok=True)
        stem = crashes / f"{generator}-s{self.args.seed}-{index}"
        try:
            data = fuzzing.input_for(generator, self.args.seed, index)
        except Exception as e:  # noqa: BLE001 — a generator bug: report it, keep going
            data = f"# the generator failed: {e!r}\n".encode()
        stem.with_suffix(".attn").write_bytes(data)
        stem.with_suffix(".txt").write_text(
            f"generator {generator}, seed {self.args.seed}, index {index}\n{report}\n")
        print(f"FINDING {stem}.attn: {_headline(report)}", file=sys.stderr, flush=True)

    def _progress(self, start: float) -> None:
        done = sum(self.outcomes.values())
        rate = done / (time.perf_counter() - start)
        print(f"{done}/{self.args.count} inputs, {rate:.1f}/s, {len(self.findings)} findings",
              file=sys.stderr, flush=True)

    def _summary(self, seconds: float) -> None:
        done = sum(self.outcomes.values())
        print(f"\n{done} inputs in {seconds:.0f} s ({done / max(seconds, 1e-9):.1f}/s), seed "
              f"{self.args.seed}, {self.args.jobs} job(s); {self.cli_runs} CLI runs; "
              f"{self.loaded} modules executed and built")
        header = f"{'generator':<10}" + "".join(f"{o:>13}" for o in fuzzing.OUTCOMES)
        print(header + f"{'total':>9}")
        for g in self.generators:
            row = [self.outcomes[g, o] for o in fuzzing.OUTCOMES]
            print(f"{g:<10}" + "".join(f"{n:>13}" for n in row) + f"{sum(row):>9}")
        totals = [sum(self.outcomes[g, o] for g in self.generators) for o in fuzzing.OUTCOMES]
        print(f"{'all':<10}" + "".join(f"{n:>13}" for n in totals) + f"{sum(totals):>9}")
        print("code generation per backend (generated / unsupported):")
        for backend in map(str, fuzzing.BACKENDS):
            print(f"  {backend:<6} {self.backends[backend, 'generated']:>8} / "
                  f"{self.backends[backend, 'unsupported']}")
        seconds, generator, index = self.slowest
        print(f"slowest input: {generator} #{index}, {seconds:.2f} CPU seconds")
        distinct = collections.Counter(_headline(r) for _, _, r in self.findings)
        print(f"findings: {len(self.findings)} ({len(distinct)} distinct)"
              + (f", saved in {self.args.crashes}" if self.findings else ""))
        for headline, n in distinct.most_common():
            print(f"  {n:>6}  {headline}")


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used; 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _headline(report: str) -> str:
    """A finding's one-line signature: its stage or CLI command, and the exception."""
    lines = [line for line in report.strip().splitlines() if line.strip()]
    where = next((line.strip() for line in reversed(lines) if line.strip().startswith("File ")),
                 "")
    return f"{lines[0][:100]} | {where[:120]} | {lines[-1][:160]}"


def replay(paths: list[str]) -> int:
    """Re-check saved inputs; prints each one's outcome or finding. Exit 1 if any finds."""
    failed = 0
    for path in paths:
        result = fuzzing.check_input(Path(path).read_bytes())
        print(f"{path}: {result.outcome or '-'}" + (f"\n{result.finding}" if result.finding
                                                  else ""))
        failed += result.finding is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
