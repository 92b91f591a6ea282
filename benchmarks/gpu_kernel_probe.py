"""Probe the kernel libraries attnspec lowers to, directly, at shapes that break kernels.

For every kernel (flash-attn 4 `flash_attn_func` and `flash_attn_varlen_func`, SDPA's default
dispatch and each of its fused kernels forced, FlexAttention on Triton and on its FLASH kernel)
and every head dim x length pair x causal x GQA x dtype, the output and the gradients dq, dk, dv
are compared with a float64 reference under flash-attn's own rule (the one `attnspec verify`
uses):

    |got - ref|_max <= 2 * |naive_t - ref|_max + atol(t) * max(1, |ref|_max)

where `naive_t` is the same attention computed naively in the kernel's dtype. A kernel that
raises is recorded as `unsupported` (with its message), never as a pass. The result is the map
of where each library is wrong; attnspec's capability rules (docs/verification.md) come from it.

Run on the GPU machine (flash-attn 4 optional, see ../shared/gpu/fa4-wheels.sh):
    SITE=/tmp/fa4site python3 benchmarks/gpu_kernel_probe.py --kernels fa4,flex-flash
    python3 benchmarks/gpu_kernel_probe.py --kernels sdpa,flex --deadline 300
Work is split over worker processes (one per head dim: the compile time is CPU-bound, the GPU
work is small); each stops at `--deadline` seconds and says what it skipped. Raw rows go to
$OUT/probe-<kernels>.jsonl, the summary table is printed last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import site
import sys
import time
from pathlib import Path

if os.environ.get("SITE"):  # flash-attn 4's CUTLASS DSL needs its .pth processed
    site.addsitedir(os.environ["SITE"])

import torch  # noqa: E402
from gpu_workers import run_workers  # noqa: E402

HEAD_DIMS = (16, 32, 64, 96, 128, 256)
LENGTHS = ((1, 1), (37, 37), (64, 64), (77, 77), (128, 128), (200, 200), (300, 300),
           (1000, 1000), (4096, 4096), (37, 300), (300, 37), (1, 77), (77, 1000), (1000, 77),
           (200, 4096))
ATOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3}
KERNELS = ("fa4", "fa4-varlen", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "flex",
           "flex-flash")
# (causal, gqa, dtype) configurations probed per head dim; bf16 everywhere, fp16 where it differs
# most often (causal, no GQA) to keep the compile count per worker bounded.
DEVICE = os.environ.get("PROBE_DEVICE", "cuda")  # "cpu" only to smoke-test this script
CONFIGS = ((True, False, torch.bfloat16), (True, True, torch.bfloat16),
           (False, False, torch.bfloat16), (False, True, torch.bfloat16),
           (True, False, torch.float16), (False, False, torch.float16))


# --- reference ---------------------------------------------------------------------------------
def attention(q, k, v, scale, allowed, low_precision):
    """Naive attention on [B, H, S, D] (k/v heads repeated already); `allowed` [Sq, Sk] or None.
    Rows with nothing to attend give 0. In low precision the scores are formed in the inputs'
    dtype and the softmax in float32, as eager code in that dtype would."""
    s = (q @ k.transpose(-1, -2)).float() if low_precision else q @ k.transpose(-1, -2)
    s = s * scale
    if allowed is not None:
        s = torch.where(allowed, s, torch.full_like(s, -math.inf))
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    denom = e.sum(-1, keepdim=True)
    p = e / torch.where(denom == 0, torch.ones_like(denom), denom)
    return p.to(v.dtype) @ v


def causal_allowed(sq, sk, bottom_right, device):
    q = torch.arange(sq, device=device)[:, None]
    k = torch.arange(sk, device=device)[None, :]
    return k <= q + (sk - sq if bottom_right else 0)


def run_with_grads(fn, q, k, v, grad_out):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(grad_out.to(out.dtype))
    return {"out": out.detach(), "dq": leaves[0].grad, "dk": leaves[1].grad,
            "dv": leaves[2].grad}


def reference_runs(q, k, v, grad_out, scale, allowed, dtype):
    """float64 reference and the naive run in `dtype`, outputs and gradients ([B, H, S, D])."""
    rep = q.shape[1] // k.shape[1]

    def naive(low):
        return lambda q_, k_, v_: attention(q_, k_.repeat_interleave(rep, 1),
                                            v_.repeat_interleave(rep, 1), scale, allowed, low)

    ref = run_with_grads(naive(False), q.double(), k.double(), v.double(), grad_out.double())
    base = run_with_grads(naive(True), q.to(dtype), k.to(dtype), v.to(dtype), grad_out)
    return ref, base


def compare(got, ref, base, dtype):
    """(worst ratio, worst tensor, detail) under the verify rule."""
    scale = max([1.0] + [ref[n].abs().max().item() for n in ref if ref[n].numel()])
    worst = (0.0, "", "")
    for name in ("out", "dq", "dk", "dv"):
        g, r, b = got[name], ref[name], base[name]
        if g is None:
            return math.inf, name, "gradient missing"
        g, r, b = g.double(), r.double(), b.double()
        if g.shape != r.shape:
            return math.inf, name, f"shape {tuple(g.shape)} != {tuple(r.shape)}"
        if not torch.isfinite(g).all():
            return math.inf, name, "non-finite values"
        err = (g - r).abs().max().item() if g.numel() else 0.0
        allowed = 2 * ((b - r).abs().max().item() if b.numel() else 0.0) + ATOL[dtype] * scale
        if err / allowed > worst[0]:
            worst = (err / allowed, name, f"max error {err:.3g}, allowed {allowed:.3g}")
    return worst


# --- kernels -----------------------------------------------------------------------------------
def fa4_dense(q, k, v, scale, causal):
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          softmax_scale=scale, causal=causal)
    out = out[0] if isinstance(out, tuple) else out
    return out.transpose(1, 2)


def fa4_varlen(q, k, v, scale, causal):
    """Each batch row as one sequence of a varlen call ([total, H, D] layout)."""
    from flash_attn.cute import flash_attn_varlen_func

    B, H, Sq, D = q.shape
    Sk = k.shape[2]

    def pack(t):
        return t.transpose(1, 2).reshape(B * t.shape[2], t.shape[1], t.shape[3])

    cu_q = torch.arange(0, (B + 1) * Sq, Sq, device=q.device, dtype=torch.int32)
    cu_k = torch.arange(0, (B + 1) * Sk, Sk, device=q.device, dtype=torch.int32)
    out = flash_attn_varlen_func(pack(q), pack(k), pack(v), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                 max_seqlen_q=Sq, max_seqlen_k=Sk, softmax_scale=scale,
                                 causal=causal)
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(B, Sq, H, v.shape[-1]).transpose(1, 2)


def sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    forced = {"sdpa-flash": SDPBackend.FLASH_ATTENTION,
              "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
              "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}.get(backend)

    def run(q, k, v, scale, causal):
        gqa = q.shape[1] != k.shape[1]
        call = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
            q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
        if forced is None:
            return call()
        with sdpa_kernel([forced]):
            return call()
    return run


_FLEX = {}


def flex(kernel):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if kernel not in _FLEX:
        _FLEX[kernel] = torch.compile(flex_attention, dynamic=True, fullgraph=True)
    options = {"BACKEND": "FLASH"} if kernel == "flex-flash" else None

    def run(q, k, v, scale, causal):
        block_mask = None
        if causal:  # top-left, as flex's q >= k
            block_mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None,
                                           q.shape[2], k.shape[2], device=q.device)
        return _FLEX[kernel](q, k, v, block_mask=block_mask, scale=scale,
                             enable_gqa=q.shape[1] != k.shape[1], kernel_options=options)
    return run


def kernel_fn(name):
    if name == "fa4":
        return fa4_dense
    if name == "fa4-varlen":
        return fa4_varlen
    if name.startswith("sdpa"):
        return sdpa(name)
    return flex(name)


def bottom_right(name):
    """flash-attn's causal is aligned bottom-right; SDPA's and flex's q >= k top-left."""
    return name.startswith("fa4")


# --- worker ------------------------------------------------------------------------------------
def probe_shape(kernels, hd, sq, sk, causal, gqa, dtype, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    B, H = (1, 4) if max(sq, sk) >= 4096 else (2, 4)
    Hkv = 2 if gqa else H
    q, k, v = (torch.randn(B, h, s, hd, device=DEVICE, generator=gen, dtype=torch.float64)
               for h, s in ((H, sq), (Hkv, sk), (Hkv, sk)))
    grad_out = torch.randn(B, H, sq, hd, device=DEVICE, generator=gen, dtype=torch.float64)
    scale = hd ** -0.5
    refs = {}
    rows = []
    for name in kernels:
        align = bottom_right(name) if causal else None
        if align not in refs:
            allowed = causal_allowed(sq, sk, align, DEVICE) if causal else None
            refs[align] = reference_runs(q, k, v, grad_out.to(dtype), scale, allowed, dtype)
        ref, base = refs[align]
        fn = kernel_fn(name)
        row = {"kernel": name, "dtype": str(dtype).split(".")[-1], "hd": hd, "sq": sq, "sk": sk,
               "causal": causal, "gqa": gqa}
        try:
            got = run_with_grads(lambda a, b, c, fn=fn: fn(a, b, c, scale, causal), q.to(dtype),
                                 k.to(dtype), v.to(dtype), grad_out.to(dtype))
            ratio, tensor, detail = compare(got, ref, base, dtype)
            row.update(status="pass" if ratio <= 1 else "FAIL", ratio=ratio, tensor=tensor,
                       detail=detail)
        except Exception as e:  # noqa: BLE001 — a refusal or crash is data here
            row.update(status="unsupported", ratio=None, tensor="",
                       detail=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                       if str(e) else type(e).__name__)
        rows.append(row)
    return rows


def worker(args) -> None:
    torch._dynamo.config.recompile_limit = 256  # never fall back to the uncompiled path
    deadline = time.monotonic() + args.deadline
    kernels = args.kernels.split(",")
    kernels = [k for k in KERNELS if any(k == w or (w == "fa4" and k == "fa4-varlen")
                                         or (w == "sdpa" and k.startswith("sdpa-"))
                                         for w in kernels)]
    out = open(args.rows, "a")
    seed = 0
    skipped = 0
    for causal, gqa, dtype in CONFIGS:
        for sq, sk in LENGTHS:
            seed += 1
            if time.monotonic() > deadline:
                skipped += 1
                continue
            for row in probe_shape(kernels, args.hd, sq, sk, causal, gqa, dtype, seed):
                out.write(json.dumps(row) + "\n")
            out.flush()
            torch.cuda.empty_cache()
    if skipped:
        out.write(json.dumps({"skipped": skipped, "hd": args.hd}) + "\n")
    out.close()


# --- driver ------------------------------------------------------------------------------------
def summarise(rows: list[dict]) -> str:
    """Per kernel, dtype, head dim: passes / cases, and where it fails or is unsupported."""
    groups: dict = {}
    for r in rows:
        if "kernel" in r:
            groups.setdefault((r["kernel"], r["dtype"], r["hd"]), []).append(r)
    lines = [f"{'kernel':15} {'dtype':9} {'hd':>4}  pass/run  "
             "failures (tensor@Sq/Sk c=causal g=gqa)"]
    for (kernel, dtype, hd), rs in sorted(groups.items()):
        run = [r for r in rs if r["status"] != "unsupported"]
        fails = [r for r in run if r["status"] == "FAIL"]
        where = ", ".join(f"{r['tensor']}@{r['sq']}/{r['sk']}{'c' if r['causal'] else ''}"
                          f"{'g' if r['gqa'] else ''}({r['ratio']:.3g})" for r in fails[:8])
        more = f" +{len(fails) - 8}" if len(fails) > 8 else ""
        unsupported = len(rs) - len(run)
        note = f"  [{unsupported} unsupported]" if unsupported else ""
        lines.append(f"{kernel:15} {dtype:9} {hd:>4}  {len(run) - len(fails):>3}/{len(run):<4} "
                     f"{where}{more}{note}")
    skipped = sum(r.get("skipped", 0) for r in rows)
    if skipped:
        lines.append(f"(deadline: {skipped} shape configurations not probed)")
    return "\n".join(lines)


def driver(args) -> int:
    out_dir = Path(os.environ.get("OUT", "gpu-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / f"probe-{args.kernels.replace(',', '-')}.jsonl"
    print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
    rows = run_workers(__file__, [["--hd", str(hd), "--kernels", args.kernels, "--deadline",
                                   str(args.deadline)] for hd in args.head_dims], rows_path)
    unsupported = {(r["kernel"], r["hd"], r["detail"]) for r in rows
                   if r.get("status") == "unsupported"}
    for kernel, hd, detail in sorted(unsupported)[:30]:
        print(f"unsupported: {kernel} hd={hd}: {detail}")
    print(summarise(rows))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kernels", default="sdpa,flex")
    p.add_argument("--deadline", type=float, default=420.0, help="seconds per worker")
    p.add_argument("--head-dims", type=lambda s: [int(x) for x in s.split(",")],
                   default=list(HEAD_DIMS))
    p.add_argument("--worker", action="store_true")
    p.add_argument("--hd", type=int)
    p.add_argument("--rows")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
