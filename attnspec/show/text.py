"""`attnspec show` in the terminal: the mask as a grid of characters (all / some / none kept)
with token-group boundaries, block-sparsity counts and a bias summary, and per-head weights on
a ramp. Plain text from the data of `attnspec.show.pictures`; `ascii=True` (or `wants_ascii`)
for streams that cannot encode the block characters.

Example:
    >>> import attnspec
    >>> from attnspec.show.pictures import mask_picture
    >>> attn = attnspec.build("attention A {\\n heads = 1\\n head_dim = 8\\n mask causal\\n}")
    >>> pic = mask_picture(attn.attentions[0], 256, 256, block=128)
    >>> print(render_mask(pic, ascii=True).splitlines()[3][:12])
       0 #......
"""

from __future__ import annotations

import math
import shutil
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from attnspec.show.pictures import BiasPicture, MaskPicture, cell_means

__all__ = ["render_mask", "render_weights", "text_cell", "terminal_width", "wants_ascii", "QK"]

_CHARS = {"unicode": ("█", "▒", "·", "│", "─", "┼"), "ascii": ("#", ":", ".", "|", "-", "+")}
_RAMPS = {"unicode": "▁▂▃▄▅▆▇█", "ascii": ".:-=+*#%@"}
QK = "q\\k"  # the corner label of the axes


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


def _group_lines(groups: Mapping[str, tuple[int, int]], width: int = 88) -> list[str]:
    """Every token group with its positions, in full: the axis labels cut a name to the room
    its columns and the margin leave.

    >>> _group_lines({"surface_anchors": (0, 100), "volume_queries": (100, 160)})
    ['groups: surface_anchors [0, 100), volume_queries [100, 160)']
    """
    if not groups:
        return []
    spans = sorted(groups.items(), key=lambda kv: kv[1])
    text = "groups: " + ", ".join(f"{name} [{start}, {end})" for name, (start, end) in spans)
    return textwrap.wrap(text, width, subsequent_indent="  ")


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


def render_mask(pic: MaskPicture, bias: BiasPicture | Sequence[BiasPicture] | None = None, *,
                ascii: bool = False, title: str | None = None) -> str:
    """The mask as text: one character per tile of `pic.q_cell` queries × `pic.k_cell` keys
    (all / some / none kept), token-group boundaries as lines with the names on the axes, the
    block-sparsity counts and, given `bias`, a compact bias summary (given one picture per head,
    a line per head, each on its own scale). Choose the tile with `text_cell` to fit a terminal
    width."""
    full, part, empty, *seps = _CHARS["ascii" if ascii else "unicode"]
    grid = _grid(pic)
    area = pic.cell_areas
    chars = [[full if n == a else part if n else empty for n, a in zip(row, arow)]
             for row, arow in zip(pic.cells.tolist(), area.tolist())]
    lines = [f"{title or 'attention ' + pic.attention}: batch {pic.batch_index}, head {pic.head}",
             f"q_len {pic.q_len} x kv_len {pic.kv_len}; 1 char = {pic.q_cell} queries x "
             f"{pic.k_cell} keys"]
    lines += _header(grid, pic.kv_len, pic.groups)
    lines += _cells_text(grid, chars, _row_labels(grid, pic.groups, pic.q_len), "".join(seps))
    lines += _group_lines(pic.groups)
    lines.append(f"legend: {full} all kept  {part} some kept  {empty} none kept")
    lines += _blocks_lines(pic)
    if isinstance(bias, BiasPicture):
        lines += _bias_lines(bias, grid, ascii, seps[0])
    elif bias:
        lines += _per_head_lines(bias, grid, ascii, seps[0])
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
        return [f"bias ({bias.label}): none, the attention has no bias or score steps"]
    stats = bias.stats()
    row = len(bias.qs) // 2
    lines = [f"bias at q.k = 0 ({bias.label}; one sample per char, kept entries):",
             f"  {_fmt_stats(stats['offset'])}",
             f"{'q=' + str(int(bias.qs[row])):>{grid.margin}} "
             f"{_spark_row(bias.offset[row], grid, ascii, vbar)}".rstrip()]
    if bias.gain is not None:
        lines += ["gain d score / d(scale*q.k) at 0:", f"  {_fmt_stats(stats['gain'])}"]
    return lines


def _per_head_lines(biases: Sequence[BiasPicture], grid: _Grid, ascii: bool,
                    vbar: str) -> list[str]:
    """One line per head: the offset of the middle sampled query across the keys, each head on
    its own scale (its min and max after it), so no head's range hides another's."""
    first = biases[0]
    if not first.steps:
        return ["bias (every head): none, the attention has no bias or score steps"]
    row = len(first.qs) // 2
    lines = [f"bias at q.k = 0 per head, query q={int(first.qs[row])} (one sample per char; "
             f"each head on its own scale, min..max after it):"]
    for bias in biases:
        stats = _stats_of(bias.offset[row])
        scale = f"  {stats[0]:.3g}..{stats[1]:.3g}" if stats else ""
        lines.append(f"{'h=' + str(bias.head):>{grid.margin}} "
                     f"{_spark_row(bias.offset[row], grid, ascii, vbar)}{scale}".rstrip())
    return lines


def _stats_of(values: Tensor) -> tuple[float, float] | None:
    kept = values[~values.isnan()]
    return (float(kept.min()), float(kept.max())) if kept.numel() else None


def _spark_row(values: Tensor, grid: _Grid, ascii: bool, vbar: str) -> str:
    """`_spark` of `values` with the picture's group separators, aligned with its columns."""
    spark = _spark(values, ascii)
    return "".join((vbar if c in grid.col_seps else "") + ch for c, ch in enumerate(spark))


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

    >>> import torch
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

