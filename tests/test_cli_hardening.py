"""The command line on bad input: a usage error (exit 2) or a clear error (exit 1), never an
"internal error", and `verify` never passes having verified nothing.

Every case runs in-process through `attnspec.cli.main`. Where the unfixed code would do real work
at a huge size (train at width 10**6, build a 10**6² mask), the heavy function is replaced by one
that fails loudly, so these tests stay fast and cannot exhaust the machine.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import attnspec.bench
import attnspec.compiler
import attnspec.mup_check
import attnspec.show.cli
import attnspec.verify
from attnspec import cli
from attnspec.cli import BACKENDS, MAX_SEED, MAX_SHOW_LEN, main
from attnspec.compiler import MAX_SPEC_BYTES
from attnspec.errors import UnsupportedInputError

SPEC = "attention A {\n heads = 2\n head_dim = 8\n mask causal\n}\n"
MUP = "attention Small {\n dim = 32\n heads = 4\n mask causal\n mup { base_dim = 32 }\n}\n"
BROKEN = "attention {\n}\n"


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "a.attn"
    path.write_text(SPEC)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "internal error" not in err and "Traceback" not in err
    return code, out, err


class _Hung(BaseException):
    """Raised by the alarm: not an OSError or Exception, so no handler turns it into a pass."""


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail (instead of blocking the suite forever) when the code under test blocks, e.g. in
    open() of a FIFO without a writer: the alarm's exception interrupts the system call."""
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("needs SIGALRM")

    def hung(*_):
        raise _Hung("blocked for 10 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _must_not_run(*_args, **_kwargs):
    raise AssertionError("reached the real work: the option should have been refused")


# --- verify: backends --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["nosuch", "flexx", "", "flex,,sdpa", "eager,all"])
def test_verify_unknown_backend_is_a_usage_error(capsys, spec, backend):
    code, _, err = run(capsys, "verify", str(spec), "--backend", backend)
    assert code == 2
    assert "--backend" in err and ", ".join((*BACKENDS, "all")) in err


def test_bench_unknown_backend_is_a_usage_error(capsys, spec, monkeypatch):
    monkeypatch.setattr(attnspec.bench, "bench_module", _must_not_run)
    code, _, err = run(capsys, "bench", str(spec), "--device", "cpu", "--backend", "flexx")
    assert code == 2 and "unknown backend 'flexx'" in err


# --- verify: nothing verified is a failure -----------------------------------------------------
def test_verify_empty_directory_fails(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("no specs here")
    code, _, err = run(capsys, "verify", str(tmp_path))
    assert code == 1 and "nothing verified: no .attn files found" in err


def test_verify_no_checks_planned_fails(capsys, spec, monkeypatch):
    monkeypatch.setattr(attnspec.verify, "planned_checks", lambda *args: [])
    code, _, err = run(capsys, "verify", str(spec), "--backend", "eager")
    assert code == 1 and "nothing verified: no checks planned" in err


def test_verify_every_check_refused_fails(capsys, spec, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise UnsupportedInputError("declined for the test")

    monkeypatch.setattr(attnspec.verify, "check_case", refuse)
    code, out, err = run(capsys, "verify", str(spec), "--backend", "eager")
    assert code == 1 and "refused" in out
    assert "nothing verified: every check was refused" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="flash is refused on the CPU only")
def test_verify_flash_on_cpu_fails(capsys, tmp_path):
    path = tmp_path / "c.attn"
    path.write_text(SPEC.replace("head_dim = 8", "head_dim = 16"))
    code, _, err = run(capsys, "verify", str(path), "--backend", "flash")
    assert code == 1 and "nothing verified" in err


def test_verify_some_refused_some_passed_passes(capsys, spec, monkeypatch):
    real = attnspec.verify.check_case

    def refuse_sdpa(attn, cls, backend, *args):
        if backend == "sdpa":
            raise UnsupportedInputError("declined for the test")
        return real(attn, cls, backend, *args)

    monkeypatch.setattr(attnspec.verify, "check_case", refuse_sdpa)
    code, _, err = run(capsys, "verify", str(spec), "--backend", "eager,sdpa")
    assert code == 0, err


# --- verify: a spec that does not build is a reported failure ----------------------------------
def test_verify_broken_spec_is_in_json_and_junit(capsys, spec, tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text(BROKEN)
    junit = tmp_path / "out.xml"
    code, out, _ = run(capsys, "verify", str(bad), str(spec), "--backend", "eager", "--json",
                       "--junit", str(junit))
    assert code == 1
    rows = json.loads(out)
    broken = [r for r in rows if r["spec"] == str(bad)]
    assert len(broken) == 1 and not broken[0]["ok"] and broken[0]["backend"] == "build"
    assert "1:11:" in broken[0]["detail"]  # its first diagnostic, with the position
    assert all(r["ok"] for r in rows if r["spec"] == str(spec))
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "1" and suite.get("tests") == str(len(rows))
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == [str(bad)]
    assert failed[0].find("failure").get("message") == broken[0]["detail"]


def test_verify_broken_spec_is_a_table_row(capsys, tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text(BROKEN)
    code, out, _ = run(capsys, "verify", str(bad))
    assert code == 1 and "FAIL 1:11:" in out and "0 passed, 1 failed" in out


# --- verify: device, seed, junit, dtype --------------------------------------------------------
def test_verify_cuda_without_cuda_is_one_error(capsys, spec, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run(capsys, "verify", str(spec), "--device", "cuda", "--backend", "eager")
    assert code == 1 and not out
    assert err.count("no CUDA device here") == 1 and "AssertionError" not in err


@pytest.mark.parametrize("device", ["gpu0", "", "cuda:x"])
def test_verify_unparseable_device_is_a_usage_error(capsys, spec, device):
    code, out, err = run(capsys, "verify", str(spec), "--device", device)
    assert code == 2 and "argument --device: not a device" in err and not out


@pytest.mark.parametrize("seed", [str(10**30), "-1", str(MAX_SEED + 1), "1.5"])
def test_verify_seed_out_of_range_is_a_usage_error(capsys, spec, seed):
    code, _, err = run(capsys, "verify", str(spec), "--seed", seed)
    assert code == 2 and "argument --seed" in err


def test_verify_largest_seed_runs(capsys, spec):
    code, out, err = run(capsys, "verify", str(spec), "--backend", "eager", "--seed",
                         str(MAX_SEED))
    assert code == 0, err
    assert "Overflow" not in out


def test_verify_help_documents_seed_range_and_exit_codes(capsys):
    code, out, _ = run(capsys, "verify", "--help")
    assert code == 0 and str(MAX_SEED) in out and "nothing was verified" in out


def test_verify_junit_into_missing_directory_is_created(capsys, spec, tmp_path):
    junit = tmp_path / "reports" / "deep" / "verify.xml"
    code, _, err = run(capsys, "verify", str(spec), "--backend", "eager", "--junit", str(junit))
    assert code == 0, err
    assert ET.parse(junit).getroot().get("failures") == "0"


def test_verify_junit_unwritable_is_a_clear_error(capsys, spec, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "verify", str(spec), "--backend", "eager", "--junit",
                       str(blocker / "verify.xml"))
    assert code == 1 and "cannot write --junit" in err


def test_verify_unknown_dtype_is_a_usage_error(capsys, spec):
    # A bad option value, like an unknown --backend: exit 2 with the spellings accepted.
    code, _, err = run(capsys, "verify", str(spec), "--dtype", "int8")
    assert code == 2 and "unknown dtype 'int8'; use one of float64" in err


# --- compile -o ----------------------------------------------------------------------------------
def test_compile_into_missing_directory(capsys, spec, tmp_path):
    code, _, err = run(capsys, "compile", str(spec), "-o", str(tmp_path / "nope" / "a.py"))
    assert code == 1 and "error: cannot write" in err


def test_compile_under_a_file(capsys, spec):
    code, _, err = run(capsys, "compile", str(spec), "-o", str(spec / "x.py"))
    assert code == 1 and "error: cannot write" in err


def test_compile_into_read_only_place(capsys, spec, tmp_path, monkeypatch):
    # chmod cannot be relied on (root writes anywhere): a refusing write_text stands in for it
    def read_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", read_only)
    code, _, err = run(capsys, "compile", str(spec), "-o", str(tmp_path / "a.py"))
    assert code == 1 and "error: cannot write: Permission denied" in err


@pytest.mark.parametrize("spelling", ["same", "dot", "absolute", "symlink", "hardlink", "ir"])
def test_compile_refuses_to_overwrite_the_spec(capsys, spec, tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    output = {"same": "a.attn", "dot": "./a.attn", "absolute": str(spec.resolve()),
              "ir": "a.attn"}.get(spelling)
    if spelling == "symlink":
        (tmp_path / "link.attn").symlink_to(spec)
        output = "link.attn"
    if spelling == "hardlink":
        os.link(spec, tmp_path / "hard.attn")
        output = "hard.attn"
    extra = ["--emit", "ir"] if spelling == "ir" else []
    code, _, err = run(capsys, "compile", "a.attn", "-o", output, *extra)
    assert code == 1 and "refusing to overwrite" in err
    assert spec.read_text() == SPEC


def test_compile_default_output_still_works(capsys, spec):
    code, _, err = run(capsys, "compile", str(spec))
    assert code == 0 and (spec.parent / "a_attn.py").is_file(), err


# --- reading files -------------------------------------------------------------------------------
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


@needs_fifo
def test_check_directory_with_a_fifo_skips_it(capsys, spec, tmp_path, no_hang):
    os.mkfifo(tmp_path / "x.attn")
    code, _, err = run(capsys, "check", str(tmp_path))
    assert code == 0, err
    assert "x.attn: warning: skipped: it is a FIFO" in err and "(checked 1 file)" in err


@needs_fifo
def test_check_named_fifo_is_an_error(capsys, tmp_path, no_hang):
    fifo = tmp_path / "x.attn"
    os.mkfifo(fifo)
    code, _, err = run(capsys, "check", str(fifo))
    assert code == 1 and "cannot read file: it is a FIFO" in err


@needs_fifo
def test_verify_directory_with_only_a_fifo(capsys, tmp_path, no_hang):
    os.mkfifo(tmp_path / "x.attn")
    code, _, err = run(capsys, "verify", str(tmp_path))
    assert code == 1 and "skipped" in err and "nothing verified" in err


@pytest.fixture
def no_unbounded_read(monkeypatch):
    """`Path.read_bytes` reads to the end, which /dev/zero never reaches: forbid it."""
    monkeypatch.setattr(Path, "read_bytes", _must_not_run)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_check_dev_zero_is_a_clear_error(capsys, no_unbounded_read):
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    code, _, err = run(capsys, "check", "/dev/zero")
    assert code == 1 and "cannot read file: it is a character device" in err


def test_oversized_file_is_read_only_up_to_the_limit(capsys, tmp_path, monkeypatch,
                                                     no_unbounded_read):
    big = tmp_path / "big.attn"
    with big.open("wb") as f:
        f.truncate(MAX_SPEC_BYTES + (8 << 20))  # sparse: no disk used
    real_read, seen = os.read, []

    def counting_read(fd, n):
        data = real_read(fd, n)
        seen.append(len(data))
        return data

    monkeypatch.setattr(attnspec.compiler.os, "read", counting_read)
    code, _, err = run(capsys, "check", str(big))
    assert code == 1 and f"larger than {MAX_SPEC_BYTES} bytes" in err
    assert sum(seen) == MAX_SPEC_BYTES + 1


# --- out-of-range sizes ------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--q-len", "1000000"], f"argument --q-len: must be in 1..{MAX_SHOW_LEN}"),
    (["--kv-len", "1000000"], "argument --kv-len: must be in"),
    (["--q-len", "-5"], "argument --q-len: must be in"),
    (["--q-len", "0"], "argument --q-len: must be in"),
    (["--block", "0"], "argument --block: must be in"),
    (["--block", "-1"], "argument --block: must be in"),
    (["--batch-index", "1000"], "argument --batch-index: must be in"),
    (["--head", "-1"], "argument --head: must be at least 0"),
    (["--width", "3"], "argument --width: must be in"),
    (["--seed", str(2**64)], "argument --seed: must be in"),
    (["--q-len", "abc"], "argument --q-len: takes an integer, got 'abc'"),
])
def test_show_sizes_are_usage_errors(capsys, spec, monkeypatch, argv, message):
    monkeypatch.setattr(attnspec.show.cli, "run_cli", _must_not_run)
    code, _, err = run(capsys, "show", str(spec), *argv)
    assert code == 2 and message in err


def test_show_token_groups_over_the_limit(capsys, tmp_path, monkeypatch):
    path = tmp_path / "g.attn"
    path.write_text(f"attention G {{\n heads = 2\n head_dim = 8\n tokens {{\n"
                    f"  a: {MAX_SHOW_LEN + 1}\n }}\n pattern a -> a\n}}\n")
    monkeypatch.setattr(attnspec.show.cli, "show_inputs", _must_not_run)
    code, _, err = run(capsys, "show", str(path))
    assert code == 1 and f"lengths must be at most {MAX_SHOW_LEN}" in err


def test_show_help_documents_the_limit(capsys):
    code, out, _ = run(capsys, "show", "--help")
    assert code == 0 and f"1..{MAX_SHOW_LEN}" in out


@pytest.mark.parametrize("argv, message", [
    (["--widths", "1000000,64"], "argument --widths: must be in 1..4096"),
    (["--widths", "0,64"], "argument --widths: must be in"),
    (["--widths", "64"], "argument --widths: needs at least 2 distinct values"),
    (["--widths", "64,,128"], "argument --widths: takes comma-separated integers"),
    (["--widths", "32,x"], "argument --widths: takes comma-separated integers"),
    (["--steps", "-1"], "argument --steps: must be in"),
    (["--steps", "0"], "argument --steps: must be in"),
    (["--steps", "1000000000"], "argument --steps: must be in"),
    (["--batch", "0"], "argument --batch: must be in"),
    (["--seq", "0"], "argument --seq: must be in"),
])
def test_mup_check_sizes_are_usage_errors(capsys, tmp_path, monkeypatch, argv, message):
    path = tmp_path / "m.attn"
    path.write_text(MUP)
    monkeypatch.setattr(attnspec.mup_check, "coord_check", _must_not_run)
    code, _, err = run(capsys, "mup-check", str(path), *argv)
    assert code == 2 and message in err


@pytest.mark.parametrize("argv, message", [
    (["--seq", "-1"], "argument --seq: must be in"),
    (["--seq", "0"], "argument --seq: must be in"),
    (["--seq", "abc"], "argument --seq: takes comma-separated integers"),
    (["--seq", "64,"], "argument --seq: takes comma-separated integers"),
    (["--batch", "0"], "argument --batch: must be in"),
    (["--reps", "0"], "argument --reps: must be in"),
    (["--device", "gpu0"], "argument --device: not a device"),
])
def test_bench_sizes_are_usage_errors(capsys, spec, monkeypatch, argv, message):
    monkeypatch.setattr(attnspec.bench, "bench_module", _must_not_run)
    code, _, err = run(capsys, "bench", str(spec), "--device", "cpu", *argv)
    assert code == 2 and message in err


# --- the last resort ---------------------------------------------------------------------------
def test_an_unexpected_crash_is_still_an_internal_error(capsys, spec, monkeypatch):
    def crash(_args):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "cmd_check", crash)
    assert main(["check", str(spec)]) == 2
    assert "attnspec: internal error (RuntimeError: boom)" in capsys.readouterr().err


def test_main_returns_usage_exit_codes(capsys):
    assert main(["--help"]) == 0
    assert main(["verify"]) == 2  # a missing argument
    assert "usage:" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "usage:" in capsys.readouterr().out


def test_version(capsys):
    import attnspec

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"attnspec {attnspec.__version__}\n"


def test_compile_check_says_whether_a_committed_module_is_up_to_date(spec, tmp_path, capsys):
    out = tmp_path / "a_attn.py"
    assert main(["compile", str(spec), "--check", "-o", str(out)]) == 1  # missing
    assert "cannot read" in capsys.readouterr().err
    assert main(["compile", str(spec), "-o", str(out)]) == 0
    before = out.read_text()
    assert main(["compile", str(spec), "--check", "-o", str(out)]) == 0
    assert "up to date" in capsys.readouterr().err and out.read_text() == before
    spec.write_text(SPEC.replace("mask causal", "mask sliding_window(4)"))
    assert main(["compile", str(spec), "--check", "-o", str(out)]) == 1
    assert "out of date" in capsys.readouterr().err and out.read_text() == before
    assert main(["compile", str(spec), "--check"]) == 1  # the default output, not written yet


def test_dash_reads_the_spec_from_standard_input(monkeypatch, capsys):
    import io

    def stdin(text):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))

    stdin(SPEC)
    assert main(["compile", "-"]) == 0  # to stdout: there is no file to name one after
    assert "class A(torch.nn.Module)" in capsys.readouterr().out
    stdin(SPEC.replace("mask causal", "maks causal"))
    assert main(["check", "-"]) == 1
    assert "<stdin>:4:" in capsys.readouterr().err


@pytest.mark.parametrize("fmt, expected", [
    ("concise", "a.attn:4:2: error[E105]: unknown statement `maks` (hint: did you mean `mask`?)"),
    ("github", "::error file="),
])
def test_check_output_formats(tmp_path, capsys, fmt, expected):
    bad = tmp_path / "a.attn"
    bad.write_text(SPEC.replace("mask causal", "maks causal"))
    assert main(["check", str(bad), "--output-format", fmt]) == 1
    out = capsys.readouterr()
    line = out.out.strip().splitlines()[0]
    assert expected in line.replace(str(tmp_path) + "/", "") and "found 1 error" in out.err
    assert main(["check", str(bad), "--output-format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["ok"] is False


def test_help_states_defaults(capsys):
    assert main(["verify", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: cpu)" in out and "(default: [tool.attnspec] dtype, else float32)" in out
    assert "(default: False)" not in out  # flags say nothing
