"""`attnspec mup-check`: the muP coordinate check (Tensor Programs V, Yang et al. 2022).

A tiny model is trained around one layer-mode attention with a `mup` block, at several widths,
for a few Adam steps on a fixed random regression batch, once under muP (the module's own init,
scale and `mup_param_groups`) and once under standard parametrization (SP), and the mean |x| of
q, k, the attention logits and the layer output is recorded at every step. Under muP these stay
about the same across widths; under SP with the same learning rate they grow with width.

Model, for width `w` (only the attention's `dim` is overridden, plus `context_dim` for
cross-attention, so `heads` and `head_dim` follow the spec's own rules — normally fixed heads and
`head_dim = w // heads`):

    x = embed(features)            # Linear(16 -> w), N(0, 1/16), lr (both parametrizations)
    h = x + attention(x)           # the generated module, backend `eager`
    y = readout(h)                 # Linear(w -> 16); loss = mean((y - target)^2)

- muP: the attention as generated; `readout` N(0, (1/sqrt(base_dim) / m)^2) with lr / m
  (m = w / base_dim), so it equals SP's `readout` at the base width.
- SP: the same module with `scale = 1/sqrt(head_dim)`, every projection weight (q_proj
  included) N(0, init_std^2 * base_dim / w) (variance 1/fan_in up to a constant, muP's init for
  k/v/o), `readout` N(0, 1/w), and one Adam lr for every parameter.

q, k and out are read with forward hooks on `q_proj`, `k_proj` and `o_proj` (the generated
module is not changed); logits are `scale * q·k` of those projections per head over every
(query, key) pair, i.e. before qk_norm, rope, biases and masks.

Example:
    >>> import attnspec
    >>> spec = "attention A {\\n dim = 64\\n heads = 4\\n mask causal\\n mup { base_dim = 32 }\\n}"
    >>> check = coord_check(attnspec.build(spec).attentions[0], attnspec.load(spec).A,
    ...                     widths=(32, 64), steps=1)
    >>> [len(check.mean_abs["mup"]["logits"]), len(check.mean_abs["mup"]["logits"][0])]
    [2, 2]
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from attnspec.backends import REFERENCE
from attnspec.console import colour_diagnostics
from attnspec.errors import Diagnostic, Span
from attnspec.ir import nodes as ir
from attnspec.verify import Case, cases_for, make_inputs

QUANTITIES = ("q", "k", "logits", "out")
PARAMETRIZATIONS = ("mup", "sp")
LABELS = {"mup": "muP", "sp": "SP"}
DEFAULT_WIDTHS = (64, 128, 256, 512)
FEATURES = 16  # input and target features of the tiny model (fixed: not a width)
PLOT_HINT = "pip install 'attnspec[plot]' (or: pip install matplotlib)"


class MupCheckError(ValueError):
    """A problem with the arguments of a coordinate check (bad widths, a missing plot library)."""


@dataclass
class CoordCheck:
    """The measurements of one coordinate check.

    `mean_abs[param][quantity][step][i]` is mean |x| at `widths[i]` after `step` Adam steps
    (step 0: at init); `param` in PARAMETRIZATIONS, `quantity` in QUANTITIES. `loss` is laid
    out the same way without the quantity.
    """

    spec: str
    attention: str
    base_dim: int
    widths: list[int]
    heads: list[int]
    head_dims: list[int]
    steps: int
    lr: float
    seed: int
    batch: int
    seq: int
    mean_abs: dict[str, dict[str, list[list[float]]]]
    loss: dict[str, list[list[float]]]

    def ratio(self, param: str, quantity: str, step: int = -1) -> float:
        """mean |x| at the largest width over that at the smallest, after `step` steps (the
        last by default); inf when the smallest is 0 and the largest is not, 1 when both are.

        >>> c = CoordCheck("s", "A", 8, [8, 16], [1, 1], [8, 16], 1, 0.1, 0, 1, 4,
        ...                {"mup": {"q": [[0.0, 0.0], [1.0, 1.5]]}}, {})
        >>> c.ratio("mup", "q")
        1.5
        """
        row = self.mean_abs[param][quantity][step]
        if row[0] == 0:
            return 1.0 if row[-1] == 0 else math.inf
        return row[-1] / row[0]

    def as_dict(self) -> dict:
        """JSON-ready data: every field, plus `ratios[param][quantity]` (last step)."""
        data = asdict(self)
        data["ratios"] = {p: {q: _finite(self.ratio(p, q)) for q in QUANTITIES}
                          for p in PARAMETRIZATIONS}
        return data


def _finite(x: float) -> float | None:
    """JSON has no infinity: None instead."""
    return x if math.isfinite(x) else None


# --- the tiny model ----------------------------------------------------------------------------
class _Model(torch.nn.Module):
    """features -> embed -> x + attention(x) -> readout; `context` is embedded the same way."""

    def __init__(self, attention: torch.nn.Module, width: int, cross: bool):
        super().__init__()
        self.attention = attention
        self.embed = torch.nn.Linear(FEATURES, width, bias=False)
        self.context_embed = torch.nn.Linear(FEATURES, width, bias=False) if cross else None
        self.readout = torch.nn.Linear(width, FEATURES, bias=False)
        with torch.no_grad():
            for layer in (self.embed, self.context_embed):
                if layer is not None:
                    layer.weight.normal_(0.0, FEATURES ** -0.5)

    def forward(self, features, context_features, inputs: dict, sizes: dict):
        x = self.embed(features)
        args = (x,) if self.context_embed is None else (x, self.context_embed(context_features))
        h = x + self.attention(*args, **inputs, **({"sizes": sizes} if sizes else {}))
        return self.readout(h)


def _overrides(attn: ir.AttentionIR, width: int) -> dict:
    return {"dim": width, **({"context_dim": width} if attn.cross else {})}


def _make_model(attn: ir.AttentionIR, cls, width: int, param: str, backend: str) -> _Model:
    """The model at `width` under muP or SP, initialised from the global RNG."""
    try:
        attention = cls(backend=backend, **_overrides(attn, width))
        if param == "sp":
            attention = cls(backend=backend, scale=attention.head_dim ** -0.5,
                            **_overrides(attn, width))
    except ValueError as e:
        raise MupCheckError(f"width {width}: {e}") from None
    model = _Model(attention, width, attn.cross)
    m = width / attention.base_dim
    with torch.no_grad():
        if param == "sp":
            # Variance 1/fan_in up to muP's constant, so both agree at the base width.
            std = attention.init_std / math.sqrt(m)
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                getattr(attention, name).weight.normal_(0.0, std)
            model.readout.weight.normal_(0.0, width ** -0.5)
        else:
            model.readout.weight.normal_(0.0, attention.base_dim ** -0.5 / m)
    return model


def _optimizer(model: _Model, param: str, lr: float) -> torch.optim.Optimizer:
    if param == "sp":
        return torch.optim.Adam(model.parameters(), lr=lr)
    m = model.readout.in_features / model.attention.base_dim
    inputs = [p for p in (model.embed, model.context_embed) if p is not None]
    groups = model.attention.mup_param_groups(lr)
    groups.append({"params": [layer.weight for layer in inputs], "lr": lr})
    groups.append({"params": [model.readout.weight], "lr": lr / m})  # muP's readout: lr / m
    return torch.optim.Adam(groups)


class _Probe:
    """Forward hooks on q_proj, k_proj and o_proj: the mean |x| of what one forward saw."""

    def __init__(self, attention: torch.nn.Module):
        self.attention = attention
        self.seen: dict[str, torch.Tensor] = {}
        self.handles = [getattr(attention, name).register_forward_hook(self._hook(name))
                        for name in ("q_proj", "k_proj", "o_proj")]

    def _hook(self, name: str):
        def hook(_module, _args, output):
            self.seen[name] = output.detach()
        return hook

    def stats(self) -> dict[str, float]:
        a = self.attention
        q, k, out = self.seen["q_proj"], self.seen["k_proj"], self.seen["o_proj"]
        heads_q = q.view(q.shape[0], q.shape[1], a.heads, a.head_dim).transpose(1, 2)
        heads_k = k.view(k.shape[0], k.shape[1], a.kv_heads, a.head_dim).transpose(1, 2)
        heads_k = heads_k.repeat_interleave(a.heads // a.kv_heads, dim=1)
        logits = a.scale * torch.matmul(heads_q, heads_k.transpose(-2, -1))
        return {"q": _mean_abs(q), "k": _mean_abs(k), "logits": _mean_abs(logits),
                "out": _mean_abs(out)}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _mean_abs(x: torch.Tensor) -> float:
    return x.abs().mean().item()


def _train(model: _Model, param: str, lr: float, steps: int, data: dict):
    """[stats per step] and [loss per step] for steps + 1 forwards (step 0 before any update)."""
    optimizer = _optimizer(model, param, lr)
    probe = _Probe(model.attention)
    stats, losses = [], []
    try:
        for step in range(steps + 1):
            y = model(data["features"], data["context"], data["inputs"], data["sizes"])
            loss = torch.nn.functional.mse_loss(y, data["target"])
            stats.append(probe.stats())
            losses.append(loss.item())
            if step < steps:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        probe.close()
    return stats, losses


# --- the check ---------------------------------------------------------------------------------
def _data(attn: ir.AttentionIR, batch: int, seq: int, seed: int) -> dict:
    """One fixed batch, the same at every width: features, context, target, call-time inputs."""
    gen = torch.Generator().manual_seed(seed)
    if attn.groups:
        seq = cases_for(attn)[0].q_len  # fixed-size token groups fix the length
    _, inputs, sizes = make_inputs(attn, Case("mup-check", batch, seq, seq), torch.float32,
                                   "cpu", gen)
    inputs = {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}
    return {"features": torch.randn(batch, seq, FEATURES, generator=gen),
            "context": torch.randn(batch, seq, FEATURES, generator=gen),
            "target": torch.randn(batch, seq, FEATURES, generator=gen),
            "inputs": inputs, "sizes": sizes, "seq": seq}


def check_widths(widths: Sequence[int]) -> list[int]:
    """Sorted distinct widths; at least two, each positive.

    >>> check_widths([256, 64, 128, 64])
    [64, 128, 256]
    """
    out = sorted(set(int(w) for w in widths))
    if len(out) < 2 or out[0] < 1:
        raise MupCheckError(f"--widths needs at least two distinct positive widths, got "
                            f"{', '.join(map(str, widths)) or 'none'}")
    return out


def coord_check(attn: ir.AttentionIR, cls, widths: Sequence[int] = DEFAULT_WIDTHS,
                steps: int = 5, lr: float = 1e-2, seed: int = 0, batch: int = 4, seq: int = 16,
                backend: str = REFERENCE, spec_name: str = "") -> CoordCheck:
    """Train the tiny model at every width under muP and SP; see the module docstring (and its
    example). `cls` is the generated class of `attn`; only `dim` (and `context_dim`) is
    overridden per width.

    The global RNG is left as it was (each run seeds a forked one with `seed`); training runs
    with one intra-op thread, and the thread count is restored afterwards.
    """
    if attn.mup is None or attn.mode != "layer":
        raise MupCheckError(f"{attn.name}: the coordinate check needs a layer-mode attention "
                            f"with a `mup` block")
    if steps < 1 or not 0 < lr < math.inf or batch < 1 or seq < 1:
        raise MupCheckError(f"--steps, --lr, --batch and --seq must be positive, got {steps}, "
                            f"{lr}, {batch}, {seq}")
    widths = check_widths(widths)
    threads = torch.get_num_threads()
    # Matrices of a few thousand elements: intra-op threads only add overhead (measured 15x
    # slower with 2 threads on a busy 2-core machine), so one thread while training.
    torch.set_num_threads(1)
    try:
        return _coord_check(attn, cls, widths, steps, lr, seed, batch, seq, backend, spec_name)
    finally:
        torch.set_num_threads(threads)


def _coord_check(attn, cls, widths, steps, lr, seed, batch, seq, backend, spec_name):
    data = _data(attn, batch, seq, seed)
    mean_abs = {p: {q: [[0.0] * len(widths) for _ in range(steps + 1)] for q in QUANTITIES}
                for p in PARAMETRIZATIONS}
    loss = {p: [[0.0] * len(widths) for _ in range(steps + 1)] for p in PARAMETRIZATIONS}
    shapes = []
    for i, width in enumerate(widths):
        for param in PARAMETRIZATIONS:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _make_model(attn, cls, width, param, backend)
                try:
                    stats, losses = _train(model, param, lr, steps, data)
                except ValueError as e:  # e.g. a call-time input the module refuses
                    raise MupCheckError(f"width {width}: {e}") from None
            for step, (row, value) in enumerate(zip(stats, losses)):
                for q in QUANTITIES:
                    mean_abs[param][q][step][i] = row[q]
                loss[param][step][i] = value
        shapes.append((model.attention.heads, model.attention.head_dim,
                       model.attention.base_dim))
    return CoordCheck(spec_name, attn.name, shapes[0][2], widths, [s[0] for s in shapes],
                      [s[1] for s in shapes], steps, lr, seed, batch, data["seq"], mean_abs, loss)


# --- output ------------------------------------------------------------------------------------
def format_table(check: CoordCheck) -> str:
    """The shapes per width, then per quantity a (parametrization, step) x width table of mean |x|
    with the largest/smallest width ratio of each row (rich's tables, as plain text)."""
    from attnspec.console import table

    w = check.widths
    title = (f"muP coordinate check: {check.attention} ({check.spec}), base_dim "
             f"{check.base_dim}, Adam lr {check.lr:g}, {check.steps} steps, batch {check.batch} "
             f"x seq {check.seq}, seed {check.seed}")
    shapes = table(["width", *map(str, w)],
                   [["heads", *map(str, check.heads)], ["head_dim", *map(str, check.head_dims)],
                    ["m", *(f"{x / check.base_dim:.3g}" for x in w)]], right=1)
    lines = [title, shapes]
    notes = {"logits": " (scale * q.k of the projections, before qk_norm/rope/bias/mask)",
             "out": " (o_proj output)", "q": " (q_proj output)", "k": " (k_proj output)"}
    for q in QUANTITIES:
        rows = [[LABELS[p], str(step), *(f"{x:.4g}" for x in row),
                 f"{check.ratio(p, q, step):.3g}"]
                for p in PARAMETRIZATIONS for step, row in enumerate(check.mean_abs[p][q])]
        lines += ["", f"mean |{q}|{notes[q]}",
                  table(["param", "step", *map(str, w), "ratio"], rows, right=1)]
    lines += ["", f"ratio = mean |x| at width {w[-1]} / at width {w[0]}: about 1 under muP "
              f"(flat), growing with width under SP"]
    return "\n".join(lines)


def _figure_class():
    """matplotlib's Figure, imported on first use (matplotlib is an optional dependency)."""
    try:
        import matplotlib  # noqa: F401 — fails fast when matplotlib itself is missing
        from matplotlib.figure import Figure
    except ImportError:
        raise MupCheckError(f"-o needs matplotlib: {PLOT_HINT}") from None
    return Figure


def plot(check: CoordCheck, path: str | Path) -> None:
    """Coordinate-check curves as a 1600 x 700 px PNG: one panel per quantity (columns, shared y
    axis), muP top row, SP bottom row; x = width (log2), y = mean |x| (log), one line per step."""
    figure_class = _figure_class()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter, NullLocator

    # A fixed layout: constrained layout measures every tick label and is seconds slower.
    fig = figure_class(figsize=(4 * len(QUANTITIES), 7), dpi=100)
    fig.subplots_adjust(left=0.05, right=0.92, bottom=0.08, top=0.9, wspace=0.3, hspace=0.35)
    # One y axis per column: muP's flat curves and SP's growth on the same scale.
    axes = fig.subplots(len(PARAMETRIZATIONS), len(QUANTITIES), squeeze=False, sharey="col")
    colours = _step_colours(check.steps)
    for row, param in enumerate(PARAMETRIZATIONS):
        for col, quantity in enumerate(QUANTITIES):
            ax = axes[row][col]
            for step, values in enumerate(check.mean_abs[param][quantity]):
                # Zeros (muP's zero query at step 0) cannot sit on a log axis: not drawn.
                points = [(w, v) for w, v in zip(check.widths, values) if v > 0]
                if points:
                    ax.plot(*zip(*points), marker="o", color=colours[step], label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(check.widths, [str(w) for w in check.widths])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{LABELS[param]}: mean |{quantity}|")
            ax.set_xlabel("width (dim)")
            ax.grid(True, which="both", alpha=0.3)
    # A figure legend: a panel may lack step 0 (zero under muP's zero query).
    handles = [Line2D([], [], color=c, marker="o") for c in colours]
    fig.legend(handles, [f"step {i}" for i in range(len(colours))], loc="center right",
               fontsize="small")
    fig.suptitle(f"muP coordinate check: {check.attention}, base_dim {check.base_dim}, "
                 f"Adam lr {check.lr:g}")
    fig.savefig(path, dpi=100, format="png")  # PNG at exactly `path`, whatever its suffix


def _step_colours(steps: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, steps)) for i in range(steps + 1)]


# --- command line ------------------------------------------------------------------------------
def _pick(module_ir: ir.ModuleIR, name: str | None, source) -> ir.AttentionIR | str:
    """The attention to check, or an error text (a diagnostic where the spec is at fault)."""
    names = [a.name for a in module_ir.attentions]
    if name is not None:
        chosen = [a for a in module_ir.attentions if a.name == name]
        if not chosen:
            return f"attnspec: {module_ir.source_name}: no attention {name!r}; it has " \
                   f"{', '.join(names) or 'none'}"
    else:
        chosen = [a for a in module_ir.attentions if a.mup is not None] or \
            list(module_ir.attentions[:1])
        if len(chosen) > 1:
            return f"attnspec: {module_ir.source_name}: several attentions have `mup` " \
                   f"({', '.join(a.name for a in chosen)}); pick one with --name"
    if not chosen:
        return f"attnspec: {module_ir.source_name}: no attention to check"
    attn = chosen[0]
    if attn.mup is None:
        s = attn.span
        return Diagnostic(
            "error", f"attention `{attn.name}` has no `mup` block: mup-check needs a "
            f"layer-mode attention with `mup {{ base_dim = N }}`", Span(s.line, s.col,
                                                                       s.end_line, s.end_col),
            hint="add `mup { base_dim = ... }` (and `dim = N` for layer mode)",
            code="E501").format(source)
    return attn


def _parse_widths(text: str) -> list[int]:
    try:
        return check_widths([int(x) for x in text.split(",") if x.strip()])
    except ValueError as e:
        if isinstance(e, MupCheckError):
            raise
        raise MupCheckError(f"--widths takes comma-separated integers, got {text!r}") from None


def run_cli(args, path: Path, source, module_ir: ir.ModuleIR | None) -> int:
    """`attnspec mup-check`: table (or JSON) on stdout, optional PNG; 1 on any error."""
    import attnspec

    if module_ir is None:
        return 1
    picked = _pick(module_ir, args.name, source)
    if not isinstance(picked, ir.AttentionIR):
        print(colour_diagnostics(picked, sys.stderr), file=sys.stderr)
        return 1
    try:
        # The CLI's --widths type gives a tuple; text still works for a hand-made Namespace.
        widths = (_parse_widths(args.widths) if isinstance(args.widths, str)
                  else check_widths(args.widths))
        if args.output:
            _figure_class()  # before training: a missing matplotlib fails at once
        cls = getattr(attnspec.load(path), picked.name)
        check = coord_check(picked, cls, widths, args.steps, args.lr, args.seed, args.batch,
                            args.seq, spec_name=str(path))
        if args.output:
            plot(check, args.output)
    except MupCheckError as e:
        print(f"attnspec: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"attnspec: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(json.dumps(check.as_dict(), indent=1) if args.json else format_table(check))
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
