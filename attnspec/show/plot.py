"""Pictures for `attnspec show -o FILE`: the mask with its block sparsity and the bias of one
head, and per-head attention weights. Needs matplotlib (`pip install 'attnspec[plot]'`), which
is imported only when a picture is drawn; figures are `matplotlib.figure.Figure` objects drawn
with the Agg canvas, so no pyplot state or GUI backend is touched.

Example:
    >>> import attnspec
    >>> from attnspec.show.pictures import mask_picture
    >>> attn = attnspec.build("attention A {\\n heads = 1\\n head_dim = 8\\n mask causal\\n}")
    >>> fig = plot_mask(mask_picture(attn.attentions[0], 64, 64, block=16))
    >>> [round(x) for x in fig.get_size_inches() * fig.dpi]
    [600, 640]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from attnspec.show.pictures import BiasPicture, MaskPicture, cell_means

__all__ = ["plot_mask", "plot_weights", "save", "INSTALL_HINT"]

INSTALL_HINT = "pictures need matplotlib: pip install 'attnspec[plot]'"
DPI = 100
PANEL = (6.0, 6.4)  # inches per panel (600 x 640 pixels at DPI): the legend sits below
HEAD_PANEL = 3.2  # inches per head in a weights grid
BLOCK_TINTS = {2: (0.12, 0.42, 1.0, 0.35), 1: (1.0, 0.55, 0.0, 0.4)}  # full, partial
GROUP_LINE = {"color": "tab:green", "linewidth": 1.2}
GREY_TOP = 1.25  # the attended fraction 1.0 draws as a mid grey, so tints over it stay visible


def swatch(block_class: int, fraction: float) -> tuple[float, float, float]:
    """The colour a block of `block_class` shows where `fraction` of its cells attend: its tint
    over the grey of the fraction image, as drawn (a legend of the bare tints over white would
    not match the picture).

    >>> [round(c, 2) for c in swatch(2, 0.0)]
    [0.69, 0.8, 1.0]
    """
    from matplotlib import colormaps

    grey = colormaps["Greys"](fraction / GREY_TOP)[:3]
    *tint, alpha = BLOCK_TINTS[block_class]
    return tuple(float(alpha * t + (1 - alpha) * g) for t, g in zip(tint, grey))


def _matplotlib():
    """(Figure, FigureCanvasAgg, Patch), or ImportError with the install hint."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return Figure, FigureCanvasAgg, Patch


def _figure(width: float, height: float, layout: str | None = "constrained"):
    Figure, FigureCanvasAgg, _ = _matplotlib()
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: str | Path) -> Path:
    """Write `fig` (PNG, or the format the suffix names) at the module's DPI: the pixel size
    is the figure size times DPI, never cropped."""
    fig.savefig(path, dpi=DPI)
    return Path(path)


# --- the mask ----------------------------------------------------------------------------------
def plot_mask(pic: MaskPicture, bias: BiasPicture | Sequence[BiasPicture] | None = None,
              title: str | None = None):
    """A figure with the mask (dark = kept; grey = a tile partly kept), its blocks tinted by
    class with a legend of counts, token-group boundaries as lines with the names on the top
    and right axes, and — given `bias` — the bias at q·k = 0 and, for `score = ...` steps, the
    gain, with masked entries blank. Given one bias picture per head (`bias_per_head`): a grid
    of them beside the mask, each with its own colour scale."""
    if bias is not None and not isinstance(bias, BiasPicture):
        return _plot_mask_and_heads(pic, list(bias), title)
    panels = 1 + (bias is not None and bias.steps > 0) + (bias is not None and
                                                         bias.gain is not None)
    fig = _figure(PANEL[0] * panels, PANEL[1])
    axes = fig.subplots(1, panels, squeeze=False)[0]
    _draw_mask(axes[0], pic, title)
    if panels > 1:
        _draw_values(fig, axes[1], bias.offset, pic, f"bias at q·k = 0 ({bias.label})")
    if panels > 2:
        _draw_values(fig, axes[2], bias.gain, pic,
                     f"gain d score / d(scale·q·k) at 0 ({bias.label})")
    return fig


def _plot_mask_and_heads(pic: MaskPicture, biases: list[BiasPicture], title: str | None):
    """The mask panel, and beside it a grid of the heads' bias panels (square-ish)."""
    if not biases or not biases[0].steps:
        return plot_mask(pic, None, title)
    ncols = math.ceil(math.sqrt(len(biases)))
    nrows = math.ceil(len(biases) / ncols)
    grid_width = HEAD_PANEL * ncols
    fig = _figure(PANEL[0] + grid_width, max(PANEL[1], HEAD_PANEL * nrows))
    left, right = fig.subfigures(1, 2, width_ratios=(PANEL[0], grid_width))
    _draw_mask(left.subplots(), pic, title)
    axes = right.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, bias in zip(axes, biases):
        _draw_values(right, ax, bias.offset, pic, f"head {bias.head}", names=False)
    for ax in axes[len(biases):]:
        ax.set_axis_off()
    right.suptitle("bias at q·k = 0 per head (each on its own scale)", fontsize="medium")
    return fig


def _draw_mask(ax, pic: MaskPicture, title: str | None) -> None:
    _, _, Patch = _matplotlib()
    extent = (0, pic.kv_len, pic.q_len, 0)
    ax.imshow(pic.fraction.numpy(), cmap="Greys", vmin=0, vmax=GREY_TOP, extent=extent,
              interpolation="nearest", aspect="auto")
    classes = pic.block_classes
    tint = torch.zeros(*classes.shape, 4)
    for cls, rgba in BLOCK_TINTS.items():
        tint[classes == cls] = torch.tensor(rgba)
    rows, cols = classes.shape
    ax.imshow(tint.numpy(), extent=(0, cols * pic.block, rows * pic.block, 0),
              interpolation="nearest", aspect="auto")
    if max(rows, cols) <= 64:
        for edge in range(pic.block, max(pic.q_len, pic.kv_len), pic.block):
            ax.axhline(edge, color="0.6", linewidth=0.4)
            ax.axvline(edge, color="0.6", linewidth=0.4)
    _frame_axes(ax, pic)
    counts = pic.block_counts()
    handles = [Patch(facecolor=swatch(2, 1.0), edgecolor="0.3", label=f"full: {counts['full']}"),
               Patch(facecolor=swatch(1, 0.5), edgecolor="0.3",
                     label=f"partial: {counts['partial']}"),
               Patch(facecolor="white", edgecolor="0.3",
                     label=f"empty (skipped): {counts['empty']}")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3,
              title=f"{pic.block}x{pic.block} blocks", fontsize="small", frameon=False)
    name = title or pic.attention
    ax.set_title(f"{name}: mask, batch {pic.batch_index}, head {pic.head}\n"
                 f"{pic.q_len} x {pic.kv_len}, density {pic.density:.1%}", fontsize="medium")


def _frame_axes(ax, pic: MaskPicture, names: bool = True) -> None:
    """Limits in positions, axis labels, group boundaries and (with `names`) their names."""
    ax.set_xlim(0, pic.kv_len)
    ax.set_ylim(pic.q_len, 0)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    _draw_groups(ax, pic.groups, names)


def _draw_groups(ax, groups: Mapping[str, tuple[int, int]], names: bool = True) -> None:
    """Lines at token-group boundaries and, with `names`, the names on the top/right axes."""
    spans = sorted((start, end, name) for name, (start, end) in groups.items() if end > start)
    for start, _, _ in spans[1:]:
        ax.axhline(start, **GROUP_LINE)
        ax.axvline(start, **GROUP_LINE)
    if not spans or not names:
        return
    mids = [(start + end) / 2 for start, end, _ in spans]
    names = [name for _, _, name in spans]
    top = ax.secondary_xaxis("top")
    top.set_xticks(mids, names, fontsize="small", rotation=20 if len(spans) > 2 else 0)
    right = ax.secondary_yaxis("right")
    right.set_yticks(mids, names, fontsize="small", rotation=-70 if len(spans) > 2 else -90,
                     va="center")


def _draw_values(fig, ax, values: Tensor, pic: MaskPicture, title: str,
                 names: bool = True) -> None:
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="white")  # masked entries: blank
    finite = values[~values.isnan()]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5  # a constant: keep the colour bar readable
    image = ax.imshow(values.numpy(), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest",
                      extent=(0, pic.kv_len, pic.q_len, 0), aspect="auto")
    _frame_axes(ax, pic, names)
    fig.colorbar(image, ax=ax, location="bottom", shrink=0.8)
    ax.set_title(title, fontsize="medium")


# --- attention weights -------------------------------------------------------------------------
def plot_weights(weights: Tensor, *, batch_index: int = 0, heads: Sequence[int] | None = None,
                 groups: Mapping[str, tuple[int, int]] | None = None, title: str = "",
                 max_cells: int = 256):
    """A grid of heads: the attention weights `weights[batch_index, h]` ([B, H, Sq, Sk], as
    `attnspec.show.attention_weights` returns) as heatmaps on one square-root colour scale
    (longer sequences averaged over tiles to at most `max_cells` per axis).

    >>> w = torch.softmax(torch.randn(1, 4, 8, 8), -1)
    >>> [round(x) for x in plot_weights(w).get_size_inches() * 100]
    [640, 640]
    """
    heads = list(heads) if heads is not None else list(range(weights.shape[1]))
    q_len, kv_len = weights.shape[-2:]
    cell = max(1, math.ceil(max(q_len, kv_len) / max_cells))
    means = cell_means(weights[batch_index, heads], cell)
    ncols = math.ceil(math.sqrt(len(heads)))
    nrows = math.ceil(len(heads) / ncols)
    # A fixed layout: the constrained one takes seconds for a grid of 16 heads.
    fig = _figure(HEAD_PANEL * ncols, HEAD_PANEL * nrows, layout=None)
    fig.subplots_adjust(left=0.06, right=0.82, bottom=0.05, top=0.92, wspace=0.25, hspace=0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    from matplotlib.colors import PowerNorm

    # A square-root scale: rows with one large weight would otherwise hide everything else.
    norm = PowerNorm(0.5, vmin=0, vmax=float(means.max()) or 1.0)
    image = None
    for ax, h, values in zip(axes, heads, means):
        image = ax.imshow(values.numpy(), cmap="viridis", norm=norm, aspect="auto",
                          interpolation="nearest", extent=(0, kv_len, q_len, 0))
        _draw_groups(ax, groups or {}, names=False)
        ax.set_title(f"head {h}", fontsize="small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(heads):]:
        ax.set_axis_off()
    fig.colorbar(image, cax=fig.add_axes((0.85, 0.2, 0.02, 0.6)), label="weight")
    fig.suptitle(title or f"attention weights, batch {batch_index}", fontsize="medium")
    return fig
