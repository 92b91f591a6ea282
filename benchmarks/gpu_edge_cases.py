"""Numerical edge cases on every backend, against the eager interpreter in float64.

Rows with nothing to attend (masks, key padding, empty token groups, more queries than keys,
sinks, whole rows of `-inf` bias, no keys at all), very large and very small scores (biases of
+-1e4, q and k times 100), lengths 1, 129 and 200, in half precision and float32. Each case x
backend x dtype runs forward and backward (flex on CPU: forward only) through
`attnspec.verify.check_inputs`: outputs and gradients within flash-attn's tolerance rule of the
float64 reference, no NaN or inf anywhere, and every row the reference makes exactly 0 exactly
0 (contract §9.4). A backend may refuse a call with `UnsupportedInputError` (a documented
refusal: listed as `refused`, not a failure); any other exception is a failure.

Backends on CUDA: eager, sdpa, flex (Triton), flex-fast (flex through `auto`, which asks for
flex's FLASH kernel where it can run: `ran` says which kernel did), flash, auto; on CPU: eager,
sdpa, flex (forward only). Each case runs only on the backends its spec compiles to.

Run from the repository root on the GPU machine (flash-attn 4 staged as for gpu_verify_flash.sh;
lark and pydantic from .wheels as in gpu_verify_flex.sh). flex and flash-attn 4 compile a kernel
per new configuration, so the full matrix takes a while: split it over calls of at most ten
minutes, e.g.

    export PYTHONPATH=$PWD; E="python3 benchmarks/gpu_edge_cases.py"
    $E --backends eager,sdpa,flash,auto > $OUT/a.txt; echo "exit $?"
    $E --backends flex --dtypes bfloat16,float32 > $OUT/b.txt; echo "exit $?"
    $E --backends flex-fast --dtypes bfloat16,float16 > $OUT/c.txt; echo "exit $?"

Each run also prints a line per case to stderr as it finishes, so a call cut short by a time
limit still shows what ran. On CPU (tests/test_edge_numerics.py runs a part of it):

    PYTHONPATH=$PWD python3 benchmarks/gpu_edge_cases.py --device cpu --dtypes float32

Options: --device, --dtypes (bfloat16,float16,float32 by default), --backends, --cases (names
or substrings), --seed (fresh by default; printed). Prints one row per run and a summary line;
exits 1 when any run failed.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import attnspec
from attnspec import verify
from attnspec.errors import UnsupportedInputError

Inputs = Callable[[int, int, int, torch.Generator], dict]
KERNEL = "heads = 4\n kv_heads = 2\n head_dim = 64"
SLACK = 32.0  # the tolerance factor of the cases with scores near 1e4 (see EdgeCase.slack)


@dataclass(frozen=True)
class EdgeCase:
    """One attention and one call: `body` are the statements after `settings`."""

    name: str
    body: str
    B: int
    Sq: int
    Sk: int
    inputs: Inputs = field(default=lambda B, Sq, Sk, gen: {})
    sizes: dict | None = None
    scale: float = 1.0  # multiplies q and k (kernel mode) or x and context (layer mode)
    settings: str = KERNEL
    # Pass when the verify ratio is at most this (1 = flash-attn's rule). Scores near 1e4 carry
    # an absolute float32 rounding of ulp(1e4) ~ 1e-3 that each kernel rounds in its own order
    # and the softmax amplifies where two keys nearly tie: the interpreter's own float32 error
    # (same order of operations as the float64 reference) is then a poor yardstick. SDPA on CPU
    # measured ratios up to 8.4 over 30 seeds (median 1.3). These cases are about overflow,
    # NaN and exact zeros (an overflow or NaN fails whatever the slack): their near one-hot
    # softmaxes hide small errors of scale anyway (10% off: ratios 0-20 on large_inputs_window,
    # 70-1300 on the others), which the cases at ordinary scale catch with slack 1.
    slack: float = 1.0

    def text(self) -> str:
        return f"attention E {{\n {self.settings}\n {self.body}\n}}\n"


def _valid_full_batch(B, Sq, Sk, gen):
    """Key padding: batch 0 all padding, batch 1 random, the rest all valid."""
    valid = torch.rand(B, Sk, generator=gen) < 0.6
    valid[0] = False
    valid[2:] = True
    return {"valid": valid}


def _lengths(*values):
    return lambda B, Sq, Sk, gen: {"n": torch.tensor(values[:B])}


def _documents(B, Sq, Sk, gen):
    """Packed documents in sorted runs, with a document of length 1 at the start."""
    starts = (torch.rand(B, Sq, generator=gen) < 0.05).long()
    starts[:, 1] = 1
    return {"doc": torch.cumsum(starts, dim=-1)}


CASES = [
    EdgeCase("no_key_attendable", "mask q < 0", 2, 37, 37),
    EdgeCase("key_padding_full_batch", "input valid: bool[batch, kv_seq]\n mask key_valid(valid)",
             3, 19, 45, _valid_full_batch),
    EdgeCase("key_len_out_of_range", "input n: int[batch]\n mask key_len(n)", 4, 129, 129,
             _lengths(0, -3, 129, 500)),
    EdgeCase("bottom_right_more_queries", "mask causal_bottom_right", 2, 45, 19),
    EdgeCase("top_left_fewer_queries", "mask causal", 2, 19, 45),
    EdgeCase("empty_token_groups",
             "tokens { a: *\n b: *\n c: * }\n pattern a -> b\n pattern b, c -> c", 2, 37, 37,
             sizes={"a": 20, "b": 0}),
    EdgeCase("sinks_empty_rows", "sinks = true\n input n: int[batch]\n mask key_len(n)", 2, 37,
             37, _lengths(0, 37)),
    EdgeCase("neg_inf_bias_single_key", "bias where(k % 2 == 0, -inf, 0.0)", 2, 1, 1),
    EdgeCase("neg_inf_bias_alternate", "bias where(k % 2 == 0, -inf, 0.0)", 2, 37, 37),
    EdgeCase("neg_inf_bias_rows", "mask causal\n bias where(q % 3 == 0, -inf, 0.0)", 1, 129, 129),
    EdgeCase("neg_inf_bias_rows_sinks", "sinks = true\n bias where(q % 3 == 0, -inf, 0.0)", 1,
             37, 37),
    EdgeCase("huge_biases", "mask causal\n bias where(k % 3 == 0, 1e4, -1e4)", 1, 200, 200,
             slack=SLACK),
    EdgeCase("large_inputs_window", "mask sliding_window(16)", 2, 200, 200, scale=100.0,
             slack=SLACK),
    EdgeCase("large_inputs_softcap", "mask causal\n score = softcap(score, 30.0)", 1, 129, 129,
             scale=100.0, slack=SLACK),
    EdgeCase("large_inputs_full", "", 1, 129, 129, scale=100.0, slack=SLACK),
    EdgeCase("length_1", "mask causal", 2, 1, 1),
    EdgeCase("decode_129_keys", "mask causal_bottom_right", 2, 1, 129),
    EdgeCase("documents_200", "input doc: int[batch, seq]\n mask causal & same(doc)", 2, 200, 200,
             _documents),
    EdgeCase("alibi_200", "mask causal\n bias alibi", 1, 200, 200),
    EdgeCase("no_keys_at_all", "mask causal_bottom_right", 2, 5, 0),
    EdgeCase("layer_cross_no_keys", "input n: int[batch]\n mask key_len(n)", 2, 7, 13,
             _lengths(0, 13), settings="dim = 64\n heads = 4\n context_dim = 48"),
]


@dataclass
class Row:
    case: str
    backend: str
    dtype: str
    status: str  # pass, refused, FAIL
    ran: str = ""
    ratio: float = 0.0
    detail: str = ""


# --- running -----------------------------------------------------------------------------------
def backends_for(cls, device: str, wanted: list[str] | None) -> list[str]:
    """The backends a case runs on: those generated into `cls` that run on `device`, plus, on
    CUDA, flex through auto (its FLASH kernel) and auto itself."""
    names = [b for b in cls.BACKENDS if verify.runs_on(b, device)]
    if device.startswith("cuda"):
        names += (["flex-fast"] if "flex" in cls.BACKENDS else []) + ["auto"]
    return [b for b in names if wanted is None or b in wanted]


def instance(cls, backend: str):
    """A module instance for `backend`; `flex-fast` is auto restricted to flex."""
    if backend == "flex-fast":
        module = cls(backend="auto")
        module._auto_cuda = ("flex",)
        return module
    return cls(backend=backend)


def make_call(case: EdgeCase, cls, device: str, dtype: torch.dtype, gen: torch.Generator):
    """(positional args, inputs, grad_out shape) of fresh random values for `case`."""
    m = cls()

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)

    B, Sq, Sk = case.B, case.Sq, case.Sk
    if hasattr(m, "q_proj"):  # layer mode
        args = (randn(B, Sq, m.dim, scale=case.scale),)
        if hasattr(m, "context_dim"):
            args += (randn(B, Sk, m.context_dim, scale=case.scale),)
        out_shape = (B, Sq, m.dim)
    else:
        args = (randn(B, m.heads, Sq, m.head_dim, scale=case.scale),
                randn(B, m.kv_heads, Sk, m.head_dim, scale=case.scale),
                randn(B, m.kv_heads, Sk, m.value_dim))
        out_shape = (B, m.heads, Sq, m.value_dim)
    inputs = {k: v.to(device) for k, v in case.inputs(B, Sq, Sk, gen).items()}
    return args, inputs, out_shape


def randomise(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Random parameters (zero-initialised sinks would hide bugs); projections at 1/sqrt(fan_in)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = p.shape[1] ** -0.5 if name.endswith("_proj.weight") else 0.5
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)


def run_case(case: EdgeCase, compiled, backend: str, dtype: torch.dtype, device: str,
             seed: int) -> Row:
    """One case on one backend in one dtype: a Row (pass / refused / FAIL)."""
    attn, cls = compiled
    dtype_name = str(dtype).replace("torch.", "")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    try:
        module = instance(cls, backend).to(device=device, dtype=dtype).eval()
        randomise(module, gen)
        args, inputs, out_shape = make_call(case, cls, device, dtype, gen)
        grad = verify.has_backward("flex" if backend.startswith("flex") else backend, device)
        grad_out = torch.randn(out_shape, generator=gen, dtype=torch.float64) if grad else None
        result = verify.check_inputs(attn, module, args, inputs, case.sizes, dtype, grad_out)
    except UnsupportedInputError as e:
        reason = " ".join(line.strip() for line in str(e).splitlines())
        return Row(case.name, backend, dtype_name, "refused", detail=reason)
    except Exception as e:  # noqa: BLE001 — any other exception is a failure in the table
        return Row(case.name, backend, dtype_name, "FAIL", ratio=math.inf,
                   detail=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    ran = getattr(module, "last_backend", "") if backend.startswith(("auto", "flex")) else ""
    ok = result.worst_ratio <= case.slack  # NaN compares false: a failure
    detail = "" if ok else f"{result.worst_tensor}: {result.detail}"
    return Row(case.name, backend, dtype_name, "pass" if ok else "FAIL", ran, result.worst_ratio,
               detail)


def compile_case(case: EdgeCase):
    """(attention IR, generated class) of a case's spec."""
    text = case.text()
    return attnspec.build(text).attentions[0], attnspec.load(text).E


def run_all(cases: list[EdgeCase], device: str, dtypes: list[torch.dtype],
            backends: list[str] | None, seed: int,
            progress: Callable[[Row], None] | None = None) -> list[Row]:
    """Every case x backend x dtype; `progress` sees each row as it is done."""
    rows = []
    for i, case in enumerate(cases):
        compiled = compile_case(case)
        for backend in backends_for(compiled[1], device, backends):
            for dtype in dtypes:
                rows.append(run_case(case, compiled, backend, dtype, device, seed + i))
                if progress is not None:
                    progress(rows[-1])
    return rows


def _progress(row: Row) -> None:
    """One line per run on stderr as it finishes: a run cut short by a time limit keeps them."""
    print(f"  {row.case} {row.backend} {row.dtype} {row.ran} {row.status} {row.ratio:.3f} "
          f"{row.detail[:120]}".rstrip(), file=sys.stderr, flush=True)


# --- report ------------------------------------------------------------------------------------
def format_rows(rows: list[Row]) -> str:
    header = ("case", "backend", "dtype", "ran", "ratio", "result")
    body = [(r.case, r.backend, r.dtype, r.ran, "-" if r.status == "refused" else f"{r.ratio:.3f}",
             f"{r.status} {r.detail}".strip()[:160]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in (header, *body)]
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "refused", "FAIL")}
    lines.append(f"{counts['pass']} passed, {counts['FAIL']} failed, {counts['refused']} refused "
                 "(UnsupportedInputError: the backend declined those inputs)")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--backends", default=None, help="comma-separated; default all")
    parser.add_argument("--cases", default=None, help="comma-separated names or substrings")
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_edge_cases: no CUDA device; use --device cpu", file=sys.stderr)
        return 1
    seed = random.randrange(2**31) if args.seed is None else args.seed
    dtypes = [verify.DTYPES[d] for d in args.dtypes.split(",")]
    wanted = args.cases.split(",") if args.cases else None
    cases = [c for c in CASES if wanted is None or any(w in c.name for w in wanted)]
    backends = args.backends.split(",") if args.backends else None
    start = time.perf_counter()
    rows = run_all(cases, args.device, dtypes, backends, seed, _progress)
    print(format_rows(rows))
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {name}, torch {torch.__version__}, seed {seed}, "
          f"{time.perf_counter() - start:.1f} s")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
