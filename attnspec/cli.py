"""The `attnspec` command line: check, compile, explain, verify, bench, mup-check.

Every problem in a spec is reported as `file:LINE:COL: error: message` with the source line and a
caret; the exit code is 1 on any error and never a Python traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from attnspec.errors import AttnSpecError, Diagnostic, Source

EMIT_CHOICES = ("py", "ast", "ir", "ir-json")
BACKENDS = ("auto", "eager", "flex", "sdpa", "flash")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnspec", description="A compiler for attention "
                                "mechanisms: .attn specs to verified PyTorch modules.")
    sub = p.add_subparsers(dest="command")
    check = sub.add_parser("check", help="report every problem in specs")
    check.add_argument("paths", nargs="+", help=".attn files or directories")
    check.add_argument("--json", action="store_true", help="print every file's diagnostics "
                       "as JSON on stdout")
    check.set_defaults(run=cmd_check)
    comp = sub.add_parser("compile", help="compile a spec to a Python module")
    comp.add_argument("path", help="an .attn file")
    comp.add_argument("-o", "--output", help="output file (default: NAME_attn.py beside the "
                      "spec; `-` for stdout)")
    comp.add_argument("--backend", choices=BACKENDS, help="the module's default backend")
    comp.add_argument("--emit", choices=EMIT_CHOICES, default="py",
                      help="what to write: the module (py) or a pipeline stage")
    comp.set_defaults(run=cmd_compile)
    exp = sub.add_parser("explain", help="per attention and backend: supported or not and why, "
                         "and the plan")
    exp.add_argument("paths", nargs="+", help=".attn files or directories")
    exp.add_argument("--json", action="store_true", help="print the report as JSON")
    exp.set_defaults(run=cmd_explain)
    ver = sub.add_parser("verify", help="check generated modules against the eager interpreter")
    ver.add_argument("paths", nargs="+", help=".attn files or directories")
    ver.add_argument("--backend", default="all", help="comma-separated backends, or all")
    ver.add_argument("--device", default="cpu")
    ver.add_argument("--dtype", default="float32", help="float64, float32, bfloat16, float16")
    ver.add_argument("--json", action="store_true", help="print results as JSON")
    ver.add_argument("--junit", metavar="FILE", help="also write JUnit XML to FILE")
    ver.add_argument("--seed", type=int, default=0)
    ver.set_defaults(run=cmd_verify)
    ben = sub.add_parser("bench", help="time every backend of a spec (and auto)")
    ben.add_argument("path", help="an .attn file")
    ben.add_argument("--name", help="only this attention")
    ben.add_argument("--backend", default="all", help="comma-separated backends (auto "
                     "included), or all")
    ben.add_argument("--device", default="cuda")
    ben.add_argument("--dtype", default="bf16", help="bf16, fp16, float32, float64")
    ben.add_argument("--seq", default="8192", help="comma-separated sequence lengths")
    ben.add_argument("--batch", type=int, default=4)
    ben.add_argument("--fwd-only", action="store_true", help="skip forward+backward")
    ben.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    ben.add_argument("--json", action="store_true", help="print the rows as JSON")
    ben.set_defaults(run=cmd_bench)
    mup = sub.add_parser("mup-check", help="muP coordinate check: activation sizes across "
                         "widths under muP and standard parametrization")
    mup.add_argument("path", help="an .attn file")
    mup.add_argument("--name", help="the attention to check (default: the one with `mup`)")
    mup.add_argument("--widths", default="64,128,256,512", help="comma-separated widths (dim)")
    mup.add_argument("--steps", type=int, default=5, help="Adam steps")
    mup.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (both)")
    mup.add_argument("--batch", type=int, default=4)
    mup.add_argument("--seq", type=int, default=16, help="sequence length")
    mup.add_argument("--seed", type=int, default=0)
    mup.add_argument("-o", "--output", metavar="PNG", help="also plot the curves (matplotlib)")
    mup.add_argument("--json", action="store_true", help="print the measurements as JSON")
    mup.set_defaults(run=cmd_mup_check)
    _show_parser(sub)
    return p


def _show_parser(sub) -> None:
    show = sub.add_parser("show", help="the mask, block sparsity and bias of an attention: "
                          "text in the terminal, a picture with -o (docs/show.md)")
    show.add_argument("path", help="an .attn file")
    show.add_argument("--name", help="only this attention (default: every one)")
    show.add_argument("--q-len", type=int, help="query length (default 1024, 128 with "
                      "--weights; token groups: their total)")
    show.add_argument("--kv-len", type=int, help="key length (default: --q-len)")
    show.add_argument("--sizes", help="sizes of `*` token groups: GROUP=N,...")
    show.add_argument("--head", type=int, help="the head to show (default 0); in the terminal "
                      "it also adds a bias summary")
    show.add_argument("--batch-index", type=int, default=0, help="the batch row to show")
    show.add_argument("--block", type=int, default=128, help="block size of the sparsity "
                      "overlay (default 128)")
    show.add_argument("--weights", action="store_true", help="attention weights of random "
                      "inputs instead of the mask")
    show.add_argument("--seed", type=int, default=0, help="seed of the random inputs/params")
    show.add_argument("-o", "--output", metavar="PNG", help="write a picture (matplotlib); "
                      "several attentions go to OUT_NAME.png")
    show.add_argument("--json", action="store_true", help="print the data as JSON")
    show.add_argument("--ascii", action="store_true", help="plain ASCII characters")
    show.add_argument("--width", type=int, help="text width (default: the terminal's)")
    show.set_defaults(run=cmd_show)


def spec_files(paths: list[str]) -> Iterator[Path]:
    """Files as given; directories searched recursively for *.attn, in sorted order."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(p.rglob("*.attn"))
        else:
            yield p


def _report(diagnostics: list[Diagnostic], source: Source | None) -> None:
    from attnspec.console import colour_diagnostics

    for d in diagnostics:
        print(colour_diagnostics(d.format(source), sys.stderr), file=sys.stderr)


def _load(path: Path, collect: list | None = None):
    """(source, IR) or (source, None) after printing the diagnostics — or, given `collect`,
    appending them there (as JSON-ready dicts) instead of printing."""
    from attnspec.compiler import build, read_spec

    source = None
    try:
        source = read_spec(path)
        warnings: list[Diagnostic] = []
        module = build(source, warnings)
        _emit_diagnostics(warnings, source, collect)
        return source, module
    except AttnSpecError as e:
        _emit_diagnostics(e.diagnostics, e.source or source, collect)
        return source, None


def _emit_diagnostics(diagnostics: list[Diagnostic], source: Source | None,
                      collect: list | None) -> None:
    if collect is None:
        _report(diagnostics, source)
    else:
        collect += [d.as_dict(source) for d in diagnostics]


def cmd_check(args) -> int:
    files = list(spec_files(args.paths))
    if not files:
        print("attnspec: no .attn files found", file=sys.stderr)
        return 1
    failed, report = 0, []
    for path in files:
        diagnostics = [] if args.json else None
        _, module = _load(path, diagnostics)
        failed += module is None
        report.append({"file": str(path), "ok": module is not None, "diagnostics": diagnostics})
    if args.json:
        print(json.dumps(report, indent=1))
    print(f"checked {len(files)} file(s): {failed} with errors", file=sys.stderr)
    return 1 if failed else 0


def cmd_compile(args) -> int:
    from attnspec.compiler import parse_source, read_spec

    path = Path(args.path)
    try:
        source = read_spec(path)
        if args.emit == "ast":
            return _write(_ast_text(parse_source(source)), args.output or "-")
        _, module = _load(path)
        if module is None:
            return 1
        return _write(_emit(module, args), args.output or _default_output(path, args.emit))
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
    from attnspec.codegen.emit import generate

    return generate(module, args.backend)


def _default_output(path: Path, emit: str) -> str:
    return str(path.with_name(path.stem + "_attn.py")) if emit == "py" else "-"


def _write(text: str, output: str) -> int:
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    return 0


def _ast_text(file) -> str:
    from attnspec.grammar.printer import ast_text

    return ast_text(file)


def cmd_explain(args) -> int:
    from attnspec.explain import explain_data, explain_module

    failed, reports = 0, []
    for path in spec_files(args.paths):
        _, module = _load(path)
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

    return run_cli(args, [(p, *_load(p)) for p in spec_files(args.paths)])


def cmd_bench(args) -> int:
    from attnspec.bench import run_cli

    path = Path(args.path)
    return run_cli(args, path, *_load(path))


def cmd_mup_check(args) -> int:
    from attnspec.mup_check import run_cli

    path = Path(args.path)
    return run_cli(args, path, *_load(path))


def cmd_show(args) -> int:
    from attnspec.show import run_cli

    path = Path(args.path)
    return run_cli(args, path, *_load(path))


if __name__ == "__main__":
    sys.exit(main())
