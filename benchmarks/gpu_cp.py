"""Context parallelism measured (issue 17): every pattern sharded over W GPUs against the same
module on one GPU, then causal and packed-document throughput and peak memory, 1 GPU vs W.

Correctness (bf16, forward and every gradient): for causal, sliding window, packed documents,
ALiBi, token groups and graph edges, the sharded module's output and dq/dk/dv (gathered with
`plan.unshard`) must be within the `attnspec verify` rule of a float64 eager reference: error
<= 2x the error of the same module run whole on one device, plus a small absolute floor.
Throughput: forward+backward at S = 131,072 (B=1, H=16, D=128), causal and packed documents,
one GPU (rank 0 alone, no plan) against W GPUs (`cp=plan`), and each rank's peak memory.

Run on a machine of 2+ GPUs (NVLink multicast stays off; nothing else to set):
    torchrun --nproc-per-node 2 benchmarks/gpu_cp.py
A dry run on the CPU (gloo, float32, small sizes, eager/SDPA since flex has no CPU backward):
    torchrun --nproc-per-node 2 benchmarks/gpu_cp.py --cpu --seq 512 --check-seq 96
Rank 0 prints the table last and writes $OUT/cp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import attnspec  # noqa: E402
from attnspec.errors import UnsupportedBackendError  # noqa: E402

HEADS, HEAD_DIM = 16, 128
PATTERNS = {  # name -> (spec text or file, class, balance, call-time inputs)
    "causal": ("attention C {\n heads = 4\n head_dim = 64\n mask causal\n}", "C", "head_tail",
               ""),
    "sliding window": ("attention W {\n heads = 4\n kv_heads = 2\n head_dim = 64\n"
                       " mask sliding_window(100)\n}", "W", "none", ""),
    "documents": ("attention D {\n heads = 4\n head_dim = 64\n input doc: int[batch, seq]\n"
                  " mask causal & same(doc)\n}", "D", "documents", "doc"),
    "alibi": ("attention A {\n heads = 4\n head_dim = 64\n mask causal\n bias alibi\n}", "A",
              "head_tail", ""),
    "token groups": ("anchor.attn", "AnchorAttention", "none", "groups"),
    "graph edges": ("graph.attn", "GraphAttention", "none", "graph"),
}


def load(spec: str):
    return attnspec.load(spec if "\n" in spec else ROOT / "specs" / spec)


def call_inputs(kind: str, S: int, dev: str, gen: torch.Generator) -> dict:
    """Whole-sequence call-time inputs (every rank passes them whole under cp)."""
    if kind == "doc":
        lengths = torch.randint(S // 8, S // 2, (16,), generator=gen).cumsum(0)
        return {"doc": torch.bucketize(torch.arange(S), lengths)[None].to(dev)}
    if kind == "graph":
        src = torch.arange(S).repeat_interleave(8)
        dst = torch.randint(0, S, (S * 8,), generator=gen)
        return {"graph": torch.stack([src, dst]).to(dev),
                "graph_type": torch.randint(0, 2, (S * 8,), generator=gen).to(dev),
                "graph_distance": torch.randint(0, 40, (S * 8,), generator=gen).to(dev)}
    return {}


def run_once(module, seq: dict, kwargs: dict, grad: torch.Tensor, plan=None) -> dict:
    """Output and input gradients of one call, whole-sequence tensors in and out."""
    if plan is None:
        leaves = {n: t.detach().clone().requires_grad_() for n, t in seq.items()}
        out = module(*leaves.values(), **kwargs)
        (out.float() * grad).sum().backward()
        return {"out": out.detach(), **{f"d{n}": t.grad for n, t in leaves.items()}}
    dim = 1 if "x" in seq else 2
    leaves = {n: plan.shard(t.detach(), dim).clone().requires_grad_() for n, t in seq.items()}
    out = module(*leaves.values(), **kwargs, cp=plan)
    (out.float() * plan.shard(grad, dim)).sum().backward()
    return {"out": plan.unshard(out.detach(), dim),
            **{f"d{n}": plan.unshard(t.grad, dim) for n, t in leaves.items()}}


def check_pattern(name: str, S: int, dev: str, dtype: torch.dtype, backend: str) -> dict:
    spec, cls, balance, kind = PATTERNS[name]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    overrides = {"dim": 64, "heads": 2} if kind == "graph" else {}
    module = getattr(load(spec), cls)(backend=backend, **overrides).to(dev)
    reference = getattr(load(spec), cls)(backend="eager", **overrides).to(dev, torch.float64)
    reference.load_state_dict(module.state_dict())
    module = module.to(dtype)
    if kind == "groups":  # fixed group sizes: the sequence is their sum (290 for anchor.attn)
        S = sum(size for _, size in module.GROUPS)
    if hasattr(module, "q_proj"):
        seq = {"x": torch.randn(1, S, module.dim, generator=gen)}
        grad = torch.randn(1, S, module.dim, generator=gen)
    else:
        seq = {n: torch.randn(1, h, S, module.head_dim, generator=gen)
               for n, h in (("q", module.heads), ("k", module.kv_heads), ("v", module.kv_heads))}
        grad = torch.randn(1, module.heads, S, module.head_dim, generator=gen)
    kwargs = call_inputs(kind, S, dev, gen)
    grad = grad.to(dev)
    docs = kwargs["doc"][0] if balance == "documents" else None
    plan = attnspec.cp_plan(None, S, balance, docs)
    ref = run_once(reference, {n: t.to(dev, torch.float64) for n, t in seq.items()}, kwargs,
                   grad.double())
    whole = run_once(module, {n: t.to(dev, dtype) for n, t in seq.items()}, kwargs, grad)
    sharded = run_once(module, {n: t.to(dev, dtype) for n, t in seq.items()}, kwargs, grad,
                       plan)
    row = {"pattern": name, "backend": backend, "ok": True, "worst": 0.0}
    for key, want in ref.items():
        err_whole = (whole[key].double() - want).abs().max().item()
        err_cp = (sharded[key].double() - want).abs().max().item()
        ratio = err_cp / (2 * err_whole + 1e-3 * want.abs().max().item() + 1e-6)
        row["worst"] = max(row["worst"], ratio)
        row["ok"] &= ratio <= 1.0
    return row


def timed(fn, together: bool = True, reps: int = 5) -> float:
    """Mean milliseconds of `fn()` after 2 warm-up calls; `together`: every rank runs it and
    they start and stop at a barrier (a sharded call), else this rank alone (one GPU)."""
    for _ in range(2):
        fn()
    sync(together)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(together)
    return (time.perf_counter() - start) / reps * 1e3


def sync(together: bool) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if together:
        dist.barrier()


def throughput(name: str, S: int, dev: str, dtype: torch.dtype, world: int) -> dict:
    """fwd+bwd ms and this rank's peak memory: whole on rank 0 (1 GPU), then sharded."""
    spec, cls, balance, kind = PATTERNS[name]
    module = getattr(load(spec), cls)(backend="auto", heads=HEADS, head_dim=HEAD_DIM)
    module = module.to(dev, dtype)
    gen = torch.Generator().manual_seed(1)
    kwargs = call_inputs(kind, S, dev, gen)
    qkv = [torch.randn(1, HEADS, S, HEAD_DIM, device=dev, dtype=dtype) for _ in range(3)]
    row = {"pattern": name, "S": S, "world": world}
    if dist.get_rank() == 0:
        leaves = [t.clone().requires_grad_() for t in qkv]
        reset_peak(dev)
        ms = timed(lambda: module(*leaves, **kwargs).float().sum().backward(), False)
        row.update(one_ms=ms, one_peak_gib=peak(dev))
    dist.barrier()
    docs = kwargs["doc"][0] if balance == "documents" else None
    plan = attnspec.cp_plan(None, S, balance, docs)
    shards = [plan.shard(t, 2).clone().requires_grad_() for t in qkv]
    reset_peak(dev)
    row["cp_ms"] = timed(lambda: module(*shards, **kwargs, cp=plan).float().sum().backward())
    peaks = [torch.zeros(1, device=dev) for _ in range(world)]
    dist.all_gather(peaks, torch.tensor([peak(dev)], device=dev))
    row["cp_peak_gib"] = max(p.item() for p in peaks)
    row["ran"] = getattr(module, "last_backend", "?")
    return row


def reset_peak(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak(dev: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if "ok" in r:
            status = "refused" if "refused" in r else "ok" if r["ok"] else "FAIL"
            lines.append(f"{r['pattern']:16} {r['backend']:6} {status:7} worst ratio "
                         f"{r['worst']:.3f} {r.get('error', r.get('refused', ''))[:100]}")
        elif "cp_ms" in r:
            one = r.get("one_ms", float("nan"))
            lines.append(f"{r['pattern']:16} S={r['S']} 1 GPU {one:.1f} ms / {r['world']} GPUs "
                         f"{r['cp_ms']:.1f} ms = {one / r['cp_ms']:.2f}x; peak per GPU "
                         f"{r.get('one_peak_gib', 0):.1f} -> {r['cp_peak_gib']:.1f} GiB "
                         f"({r['ran']})")
        else:
            lines.append(f"{r['pattern']:16} {r.get('error', '')[:120]}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true", help="gloo on the CPU, float32 (a dry run)")
    p.add_argument("--seq", type=int, default=131072, help="throughput length")
    p.add_argument("--check-seq", type=int, default=1000, help="correctness length")
    p.add_argument("--backends", default="flex,sdpa", help="backends checked under cp")
    args = p.parse_args()
    dev = "cpu" if args.cpu else "cuda"
    dtype = torch.float32 if args.cpu else torch.bfloat16
    dist.init_process_group("gloo" if args.cpu else "nccl")
    if dev == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    world, rows = dist.get_world_size(), []
    backends = ["eager", "sdpa"] if args.cpu else args.backends.split(",")
    for name in PATTERNS:
        for backend in backends:
            try:
                rows.append(check_pattern(name, args.check_seq, dev, dtype, backend))
            except UnsupportedBackendError as error:  # the backend cannot run it: a refusal
                rows.append({"pattern": name, "backend": backend, "ok": True, "worst": 0.0,
                             "refused": str(error).splitlines()[0][:160]})
            except Exception as error:  # noqa: BLE001 — a refusal or failure is a row
                rows.append({"pattern": name, "backend": backend, "ok": False, "worst": 0.0,
                             "error": f"{type(error).__name__}: {str(error)[:200]}"})
    for name in ("causal", "documents"):
        try:
            rows.append(throughput(name, args.seq, dev, dtype, world))
        except Exception as error:  # noqa: BLE001
            rows.append({"pattern": name, "error": f"{type(error).__name__}: {error}"[:300]})
    if dist.get_rank() == 0:
        out = Path(os.environ.get("OUT", "gpu-out"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "cp.json").write_text(json.dumps(rows, indent=1))
        print(table(rows), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
