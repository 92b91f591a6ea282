"""GPU checks of the flex backend that CPU cannot make: no recompiles when only tensor values
change, and structured BlockMask build time against create_block_mask. Prints a short table."""

from __future__ import annotations

import time

import torch
from torch._dynamo.utils import counters
from torch.nn.attention.flex_attention import create_block_mask

import attnspec


def recompiles_across_documents(calls: int = 6) -> tuple[int, int]:
    """(graphs after the first call, graphs after all calls) for packed documents whose
    boundaries change every call."""
    mod = attnspec.load("specs/packed_documents.attn")
    m = mod.PackedDocuments(backend="flex").cuda().to(torch.bfloat16)
    B, S = 2, 1000
    graphs = []
    for i in range(calls):
        q, k, v = (torch.randn(B, m.heads, S, m.head_dim, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        gen = torch.Generator().manual_seed(i)
        doc = torch.cumsum((torch.rand(B, S, generator=gen) < 0.01).long(), -1).cuda()
        m(q, k, v, doc=doc).sum().backward()
        graphs.append(counters["stats"]["unique_graphs"])
    return graphs[0], graphs[-1]


def timed(fn, repeat: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat * 1e3


def block_mask_build_times(S: int = 32768) -> list[tuple[str, float, float]]:
    rt = attnspec.load("specs/packed_documents.attn")  # the inlined runtime builders
    doc = torch.cumsum((torch.rand(1, S) < 1 / 2048).long(), -1).cuda()

    def causal(b, h, q, k):
        return q >= k

    def window(b, h, q, k):
        return (q >= k) & (q - k <= 1024)

    def documents(b, h, q, k):
        return (q >= k) & (doc[b, q] == doc[b, k])

    def ours(classes):
        return lambda: rt._block_mask_of(rt._block_lists(rt._combine(classes(), 1, 1)), None,
                                         S, S, 128)

    cases = [
        ("causal", causal, lambda: [rt._band_blocks(S, S, None, 0, False, 128, "cuda")]),
        ("window 1024", window, lambda: [rt._band_blocks(S, S, -1024, 0, False, 128, "cuda")]),
        ("documents", documents, lambda: [rt._band_blocks(S, S, None, 0, False, 128, "cuda"),
                                          rt._segment_blocks(doc, doc, 128)]),
    ]
    rows = []
    for name, mask_mod, classes in cases:
        theirs = timed(lambda m=mask_mod: create_block_mask(m, 1, None, S, S, device="cuda",
                                                           _compile=True))
        rows.append((name, timed(ours(classes)), theirs))
    return rows


if __name__ == "__main__":
    first, last = recompiles_across_documents()
    print(f"flex graphs after call 1: {first}, after 6 calls with new document ids: {last}")
    header = ("mask (S=32768)", "structured ms", "create_block_mask ms", "speedup")
    print(f"{header[0]:<16} {header[1]:>14} {header[2]:>22} {header[3]:>8}")
    for name, ours_ms, theirs_ms in block_mask_build_times():
        print(f"{name:<16} {ours_ms:>14.3f} {theirs_ms:>22.3f} {theirs_ms / ours_ms:>7.1f}x")
