"""`attnspec show`: what an attention attends, as numbers, terminal text and (with matplotlib,
in `attnspec.plot`) pictures.

Everything comes from the eager interpreter (`attnspec.eager`), never from a lowering: the mask
is `eager`'s combined mask and the bias its score pipeline, evaluated on windows of (query, key)
positions so that long sequences never allocate `[Sq, Sk]` at once. A picture is one batch row
and one head:

- `mask_picture` counts kept entries per picture cell (a tile of queries × keys) and per
  `block`×`block` tile, which it classes as full / partial / empty (FlexAttention's BlockMask
  classes: partial blocks run the mask, empty ones are skipped);
- `bias_picture` evaluates the score pipeline with q·k = 0 at one position per cell: the
  `offset` (what the biases and score transforms add) and, for `score = ...` steps, the `gain`
  d score / d(scale·q·k) at 0 (for `score = score * gate` the offset alone is 0 everywhere);
- `attention_weights` runs the interpreter on real tensors and returns the probabilities.

Example:
    >>> import attnspec
    >>> attn = attnspec.build("attention A {\\n heads = 1\\n head_dim = 8\\n mask causal\\n}")
    >>> pic = mask_picture(attn.attentions[0], 256, 256, block=128)
    >>> pic.block_counts(), pic.density
    ({'full': 1, 'partial': 2, 'empty': 1}, 0.501953125)
    >>> print(render_mask(pic, ascii=True).splitlines()[3][:12])
       0 #......
"""

from __future__ import annotations

import inspect
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial

import torch
from torch import Tensor

from attnspec import eager
from attnspec.ir import nodes as ir
from attnspec.ir.consts import eval_const, resolve_settings

__all__ = ["MaskPicture", "BiasPicture", "WindowInterpreter", "mask_picture", "bias_picture",
           "attention_weights", "render_mask", "render_weights", "show_inputs", "show_lengths",
           "random_state", "random_weights", "text_cell", "cell_means", "run_cli"]

# (query, key) entries evaluated at once: 8 MB int64 temporaries. Smaller chunks pay the
# per-operation overhead more often, larger ones leave the cache (both measured slower).
CHUNK = 1 << 20
PICTURE_CELLS = 512  # most cells per axis of a picture (PNG); longer sequences are tiled
MAX_EDGE_ENTRIES = 1 << 24  # the interpreter's edge tables are dense [Sq, Sk] int64 tensors
MAX_WEIGHT_ENTRIES = 1 << 26  # `show --weights`: the interpreter makes [B, H, Sq, Sk]
DEFAULT_LEN, DEFAULT_WEIGHTS_LEN, OPEN_GROUP = 1024, 128, 64
_CHARS = {"unicode": ("█", "▒", "·", "│", "─", "┼"), "ascii": ("#", ":", ".", "|", "-", "+")}
_RAMPS = {"unicode": "▁▂▃▄▅▆▇█", "ascii": ".:-=+*#%@"}
QK = "q\\k"  # the corner label of the axes


# --- pictures as data --------------------------------------------------------------------------
@dataclass
class MaskPicture:
    """Kept-entry counts of one attention's mask for one batch row and one head.

    `cells[i, j]` counts kept entries in the tile of queries `i*q_cell ..` and keys
    `j*k_cell ..` (edge tiles are smaller); `blocks` the same for `block`×`block` tiles."""

    attention: str
    q_len: int
    kv_len: int
    batch_index: int
    head: int
    q_cell: int
    k_cell: int
    cells: Tensor  # int64 [ceil(Sq / q_cell), ceil(Sk / k_cell)]
    block: int
    blocks: Tensor  # int64 [ceil(Sq / block), ceil(Sk / block)]
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, end)

    @property
    def fraction(self) -> Tensor:
        """float64 [rows, cols]: the kept fraction of each cell."""
        return self.cells / _areas(self.q_len, self.kv_len, self.q_cell, self.k_cell)

    @property
    def block_classes(self) -> Tensor:
        """int8 [q blocks, k blocks]: 2 full, 1 partial, 0 empty."""
        area = _areas(self.q_len, self.kv_len, self.block, self.block)
        return (self.blocks > 0).to(torch.int8) + (self.blocks == area).to(torch.int8)

    def block_counts(self) -> dict[str, int]:
        classes = self.block_classes
        return {name: int((classes == c).sum()) for name, c in
                (("full", 2), ("partial", 1), ("empty", 0))}

    @property
    def density(self) -> float:
        """The fraction of the `q_len * kv_len` entries kept."""
        return float(self.cells.sum()) / (self.q_len * self.kv_len)

    def as_dict(self) -> dict:
        """JSON-ready summary: counts, density, block classes as text rows (F, P, .)."""
        rows = ["".join(".PF"[c] for c in row) for row in self.block_classes.tolist()]
        return {"attention": self.attention, "q_len": self.q_len, "kv_len": self.kv_len,
                "batch_index": self.batch_index, "head": self.head, "block": self.block,
                "blocks": self.block_counts(), "block_classes": rows, "density": self.density,
                "groups": {n: list(span) for n, span in self.groups.items()},
                "cell": [self.q_cell, self.k_cell], "cell_fraction": _rounded(self.fraction)}


@dataclass
class BiasPicture:
    """The score pipeline at q·k = 0 for one batch row and head, at the positions `qs` × `ks`
    (one per picture cell). Masked entries are NaN. `gain` (None without `score = ...` steps)
    is d score / d(scale·q·k) at 0."""

    attention: str
    head: int
    qs: Tensor  # int64 [rows]: the query position of each row
    ks: Tensor  # int64 [cols]
    offset: Tensor  # float64 [rows, cols]
    gain: Tensor | None
    steps: int  # pipeline steps (0: nothing added)

    def stats(self) -> dict:
        """min / max / mean of `offset` (and `gain`) over the kept sampled entries."""
        out = {"head": self.head, "steps": self.steps, "offset": _stats(self.offset)}
        if self.gain is not None:
            out["gain"] = _stats(self.gain)
        return out


def _areas(q_len: int, kv_len: int, q_size: int, k_size: int) -> Tensor:
    """float64 [ceil(Sq/q_size), ceil(Sk/k_size)]: entries per tile (edge tiles are smaller)."""
    return torch.outer(_sizes(q_len, q_size), _sizes(kv_len, k_size))


def _sizes(length: int, size: int) -> Tensor:
    starts = torch.arange(0, length, size, dtype=torch.float64)
    return torch.clamp(length - starts, max=size)


def _stats(values: Tensor) -> dict | None:
    kept = values[~values.isnan()]
    if not kept.numel():
        return None
    return {"min": float(kept.min()), "max": float(kept.max()), "mean": float(kept.mean())}


def _rounded(t: Tensor) -> list:
    return [[round(float(x), 4) for x in row] for row in t.tolist()]


# --- evaluation on windows ---------------------------------------------------------------------
class WindowInterpreter(eager.ExprInterpreter):
    """The interpreter with q and k ranging over given positions (`qs`, `ks`) and b, h fixed to
    one batch row and one head: expressions give `[1, 1, len(qs), len(ks)]`.

    >>> import attnspec
    >>> attn = attnspec.build("attention A {\\n heads = 1\\n head_dim = 4\\n mask causal\\n}")
    >>> frame = make_frame(attn.attentions[0], 1, 9, 9)
    >>> window_mask(frame, torch.tensor([4, 5]), torch.tensor([5]), 0, 0).tolist()
    [[False], [True]]
    """

    def __init__(self, frame: eager.Frame, score: Tensor | None = None, *, qs: Tensor,
                 ks: Tensor, batch_index: int, head: int):
        super().__init__(frame, score)
        self.qs, self.ks = qs, ks
        self.grids = {"b": torch.tensor(batch_index).view(1, 1, 1, 1),
                      "h": torch.tensor(head).view(1, 1, 1, 1),
                      "q": qs.view(1, 1, -1, 1), "k": ks.view(1, 1, 1, -1)}

    def eval_edge(self, node: ir.EdgeField) -> Tensor:
        table = super().eval_edge(node)  # dense [1, 1, Sq, Sk]
        return table[:, :, self.qs[:, None], self.ks[None, :]]


def make_frame(attn: ir.AttentionIR, batch: int, q_len: int, kv_len: int,
               inputs: Mapping[str, Tensor] | None = None,
               sizes: Mapping[str, int] | None = None,
               state: Mapping[str, Tensor] | None = None,
               overrides: Mapping[str, float] | None = None) -> eager.Frame:
    """The interpreter's call-time frame (float64, CPU), inputs checked as a call checks them."""
    settings = resolve_settings(attn, overrides)
    eager._check_settings(settings)
    if any(d.dtype == "edges" for d in attn.inputs) and q_len * kv_len > MAX_EDGE_ENTRIES:
        raise ValueError(f"edges inputs are dense [q_len, kv_len] tables in the interpreter: "
                         f"q_len * kv_len must be at most {MAX_EDGE_ENTRIES}")
    return eager._make_frame(attn, settings, torch.float64, torch.device("cpu"), batch, q_len,
                             kv_len, state, inputs, sizes, params_required=False)


def window_mask(frame: eager.Frame, qs: Tensor, ks: Tensor, batch_index: int,
                head: int) -> Tensor:
    """bool [len(qs), len(ks)]: the combined mask at those positions (true = attend)."""
    interp = WindowInterpreter(frame, qs=qs, ks=ks, batch_index=batch_index, head=head)
    mask = eager._combined_mask(interp)  # the interpreter's own mask, not a re-implementation
    if mask is None:
        return torch.ones(len(qs), len(ks), dtype=torch.bool)
    return torch.broadcast_to(mask, (1, 1, len(qs), len(ks)))[0, 0]


def _check_window(frame: eager.Frame, batch_index: int, head: int) -> None:
    if not 0 <= head < frame.heads:
        raise ValueError(f"head must be in [0, {frame.heads}), got {head}")
    if not 0 <= batch_index < frame.batch:
        raise ValueError(f"batch_index must be in [0, {frame.batch}), got {batch_index}")


def _column_sums(mask: Tensor, size: int) -> Tensor:
    """int64 [rows, ceil(Sk / size)]: kept entries per `size` consecutive keys."""
    rows, cols = mask.shape
    whole = cols // size
    # Sum the bytes of the bool tensor: no padded copy of the mask, only of the short tail.
    data = mask.view(torch.uint8)
    sums = data[:, : whole * size].reshape(rows, whole, size).sum(-1, dtype=torch.int64)
    if cols % size:
        tail = data[:, whole * size:].sum(-1, dtype=torch.int64, keepdim=True)
        sums = torch.cat([sums, tail], dim=1)
    return sums


def _tile_counts(frame: eager.Frame, batch_index: int, head: int,
                 tiles: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Kept entries per tile for each (queries, keys) tile size, evaluating the mask on about
    CHUNK entries at a time (whole rows of keys)."""
    q_len, kv_len = frame.q_len, frame.kv_len
    counts = [torch.zeros(-(-q_len // tq), -(-kv_len // tk), dtype=torch.int64)
              for tq, tk in tiles]
    ks = torch.arange(kv_len)
    step = max(1, CHUNK // kv_len)
    for start in range(0, q_len, step):
        qs = torch.arange(start, min(q_len, start + step))
        mask = window_mask(frame, qs, ks, batch_index, head)
        for acc, (tq, tk) in zip(counts, tiles):
            acc.index_add_(0, qs // tq, _column_sums(mask, tk))
    return counts


def mask_picture(attn: ir.AttentionIR, q_len: int, kv_len: int, *,
                 cell: int | tuple[int, int] = 1, block: int = 128, batch_index: int = 0,
                 head: int = 0,
                 inputs: Mapping[str, Tensor] | None = None,
                 sizes: Mapping[str, int] | None = None,
                 state: Mapping[str, Tensor] | None = None,
                 overrides: Mapping[str, float] | None = None) -> MaskPicture:
    """Count the mask of `attn` per picture tile (`cell` positions square, or (queries, keys))
    and per `block`×`block` block, for batch row `batch_index` and head `head`. `inputs` are
    call-time inputs (as a module takes them), `sizes` `*` group sizes, `state` params (only
    needed when a mask reads one).

    >>> import attnspec
    >>> attn = attnspec.build("attention A {\\n heads = 1\\n head_dim = 8\\n mask causal\\n}")
    >>> mask_picture(attn.attentions[0], 4, 4, cell=2, block=2).cells.tolist()
    [[3, 0], [4, 3]]
    """
    q_cell, k_cell = (cell, cell) if isinstance(cell, int) else cell
    if min(q_cell, k_cell, block) < 1:
        raise ValueError(f"cell and block sizes must be positive, got {cell} and {block}")
    batch = _batch_of(attn, inputs, batch_index)
    frame = make_frame(attn, batch, q_len, kv_len, inputs, sizes, state, overrides)
    _check_window(frame, batch_index, head)
    cells, blocks = _tile_counts(frame, batch_index, head, ((q_cell, k_cell), (block, block)))
    return MaskPicture(attn.name, q_len, kv_len, batch_index, head, q_cell, k_cell, cells,
                       block, blocks, dict(frame.groups))


def _batch_of(attn: ir.AttentionIR, inputs: Mapping[str, Tensor] | None,
              batch_index: int) -> int:
    """The batch size of the inputs (the rows of any input declared `[batch, ...]`; the frame
    checks they agree), else just enough rows for `batch_index`."""
    inputs = inputs or {}
    rows = [torch.as_tensor(inputs[d.name]).shape[0] for d in attn.inputs
            if d.dims[:1] and d.dims[0].kind == "batch" and d.name in inputs
            and torch.as_tensor(inputs[d.name]).dim()]
    return max(rows, default=batch_index + 1)


def cell_centres(length: int, cell: int) -> Tensor:
    """int64: one position per tile of `cell` positions, its middle (clamped to the length)."""
    return torch.clamp(torch.arange(0, length, cell) + cell // 2, max=length - 1)


def bias_picture(attn: ir.AttentionIR, q_len: int, kv_len: int, *,
                 cell: int | tuple[int, int] = 1, batch_index: int = 0, head: int = 0,
                 inputs: Mapping[str, Tensor] | None = None,
                 sizes: Mapping[str, int] | None = None,
                 state: Mapping[str, Tensor] | None = None,
                 overrides: Mapping[str, float] | None = None) -> BiasPicture:
    """The score pipeline of `attn` with q·k = 0 at one position per `cell` tile: `offset` =
    pipeline(0) and, when a `score = ...` step exists, `gain` = d pipeline / d score at 0
    (autograd through the interpreter). Params the pipeline reads must be in `state`.

    >>> import attnspec
    >>> attn = attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n"
    ...                       " bias alibi\\n}").attentions[0]
    >>> bias_picture(attn, 3, 3, head=0).offset.tolist()
    [[0.0, nan, nan], [-0.0625, 0.0, nan], [-0.125, -0.0625, 0.0]]
    """
    batch = _batch_of(attn, inputs, batch_index)
    frame = make_frame(attn, batch, q_len, kv_len, inputs, sizes, state, overrides)
    _check_window(frame, batch_index, head)
    q_cell, k_cell = (cell, cell) if isinstance(cell, int) else cell
    qs, ks = cell_centres(q_len, q_cell), cell_centres(kv_len, k_cell)
    kept = window_mask(frame, qs, ks, batch_index, head)
    gain_wanted = any(step.kind == "assign" for step in attn.pipeline)
    score = torch.zeros(1, 1, len(qs), len(ks), dtype=torch.float64,
                        requires_grad=gain_wanted)
    window = partial(WindowInterpreter, qs=qs, ks=ks, batch_index=batch_index, head=head)
    with torch.enable_grad():
        out = torch.broadcast_to(eager.score_pipeline(frame, score, window), score.shape)
        gain = _gain(out, score) if gain_wanted else None
    nan = torch.tensor(math.nan, dtype=torch.float64)
    offset = torch.where(kept, out.detach()[0, 0], nan)
    if gain is not None:
        gain = torch.where(kept, gain, nan)
    return BiasPicture(attn.name, head, qs, ks, offset, gain, len(attn.pipeline))


def _gain(out: Tensor, score: Tensor) -> Tensor:
    """d out / d score, elementwise (every step is elementwise in the score); 0 where the
    pipeline ends with a `score = ...` that does not read the score."""
    if not out.requires_grad:
        return torch.zeros(score.shape[2:], dtype=torch.float64)
    (grad,) = torch.autograd.grad(out.sum(), score, allow_unused=True)
    return torch.zeros(score.shape[2:], dtype=torch.float64) if grad is None else grad[0, 0]


# --- inputs for a picture ----------------------------------------------------------------------
def show_lengths(attn: ir.AttentionIR, q_len: int | None, kv_len: int | None,
                 sizes: Mapping[str, int] | None = None,
                 weights: bool = False) -> tuple[int, int, dict[str, int]]:
    """(q_len, kv_len, sizes) for a picture. Without token groups the defaults are 1024 (128
    for weights, which are dense) and kv_len = q_len. With groups the length is their total:
    each `*` group not in `sizes` gets 64 positions, the last one what `q_len` leaves."""
    sizes = dict(sizes or {})
    if attn.groups:
        open_groups = [g.name for g in attn.groups if g.size is None and g.name not in sizes]
        if q_len is not None and open_groups:
            open_groups = open_groups[:-1]  # the interpreter gives the last one the rest
        sizes.update({name: OPEN_GROUP for name in open_groups})
        total = sum(sizes.get(g.name, g.size or 0) for g in attn.groups)
        q_len = total if q_len is None else q_len
    else:
        q_len = q_len if q_len is not None else (DEFAULT_WEIGHTS_LEN if weights else DEFAULT_LEN)
    kv_len = q_len if kv_len is None else kv_len
    if q_len < 1 or kv_len < 1:
        raise ValueError(f"lengths must be positive, got q_len={q_len}, kv_len={kv_len}")
    if attn.mode == "layer" and not attn.cross and kv_len != q_len:
        raise ValueError(f"{attn.name} is a self-attention layer: kv_len must equal q_len")
    return q_len, kv_len, sizes


def show_inputs(attn: ir.AttentionIR, batch: int, q_len: int, kv_len: int, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[tuple, dict]:
    """(args, inputs): random tensors and call-time inputs as `attnspec bench` makes them
    (documents, key padding, lengths, edges), documents 1/8 to 1/2 of the length."""
    from attnspec.bench import bench_inputs

    gen = torch.Generator().manual_seed(seed)
    documents = (max(1, q_len // 8), max(1, q_len // 2))
    args, inputs, _ = bench_inputs(attn, batch, q_len, kv_len, dtype, "cpu", gen, documents)
    return args, inputs


def random_state(attn: ir.AttentionIR, seed: int = 0,
                 overrides: Mapping[str, float] | None = None) -> dict[str, Tensor]:
    """Every param of `attn` with N(0, 0.5²) values, as `attnspec verify` gives them:
    zero-initialised tables (t5, type biases, gates) would show nothing.

    >>> import attnspec
    >>> attn = attnspec.build("attention A {\\n heads = 4\\n head_dim = 8\\n"
    ...                       " bias t5(buckets = 32, max_distance = 128)\\n}").attentions[0]
    >>> {k: tuple(v.shape) for k, v in random_state(attn).items()}
    {'t5_bias': (4, 32)}
    """
    settings = resolve_settings(attn, overrides)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for decl in attn.params:
        shape = [int(eval_const(d.size, settings)) if d.kind == "const" else
                 int(settings[d.kind]) for d in decl.dims]
        state[decl.name] = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.5
    return state


# --- attention weights -------------------------------------------------------------------------
def attention_weights(module_or_cls, *args: Tensor, sizes: Mapping[str, int] | None = None,
                      **inputs) -> Tensor:
    """The attention probabilities `[B, heads, Sq, Sk]` of a generated module (an instance, or
    a class, instantiated with its default initialisation) on `args` — (q, k, v) in kernel mode,
    (x,) or (x, context) in layer mode — computed by the eager interpreter from the module's
    settings and state. Rows sum to 1, or to 0 where nothing is attended (or less with sinks).

    >>> import attnspec
    >>> mod = attnspec.load("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> q = k = v = torch.randn(1, 2, 3, 8)
    >>> p = attention_weights(mod.A, q, k, v)
    >>> p.shape, p[0, 0, 0].tolist()
    (torch.Size([1, 2, 3, 3]), [1.0, 0.0, 0.0])
    """
    module = module_or_cls() if isinstance(module_or_cls, type) else module_or_cls
    attn = attention_ir(type(module))
    overrides = {name: getattr(module, name) for name in type(module).SETTINGS}
    with torch.no_grad(), eager.recording_weights() as record:
        eager.run(attn, module.state_dict(), *args, inputs=inputs, sizes=sizes or None,
                  overrides=overrides)
    return record[-1]


def attention_ir(cls: type) -> ir.AttentionIR:
    """The IR of a generated attention class, rebuilt from its module's SPEC_SOURCE."""
    source = getattr(inspect.getmodule(cls), "SPEC_SOURCE", None)
    if source is None or not hasattr(cls, "SETTINGS"):
        raise TypeError(f"{cls.__name__} is not an attention class generated by attnspec")
    return _attention_of(source, cls.__name__)


@lru_cache(maxsize=32)
def _attention_of(source: str, name: str) -> ir.AttentionIR:
    from attnspec.ir.build import build_text

    return next(a for a in build_text(source).attentions if a.name == name)


def random_weights(attn: ir.AttentionIR, py_module, args: Sequence[Tensor],
                   inputs: Mapping[str, Tensor], sizes: Mapping[str, int],
                   seed: int = 0) -> Tensor:
    """Weights of `attn` (a class of the compiled `py_module`) on `args` and `inputs` (see
    `show_inputs`), its params random as `attnspec verify` sets them."""
    from attnspec.verify import _randomise_params

    batch, q_len = args[0].shape[0], args[0].shape[-2 if attn.mode == "kernel" else 1]
    kv_len = args[1].shape[-2] if attn.mode == "kernel" else args[-1].shape[1]
    entries = batch * int(resolve_settings(attn)["heads"]) * q_len * kv_len
    if entries > MAX_WEIGHT_ENTRIES:
        raise ValueError(f"weights are dense [B, heads, Sq, Sk] ({entries} entries, at most "
                         f"{MAX_WEIGHT_ENTRIES}): use shorter lengths")
    module = getattr(py_module, attn.name)(backend="eager")
    _randomise_params(module, torch.Generator().manual_seed(seed))
    return attention_weights(module, *args, sizes=sizes, **inputs)


def cell_means(values: Tensor, cell: int | tuple[int, int]) -> Tensor:
    """[..., rows, cols]: the mean of `values [..., Sq, Sk]` over each tile of `cell`
    positions (square, or (queries, keys)); edge tiles average what they hold.

    >>> cell_means(torch.arange(6.0).view(2, 3), 2).tolist()
    [[2.0, 3.5]]
    """
    pooled = torch.nn.functional.avg_pool2d(values.reshape(-1, 1, *values.shape[-2:]).double(),
                                            cell, ceil_mode=True, count_include_pad=False)
    return pooled.reshape(*values.shape[:-2], *pooled.shape[-2:])


# --- terminal rendering ------------------------------------------------------------------------
def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def wants_ascii(stream=None) -> bool:
    """True when `stream` (default stdout) cannot encode the block characters."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or "ascii"
    try:
        "".join(_CHARS["unicode"] + (_RAMPS["unicode"],)).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return True
    return False


def _margin(q_len: int, groups: Mapping[str, tuple[int, int]]) -> int:
    return max([len(str(q_len - 1)), 4] + [min(len(n), 16) for n in groups])


def _boundaries(groups: Mapping[str, tuple[int, int]], length: int) -> list[int]:
    return sorted({start for start, end in groups.values() if 0 < start < length})


def text_cell(q_len: int, kv_len: int, width: int,
              groups: Mapping[str, tuple[int, int]] | None = None) -> tuple[int, int]:
    """(queries, keys) per character so that the mask fits `width` columns (margin and group
    separators included) in at most half as many rows: a terminal character is about twice as
    tall as wide, so a square mask looks square.

    >>> text_cell(1024, 1024, 80)
    (28, 14)
    """
    groups = groups or {}
    room = max(2, width - _margin(q_len, groups) - 1 - len(_boundaries(groups, kv_len)))
    return max(1, -(-q_len // (room // 2))), max(1, -(-kv_len // room))


@dataclass
class _Grid:
    """Layout of a text picture: separators before given cells, a label margin."""

    q_cell: int
    k_cell: int
    rows: int
    cols: int
    margin: int
    col_seps: set[int]
    row_seps: set[int]

    def column(self, c: int) -> int:
        """The text column of cell `c` (after the margin)."""
        return c + sum(1 for s in self.col_seps if s <= c)


def _grid(pic: MaskPicture) -> _Grid:
    groups = pic.groups
    return _Grid(pic.q_cell, pic.k_cell, *pic.cells.shape, _margin(pic.q_len, groups),
                 {b // pic.k_cell for b in _boundaries(groups, pic.kv_len)} - {0},
                 {b // pic.q_cell for b in _boundaries(groups, pic.q_len)} - {0})


def _place(line: list[str], at: int, text: str, limit: int | None = None) -> None:
    """Write `text` into `line` from column `at` onto spaces, cut to end before `limit`;
    nothing if it does not fit whole and `limit` is None (a position number)."""
    if limit is not None:
        text = text[: max(0, limit - at - 1)] or text[:1]
    end = at + len(text)
    if end <= len(line) and all(ch == " " for ch in line[at: end + 1]):
        line[at:end] = text


def _header(grid: _Grid, kv_len: int, groups: Mapping[str, tuple[int, int]]) -> list[str]:
    width = grid.margin + 1 + grid.column(grid.cols - 1) + 1
    ruler = list(f"{QK:>{grid.margin}} ".ljust(width))
    for c in range(0, grid.cols, 8):
        _place(ruler, grid.margin + 1 + grid.column(c), str(c * grid.k_cell))
    lines = ["".join(ruler).rstrip()]
    if groups:
        names = list(" " * width)
        spans = sorted((start, name) for name, (start, end) in groups.items() if end > start)
        for i, (start, name) in enumerate(spans):
            at = grid.margin + 1 + grid.column(start // grid.k_cell)
            nxt = spans[i + 1][0] if i + 1 < len(spans) else kv_len
            _place(names, at, name, grid.margin + 1 + grid.column(nxt // grid.k_cell))
        lines.append("".join(names).rstrip())
    return lines


def _row_labels(grid: _Grid, groups: Mapping[str, tuple[int, int]], q_len: int) -> list[str]:
    labels = [str(r * grid.q_cell) if r % 4 == 0 else "" for r in range(grid.rows)]
    for name, (start, end) in sorted(groups.items(), key=lambda kv: kv[1]):
        if end > start and start < q_len:
            labels[start // grid.q_cell] = name[:grid.margin]
    return labels


def _cells_text(grid: _Grid, chars: list[list[str]], labels: list[str], seps: str) -> list[str]:
    vbar, hbar, cross = seps
    lines = []
    for r, row in enumerate(chars):
        if r in grid.row_seps:
            bar = "".join(cross + hbar if c in grid.col_seps else hbar for c in range(grid.cols))
            lines.append(" " * (grid.margin + 1) + bar)
        body = "".join((vbar if c in grid.col_seps else "") + ch for c, ch in enumerate(row))
        lines.append(f"{labels[r]:>{grid.margin}} {body}".rstrip())
    return lines


def render_mask(pic: MaskPicture, bias: BiasPicture | None = None, *, ascii: bool = False,
                title: str | None = None) -> str:
    """The mask as text: one character per tile of `pic.q_cell` queries × `pic.k_cell` keys
    (all / some / none kept), token-group boundaries as lines with the names on the axes, the
    block-sparsity counts and, given `bias`, a compact bias summary. Choose the tile with
    `text_cell` to fit a terminal width."""
    full, part, empty, *seps = _CHARS["ascii" if ascii else "unicode"]
    grid = _grid(pic)
    area = _areas(pic.q_len, pic.kv_len, pic.q_cell, pic.k_cell)
    chars = [[full if n == a else part if n else empty for n, a in zip(row, arow)]
             for row, arow in zip(pic.cells.tolist(), area.tolist())]
    lines = [f"{title or 'attention ' + pic.attention}: batch {pic.batch_index}, head {pic.head}",
             f"q_len {pic.q_len} x kv_len {pic.kv_len}; 1 char = {pic.q_cell} queries x "
             f"{pic.k_cell} keys"]
    lines += _header(grid, pic.kv_len, pic.groups)
    lines += _cells_text(grid, chars, _row_labels(grid, pic.groups, pic.q_len), "".join(seps))
    lines.append(f"legend: {full} all kept  {part} some kept  {empty} none kept")
    lines += _blocks_lines(pic)
    if bias is not None:
        lines += _bias_lines(bias, grid, ascii, seps[0])
    return "\n".join(lines) + "\n"


def _blocks_lines(pic: MaskPicture) -> list[str]:
    counts, total = pic.block_counts(), pic.blocks.numel()
    computed = (counts["full"] + counts["partial"]) / total
    return [f"blocks {pic.block}x{pic.block}: {counts['full']} full, {counts['partial']} "
            f"partial, {counts['empty']} empty of {total} ({computed:.1%} computed)",
            f"entries kept: {pic.density:.1%}"]


def _bias_lines(bias: BiasPicture, grid: _Grid, ascii: bool, vbar: str) -> list[str]:
    """Statistics of the offset (and gain) and the offset of the middle sampled query across
    the keys, aligned with the picture's columns."""
    if not bias.steps:
        return [f"bias (head {bias.head}): none, the attention has no bias or score steps"]
    stats = bias.stats()
    row = len(bias.qs) // 2
    spark = _spark(bias.offset[row], ascii)
    spark = "".join((vbar if c in grid.col_seps else "") + ch for c, ch in enumerate(spark))
    lines = [f"bias at q.k = 0 (head {bias.head}; one sample per char, kept entries):",
             f"  {_fmt_stats(stats['offset'])}",
             f"{'q=' + str(int(bias.qs[row])):>{grid.margin}} {spark}".rstrip()]
    if bias.gain is not None:
        lines += ["gain d score / d(scale*q.k) at 0:", f"  {_fmt_stats(stats['gain'])}"]
    return lines


def _fmt_stats(stats: dict | None) -> str:
    if stats is None:
        return "no kept entry sampled"
    return f"min {stats['min']:.4g}, max {stats['max']:.4g}, mean {stats['mean']:.4g}"


def _spark(values: Tensor, ascii: bool) -> str:
    """One character per value on a ramp from its min to max; NaN (masked) as a space."""
    ramp = _RAMPS["ascii" if ascii else "unicode"]
    kept = values[~values.isnan()]
    if not kept.numel():
        return ""
    lo, hi = float(kept.min()), float(kept.max())
    span = hi - lo or 1.0
    return "".join(" " if math.isnan(v) else ramp[min(len(ramp) - 1, int((v - lo) / span
                                                                          * len(ramp)))]
                   for v in values.tolist())


def render_weights(weights: Tensor, *, cell: tuple[int, int] = (1, 1), batch_index: int = 0,
                   heads: Sequence[int] | None = None, ascii: bool = False,
                   title: str = "weights") -> str:
    """Per head, the mean weight of each tile of `cell` (queries, keys) on a ramp from 0 to the
    head's largest tile mean; tiles with no weight at all are blank.

    >>> w = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    >>> print(render_weights(w, ascii=True))
    weights: batch 0, head 0, 1 char = 1 queries x 1 keys, darkest = mean 1
     q\\k 0
       0 @
         ++
    <BLANKLINE>
    """
    ramp = _RAMPS["ascii" if ascii else "unicode"]
    means = cell_means(weights[batch_index], cell)
    q_len, kv_len = weights.shape[-2:]
    grid = _Grid(cell[0], cell[1], *means.shape[-2:], _margin(q_len, {}), set(), set())
    lines = []
    for h in heads if heads is not None else range(weights.shape[1]):
        top = float(means[h].max()) or 1.0
        lines.append(f"{title}: batch {batch_index}, head {h}, 1 char = {cell[0]} queries x "
                     f"{cell[1]} keys, darkest = mean {top:.3g}")
        lines += _header(grid, kv_len, {})
        for r, row in enumerate(means[h].tolist()):
            text = "".join(" " if v <= 0 else ramp[min(len(ramp) - 1, int(v / top * len(ramp)))]
                           for v in row)
            label = str(r * cell[0]) if r % 4 == 0 else ""
            lines.append(f"{label:>{grid.margin}} {text}".rstrip())
        lines.append("")
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------------
def picture_cell(q_len: int, kv_len: int) -> int:
    """Positions per picture tile side: exact up to PICTURE_CELLS, tiled beyond."""
    return max(1, -(-max(q_len, kv_len) // PICTURE_CELLS))


def parse_sizes(text: str | None) -> dict[str, int]:
    """`--sizes a=3,b=40` -> {"a": 3, "b": 40}.

    >>> parse_sizes("a=3, b=40")
    {'a': 3, 'b': 40}
    """
    sizes = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, _, value = item.partition("=")
        if not name.strip().isidentifier() or not value.strip().isdigit():
            raise ValueError(f"--sizes takes GROUP=N,... (N >= 0), got {item!r}")
        sizes[name.strip()] = int(value)
    return sizes


def output_paths(output: str, names: Sequence[str]) -> dict[str, str]:
    """Where each attention's picture goes: `output` itself for one attention, else
    `STEM_NAME.SUFFIX` beside it.

    >>> output_paths("pics/m.png", ["A", "B"])
    {'A': 'pics/m_A.png', 'B': 'pics/m_B.png'}
    """
    from pathlib import Path

    if len(names) == 1:
        return {names[0]: output}
    path = Path(output)
    return {n: str(path.with_name(f"{path.stem}_{n}{path.suffix or '.png'}")) for n in names}


def _select(module_ir: ir.ModuleIR, name: str | None, path) -> list[ir.AttentionIR] | None:
    if name is None:
        return list(module_ir.attentions)
    names = [a.name for a in module_ir.attentions]
    if name in names:
        return [a for a in module_ir.attentions if a.name == name]
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    print(f"attnspec: {path}: no attention {name!r}{hint}; it has {', '.join(names)}",
          file=sys.stderr)
    return None


def _check_args(args) -> str | None:
    """The first problem with the numeric options, or None."""
    for flag, value, low in (("--block", args.block, 1), ("--batch-index", args.batch_index, 0),
                             ("--head", args.head, 0), ("--width", args.width, 20)):
        if value is not None and value < low:
            return f"{flag} must be at least {low}, got {value}"
    return None


def run_cli(args, path, source, module_ir) -> int:
    """`attnspec show`: text (default), JSON (`--json`) and/or pictures (`-o`) of each
    selected attention of one spec file."""
    import json

    if module_ir is None:
        return 1
    problem = _check_args(args)
    attns = _select(module_ir, args.name, path) if problem is None else None
    if problem is not None:
        print(f"attnspec: {problem}", file=sys.stderr)
    if attns is None:
        return 1
    outputs = output_paths(args.output, [a.name for a in attns]) if args.output else {}
    py_module = None
    if args.weights:
        import attnspec

        py_module = attnspec.load(path)
    failed, reports = 0, []
    for attn in attns:
        try:
            report = _show_one(attn, args, py_module, outputs.get(attn.name))
            reports.append({"file": str(path), **report} if isinstance(report, dict) else report)
        except ImportError as e:  # matplotlib missing: the same for every attention
            print(f"attnspec: {e}", file=sys.stderr)
            return 1
        except ValueError as e:
            print(f"attnspec: {path}: {attn.name}: {e}", file=sys.stderr)
            failed += 1
        except OSError as e:  # the picture could not be written
            print(f"attnspec: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
            failed += 1
    if args.json:
        print(json.dumps([r for r in reports if isinstance(r, dict)], indent=1))
    else:
        sys.stdout.write("\n".join(r for r in reports if isinstance(r, str) and r))
    return 1 if failed else 0


def _check_cli_lengths(q_len: int, kv_len: int) -> None:
    """The command's length limit also for lengths that token groups or --sizes set (--q-len
    and --kv-len are checked by the parser): the time grows with Sq·Sk."""
    from attnspec.cli import MAX_SHOW_LEN

    if max(q_len, kv_len) > MAX_SHOW_LEN:
        raise ValueError(f"lengths must be at most {MAX_SHOW_LEN}, got q_len={q_len}, "
                         f"kv_len={kv_len}")


def _show_one(attn: ir.AttentionIR, args, py_module, output: str | None) -> str | dict:
    """One attention: writes `output` if given; returns its text, or its JSON data."""
    q_len, kv_len, sizes = show_lengths(attn, args.q_len, args.kv_len, parse_sizes(args.sizes),
                                        args.weights)
    _check_cli_lengths(q_len, kv_len)
    head = args.head if args.head is not None else 0
    tensors, inputs = show_inputs(attn, args.batch_index + 1, q_len, kv_len, args.seed)
    common = {"batch_index": args.batch_index, "inputs": inputs, "sizes": sizes or None}
    groups = make_frame(attn, args.batch_index + 1, q_len, kv_len, inputs, sizes).groups
    ascii = args.ascii or wants_ascii()
    width = args.width or terminal_width()
    text_tile = text_cell(q_len, kv_len, width, groups)
    if args.weights:
        weights = random_weights(attn, py_module, tensors, inputs, sizes, args.seed)
        heads = [head] if args.head is not None else None
        if output:
            _save_weights(weights, output, args.batch_index, heads, groups, attn.name)
        if args.json:
            return _weights_json(attn, weights, text_tile, args.batch_index, heads)
        return render_weights(weights, cell=text_tile, batch_index=args.batch_index,
                              heads=heads, ascii=ascii, title=f"{attn.name} weights")
    tile = (picture_cell(q_len, kv_len),) * 2 if output else text_tile
    pic = mask_picture(attn, q_len, kv_len, cell=tile, block=args.block, head=head, **common)
    state = random_state(attn, args.seed)
    want_bias = args.head is not None or (output is not None and attn.pipeline)
    bias = bias_picture(attn, q_len, kv_len, cell=tile, head=head, state=state, **common) \
        if want_bias else None
    if output:
        _save_mask(pic, bias, output)
    if args.json:
        return {**pic.as_dict(), **({"bias": bias.stats()} if bias is not None else {})}
    if output:
        return ""
    return render_mask(pic, bias, ascii=ascii, title=f"attention {attn.name} ({attn.mode})")


def _save_mask(pic: MaskPicture, bias: BiasPicture | None, output: str) -> None:
    from attnspec.plot import plot_mask, save

    save(plot_mask(pic, bias), output)
    print(f"wrote {output}", file=sys.stderr)


def _save_weights(weights: Tensor, output: str, batch_index: int, heads, groups,
                  name: str) -> None:
    from attnspec.plot import plot_weights, save

    save(plot_weights(weights, batch_index=batch_index, heads=heads, groups=groups,
                      title=f"{name}: attention weights, batch {batch_index}"), output)
    print(f"wrote {output}", file=sys.stderr)


def _weights_json(attn: ir.AttentionIR, weights: Tensor, cell: tuple[int, int],
                  batch_index: int, heads) -> dict:
    means = cell_means(weights[batch_index], cell)
    heads = heads if heads is not None else range(weights.shape[1])
    return {"attention": attn.name, "q_len": weights.shape[-2], "kv_len": weights.shape[-1],
            "batch_index": batch_index, "cell": list(cell),
            "weights": {str(h): _rounded(means[h]) for h in heads}}
