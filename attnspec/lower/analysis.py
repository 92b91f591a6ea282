"""Analysis: recognise the canonical structure of an attention's mask and score pipeline.

Lowering needs to know *what* a mask is (a band, documents, padding, ...) to pick a kernel, but
users write masks any way they like. Recognition here is **by form, not by macro name**: every
mask is cut into conjuncts (the AND of all `mask` statements, `&` flattened, `!(a | b)` split
by De Morgan) and each conjunct is matched against linear forms in `q` and `k`:

| item | meaning | example forms |
|---|---|---|
| `Band(lo, hi, align)` | `lo <= k - q - shift <= hi` | `q >= k`, `!(k > q)`, `abs(q - k) <= w` |
| `Segment(input)` | `x[b, q] == x[b, k]` | `same(doc)`, `doc[b, k] == doc[b, q]` |
| `KeyPadding(input)` | `v[b, k]` | `key_valid(valid)` |
| `KeyLength(input)` | `k < n[b]` | `n[b] > k`, `k <= n[b] - 1` |
| `PrefixOrBand(prefix, band)` | `k < prefix \\| band` | `prefix_lm(64)`, `k < p[b] \\| causal` |
| `Patterns(groups, rules)` | the token-group predicate | `pattern a, b -> a` |
| `Other(expr)` | anything else, kept as IR | `strided(64)`, `random_links(3, 1)`, `graph.edge` |

`shift` is 0 for `align="top_left"` and `kv_len - q_len` for `"bottom_right"` (flash-attn's
alignment, stdlib `causal_bottom_right`). Band offsets are `int` when the spec wrote literals
and a constant IR expression over settings otherwise (`sliding_window(head_dim)` gives
`lo = -head_dim`), because settings may be overridden per module instance and must not be frozen.
All band conjuncts of one alignment are merged into one band (their intersection; symbolic
offsets merge through `max`/`min` calls). Recognition never changes the meaning: anything not
matched exactly stays an `Other` conjunct, and the tests compare every recognised structure
with the eager interpreter.

The score pipeline is classified step by step, in order: `Bias` (`alibi`, `table`, `general`),
`Softcap`, `Gate`, `OtherScore`. `score = score + e` counts as a bias. This module is pure IR
work: it imports no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Literal

from attnspec.ir import nodes as ir
from attnspec.ir.exprs import COMPARISON, free_vars, is_constant
from attnspec.ir.printer import expr_text

__all__ = [
    "Analysis", "Band", "Segment", "KeyPadding", "KeyLength", "PrefixOrBand", "Patterns", "Other",
    "Bias", "Softcap", "Gate", "OtherScore", "MaskItem", "ScoreItem", "Offset", "analyze",
]

Offset = int | ir.Expr  # a literal, or a constant int expression over settings
Align = Literal["top_left", "bottom_right"]

# `a op b` is `b MIRROR[op] a`, and `-a op -b` is `a MIRROR[op] b`.
_MIRROR = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
# `!(a op b)` is `a NEGATE[op] b` (exact for the integer forms recognised here: no NaN).
_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_OTHER_TEXT_LIMIT = 80


def _span_field():
    # Spans point diagnostics at the statement responsible; they never take part in equality.
    return field(default=None, compare=False, repr=False)


# --- mask items --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Band:
    """`lo <= k - q - shift <= hi` (None = unbounded), `shift` 0 for top-left alignment and
    `kv_len - q_len` for bottom-right. Causal (top-left) is `Band(None, 0)`; flash-attn's
    `window_size=(l, r)` is `Band(-l, r)`; `sliding_window(w)` is `Band(-w, 0)`."""

    lo: Offset | None
    hi: Offset | None
    align: Align = "top_left"
    span: ir.SpanIR | None = _span_field()

    @property
    def is_causal(self) -> bool:
        return self.lo is None and _is_zero(self.hi)

    @property
    def left(self) -> Offset | None:
        """flash-attn's left window (keys before the diagonal), None when unbounded."""
        return None if self.lo is None else _negate(self.lo, self.span)

    @property
    def right(self) -> Offset | None:
        """flash-attn's right window (keys after the diagonal), None when unbounded."""
        return self.hi

    def describe(self) -> str:
        parts = [_bound_text(self.lo, self.align), "k - q", _bound_text(self.hi, self.align)]
        text = " <= ".join(p for p in parts if p is not None)
        name = _band_name(self)
        where = self.align.replace("_", "-")
        return f"band {text} ({where}{'; ' + name if name else ''})"


@dataclass(frozen=True)
class Segment:
    """`input[b, q] == input[b, k]`: documents / segments (`input` is int[batch, seq])."""

    input: str
    span: ir.SpanIR | None = _span_field()

    def describe(self) -> str:
        return f"segments equal ({self.input})"


@dataclass(frozen=True)
class KeyPadding:
    """`input[b, k]`: a boolean key mask (`input` is bool[batch, seq] or bool[batch, kv_seq])."""

    input: str
    span: ir.SpanIR | None = _span_field()

    def describe(self) -> str:
        return f"key padding ({self.input}[b, k])"


@dataclass(frozen=True)
class KeyLength:
    """`k < input[b]`: per-sequence key lengths (`input` is int[batch])."""

    input: str
    span: ir.SpanIR | None = _span_field()

    def describe(self) -> str:
        return f"key length k < {self.input}[b]"


@dataclass(frozen=True)
class PrefixOrBand:
    """`k < prefix | band`: prefix-LM. `prefix` is an int, a constant expression, or the
    `InputRef` `p[b]` of an int[batch] input (see `prefix_input`)."""

    prefix: Offset
    band: Band
    span: ir.SpanIR | None = _span_field()

    @property
    def prefix_input(self) -> str | None:
        """The input read for a per-example prefix, None for a constant one."""
        return self.prefix.name if isinstance(self.prefix, ir.InputRef) else None

    def describe(self) -> str:
        return f"prefix k < {_offset_text(self.prefix)} or {self.band.describe()}"


@dataclass(frozen=True)
class Patterns:
    """The token-group predicate: OR over rules of (q in any of queries) & (k in any of keys).
    `groups` are (name, size) in sequence order, size None for `*`."""

    groups: tuple[tuple[str, int | None], ...]
    rules: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]

    def describe(self) -> str:
        rules = "; ".join(f"{', '.join(q)} -> {', '.join(k)}" for q, k in self.rules)
        return f"token-group patterns over {len(self.groups)} groups ({rules})"


@dataclass(frozen=True)
class Other:
    """A conjunct with no canonical form, kept as IR; `reads_batch` / `reads_head` say whether
    it varies with `b` / `h` (a BlockMask for it then needs real B / H)."""

    expr: ir.Expr
    reads_batch: bool
    reads_head: bool
    span: ir.SpanIR | None = _span_field()

    @classmethod
    def of(cls, expr: ir.Expr) -> Other:
        names = free_vars(expr)
        return cls(expr, "b" in names, "h" in names, span=expr.span)

    def describe(self) -> str:
        reads = [n for n, on in (("b", self.reads_batch), ("h", self.reads_head)) if on]
        suffix = f" (reads {', '.join(reads)})" if reads else ""
        return f"other {_short(expr_text(self.expr))}{suffix}"


MaskItem = Band | Segment | KeyPadding | KeyLength | PrefixOrBand | Patterns | Other


# --- score items -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bias:
    """`score += expr`. `kind`: "alibi" (exactly `scale * alibi_slope(h) * |q - k|`; the stdlib
    and flash-attn form has `scale == -1.0`), "table" (a param/input lookup such as t5's
    `t5_bias[h, t5_bucket(...)]`, `table` names it) or "general"."""

    kind: Literal["alibi", "table", "general"]
    expr: ir.Expr
    scale: float | None = None
    table: str | None = None
    span: ir.SpanIR | None = _span_field()

    def describe(self) -> str:
        if self.kind == "alibi":
            return f"bias alibi {self.scale:g} * alibi_slope(h) * |q - k|"
        return f"bias {self.kind} {_short(expr_text(self.expr))}"


@dataclass(frozen=True)
class Softcap:
    """`score = cap * tanh(score / cap)`. A literal cap is stored as its absolute value (the
    form is even in cap); a symbolic one as the constant expression."""

    cap: float | ir.Expr
    span: ir.SpanIR | None = _span_field()

    def describe(self) -> str:
        return f"softcap {_offset_text(self.cap)}"


@dataclass(frozen=True)
class Gate:
    """`score = score * expr` where `expr` does not read the score."""

    expr: ir.Expr
    span: ir.SpanIR | None = _span_field()

    def describe(self) -> str:
        return f"gate score * {_short(expr_text(self.expr))}"


@dataclass(frozen=True)
class OtherScore:
    """Any other `score = expr`."""

    expr: ir.Expr
    span: ir.SpanIR | None = _span_field()

    def describe(self) -> str:
        return f"score = {_short(expr_text(self.expr))}"


ScoreItem = Bias | Softcap | Gate | OtherScore


# --- the result --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Analysis:
    """The recognised structure of one attention. `mask` is the list of conjuncts whose AND is
    the whole mask (patterns included); `score` the pipeline steps in order. A lowering must
    account for every mask item; the properties below are conveniences over them. At most one
    `Band` and one `PrefixOrBand` appear (extra ones stay `Other`), so `band` and `prefix` are
    never ambiguous."""

    attention: str
    mask: tuple[MaskItem, ...]
    score: tuple[ScoreItem, ...]

    def _items(self, kind) -> tuple:
        return tuple(i for i in self.mask if isinstance(i, kind))

    @property
    def mask_kind(self) -> Literal["none", "causal", "structured", "general"]:
        if not self.mask:
            return "none"
        if len(self.mask) == 1 and isinstance(self.mask[0], Band) and self.mask[0].is_causal:
            return "causal"
        return "general" if self.other else "structured"

    @property
    def is_causal_top_left(self) -> bool:
        """The whole mask is exactly `q >= k` (SDPA `is_causal`, FlexAttention's causal)."""
        return self.mask_kind == "causal" and self.mask[0].align == "top_left"

    @property
    def is_causal_bottom_right(self) -> bool:
        """The whole mask is exactly `k <= q + kv_len - q_len` (flash-attn's causal)."""
        return self.mask_kind == "causal" and self.mask[0].align == "bottom_right"

    @property
    def band(self) -> Band | None:
        return next(iter(self._items(Band)), None)

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self._items(Segment)

    @property
    def key_padding(self) -> tuple[KeyPadding, ...]:
        return self._items(KeyPadding)

    @property
    def key_lengths(self) -> tuple[KeyLength, ...]:
        return self._items(KeyLength)

    @property
    def prefix(self) -> PrefixOrBand | None:
        return next(iter(self._items(PrefixOrBand)), None)

    @property
    def other(self) -> tuple[Other, ...]:
        return self._items(Other)

    @property
    def patterns(self) -> Patterns | None:
        return next(iter(self._items(Patterns)), None)

    @property
    def biases(self) -> tuple[Bias, ...]:
        return tuple(s for s in self.score if isinstance(s, Bias))

    @property
    def softcap(self) -> float | ir.Expr | None:
        """The cap of the pipeline's only softcap step; None when there is none or several."""
        caps = [s.cap for s in self.score if isinstance(s, Softcap)]
        return caps[0] if len(caps) == 1 else None

    @property
    def reads_batch(self) -> bool:
        """Whether the mask varies with `b` (a BlockMask then needs the real batch size)."""
        return any(_item_reads_batch(i) for i in self.mask)

    @property
    def reads_head(self) -> bool:
        """Whether the mask varies with `h` (a BlockMask then needs the real head count)."""
        return any(isinstance(i, Other) and i.reads_head for i in self.mask)

    @property
    def score_is_identity(self) -> bool:
        return not self.score

    def describe(self) -> list[str]:
        """One line per fact, for `attnspec explain`."""
        lines = [f"mask: {i.describe()}" for i in self.mask] or ["mask: none (full attention)"]
        return lines + [f"score: {s.describe()}" for s in self.score]


def _item_reads_batch(item: MaskItem) -> bool:
    if isinstance(item, (Segment, KeyPadding, KeyLength)):
        return True
    if isinstance(item, PrefixOrBand):
        return item.prefix_input is not None
    return isinstance(item, Other) and item.reads_batch


# --- entry point -------------------------------------------------------------------------------
def analyze(attn: ir.AttentionIR) -> Analysis:
    """The canonical mask and score structure of an attention.

    >>> import attnspec
    >>> spec = '''attention A {
    ...     heads = 2
    ...     head_dim = 8
    ...     input doc: int[batch, seq]
    ...     mask k <= q & 0 <= q - k & q - k <= 1024
    ...     mask doc[b, k] == doc[b, q]
    ...     score = softcap(score, 30.0)
    ... }'''
    >>> a = analyze(attnspec.build(spec).attentions[0])
    >>> a.band, a.segments, a.softcap
    (Band(lo=-1024, hi=0, align='top_left'), (Segment(input='doc'),), 30.0)
    >>> a.describe()[0]
    'mask: band -1024 <= k - q <= 0 (top-left; sliding window 1024)'
    """
    return Analysis(attn.name, _mask_items(attn), tuple(_score_item(s) for s in attn.pipeline))


# --- masks: conjuncts --------------------------------------------------------------------------
def _mask_items(attn: ir.AttentionIR) -> tuple[MaskItem, ...]:
    conjuncts = [c for m in attn.masks for c in _conjuncts(m)]
    pairs = [(c, _classify(c, attn)) for c in conjuncts]
    items = _merge_bands(_first_prefix_only([(c, i) for c, i in pairs if i is not None]))
    if attn.patterns:
        items.append(_patterns(attn))
    return tuple(items)


def _conjuncts(e: ir.Expr) -> list[ir.Expr]:
    """`a & b` and `!(a | b)` (De Morgan) split; `!!a` is `a`."""
    if isinstance(e, ir.Binary) and e.op == "&":
        return _conjuncts(e.left) + _conjuncts(e.right)
    inner = e.operand if _is_not(e) else None
    if isinstance(inner, ir.Binary) and inner.op == "|":
        return _conjuncts(_not(inner.left)) + _conjuncts(_not(inner.right))
    if inner is not None and _is_not(inner):
        return _conjuncts(inner.operand)
    return [e]


def _disjuncts(e: ir.Expr) -> list[ir.Expr]:
    """`a | b` and `!(a & b)` split; `!!a` is `a`."""
    if isinstance(e, ir.Binary) and e.op == "|":
        return _disjuncts(e.left) + _disjuncts(e.right)
    inner = e.operand if _is_not(e) else None
    if isinstance(inner, ir.Binary) and inner.op == "&":
        return _disjuncts(_not(inner.left)) + _disjuncts(_not(inner.right))
    if inner is not None and _is_not(inner):
        return _disjuncts(inner.operand)
    return [e]


def _classify(e: ir.Expr, attn: ir.AttentionIR) -> MaskItem | None:
    """The item of one conjunct; None for a literal `true` (it constrains nothing)."""
    if isinstance(e, ir.Const) and e.value is True:
        return None
    for recognise in (_band, _segment, _key_padding, _key_length, _prefix_or_band):
        item = recognise(e, attn)
        if item is not None:
            return item
    return Other.of(e)


def _merge_bands(pairs: list[tuple[ir.Expr, MaskItem]]) -> list[MaskItem]:
    """Intersect every band of the first alignment seen into one, at the first band's place;
    bands of the other alignment stay `Other` (no backend takes both at once)."""
    bands = [i for _, i in pairs if isinstance(i, Band)]
    if not bands:
        return [i for _, i in pairs]
    align, merged, out = bands[0].align, None, []
    for conjunct, item in pairs:
        if not isinstance(item, Band):
            out.append(item)
        elif item.align != align:
            out.append(Other.of(conjunct))
        elif merged is None:
            merged = len(out)
            out.append(item)
        else:
            out[merged] = _intersect(out[merged], item)
    return out


def _first_prefix_only(pairs: list[tuple[ir.Expr, MaskItem]]) -> list[tuple[ir.Expr, MaskItem]]:
    """A second prefix-or-band conjunct stays `Other`, so `Analysis.prefix` is unique."""
    out, seen = [], False
    for conjunct, item in pairs:
        if isinstance(item, PrefixOrBand):
            item, seen = (Other.of(conjunct) if seen else item), True
        out.append((conjunct, item))
    return out


def _patterns(attn: ir.AttentionIR) -> Patterns:
    return Patterns(tuple((g.name, g.size) for g in attn.groups),
                    tuple((p.queries, p.keys) for p in attn.patterns))


# --- masks: recognisers ------------------------------------------------------------------------
def _band(e: ir.Expr, attn: ir.AttentionIR) -> Band | None:
    """A single linear comparison of `k - q` (or `abs(k - q) <= w`) with constant offsets."""
    cmp = _comparison(e)
    if cmp is None:
        return None
    op, left, right = cmp
    if _is_abs(right) and not _is_abs(left):
        op, left, right = _MIRROR[op], right, left
    if _is_abs(left) and op in ("<", "<="):
        return _abs_band(op, left.args[0], right, e.span)
    lin = _difference(left, right)
    return None if lin is None else _band_of_lin(lin, op, e.span)


def _abs_band(op: str, x: ir.Expr, bound: ir.Expr, span: ir.SpanIR) -> Band | None:
    """`abs(x) op bound` is `x op bound & -x op bound`: two band constraints, intersected."""
    lx, lb = _lin(x), _lin(bound)
    if lx is None or lb is None:
        return None
    upper = _band_of_lin(lx + lb.scale(-1), op, span)
    lower = _band_of_lin(lx.scale(-1) + lb.scale(-1), op, span)
    if upper is None or lower is None or upper.align != lower.align:
        return None
    return _intersect(upper, lower)


def _band_of_lin(lin: _Lin, op: str, span: ir.SpanIR) -> Band | None:
    """`lin op 0` as a band when lin is `a·q - a·k + C` with C free of inputs."""
    if lin.q == 0 or lin.k != -lin.q or lin.reads_input:
        return None
    # a·q - a·k = -a·(k - q): a constraint on d = k - q with coefficient -a.
    bounds = _bounds(-lin.q, replace(lin, q=0, k=0), op)
    if bounds is None:
        return None
    aligns = {_alignment(b) for b in bounds if b is not None}
    if len(aligns) != 1 or None in aligns:
        return None
    lo, hi = (None if b is None else _offset(b, span) for b in bounds)
    return Band(lo, hi, aligns.pop(), span=span)


def _segment(e: ir.Expr, attn: ir.AttentionIR) -> Segment | None:
    cmp = _comparison(e)
    if cmp is None or cmp[0] != "==":
        return None
    _, left, right = cmp
    if not (isinstance(left, ir.InputRef) and isinstance(right, ir.InputRef)):
        return None
    if left.name != right.name or not _input_is(attn, left.name, "int", ("batch", "seq")):
        return None
    pair = {_index_names(left), _index_names(right)}
    return Segment(left.name, span=e.span) if pair == {("b", "q"), ("b", "k")} else None


def _key_padding(e: ir.Expr, attn: ir.AttentionIR) -> KeyPadding | None:
    if not isinstance(e, ir.InputRef) or _index_names(e) != ("b", "k"):
        return None
    if not (_input_is(attn, e.name, "bool", ("batch", "seq"))
            or _input_is(attn, e.name, "bool", ("batch", "kv_seq"))):
        return None
    return KeyPadding(e.name, span=e.span)


def _key_length(e: ir.Expr, attn: ir.AttentionIR) -> KeyLength | None:
    limit = _key_limit(e)
    ref = None if limit is None else _lengths_ref(limit, attn)
    return None if ref is None else KeyLength(ref.name, span=e.span)


def _prefix_or_band(e: ir.Expr, attn: ir.AttentionIR) -> PrefixOrBand | None:
    parts = _disjuncts(e)
    if len(parts) != 2:
        return None
    for first, second in (parts, parts[::-1]):
        prefix, band = _prefix(first, attn), _band_conjunction(second, attn)
        if prefix is not None and band is not None:
            return PrefixOrBand(prefix, band, span=e.span)
    return None


def _prefix(e: ir.Expr, attn: ir.AttentionIR) -> Offset | None:
    """P of `k < P` where P is constant or exactly `p[b]` of an int[batch] input."""
    limit = _key_limit(e)
    if limit is None:
        return None
    if not limit.reads_input:
        return _offset(limit, e.span)
    return _lengths_ref(limit, attn)


def _band_conjunction(e: ir.Expr, attn: ir.AttentionIR) -> Band | None:
    """A conjunction of band constraints of one alignment, intersected."""
    bands = [_band(c, attn) for c in _conjuncts(e)]
    if not bands or any(b is None for b in bands) or len({b.align for b in bands}) != 1:
        return None
    merged = bands[0]
    for b in bands[1:]:
        merged = _intersect(merged, b)
    return merged


def _key_limit(e: ir.Expr) -> _Lin | None:
    """L of a comparison that says exactly `k < L` (L free of q, k and sequence lengths)."""
    cmp = _comparison(e)
    lin = None if cmp is None else _difference(cmp[1], cmp[2])
    if lin is None or lin.q != 0 or abs(lin.k) != 1 or lin.q_len or lin.kv_len:
        return None
    bounds = _bounds(lin.k, replace(lin, k=0), cmp[0])
    if bounds is None or bounds[0] is not None or bounds[1] is None:
        return None
    return bounds[1] + _Lin(lit=Fraction(1))  # k <= hi  is  k < hi + 1


def _lengths_ref(limit: _Lin, attn: ir.AttentionIR) -> ir.InputRef | None:
    """The `n[b]` read when `limit` is exactly that (n an int[batch] input), else None."""
    if limit.lit != 0 or len(limit.terms) != 1:
        return None
    _, coefficient, ref = limit.terms[0]
    if coefficient != 1 or not isinstance(ref, ir.InputRef) or _index_names(ref) != ("b",):
        return None
    return ref if _input_is(attn, ref.name, "int", ("batch",)) else None


# --- linear forms ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Lin:
    """`q·q + k·k + lit + q_len·q_len + kv_len·kv_len + Σ coefficient·term`, integer-valued
    except `lit` (exact, may be a fraction from a float literal). Terms are int expressions free
    of q, k and h (settings, or reads such as `n[b]`), keyed by their printed text."""

    q: int = 0
    k: int = 0
    lit: Fraction = Fraction(0)
    q_len: int = 0
    kv_len: int = 0
    terms: tuple[tuple[str, int, ir.Expr], ...] = ()

    def __add__(self, other: _Lin) -> _Lin:
        merged = {key: [c, e] for key, c, e in self.terms}
        for key, c, e in other.terms:
            merged.setdefault(key, [0, e])[0] += c
        terms = tuple((key, c, e) for key, (c, e) in sorted(merged.items()) if c)
        return _Lin(self.q + other.q, self.k + other.k, self.lit + other.lit,
                    self.q_len + other.q_len, self.kv_len + other.kv_len, terms)

    def scale(self, c: int) -> _Lin:
        return _Lin(self.q * c, self.k * c, self.lit * c, self.q_len * c, self.kv_len * c,
                    tuple((key, n * c, e) for key, n, e in self.terms if n * c))

    @property
    def is_literal(self) -> bool:
        return not (self.q or self.k or self.q_len or self.kv_len or self.terms)

    @property
    def reads_input(self) -> bool:
        return any("input" in free_vars(e) for _, _, e in self.terms)


def _lin(e: ir.Expr) -> _Lin | None:
    """The linear form of an int/float expression, or None."""
    found = _lin_structural(e)
    return found if found is not None else _lin_term(e)


def _lin_structural(e: ir.Expr) -> _Lin | None:
    if isinstance(e, ir.Const):
        finite = e.type != "bool" and math.isfinite(e.value)
        return _Lin(lit=Fraction(e.value)) if finite else None
    if isinstance(e, ir.IndexVar):
        return {"q": _Lin(q=1), "k": _Lin(k=1)}.get(e.name)
    if isinstance(e, ir.SeqLen):
        return _Lin(q_len=1) if e.name == "q_len" else _Lin(kv_len=1)
    if isinstance(e, ir.Unary) and e.op == "-":
        inner = _lin(e.operand)
        return None if inner is None else inner.scale(-1)
    if isinstance(e, ir.Binary) and e.op in ("+", "-", "*"):
        return _lin_binary(e)
    return None


def _lin_binary(e: ir.Binary) -> _Lin | None:
    left, right = _lin(e.left), _lin(e.right)
    if left is None or right is None:
        return None
    if e.type == "float" and (left.lit.denominator != 1 or right.lit.denominator != 1):
        return None  # float64 arithmetic on a fraction may round: only comparisons are exact
    if e.op == "+":
        return left + right
    if e.op == "-":
        return left + right.scale(-1)
    # `*` stays linear only with an integral literal factor (`2 * q`, `w * 3`).
    for factor, other in ((left, right), (right, left)):
        if factor.is_literal and factor.lit.denominator == 1:
            return other.scale(int(factor.lit))
    return None


def _lin_term(e: ir.Expr) -> _Lin | None:
    """A constant int expression (settings) or a read fixed per batch row (`n[b]`) becomes one
    opaque term; anything varying with b, h, q or k in another way is not linear."""
    per_row = isinstance(e, ir.InputRef) and free_vars(e) <= {"input", "b"}
    if e.type != "int" or not (is_constant(e) or per_row):
        return None
    return _Lin(terms=((expr_text(e), 1, e),))


def _difference(left: ir.Expr, right: ir.Expr) -> _Lin | None:
    lx, rx = _lin(left), _lin(right)
    return None if lx is None or rx is None else lx + rx.scale(-1)


def _bounds(coef: int, rest: _Lin, op: str) -> tuple[_Lin | None, _Lin | None] | None:
    """(lo, hi) on an integer x from `coef·x + rest op 0`, literals rounded to integers."""
    if op == "!=" or coef == 0:
        return None
    if coef < 0:
        coef, rest, op = -coef, rest.scale(-1), _MIRROR[op]
    if coef != 1 and not rest.is_literal:
        return None  # dividing a symbolic offset would need floor/ceil expressions
    bound = replace(rest.scale(-1), lit=-rest.lit / coef)  # x op bound
    # Terms and lengths are integers, so rounding the literal rounds the whole bound.
    lit = bound.lit
    if op == "==":
        return (bound, bound) if lit.denominator == 1 else None
    rounded = {">=": math.ceil(lit), ">": math.floor(lit) + 1,
               "<=": math.floor(lit), "<": math.ceil(lit) - 1}[op]
    bound = replace(bound, lit=Fraction(rounded))
    return (bound, None) if op in (">=", ">") else (None, bound)


def _alignment(bound: _Lin) -> Align | None:
    if bound.q_len == bound.kv_len == 0:
        return "top_left"
    if bound.kv_len == 1 and bound.q_len == -1:
        return "bottom_right"
    return None


def _offset(bound: _Lin, span: ir.SpanIR) -> Offset:
    """The bound without its sequence lengths, as an int or a constant int IR expression."""
    lit = int(bound.lit)
    if not bound.terms:
        return lit
    expr = None
    for _, coefficient, term in bound.terms:
        expr = _add_scaled(expr, coefficient, term, span)
    if lit:
        expr = ir.Binary(op="+" if lit > 0 else "-", left=expr, right=_lit(abs(lit), span),
                         type="int", span=span)
    return expr


def _add_scaled(expr: ir.Expr | None, coefficient: int, term: ir.Expr,
                span: ir.SpanIR) -> ir.Expr:
    """`expr ± |coefficient|·term` (or just the scaled term when expr is None)."""
    magnitude = abs(coefficient)
    scaled = term if magnitude == 1 else ir.Binary(op="*", left=_lit(magnitude, span),
                                                   right=term, type="int", span=span)
    if expr is None:
        return scaled if coefficient > 0 else _negate(scaled, span)
    return ir.Binary(op="+" if coefficient > 0 else "-", left=expr, right=scaled, type="int",
                     span=span)


# --- offsets -----------------------------------------------------------------------------------
def _intersect(a: Band, b: Band) -> Band:
    return Band(_combine("max", a.lo, b.lo, a.span), _combine("min", a.hi, b.hi, a.span),
                a.align, span=a.span)


def _combine(func: Literal["max", "min"], a: Offset | None, b: Offset | None,
             span: ir.SpanIR | None) -> Offset | None:
    """max/min of two optional offsets; None is unbounded, so the other one wins."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b) if func == "max" else min(a, b)
    if _offset_text(a) == _offset_text(b):
        return a
    args = tuple(_lit(x, span) if isinstance(x, int) else x for x in (a, b))
    return ir.Call(func=func, args=args, type="int", span=span)


def _negate(o: Offset, span: ir.SpanIR | None) -> Offset:
    if isinstance(o, int):
        return -o
    if isinstance(o, ir.Unary) and o.op == "-":
        return o.operand
    return ir.Unary(op="-", operand=o, type="int", span=span or o.span)


def _is_zero(o: Offset | None) -> bool:
    return isinstance(o, int) and o == 0


def _lit(value: int, span: ir.SpanIR | None) -> ir.Const:
    return ir.Const(value=value, type="int", span=span or _NO_SPAN)


_NO_SPAN = ir.SpanIR(line=0, col=0, end_line=0, end_col=0)


# --- small expression queries ------------------------------------------------------------------
def _is_not(e: ir.Expr) -> bool:
    return isinstance(e, ir.Unary) and e.op == "!"


def _not(e: ir.Expr) -> ir.Expr:
    return ir.Unary(op="!", operand=e, type="bool", span=e.span)


def _comparison(e: ir.Expr) -> tuple[str, ir.Expr, ir.Expr] | None:
    """(op, left, right) of a comparison, through any number of `!`."""
    if isinstance(e, ir.Binary) and e.op in COMPARISON:
        return e.op, e.left, e.right
    if _is_not(e):
        inner = _comparison(e.operand)
        return None if inner is None else (_NEGATE[inner[0]], inner[1], inner[2])
    return None


def _is_abs(e: ir.Expr) -> bool:
    return isinstance(e, ir.Call) and e.func == "abs" and not is_constant(e)


def _index_names(ref: ir.InputRef | ir.ParamRef) -> tuple[str, ...] | None:
    if not all(isinstance(i, ir.IndexVar) for i in ref.indices):
        return None
    return tuple(i.name for i in ref.indices)


def _input_is(attn: ir.AttentionIR, name: str, dtype: str, dims: tuple[str, ...]) -> bool:
    decl = attn.input(name)
    return decl is not None and decl.dtype == dtype and tuple(d.kind for d in decl.dims) == dims


# --- score pipeline ----------------------------------------------------------------------------
def _score_item(step: ir.Step) -> ScoreItem:
    if step.kind == "bias":
        return _bias(step.expr, step.span)
    e = step.expr
    added = _added_to_score(e)
    if added is not None:
        return _bias(added, step.span)
    return _softcap(e, step.span) or _gate(e, step.span) or OtherScore(e, span=step.span)


def _added_to_score(e: ir.Expr) -> ir.Expr | None:
    """e of `score + e`, `e + score`, `score - e` (as `-e`) when e does not read the score."""
    if not isinstance(e, ir.Binary) or e.op not in ("+", "-"):
        return None
    if isinstance(e.left, ir.ScoreRef) and not _reads_score(e.right):
        return e.right if e.op == "+" else _negate(e.right, e.span)
    if e.op == "+" and isinstance(e.right, ir.ScoreRef) and not _reads_score(e.left):
        return e.left
    return None


def _bias(expr: ir.Expr, span: ir.SpanIR) -> Bias:
    scale = _alibi_scale(expr)
    if scale is not None:
        return Bias("alibi", expr, scale=scale, span=span)
    if isinstance(expr, (ir.ParamRef, ir.InputRef)):
        return Bias("table", expr, table=expr.name, span=span)
    return Bias("general", expr, span=span)


def _alibi_scale(expr: ir.Expr) -> float | None:
    """c of exactly `c * alibi_slope(h) * abs(q - k)` (in any factor order, signs and literal
    factors anywhere), else None. `slope * (k - q)` is not ALiBi: it equals it only under a
    causal mask, which is the lowering's business."""
    scale, factors = _factors(expr)
    if len(factors) != 2:
        return None
    slope = [f for f in factors if _is_alibi_slope(f)]
    dist = [f for f in factors if isinstance(f, ir.Call) and f.func == "abs"]
    if len(slope) != 1 or len(dist) != 1 or not _is_distance(dist[0].args[0]):
        return None
    return float(scale)


def _factors(e: ir.Expr) -> tuple[float, list[ir.Expr]]:
    """A product as (literal scale, other factors): `-2 * x * y / 4` is (-0.5, [x, y])."""
    if isinstance(e, ir.Binary) and e.op == "*":
        (ls, lf), (rs, rf) = _factors(e.left), _factors(e.right)
        return ls * rs, lf + rf
    divisor = _number(e.right) if isinstance(e, ir.Binary) and e.op == "/" else None
    if divisor:
        scale, factors = _factors(e.left)
        return scale / divisor, factors
    if isinstance(e, ir.Unary) and e.op == "-":
        scale, factors = _factors(e.operand)
        return -scale, factors
    if isinstance(e, ir.Const) and _number(e) is not None:
        return e.value, []
    return 1.0, [e]


def _is_alibi_slope(e: ir.Expr) -> bool:
    return (isinstance(e, ir.Call) and e.func == "alibi_slope"
            and isinstance(e.args[0], ir.IndexVar) and e.args[0].name == "h")


def _is_distance(e: ir.Expr) -> bool:
    """`q - k` or `k - q` exactly."""
    lin = _lin(e)
    return (lin is not None and abs(lin.q) == 1 and lin.k == -lin.q and lin.lit == 0
            and not (lin.q_len or lin.kv_len or lin.terms))


def _softcap(e: ir.Expr, span: ir.SpanIR) -> Softcap | None:
    """`c * tanh(score / c)` (either factor order) with one constant c on both sides."""
    if not isinstance(e, ir.Binary) or e.op != "*":
        return None
    for cap, other in ((e.left, e.right), (e.right, e.left)):
        if not (isinstance(other, ir.Call) and other.func == "tanh"):
            continue
        inner = other.args[0]
        if (isinstance(inner, ir.Binary) and inner.op == "/"
                and isinstance(inner.left, ir.ScoreRef) and _same_constant(cap, inner.right)):
            value = _number(cap)
            return Softcap(cap if value is None else abs(value), span=span)
    return None


def _same_constant(a: ir.Expr, b: ir.Expr) -> bool:
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return x == y != 0
    return is_constant(a) and expr_text(a) == expr_text(b)


def _gate(e: ir.Expr, span: ir.SpanIR) -> Gate | None:
    if not isinstance(e, ir.Binary) or e.op != "*":
        return None
    for score, other in ((e.left, e.right), (e.right, e.left)):
        if isinstance(score, ir.ScoreRef) and not _reads_score(other):
            return Gate(other, span=span)
    return None


def _reads_score(e: ir.Expr) -> bool:
    return "score" in free_vars(e)


def _number(e: ir.Expr) -> float | None:
    """The value of a finite numeric literal, `-` applied or not (the builder folds binary
    operators on literals but keeps unary minus), else None."""
    if isinstance(e, ir.Unary) and e.op == "-":
        inner = _number(e.operand)
        return None if inner is None else -inner
    if isinstance(e, ir.Const) and e.type != "bool" and math.isfinite(e.value):
        return float(e.value)
    return None


# --- text --------------------------------------------------------------------------------------
def _offset_text(o: Offset | float) -> str:
    return str(o) if isinstance(o, (int, float)) else expr_text(o)


def _bound_text(o: Offset | None, align: Align) -> str | None:
    """A band bound as written against `k - q` (bottom-right bounds include the shift)."""
    if o is None:
        return None
    if align == "top_left":
        return _offset_text(o)
    if _is_zero(o):
        return "kv_len - q_len"
    if isinstance(o, int):
        return f"kv_len - q_len {'+' if o > 0 else '-'} {abs(o)}"
    return f"kv_len - q_len + ({expr_text(o)})"


def _band_name(band: Band) -> str | None:
    """The familiar name of a band, if it has one."""
    lo, hi = band.lo, band.hi
    if band.is_causal:
        return "causal"
    if lo is None or hi is None:
        return None
    left = _offset_text(_negate(lo, band.span))
    if _is_zero(hi):
        return f"sliding window {left}"
    if left == _offset_text(hi):
        return f"local |k - q| <= {left}"
    return f"window ({left}, {_offset_text(hi)})"


def _short(text: str) -> str:
    limit = _OTHER_TEXT_LIMIT
    return text if len(text) <= limit else text[: limit - 3] + "..."
