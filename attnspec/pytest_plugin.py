"""The pytest plugin: `pytest --attnspec specs/` verifies every spec x attention x backend x case
against the eager interpreter (the `attnspec verify` harness, `attnspec.verify`), one test item
each, inside a project's existing pytest run.

Registered through the `pytest11` entry point `attnspec`. It costs nothing unless asked for: no
torch import and no `.attn` collection without `--attnspec`, the `attnspec_paths` ini option or
`attnspec_collect = true` (docs/pytest.md).

Example:
    $ pytest --attnspec specs/ -m sdpa
    attnspec: seed 0, device cpu, dtype float32, backends: all available (reproduce with ...)
    ...
    specs/causal_lm.attn::CausalLM::sdpa[S=37] PASSED
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from attnspec.backends import AUTO, NAMES

DEFAULT_SEED = 0  # fixed, so that a failure reproduces; printed in the report header
BACKEND_NAMES = (*NAMES, AUTO)


class AttnSpecWarning(UserWarning):
    """A warning diagnostic of a spec collected by the plugin."""


@dataclass(frozen=True)
class Settings:
    """What the plugin verifies and how; `roots` empty and `collect_all` False mean inactive."""

    roots: tuple[Path, ...]
    collect_all: bool
    backends: tuple[str, ...] | None  # None: every backend generated that runs on `device`
    device: str
    dtype: str
    seed: int

    @property
    def active(self) -> bool:
        return bool(self.roots) or self.collect_all

    def wants(self, path: Path) -> bool:
        """Whether the `.attn` file `path` is to be verified."""
        if self.collect_all:
            return True
        path = path.resolve()
        return any(path.is_relative_to(root) for root in self.roots)


_SETTINGS = pytest.StashKey[Settings]()


# --- options and configuration -----------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnspec", "attnspec: verify .attn specs against the eager "
                            "interpreter")
    group.addoption("--attnspec", action="extend", nargs="+", default=[], metavar="PATH",
                    help="verify these .attn files / directories (each spec x attention x "
                    "backend x case is a test item)")
    group.addoption("--attnspec-backend", default="all", metavar="LIST",
                    help="comma-separated backends (eager, sdpa, flex, flash, auto), or all: "
                    "every backend generated into a class that runs on the device "
                    "(default: all)")
    group.addoption("--attnspec-device", default="cpu", help="device (default: cpu)")
    group.addoption("--attnspec-dtype", default="float32",
                    help="float64, float32, bfloat16, float16 (default: float32)")
    group.addoption("--attnspec-seed", type=int, default=DEFAULT_SEED,
                    help=f"seed of the random inputs (default: {DEFAULT_SEED})")
    parser.addini("attnspec_paths", type="paths", default=[],
                  help="attnspec: .attn files / directories verified when pytest runs without "
                  "path arguments (relative to the ini file)")
    parser.addini("attnspec_collect", type="bool", default=False,
                  help="attnspec: verify every .attn file pytest walks into")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "attnspec: a spec verification item (attnspec plugin)")
    for backend in BACKEND_NAMES:
        config.addinivalue_line("markers", f"{backend}: attnspec items of the {backend} backend")
    settings = _settings(config)
    config.stash[_SETTINGS] = settings
    if settings.active:
        _validate(settings)
        _add_collection_args(config)


def _settings(config: pytest.Config) -> Settings:
    given = [Path(config.invocation_params.dir, p).resolve()
             for p in config.getoption("attnspec")]
    configured = [Path(p).resolve() for p in config.getini("attnspec_paths")]
    backend = config.getoption("attnspec_backend").strip()
    backends = None if backend == "all" else \
        tuple(b.strip() for b in backend.split(",") if b.strip())
    return Settings(roots=tuple(dict.fromkeys(given + configured)),
                    collect_all=bool(config.getini("attnspec_collect")), backends=backends,
                    device=config.getoption("attnspec_device"),
                    dtype=config.getoption("attnspec_dtype"),
                    seed=config.getoption("attnspec_seed"))


def _validate(settings: Settings) -> None:
    """Bad options are a usage error before collection, not a failure in every item."""
    import torch

    from attnspec.verify import DTYPES

    unknown = sorted(set(settings.backends or ()) - set(BACKEND_NAMES))
    if unknown or settings.backends == ():
        raise pytest.UsageError(f"--attnspec-backend: unknown backend(s) {', '.join(unknown)}; "
                                f"use a comma-separated list of {', '.join(BACKEND_NAMES)}, "
                                "or all")
    if settings.dtype not in DTYPES:
        raise pytest.UsageError(f"--attnspec-dtype: unknown dtype {settings.dtype!r}; use one "
                                f"of {', '.join(DTYPES)}")
    try:
        device = torch.device(settings.device)
    except (RuntimeError, ValueError) as e:
        raise pytest.UsageError(f"--attnspec-device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--attnspec-device: CUDA is not available here")


def _add_collection_args(config: pytest.Config) -> None:
    """Make pytest walk the spec paths too: `--attnspec` paths always, ini `attnspec_paths` only
    when pytest got no path arguments (like `testpaths`). A root that a path argument already
    points into is not added, so `pytest 'specs/a.attn::A::sdpa[S=37]' --attnspec specs` runs
    that one item."""
    here = config.invocation_params.dir
    positional = config.getoption("file_or_dir") or []
    inside = [Path(here, arg.split("::")[0]).resolve() for arg in positional]
    wanted = [str(p) for p in config.getoption("attnspec")]
    if not positional:
        wanted += [str(p) for p in config.getini("attnspec_paths")]
    for arg in dict.fromkeys(wanted):
        root = Path(here, arg).resolve()
        if arg not in config.args and not any(p.is_relative_to(root) for p in inside):
            config.args.append(arg)  # as typed: pytest's "not found" error then names it so


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = config.stash.get(_SETTINGS, None)
    if settings is None or not settings.active:
        return None
    backends = ",".join(settings.backends) if settings.backends else "all available"
    return (f"attnspec: seed {settings.seed}, device {settings.device}, dtype {settings.dtype}, "
            f"backends: {backends} (reproduce with --attnspec-seed {settings.seed})")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".attn":
        return None
    settings = parent.config.stash.get(_SETTINGS, None)
    if settings is None or not settings.active or not settings.wants(file_path):
        return None
    return SpecFile.from_parent(parent, path=file_path)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A refused check is reported at the attention's line in the spec, not at the line of
    this plugin that skipped it (what `-rs` shows)."""
    outcome = yield
    report = outcome.get_result()
    if isinstance(item, CheckItem) and report.skipped and isinstance(report.longrepr, tuple):
        path, line, _ = item.reportinfo()
        report.longrepr = (os.fspath(path), line + 1, report.longrepr[2])


# --- collection --------------------------------------------------------------------------------
class SpecFile(pytest.File):
    """One `.attn` file: an `Attention` collector per attention, or one failing `build` item."""

    def collect(self):
        import attnspec
        from attnspec.compiler import build, read_spec
        from attnspec.errors import AttnSpecError, Source

        shown = _relative(self.path, self.config.invocation_params.dir)
        try:
            source = read_spec(self.path)
            source = Source(shown, source.text)  # diagnostics name the path as typed
            found: list = []  # warning diagnostics
            module_ir = build(source, found)
        except AttnSpecError as e:
            text = str(AttnSpecError(e.diagnostics, Source(shown, e.source.text)
                                     if e.source else None))
            yield ErrorItem.from_parent(self, name="build", message=text)
            return
        for warning in found:
            self.warn(AttnSpecWarning(warning.format(source)))
        try:
            # named relative to the working directory: UNSUPPORTED's reasons quote the path
            module = attnspec.load(Path(_relative(self.path, Path.cwd())))
        except Exception as e:  # noqa: BLE001 — a compiler bug: report it on its item
            yield ErrorItem.from_parent(self, name="build",
                                        message=f"{shown}: {type(e).__name__}: {e}")
            return
        for attn in module_ir.attentions:
            yield Attention.from_parent(self, name=attn.name, attn=attn,
                                        module_cls=getattr(module, attn.name),
                                        spec=shown)


class Attention(pytest.Collector):
    """One attention of a spec: an item per backend x case."""

    def __init__(self, *, attn, module_cls, spec: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.attn, self.module_cls, self.spec = attn, module_cls, spec

    def collect(self):
        from attnspec.verify import cases_for, default_backends

        settings = self.config.stash[_SETTINGS]
        backends = settings.backends or default_backends(self.module_cls, settings.device)
        for backend in backends:
            if backend != "auto" and backend not in self.module_cls.BACKENDS:
                yield self._unsupported(backend)
                continue
            for index, case in enumerate(cases_for(self.attn, settings.device)):
                item = CheckItem.from_parent(self, name=f"{backend}[{case.name}]",
                                             backend=backend, case=case, index=index)
                item.add_marker("attnspec")
                item.add_marker(backend)
                yield item

    def _unsupported(self, backend: str) -> pytest.Item:
        """A backend asked for by name that cannot run this spec: one skipped item saying why."""
        reasons = "; ".join(self.module_cls.UNSUPPORTED.get(backend, ["not generated"]))
        item = ErrorItem.from_parent(self, name=backend, message="",
                                     line=self.attn.span.line - 1)
        item.add_marker("attnspec")
        item.add_marker(backend)
        item.add_marker(pytest.mark.skip(reason=f"{self.attn.name}: backend {backend!r} cannot "
                                         f"run this spec: {reasons}"))
        return item


# --- items -------------------------------------------------------------------------------------
class CheckFailed(Exception):
    """A check's result exceeded the tolerance; carries the `attnspec.verify.Result`."""

    def __init__(self, result) -> None:
        super().__init__(result.detail)
        self.result = result


class CheckItem(pytest.Item):
    """One attention x backend x case, compared against the interpreter on fresh inputs."""

    def __init__(self, *, backend: str, case, index: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backend, self.case, self.index = backend, case, index

    @property
    def seed(self) -> int:
        # `attnspec verify --seed S` gives case i the seed S + i: the same inputs as here
        return self.config.stash[_SETTINGS].seed + self.index

    def runtest(self) -> None:
        from attnspec.errors import UnsupportedInputError
        from attnspec.verify import DTYPES, check_case

        settings = self.config.stash[_SETTINGS]
        attention = self.parent
        try:
            with warnings.catch_warnings():
                # flex runs uncompiled on CPU by design (docs/backends.md): torch's advice to
                # compile it would otherwise land in every run's warnings summary
                warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
                result = check_case(attention.attn, attention.module_cls, self.backend,
                                    self.case, DTYPES[settings.dtype], settings.device,
                                    self.seed, attention.spec)
        except UnsupportedInputError as e:  # a documented refusal, not a wrong result
            pytest.skip(" ".join(line.strip() for line in str(e).splitlines()))
        if not result.ok:
            raise CheckFailed(result)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CheckFailed):
            return self._failure_text(excinfo.value.result)
        if style is None and self.config.getoption("tbstyle", "auto") == "auto":
            style = "short"  # a crash: where it happened, without every tensor's values
        _from_generated_code(excinfo)
        return super().repr_failure(excinfo, style)

    def _failure_text(self, result) -> str:
        """First line: the summary pytest shows in `-r` lines and JUnit; then the details."""
        settings = self.config.stash[_SETTINGS]
        spec, case = self.parent.spec, self.case
        detail = result.detail or "no detail"
        return "\n".join([
            f"{result.attention} {self.backend}[{case.name}]: {result.worst_tensor} differs from "
            f"the eager interpreter: ratio {result.worst_ratio:.3g} > 1 ({detail})",
            f"  spec:         {spec}, attention {result.attention}, backend {self.backend}",
            f"  case:         {case.name}: batch {case.batch}, q_len {case.q_len}, kv_len "
            f"{case.kv_len}; {settings.dtype} on {settings.device}; input seed {self.seed} "
            f"(--attnspec-seed {settings.seed} + case {self.index})",
            f"  worst tensor: {result.worst_tensor} (of the output and every gradient): {detail}, "
            f"ratio {result.worst_ratio:.3g}",
            "  rule:         |got - ref| <= 2 * |eager_t - ref| + atol(dtype) * scale, ref in "
            "float64 (docs/verification.md)",
            f"  reproduce:    attnspec verify {spec} --backend {self.backend} "
            f"--dtype {settings.dtype} --device {settings.device} --seed {settings.seed}",
        ])

    def reportinfo(self):
        line = self.parent.attn.span.line - 1  # 0-based: the attention's line in the spec
        return self.path, line, f"{self.parent.name}::{self.name}"


def _from_generated_code(excinfo) -> None:
    """Start a crash's traceback at the generated module (the harness's frames above it are
    the same for every check); one that never reached it keeps every frame."""
    entries = list(excinfo.traceback)
    first = next((i for i, e in enumerate(entries) if str(e.path).startswith("<attnspec:")), 0)
    excinfo.traceback = type(excinfo.traceback)(entries[first:])


class ErrorItem(pytest.Item):
    """An item that fails with a ready-made message (a spec that does not build), or that a
    skip marker skips (a backend that cannot run the spec)."""

    def __init__(self, *, message: str, line: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.message, self.line = message, line  # `line` 0-based, as `reportinfo` wants

    def runtest(self) -> None:
        raise SpecError(self.message)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, SpecError):
            return str(excinfo.value)  # the diagnostics with carets, no traceback
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        # a line is required: pytest reports marker skips at the item's location; the domain
        # (the failure's heading) must not end the node id: pytest would rewrite its dots
        return self.path, self.line, f"{self.name} ({_relative(self.path, Path.cwd())})"


class SpecError(Exception):
    """A spec that cannot be verified; the message is the full report."""


def _relative(path: Path, base: Path) -> str:
    """`path` relative to `base` (as a user would type it) when inside it, else absolute."""
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel
