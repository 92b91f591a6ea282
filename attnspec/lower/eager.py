"""The eager backend: dense [B, H, Sq, Sk] masks and scores. It runs every spec."""

from __future__ import annotations

from attnspec.ir import nodes as ir
from attnspec.lower.plan import Plan, Reason

NAME = "eager"


def supports(attn: ir.AttentionIR, analysis) -> list[Reason]:
    return []


def lower(attn: ir.AttentionIR, analysis) -> Plan:
    return Plan(NAME, "dense", (
        "mask and score materialised as dense [B, H, Sq, Sk] tensors (the reference semantics)",
        "memory O(B·H·Sq·Sk): for short sequences, tests and debugging",
    ))
