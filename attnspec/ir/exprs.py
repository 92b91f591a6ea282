"""Typed construction of IR expressions and small queries over them (free of any AST)."""

from __future__ import annotations

from collections.abc import Iterator

from attnspec.ir import nodes as ir

ARITHMETIC = {"+", "-", "*", "/", "//", "%"}
COMPARISON = {"==", "!=", "<", "<=", ">", ">="}
LOGICAL = {"&", "|"}
FLOAT_FUNCS = {"exp", "exp2", "log", "log2", "sqrt", "tanh", "sigmoid"}


def promote(*types: str) -> str:
    """int op float gives float."""
    return "float" if "float" in types else "int"


def binary_type(op: str, left: str, right: str) -> str | None:
    """The result type of `left op right`, or None when the operand types are not allowed."""
    if op in LOGICAL:
        return "bool" if left == right == "bool" else None
    if op in ("==", "!="):
        same_kind = (left == "bool") == (right == "bool")
        return "bool" if same_kind else None
    if "bool" in (left, right):
        return None
    if op in COMPARISON:
        return "bool"
    return "float" if op == "/" else promote(left, right)


def children(expr: ir.Expr) -> tuple[ir.Expr, ...]:
    if isinstance(expr, (ir.Unary, ir.InGroup)):
        return (expr.operand,)
    if isinstance(expr, ir.Binary):
        return (expr.left, expr.right)
    if isinstance(expr, (ir.Call,)):
        return expr.args
    if isinstance(expr, (ir.InputRef, ir.ParamRef)):
        return expr.indices
    return ()


def walk(expr: ir.Expr) -> Iterator[ir.Expr]:
    """Every node of an expression, parents before children."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(children(node)))


def depth(expr: ir.Expr) -> int:
    """The number of nodes on the longest path from `expr` down to a leaf (a leaf is 1).

    >>> from attnspec.ir.build import build_text
    >>> depth(build_text("attention A { heads = 1; head_dim = 8; mask q - k <= 4 }")
    ...       .attentions[0].masks[0])
    3
    """
    best, stack = 0, [(expr, 1)]
    while stack:  # iterative: it measures expressions too deep to recurse over
        node, level = stack.pop()
        best = max(best, level)
        stack.extend((child, level + 1) for child in children(node))
    return best


def free_vars(expr: ir.Expr) -> frozenset[str]:
    """What an expression varies with: index names, `input`, `param`, `edge`, `score`,
    `seq_len`, `group` (group bounds can depend on call-time sizes).

    Remembered per node (nodes are immutable), so analyses that ask of every subexpression
    stay linear.

    >>> from attnspec.ir.nodes import IndexVar, SpanIR
    >>> sorted(free_vars(IndexVar(name="q", span=SpanIR(line=1, col=1, end_line=1, end_col=2))))
    ['q']
    """
    seen = _FREE_VARS.get(id(expr))
    if seen is not None and seen[0] is expr:
        return seen[1]
    found = frozenset(_own_vars(expr)).union(*(free_vars(c) for c in children(expr)))
    if len(_FREE_VARS) > 100_000:
        _FREE_VARS.clear()
    _FREE_VARS[id(expr)] = (expr, found)  # the node is kept, so its id is not reused
    return found


_FREE_VARS: dict[int, tuple[ir.Expr, frozenset[str]]] = {}


def _own_vars(node: ir.Expr) -> set[str]:
    if isinstance(node, ir.IndexVar):
        return {node.name}
    if isinstance(node, ir.EdgeField):
        return {"edge", "q", "k"}
    if isinstance(node, (ir.InputRef, ir.ParamRef, ir.ScoreRef, ir.SeqLen)):
        return {node.kind}
    if isinstance(node, (ir.GroupBound, ir.InGroup)):
        return {"group"}
    return set()


def is_constant(expr: ir.Expr) -> bool:
    """True when only literals and settings appear (fixed for a module instance)."""
    return not free_vars(expr)


def node_count(expr: ir.Expr) -> int:
    return sum(1 for _ in walk(expr))
