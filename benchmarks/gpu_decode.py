"""Decoding with a KV cache (issue 19): attnspec's generated module against flash-attn 4 called
directly with the cache and against FlexAttention's decoding kernel (bf16, one GPU).

Batch 64, cache lengths drawn from 1k-32k (mixed, seed 0), GQA 32/8, head_dim 128, one new
token per row per step; contiguous caches [B, capacity, 8, 128] and paged ones (pages of 128
tokens, table order shuffled). Each timed step appends the new token and attends (the lengths
are not advanced, so every repetition rewrites the same slots). Median of CUDA-event timings.
Rows also go to $OUT/gpu_decode.json; a short table is printed last. SKIP_FLEX=1 leaves out
the flex rows (their compiles take most of the time).

    bash benchmarks/gpu_decode.sh   (after staging flash-attn 4: see its header)
"""

import json
import os
import site

site.addsitedir(os.environ.get("SITE", "/tmp/fa4site"))

import torch  # noqa: E402
from gpu_workers import timed  # noqa: E402
from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: E402

import attnspec  # noqa: E402

B, HQ, HK, D, PAGE = 64, 32, 8, 128, 128
SPEC = """
attention Decode {{
    heads    = 32
    kv_heads = 8
    head_dim = 128
    input cache: kv_cache{paged}
    mask causal
}}
attention DecodeRope {{
    heads    = 32
    kv_heads = 8
    head_dim = 128
    input cache: kv_cache{paged}
    mask causal
    position rope(base = 500000)
}}
"""
dev, dt = "cuda", torch.bfloat16
SKIP_FLEX = os.environ.get("SKIP_FLEX") == "1"
gen = torch.Generator().manual_seed(0)
lengths = torch.randint(1024, 32768, (B,), generator=gen).to(dev)
capacity = int(lengths.max()) + 1
capacity = -(-capacity // PAGE) * PAGE
rows_used = lengths + 1
q = torch.randn(B, HQ, 1, D, device=dev, dtype=dt)
k_new = torch.randn(B, HK, 1, D, device=dev, dtype=dt)
v_new = torch.randn(B, HK, 1, D, device=dev, dtype=dt)
cache_k = torch.randn(B, capacity, HK, D, device=dev, dtype=dt)
cache_v = torch.randn(B, capacity, HK, D, device=dev, dtype=dt)
# Paged: every row's pages, in a shuffled order over the pool.
pages_per_row = capacity // PAGE
perm = torch.randperm(B * pages_per_row, generator=gen).to(dev)
page_table = perm.view(B, pages_per_row).to(torch.int32)
pool_k = torch.empty(B * pages_per_row, PAGE, HK, D, device=dev, dtype=dt)
pool_v = torch.empty_like(pool_k)
pool_k[page_table.long().flatten()] = cache_k.view(B * pages_per_row, PAGE, HK, D)
pool_v[page_table.long().flatten()] = cache_v.view(B * pages_per_row, PAGE, HK, D)
read_bytes = int(rows_used.sum()) * HK * D * 2 * 2  # k and v, bf16


rows, outputs = [], {}


def run(name, fn, reps=30):
    if SKIP_FLEX and "flex" in name:
        return
    try:
        with torch.no_grad():
            outputs[name] = fn().float()
            ms = timed(fn, reps)
        rows.append({"case": name, "ms": ms, "GB/s": read_bytes / ms / 1e6})
    except Exception as error:  # noqa: BLE001 — report and go on: one table for every case
        rows.append({"case": name, "ms": None, "error": f"{type(error).__name__}: {error}"[:300]})
    print(rows[-1], flush=True)


# --- flash-attn 4 directly: append (index_put) + flash_attn_varlen_func with the cache --------
from flash_attn.cute import flash_attn_varlen_func  # noqa: E402

seqused = rows_used.to(torch.int32)
batch_index = torch.arange(B, device=dev)


def fa4_contiguous(append=True):
    if append:
        cache_k[batch_index, lengths] = k_new[:, :, 0]
        cache_v[batch_index, lengths] = v_new[:, :, 0]
    out = flash_attn_varlen_func(q.transpose(1, 2), cache_k, cache_v, seqused_k=seqused,
                                 causal=True)
    return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)


slot_page = page_table.long()[batch_index, lengths // PAGE]


def fa4_paged(append=True):
    if append:
        pool_k[slot_page, lengths % PAGE] = k_new[:, :, 0]
        pool_v[slot_page, lengths % PAGE] = v_new[:, :, 0]
    out = flash_attn_varlen_func(q.transpose(1, 2), pool_k, pool_v, seqused_k=seqused,
                                 page_table=page_table, causal=True)
    return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)


run("fa4 direct, contiguous (kernel only)", lambda: fa4_contiguous(False))
run("fa4 direct, contiguous (+ append)", fa4_contiguous)
run("fa4 direct, paged (kernel only)", lambda: fa4_paged(False))
run("fa4 direct, paged (+ append)", fa4_paged)

# --- flex's decoding kernel directly: compiled flex_attention, BlockMask from the lengths ------
flex = torch.compile(flex_attention, fullgraph=True)
kv_blocks = capacity // PAGE
counts = ((rows_used + PAGE - 1) // PAGE).to(torch.int32).view(B, 1, 1)
order = torch.arange(kv_blocks, device=dev, dtype=torch.int32).view(1, 1, 1, -1).expand(
    B, 1, 1, kv_blocks).contiguous()
offsets = lengths


def causal_rows(b, h, q_idx, kv_idx):
    return kv_idx <= q_idx + offsets[b]


block_mask = BlockMask.from_kv_blocks(counts, order, BLOCK_SIZE=PAGE, mask_mod=causal_rows,
                                      seq_lengths=(1, capacity))
kc, vc = cache_k.transpose(1, 2), cache_v.transpose(1, 2)
run("flex direct (enable_gqa)", lambda: flex(q, kc, vc, block_mask=block_mask, enable_gqa=True))
# GQA folded into the query axis (what attnspec's flex decode does): the 4 query heads of a kv
# head become 4 query rows, so flex's decoding kernel reads each key once.
GROUP = HQ // HK


def causal_folded(b, h, q_idx, kv_idx):  # every folded row is the one new token
    return kv_idx <= offsets[b]


folded_mask = BlockMask.from_kv_blocks(counts, order, BLOCK_SIZE=PAGE, mask_mod=causal_folded,
                                       seq_lengths=(GROUP, capacity))
run("flex direct (GQA folded)", lambda: flex(q.reshape(B, HK, GROUP, D), kc, vc,
                                             block_mask=folded_mask).reshape(B, HQ, 1, D))

# --- attnspec -----------------------------------------------------------------------------
for layout, paged in (("contiguous", ""), ("paged", "(paged = true)")):
    mod = attnspec.load(SPEC.format(paged=paged))
    cache = (dict(cache_k=cache_k, cache_v=cache_v) if not paged else
             dict(cache_k=pool_k, cache_v=pool_v, cache_pages=page_table))
    for backend in ("auto", "flash", "flex"):
        for spec in ("Decode", "DecodeRope"):
            m = getattr(mod, spec)(backend=backend).to(dev)
            for checks in (True, False):
                m.check_values = checks
                label = (f"attnspec {backend} {layout} {spec}"
                         f"{'' if checks else ' (check_values=False)'}")
                run(label, lambda m=m, c=cache: m(q, k_new, v_new, cache_len=lengths, **c))
                if backend == "auto" and checks:
                    rows[-1]["ran"] = getattr(m, "last_backend", "?")

reference = outputs.get("fa4 direct, contiguous (+ append)")
for row in rows:
    out = outputs.get(row["case"])
    if reference is not None and out is not None and "Rope" not in row["case"]:
        row["max |diff| vs fa4"] = float((out - reference).abs().max())
os.makedirs(os.environ.get("OUT", "."), exist_ok=True)
with open(os.path.join(os.environ.get("OUT", "."), "gpu_decode.json"), "w") as f:
    json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "lengths": lengths.tolist(), "rows": rows}, f, indent=1)

base = {r["case"]: r["ms"] for r in rows}
direct = {"contiguous": base.get("fa4 direct, contiguous (+ append)"),
          "paged": base.get("fa4 direct, paged (+ append)")}
print(f"\n{torch.cuda.get_device_name()}: B={B}, heads 32/8, D=128, bf16, lengths "
      f"{int(lengths.min())}-{int(lengths.max())} (mean {float(lengths.float().mean()):.0f})")
print(f"{'case':58} {'ms':>8} {'GB/s':>7} {'x fa4':>6} {'diff':>8}")
for r in rows:
    if r.get("ms") is None:
        print(f"{r['case']:58} failed: {r['error'][:60]}")
        continue
    layout = "paged" if "paged" in r["case"] else "contiguous"
    ratio = direct[layout] / r["ms"] if direct[layout] else float("nan")
    diff = r.get("max |diff| vs fa4")
    print(f"{r['case'][:58]:58} {r['ms']:8.3f} {r['GB/s']:7.0f} {ratio:6.2f} "
          f"{'' if diff is None else f'{diff:8.4f}'}")
