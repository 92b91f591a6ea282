"""Backend-neutral helpers of the lowering stage (the plan types live in `attnspec.backends`)."""

from __future__ import annotations

from attnspec.ir import nodes as ir


def explicit_dropout(attn: ir.AttentionIR) -> ir.NumericSetting | None:
    """The `dropout` setting when the spec sets it to anything but a literal 0 (backends
    without attention dropout cannot run such a spec), else None."""
    dropout = attn.setting("dropout")
    if dropout is None or not dropout.explicit:
        return None
    expr = dropout.expr
    return None if isinstance(expr, ir.Const) and expr.value == 0 else dropout
