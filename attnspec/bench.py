"""`attnspec bench`: time every backend of a spec (and `auto`) on one device.

For each attention, sequence length and backend: the median of CUDA-event timings (wall-clock
on CPU) after warm-up, forward (under `no_grad`) and forward+backward, effective TFLOP/s over
the attendable (query, key) pairs only (forward 4·B·H·Sq·Sk·D·density, ×3.5 with backward), the
time to build flex's BlockMask (its cache bypassed), and peak memory. Inputs are what a model
would pass: documents of a few hundred to a few thousand tokens, key padding at the end of
each row, lengths between half and all of the sequence.

Example:
    >>> rows = bench_source("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}",
    ...                     device="cpu", dtype=torch.float32, seqs=(64,), batch=1,
    ...                     backends=("eager",), fwd_only=True, reps=2, warmup=1)
    >>> [(r.backend, r.pass_, r.q_len) for r in rows]
    [('eager', 'fwd', 64)]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from attnspec import eager
from attnspec.backends import AUTO
from attnspec.backends.cost_model import FLEX, backend_of
from attnspec.ir import nodes as ir
from attnspec.ir.consts import resolve_settings
from attnspec.verify import Case, has_backward, make_inputs, runs_on


@dataclass(frozen=True)
class Timing:
    spec: str
    attention: str
    backend: str  # as requested ("auto" included)
    ran: str  # what ran: for auto its choice, for flex its kernel
    pass_: str  # "fwd" or "fwd+bwd"
    batch: int
    q_len: int
    kv_len: int
    ms: float
    tflops: float
    density: float
    block_mask_ms: float | None
    peak_mib: float
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


# --- inputs ------------------------------------------------------------------------------------
def random_documents(batch: int, length: int, gen: torch.Generator, shortest: int = 256,
                     longest: int = 4096) -> torch.Tensor:
    """int64 [batch, length] document ids: runs of random lengths in [shortest, longest]."""
    rows = []
    for _ in range(batch):
        sizes, total = [], 0
        while total < length:
            size = int(torch.randint(shortest, longest + 1, (1,), generator=gen))
            sizes.append(min(size, length - total))
            total += sizes[-1]
        rows.append(torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)))
    return torch.stack(rows)


def bench_inputs(attn: ir.AttentionIR, batch: int, q_len: int, kv_len: int, dtype, device,
                 gen: torch.Generator, documents: tuple[int, int] = (256, 4096)):
    """(args, inputs, sizes) with realistic call-time inputs (see the module docstring);
    `documents` bounds the document lengths (`attnspec show` scales them to the picture)."""
    args, inputs, sizes = make_inputs(attn, Case("bench", batch, q_len, kv_len), dtype, device,
                                      gen)
    for decl in attn.inputs:
        kinds = [d.kind for d in decl.dims]
        if decl.dtype == "int" and kinds[:1] == ["batch"] and len(kinds) == 2 \
                and not (attn.rope and attn.rope.positions == decl.name):
            inputs[decl.name] = random_documents(batch, q_len, gen, *documents).to(device)
        elif decl.dtype == "int" and kinds == ["batch"]:
            inputs[decl.name] = torch.randint(kv_len // 2, kv_len + 1, (batch,),
                                              generator=gen).to(device)
        elif decl.dtype == "bool" and kinds[:1] == ["batch"] and len(kinds) == 2:
            keep = torch.randint(kv_len // 2, kv_len + 1, (batch, 1), generator=gen)
            inputs[decl.name] = (torch.arange(kv_len)[None, :] < keep).to(device)
    return args, inputs, sizes


def density(attn: ir.AttentionIR, batch: int, q_len: int, kv_len: int, inputs, sizes,
            device) -> float:
    """Fraction of (query, key) pairs the mask keeps (the interpreter's mask, never broadcast
    to [B, H, Sq, Sk])."""
    try:
        return eager.mask_density(attn, batch, q_len, kv_len, inputs, sizes or None,
                                  device=device)
    except Exception:  # noqa: BLE001 — e.g. a mask reading params: count every pair
        return 1.0


def attention_flops(attn: ir.AttentionIR, batch: int, q_len: int, kv_len: int, keep: float,
                    overrides=None) -> float:
    """Forward FLOPs of the two matmuls over the attendable pairs: 2·B·H·Sq·Sk·(D + Dv)·keep."""
    values = resolve_settings(attn, overrides)
    return 2.0 * batch * values["heads"] * q_len * kv_len * \
        (values["head_dim"] + values["value_dim"]) * keep


# --- timing ------------------------------------------------------------------------------------
def median_ms(fn: Callable[[], object], device: str, reps: int, warmup: int,
              inner: int = 1) -> float:
    """Median time of `fn()` in ms: CUDA events on CUDA, perf_counter elsewhere. With `inner`
    > 1 each sample times that many calls back to back and divides: the steady state of a
    training loop, where the host runs ahead of the GPU and launch costs overlap kernels
    (`inner=1` adds them: the latency of one lone call)."""
    cuda = str(device).startswith("cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / inner)
        else:
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t) * 1e3 / inner)
    return statistics.median(times)


def _synced_wall(device) -> float:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def block_mask_ms(py_module, run_once: Callable[[], object], device,
                  reps: int = 10) -> float | None:
    """Median time to build the BlockMask of one flex call, the cache bypassed (None when the
    call builds none). Times the generated module's builders by wrapping them."""
    names = [n for n in ("_structured_block_mask", "_general_block_mask")
             if hasattr(py_module, n)]
    if not names:
        return None
    originals = {n: getattr(py_module, n) for n in names}
    times: list[float] = []

    def timed(original):
        def wrapper(*args, **kwargs):
            py_module._FLEX_MASKS.clear()
            start = _synced_wall(device)
            out = original(*args, **kwargs)
            times.append((_synced_wall(device) - start) * 1e3)
            return out
        return wrapper

    try:
        for n in names:
            setattr(py_module, n, timed(originals[n]))
        with torch.no_grad():
            for _ in range(reps + 2):
                run_once()
    finally:
        for n, original in originals.items():
            setattr(py_module, n, original)
    return statistics.median(times[2:]) if len(times) > 2 else None


# --- one attention -----------------------------------------------------------------------------
def bench_attention(attn: ir.AttentionIR, py_module, backend: str, *, device: str, dtype,
                    batch: int, seq: int, fwd_only: bool = False, reps: int = 20,
                    warmup: int = 5, seed: int = 0, spec_name: str = "") -> list[Timing]:
    """Timings of one attention on one backend at one length (fwd, and fwd+bwd unless
    `fwd_only` or the backend has no backward on `device`)."""
    gen = torch.Generator().manual_seed(seed)
    cls = getattr(py_module, attn.name)
    layer = cls(backend=backend).to(device=device, dtype=dtype)
    q_len = kv_len = seq
    args, inputs, sizes = bench_inputs(attn, batch, q_len, kv_len, dtype, device, gen)
    call = {**inputs, **({"sizes": sizes} if sizes else {})}
    keep = density(attn, batch, q_len, kv_len, inputs, sizes, device)
    flops = attention_flops(attn, batch, q_len, kv_len, keep)

    def forward():
        with torch.no_grad():
            return layer(*args, **call)

    rows = []
    forward()  # compile / first-call costs out of the way
    ran = getattr(layer, "last_backend", backend)  # auto's choice; flex's kernel
    builds_mask = backend_of(ran) == FLEX  # flex's BlockMask build is timed on its own
    mask_ms = block_mask_ms(py_module, forward, device) if builds_mask else None
    passes = [("fwd", forward, 1.0)]
    if not fwd_only and has_backward(backend if backend != AUTO else backend_of(ran), device):
        leaves = [a.detach().requires_grad_() for a in args]
        grad = None

        def forward_backward():
            nonlocal grad
            out = layer(*leaves, **call)
            grad = torch.randn_like(out) if grad is None else grad
            out.backward(grad)

        passes.append(("fwd+bwd", forward_backward, 3.5))
    for name, fn, mult in passes:
        _reset_peak(device)
        ms = median_ms(fn, device, reps, warmup)
        rows.append(Timing(spec_name, attn.name, backend, ran, name, batch, q_len, kv_len, ms,
                           flops * mult / ms / 1e9, keep, mask_ms, _peak_mib(device)))
    return rows


def _reset_peak(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if str(device).startswith("cuda") else 0.0


def bench_module(module_ir: ir.ModuleIR, py_module, *, backends: Sequence[str] | None = None,
                 device: str = "cuda", dtype=torch.bfloat16, seqs: Sequence[int] = (8192,),
                 batch: int = 4, fwd_only: bool = False, reps: int = 20, warmup: int = 5,
                 progress: Callable[[str], None] | None = None) -> list[Timing]:
    """Every attention x backend (those generated and runnable on `device`, and auto) x length.
    A backend that fails on an input records a row with `note` and no timing."""
    rows = []
    for attn in module_ir.attentions:
        for seq in seqs:
            for backend in wanted_backends(getattr(py_module, attn.name), backends, device):
                if progress:
                    progress(f"{attn.name} {backend} S={seq}")
                rows += _guarded(attn, py_module, backend, device, dtype, batch, seq, fwd_only,
                                 reps, warmup, module_ir.source_name)
    return rows


def wanted_backends(cls, backends: Sequence[str] | None, device: str) -> list[str]:
    """The backends to time for one class: those asked for that it has (auto always), or
    every generated one that runs on `device`, and auto."""
    if backends:
        return [b for b in backends if b == "auto" or b in cls.BACKENDS]
    return [b for b in cls.BACKENDS if runs_on(b, device)] + ["auto"]


def _guarded(attn, py_module, backend, device, dtype, batch, seq, fwd_only, reps, warmup,
             spec_name) -> list[Timing]:
    try:
        return bench_attention(attn, py_module, backend, device=device, dtype=dtype,
                               batch=batch, seq=seq, fwd_only=fwd_only, reps=reps,
                               warmup=warmup, spec_name=spec_name)
    except Exception as e:  # noqa: BLE001 — e.g. out of memory, a refusal: one row says so
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        note = " ".join(f"{type(e).__name__}: {e}".split())[:160]
        return [Timing(spec_name, attn.name, backend, "-", "fwd", batch, seq, seq,
                       float("nan"), float("nan"), float("nan"), None, 0.0, note)]


def bench_source(text: str, **options) -> list[Timing]:
    """`bench_module` of spec text (see the module docstring's example)."""
    import attnspec

    return bench_module(attnspec.build(text), attnspec.load(text), **options)


def format_table(rows: Sequence[Timing]) -> str:
    """One row per timing (rich's table, as plain text)."""
    from attnspec.console import table

    header = ("attention", "backend", "ran", "pass", "B", "S", "ms", "TFLOP/s", "density",
              "mask ms", "peak MiB", "note")
    body = [(r.attention, r.backend, r.ran, r.pass_, str(r.batch), str(r.q_len),
             f"{r.ms:.3f}", f"{r.tflops:.0f}" if r.tflops >= 10 else f"{r.tflops:.2f}",
             f"{r.density:.3f}", "-" if r.block_mask_ms is None else f"{r.block_mask_ms:.3f}",
             f"{r.peak_mib:.0f}", r.note) for r in rows]
    return table(header, body)


def run_cli(args, path, source, module_ir) -> int:
    """`attnspec bench`: the table (or JSON) of `bench_module` for one spec file."""
    import json
    import sys

    import attnspec
    from attnspec.console import Progress
    from attnspec.verify import DTYPES

    if module_ir is None:
        return 1
    dtype = DTYPES.get(args.dtype)
    if dtype is None:
        print(f"attnspec: unknown dtype {args.dtype!r}; use one of {', '.join(DTYPES)}",
              file=sys.stderr)
        return 1
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        print("attnspec: no CUDA device here; use --device cpu", file=sys.stderr)
        return 1
    seqs = args.seq  # positive integers: the parser's --seq type (`cli.ints_in`) checked them
    if args.name:
        names = [a.name for a in module_ir.attentions]
        if args.name not in names:
            print(f"attnspec: {path}: no attention {args.name!r}; it has {', '.join(names)}",
                  file=sys.stderr)
            return 1
        module_ir = module_ir.model_copy(update={
            "attentions": tuple(a for a in module_ir.attentions if a.name == args.name)})
    backends = None if args.backend == "all" else tuple(args.backend.split(","))
    py_module = attnspec.load(path)
    total = len(seqs) * sum(len(wanted_backends(getattr(py_module, a.name), backends,
                                                 args.device)) for a in module_ir.attentions)
    with Progress(total, label="bench") as progress:
        rows = bench_module(module_ir, py_module, backends=backends, device=args.device,
                            dtype=dtype, seqs=seqs, batch=args.batch, fwd_only=args.fwd_only,
                            reps=args.reps, warmup=max(2, args.reps // 4), progress=progress)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        print(format_table(rows))
    return 1 if any(r.note for r in rows) else 0
