"""One test per diagnostic class: the line, column, message and hint of each error.

Each case is a spec with one mistake, written as data (the einops/sqlglot habit)."""

from __future__ import annotations

import pytest

import attnspec
from attnspec.errors import AttnSpecError

HEAD = "attention A {\n  heads = 4\n  head_dim = 8\n"  # lines 1-3


def spec(*lines: str) -> str:
    return HEAD + "".join(f"  {line}\n" for line in lines) + "}\n"


# (id, text, line, col, message fragment, hint fragment or None)
CASES = [
    ("syntax-token", spec("mask q >= "), 4, 13, "unexpected end of line", "expected"),
    ("syntax-char", spec("mask q >= k $"), 4, 15, "unexpected character `$`", None),
    ("syntax-eof", "attention A {\n  heads = 4\n", 2, 12, "unexpected end of file", "`}`"),
    ("let-keyword", "let mask = 1\n" + spec(), 1, 5, "`mask` is a keyword", None),
    ("keyword-as-name", spec("input mask: int[batch]", "bias mask[b]"), 4, 3,
     "`mask` is a keyword", None),
    ("unknown-name", spec("mask caual"), 4, 8, "unknown name `caual`", "`causal`"),
    ("unknown-function", spec("mask slidng_window(4)"), 4, 8, "unknown function",
     "`sliding_window`"),
    ("macro-arity", spec("mask sliding_window(1, 2)"), 4, 8,
     "`sliding_window` takes 1 argument(s), got 2", "sliding_window(w)"),
    ("macro-missing-arg", spec("mask window(3)"), 4, 8, "`window` takes 2 argument(s)",
     "missing right"),
    ("macro-keyword", spec("mask window(3, rigth = 2)"), 4, 18, "unknown argument `rigth`",
     "`right`"),
    ("builtin-arity", spec("bias clamp(q, 0)"), 4, 8, "`clamp` takes 3 arguments", None),
    ("unknown-setting", spec("haeds = 4"), 4, 3, "unknown setting `haeds`", "`heads`"),
    ("duplicate-setting", spec("heads = 8"), 4, 3, "setting `heads` is set twice", "line 2"),
    ("missing-heads", "attention A {\n  head_dim = 8\n}\n", 1, 11, "needs `heads = N`", None),
    ("missing-head-dim", "attention A {\n  heads = 8\n}\n", 1, 11, "needs `head_dim = N`",
     None),
    ("mask-not-bool", spec("mask q - k"), 4, 8, "a mask must be bool, got int", "compare"),
    ("bias-bool", spec("bias q >= k"), 4, 8, "a bias must be a number, got bool", "mask"),
    ("bool-arithmetic", spec("bias (q >= k) + 1"), 4, 8, "`+` cannot combine bool and int",
     "where"),
    ("and-on-ints", spec("mask q & k"), 4, 8, "`&` cannot combine int and int", "compare"),
    ("score-outside", spec("bias score"), 4, 8, "`score` is only defined inside", "bias"),
    ("recursion", "let f(x) = f(x)\n" + spec("mask f(1)").replace("attention", "attention", 1),
     1, 12, "recursive macro: f -> f", None),
    ("unknown-group", spec("tokens { a: 4 }", "pattern a -> b"), 5, 16,
     "unknown token group `b`", None),
    ("group-not-query", spec("tokens { a: 4; b: 4 }", "pattern a -> a, b"), 4, 18,
     "group `b` is not a query in any pattern", "exactly one"),
    ("group-two-patterns", spec("tokens { a: 4 }", "pattern a -> a", "pattern a -> a"), 6, 3,
     "group `a` is a query in more than one pattern", "line 5"),
    ("python-keyword", HEAD.replace("attention A", "attention class") + "}\n", 1, 11,
     "`class` is a Python keyword", None),
    ("dunder-name", spec("input __init__: int[batch]", "mask k < __init__[b]"), 4, 3,
     "starts with `__`", None),
    ("reserved-name", spec("input self: int[batch]", "mask k < self[b]"), 4, 3,
     "reserved by the generated module", None),
    ("index-range", spec("param t: float[heads, 4] = zeros", "bias t[h, k]"), 5, 13,
     "index `k` may be out of range 0..3: it grows with the sequence length", "clamp"),
    ("seq-index", spec("input d: int[batch, seq]", "mask d[b, k + 1] == 0"), 5, 13,
     "a `seq` dimension is indexed with q or k", None),
    ("int32-overflow", spec("mask q * k > 0"), 4, 8, "may overflow int32", "2^24"),
    ("kv-heads-divide", spec("kv_heads = 3"), 4, 3, "kv_heads = 3 must divide heads = 4", None),
    ("layer-only", spec("position sinusoidal"), 4, 3, "needs layer mode", "`dim = N`"),
    ("mup-kernel", spec("mup { base_dim = 4 }"), 4, 3, "`mup` needs layer mode", None),
    ("unknown-field", spec("tokens { a: 4 }", "mask q < a.strat"), 5, 14,
     "`a` has no field `strat`", "`start`"),
    ("not-indexed", spec("input d: int[batch, seq]", "mask d == 0"), 5, 8,
     "`d` must be indexed", "d[b, q]"),
    ("index-count", spec("input d: int[batch, seq]", "mask d[b] == 0"), 5, 8,
     "`d` has 2 dimension(s), indexed with 1", None),
    ("division-by-zero", spec("mask q // 0 == 1"), 4, 13, "division by zero", None),
    ("huge-literal", spec("mask q < 99999999999999999999"), 4, 12, "too large", None),
    ("rope-dims", spec("position rope(dims = 3)"), 4, 3, "rope dims must be even", None),
    ("duplicate-input", spec("input d: int[batch]", "input d: int[batch]"), 5, 9,
     "input `d` is declared twice", "line 4"),
    ("unknown-init", spec("param t: float[heads] = zeroes"), 4, 27, "unknown initialiser",
     "`zeros`"),
    ("edges-args", spec("input g: edges(typs = 2)"), 4, 18, "unknown argument `typs`",
     "`types`"),
    ("enum-setting", spec("qk_norm = rsm"), 4, 13, "`qk_norm` must be one of none, rms",
     "`rms`"),
    ("group-value", spec("tokens { a: 4 }", "mask q < a"), 5, 12, "group `a` is not a value",
     "q in a"),
]


@pytest.mark.parametrize("text, line, col, message, hint", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_diagnostic(text, line, col, message, hint):
    assert_diagnostic(text, line, col, message, hint)


def assert_diagnostic(text: str, line: int, col: int, message: str, hint: str | None) -> None:
    """`text` fails to build with an error containing `message` at (line, col) whose hint
    contains `hint` (None: any hint)."""
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(text)
    found = [d for d in info.value.errors if message in d.message]
    assert found, f"no error containing {message!r} in:\n{info.value}"
    d = found[0]
    assert (d.span.line, d.span.col) == (line, col), str(info.value)
    if hint is not None:
        assert d.hint and hint in d.hint, str(info.value)


def test_every_error_is_reported_at_once():
    text = spec("mask caual", "bias q >= k", "haeds = 2")
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(text)
    assert len(info.value.errors) == 3


def test_formatted_report_has_source_line_and_caret():
    with pytest.raises(AttnSpecError) as info:
        attnspec.build(spec("mask caual"))
    lines = str(info.value).splitlines()
    assert lines[0] == "<spec>:4:8: error[E201]: unknown name `caual`"
    assert lines[1].strip() == "mask caual"
    assert lines[2] == "  " + " " * 7 + "^^^^^"
    assert lines[3] == "  hint: did you mean `causal`?"


def test_shadowing_the_standard_library_warns():
    module = attnspec.build("let causal = q > k\n" + spec("mask causal"))
    assert module.attentions[0].masks[0].op == ">"


def test_deep_nesting_is_an_error_not_a_crash():
    with pytest.raises(AttnSpecError, match="nested deeper"):
        attnspec.build(spec("mask " + "(" * 5000 + "q > k" + ")" * 5000))


def test_exponential_macro_expansion_is_bounded():
    lets = "let m0 = q\n" + "".join(f"let m{i} = m{i-1} + m{i-1}\n" for i in range(1, 40))
    with pytest.raises(AttnSpecError, match="nodes after macro expansion"):
        attnspec.build(lets + spec("mask m39 > 0"))
