"""`attnspec show`: what an attention attends, as numbers, terminal text and (with matplotlib)
pictures. One module per role, the dependencies one way:

- `attnspec.show.pictures` — the data: mask counts and block classes (`mask_picture`), the
  bias at q·k = 0 (`bias_picture`), attention weights, the random inputs of the command;
- `attnspec.show.text` — terminal rendering of those (`render_mask`, `render_weights`);
- `attnspec.show.plot` — matplotlib figures of those (`plot_mask`, `plot_weights`, `save`);
  imported on first use, as matplotlib is optional (`pip install 'attnspec[plot]'`);
- `attnspec.show.cli` — the `attnspec show` command (`run_cli`), on top of the three.

This package re-exports their public names. To patch one (in a test), patch the module that
defines it: the names here are references, the modules look up their own.

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

from attnspec.show.cli import PICTURE_CELLS, output_paths, parse_sizes, picture_cell, run_cli
from attnspec.show.pictures import (
    CHUNK,
    DEFAULT_LEN,
    DEFAULT_WEIGHTS_LEN,
    MAX_EDGE_ENTRIES,
    MAX_WEIGHT_ENTRIES,
    OPEN_GROUP,
    BiasPicture,
    MaskPicture,
    WindowInterpreter,
    attention_ir,
    attention_weights,
    bias_per_head,
    bias_picture,
    cell_centres,
    cell_means,
    make_frame,
    mask_picture,
    mean_bias,
    random_state,
    random_weights,
    show_inputs,
    show_lengths,
    weights_as_dict,
    window_mask,
)
from attnspec.show.text import (
    QK,
    render_mask,
    render_weights,
    terminal_width,
    text_cell,
    wants_ascii,
)

_PLOT = ("plot_mask", "plot_weights", "save", "INSTALL_HINT")
__all__ = ["MaskPicture", "BiasPicture", "WindowInterpreter", "mask_picture", "bias_picture",
           "bias_per_head", "mean_bias",
           "attention_weights", "render_mask", "render_weights", "show_inputs", "show_lengths",
           "random_state", "random_weights", "text_cell", "cell_means", "run_cli",
           "make_frame", "window_mask", "cell_centres", "attention_ir", "weights_as_dict",
           "terminal_width", "wants_ascii", "picture_cell", "parse_sizes", "output_paths",
           "CHUNK", "DEFAULT_LEN", "DEFAULT_WEIGHTS_LEN", "MAX_EDGE_ENTRIES",
           "MAX_WEIGHT_ENTRIES", "OPEN_GROUP", "PICTURE_CELLS", "QK", *_PLOT]


def __getattr__(name: str):
    """`attnspec.show.plot`'s names, imported on first use (PEP 562): the package itself never
    loads the figure code."""
    if name in _PLOT:
        from attnspec.show import plot

        return getattr(plot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
