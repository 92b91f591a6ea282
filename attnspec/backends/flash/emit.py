"""The flash-attn backend's template context: the arguments of `_flash_attend`."""

from __future__ import annotations

from attnspec.codegen.expr import ExprGenerator, literal
from attnspec.codegen.text import comment_lines


def emit(emitter, plan, lowered) -> dict:
    """`_flash_attend`'s arguments for this attention (documents, unpadded keys, window,
    softcap, ALiBi slopes) as code text."""
    analysis = lowered.analysis
    band = analysis.band
    return {
        "kind": plan.kind, "summary": comment_lines(plan.notes),
        "documents": plan.documents or "None",
        "documents_str": repr(plan.documents),
        "key_valid": emitter.key_valid(),
        "band": "None" if band is None else (
            f"({emitter.offset(band.lo)}, {emitter.offset(band.hi)}, "
            f"{band.align == 'bottom_right'})"),
        "decode_band": "None" if band is None else (
            f"({emitter.offset(band.lo)}, {emitter.offset(band.hi)})"),
        "softcap": _softcap(analysis.softcap),
        "alibi": _alibi(analysis.biases),
    }


def _softcap(cap) -> str:
    """flash-attn's `softcap=`: the pipeline's one softcap (flash supports allows one)."""
    if cap is None:
        return "None"
    return literal(float(cap)) if isinstance(cap, (int, float)) else \
        f"abs(float({ExprGenerator().constant(cap).text}))"


def _alibi(biases) -> str:
    """flash-attn 2 adds -slope * |q - k|: slopes scaled by -scale give scale * slope."""
    alibi = [b for b in biases if b.kind == "alibi"]
    if not alibi:
        return "None"
    return f"{literal(-alibi[0].scale)} * slopes"
