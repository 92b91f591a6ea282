"""Several syntax errors in one file are all reported, one per broken statement, without the
follow-on errors a careless resumption would add (attnspec.grammar.recovery)."""

from __future__ import annotations

import pytest

from attnspec.errors import AttnSpecError
from attnspec.grammar.parser import MAX_SYNTAX_ERRORS, parse


def _errors(text: str) -> list[tuple[int, str]]:
    with pytest.raises(AttnSpecError) as info:
        parse(text)
    return [(d.span.line, d.code) for d in info.value.diagnostics]


def test_two_independent_errors():
    text = "attention A {\n heads = 2\n maks causal\n bias alibi\n mask q = k\n}\n"
    assert _errors(text) == [(3, "E105"), (5, "E104")]


def test_three_independent_errors():
    text = ("attention A {\n  heads = 2\n  maks causal\n  mask q <<< k\n  bias alibi and 3\n"
            "  head_dim = 8\n}\n")
    assert _errors(text) == [(3, "E105"), (4, "E101"), (5, "E104")]


def test_an_unclosed_bracket_is_one_error_and_the_next_statement_is_still_checked():
    text = "attention A {\n heads = 2\n mask (causal &\n   k < 3\n bias alibi\n mask q == == k\n}\n"
    assert _errors(text) == [(3, "E103"), (6, "E101")]


def test_a_statement_continued_on_the_next_line_is_one_error():
    # The tutorial's mistake: the second line is the first's continuation, not a second error.
    text = "attention A {\n mask causal &\n   & k < 3\n heads = 2 +\n}\n"
    assert _errors(text) == [(2, "E101"), (4, "E101")]


def test_a_misspelt_block_header_still_checks_the_body():
    text = "attentoin A {\n heads = 2\n mask causal\n mask q = k\n}\nattention B {\n heads 1\n}\n"
    assert _errors(text) == [(1, "E105"), (4, "E104"), (7, "E101")]


def test_a_misspelt_inner_block_is_skipped_whole():
    text = "attention A {\n heads = 2\n tokns {\n  a: 3\n  b: 4\n }\n mask q = k\n}\n"
    assert _errors(text) == [(3, "E105"), (7, "E104")]


def test_the_count_is_capped():
    body = "".join(f" mask q = = {i}\n" for i in range(MAX_SYNTAX_ERRORS + 5))
    assert len(_errors("attention A {\n" + body + "}\n")) == MAX_SYNTAX_ERRORS


def test_a_missing_closing_brace_is_reported_once():
    assert _errors("attention A {\n heads = 2\n mask causal\n") == [(3, "E101")]
