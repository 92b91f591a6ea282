"""The abstract syntax tree: frozen dataclasses, one per construct, each with its source span.

The AST is exactly what was written; names are not resolved and macros are not expanded
(that is `attnspec.ir.build`).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.errors import Span


# --- expressions -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Num:
    value: int | float
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Name:
    name: str
    span: Span


@dataclass(frozen=True)
class ScoreRef:
    span: Span


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "!"
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / // % == != < <= > >= & |
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class InGroup:
    operand: Expr
    group: str
    group_span: Span
    span: Span


@dataclass(frozen=True)
class Arg:
    name: str | None  # None for a positional argument
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    func: str
    func_span: Span
    args: tuple[Arg, ...]
    span: Span


@dataclass(frozen=True)
class Index:
    target: Expr
    indices: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Field:
    target: Expr
    name: str
    name_span: Span
    span: Span


Expr = Num | Bool | Name | ScoreRef | Unary | Binary | InGroup | Call | Index | Field


# --- statements --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorType:
    """`int[batch, seq]`, `float[heads, 2]`."""

    base: str
    dims: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class CallType:
    """`edges(types = 2, max_distance = 32)`."""

    base: str
    args: tuple[Arg, ...]
    span: Span


TypeExpr = TensorType | CallType


@dataclass(frozen=True)
class Setting:
    name: str
    value: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class GroupDecl:
    name: str
    size: int | None  # None for `*`
    span: Span


@dataclass(frozen=True)
class Tokens:
    groups: tuple[GroupDecl, ...]
    span: Span


@dataclass(frozen=True)
class NameRef:
    name: str
    span: Span


@dataclass(frozen=True)
class Pattern:
    queries: tuple[NameRef, ...]
    keys: tuple[NameRef, ...]
    span: Span


@dataclass(frozen=True)
class InputDecl:
    name: str
    type: TypeExpr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class ParamDecl:
    name: str
    type: TypeExpr
    init: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Mask:
    expr: Expr
    span: Span


@dataclass(frozen=True)
class Bias:
    expr: Expr
    span: Span


@dataclass(frozen=True)
class ScoreAssign:
    expr: Expr
    span: Span


@dataclass(frozen=True)
class Position:
    kind: str
    args: tuple[Arg, ...]
    span: Span
    kind_span: Span


@dataclass(frozen=True)
class Mup:
    settings: tuple[Setting, ...]
    span: Span


Statement = (Setting | Tokens | Pattern | InputDecl | ParamDecl | Mask | Bias | ScoreAssign
             | Position | Mup)


@dataclass(frozen=True)
class LetParam:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class Let:
    name: str
    params: tuple[LetParam, ...] | None  # None: a constant macro (`let half = ...`)
    body: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Attention:
    name: str
    body: tuple[Statement, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class File:
    items: tuple[Let | Attention, ...]
    source_name: str

    @property
    def lets(self) -> tuple[Let, ...]:
        return tuple(i for i in self.items if isinstance(i, Let))

    @property
    def attentions(self) -> tuple[Attention, ...]:
        return tuple(i for i in self.items if isinstance(i, Attention))
