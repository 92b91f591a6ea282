"""The TextMate grammar in editors/ (docs: editors/README.md): valid JSON, every regex in the
subset Python's `re` shares with Oniguruma, names in sync with the language, and a tokenizer
simulation over every shipped spec that must scope each keyword, number and comment as the
real lexer (attnspec's Lark lexer) sees them.

The simulation is TextMate's rule for a flat list of single-line `match` rules: at each position
the rule whose match starts first wins, ties go to the rule listed first.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest

from attnspec.grammar.parser import _parser
from attnspec.ir import scope

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "editors" / "attnspec.tmLanguage.json"
VSCODE = ROOT / "editors" / "vscode"
SPECS = sorted((ROOT / "specs").rglob("*.attn")) + [ROOT / "attnspec" / "stdlib.attn"]

# Expected scope prefix of every keyword token: statement and declaration keywords are
# `keyword.*`; the literal keywords are constants.
KEYWORD_SCOPES = {
    **{w: "keyword.declaration" for w in ("attention", "let", "input", "param")},
    **{w: "keyword.other" for w in ("tokens", "pattern", "mask", "bias", "score", "mup",
                                    "position")},
    "in": "keyword.operator.in",
    "true": "constant.language.boolean",
    "false": "constant.language.boolean",
    "inf": "constant.numeric.infinity",
}
NUMBER_SCOPES = {"INT": "constant.numeric.integer", "FLOAT": "constant.numeric.float"}


@cache
def grammar() -> dict:
    return json.loads(GRAMMAR.read_text())


def rules() -> list[tuple[re.Pattern, dict]]:
    """The top-level rules in order, includes expanded: (compiled regex, rule)."""
    out: list[tuple[re.Pattern, dict]] = []

    def add(rule: dict) -> None:
        if "include" in rule:
            add(grammar()["repository"][rule["include"].lstrip("#")])
        elif "patterns" in rule:
            for r in rule["patterns"]:
                add(r)
        else:
            out.append((re.compile(rule["match"]), rule))

    for rule in grammar()["patterns"]:
        add(rule)
    return out


def tokenize_line(line: str) -> list[tuple[int, int, str]]:
    """(start, end, scope) of every scoped span of one line."""
    spans, pos, compiled = [], 0, rules()
    while pos < len(line):
        best = None
        for regex, rule in compiled:
            m = regex.search(line, pos)
            if m and (best is None or m.start() < best[0].start()):
                best = (m, rule)
        if best is None:
            break
        m, rule = best
        if "name" in rule:
            spans.append((m.start(), m.end(), rule["name"]))
        for group, cap in rule.get("captures", {}).items():
            if m.group(int(group)) is not None:
                spans.append((m.start(int(group)), m.end(int(group)), cap["name"]))
        pos = max(m.end(), pos + 1)
    return spans


def scopes_at(spans, start: int, end: int) -> list[str]:
    """The scopes of the spans that cover exactly [start, end) (a rule's name, a capture)."""
    return [s for a, b, s in spans if a == start and b == end]


def all_regexes(node) -> list[str]:
    if isinstance(node, dict):
        found = [node[key] for key in ("match", "begin", "end") if key in node]
        return found + [r for value in node.values() for r in all_regexes(value)]
    if isinstance(node, list):
        return [r for value in node for r in all_regexes(value)]
    return []


# --- the file ----------------------------------------------------------------------------------
def test_grammar_header():
    g = grammar()
    assert g["scopeName"] == "source.attn" and g["fileTypes"] == ["attn"]


def test_every_regex_compiles_in_python_re():
    regexes = all_regexes(grammar())
    assert len(regexes) > 20
    for r in regexes:
        re.compile(r)
        # constructs Oniguruma reads differently from Python (or not at all): keep them out
        assert not re.search(r"\(\?<[A-Za-z]|\\[AZzGhHK]|\(\?[imsx-]+\)|\\p\{", r), r


def test_vscode_extension_ships_the_same_grammar():
    package = json.loads((VSCODE / "package.json").read_text())
    path = package["contributes"]["grammars"][0]["path"]
    assert (VSCODE / path).read_text() == GRAMMAR.read_text()
    assert package["contributes"]["grammars"][0]["scopeName"] == "source.attn"
    assert package["contributes"]["languages"][0]["extensions"] == [".attn"]
    config = json.loads((VSCODE / "language-configuration.json").read_text())
    assert config["comments"]["lineComment"] == "#"
    assert ["{", "}"] in config["brackets"] and ["(", ")"] in config["brackets"]


# --- names in sync with the language ----------------------------------------------------------
def words(rule_name: str) -> set[str]:
    rule = grammar()["repository"][rule_name]
    text = " ".join(all_regexes(rule))
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)) - {"b", "s", "A", "Za", "z0", "z"}


def stdlib_names() -> set[str]:
    text = (ROOT / "attnspec" / "stdlib.attn").read_text()
    return {n for n in re.findall(r"^let\s+([A-Za-z_]\w*)", text, re.M) if not n.startswith("_")}


@pytest.mark.parametrize("rule, expected", [
    ("keyword", scope.KEYWORDS - {"true", "false", "inf"}),
    ("literal", {"true", "false", "inf"}),
    ("setting", set(scope.ALL_SETTINGS) | set(scope.ALL_MUP_SETTINGS)),
    ("builtin", set(scope.BUILTINS)),
    ("stdlib", stdlib_names() | set(scope.INTRINSIC_MACROS)),
    ("init", set(scope.INIT_KINDS)),
    ("position", set(scope.POSITION_KINDS) | {"position"}),
])
def test_grammar_lists_every_name_of_the_language(rule, expected):
    assert expected <= words(rule), sorted(expected - words(rule))


# --- the tokenizer simulation over every shipped spec ----------------------------------------
def lexer_tokens(text: str):
    """attnspec's own lexer: keyword, number and name tokens with 1-based line/column."""
    return [t for t in _parser().lex(text) if t.type != "_SEP"]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_spec_keywords_numbers_and_comments(path):
    text = path.read_text()
    lines = text.split("\n")
    spans = [tokenize_line(line) for line in lines]
    checked = 0
    for tok in lexer_tokens(text):
        want = KEYWORD_SCOPES.get(tok.value) if tok.type == tok.value.upper() else None
        want = want or NUMBER_SCOPES.get(tok.type)
        if want is None:
            continue
        line, col = tok.line - 1, tok.column - 1
        got = scopes_at(spans[line], col, col + len(tok.value))
        assert any(s.startswith(want) for s in got), f"{path.name}:{tok.line}:{tok.column} " \
            f"{tok.value!r}: {got} (want {want}.*)"
        checked += 1
    assert checked > 0
    for n, line in enumerate(lines):
        if "#" in line:  # no strings in the language: `#` always starts a comment
            start = line.index("#")
            got = scopes_at(spans[n], start, len(line))
            assert "comment.line.number-sign.attn" in got, f"{path.name}:{n + 1}: {got}"


def test_declarations_and_fields_get_their_scopes():
    spans = tokenize_line("attention Foo { mask same(doc) & k < prefix.end }")
    line = "attention Foo { mask same(doc) & k < prefix.end }"

    def scope_of(word: str) -> str:
        start = line.index(word)
        return " ".join(scopes_at(spans, start, start + len(word)))

    assert scope_of("Foo").startswith("entity.name.type")
    assert scope_of("same").startswith("support.function.stdlib")
    assert scope_of("end").startswith("variable.other.property")
    assert scope_of("prefix").startswith("variable.other.object")
    let = tokenize_line("let band(lo, hi = 4) = q - k >= lo   # a comment")
    assert let[1][2].startswith("entity.name.function")
    assert let[-2][2].startswith("comment") and let[-1][2].startswith("punctuation.definition")
