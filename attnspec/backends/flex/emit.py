"""The FlexAttention backend's template context: mask_mod and score_mod bodies, the tensors
they capture, how the BlockMask is made, and the `__init__` guard for overridden settings."""

from __future__ import annotations

import math
import re
from functools import cache

from attnspec.codegen.expr import P_AND, Code
from attnspec.codegen.flex_expr import FlexExprGenerator
from attnspec.codegen.text import (
    comment_lines,
    mask_and_bias_exprs,
    statement,
    tuple_literal,
    tuple_text,
)
from attnspec.ir import nodes as ir
from attnspec.ir.exprs import walk
from attnspec.lower.analysis import Band, KeyLength, KeyPadding, Segment


def emit(emitter, plan, lowered) -> dict:
    attn, analysis = emitter.attn, lowered.analysis
    mask_gen, score_gen = FlexExprGenerator(), FlexExprGenerator(dtype_name="score_dtype")
    mask_lines = _mask_lines(emitter, mask_gen) if (attn.masks or attn.patterns) else []
    score_lines = _score_lines(emitter, score_gen) if attn.pipeline else []
    block_lines, builder = _block_lines(emitter, analysis, plan.kind)
    captured = {**mask_gen.captured, **score_gen.captured}
    index_settings = sorted(_index_settings(attn))
    return {
        "kind": plan.kind,
        "mask_lines": mask_lines, "score_lines": score_lines,
        **_mask_mod_signature(mask_gen),
        "score_captured": list(score_gen.captured),
        "captured_tuple": tuple_text(list(score_gen.captured)),
        "captures": [f"{alias} = {_capture(alias, what)}" for alias, what in captured.items()
                     if not what.startswith("input ")],
        "tables": "{" + ", ".join(f"{name!r}: self.{name}" for name in plan.tables) + "}"
        if plan.tables else "",
        "spread": any(what.startswith("param ") for what in captured.values()),
        "block_lines": block_lines, "builder": builder,
        "summary": comment_lines(plan.notes),
        # Sinks read flex's log-sum-exp, which the FLASH kernel cannot differentiate; -inf
        # scores come out wrong on the FLASH kernel (measured): Triton runs both.
        "fast": not (attn.sinks or _infinite_score(attn)),
        # auto runs flex on small graphs only (the cost model's "flex-small")
        "small": "flex-small" in lowered.auto_cuda,
        "index_settings": tuple_literal(index_settings) if index_settings else "",
        "fallback": repr(_fallback(lowered)),
        "input_lines": _input_lines(emitter),
    }


def _input_lines(emitter) -> list[str]:
    """The prologue's input lines, each edges input first refused in its per-row form
    (`_flex_shared_edges`): mask_mod and score_mod read one table shared by the batch."""
    lines = []
    for text in emitter.input_lines():
        name, _, call = text.partition(" = ")
        if call.startswith("_edge_tables("):
            lines.append(f"_flex_shared_edges(type(self).__name__, {name!r}, {name})")
        lines.append(text)
    return lines


# What the mask_mod factory may read besides captured tensors, and what `_attend_flex` passes.
_MASK_SIZES = {"groups": "groups", "q_len": "Sq", "kv_len": "Sk"}


def _mask_mod_signature(gen: FlexExprGenerator) -> dict:
    """The factory's parameters and the call's arguments: only what the mask reads."""
    sizes = [name for name in _MASK_SIZES if name in gen.uses]
    captured = list(gen.captured)
    # q_pos: this rank's rows' global positions under context parallelism, else None.
    return {"mask_parameters": ", ".join(sizes + captured + ["q_pos=None"]),
            "mask_arguments": ", ".join([_MASK_SIZES[n] for n in sizes] + captured + ["q_pos"]),
            # Decoding's factory: positions come from the cache lengths, never from q_pos.
            "decode_mask_parameters": ", ".join(captured),
            "decode_mask_arguments": ", ".join(captured)}


def _fallback(lowered) -> str:
    """Where `auto` goes instead of flex when overrides void flex's index proofs."""
    from attnspec.backends.cost_model import EAGER, SDPA, SDPA_DENSE  # the registry imports this

    return SDPA_DENSE if SDPA in lowered.plans else EAGER


@cache
def _infinite_score(attn: ir.AttentionIR) -> bool:
    """Whether the score pipeline writes an infinite constant (e.g. `bias where(c, -inf, 0)`):
    flex's FLASH kernel gave wrong outputs and gradients for -inf scores on the H100
    (tests/corpus, benchmarks/gpu_edge_cases.py), so such specs run flex on Triton."""
    return any(isinstance(e, ir.Const) and isinstance(e.value, float) and
               not math.isfinite(e.value) for step in attn.pipeline for e in walk(step.expr))


def _index_settings(attn: ir.AttentionIR) -> set[str]:
    """Settings the checker's index and range proofs used: those in masks, biases and constant
    dims. Overriding one voids the proofs, which only eager and SDPA re-check at call time."""
    exprs = mask_and_bias_exprs(attn)
    exprs += [d.size for x in list(attn.inputs) + list(attn.params) for d in x.dims if d.size]
    return {n.name for e in exprs for n in walk(e) if isinstance(n, ir.SettingRef)}


def _first_mask(code: Code) -> str:
    """The first mask inside mask_mod: a bool tensor even when the mask is a constant
    (`mask false`, `mask heads > 2`): flex's vmap rejects a mask_mod returning a Python bool."""
    if not code.tensor:
        return f"mask = torch.full_like(kv_idx, {code.text}, dtype=torch.bool)"
    return f"mask = {code.text}"


def _new_score(code: Code) -> str:
    """A replaced score inside score_mod: a tensor in the score dtype. `score_dtype` (float32
    for half inputs), never `score.dtype`: flex traces score_mod with a score of the *input*
    dtype, so `.to(score.dtype)` would round every score to bfloat16 inside the kernel."""
    if not code.tensor:
        return f"torch.full_like(score, {code.text}, dtype=score_dtype)"
    return f"({code.text}).to(score_dtype)"


def _mask_lines(emitter, gen: FlexExprGenerator) -> list[str]:
    for n, expr in enumerate(emitter.attn.masks):
        statement(gen, expr, f"# mask, spec line {expr.span.line}", lambda c, first=n == 0: (
            _first_mask(c) if first else f"mask = mask & {gen.wrap(c, P_AND)}"))
    if emitter.attn.patterns:
        emitter.pattern_statements(gen)
        gen.lines.append("mask = mask & allowed" if emitter.attn.masks else "mask = allowed")
    return gen.lines


def _score_lines(emitter, gen: FlexExprGenerator) -> list[str]:
    emitter.pipeline_statements(gen, lambda code, expr: _new_score(code))
    return gen.lines


def _capture(alias: str, what: str) -> str:
    """The expression, in `_attend_flex`, of a tensor the mask/score mods capture."""
    kind, _, name = what.partition(" ")
    if kind == "param":  # `_spread` copies: one captured tensor per read, as flex needs
        return f"_spread(self.{name}.to(dtype))"
    if kind == "edges":
        source, field = name.split(".")
        return f"{source}.{field}"
    if kind == "setting":
        return f"self.{name}"
    if kind == "alibi":
        return "_alibi_tensor(self.heads, dtype, q.device)"
    return name


class _BuilderArgument:
    """Turns a value `_attend_flex` computes (a setting, an input) into a parameter `a<N>` of
    the BlockMask builder; literals (None, ints, bools) stay in the builder's text."""

    def __init__(self, arguments: list[str]):
        self.arguments = arguments

    def __call__(self, text: str) -> str:
        if text == "None" or re.fullmatch(r"-?[0-9]+", text):
            return text
        if text not in self.arguments:
            self.arguments.append(text)
        return f"a{self.arguments.index(text)}"


def _block_lines(emitter, analysis, kind: str) -> tuple[list[str], dict | None]:
    """`_attend_flex`'s lines that make `block_mask`, and for a structured mask the
    module-level builder of its tensors (compiled on CUDA, see `_structured_block_mask`)."""
    if kind == "decode":  # the decode method makes its own, from the row lengths
        return [], None
    if kind == "none":
        return ["block_mask = None"], None
    batch = "B" if analysis.reads_batch else "None"
    heads = "self.heads" if analysis.reads_head else "None"
    general = f"_general_block_mask(mask_mod, {batch}, {heads}, q.shape[2], Sk, q.device)"
    if kind == "general":
        return [f"block_mask = {general}"], None
    arguments: list[str] = []
    classes = [_block_class(emitter, item, _BuilderArgument(arguments)) for item in analysis.mask]
    per_batch = any(not isinstance(item, Band) for item in analysis.mask)
    call = (f"block_mask = _structured_block_mask(_block_lists_{emitter.attn.name}, mask_mod, "
            f"{'B' if per_batch else '1'}, Sq, Sk, q.device, {tuple_text(arguments)})")
    builder = {"params": "".join(f", a{n}" for n in range(len(arguments))), "classes": classes}
    # The builders tile rows 0..Sq-1; a rank's rows under context parallelism are other global
    # positions: create_block_mask over the mask_mod (which maps rows to positions) then.
    lines = ["if q_pos is None:", "    " + call, "else:  # context parallelism",
             f"    block_mask = {general}"]
    return lines, builder


def _block_class(emitter, item, arg) -> str:
    """The classification of one conjunct, in the builder's terms (`arg` turns a runtime
    value into a builder parameter)."""
    offset = emitter.offset
    if isinstance(item, Band):
        return (f"_band_blocks(q_len, kv_len, {arg(offset(item.lo))}, {arg(offset(item.hi))}, "
                f"{item.align == 'bottom_right'}, _FLEX_BLOCK, device)")
    if isinstance(item, Segment):
        return f"_segment_blocks({arg(item.input)}, {arg(item.input)}, _FLEX_BLOCK)"
    if isinstance(item, KeyLength):
        return f"_key_length_blocks({arg(item.input)}, q_len, kv_len, _FLEX_BLOCK)"
    if isinstance(item, KeyPadding):
        return f"_key_padding_blocks({arg(item.input)}, q_len, _FLEX_BLOCK)"
    band = item.band
    prefix = item.prefix_input or offset(item.prefix)
    return (f"_prefix_blocks({arg(prefix)}, q_len, kv_len, {arg(offset(band.lo))}, "
            f"{arg(offset(band.hi))}, {band.align == 'bottom_right'}, _FLEX_BLOCK, device)")
