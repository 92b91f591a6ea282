"""Does flex (Triton) return wrong gradients when its first compile sees static shapes?

The GPU matrix found wrong dv from attnspec's flex backend at 77 tokens (SlidingWindowGQA,
SlidingWindowSinks at head dim 16, MupCausalLayer at 16 and 32) while 300 and 1000 tokens passed
and the direct probe, compiled with `dynamic=True`, passed everywhere. This script isolates it:
every check starts from a fresh compile (`torch._dynamo.reset()`), so each one is a *first*
compile, static or dynamic as the row says.

Part 1, flex called directly: lengths 77 and 300, head dims 16 and 32, GQA or not, no mask or a
causal BlockMask, no score_mod or ALiBi + softcap; compiled `dynamic=False` and `dynamic=True`.
Part 2, attnspec modules: the specs that failed, at 77 tokens, with the module's own compile
(`default`) and with dynamic shapes forced from the first call (`dynamic`).

Run on the GPU machine (lark and pydantic on the path):
    python3 benchmarks/gpu_flex_first_compile.py --deadline 400
Raw rows: $OUT/flex-first-compile.jsonl; a table is printed last.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from gpu_kernel_probe import compare, run_with_grads
from gpu_workers import run_workers, timed

ROOT = Path(__file__).resolve().parent.parent
SOFTCAP = 30.0
MODULE_SPECS = (("specs/sliding_window.attn", "SlidingWindowGQA"),
                ("specs/attention_sinks.attn", "SlidingWindowSinks"),
                ("specs/mup_layer.attn", "MupCausalLayer"))


def slopes(heads: int, device) -> torch.Tensor:
    return torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)], device=device)


def naive(q, k, v, scale, causal, mod, low_precision):
    """Reference attention ([B, H, S, D], kv heads repeated); scores in float32 when low."""
    s = (q @ k.transpose(-1, -2)).float() if low_precision else q @ k.transpose(-1, -2)
    s = s * scale
    sq, sk = s.shape[-2:]
    qi = torch.arange(sq, device=q.device)[:, None]
    ki = torch.arange(sk, device=q.device)[None, :]
    if mod:
        s = s - slopes(s.shape[1], q.device).to(s.dtype)[:, None, None] * (qi - ki).abs()
        s = SOFTCAP * torch.tanh(s / SOFTCAP)
    if causal:
        s = s.masked_fill(ki > qi, -math.inf)
    return torch.softmax(s, -1).to(v.dtype) @ v


def flex_call(dynamic: bool, causal: bool, mod: bool):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=dynamic, fullgraph=True)

    def run(q, k, v, scale):
        sl = slopes(q.shape[1], q.device)

        def score_mod(score, b, h, qi, ki):
            score = score - sl[h] * (qi - ki).abs()
            return SOFTCAP * torch.tanh(score / SOFTCAP)
        block_mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, q.shape[2],
                                       k.shape[2], device=q.device) if causal else None
        return compiled(q, k, v, score_mod=score_mod if mod else None, block_mask=block_mask,
                        scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return run


def _randn(B, h, s, hd, gen, transposed):
    """[B, h, s, hd] float64; `transposed` lays it out [B, s, h, hd] as projections do."""
    if transposed:
        return torch.randn(B, s, h, hd, device="cuda", generator=gen,
                           dtype=torch.float64).transpose(1, 2)
    return torch.randn(B, h, s, hd, device="cuda", generator=gen, dtype=torch.float64)


def direct_check(s, hd, gqa, causal, mod, dynamic, seed, transposed=False):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    B, H, Hkv = 2, 8, 2 if gqa else 8
    q, k, v = (_randn(B, h, s, hd, gen, transposed) for h in (H, Hkv, Hkv))
    grad_out = _randn(B, H, s, hd, gen, transposed)
    scale, rep, dtype = hd ** -0.5, H // Hkv, torch.bfloat16

    def reference(low):
        return lambda a, b, c: naive(a, b.repeat_interleave(rep, 1), c.repeat_interleave(rep, 1),
                                     scale, causal, mod, low)
    ref = run_with_grads(reference(False), q, k, v, grad_out)
    base = run_with_grads(reference(True), q.to(dtype), k.to(dtype), v.to(dtype),
                          grad_out.to(dtype))
    fn = flex_call(dynamic, causal, mod)
    got = run_with_grads(lambda a, b, c: fn(a, b, c, scale), q.to(dtype), k.to(dtype),
                         v.to(dtype), grad_out.to(dtype))
    return compare(got, ref, base, dtype)


def _flex_attention_of_torch():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention


def _forcing_main_kernel(*args, kernel_options=None, **kwargs):
    options = {**(kernel_options or {}), "FORCE_USE_FLEX_ATTENTION": True}
    return _flex_attention_of_torch()(*args, kernel_options=options, **kwargs)


def module_check(spec, name, hd, mode, seed):
    from gpu_matrix import head_dim_overrides

    import attnspec
    from attnspec import verify

    torch._dynamo.config.assume_static_by_default = mode != "dynamic"
    module_ir, module = attnspec.build(ROOT / spec), attnspec.load(ROOT / spec)
    module._FLEX_COMPILED.clear()
    if mode == "force-flex":  # flex's main kernel even below 128 queries (no decoding kernel)
        module._flex_attention = _forcing_main_kernel
    else:
        module._flex_attention = _flex_attention_of_torch()
    attn = next(a for a in module_ir.attentions if a.name == name)
    case = verify.Case(f"S=77 hd={hd}", 2, 77, 77, head_dim_overrides(attn, hd))
    result = verify._safe_check(attn, getattr(module, name), "flex", case, torch.bfloat16,
                                "cuda", seed, Path(spec).name)
    torch._dynamo.config.assume_static_by_default = True
    return result.worst_ratio, result.worst_tensor, result.detail[:200]


def items(parts: str = "modules,forced,transposed,direct") -> list[dict]:
    direct = [dict(part="direct", s=s, hd=hd, gqa=gqa, causal=c, mod=m, mode=mode)
              for s, hd, gqa, c, m, mode in itertools.product(
                  (77, 300), (16, 32), (False, True), (False, True), (False, True),
                  ("static", "dynamic"))]
    modules = [dict(part="module", spec=spec, name=name, hd=hd, mode=mode)
               for (spec, name), hd, mode in itertools.product(MODULE_SPECS, (16, 32),
                                                               ("default", "dynamic"))]
    forced = [dict(part="module", spec=spec, name=name, hd=hd, mode="force-flex")
              for (spec, name), hd in itertools.product(MODULE_SPECS, (16, 32))]
    transposed = [dict(part="direct", s=77, hd=hd, gqa=False, causal=True, mod=m, mode="static",
                       transposed=True) for hd, m in itertools.product((16, 32), (False, True))]
    chosen = {"modules": modules, "forced": forced, "transposed": transposed, "direct": direct}
    return [item for part in parts.split(",") for item in chosen[part]]


def worker(args) -> None:
    sys.path.insert(0, str(ROOT))
    torch._dynamo.config.recompile_limit = 512
    deadline = time.monotonic() + args.deadline
    todo = items(args.parts)[args.index::args.workers]
    with open(args.rows, "w") as out:
        for n, item in enumerate(todo):
            if time.monotonic() > deadline:
                out.write(json.dumps({"unreached": len(todo) - n}) + "\n")
                break
            torch._dynamo.reset()  # every check is a first compile
            seed = 100 + n * args.workers + args.index
            try:
                if item["part"] == "direct":
                    ratio, tensor, detail = direct_check(
                        item["s"], item["hd"], item["gqa"], item["causal"], item["mod"],
                        item["mode"] == "dynamic", seed, item.get("transposed", False))
                else:
                    ratio, tensor, detail = module_check(item["spec"], item["name"], item["hd"],
                                                         item["mode"], seed)
                status = "pass" if ratio <= 1 else "FAIL"
            except Exception as e:  # noqa: BLE001 — a crash is data here
                ratio, tensor, detail, status = None, "", f"{type(e).__name__}: {e}"[:200], "error"
            out.write(json.dumps({**item, "status": status, "ratio": ratio, "tensor": tensor,
                                  "detail": detail}) + "\n")
            out.flush()


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "status" not in r:
            continue
        if r["part"] == "direct":
            what = (f"flex S={r['s']:<4} hd={r['hd']:<3} gqa={int(r['gqa'])} "
                    f"causal={int(r['causal'])} alibi+softcap={int(r['mod'])}"
                    + (" [B,S,H,D]" if r.get("transposed") else ""))
        else:
            what = f"{r['name']:<19} S=77 hd={r['hd']:<3}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3g}"
        lines.append(f"{r['status']:5} {r['mode']:8} {what:58} {r['tensor']:>16} {ratio:>8}"
                     + (f"  {r['detail'][:80]}" if r["status"] != "pass" else ""))
    unreached = sum(r.get("unreached", 0) for r in rows)
    fails = sum(r.get("status") == "FAIL" for r in rows)
    lines.append(f"{len(lines)} checks, {fails} FAIL" + (f", {unreached} unreached"
                                                          if unreached else ""))
    return "\n".join(sorted(lines[:-1]) + lines[-1:])


def perf() -> str:
    """flex (Triton) causal forward+backward, B=4 H=16 D=128 bf16: static vs dynamic compile."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    lines = ["flex Triton causal fwd+bwd (ms): S, static, dynamic"]
    for s in (8192, 4000):
        q, k, v = (torch.randn(4, 16, s, 128, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, s, s, device="cuda")
        row = [str(s)]
        for dynamic in (False, True):
            torch._dynamo.reset()
            fn = torch.compile(flex_attention, dynamic=dynamic, fullgraph=True)
            step = lambda fn=fn, q=q, k=k, v=v, bm=bm: fn(  # noqa: E731
                q, k, v, block_mask=bm).sum().backward()
            row.append(f"{timed(step):.3f}")
        lines.append("  ".join(row))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--deadline", type=float, default=400.0)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--parts", default="modules,forced,transposed,direct")
    p.add_argument("--perf", action="store_true", help="also time static vs dynamic compiles")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--rows")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    out_dir = Path(os.environ.get("OUT", "gpu-out"))
    out_dir.mkdir(parents=True, exist_ok=True)
    common = ["--workers", str(args.workers), "--deadline", str(args.deadline), "--parts",
              args.parts]
    rows = run_workers(__file__, [["--index", str(i), *common] for i in range(args.workers)],
                       out_dir / "flex-first-compile.jsonl")
    print(table(rows))
    if args.perf:
        print(perf())
    return 0


if __name__ == "__main__":
    sys.exit(main())
