"""Integer interval analysis over IR expressions, for index-range and int32 checks.

Positions range over [0, 2^24 - 1] (the longest sequence the checker guarantees), heads over
[0, heads - 1]; settings are their default values. Call-time values (int inputs, float results
floored) are unknown: `of()` returns None for them and no claim is made.

Example:
    >>> from attnspec.ir.build import build_text
    >>> text = "attention A {\\n heads = 4\\n head_dim = 8\\n mask k % 7 < 3\\n}"
    >>> a = build_text(text).attentions[0]
    >>> Intervals(a, {"heads": 4}).of(a.masks[0].left)
    (0, 6)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from attnspec.ir import nodes as ir
from attnspec.ir.consts import ConstError, eval_const
from attnspec.ir.exprs import is_constant

MAX_SEQ = 2**24
MAX_BATCH = 2**16  # batch sizes the checker guarantees int32 arithmetic for
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Range = tuple[int, int] | None


class Intervals:
    def __init__(self, attn: ir.AttentionIR, values: Mapping[str, float]):
        self.attn = attn
        self.values = values

    def of(self, expr: ir.Expr) -> Range:
        if expr.type != "int":
            return None
        if is_constant(expr):
            try:
                v = eval_const(expr, self.values)
            except ConstError:
                return None
            return (int(v), int(v))
        method = getattr(self, "_" + expr.kind, None)
        return method(expr) if method else None

    def _index(self, e: ir.IndexVar) -> Range:
        if e.name == "h":
            return (0, int(self.values["heads"]) - 1)
        if e.name == "b":
            return (0, MAX_BATCH - 1)
        return (0, MAX_SEQ - 1)

    def _seq_len(self, e: ir.SeqLen) -> Range:
        return (1, MAX_SEQ)

    def _group_bound(self, e: ir.GroupBound) -> Range:
        sizes = [g.size for g in self.attn.groups]
        if None in sizes:
            return (0, MAX_SEQ)
        names = [g.name for g in self.attn.groups]
        i = names.index(e.group)
        start = sum(sizes[:i])
        value = {"start": start, "end": start + sizes[i], "size": sizes[i]}[e.which]
        return (value, value)

    def _edge(self, e: ir.EdgeField) -> Range:
        spec = self.attn.input(e.input).edges
        top = {"type": spec.types - 1, "distance": spec.max_distance - 1}.get(e.field, 1)
        return (0, top)

    def _unary(self, e: ir.Unary) -> Range:
        r = self.of(e.operand)
        return None if r is None else (-r[1], -r[0])

    def _binary(self, e: ir.Binary) -> Range:
        a, b = self.of(e.left), self.of(e.right)
        if e.op == "%":
            return _mod(a, b)
        if a is None or b is None:
            return None
        if e.op == "+":
            return (a[0] + b[0], a[1] + b[1])
        if e.op == "-":
            return (a[0] - b[1], a[1] - b[0])
        if e.op == "*":
            products = [x * y for x in a for y in b]
            return (min(products), max(products))
        if e.op == "//":
            return _floordiv(a, b)
        return None

    def _call(self, e: ir.Call) -> Range:
        args = [self.of(a) for a in e.args]
        if e.func == "clamp" and args[1] is not None and args[2] is not None:
            # known bounds make the result known whatever the operand (contract §5)
            x = args[0] or (args[1][0], args[2][1])
            return (max(min(x[0], args[2][1]), args[1][0]), min(max(x[1], args[1][0]),
                                                              args[2][1]))
        if e.func in ("min", "max"):
            return _min_max(e.func, args)
        if e.func == "t5_bucket":
            buckets = self.of(e.args[1])
            return None if buckets is None else (0, max(0, buckets[1] - 1))
        if e.func == "where":
            args = args[1:]
        if any(r is None for r in args):
            return None
        if e.func == "abs":
            lo, hi = args[0]
            return (0 if lo <= 0 <= hi else min(abs(lo), abs(hi)), max(abs(lo), abs(hi)))
        if e.func == "clamp":
            x, lo, hi = args
            return (max(min(x[0], hi[1]), lo[0]), min(max(x[1], lo[0]), hi[1]))
        if e.func == "where":
            return (min(r[0] for r in args), max(r[1] for r in args))
        return None


def _mod(a: Range, b: Range) -> Range:
    if b is None or b[0] < 1:
        return None
    if a is not None and a[0] >= 0 and a[1] < b[0]:
        return a
    return (0, b[1] - 1)


def _floordiv(a: tuple[int, int], b: tuple[int, int]) -> Range:
    if b[0] <= 0 <= b[1]:
        return None
    quotients = [math.floor(x / y) if abs(x) < 2**52 else x // y for x in a for y in b]
    return (min(quotients), max(quotients))


def _min_max(func: str, args: list[Range]) -> Range:
    """min(x, c) is bounded above by c even when x is unknown; max(x, c) below."""
    known = [r for r in args if r is not None]
    if func == "min":
        if len(known) < len(args):
            return None if not known else _half(lo=None, hi=min(r[1] for r in known))
        return (min(r[0] for r in args), min(r[1] for r in args))
    if len(known) < len(args):
        return None if not known else _half(lo=max(r[0] for r in known), hi=None)
    return (max(r[0] for r in args), max(r[1] for r in args))


def _half(lo: int | None, hi: int | None) -> Range:
    """A range open on one side: stands for the int64 range on that side."""
    return (INT64_MIN if lo is None else lo, INT64_MAX if hi is None else hi)
