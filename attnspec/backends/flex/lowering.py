"""The FlexAttention backend: `mask_mod` / `score_mod` generated from the IR.

Masks made only of recognised structure (bands, segments, key lengths, key padding, prefixes)
get a BlockMask built directly from block bounds in O(blocks) (`BlockMask.from_kv_blocks`);
any other mask goes through `create_block_mask` with the real batch and heads when it reads
`b` or `h`. Captured tensors (inputs, params, edge tables) are arguments of one compiled
function, so new values never recompile. Sinks use the log-sum-exp flex returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.backends.base import Plan, Reason
from attnspec.ir import nodes as ir
from attnspec.ir.exprs import walk
from attnspec.lower.analysis import (
    Analysis,
    Band,
    KeyLength,
    KeyPadding,
    Patterns,
    PrefixOrBand,
    Segment,
)
from attnspec.lower.plan import explicit_dropout

NAME = "flex"
SUMMARY = "FlexAttention: mask_mod/score_mod with a BlockMask (Triton, or flex's FLASH kernel)"
# FlexAttention runs uncompiled on CPU, forward only (torch has no CPU backward for it);
# compiled on CUDA, forward and backward.
DEVICES = ("cpu", "cuda")
BACKWARD_DEVICES = ("cuda",)
# flex_attention returns its log-sum-exp (`AuxRequest(lse=True)`), differentiable on CUDA.
RETURNS_LSE = True
STRUCTURED = (Band, Segment, KeyLength, KeyPadding, PrefixOrBand)


def supports(attn: ir.AttentionIR, analysis: Analysis) -> list[Reason]:
    # A declared `dropout` is no reason: FlexAttention has no attention dropout, but it runs
    # every call that applies none (eval, or dropout = 0); the method refuses the others at call
    # time with UnsupportedInputError, which `auto` steps past.
    return []


def cp_supports(attn: ir.AttentionIR, analysis: Analysis) -> list[Reason]:
    # mask_mod and score_mod map the local query index to its global position (torch's own
    # flex CP maps only mask_mod: a score_mod reading positions is wrong there); the BlockMask
    # comes from create_block_mask over the mapped mask_mod.
    return []


def block_mask_kind(analysis: Analysis) -> str:
    """"none", "structured" (every conjunct recognised) or "general" (create_block_mask)."""
    if not analysis.mask:
        return "none"
    if all(isinstance(item, STRUCTURED) for item in analysis.mask):
        return "structured"
    return "general"


@dataclass(frozen=True)
class FlexPlan(Plan):
    """`kind` is how the BlockMask is made: `none`, `structured` (from block bounds, O(blocks))
    or `general` (`create_block_mask`)."""

    score_mod: bool = False
    sinks: bool = False
    # The score_mod reads learned params: a half-precision call that trains them is refused at
    # call time (the runtime's _flex_check_table_gradients), so `auto` keeps a fallback.
    tables: tuple[str, ...] = ()
    # The spec declares `dropout`: training calls that apply it are refused at call time.
    dropout: bool = False


def lower(attn: ir.AttentionIR, analysis: Analysis) -> FlexPlan:
    kind = "decode" if attn.kv_cache is not None else block_mask_kind(analysis)
    notes = [{
        "decode": "decoding: mask_mod at the queries' positions (len[b] + i) AND each row's "
                  "length; BlockMask from the lengths in O(B·blocks), no device sync; a "
                  "contiguous cache is read in place, a paged one gathered densely (flex has no "
                  "page table)",
        "none": "no mask: flex_attention without a BlockMask",
        "structured": "mask -> BlockMask from block bounds in O(blocks): "
                      + "; ".join(item.describe() for item in analysis.mask),
        "general": "mask -> mask_mod; BlockMask from create_block_mask"
                   + (" with real B/H (the mask reads b or h)"
                      if analysis.reads_batch or analysis.reads_head else ""),
    }[kind]]
    if attn.pipeline:
        notes.append("score -> score_mod: " + "; ".join(s.describe() for s in analysis.score))
    if attn.sinks:
        notes.append("sinks -> out * sigmoid(lse - sink) from flex's log-sum-exp")
    notes.append("compiled on CUDA (forward and backward); on CPU flex runs uncompiled, "
                 "forward only")
    if any(isinstance(item, Patterns) for item in analysis.mask):
        notes.append("token groups: group bounds are fixed per call")
    tables = _score_tables(attn)
    if tables:
        notes.append(f"learned tables ({', '.join(tables)}): trained in float32 only; a "
                     "half-precision call that needs their gradients is refused (flex's backward "
                     "rounds score gradients to the input dtype; measured beyond tolerance)")
    return FlexPlan(NAME, kind, tuple(notes), score_mod=bool(attn.pipeline), sinks=attn.sinks,
                    tables=tables, dropout=explicit_dropout(attn) is not None)


def _score_tables(attn: ir.AttentionIR) -> tuple[str, ...]:
    """The params the score pipeline reads, in declaration order."""
    read = {n.name for step in attn.pipeline for n in walk(step.expr)
            if isinstance(n, ir.ParamRef)}
    return tuple(p.name for p in attn.params if p.name in read)
