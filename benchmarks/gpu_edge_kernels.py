"""The fused edge kernels on the GPU (runtime `_edge_kernels`, off on CUDA until this passes):
per-edge q.k and per-row weighted sums, outputs and every gradient, against a float64 torch
reference, at the shapes that break kernels (head dims 16 to 256 and odd ones, 77 and 300
tokens, Sq != Sk, rows with no edges and rows with hundreds, bf16, fp16, fp32); then the edges
backend with the kernels through `attnspec.verify` on the graph specs, against the interpreter.

Run on the GPU machine (lark and pydantic wheels on the path):
    python3 benchmarks/gpu_edge_kernels.py
Raw rows: $OUT/edge-kernels.json; a table is printed last.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import attnspec  # noqa: E402
from attnspec import verify  # noqa: E402
from attnspec.runtime import edges  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def graph(gen, sq, sk, n_edges):
    src = torch.randint(0, sq, (n_edges,), generator=gen)
    src[src == 1] = 0  # query 1: no edges; query 0: hundreds
    src[: n_edges // 4] = 0
    dst = torch.randint(0, sk, (n_edges,), generator=gen)
    order = torch.argsort(src, stable=True)
    return src[order].cuda(), dst[order].cuda()


def run(q, k, v, src, dst, upstream, fused):
    edges._EDGE_FUSED_ON_CUDA = fused
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    score = edges._edge_scores(leaves[0], leaves[1], src, dst, torch.float32 if
                               q.dtype != torch.float64 else torch.float64)
    probs = torch.sigmoid(score)
    out = edges._edge_aggregate(probs, leaves[2], src, dst, q.shape[2])
    (out * upstream).sum().backward()
    return [out.detach(), *(t.grad for t in leaves)]


def kernel_rows() -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for hd in (16, 32, 64, 96, 128, 200, 256):
        for sq, sk in ((77, 77), (300, 300), (45, 300), (300, 45)):
            src, dst = graph(gen, sq, sk, 8 * sq)
            base = [torch.randn(2, 4, n, hd, generator=gen).cuda() for n in (sq, sk, sk)]
            upstream = torch.randn(2, 4, sq, hd, generator=gen).cuda()
            ref = run(*(t.double() for t in base), src, dst, upstream.double(), False)
            for name, dtype in DTYPES.items():
                args = [t.to(dtype) for t in base]
                fused = run(*args, src, dst, upstream.to(dtype), True)
                plain = run(*args, src, dst, upstream.to(dtype), False)
                worst = max(((f.double() - r).abs().max() /
                             ((p.double() - r).abs().max() * 2 + 1e-3 * r.abs().max())).item()
                            for f, p, r in zip(fused, plain, ref))
                rows.append({"part": "kernel", "hd": hd, "sq": sq, "sk": sk, "dtype": name,
                             "ratio": worst, "status": "pass" if worst <= 1 else "FAIL"})
    edges._EDGE_FUSED_ON_CUDA = False
    return rows


def spec_rows() -> list[dict]:
    """verify's cases on CUDA for the graph specs on the edges backend, kernels on."""
    rows = []
    for path in (ROOT / "specs" / "graph.attn", ROOT / "benchmarks" / "suite.attn"):
        module_ir, module = attnspec.build(path), attnspec.load(path)
        module._EDGE_FUSED_ON_CUDA = True
        for attn in module_ir.attentions:
            cls = getattr(module, attn.name)
            if "edges" not in cls.BACKENDS:
                continue
            for i, case in enumerate(verify.cases_for(attn, "cuda")):
                for dtype in ("bfloat16", "float32"):
                    result = verify._safe_check(attn, cls, "edges", case, verify.DTYPES[dtype],
                                                "cuda", 100 + i, path.name)
                    rows.append({"part": "spec", "attention": attn.name, "case": case.name,
                                 "dtype": dtype, "status": result.status,
                                 "ratio": result.worst_ratio, "detail": result.detail[:200]})
        module._EDGE_FUSED_ON_CUDA = False
    return rows


def main() -> int:
    print("torch", torch.__version__, torch.cuda.get_device_name(), flush=True)
    rows = kernel_rows() + spec_rows()
    out = Path(os.environ.get("OUT", "gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "edge-kernels.json").write_text(json.dumps(rows, indent=1))
    fails = [r for r in rows if r["status"] == "FAIL"]
    for r in fails[:30]:
        print("FAIL", r)
    by_part: dict = {}
    for r in rows:
        by_part.setdefault(r["part"], []).append(r)
    for part, part_rows in by_part.items():
        worst = max((r["ratio"] or 0) for r in part_rows)
        counts = {s: sum(r["status"] == s for r in part_rows) for s in ("pass", "refused",
                                                                         "FAIL")}
        print(f"{part:7} {len(part_rows):4} checks  {counts}  worst ratio {worst:.3g}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
