"""Parse `.attn` text into the AST (`attnspec.grammar.ast`).

Example:
    >>> f = parse("attention A {\\n heads = 2\\n mask causal\\n}", "a.attn")
    >>> f.attentions[0].name
    'A'
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import lark
from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from attnspec.cache import cache_dir, open_trusted, write_private
from attnspec.errors import AttnSpecError, Diagnostic, Source, Span, did_you_mean
from attnspec.grammar import ast
from attnspec.grammar.recovery import blank_statement
from attnspec.ir.scope import ALL_MUP_SETTINGS, ALL_SETTINGS, KEYWORDS

MAX_NESTING = 200  # brackets deeper than this are an error, long before Python's recursion limit
# Expressions deeper than this are an error (here, and after macro expansion in the builder):
# generated Python nests about one bracket per level, and Python's parser stops at 200.
MAX_DEPTH = 100
# Longer integer literals are an error here: int() refuses more than 4300 digits, and the
# builder rejects anything past 2^53 anyway.
MAX_INT_DIGITS = 100


_TOKEN_NAMES = {
    "_SEP": "end of statement", "NAME": "a name", "INT": "an integer", "FLOAT": "a number",
    "CMP_OP": "a comparison", "ADD_OP": "`+` or `-`", "MUL_OP": "`*`, `/`, `//` or `%`",
    "$END": "end of file",
}


class _BracketFilter:
    """Post-lexer: drops newlines inside ( ) and [ ] and bounds bracket nesting."""

    always_accept = ("_SEP",)

    def process(self, stream):
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
                if depth > MAX_NESTING:
                    raise _TooDeep(tok)
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            if tok.type == "_SEP" and depth > 0 and ";" not in tok.value:
                continue
            if tok.type == "INT" and _digits(tok) > MAX_INT_DIGITS:
                raise _TooLong(tok)
            yield tok


class _TooDeep(Exception):
    def __init__(self, token: Token):
        self.token = token


class _TooLong(_TooDeep):
    """An integer literal of more than MAX_INT_DIGITS digits."""


def _digits(token: Token) -> int:
    return len(token.value) - token.value.count("_")


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    """The LALR parser. Building its tables takes ~0.2 s, so they are cached in attnspec's cache
    directory (keyed by the grammar, the options and Lark's version); without a trusted cache
    directory they are built each time."""
    grammar = (Path(__file__).parent / "attnspec.lark").read_text()
    options = dict(parser="lalr", propagate_positions=True, maybe_placeholders=False)
    path = _cache_file(grammar, options)
    cached = _load_cached(path) if path is not None else None
    if cached is not None:
        return cached
    built = Lark(grammar, postlex=_BracketFilter(), **options)
    if path is not None:
        write_private(path, built.save)
    return built


def _load_cached(path: str) -> Lark | None:
    """The parser saved at `path`, or None. Lark's tables are a pickle: only a file that
    `open_trusted` accepts (this user's, writable by no one else) is read. Attnspec saves and
    loads them itself rather than through Lark's `cache=` option, which would unpickle
    whatever file lies at the path."""
    f = open_trusted(path)
    if f is None:
        return None
    with f:
        try:
            return Lark.load(f)
        except Exception:  # noqa: BLE001 — a stale or corrupt cache only costs time
            return None


def _cache_file(grammar: str, options: dict) -> str | None:
    """The parser's cache file in `cache_dir()`, or None without a trusted one."""
    root = cache_dir()
    if root is None:
        return None
    key = f"{lark.__version__}\n{sorted(options.items())}\n{_BracketFilter.__qualname__}\n{grammar}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(root, f"grammar-{digest}.lark-cache")


def _span(meta_or_token) -> Span:
    m = meta_or_token
    if getattr(m, "empty", False):
        return Span(1, 1, 1, 2)
    return Span(m.line, m.column, m.end_line, m.end_column)


def _number(text: str) -> int | float:
    text = text.replace("_", "")
    return float(text) if any(c in text for c in ".eE") else int(text)


@v_args(meta=True, inline=True)
class _ToAst(Transformer_NonRecursive):
    """Builds AST nodes; method names are the grammar's rule and alias names. Non-recursive:
    a long chain such as `q + q + ... + q` is as deep as it is long."""

    # --- atoms
    def int_lit(self, meta, tok):
        return ast.Num(_number(tok), _span(tok))

    def float_lit(self, meta, tok):
        return ast.Num(_number(tok), _span(tok))

    def true_lit(self, meta):
        return ast.Bool(True, _span(meta))

    def false_lit(self, meta):
        return ast.Bool(False, _span(meta))

    def inf_lit(self, meta):
        return ast.Num(float("inf"), _span(meta))

    def score_ref(self, meta):
        return ast.ScoreRef(_span(meta))

    def name(self, meta, tok):
        return ast.Name(str(tok), _span(tok))

    # --- operators
    def or_(self, meta, left, right):
        return ast.Binary("|", left, right, _span(meta))

    def and_(self, meta, left, right):
        return ast.Binary("&", left, right, _span(meta))

    def compare(self, meta, left, op, right):
        return ast.Binary(str(op), left, right, _span(meta))

    def binary(self, meta, left, op, right):
        return ast.Binary(str(op), left, right, _span(meta))

    def in_group(self, meta, operand, group):
        return ast.InGroup(operand, str(group), _span(group), _span(meta))

    def neg(self, meta, operand):
        return ast.Unary("-", operand, _span(meta))

    def not_(self, meta, operand):
        return ast.Unary("!", operand, _span(meta))

    def index(self, meta, target, *indices):
        return ast.Index(target, tuple(indices), _span(meta))

    def field(self, meta, target, name):
        return ast.Field(target, str(name), _span(name), _span(meta))

    def call(self, meta, func, *args):
        return ast.Call(str(func), _span(func), tuple(args), _span(meta))

    def positional_arg(self, meta, value):
        return ast.Arg(None, value, _span(meta))

    def keyword_arg(self, meta, name, value):
        return ast.Arg(str(name), value, _span(meta))

    # --- statements
    def setting(self, meta, name, value):
        return ast.Setting(str(name), value, _span(meta), _span(name))

    def group_size(self, meta, tok):
        return None if tok.type == "STAR" else _number(tok)

    def group_decl(self, meta, name, size):
        return ast.GroupDecl(str(name), size, _span(name))

    def tokens(self, meta, *groups):
        return ast.Tokens(tuple(groups), _span(meta))

    def name_list(self, meta, *names):
        return tuple(ast.NameRef(str(n), _span(n)) for n in names)

    def pattern(self, meta, queries, keys):
        return ast.Pattern(queries, keys, _span(meta))

    def tensor_type(self, meta, base, *dims):
        return ast.TensorType(str(base), tuple(dims), _span(meta))

    def call_type(self, meta, base, *args):
        return ast.CallType(str(base), tuple(args), _span(meta))

    def input_decl(self, meta, name, type_):
        return ast.InputDecl(str(name), type_, _span(meta), _span(name))

    def param_decl(self, meta, name, type_, init):
        return ast.ParamDecl(str(name), type_, init, _span(meta), _span(name))

    def mask(self, meta, expr):
        return ast.Mask(expr, _span(meta))

    def bias(self, meta, expr):
        return ast.Bias(expr, _span(meta))

    def score_assign(self, meta, expr):
        return ast.ScoreAssign(expr, _span(meta))

    def position(self, meta, kind, *args):
        return ast.Position(str(kind), tuple(args), _span(meta), _span(kind))

    def mup(self, meta, *settings):
        return ast.Mup(tuple(settings), _span(meta))

    def attention(self, meta, name, *body):
        return ast.Attention(str(name), tuple(body), _span(meta), _span(name))

    def let_param(self, meta, name, default=None):
        return ast.LetParam(str(name), default, _span(name))

    def let_params(self, meta, *params):
        return tuple(params)

    def let_def(self, meta, name, *rest):
        params, body = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
        return ast.Let(str(name), params, body, _span(meta), _span(name))

    def start(self, meta, *items):
        return tuple(items)


# Syntax errors reported per file at most; after an error the parser resumes at the next
# statement (attnspec.grammar.recovery), so the count is one per broken statement.
MAX_SYNTAX_ERRORS = 20


def parse(text: str, source_name: str = "<spec>") -> ast.File:
    """Parse spec text; raises `AttnSpecError` with every syntax diagnostic on bad input (one
    per broken statement, at most MAX_SYNTAX_ERRORS)."""
    source = Source(source_name, text)
    try:
        tree = _parse_tree(text, source)
        deepest = _too_deep(tree)
        if deepest is not None:  # checked before building the AST: that costs more than parsing
            raise AttnSpecError([Diagnostic(
                "error", f"expression nested deeper than {MAX_DEPTH} levels", deepest,
                hint="each operator, call and index is a level", code="E106")], source)
        items = _ToAst().transform(tree)
    except _TooLong as e:
        raise _error(source, "E107", f"integer literal of {_digits(e.token)} digits is too "
                     "large", e.token) from None
    except _TooDeep as e:
        raise _error(source, "E106", f"brackets nested deeper than {MAX_NESTING}",
                     e.token) from None
    except RecursionError:  # not expected: the LALR parser and the transformer are iterative
        raise AttnSpecError([Diagnostic("error", "expression nested too deeply",
                                         code="E106")], source) from None
    return ast.File(tuple(items), source_name)


def _parse_tree(text: str, source: Source) -> lark.Tree:
    """The parse tree, or AttnSpecError with the syntax errors of every broken statement: after
    each, the statement is blanked out and the text parsed again, until it parses, the error
    makes no progress (an error at the end of the file) or MAX_SYNTAX_ERRORS are found."""
    found: list[Diagnostic] = []
    current, last = text, -1
    while True:
        try:
            tree = _parser().parse(current)
        except UnexpectedInput as e:
            found.append(_syntax_diagnostic(e, current))
            offset = _error_offset(e)
            if offset is None or offset <= last or len(found) >= MAX_SYNTAX_ERRORS:
                break
            current, last = blank_statement(current, offset), offset
            continue
        except _TooDeep:
            if not found:
                raise
            break  # the errors before it stand; this one is reported once they are fixed
        if not found:
            return tree
        break
    raise AttnSpecError(_distinct(found), source)


def _error_offset(e: UnexpectedInput) -> int | None:
    """Where in the text the parser stopped, or None at the end of the file."""
    token = getattr(e, "token", None)
    if token is not None:
        return None if token.type == "$END" else getattr(token, "start_pos", None)
    return getattr(e, "pos_in_stream", None)


def _distinct(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    """Each diagnostic once (two broken statements can name one unclosed bracket)."""
    return list(dict.fromkeys(diagnostics))


# The grammar's rules and aliases that become one AST expression node each.
_EXPRESSION_RULES = frozenset("int_lit float_lit true_lit false_lit inf_lit score_ref name or_ "
                              "and_ in_group compare binary neg not_ index field call".split())


def _too_deep(tree: lark.Tree) -> Span | None:
    """Where an expression first nests deeper than MAX_DEPTH, or None. Iterative, since the
    passes after parsing recurse once per level and must not meet a deeper tree."""
    stack = [(tree, 0)]
    while stack:
        node, level = stack.pop()
        if node.data in _EXPRESSION_RULES:
            level += 1
            if level > MAX_DEPTH:
                return _span(node.meta)
        stack.extend((child, level) for child in node.children if isinstance(child, lark.Tree))
    return None


def _error(source: Source, code: str, message: str, token: Token) -> AttnSpecError:
    return AttnSpecError([Diagnostic("error", message, _span(token), code=code)], source)


def _syntax_diagnostic(e: UnexpectedInput, text: str = "") -> Diagnostic:
    line, col = max(1, getattr(e, "line", 1) or 1), max(1, getattr(e, "column", 1) or 1)
    if isinstance(e, UnexpectedCharacters):
        char = e.char if e.char.isprintable() else repr(e.char)
        return Diagnostic("error", f"unexpected character `{char}`", Span.point(line, col),
                          code="E102")
    tok = e.token if isinstance(e, UnexpectedToken) else None
    expected = sorted({_TOKEN_NAMES.get(t, _literal(t)) for t in getattr(e, "expected", ())})
    # The generic message names the token where the parser stopped; a likelier cause (an unclosed
    # bracket, a mistyped keyword, a Python habit) usually lies at or before it.
    targeted = _targeted_diagnostic(tok, expected, text)
    if targeted is not None:
        return targeted
    if isinstance(e, UnexpectedEOF):
        return Diagnostic("error", "unexpected end of file", Span.point(line, col),
                          hint="a `}` or `)` may be missing", code="E101")
    what = _describe(tok)
    span = _span(tok) if tok is not None and getattr(tok, "line", None) else Span.point(line, col)
    return Diagnostic("error", f"unexpected {what}", span, hint=_expected_hint(tok, expected),
                      code="E101")


# Words that begin a statement inside `attention { }`, and at the top level of a file.
_STATEMENT_KEYWORDS = ("tokens", "pattern", "input", "param", "mask", "bias", "score",
                       "position", "mup")
_TOP_KEYWORDS = ("let", "attention")
# Python's spelling of an operator or literal, and the language's.
_PYTHON_WORDS = {"and": "&", "or": "|", "not": "!"}
_NOT_AT_END = re.compile(r"(?<![A-Za-z0-9_])not$")


def _targeted_diagnostic(tok: Token | None, expected: list[str], text: str) -> Diagnostic | None:
    """A diagnostic naming the likely cause of a syntax error, or None for the generic one."""
    if tok is None or not text:
        return None
    lines = text.split("\n")
    for rule in (_unclosed_bracket, _python_operator, _mistyped_keyword):
        found = rule(tok, expected, lines)
        if found is not None:
            return found
    return None


def _token_position(tok: Token, lines: list[str]) -> tuple[int, int] | None:
    """(line, column) of `tok`, 1-based; the end of the text for the end-of-file token."""
    if getattr(tok, "line", None):
        return tok.line, tok.column
    if tok.type == "$END":
        return len(lines), len(lines[-1]) + 1
    return None


def _before(tok: Token, lines: list[str]) -> str:
    """The text of `tok`'s line before it."""
    pos = _token_position(tok, lines)
    return lines[pos[0] - 1][:pos[1] - 1] if pos else ""


def _unclosed_bracket(tok: Token, expected: list[str], lines: list[str]) -> Diagnostic | None:
    """An unclosed `(` or `[`: newlines inside brackets are dropped, so the parser only stops at
    the `}`, the end of the file or the next statement, often lines later. Report the opener."""
    if not ("`)`" in expected or "`]`" in expected):
        return None
    pos = _token_position(tok, lines)
    if pos is None:
        return None
    opener = _open_bracket_before(lines, *pos)
    if opener is None:
        return None
    starts_line = not _before(tok, lines).strip()
    if not (tok.type in ("RBRACE", "$END") or (starts_line and pos[0] > opener[0])):
        return None  # a bad token inside the brackets: the generic message is the right one
    char = lines[opener[0] - 1][opener[1] - 1]
    closer = ")" if char == "(" else "]"
    return Diagnostic("error", f"unclosed `{char}`", Span.point(*opener),
                      hint=f"add a `{closer}`; the parser gave up at line {pos[0]}, column "
                      f"{pos[1]} ({_describe(tok)})", code="E103")


def _open_bracket_before(lines: list[str], line: int, col: int) -> tuple[int, int] | None:
    """The innermost `(` or `[` still open at (line, col), skipping comments (the language has
    no string literals, so a `#` always starts one)."""
    stack: list[tuple[int, int]] = []
    for number, text in enumerate(lines[:line], start=1):
        end = col - 1 if number == line else len(text)
        for index, char in enumerate(text[:end]):
            if char == "#":
                break
            if char in "([":
                stack.append((number, index + 1))
            elif char in ")]" and stack:
                stack.pop()
    return stack[-1] if stack else None


def _python_operator(tok: Token, expected: list[str], lines: list[str]) -> Diagnostic | None:
    """`and`/`or`/`not`, `=` for `==` and `**`, which Python users type by habit."""
    if tok.type == "NAME" and tok.value in ("and", "or"):
        return _python_word(tok.value, _span(tok))
    before = _before(tok, lines).rstrip()
    if _NOT_AT_END.search(before):  # `not x` reads as the name `not` and then an unexpected x
        line = _token_position(tok, lines)[0]
        return _python_word("not", Span(line, len(before) - 2, line, len(before) + 1))
    if tok.type == "EQUAL" and "a comparison" in expected:
        return Diagnostic("error", "`=` inside an expression", _span(tok),
                          hint="compare with `==`; `=` only sets a setting or a default",
                          code="E104")
    if tok.type in ("STAR", "MUL_OP") and tok.value == "*" and _before(tok, lines).endswith("*"):
        start = tok.column - 1
        return Diagnostic("error", "there is no `**` (power) operator",
                          Span(tok.line, start, tok.line, start + 2),
                          hint="multiply (`x * x`), or use `exp2`/`exp` and `log2`/`log`",
                          code="E104")
    return None


def _python_word(word: str, span: Span) -> Diagnostic:
    symbol = _PYTHON_WORDS[word]
    return Diagnostic("error", f"`{word}` is not an operator in attnspec", span,
                      hint=f"write `{symbol}` for {word}, e.g. `causal {symbol} k < 64`"
                      if word != "not" else "write `!` for not, e.g. `!causal`", code="E104")


def _mistyped_keyword(tok: Token, expected: list[str], lines: list[str]) -> Diagnostic | None:
    """`maks causal`: the first word is no keyword, so the parser read a setting and stopped at
    the second word (or, at the top level, at the first). Report a word close to a keyword."""
    before = _before(tok, lines)
    words = before.split()
    if "`=`" in expected and len(words) == 1 and before.rstrip().endswith(words[0]):
        word, line, start = words[0], tok.line, before.index(words[0]) + 1
    elif tok.type == "NAME" and not words:
        word, line, start = tok.value, tok.line, tok.column
    else:
        return None
    if word in KEYWORDS or word in ALL_SETTINGS or word in ALL_MUP_SETTINGS:
        return None  # a setting missing its `=`: the generic message says so
    hint = did_you_mean(word, _STATEMENT_KEYWORDS + _TOP_KEYWORDS)
    if hint is None:
        return None
    return Diagnostic("error", f"unknown statement `{word}`",
                      Span(line, start, line, start + len(word)), hint=hint, code="E105")


def _describe(tok: Token | None) -> str:
    if tok is None or tok.type == "$END":
        return "end of file"
    if tok.type == "_SEP":
        return "end of line" if "\n" in tok.value else "`;`"
    if tok.type == "NAME":
        return f"name `{tok.value}`"
    return f"`{tok.value}`"


def _literal(terminal: str) -> str:
    """A grammar terminal as the user would type it: `(` rather than LPAR."""
    for t in _parser().terminals:
        if t.name == terminal and t.pattern.type == "str":
            return f"`{t.pattern.value}`"
    return terminal.lower()


def _expected_hint(tok: Token | None, expected: list[str]) -> str | None:
    if tok is not None and tok.type == "NAME" and tok.value in KEYWORDS:
        return f"`{tok.value}` is a keyword"
    if not expected:
        return None
    closers = [c for c in ("`}`", "`)`", "`]`") if c in expected]
    if tok is not None and tok.type == "$END" and closers:
        return f"a {closers[0]} may be missing"
    shown = ", ".join(expected[:6]) + (", …" if len(expected) > 6 else "")
    return f"expected {shown}"
