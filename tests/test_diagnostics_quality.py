"""Diagnostics that name the likely cause, as rustc, ruff and mypy do: a mistyped keyword, a
Python habit, an unclosed bracket, a float where an integer is needed, ranges in user terms,
follow-on errors after their cause and a summary that counts diagnostics.

Each case is a spec with one mistake: (id, text, line, col, message fragment, hint fragment)."""

from __future__ import annotations

import pytest

import attnspec
from attnspec.errors import AttnSpecError

HEAD = "attention A {\n  heads = 4\n  head_dim = 8\n"  # lines 1-3


def spec(*lines: str) -> str:
    return HEAD + "".join(f"  {line}\n" for line in lines) + "}\n"


CASES = [
    # 1. a mistyped statement keyword: the caret on the word itself, with a did-you-mean
    ("typo-mask", spec("maks causal"), 4, 3, "unknown statement `maks`", "`mask`?"),
    ("typo-pattern", spec("tokens { a: 4 }", "pattren a -> a"), 5, 3,
     "unknown statement `pattren`", "`pattern`?"),
    ("typo-bias", spec("biass alibi"), 4, 3, "unknown statement `biass`", "`bias`?"),
    ("typo-attention", "attentoin A {\n  heads = 4\n}\n", 1, 1, "unknown statement",
     "`attention`?"),
    # 2. Python habits
    ("python-and", spec("mask causal and k < 4"), 4, 15, "`and` is not an operator", "`&`"),
    ("python-or", spec("mask causal or k < 4"), 4, 15, "`or` is not an operator", "`|`"),
    ("python-not", spec("mask not causal"), 4, 8, "`not` is not an operator", "`!`"),
    ("python-assign", spec("mask q = k"), 4, 10, "`=` inside an expression", "`==`"),
    ("python-power", spec("bias (q - k) ** 2"), 4, 16, "no `**` (power) operator", "x * x"),
    ("python-true", spec("mask True"), 4, 8, "unknown name `True`", "`true`"),
    ("python-false", spec("bias where(False, 1, 0)"), 4, 14, "unknown name `False`", "`false`"),
    # 3. an unclosed bracket, at the bracket
    ("unclosed-paren", spec("mask (q >= k"), 4, 8, "unclosed `(`", "line 5, column 1"),
    ("unclosed-call", spec("mask sliding_window(4", "bias alibi"), 4, 22, "unclosed `(`",
     "line 5"),
    ("unclosed-index", spec("input d: int[batch, seq]", "mask d[b, q == 0"), 5, 9,
     "unclosed `[`", "`]`"),
]


@pytest.mark.parametrize("text, line, col, message, hint", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_diagnostic(text, line, col, message, hint):
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(text)
    found = [d for d in info.value.errors if message in d.message]
    assert found, f"no error containing {message!r} in:\n{info.value}"
    d = found[0]
    assert (d.span.line, d.span.col) == (line, col), str(info.value)
    assert d.hint and hint in d.hint, str(info.value)


@pytest.mark.parametrize("text", [spec("scale 2"), spec("mask f(a b)")], ids=["setting", "args"])
def test_generic_syntax_message_stays_where_no_cause_is_known(text):
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(text)
    assert info.value.errors[0].message.startswith("unexpected"), str(info.value)


def test_a_keyword_typo_is_underlined_whole():
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(spec("pattren a -> b"))
    lines = str(info.value).splitlines()
    assert lines[0] == "<spec>:4:3: error: unknown statement `pattren`"
    assert lines[2] == "    ^^^^^^^"
    assert lines[3] == "  hint: did you mean `pattern`?"
