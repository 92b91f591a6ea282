"""torch.compile sweep: for every spec in specs/*.attn, every attention, backends eager and
sdpa on CPU, `torch._dynamo.explain` with every size dynamic (as torch.compile(dynamic=True))
at two sequence lengths; prints graph and break counts (the target: 1 graph, 0 breaks).

    PYTHONPATH=. python benchmarks/compile_check.py [SPEC ...]
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

import attnspec
from attnspec import verify


def explain(module, attn, seq: int):
    """torch._dynamo.explain of one call, every size dynamic (as torch.compile(dynamic=True));
    tests/test_compile.py uses this too."""
    gen = torch.Generator().manual_seed(0)
    args, inputs, sizes = verify.make_inputs(attn, verify.Case("c", 2, seq, seq), torch.float32,
                                             "cpu", gen)
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(assume_static_by_default=False):
        return torch._dynamo.explain(module)(*args, **inputs, sizes=sizes or None)


def main(paths: list[str]) -> int:
    warnings.simplefilter("ignore")
    specs = paths or sorted(str(p) for p in Path("specs").glob("*.attn"))
    worst = 0
    for path in specs:
        mod = attnspec.load(Path(path))
        for attn in attnspec.build(Path(path)).attentions:
            cls = getattr(mod, attn.name)
            for backend in ("eager", "sdpa"):
                if backend not in cls.BACKENDS:
                    print(f"{path} {attn.name} {backend}: not generated")
                    continue
                start = time.perf_counter()
                lengths = (verify._group_total(attn),) if attn.groups else (17, 29)
                counts = []
                for seq in lengths:
                    result = explain(cls(backend=backend).eval(), attn, seq)
                    counts.append((result.graph_count, result.graph_break_count))
                    if result.graph_break_count:
                        worst = 1
                        for reason in result.break_reasons:
                            print("   ", str(reason.reason).splitlines()[0])
                print(f"{path} {attn.name} {backend}: (graphs, breaks) per length {counts} "
                      f"{time.perf_counter() - start:.1f}s", flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
