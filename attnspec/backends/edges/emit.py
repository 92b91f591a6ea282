"""The edges backend's template context: the edge-list input line and the per-edge calls."""

from __future__ import annotations

from attnspec.codegen.text import comment_lines


def emit(emitter, plan, lowered) -> dict:
    """The prologue's input lines with the edges input read as an edge list, not tables (the
    same arguments: `_edge_list` takes what `_edge_tables` does)."""
    tables = f"{plan.graph} = _edge_tables("
    lines = [text.replace(tables, f"{plan.graph} = _edge_list(", 1)
             if text.startswith(tables) else text for text in emitter.input_lines()]
    return {"kind": plan.kind, "summary": comment_lines(plan.notes), "graph": plan.graph,
            "input_lines": lines}
