"""The `attnspec` command line: check, compile, explain, verify, bench, mup-check, show.

Every problem in a spec is reported as `file:LINE:COL: error: message` with the source line and a
caret; the exit code is 1 on any error and never a Python traceback. A bad option value (an
unknown backend, a number out of its documented range) is a usage error: exit 2, argparse's
message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from attnspec.backends import CHOICES
from attnspec.errors import AttnSpecError, Diagnostic, Source

EMIT_CHOICES = ("py", "ast", "ir", "ir-json", "plan", "plan-json")
BACKENDS = CHOICES  # "auto" and every backend of the registry
# verify, bench and the pytest plugin accept the same spellings (attnspec.verify.DTYPES).
DTYPE_HELP = "float64, float32, bfloat16 (bf16), float16 (fp16)"
VERIFY_DTYPE, BENCH_DTYPE = "float32", "bf16"  # without --dtype or [tool.attnspec] dtype
LINKS = ("standalone", "import")  # attnspec.codegen.link.LINKS (kept light: no import here)

# Ranges of the numeric options, named in --help; a value outside is a usage error (exit 2).
# verify gives case i the seed S + i; the margin keeps every S + i a valid 31-bit seed.
SEED_MARGIN = 1 << 16
MAX_SEED = 2**31 - 1 - SEED_MARGIN
# `show` evaluates the mask in windows, but its time grows with Sq·Sk (about a minute of CPU at
# 32768², docs/show.md), and its random q/k/v hold [batch_index + 1, heads, S, head_dim].
MAX_SHOW_LEN = 32768
MAX_SHOW_BATCH_INDEX = 7
MAX_SHOW_WIDTH = 10_000
BIAS_VIEWS = ("head", "mean", "per-head")  # show --bias
MAX_MUP_WIDTH = 4096  # four [w, w] projections plus Adam state per width: ~1 GB at 4096
MAX_MUP_STEPS = 10_000
MAX_MUP_BATCH = 64
MAX_MUP_SEQ = 1024  # the probe keeps [batch, heads, S, S] logits
MAX_BENCH_SEQ = 1 << 20
MAX_BENCH_BATCH = 4096
MAX_BENCH_REPS = 10_000


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), printed already: return the code
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    try:
        args.config = _config(args)
    except ValueError as e:  # attnspec.config.ConfigError: a bad [tool.attnspec] is a usage error
        print(f"attnspec: error: {e}", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 — the CLI never shows a traceback
        print(f"attnspec: internal error ({type(e).__name__}: {e}); please report it",
              file=sys.stderr)
        return 2


def _config(args):
    """The `[tool.attnspec]` table nearest the first spec named (the working directory for
    standard input or none); flags given on the command line override it (attnspec.config)."""
    from attnspec.config import find_config

    paths = getattr(args, "paths", None) or [getattr(args, "path", None)]
    first = paths[0] if paths and paths[0] not in (None, STDIN) else None
    return find_config(first)


# --- option types: a bad value is argparse's usage error (exit 2) -------------------------------
def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: an integer in [low, high] (no upper bound for None)."""
    def parse(text: str) -> int:
        return _checked_int(text, low, high)

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def ints_in(low: int, high: int, distinct: int = 1) -> Callable[[str], tuple[int, ...]]:
    """An argparse `type`: comma-separated integers in [low, high], at least `distinct` of them
    different."""
    def parse(text: str) -> tuple[int, ...]:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"takes comma-separated integers, got {text!r}")
        values = tuple(_checked_int(item, low, high, "comma-separated integers")
                       for item in items)
        if len(set(values)) < distinct:
            raise argparse.ArgumentTypeError(f"needs at least {distinct} distinct values, got "
                                             f"{text!r}")
        return values

    parse.__name__ = "integer list"
    return parse


def _checked_int(text: str, low: int, high: int | None, what: str = "an integer") -> int:
    shown = text if len(text) <= 40 else text[:40] + "..."  # a 4000-digit value stays readable
    try:
        value = int(text)
    except ValueError:  # also a number of more digits than Python converts
        raise argparse.ArgumentTypeError(f"takes {what}, got {shown!r}") from None
    if value < low or (high is not None and value > high):
        allowed = f"at least {low}" if high is None else f"in {low}..{high}"
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {shown}")
    return value


def backend_list(text: str) -> str:
    """An argparse `type` for verify's and bench's --backend: `all`, or comma-separated names
    from BACKENDS (duplicates dropped)."""
    names = [name.strip() for name in text.split(",")]
    if names == ["all"]:
        return "all"
    valid = ", ".join((*BACKENDS, "all"))
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty backend name in {text!r}; use a "
                                         f"comma-separated list of {valid}")
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown backend {unknown[0]!r}; use a "
                                         f"comma-separated list of {valid}")
    return ",".join(dict.fromkeys(names))


def dtype_name(text: str) -> str:
    """An argparse `type` for --dtype: one of the spellings verify and bench accept."""
    from attnspec.config import DTYPE_NAMES

    if text not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; use one of "
                                         f"{', '.join(DTYPE_NAMES)}")
    return text


def group_sizes(text: str) -> str:
    """An argparse `type` for show's --sizes: `GROUP=N,...` well formed (whether the groups
    exist is the command's check, per attention)."""
    from attnspec.show.cli import parse_sizes

    try:
        parse_sizes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--sizes ")) from None
    return text


def device_name(text: str) -> str:
    """An argparse `type` for --device: a device string torch parses (cpu, cuda, cuda:1). Whether
    the device exists here is the command's check (exit 1)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (use cpu, cuda or "
                                         f"cuda:N)") from None
    return text


SEED = int_in(0, MAX_SEED)
SEED_HELP = f"seed of the random inputs, 0..{MAX_SEED}"


def _version() -> str:
    from attnspec import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnspec", description="A compiler for attention "
                                "mechanisms: .attn specs to verified PyTorch modules.",
                                epilog="Exit codes: 0 success, 1 an error (or, for verify, any "
                                "failure or nothing verified), 2 a usage error.")
    p.add_argument("--version", action="version", version=f"attnspec {_version()}")
    sub = p.add_subparsers(dest="command")
    check = sub.add_parser("check", help="report every problem in specs")
    check.add_argument("paths", nargs="*", help=".attn files or directories")
    check.add_argument("--explain", metavar="CODE", help="print what a diagnostic code (E201) "
                       "or name (unknown-name) means, and exit (as `attnspec rule CODE`)")
    check.add_argument("--json", action="store_true", help="print every file's diagnostics "
                       "as JSON on stdout")
    check.add_argument("--output-format", choices=OUTPUT_FORMATS,
                       help="full (default, or [tool.attnspec] output-format: source line, "
                       "caret and hint, on stderr); concise (one line each) or github (workflow "
                       "annotations) on stdout; json as --json")
    check.set_defaults(run=cmd_check)
    rule = sub.add_parser("rule", help="explain diagnostic codes (docs/diagnostics.md)")
    rule.add_argument("codes", nargs="*", metavar="CODE", help="codes (E201) or names "
                      "(unknown-name); none: list every code")
    rule.set_defaults(run=cmd_rule)
    comp = sub.add_parser("compile", help="compile a spec to a Python module")
    comp.add_argument("path", help="an .attn file")
    comp.add_argument("-o", "--output", help="output file (default: NAME_attn.py beside the "
                      "spec; `-` for stdout); never the spec itself, and its directory must "
                      "exist")
    comp.add_argument("--backend", choices=BACKENDS, help="the module's default backend "
                      "(default: [tool.attnspec] backend, else the spec's `backend`, else auto)")
    comp.add_argument("--link", choices=LINKS, default="standalone",
                      help="how the module reaches attnspec's runtime: standalone (default) "
                      "inlines exactly the helpers it uses and imports only torch and the "
                      "standard library; import imports them from attnspec.runtime (a shorter "
                      "module that needs attnspec installed wherever it runs)")
    comp.add_argument("--check", action="store_true", help="write nothing: exit 1 unless the "
                      "output file already holds exactly what this would write (for CI, where "
                      "generated modules are committed)")
    comp.add_argument("--emit", choices=EMIT_CHOICES, default="py",
                      help="what to write: the module (py) or a pipeline stage (ast, ir, plan: "
                      "every backend's plan or reasons and auto's order; -json for JSON)")
    comp.set_defaults(run=cmd_compile)
    exp = sub.add_parser("explain", help="per attention and backend: supported or not and why, "
                         "and the plan")
    exp.add_argument("paths", nargs="+", help=".attn files or directories")
    exp.add_argument("--json", action="store_true", help="print the report as JSON")
    exp.set_defaults(run=cmd_explain)
    _verify_parser(sub)
    _bench_parser(sub)
    _mup_parser(sub)
    _show_parser(sub)
    for command in sub.choices.values():  # `--help` states every option's default
        command.formatter_class = _DefaultsFormatter
    return p


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each option's help, except for flags (False) and options
    without a default (None), where it would only add noise."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def _verify_parser(sub) -> None:
    ver = sub.add_parser("verify", help="check generated modules against the eager interpreter",
                         epilog="Exit codes: 0 every check passed; 1 a check failed, a spec "
                         "does not build, the device is not usable, or nothing was verified (no "
                         "specs, no checks planned, every check refused); 2 a usage error.")
    ver.add_argument("paths", nargs="+", help=".attn files or directories")
    ver.add_argument("--backend", default="all", type=backend_list,
                     help=f"comma-separated backends ({', '.join(BACKENDS)}), or all")
    ver.add_argument("--device", default="cpu", type=device_name, help="cpu, cuda, cuda:N")
    ver.add_argument("--dtype", type=dtype_name, help=f"{DTYPE_HELP} (default: "
                     f"[tool.attnspec] dtype, else {VERIFY_DTYPE})")
    ver.add_argument("--json", action="store_true", help="print results as JSON (a spec that "
                     "does not build is a failed entry)")
    ver.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE (its "
                     "directory is created)")
    ver.add_argument("--seed", type=SEED, default=0, help=f"{SEED_HELP}; case i uses "
                     f"SEED + i (the range leaves room for that)")
    ver.set_defaults(run=cmd_verify)


def _bench_parser(sub) -> None:
    ben = sub.add_parser("bench", help="time every backend of a spec (and auto)")
    ben.add_argument("path", help="an .attn file")
    ben.add_argument("--name", help="only this attention")
    ben.add_argument("--backend", default="all", type=backend_list, help="comma-separated "
                     "backends (auto included), or all")
    ben.add_argument("--device", default=None, type=device_name,
                     help="cpu, cuda, cuda:N (default: cuda when there is one, else cpu)")
    ben.add_argument("--dtype", type=dtype_name, help=f"{DTYPE_HELP} (default: "
                     f"[tool.attnspec] dtype, else {BENCH_DTYPE})")
    ben.add_argument("--seq", default="8192", type=ints_in(1, MAX_BENCH_SEQ),
                     help=f"comma-separated sequence lengths, each 1..{MAX_BENCH_SEQ}")
    ben.add_argument("--batch", type=int_in(1, MAX_BENCH_BATCH), default=4,
                     help=f"batch size, 1..{MAX_BENCH_BATCH}")
    ben.add_argument("--fwd-only", action="store_true", help="skip forward+backward")
    ben.add_argument("--reps", type=int_in(1, MAX_BENCH_REPS), default=20,
                     help=f"timed repetitions (median), 1..{MAX_BENCH_REPS}")
    ben.add_argument("--json", action="store_true", help="print the rows as JSON")
    ben.set_defaults(run=cmd_bench)


def _mup_parser(sub) -> None:
    mup = sub.add_parser("mup-check", help="muP coordinate check: activation sizes across "
                         "widths under muP and standard parametrization")
    mup.add_argument("path", help="an .attn file")
    mup.add_argument("--name", help="the attention to check (default: the one with `mup`)")
    mup.add_argument("--widths", default="64,128,256,512", type=ints_in(1, MAX_MUP_WIDTH, 2),
                     help=f"comma-separated widths (dim), at least two distinct, each "
                     f"1..{MAX_MUP_WIDTH}")
    mup.add_argument("--steps", type=int_in(1, MAX_MUP_STEPS), default=5,
                     help=f"Adam steps, 1..{MAX_MUP_STEPS}")
    mup.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (both)")
    mup.add_argument("--batch", type=int_in(1, MAX_MUP_BATCH), default=4,
                     help=f"1..{MAX_MUP_BATCH}")
    mup.add_argument("--seq", type=int_in(1, MAX_MUP_SEQ), default=16,
                     help=f"sequence length, 1..{MAX_MUP_SEQ}")
    mup.add_argument("--seed", type=SEED, default=0, help=SEED_HELP)
    mup.add_argument("-o", "--output", metavar="PNG", help="also plot the curves (matplotlib)")
    mup.add_argument("--json", action="store_true", help="print the measurements as JSON")
    mup.set_defaults(run=cmd_mup_check)


def _show_parser(sub) -> None:
    show = sub.add_parser("show", help="the mask, block sparsity and bias of an attention: "
                          "text in the terminal, a picture with -o (docs/show.md)")
    show.add_argument("path", help="an .attn file")
    show.add_argument("--name", help="only this attention (default: every one)")
    length = int_in(1, MAX_SHOW_LEN)
    show.add_argument("--q-len", type=length, help=f"query length, 1..{MAX_SHOW_LEN} "
                      f"(default 1024, 128 with --weights; token groups: their total, also at "
                      f"most {MAX_SHOW_LEN})")
    show.add_argument("--kv-len", type=length, help=f"key length, 1..{MAX_SHOW_LEN} "
                      f"(default: --q-len)")
    show.add_argument("--sizes", type=group_sizes, help="sizes of `*` token groups: "
                      "GROUP=N,...")
    show.add_argument("--head", type=int_in(0), help="the head to show (default 0); in the "
                      "terminal it also adds a bias summary")
    show.add_argument("--bias", choices=BIAS_VIEWS, default="head", help="the bias panel: "
                      "head (one head, --head), mean (the mean over heads) or per-head (a grid "
                      "of heads, each on its own scale: ALiBi's slopes differ by 2^8 across "
                      "heads); mean and per-head add the bias summary in the terminal too")
    show.add_argument("--batch-index", type=int_in(0, MAX_SHOW_BATCH_INDEX), default=0,
                      help=f"the batch row to show, 0..{MAX_SHOW_BATCH_INDEX}")
    show.add_argument("--block", type=length, default=128, help=f"block size of the sparsity "
                      f"overlay, 1..{MAX_SHOW_LEN} (default 128)")
    show.add_argument("--weights", action="store_true", help="attention weights of random "
                      "inputs instead of the mask")
    show.add_argument("--seed", type=SEED, default=0, help=SEED_HELP + " and params")
    show.add_argument("-o", "--output", metavar="PNG", help="write a picture (matplotlib); "
                      "several attentions go to OUT_NAME.png")
    show.add_argument("--json", action="store_true", help="print the data as JSON")
    show.add_argument("--ascii", action="store_true", help="plain ASCII characters")
    show.add_argument("--width", type=int_in(20, MAX_SHOW_WIDTH), help=f"text width, "
                      f"20..{MAX_SHOW_WIDTH} (default: the terminal's)")
    show.set_defaults(run=cmd_show)


def spec_files(paths: list[str]) -> Iterator[Path]:
    """Files as given; directories searched recursively for *.attn, in sorted order. A named
    path that is not a regular file is the reader's error; in a directory it is skipped."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from _regular_specs(p)
        else:
            yield p


def _regular_specs(directory: Path) -> Iterator[Path]:
    """The regular *.attn files under `directory`, sorted; anything else of that name (a FIFO, a
    device, a socket, a directory) is skipped with a warning: reading it could block forever."""
    from attnspec.compiler import file_kind

    for path in sorted(directory.rglob("*.attn")):
        try:
            kind = file_kind(path.stat().st_mode)
        except OSError:  # e.g. a dangling symlink: reading it reports the error
            kind = None
        if kind is None:
            yield path
        else:
            print(f"{path}: warning: skipped: it is {kind}, not a regular file",
                  file=sys.stderr)


def _report(diagnostics: list[Diagnostic], source: Source | None) -> None:
    from attnspec.console import colour_diagnostics

    for d in diagnostics:
        print(colour_diagnostics(d.format(source), sys.stderr), file=sys.stderr)


def _load(path: Path, collect: list | None = None, failures: dict | None = None,
          tally: Counter | None = None, given: Source | None = None, config=None):
    """(source, IR) or (source, None) after printing the diagnostics — or, given `collect`,
    appending them there (as JSON-ready dicts) instead of printing. Given `failures`, a path that
    does not build maps there to its first error (verify reports it as a failed entry). Given
    `tally`, each diagnostic is counted there by severity. `given`: the text, already read
    (standard input can be read once). `config`: the `[tool.attnspec]` settings, whose `ignore`
    drops warnings and whose `error` makes them errors (then the spec does not build)."""
    from attnspec.compiler import build
    from attnspec.config import Config

    source = None
    tally = Counter() if tally is None else tally
    config = config or Config()
    try:
        source = given or _read(path)
        warnings: list[Diagnostic] = []
        module = build(source, warnings)
        warnings = config.apply(warnings)
        if any(d.severity == "error" for d in warnings):  # a warning promoted by the config
            raise AttnSpecError(warnings, source)
        _emit_diagnostics(warnings, source, collect)
        tally.update(d.severity for d in warnings)
        return source, module
    except AttnSpecError as e:
        diagnostics = config.apply(e.diagnostics)
        _emit_diagnostics(diagnostics, e.source or source, collect)
        tally.update(d.severity for d in diagnostics)
        if failures is not None:
            failures[path] = _first_error(diagnostics)
        return source, None


def _first_error(diagnostics: list[Diagnostic]) -> str:
    """`LINE:COL: message` of the first error (or first diagnostic) of a failed build."""
    errors = [d for d in diagnostics if d.severity == "error"] or diagnostics
    if not errors:
        return "the spec does not build"
    d = errors[0]
    return f"{d.span.line}:{d.span.col}: {d.message}"


def _emit_diagnostics(diagnostics: list[Diagnostic], source: Source | None,
                      collect: list | None) -> None:
    if collect is None:
        _report(diagnostics, source)
    else:
        collect += [d.as_dict(source) for d in diagnostics]


def cmd_rule(args) -> int:
    """`attnspec rule [CODE ...]`: each code's name, severity and meaning; every code without
    arguments. An unknown code is an error (exit 1) naming the closest one."""
    from attnspec.errors import did_you_mean
    from attnspec.rules import BY_NAME, RULES, explain

    status = 0
    for code in args.codes or list(RULES):
        text = explain(code)
        if text is None:
            hint = did_you_mean(code.upper(), RULES) or did_you_mean(code.lower(), BY_NAME)
            print(f"attnspec: unknown diagnostic code {code!r}" + (f"; {hint}" if hint else
                  "; `attnspec rule` lists them all"), file=sys.stderr)
            status = 1
        else:
            print(text)
    return status


def cmd_check(args) -> int:
    if args.explain:
        return cmd_rule(argparse.Namespace(codes=[args.explain]))
    if not args.paths:
        print("attnspec check: error: give .attn files or directories (or --explain CODE)",
              file=sys.stderr)
        return 2
    files = list(spec_files(args.paths))
    if not files:
        print("attnspec: no .attn files found", file=sys.stderr)
        return 1
    if args.json:
        args.output_format = "json"
    args.output_format = args.output_format or args.config.output_format or "full"
    failed, report, total, flagged = 0, [], Counter(), 0
    for path in files:
        diagnostics = [] if args.output_format != "full" else None
        tally: Counter = Counter()
        _, module = _load(path, diagnostics, tally=tally, config=args.config)
        failed += module is None
        flagged += bool(tally)
        total += tally
        report.append({"file": str(path), "ok": module is not None, "diagnostics": diagnostics})
    if args.output_format == "json":
        print(json.dumps(report, indent=1))
    elif args.output_format != "full":
        for entry in report:
            for d in entry["diagnostics"]:
                print(FORMATTERS[args.output_format](d))
    print(check_summary(total["error"], total["warning"], flagged, len(files)), file=sys.stderr)
    return 1 if failed else 0


def concise_line(d: dict) -> str:
    """One diagnostic on one line (`check --output-format concise`).

    >>> concise_line({"file": "a.attn", "line": 2, "col": 3, "severity": "error",
    ...               "code": "E201", "message": "oops", "hint": "try this"})
    'a.attn:2:3: error[E201]: oops (hint: try this)'
    """
    hint = f" (hint: {d['hint']})" if d.get("hint") else ""
    return f"{d['file']}:{d['line']}:{d['col']}: {_label(d)}: {d['message']}{hint}"


def _label(d: dict) -> str:
    """`error[E201]` as Diagnostic.label writes it, from the JSON-ready dict."""
    return f"{d['severity']}[{d['code']}]" if d.get("code") else d["severity"]


def github_line(d: dict) -> str:
    """A GitHub Actions workflow annotation (`check --output-format github`), escaped as the
    workflow-command syntax requires.

    >>> github_line({"file": "a.attn", "line": 2, "col": 3, "end_line": 2, "end_col": 5,
    ...              "severity": "warning", "code": "W401", "message": "50%, done", "hint": None})
    '::warning file=a.attn,line=2,col=3,endLine=2,endColumn=5,title=attnspec W401::W401 50%25, done'
    """
    def data(text: str) -> str:
        return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def prop(text: str) -> str:
        return data(text).replace(":", "%3A").replace(",", "%2C")

    level = "error" if d["severity"] == "error" else "warning"
    # The code leads the message too: GitHub shows the title only in the annotation's box.
    code = f"{d['code']} " if d.get("code") else ""
    message = code + d["message"] + (f" (hint: {d['hint']})" if d.get("hint") else "")
    title = prop(f"attnspec {code}".strip())
    return (f"::{level} file={prop(d['file'])},line={d['line']},col={d['col']},"
            f"endLine={d['end_line']},endColumn={d['end_col']},title={title}::{data(message)}")


OUTPUT_FORMATS = ("full", "concise", "github", "json")
FORMATTERS = {"concise": concise_line, "github": github_line}


def check_summary(errors: int, warnings: int, flagged: int, checked: int) -> str:
    """The last line of `check`, counting diagnostics as mypy and ruff do (a file count alone
    hides whether one typo or forty need fixing).

    >>> check_summary(2, 1, 1, 3)
    'found 2 errors and 1 warning in 1 file (checked 3 files)'
    >>> check_summary(0, 0, 0, 1)
    'no errors or warnings (checked 1 file)'
    """
    checked_text = f"(checked {_plural(checked, 'file')})"
    if not errors and not warnings:
        return f"no errors or warnings {checked_text}"
    counts = [_plural(n, what) for n, what in ((errors, "error"), (warnings, "warning")) if n]
    return f"found {' and '.join(counts)} in {_plural(flagged, 'file')} {checked_text}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def cmd_compile(args) -> int:
    from attnspec.compiler import parse_source

    path = Path(args.path)
    if args.output not in (None, "-") and _same_file(path, Path(args.output)):
        print(f"{args.output}: error: this is the spec being compiled; refusing to overwrite "
              f"it (choose another -o)", file=sys.stderr)
        return 1
    try:
        source = _read(path)
        if args.emit == "ast":
            return _write(_ast_text(parse_source(source)), args.output or "-")
        _, module = _load(path, given=source, config=args.config)
        if module is None:
            return 1
        output = args.output or _default_output(path, args.emit)
        if args.check:
            return _check_written(_emit(module, args), output, path)
        return _write(_emit(module, args), output)
    except AttnSpecError as e:
        _report(e.diagnostics, e.source)
        return 1
    except ValueError as e:  # e.g. UnsupportedBackendError
        print(f"{path}: error: {e}", file=sys.stderr)
        return 1


def _emit(module, args) -> str:
    if args.emit == "ir":
        from attnspec.ir.printer import module_text

        return module_text(module)
    if args.emit == "ir-json":
        return module.model_dump_json(indent=1) + "\n"
    if args.emit in ("plan", "plan-json"):
        from attnspec.lower.module import lower_module

        lowered = lower_module(module)
        return lowered.as_json() if args.emit == "plan-json" else lowered.describe()
    from attnspec.codegen.emit import generate

    return generate(module, args.backend or args.config.backend, args.link)


def _default_output(path: Path, emit: str) -> str:
    if emit != "py" or str(path) == STDIN:
        return "-"
    return str(path.with_name(path.stem + "_attn.py"))


STDIN = "-"  # as a spec path: read the spec from standard input (named <stdin> in messages)


def _read(path: Path):
    """The spec at `path`, or standard input for `-` (bounded like a file)."""
    from attnspec.compiler import MAX_SPEC_BYTES, decode_spec, read_spec

    if str(path) == STDIN:
        return decode_spec(sys.stdin.buffer.read(MAX_SPEC_BYTES + 1), "<stdin>")
    return read_spec(path)


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file, whatever the spelling (`./x`, absolute, a symlink, a
    hard link); a `b` that does not exist is not `a`."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _check_written(text: str, output: str, spec: Path) -> int:
    """`compile --check`: 0 when `output` holds exactly what compiling `spec` writes now (a
    committed generated module is up to date), else 1 with what to run."""
    if output == "-":
        print("error: --check compares with a file: give -o FILE (or none for the default)",
              file=sys.stderr)
        return 1
    try:
        current = Path(output).read_text(encoding="utf-8")
    except OSError as e:
        print(f"{output}: error: cannot read: {e.strerror or e}", file=sys.stderr)
        return 1
    if current == text:
        print(f"{output} is up to date with {spec}", file=sys.stderr)
        return 0
    print(f"{output}: error: out of date with {spec}; regenerate: attnspec compile {spec} "
          f"-o {output}", file=sys.stderr)
    return 1


def _write(text: str, output: str) -> int:
    if output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:  # a missing directory, a read-only place, a directory named so
        print(f"{output}: error: cannot write: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _ast_text(file) -> str:
    from attnspec.grammar.printer import ast_text

    return ast_text(file)


def cmd_explain(args) -> int:
    from attnspec.explain import explain_data, explain_module

    failed, reports = 0, []
    for path in spec_files(args.paths):
        _, module = _load(path, config=args.config)
        if module is None:
            failed += 1
        elif args.json:
            reports += [{"file": str(path), **explain_data(a, module.source_name)}
                        for a in module.attentions]
        else:
            reports.append(explain_module(module))
    print(json.dumps(reports, indent=1) if args.json else "\n\n".join(reports))
    return 1 if failed else 0


def cmd_verify(args) -> int:
    from attnspec.verify import run_cli

    failures: dict[Path, str] = {}
    args.dtype = args.dtype or args.config.dtype or VERIFY_DTYPE
    loaded = [(p, *_load(p, failures=failures, config=args.config))
              for p in spec_files(args.paths)]
    return run_cli(args, loaded, failures)


def cmd_bench(args) -> int:
    import torch

    from attnspec.bench import run_cli

    if args.device is None:  # the device that exists: timing a missing GPU helps nobody
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = args.dtype or args.config.dtype or BENCH_DTYPE
    path = Path(args.path)
    return run_cli(args, path, *_load(path, config=args.config))


def cmd_mup_check(args) -> int:
    from attnspec.mup_check import run_cli

    path = Path(args.path)
    return run_cli(args, path, *_load(path, config=args.config))


def cmd_show(args) -> int:
    from attnspec.show.cli import run_cli

    path = Path(args.path)
    return run_cli(args, path, *_load(path, config=args.config))


if __name__ == "__main__":
    sys.exit(main())
