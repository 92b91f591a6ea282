"""The registry of diagnostic codes: every error and warning the compiler reports carries one.

A code is a letter and three digits, like ruff's and rustc's: `E` an error, `W` a warning; the
first digit is the stage that finds it, so codes of one stage sort together and a new code never
renumbers an old one:

| digits | stage |
|---|---|
| 0xx | reading the file (`compiler.read_spec`) |
| 1xx | syntax (`grammar/parser.py`) |
| 2xx | names and declarations (`ir/build.py`, `ir/expr_builder.py`) |
| 3xx | types and expressions (`ir/build.py`, `ir/expr_builder.py`) |
| 4xx | values, ranges and layout, once settings are known (`ir/check.py`) |
| 5xx | tools that read a built spec (`mup_check.py`) |

Each code also has a short kebab-case name (`E201 unknown-name`), used in `--explain` and the
documentation table (docs/diagnostics.md, which a test keeps equal to this registry). Codes are
stable: a retired code is never reused.

Example:
    >>> RULES["E201"].name
    'unknown-name'
    >>> print(explain("W401"))
    W401 unused-input (warning): an input that no expression or position encoding reads
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CODE = re.compile(r"^[EW]\d{3}$")


@dataclass(frozen=True)
class Rule:
    """One diagnostic code: `code` (`E201`), `name` (`unknown-name`), a one-line `summary`."""

    code: str
    name: str
    summary: str

    @property
    def severity(self) -> str:
        """`error` for E codes, `warning` for W codes (before any `[tool.attnspec]` promotion)."""
        return "error" if self.code.startswith("E") else "warning"


_TABLE = [
    # 0xx reading the file
    ("E001", "file-not-found", "the spec file does not exist"),
    ("E002", "unreadable-file", "the path cannot be read: not a regular file, no permission, a "
     "NUL byte in the path"),
    ("E003", "file-too-large", "the file is larger than a spec may be (4 MiB)"),
    ("E004", "not-utf8", "the file is not UTF-8 text"),
    ("E005", "binary-file", "the file holds NUL bytes: it is not a spec"),
    # 1xx syntax
    ("E101", "unexpected-token", "the parser met a token where the grammar allows none of its "
     "kind (or the file ended early)"),
    ("E102", "unexpected-character", "a character that starts no token of the language"),
    ("E103", "unclosed-bracket", "a `(` or `[` that is never closed"),
    ("E104", "python-operator", "Python's spelling of an operator: `and`, `or`, `not`, `**`, or "
     "`=` for `==`"),
    ("E105", "unknown-statement", "a statement starting with a misspelt keyword (`maks causal`)"),
    ("E106", "nested-too-deeply", "brackets or an expression nested past the limit (also after "
     "macro expansion)"),
    ("E107", "literal-too-large", "an integer literal too large for any kernel"),
    # 2xx names and declarations
    ("E201", "unknown-name", "a name in an expression that is not an index, size, setting, "
     "input, param, group or `let`"),
    ("E202", "unknown-function", "a call of a function that is neither a builtin nor a `let`"),
    ("E203", "unknown-group", "a token group that the `tokens` block does not declare"),
    ("E204", "unknown-setting", "a setting (or `mup` setting) the language does not have"),
    ("E205", "unknown-argument", "a keyword argument the callee does not take, or one given "
     "twice"),
    ("E206", "unknown-kind", "an unknown input type, initialiser or position encoding"),
    ("E207", "duplicate-definition", "a `let`, attention, setting, declaration, group or block "
     "defined more than once"),
    ("E208", "reserved-name", "a name that is a keyword, a builtin, attnspec's own, or cannot "
     "become a Python identifier"),
    ("E209", "missing-setting", "a required setting is absent (`heads`, `mup`'s `base_dim`, "
     "`learned`'s `max_len`)"),
    ("E210", "recursive-definition", "settings or `let` macros that depend on themselves"),
    ("W201", "shadowed-stdlib", "a `let` that hides a standard-library definition of the same "
     "name"),
    ("W202", "no-attention", "a file with no `attention` block"),
    # 3xx types and expressions
    ("E301", "type-mismatch", "a value of the wrong type: a non-bool mask, a bool bias, operands "
     "an operator cannot combine, a non-int index"),
    ("E302", "wrong-arity", "a call (builtin, `let`, initialiser) with the wrong number or kind "
     "of arguments"),
    ("E303", "not-constant", "a value that must be known at compile time is not"),
    ("E304", "misused-name", "a name used as something it is not: `score` outside `score =`, an "
     "input not indexed, a field that does not exist"),
    ("E305", "float-for-int", "a fractional number where a whole number is needed"),
    ("E306", "division-by-zero", "a constant division or modulo by zero"),
    ("E307", "expression-too-large", "an expression too large after `let` expansion"),
    ("E308", "invalid-setting-value", "a setting of the wrong kind: not one of its choices, not "
     "`true`/`false`, not a number"),
    # 4xx values, ranges and layout
    ("E401", "out-of-range", "a setting, size or argument outside the values it may take"),
    ("E402", "needs-layer-mode", "a feature that needs layer mode (`dim`) or cannot be used in "
     "this mode"),
    ("E403", "pattern-coverage", "a token group that is a query in no pattern, or in more than "
     "one"),
    ("E404", "unsafe-index", "an index that can leave its dimension: out-of-range reads are "
     "undefined"),
    ("E405", "int32-overflow", "an integer expression that may overflow the kernels' int32"),
    ("E406", "bad-shape", "a declared type or shape that does not fit its use: a param with a "
     "sequence dimension, a rope input of the wrong rank"),
    ("E407", "cannot-decode", "what a decoding attention (a `kv_cache` input) cannot hold yet: "
     "cross-attention, absolute positions, token groups, per-position inputs, `q_len`/`kv_len`, "
     "rope `positions`/`freqs`"),
    ("W401", "unused-input", "an input that no expression or position encoding reads"),
    # 5xx tools
    ("E501", "no-mup-block", "`mup-check` on an attention without a `mup` block"),
]

RULES: dict[str, Rule] = {code: Rule(code, name, summary) for code, name, summary in _TABLE}
BY_NAME: dict[str, Rule] = {rule.name: rule for rule in RULES.values()}


def lookup(code_or_name: str) -> Rule | None:
    """The rule of a code (`E201`, any case) or a kebab name (`unknown-name`), or None.

    >>> lookup("e201").name, lookup("unused-input").code
    ('unknown-name', 'W401')
    """
    text = code_or_name.strip()
    return RULES.get(text.upper()) or BY_NAME.get(text.lower())


def explain(code_or_name: str) -> str | None:
    """`CODE name (severity): summary` for `attnspec rule`, or None for an unknown code."""
    rule = lookup(code_or_name)
    if rule is None:
        return None
    return f"{rule.code} {rule.name} ({rule.severity}): {rule.summary}"


def markdown_table() -> str:
    """The registry as the Markdown table of docs/diagnostics.md (a test keeps them equal)."""
    rows = ["| code | name | severity | meaning |", "|---|---|---|---|"]
    rows += [f"| {r.code} | {r.name} | {r.severity} | {r.summary} |" for r in RULES.values()]
    return "\n".join(rows)
