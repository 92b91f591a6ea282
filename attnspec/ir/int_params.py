"""Which `let` parameters stand for whole numbers, and which arguments are not.

A window, a stride, a prefix length: a parameter that meets a position (`q`, `k`, `h`, `b`,
`q_len`, `kv_len`) in a comparison or in arithmetic, or an operand of `%` or `//`, counts
positions. Given `0.5`, the comparison `q - k <= 0.5` quietly acts as `q - k <= 0`, so the
builder reports such an argument instead (`sliding_window(0.5)`).

Example:
    >>> from attnspec.grammar.parser import parse
    >>> lets = parse("let win(w, s) = q - k <= w & s > 0.5", "x.attn").items
    >>> int_params("win", {"win": lets[0]})
    frozenset({'w'})
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from attnspec.grammar import ast

# Names whose values are positions (or counts of them): an operand next to one is one too.
_POSITIONS = frozenset(("q", "k", "h", "b", "q_len", "kv_len"))
_ARITHMETIC = frozenset(("+", "-", "==", "!=", "<", "<=", ">", ">="))


def int_params(name: str, lets: Mapping[str, ast.Let], memo: dict | None = None
               ) -> frozenset[str]:
    """The parameters of `let name(...)` that must be whole numbers. `memo` keeps each let's
    answer: a chain of lets calling each other twice would otherwise take exponential time."""
    memo = {} if memo is None else memo
    let = lets.get(name)
    if let is None or let.params is None:
        return frozenset()
    if name not in memo:
        memo[name] = frozenset()  # a recursive let (an error reported elsewhere) stops here
        params = {p.name for p in let.params}
        memo[name] = frozenset(_int_names(let.body, lets, memo) & params)
    return memo[name]


def _int_names(expr: ast.Expr, lets: Mapping[str, ast.Let], memo: dict) -> set[str]:
    found: set[str] = set()
    for node in _walk(expr):
        if isinstance(node, ast.Binary):
            found |= _int_operands(node)
        elif isinstance(node, ast.Call) and node.func in lets:
            found |= _passed_to_int_params(node, lets, memo)
    return found


def _int_operands(node: ast.Binary) -> set[str]:
    """Names used directly as operands of `node` in a place that needs a whole number."""
    pairs = ((node.left, node.right), (node.right, node.left))
    if node.op in ("%", "//"):
        return {e.name for e, _ in pairs if isinstance(e, ast.Name)}
    if node.op in _ARITHMETIC:
        return {e.name for e, other in pairs
                if isinstance(e, ast.Name) and _mentions_position(other)}
    return set()


def _passed_to_int_params(call: ast.Call, lets: Mapping[str, ast.Let], memo: dict) -> set[str]:
    """Names passed straight on as an argument a called `let` needs whole."""
    callee = lets[call.func]
    wanted = int_params(call.func, lets, memo)
    names = [p.name for p in callee.params or ()]
    found = set()
    for position, arg in enumerate(call.args):
        param = arg.name or (names[position] if position < len(names) else None)
        if param in wanted and isinstance(arg.value, ast.Name):
            found.add(arg.value.name)
    return found


def _mentions_position(expr: ast.Expr) -> bool:
    return any(isinstance(n, ast.Name) and n.name in _POSITIONS for n in _walk(expr))


def float_argument(expr: ast.Expr, lets: Mapping[str, ast.Let]) -> str | None:
    """Why `expr`, an argument, is not a whole number (`0.5`, true division), or None. Only what
    the text shows: a name of a call-time value is not followed."""
    if isinstance(expr, ast.Unary) and expr.op == "-":
        inner = float_argument(expr.operand, lets)
        return "`-" + inner[1:] if inner is not None and inner.startswith("`") else inner
    if isinstance(expr, ast.Num) and isinstance(expr.value, float):
        return f"`{_number_text(expr.value)}`"
    if isinstance(expr, ast.Binary) and expr.op == "/":
        return "a true division (`/`)"
    let = lets.get(expr.name) if isinstance(expr, ast.Name) else None
    if let is not None and let.params is None:  # `let W = 0.5` then `sliding_window(W)`
        inner = float_argument(let.body, lets)
        return inner and f"`{expr.name}`, which is {inner}"
    return None


def _number_text(value: float) -> str:
    return "inf" if value == float("inf") else repr(value)


def _walk(expr: ast.Expr) -> Iterator[ast.Expr]:
    """Every node of an expression, iteratively (expressions may be 100 levels deep)."""
    stack = [expr]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.Unary):
            stack.append(node.operand)
        elif isinstance(node, ast.Binary):
            stack += (node.left, node.right)
        elif isinstance(node, ast.Call):
            stack += (a.value for a in node.args)
        elif isinstance(node, ast.Index):
            stack += (node.target, *node.indices)
        elif isinstance(node, ast.Field):
            stack.append(node.target)
        elif isinstance(node, ast.InGroup):
            stack.append(node.operand)
