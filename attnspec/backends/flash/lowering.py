"""The flash-attn backend: one `flash_attn_func` / `flash_attn_varlen_func` call per attention.

flash-attn expresses exactly this structure, and this module accepts exactly it:

| spec | flash-attn |
|---|---|
| no mask | one sequence per batch row |
| a band `lo <= k - q - shift <= hi` (causal, windows) | `causal=True` / `window_size=(l, r)` |
| `same(doc)` (documents) | one varlen sequence per run of equal ids (`cu_seqlens`) |
| key padding / key lengths | keys unpadded per sequence, outputs padded back |
| a band with key padding | the same, when each row's valid keys are a suffix (left padding) |
| token-group patterns | one varlen call over (query run -> gathered keys) segments |
| `softcap(score, c)` first in the pipeline | `softcap=c` |
| `bias alibi` last in the pipeline | `alibi_slopes=` (flash-attn 2 only) |
| `sinks = true` | `learnable_sink=` (flash-attn 4 only) |
| GQA, `scale` | native (`softmax_scale=`) |

flash-attn aligns every window at the bottom-right corner of each varlen sequence
(`k <= q + seqlen_k - seqlen_q + right`). A band written top-left is shifted at call time by
`kv_len - q_len`; when that makes `left` or `right` negative the call is refused. Because the
alignment follows each sequence's own key count, a band meets unpadded keys exactly only when
every invalid key comes before every valid one (left padding): then the unpadded local index of
key `j` is `j - (kv_len - n)` and the bottom-right window over `n` keys is the band over
`kv_len` keys. Key padding is checked for that at call time; key lengths (`k < n[b]`, valid
keys a prefix) are right padding and are refused with a band.
Library-dependent limits (fp16/bf16, head dims, ALiBi on flash-attn 4, sinks on flash-attn 2,
CUDA only, document ids out of order) are checked at call time and raise
`UnsupportedInputError`; see `attnspec/runtime/flash.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnspec.backends.base import Plan, Reason
from attnspec.ir import nodes as ir
from attnspec.ir.consts import resolve_settings
from attnspec.lower.analysis import (
    Analysis,
    Band,
    Bias,
    KeyLength,
    KeyPadding,
    Patterns,
    Segment,
    Softcap,
)

NAME = "flash"
SUMMARY = "flash-attn 4 (else 2): dense and varlen calls for windows, documents, key padding"
# flash-attn kernels are CUDA only (sm80+ for flash-attn 2, sm90+ for flash-attn 4).
DEVICES = ("cuda",)
BACKWARD_DEVICES = DEVICES
# flash-attn returns softmax_lse; flash-attn 2's backward ignores its gradient (refused then).
RETURNS_LSE = True
EXPRESSIBLE = (Band, Segment, KeyLength, KeyPadding, Patterns)
MAX_HEAD_DIM = 256  # flash-attn 2 and flash-attn 4 on Hopper
HEAD_DIM_MULTIPLE = 8  # flash-attn 4 needs 16-byte aligned rows in fp16/bf16
MIN_HEAD_DIM = 16  # flash-attn 4: wrong dq at head_dim 8 (H100, differential fuzz)
# flash-attn 4's backward is wrong below this head dim (dq at 16; H200 matrix, issue 20): calls
# that need gradients there are refused at call time (the runtime's _FLASH4_BACKWARD_MIN_HEAD_DIM).
BACKWARD_MIN_HEAD_DIM = 32


@dataclass(frozen=True)
class FlashPlan(Plan):
    """`batched` (one `flash_attn_func` call), `varlen` (`flash_attn_varlen_func` over
    documents and/or unpadded keys) or `groups` (one `flash_attn_varlen_func` call whose
    sequences are the token-group patterns' (query run -> key groups) segments, listed in
    `notes`). `documents` names the ids input of `same(...)`."""

    documents: str | None = None
    # Why `auto` does not pick this plan yet: a flash path that has not run on the GPU matrix
    # (it runs on request, `backend="flash"`); "" once it has.
    unverified: str = ""


def supports(attn: ir.AttentionIR, analysis: Analysis) -> list[Reason]:
    """Every reason flash-attn cannot run `attn` (empty = it can, subject to call-time checks)."""
    if attn.kv_cache is not None:
        return _decode_reasons(analysis) + _head_dim_reasons(attn)
    return (_mask_reasons(analysis) + _score_reasons(analysis) + _head_dim_reasons(attn))


def cp_supports(attn: ir.AttentionIR, analysis: Analysis) -> list[Reason]:
    """Why flash-attn cannot run `attn` under context parallelism: its causal and window
    masks hold for rows 0..Sq-1 against keys 0..Sk-1, not for a rank's rows at other global
    positions; that needs one varlen call per contiguous chunk of rows (not built yet)."""
    return [Reason("the flash backend has no context parallelism yet (it needs one varlen call "
                   "per contiguous chunk of this rank's rows); use flex or sdpa", attn.span)]


def _decode_reasons(analysis: Analysis) -> list[Reason]:
    """Decoding reads the cache in place (`seqused_k`, `page_table`): flash-attn 4 then takes a
    causal mask or a window (aligned at each row's end, as absolute positions are), a softcap
    and sinks; nothing else."""
    reasons = [Reason(f"flash-attn decodes with a causal mask or a window only, not this mask "
                      f"({item.describe()})", getattr(item, "span", None))
               for item in analysis.mask if not isinstance(item, Band)]
    if analysis.band is not None:
        reasons += _band_reasons(analysis.band)
    steps = list(analysis.score)
    if steps and isinstance(steps[0], Softcap):
        steps = steps[1:]
    for step in steps:
        reasons.append(Reason(f"flash-attn 4 decodes with a softcap only in the score pipeline, "
                              f"not {step.describe()} (flex decodes it)",
                              step.span))
    return reasons


def _mask_reasons(analysis: Analysis) -> list[Reason]:
    reasons = [Reason(f"flash-attn expresses windows, documents and key padding only, not "
                      f"this mask ({item.describe()})", getattr(item, "span", None))
               for item in analysis.mask if not isinstance(item, EXPRESSIBLE)]
    if len(analysis.segments) > 1:
        reasons.append(Reason("flash-attn takes one document split (cu_seqlens); this spec "
                              "has several `same(...)` conjuncts", analysis.segments[1].span))
    band = analysis.band
    if band is not None and analysis.key_lengths:
        reasons.append(Reason(
            "flash-attn aligns windows and causal masks at the end of each sequence's own keys; "
            "key lengths keep a prefix of the keys (right padding), which moves that alignment "
            "(key padding whose valid keys are a suffix, `key_valid`, runs)",
            analysis.key_lengths[0].span))
    if band is not None:
        reasons += _band_reasons(band)
    if analysis.patterns is not None:
        reasons += _pattern_reasons(analysis)
    return reasons


def _pattern_reasons(analysis: Analysis) -> list[Reason]:
    """Token groups run as segments of gathered keys: every other mask item must survive the
    gather. Key padding does (each segment keeps its valid keys); positions do not."""
    # Patterns have no one statement: the item that clashes gives the span.
    return [Reason(f"flash-attn runs token-group patterns as segments of gathered keys, where "
                   f"key positions are not those of the sequence; it cannot add "
                   f"{item.describe()}", item.span)
            for item in analysis.mask if isinstance(item, (Band, Segment))]


def _band_reasons(band: Band) -> list[Reason]:
    """Literal offsets that no shift can make a flash-attn window (which holds the diagonal)."""
    if isinstance(band.lo, int) and band.lo > 0:
        return [Reason(f"flash-attn windows include the diagonal; this band starts {band.lo} "
                       "key(s) after it", band.span)]
    if isinstance(band.hi, int) and band.hi < 0:
        return [Reason(f"flash-attn windows include the diagonal; this band ends {-band.hi} "
                       "key(s) before it (e.g. `k < q`)", band.span)]
    return []


def _score_reasons(analysis: Analysis) -> list[Reason]:
    steps = list(analysis.score)
    if len(steps) == 2 and _is_alibi(steps[0]) and isinstance(steps[1], Softcap):
        return [Reason("flash-attn adds ALiBi after the softcap; this pipeline adds it before "
                       "(the two do not commute)", steps[0].span)]
    reasons = []
    if steps and isinstance(steps[0], Softcap):
        if analysis.key_padding or analysis.key_lengths:
            # Found by differential fuzzing on the H100 (tests/corpus/flash_softcap_key_len.attn)
            reasons.append(Reason("flash-attn 4 gives wrong gradients for a softcap over "
                                  "unpadded keys (key padding or key lengths)", steps[0].span))
        steps = steps[1:]
    if steps and _is_alibi(steps[-1]):
        alibi = steps.pop()
        if analysis.patterns is not None:
            reasons.append(Reason("flash-attn's ALiBi measures |q - k| within each segment; "
                                  "token-group segments gather keys, which moves it",
                                  alibi.span))
        elif analysis.key_padding or analysis.key_lengths:
            reasons.append(Reason("flash-attn's ALiBi measures |q - k| within each sequence; "
                                  "unpadded keys would move it", alibi.span))
    for step in steps:
        reasons.append(Reason(f"flash-attn takes a softcap first and ALiBi last, nothing else "
                              f"in the score pipeline ({step.describe()})", step.span))
    return reasons


def _head_dim_reasons(attn: ir.AttentionIR) -> list[Reason]:
    values = resolve_settings(attn)
    reasons = []
    for name in ("head_dim", "value_dim"):
        size = values.get(name)
        if isinstance(size, int) and (size % HEAD_DIM_MULTIPLE or
                                      not MIN_HEAD_DIM <= size <= MAX_HEAD_DIM):
            setting = attn.setting(name)
            reasons.append(Reason(f"flash-attn needs {name} a multiple of {HEAD_DIM_MULTIPLE} "
                                  f"from {MIN_HEAD_DIM} to {MAX_HEAD_DIM}, got {size}",
                                  setting.span if setting is not None else attn.span))
    return reasons


# What each plan kind is, for `attnspec explain` (the first note of the plan).
KIND_NOTES = {
    "batched": "one flash_attn_func call on [B, S, heads, dim] views, no copies",
    "varlen": "one flash_attn_varlen_func call: layout [total, heads, dim] (a copy when "
              "B > 1), int32 cu_seqlens",
    "groups": "one flash_attn_varlen_func call for every token-group pattern: each "
              "segment is a run of query groups (in place: the runs tile the sequence) "
              "and its pattern's key groups, gathered into one contiguous key tensor "
              "(one index_select of k and v); cu_seqlens built from the group sizes on "
              "the host, no device-to-host sync",
}


def lower(attn: ir.AttentionIR, analysis: Analysis) -> FlashPlan:
    """The plan: what each recognised piece becomes in the flash-attn call."""
    if attn.kv_cache is not None:
        return _lower_decode(attn, analysis)
    kind = _kind(analysis)
    notes = [KIND_NOTES[kind] + " (flash-attn 4 on sm90+, else flash-attn 2)"]
    notes += _groups_notes(analysis) if kind == "groups" else _sequence_notes(analysis)
    if analysis.softcap is not None:
        notes.append("softcap -> softcap=")
    if any(_is_alibi(b) for b in analysis.biases):
        notes.append("alibi -> alibi_slopes= (flash-attn 2; flash-attn 4 has no ALiBi argument "
                     "and refuses the call)")
    if attn.sinks:
        notes.append("sinks -> learnable_sink= (flash-attn 4; flash-attn 2 refuses the call)")
    notes.append("fp16/bf16 only: float32 inputs are refused (cast them, or use another "
                 "backend); CUDA only")
    notes += _backward_notes(attn)
    unverified = _unverified(kind, analysis)
    if unverified:
        notes.append(f"auto does not pick flash here: {unverified} (backend='flash' runs it "
                     "on request)")
    documents = analysis.segments[0].input if analysis.segments else None
    return FlashPlan(NAME, kind, tuple(notes), documents=documents, unverified=unverified)


def _unverified(kind: str, analysis: Analysis) -> str:
    """Why `auto` does not take a flash path built without a GPU (issue 15), or "": no kernel
    is picked before the GPU verification matrix has checked it on flash-attn 4, nor before a
    benchmark has shown it faster than what `auto` runs instead."""
    if kind == "groups":
        if analysis.key_padding or analysis.key_lengths:
            return ("the GPU matrix has not run token groups with padded keys as one varlen "
                    "call")
        return ("token groups as one varlen call passed the GPU matrix (2026-12-07) but are "
                "not yet measured against flex (benchmarks/gpu_tokengroups.py)")
    if analysis.band is not None and analysis.key_padding:
        return "the GPU matrix has not run a band with left-padded keys (seqused_k)"
    return ""


def _kind(analysis: Analysis) -> str:
    if analysis.patterns is not None:
        return "groups"
    keys = analysis.key_padding + analysis.key_lengths
    return "varlen" if analysis.segments or keys else "batched"


def _groups_notes(analysis: Analysis) -> list[str]:
    notes = [f"segment {text}" for text in _segment_texts(analysis.patterns)]
    if analysis.key_padding or analysis.key_lengths:
        notes.append("key padding in segments -> each segment's valid keys sorted first "
                     "(on the device), seqused_k = their count: exact (no band), no dense mask")
    return notes


def _sequence_notes(analysis: Analysis) -> list[str]:
    """Documents, unpadded keys and the band of a `batched` or `varlen` plan."""
    notes = []
    keys = analysis.key_padding + analysis.key_lengths
    if analysis.segments:
        name = analysis.segments[0].input
        notes.append(f"same({name}) -> one varlen sequence per run of equal ids; `{name}` must "
                     "be non-decreasing along each row, else the call raises "
                     "UnsupportedInputError (flex runs any ids)")
    if keys:
        notes.append("key padding -> keys unpadded per sequence, outputs padded back; rows "
                     "with no key give 0 (" + "; ".join(k.describe() for k in keys) + ")")
    if analysis.band is not None:
        notes.append(_band_note(analysis.band))
        if analysis.key_padding:
            notes.append("band with key padding: exact when every row's valid keys are a "
                         "suffix (left padding), checked at call time (one host sync with the "
                         "unpadding); other padding raises UnsupportedInputError")
    return notes


def _segment_texts(patterns: Patterns) -> tuple[str, ...]:
    """One line per segment of a batch row: a run of adjacent query groups of one pattern ->
    that pattern's key groups (adjacent groups read as one run, `a..b`).

    Why gather keys rather than one segment per key run merged through the log-sum-exp: one
    varlen call cannot hold the same queries twice (their dq would race), so a merge needs one
    call per key run plus a combine kernel and its backward; the gather is one copy of the keys
    a pattern reads (1/8 of k and v for the suite's Anchor) and keeps a single kernel launch.
    """
    owner = {g: n for n, (queries, _) in enumerate(patterns.rules) for g in queries}
    order = [name for name, _ in patterns.groups]
    runs: list[list[str]] = []
    for name in order:
        if runs and owner[runs[-1][-1]] == owner[name]:
            runs[-1].append(name)
        else:
            runs.append([name])
    texts = []
    for run in runs:
        keys = _key_runs(order, patterns.rules[owner[run[0]]][1])
        texts.append(f"q {_run_text(run)} -> k {', '.join(_run_text(r) for r in keys)}")
    return tuple(texts)


def _key_runs(order: list[str], keys: tuple[str, ...]) -> list[list[str]]:
    runs: list[list[str]] = []
    for name in (g for g in order if g in keys):
        if runs and order.index(runs[-1][-1]) + 1 == order.index(name):
            runs[-1].append(name)
        else:
            runs.append([name])
    return runs


def _run_text(run: list[str]) -> str:
    return run[0] if len(run) == 1 else f"{run[0]}..{run[-1]}"


def _lower_decode(attn: ir.AttentionIR, analysis: Analysis) -> FlashPlan:
    paged = attn.kv_cache.paged
    notes = ["decoding: one flash_attn_varlen_func call of flash-attn 4 reading the cache in "
             "place: seqused_k = len + q_len" + (", page_table = the page table (pages of 128 "
                                                   "tokens load by TMA, others are slower)"
                                                   if paged else "") +
             "; no copy, no device sync"]
    if analysis.band is not None:
        notes.append(f"{analysis.band.describe()} -> window_size=(-lo, hi) / causal=True: "
                     "flash-attn aligns each row at its own end, where absolute positions are")
    if analysis.softcap is not None:
        notes.append("softcap -> softcap=")
    if attn.sinks:
        notes.append("sinks -> learnable_sink=")
    notes.append("fp16/bf16, inference only, flash-attn 4 only (flash-attn 2 is refused at "
                 "call time)")
    return FlashPlan(NAME, "decode_paged" if paged else "decode", tuple(notes))


def _backward_notes(attn: ir.AttentionIR) -> list[str]:
    values = resolve_settings(attn)
    small = [f"{name} {values[name]}" for name in ("head_dim", "value_dim")
             if isinstance(values.get(name), int) and values[name] < BACKWARD_MIN_HEAD_DIM]
    if not small:
        return []
    return [f"training refused at {', '.join(small)}: flash-attn 4's backward is wrong below "
            f"head dim {BACKWARD_MIN_HEAD_DIM} (H200 matrix); inference runs, `auto` trains on "
            "the next backend"]


def _band_note(band: Band) -> str:
    if band.align == "bottom_right":
        where = "bottom-right, as flash-attn aligns"
    else:
        where = ("top-left: shifted by kv_len - q_len at call time, refused when that makes "
                 "left or right negative")
    return f"{band.describe()} -> window_size=(left, right) / causal=True ({where})"


def _is_alibi(step) -> bool:
    return isinstance(step, Bias) and step.kind == "alibi"
