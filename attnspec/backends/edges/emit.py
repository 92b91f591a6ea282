"""The edges backend's template context: the edge-list input line and the per-edge calls."""

from __future__ import annotations

from attnspec.codegen.expr import literal
from attnspec.codegen.text import comment_lines


def emit(emitter, plan, lowered) -> dict:
    """The prologue's input lines with the edges input read as an edge list, not tables."""
    edges = next(i for i in emitter.attn.inputs if i.name == plan.graph)
    spec = edges.edges
    line = (f"{edges.name} = _edge_list({edges.name!r}, {edges.name}, {edges.name}_type, "
            f"{edges.name}_distance, Sq, Sk, q.device, types={literal(spec.types)}, "
            f"max_distance={literal(spec.max_distance)}, self_loops={literal(spec.self_loops)})")
    lines = [line if text.startswith(f"{edges.name} = _edge_tables(") else text
             for text in emitter.input_lines()]
    return {"kind": plan.kind, "summary": comment_lines(plan.notes), "graph": plan.graph,
            "input_lines": lines}
