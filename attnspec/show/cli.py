"""The `attnspec show` command: the options `attnspec.cli` parses, turned into pictures of
each selected attention (`attnspec.show.pictures`), printed as text (`attnspec.show.text`) or
JSON, and written as PNGs (`attnspec.show.plot`, imported only for `-o`: matplotlib is the
optional `plot` extra).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from torch import Tensor

from attnspec.ir import nodes as ir
from attnspec.show.pictures import (
    BiasPicture,
    MaskPicture,
    bias_per_head,
    bias_picture,
    make_frame,
    mask_picture,
    mean_bias,
    random_state,
    random_weights,
    show_inputs,
    show_lengths,
    weights_as_dict,
)
from attnspec.show.text import render_mask, render_weights, terminal_width, text_cell, wants_ascii

__all__ = ["run_cli", "picture_cell", "parse_sizes", "output_paths", "PICTURE_CELLS"]

PICTURE_CELLS = 512  # most cells per axis of a picture (PNG); longer sequences are tiled


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
    if module_ir is None:
        return 1
    problem = _check_args(args)
    attns = _select(module_ir, args.name, path) if problem is None else None
    if problem is not None:
        print(f"attnspec: {problem}", file=sys.stderr)
    if attns is None:
        return 1
    py_module = None
    if args.weights:
        import attnspec

        py_module = attnspec.load(path)
    shown = _show_all(attns, args, path, py_module)
    if shown is None:
        return 1
    reports, failed = shown
    _print_reports(reports, args.json)
    return 1 if failed else 0


def _show_all(attns: Sequence[ir.AttentionIR], args, path,
              py_module) -> tuple[list[str | dict], int] | None:
    """Each attention's report (its text, or its JSON data) and how many failed (reported on
    stderr); None when matplotlib is missing, which is the same for every attention."""
    outputs = output_paths(args.output, [a.name for a in attns]) if args.output else {}
    failed, reports = 0, []
    for attn in attns:
        try:
            report = _show_one(attn, args, py_module, outputs.get(attn.name))
            reports.append({"file": str(path), **report} if isinstance(report, dict) else report)
        except ImportError as e:  # matplotlib missing: the same for every attention
            print(f"attnspec: {e}", file=sys.stderr)
            return None
        except ValueError as e:
            print(f"attnspec: {path}: {attn.name}: {e}", file=sys.stderr)
            failed += 1
        except OSError as e:  # the picture could not be written
            print(f"attnspec: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
            failed += 1
    return reports, failed


def _print_reports(reports: Sequence[str | dict], as_json: bool) -> None:
    """The JSON data as one list (`--json`), else the texts one after another."""
    import json

    if as_json:
        print(json.dumps([r for r in reports if isinstance(r, dict)], indent=1))
    else:
        sys.stdout.write("\n".join(r for r in reports if isinstance(r, str) and r))


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
    tensors, inputs = show_inputs(attn, args.batch_index + 1, q_len, kv_len, args.seed)
    groups = make_frame(attn, args.batch_index + 1, q_len, kv_len, inputs, sizes).groups
    text_tile = text_cell(q_len, kv_len, args.width or terminal_width(), groups)
    if args.weights:
        weights = random_weights(attn, py_module, tensors, inputs, sizes, args.seed)
        return _show_weights(attn, weights, args, groups, text_tile, output)
    tile = (picture_cell(q_len, kv_len),) * 2 if output else text_tile
    pic, bias = _mask_and_bias(attn, args, (q_len, kv_len), tile, inputs, sizes,
                               output is not None)
    if output:
        _save_mask(pic, bias, output)
    if args.json:
        return {**pic.as_dict(), **({"bias": _bias_stats(bias)} if bias is not None else {})}
    if output:
        return ""
    return render_mask(pic, bias, ascii=args.ascii or wants_ascii(),
                       title=f"attention {attn.name} ({attn.mode})")


def _mask_and_bias(attn: ir.AttentionIR, args, lengths: tuple[int, int],
                   tile: tuple[int, int], inputs: Mapping[str, Tensor],
                   sizes: Mapping[str, int], plotting: bool):
    """The mask picture and, with `--head`, `--bias mean|per-head` or for a picture of a spec
    with a score pipeline, the bias: one head's picture, their mean, or a list per head (params
    random, seeded by `--seed`)."""
    head = args.head if args.head is not None else 0
    common = {"cell": tile, "batch_index": args.batch_index, "inputs": inputs,
              "sizes": sizes or None}
    pic = mask_picture(attn, *lengths, block=args.block, head=head, **common)
    view = getattr(args, "bias", "head")
    want_bias = args.head is not None or view != "head" or (plotting and attn.pipeline)
    if not want_bias:
        return pic, None
    state = random_state(attn, args.seed)
    if view == "head":
        return pic, bias_picture(attn, *lengths, state=state, head=head, **common)
    heads = bias_per_head(attn, *lengths, state=state, **common)
    return pic, mean_bias(heads) if view == "mean" else heads


def _bias_stats(bias: BiasPicture | list[BiasPicture]) -> dict | list[dict]:
    return bias.stats() if isinstance(bias, BiasPicture) else [b.stats() for b in bias]


def _show_weights(attn: ir.AttentionIR, weights: Tensor, args,
                  groups: Mapping[str, tuple[int, int]], text_tile: tuple[int, int],
                  output: str | None) -> str | dict:
    """`--weights`: writes `output` if given; returns the text, or the JSON data."""
    heads = [args.head] if args.head is not None else None
    if output:
        _save_weights(weights, output, args.batch_index, heads, groups, attn.name)
    if args.json:
        return weights_as_dict(attn.name, weights, text_tile, args.batch_index, heads)
    if output:  # the picture is the output, as for masks: no text dump besides it
        return ""
    return render_weights(weights, cell=text_tile, batch_index=args.batch_index, heads=heads,
                          ascii=args.ascii or wants_ascii(), title=f"{attn.name} weights")


def _save_mask(pic: MaskPicture, bias: BiasPicture | None, output: str) -> None:
    from attnspec.show.plot import plot_mask, save

    save(plot_mask(pic, bias), output)
    print(f"wrote {output}", file=sys.stderr)


def _save_weights(weights: Tensor, output: str, batch_index: int, heads, groups,
                  name: str) -> None:
    from attnspec.show.plot import plot_weights, save

    save(plot_weights(weights, batch_index=batch_index, heads=heads, groups=groups,
                      title=f"{name}: attention weights, batch {batch_index}"), output)
    print(f"wrote {output}", file=sys.stderr)
