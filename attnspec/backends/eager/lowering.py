"""The eager backend: dense [B, H, Sq, Sk] masks and scores. It runs every spec."""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.backends.base import Plan, Reason
from attnspec.ir import nodes as ir

NAME = "eager"
SUMMARY = "dense [B, H, Sq, Sk] masks and scores: the reference semantics, any spec"
# Runs everywhere torch does, forward and backward: it is the reference semantics.
DEVICES = ("cpu", "cuda")
BACKWARD_DEVICES = DEVICES
# `forward(..., return_lse=True)`: the log-sum-exp of the dense softmax's own row sums.
RETURNS_LSE = True


@dataclass(frozen=True)
class EagerPlan(Plan):
    """The one eager plan: `dense` (mask and score as [B, H, Sq, Sk] tensors)."""


def supports(attn: ir.AttentionIR, analysis) -> list[Reason]:
    return []


def cp_supports(attn: ir.AttentionIR, analysis) -> list[Reason]:
    # Dense [B, H, local rows, S] tensors with the rows' global positions: every spec.
    return []


def lower(attn: ir.AttentionIR, analysis) -> EagerPlan:
    if attn.kv_cache is not None:
        return EagerPlan(NAME, "decode", (
            "decoding: the cache gathered into dense [B, kv_heads, Sk, *] keys, mask and score "
            "as dense [B, H, Sq, Sk] tensors at the queries' positions (the reference)",))
    return EagerPlan(NAME, "dense", (
        "mask and score materialised as dense [B, H, Sq, Sk] tensors (the reference semantics)",
        "memory O(B·H·Sq·Sk): for short sequences, tests and debugging",
    ))
