"""Diagnostics that name the likely cause, as rustc, ruff and mypy do: a mistyped keyword, a
Python habit, an unclosed bracket, a float where an integer is needed, ranges in user terms,
follow-on errors after their cause and a summary that counts diagnostics.

Each case is a spec with one mistake: (id, text, line, col, message fragment, hint fragment)."""

from __future__ import annotations

import pytest
from test_diagnostics import assert_diagnostic

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
    # 4. a float where a whole number is needed (it used to act as its floor, silently)
    ("float-window", spec("mask sliding_window(0.5)"), 4, 23,
     "`sliding_window` needs a whole number for `w`, got `0.5`", "whole number"),
    ("float-keyword-arg", spec("mask window(1, right = 1.5)"), 4, 26,
     "needs a whole number for `right`", "whole number"),
    ("float-stride", spec("mask strided(2.0)"), 4, 16, "whole number for `s`", None),
    ("float-division", spec("mask prefix_lm(q_len / 2)"), 4, 18, "got a true division", "`//`"),
    ("float-through-let", "let W = 2.5\n" + spec("mask local(W)"), 5, 14,
     "got `W`, which is `2.5`", None),
    ("float-user-let", "let win(x) = k >= q - x\n" + spec("mask win(0.5)"), 5, 12,
     "`win` needs a whole number for `x`", None),
    ("float-passed-on", "let win(x) = sliding_window(x)\n" + spec("mask win(0.5)"), 5, 12,
     "`win` needs a whole number for `x`", None),
    ("float-heads", spec("kv_heads = 2.5"), 4, 3, "`kv_heads` must be an integer", None),
    ("float-dimension", spec("param t: float[heads, 2.5] = zeros"), 4, 25,
     "a dimension must be an integer", None),
    # 5. ranges in the user's terms: the expression written and what it can reach
    ("range-small", spec("param t: float[heads, 4] = zeros", "bias t[h, q % 8]"), 5, 13,
     "index `q % 8` may be out of range 0..3: it can reach 7", "clamp"),
    ("range-sequence", spec("param t: float[heads, 4] = zeros", "bias t[h, k - q]"), 5, 13,
     "index `k - q` may be out of range 0..3: it can be negative and it grows with the "
     "sequence length", None),
    ("range-call-time", spec("input d: int[batch, seq]", "param t: float[heads, 4] = zeros",
                             "bias t[h, d[b, q]]"), 6, 13, "only known at call time", None),
    ("range-int32", spec("mask q * k > 0"), 4, 8,
     "`q * k` may overflow int32: it can reach about 2^48, past int32's ±2^31", "2^24"),
]


@pytest.mark.parametrize("text, line, col, message, hint", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_diagnostic(text, line, col, message, hint):
    assert_diagnostic(text, line, col, message, hint)


def test_ranges_never_print_the_checkers_internal_bounds():
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(spec("param t: float[heads, 4] = zeros", "bias t[h, k - q]",
                            "mask q * k > 0"))
    report = str(info.value)
    assert "16777215" not in report and "281474943156225" not in report, report
    assert "range is" not in report, report


def test_a_bad_dimension_has_no_follow_on_range_error():
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(spec("bias t5(buckets = 8.5)"))
    assert [d.message for d in info.value.errors] == [
        "dimension must be a positive integer, got 8.5"], str(info.value)


@pytest.mark.parametrize("line", ["bias softcap(q - k, 2.5)", "mask k < q_len / 2",
                                  "mask sliding_window(q_len // 2)"])
def test_floats_where_floats_are_meant_are_accepted(line):
    attnspec.build(spec(line))


@pytest.mark.parametrize("text", [spec("scale 2"), spec("mask f(a b)")], ids=["setting", "args"])
def test_generic_syntax_message_stays_where_no_cause_is_known(text):
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(text)
    assert info.value.errors[0].message.startswith("unexpected"), str(info.value)


def test_a_keyword_typo_is_underlined_whole():
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(spec("pattren a -> b"))
    lines = str(info.value).splitlines()
    assert lines[0] == "<spec>:4:3: error[E105]: unknown statement `pattren`"
    assert lines[2] == "    ^^^^^^^"
    assert lines[3] == "  hint: did you mean `pattern`?"


# 6. follow-on errors after their cause; the summary counts diagnostics
def test_a_missing_setting_follows_its_misspelling():
    text = "attention A {\n  haeds = 4\n  head_dim = 8\n}\n"
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(text)
    messages = [d.message for d in info.value.errors]
    assert messages == ["unknown setting `haeds`", "attention `A` needs `heads = N`"], messages
    follow_on = info.value.errors[1]
    assert (follow_on.span.line, follow_on.span.col) == (1, 11)  # still at the attention's name
    assert follow_on.hint == "line 2 sets `haeds`: did you mean `heads`?"


def test_check_summary_counts_errors_and_warnings(tmp_path, capsys):
    from attnspec.cli import main

    (tmp_path / "a.attn").write_text(spec("mask caual", "bias q >= k"))
    (tmp_path / "b.attn").write_text(spec("input d: int[batch]", "mask causal"))  # d unused
    (tmp_path / "c.attn").write_text(spec("mask causal"))
    assert main(["check", str(tmp_path)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "found 2 errors and 1 warning in 2 files (checked 3 files)"


def test_check_summary_of_a_clean_file(tmp_path, capsys):
    from attnspec.cli import main

    (tmp_path / "b.attn").write_text(spec("mask causal"))
    assert main(["check", str(tmp_path / "b.attn")]) == 0
    assert capsys.readouterr().err.strip() == "no errors or warnings (checked 1 file)"
