"""The edge-list backend: graph attention in O(E) for specs whose mask holds `G.edge`.

Edges are resolved once per call (duplicates: the last wins; self loops added) and sorted by
query (CSR). Every other mask conjunct and the whole score pipeline are evaluated per edge
(`q = src`, `k = dst`, `G.type`, `G.distance` as per-edge vectors); the softmax runs per query
row over its edges (sinks join the denominator; a row without edges gives exactly 0) and the
output is a segment sum. No [Sq, Sk] tensor is ever made: memory O(B·H·E) plus the inputs (the
per-edge q.k and the row sums gather [B, H, E, D] rows one chunk at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.backends.base import Plan, Reason
from attnspec.ir import nodes as ir
from attnspec.lower.analysis import Analysis, Other

NAME = "edges"
SUMMARY = "graph attention over an edge list: per-edge pipeline, segment softmax, O(E)"
# Plain torch ops: every device torch runs on, forward and backward.
DEVICES = ("cpu", "cuda")
BACKWARD_DEVICES = DEVICES
# The segment softmax has each row's shift and sum: their log-sum-exp costs one log per row.
RETURNS_LSE = True


@dataclass(frozen=True)
class EdgesPlan(Plan):
    """`csr`: edges sorted by query; `graph` names the edges input whose `.edge` the mask ANDs."""

    graph: str = ""


def edge_conjunct(analysis: Analysis) -> str | None:
    """The edges input whose `NAME.edge` is a whole conjunct of the mask, if any."""
    for item in analysis.mask:
        expr = item.expr if isinstance(item, Other) else None
        if isinstance(expr, ir.EdgeField) and expr.field == "edge":
            return expr.input
    return None


def supports(attn: ir.AttentionIR, analysis: Analysis) -> list[Reason]:
    edges = [i for i in attn.inputs if i.dtype == "edges"]
    if not edges:
        return [Reason("the edges backend needs an `edges` input whose `.edge` the mask ANDs",
                       attn.span)]
    if len(edges) > 1:
        return [Reason("the edges backend takes one `edges` input; this spec has "
                       f"{len(edges)}", edges[1].span)]
    if edge_conjunct(analysis) is None:
        return [Reason(f"the mask must AND `{edges[0].name}.edge` (the edges backend visits "
                       "only listed edges)", attn.masks[0].span if attn.masks else attn.span)]
    return []


def cp_supports(attn: ir.AttentionIR, analysis: Analysis) -> list[Reason]:
    # Edges are sharded by query: each rank keeps the edges whose query is one of its rows.
    return []


def lower(attn: ir.AttentionIR, analysis: Analysis) -> EdgesPlan:
    graph = edge_conjunct(analysis)
    notes = [f"{graph}.edge -> edge list sorted by query (duplicates: last wins), O(E) memory, "
             "no [Sq, Sk] tensor",
             "every other mask conjunct and the score pipeline evaluated per edge; softmax per "
             "query row over its edges; output as a segment sum"]
    if attn.params:
        notes.append("learned tables get gradients by index_add over edges (no per-pair "
                     "atomics into a few addresses as in flex)")
    return EdgesPlan(NAME, "csr", tuple(notes), graph=graph)
