"""What `attnspec show` shows, as data: mask counts and block classes, the bias, the weights,
and the random inputs the command draws them with. No rendering here (`text` and `plot` draw
these).

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
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial

import torch
from torch import Tensor

from attnspec import eager
from attnspec.backends import REFERENCE
from attnspec.ir import nodes as ir
from attnspec.ir.consts import eval_const, resolve_settings

__all__ = ["MaskPicture", "BiasPicture", "WindowInterpreter", "make_frame", "window_mask",
           "mask_picture", "cell_centres", "bias_picture", "bias_per_head", "mean_bias",
           "show_lengths", "show_inputs",
           "random_state", "attention_weights", "attention_ir", "random_weights", "cell_means",
           "weights_as_dict", "CHUNK", "MAX_EDGE_ENTRIES", "MAX_WEIGHT_ENTRIES", "DEFAULT_LEN",
           "DEFAULT_WEIGHTS_LEN", "OPEN_GROUP"]

# (query, key) entries evaluated at once: 8 MB int64 temporaries. Smaller chunks pay the
# per-operation overhead more often, larger ones leave the cache (both measured slower).
CHUNK = 1 << 20
MAX_EDGE_ENTRIES = 1 << 24  # the interpreter's edge tables are dense [Sq, Sk] int64 tensors
MAX_WEIGHT_ENTRIES = 1 << 26  # `show --weights`: the interpreter makes [B, H, Sq, Sk]
DEFAULT_LEN, DEFAULT_WEIGHTS_LEN, OPEN_GROUP = 1024, 128, 64


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
    def cell_areas(self) -> Tensor:
        """float64 [rows, cols]: the entries of each cell (edge cells are smaller)."""
        return _areas(self.q_len, self.kv_len, self.q_cell, self.k_cell)

    @property
    def fraction(self) -> Tensor:
        """float64 [rows, cols]: the kept fraction of each cell."""
        return self.cells / self.cell_areas

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
    # Heads averaged into this picture (`mean_bias`); 0 for one head's picture.
    over_heads: int = 0

    @property
    def label(self) -> str:
        """`head 3`, or `mean over 8 heads`."""
        return f"mean over {self.over_heads} heads" if self.over_heads else f"head {self.head}"

    def stats(self) -> dict:
        """min / max / mean of `offset` (and `gain`) over the kept sampled entries."""
        head = {"over_heads": self.over_heads} if self.over_heads else {"head": self.head}
        out = {**head, "steps": self.steps, "offset": _stats(self.offset)}
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


def bias_per_head(attn: ir.AttentionIR, q_len: int, kv_len: int, **options) -> list[BiasPicture]:
    """`bias_picture` of every head (ALiBi's slopes differ by 2^8 between the first and the last
    head: one head's colour scale hides the others). `options` as for `bias_picture`, less
    `head`."""
    heads = resolve_settings(attn, options.get("overrides"))["heads"]
    return [bias_picture(attn, q_len, kv_len, head=h, **options) for h in range(heads)]


def mean_bias(pictures: Sequence[BiasPicture]) -> BiasPicture:
    """The mean over heads of `pictures` (of one attention and cell): an entry masked in every
    head stays NaN, one kept in some heads is their mean.

    >>> import attnspec
    >>> attn = attnspec.build("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n"
    ...                       " bias alibi\\n}").attentions[0]
    >>> mean = mean_bias(bias_per_head(attn, 3, 3))
    >>> mean.label, mean.offset[2].tolist()
    ('mean over 2 heads', [-0.06640625, -0.033203125, 0.0])
    """
    first = pictures[0]
    gain = None
    if first.gain is not None:
        gain = torch.nanmean(torch.stack([p.gain for p in pictures]), 0)
    offset = torch.nanmean(torch.stack([p.offset for p in pictures]), 0)
    return replace(first, head=-1, offset=offset, gain=gain, over_heads=len(pictures))


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
    module = getattr(py_module, attn.name)(backend=REFERENCE)
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


def weights_as_dict(name: str, weights: Tensor, cell: tuple[int, int], batch_index: int,
                    heads: Sequence[int] | None = None) -> dict:
    """JSON-ready summary of `weights [B, H, Sq, Sk]` of attention `name`: the mean weight of
    each `cell` tile of batch row `batch_index`, for `heads` (default all).

    >>> w = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    >>> weights_as_dict("A", w, (1, 2), 0)["weights"]
    {'0': [[0.5], [0.5]]}
    """
    means = cell_means(weights[batch_index], cell)
    heads = heads if heads is not None else range(weights.shape[1])
    return {"attention": name, "q_len": weights.shape[-2], "kv_len": weights.shape[-1],
            "batch_index": batch_index, "cell": list(cell),
            "weights": {str(h): _rounded(means[h]) for h in heads}}
