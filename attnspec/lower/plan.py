"""Plans: what a backend will do for one attention, or every reason it cannot.

A backend module exposes `supports(attn, analysis) -> list[Reason]` (empty = supported) and
`lower(attn, analysis) -> Plan`; `attnspec.lower.backends` registers them in one dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attnspec.ir import nodes as ir


@dataclass(frozen=True)
class Reason:
    """Why a backend cannot run a spec, at the statement responsible."""

    message: str
    span: ir.SpanIR | None = None

    def format(self, source_name: str = "<spec>") -> str:
        where = f"{source_name}:{self.span.line}:{self.span.col}: " if self.span else ""
        return f"{where}{self.message}"


@dataclass(frozen=True)
class Plan:
    """How one backend runs one attention. `kind` selects the code path of the backend's
    template; `notes` are the lines `attnspec explain` prints."""

    backend: str
    kind: str
    notes: tuple[str, ...] = ()
    details: dict = field(default_factory=dict)


def explicit_dropout(attn: ir.AttentionIR) -> ir.NumericSetting | None:
    """The `dropout` setting when the spec sets it to anything but a literal 0 (backends
    without attention dropout cannot run such a spec), else None."""
    dropout = attn.setting("dropout")
    if dropout is None or not dropout.explicit:
        return None
    expr = dropout.expr
    return None if isinstance(expr, ir.Const) and expr.value == 0 else dropout
