"""The `scaled_dot_product_attention` backend.

SDPA takes no score transforms and no sink logit. Full and top-left causal attention run on
its own kernels (`is_causal` is top-left, exactly the language's `causal`); token-group patterns
run as one SDPA call per pattern over contiguous slices (the seed MixedAttention's parallel
mode); any other mask or additive bias is materialised as a dense attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.backends.base import Plan, Reason
from attnspec.ir import nodes as ir

NAME = "sdpa"
SUMMARY = "torch's scaled_dot_product_attention: fused kernels, or a dense mask"
# torch's scaled_dot_product_attention runs on every device, with a backward everywhere.
DEVICES = ("cpu", "cuda")
BACKWARD_DEVICES = DEVICES
# scaled_dot_product_attention returns no log-sum-exp: `return_lse=True` is refused
# (UnsupportedInputError) and `auto` runs such calls on a backend that has one.
RETURNS_LSE = False
# Plans that run on SDPA's own fused kernels, without a dense mask tensor.
NATIVE_KINDS = ("full", "causal", "patterns")


@dataclass(frozen=True)
class SdpaPlan(Plan):
    """`full`, `causal`, `causal_bottom_right`, `patterns` (one call per token-group pattern)
    or `dense` (a materialised mask; `bias`: with the additive bias in float32)."""

    bias: bool = False

    @property
    def native(self) -> bool:
        """Whether this plan runs on SDPA's fused kernels without a dense mask."""
        return self.kind in NATIVE_KINDS
DENSE_NOTE = ("dense attention mask materialised per call: memory O(B·H·Sq·Sk) — fine for "
              "short sequences; long ones want flex")


def supports(attn: ir.AttentionIR, analysis) -> list[Reason]:
    reasons = []
    for step in attn.pipeline:
        if step.kind == "assign":
            reasons.append(Reason("SDPA cannot transform scores (`score = ...`); only additive "
                                  "biases", step.span))
    if attn.sinks:
        reasons.append(Reason("SDPA has no sink logit (`sinks = true`)", attn.span))
    return reasons


def cp_supports(attn: ir.AttentionIR, analysis) -> list[Reason]:
    # Under context parallelism every plan but `full` runs with a dense mask of this rank's rows
    # at their global positions (is_causal and the per-pattern slices assume rows 0..Sq-1).
    return []


def lower(attn: ir.AttentionIR, analysis) -> SdpaPlan:
    has_bias = bool(attn.pipeline)
    if attn.kv_cache is not None:
        notes = ["decoding: the cache gathered into dense [B, kv_heads, Sk, *] keys (Sk the "
                 "longest row), each row's own length and the spec's mask as a dense mask "
                 "(one device sync for Sk)", DENSE_NOTE]
        if has_bias:
            notes.append("additive bias: computed in float32 (a half-precision mask would "
                         "round it)")
        return SdpaPlan(NAME, "decode", tuple(notes), bias=has_bias)
    if not attn.masks and not attn.patterns and not has_bias:
        return SdpaPlan(NAME, "full",
                        ("no mask: one SDPA call (flash / cuDNN / efficient kernels)",))
    if not attn.patterns and not has_bias and analysis.is_causal_top_left:
        return SdpaPlan(NAME, "causal", ("mask causal (top-left): SDPA is_causal=True",))
    if not attn.patterns and not has_bias and analysis.is_causal_bottom_right:
        return SdpaPlan(NAME, "causal_bottom_right", (
            "mask causal (bottom-right): is_causal=True when q_len == kv_len, else a dense mask",
            DENSE_NOTE))
    if attn.patterns and not attn.masks and not has_bias:
        return SdpaPlan(NAME, "patterns", (
            f"{len(attn.patterns)} token-group pattern(s): one SDPA call per pattern over "
            "contiguous query/key slices, no mask",))
    notes = ["mask and biases: " + "; ".join(analysis.describe() or ["general"]), DENSE_NOTE]
    if has_bias:
        notes.append("additive bias: computed in float32 (a half-precision mask would round it)")
    return SdpaPlan(NAME, "dense", tuple(notes), bias=has_bias)
