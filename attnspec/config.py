"""`[tool.attnspec]` in pyproject.toml: project defaults for the command line.

The table is looked up from the spec's directory (or the working directory for standard input)
upwards: the nearest pyproject.toml that has a `[tool.attnspec]` table wins, as ruff finds
`[tool.ruff]`. Command-line flags override it.

```toml
[tool.attnspec]
backend = "flex"            # compile: the module's default backend
dtype = "bf16"              # verify and bench
output-format = "concise"   # check
ignore = ["W401"]           # warnings not reported
error = ["W201"]            # warnings reported as errors (the spec fails to build)
```

An unknown key, or a value of the wrong kind, is a configuration error naming the file, the line
and, where one is close, the key meant.

Example:
    >>> config = parse_config('[tool.attnspec]\\nignore = ["W401"]\\n', "pyproject.toml")
    >>> config.ignore
    frozenset({'W401'})
    >>> try:
    ...     parse_config('[tool.attnspec]\\nbackned = "flex"\\n', "pyproject.toml")
    ... except ConfigError as e:
    ...     print(e)
    pyproject.toml:2: unknown key `backned` in [tool.attnspec]; did you mean `backend`?
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attnspec.errors import Diagnostic, did_you_mean
from attnspec.rules import RULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with tomli (a dependency there only)
    import tomli as tomllib

FILE_NAME = "pyproject.toml"
# The spellings `verify --dtype` and `bench --dtype` take (attnspec.verify.DTYPES, without
# importing torch here).
DTYPE_NAMES = ("float64", "float32", "bfloat16", "bf16", "float16", "fp16")
OUTPUT_FORMATS = ("full", "concise", "github", "json")


class ConfigError(ValueError):
    """A bad `[tool.attnspec]` table: the message starts with `FILE:LINE:` (or `FILE:`)."""


@dataclass(frozen=True)
class Config:
    """The `[tool.attnspec]` settings; every field None (or empty) when not set."""

    backend: str | None = None
    dtype: str | None = None
    output_format: str | None = None
    ignore: frozenset[str] = frozenset()
    error: frozenset[str] = frozenset()
    path: str | None = None  # the pyproject.toml it came from

    def apply(self, warnings: list[Diagnostic]) -> list[Diagnostic]:
        """`warnings` without the ignored codes, promoted codes turned into errors.

        >>> from attnspec.errors import Span
        >>> w = Diagnostic("warning", "input `x` is never used", Span(1, 1, 1, 2), code="W401")
        >>> Config(error=frozenset({"W401"})).apply([w])[0].label
        'error[W401]'
        >>> Config(ignore=frozenset({"W401"})).apply([w])
        []
        """
        kept = [d for d in warnings if d.code not in self.ignore]
        return [dataclasses.replace(d, severity="error") if d.code in self.error else d
                for d in kept]


def _backends() -> tuple[str, ...]:
    from attnspec.backends import CHOICES

    return tuple(CHOICES)


def _one_of(choices) -> Callable[[object], str | None]:
    def check(value) -> str | None:
        options = choices() if callable(choices) else choices
        if value in options:
            return None
        hint = did_you_mean(str(value), options) if isinstance(value, str) else None
        return f"must be one of {', '.join(options)}, got {value!r}" + (f"; {hint}" if hint
                                                                          else "")
    return check


def _warning_codes(value) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"must be a list of warning codes such as [\"W401\"], got {value!r}"
    for code in value:
        if code not in RULES:
            hint = did_you_mean(code.upper(), RULES)
            return f"unknown code {code!r}" + (f"; {hint}" if hint else
                                               " (`attnspec rule` lists them)")
        if RULES[code].severity != "warning":
            return f"{code} is an error: only warnings (W codes) can be ignored or promoted"
    return None


# key -> (Config field, check(value) -> problem or None)
KEYS = {
    "backend": ("backend", _one_of(_backends)),
    "dtype": ("dtype", _one_of(DTYPE_NAMES)),
    "output-format": ("output_format", _one_of(OUTPUT_FORMATS)),
    "ignore": ("ignore", _warning_codes),
    "error": ("error", _warning_codes),
}


def parse_config(text: str, path: str = FILE_NAME) -> Config | None:
    """The `[tool.attnspec]` table of pyproject text, or None when it has none. Invalid TOML is
    an error only in a file that mentions `tool.attnspec`: another project's broken
    pyproject.toml above the spec is none of attnspec's business."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        if "attnspec" not in text:
            return None
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    table = data.get("tool", {}).get("attnspec")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: `tool.attnspec` must be a table")
    values: dict = {"path": path}
    for key, value in table.items():
        where = f"{path}:{_line_of(text, key)}" if _line_of(text, key) else path
        if key not in KEYS:
            hint = did_you_mean(key, KEYS)
            raise ConfigError(f"{where}: unknown key `{key}` in [tool.attnspec]" +
                              (f"; {hint}" if hint else f"; keys: {', '.join(KEYS)}"))
        field, check = KEYS[key]
        problem = check(value)
        if problem is not None:
            raise ConfigError(f"{where}: [tool.attnspec] {key} {problem}")
        values[field] = frozenset(value) if isinstance(value, list) else value
    return Config(**values)


def _line_of(text: str, key: str) -> int | None:
    """The line setting `key` inside `[tool.attnspec]` (cheap, by text: a key set some other way,
    e.g. as a dotted key elsewhere, is named without a line)."""
    inside = False
    pattern = re.compile(rf"""^\s*(["']?){re.escape(key)}\1\s*=""")
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped.replace(" ", "") == "[tool.attnspec]"
        elif inside and pattern.match(line):
            return number
    return None


def find_config(start: Path | str | None = None) -> Config:
    """The config of the nearest pyproject.toml with a `[tool.attnspec]` table, looking from
    `start` (a file or a directory; default the working directory) upwards; an empty Config
    when there is none."""
    here = Path(start) if start is not None else Path.cwd()
    here = here.resolve()
    if not here.is_dir():
        here = here.parent
    for directory in (here, *here.parents):
        candidate = directory / FILE_NAME
        if candidate.is_file():
            config = parse_config(_read(candidate), str(candidate))
            if config is not None:
                return config
    return Config()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
