"""Issue 15 on the GPU: token groups as one flash-attn 4 varlen call, and packed documents
without host syncs. One device call (~5-8 minutes with first compiles), table printed last.

1. Verification first (nothing is timed that was not checked): `attnspec.verify` on CUDA in
   bf16 for flash and auto over the token-group specs below (outputs and gradients against the
   float64 interpreter), and the packed form against the ids form.
2. The suite's Anchor pattern and a MixedAttention-like spec (4 groups, 3 patterns; B=4, H=16,
   D=128, S=8192, bf16), forward and forward+backward: attnspec auto (flash `groups` plan),
   attnspec sdpa (one SDPA call per pattern, as MixedAttention), compiled flex with
   create_block_mask (Triton and FLASH kernels), SDPA with a dense mask, flash-attn 4 called
   directly on hand-gathered segments. Effective TFLOP/s count attendable pairs only.
3. The suite's Documents pattern (B=1, S=32768) forward and forward+backward: auto with ids,
   auto with cu_seqlens + max_seqlen, flash-attn 4 direct.
4. The packed training loop: 20 steps, S=32,768 tokens, new document lengths every step,
   forward+backward, everything the mask needs built inside the step: attnspec auto with ids,
   attnspec auto with cu_seqlens + max_seqlen (packed form), flash-attn 4 direct. Device-to-host
   syncs counted with torch.cuda.set_sync_debug_mode("warn") (steps 2..20), recompiles with
   dynamo's counters.

Run on the GPU machine after staging flash-attn 4 (as benchmarks/gpu_suite.sh says: here
`bash ../shared/gpu/fa4-wheels.sh` and .wheels/ with lark and pydantic; there, command 1
carrying .fa4a: `bash .fa4a/stage.sh`; command 2 carrying .fa4b and .wheels):
    bash .fa4b/install.sh && python3 -m pip install -q --no-index --find-links .wheels lark \
        pydantic && SITE=/tmp/fa4site PYTHONPATH=$PWD python3 benchmarks/gpu_tokengroups.py
Writes $OUT/tokengroups.json (raw rows). A CPU dry run of the code paths:
    SUITE_DEVICE=cpu SUITE_S=512 SUITE_DOC_S=1024 REPS=1 python3 benchmarks/gpu_tokengroups.py
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_suite as suite  # noqa: E402  (SITE, flash-attn 4, timing and the Anchor baselines)
import torch  # noqa: E402
import torch._dynamo.utils as dynamo_utils  # noqa: E402

import attnspec  # noqa: E402
from attnspec import verify  # noqa: E402

DEV, BF, B, H, D, S = suite.DEV, suite.BF, suite.B, suite.H, suite.D, suite.S
DOC_S, CUDA, OUT, log = suite.DOC_S, suite.CUDA, suite.OUT, suite.log
STEPS = 20
# MixedAttention-like: 4 groups, 3 patterns, non-adjacent key groups (a, c) and a padded
# variant for verification. Sizes scale with S (8192: 1024 / 3072 / 1024 / 3072).
MIXED = f"""
attention Mixed {{
    heads = {H}
    head_dim = {D}
    tokens {{
        a: {S // 8}
        b: {3 * S // 8}
        c: {S // 8}
        d: {3 * S // 8}
    }}
    pattern a, c -> a, c
    pattern b -> a, b
    pattern d -> c, d
}}
"""
# The suite's Anchor pattern (benchmarks/suite.attn), sizes scaled with S for CPU dry runs.
ANCHOR = f"""
attention Anchor {{
    heads = {H}
    head_dim = {D}
    tokens {{
        surface_anchors: {S // 8}
        surface_queries: {3 * S // 8}
        volume_anchors:  {S // 8}
        volume_queries:  {3 * S // 8}
    }}
    pattern surface_anchors, surface_queries -> surface_anchors
    pattern volume_anchors,  volume_queries  -> volume_anchors
}}
"""
# Small versions for verification against the float64 interpreter (verify picks the lengths).
CHECKS = """
attention MixedSmall {
    heads = 4
    kv_heads = 2
    head_dim = 64
    tokens {
        a: 5
        b: *
        c: 3
        d: 6
    }
    pattern a, c -> a, c
    pattern b -> a, b
    pattern d -> c, d
}
attention MixedPadded {
    heads = 4
    head_dim = 64
    input valid: bool[batch, seq]
    tokens {
        a: 5
        b: *
        c: 3
        d: 6
    }
    pattern a, c -> a, c
    pattern b -> a, b
    pattern d -> c, d
    mask key_valid(valid)
}
attention Docs {
    heads = 4
    head_dim = 64
    input doc: int[batch, seq]
    mask causal & same(doc)
}
attention CausalLeftPadded {
    heads = 4
    head_dim = 64
    input valid: bool[batch, seq]
    mask causal & key_valid(valid)
}
"""
GROUPS_SPEC = ANCHOR + MIXED
GROUPS_MOD, CHECK_MOD = attnspec.load(GROUPS_SPEC), attnspec.load(CHECKS)
RESULT: dict = {"verify": [], "loop": []}


# --- 1. verification ---------------------------------------------------------------------------
def verification():
    log("== verification (attnspec.verify, bf16, outputs and gradients vs float64 eager)")
    module_ir = attnspec.build(CHECKS)
    for backend in ("flash", "auto"):
        results = verify.verify_spec(module_ir, CHECK_MOD, [backend], BF, DEV, seed=15)
        for r in results:
            RESULT["verify"].append(dict(attention=r.attention, backend=backend, case=r.case,
                                         ok=r.ok, refused=r.refused, detail=r.detail[:200]))
        failed = [r for r in results if not r.ok]
        log(f"  {backend}: {len(results)} checks, {len(failed)} failed, "
            f"{sum(r.refused for r in results)} refused")
        if failed:
            log(verify.format_table(failed))
    packed_matches_ids()
    left_padded_matches_eager()


def left_padded_matches_eager():
    """verify draws random key padding (flash refuses it under a band); left padding runs:
    flash in bf16 against eager in float32 on the same inputs, outputs and gradients."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(3, 4, 300, 64, generator=gen).to(DEV, BF) for _ in range(3))
    valid = torch.arange(300).view(1, -1) >= torch.tensor([[0], [45], [300]])
    results = {}
    for backend, dtype in (("flash", BF), ("eager", torch.float32)):
        layer = CHECK_MOD.CausalLeftPadded(backend=backend).to(DEV)
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        try:
            out = layer(*leaves, valid=valid.to(DEV))
        except attnspec.errors.UnsupportedInputError as e:
            log(f"  causal + left padding, {backend}: refused ({str(e)[:80]})")
            return
        grads = torch.autograd.grad(out.float().square().sum(), leaves)
        results[backend] = [out.float()] + [g.float() for g in grads]
    errs = [(a - b).abs().max().item() / max(b.abs().max().item(), 1e-6)
            for a, b in zip(results["flash"], results["eager"])]
    RESULT["verify"].append(dict(attention="CausalLeftPadded", backend="flash",
                                 ok=max(errs) < 3e-2, rel_max=errs))
    log(f"  causal + left padding, flash vs eager: relative max |diff| out, dq, dk, dv "
        f"{', '.join(f'{e:.1e}' for e in errs)}")


def packed_matches_ids():
    layer = CHECK_MOD.Docs().to(DEV)
    lengths = [5, 0, 300, 77, 130]
    cu = torch.tensor([0] + lengths, device=DEV).cumsum(0).to(torch.int32)
    total = int(cu[-1])
    q, k, v = (torch.randn(total, 4, 64, device=DEV, dtype=BF) for _ in range(3))
    ids = torch.repeat_interleave(torch.arange(5, device=DEV), torch.tensor(lengths, device=DEV))
    for backend in ("flash", "flex", "sdpa", "auto"):
        layer.backend = backend
        try:
            got = layer(q, k, v, cu_seqlens=cu, max_seqlen=300)
        except attnspec.errors.UnsupportedInputError as e:  # flash on a CPU dry run
            log(f"  packed vs ids, {backend}: refused ({str(e)[:80]})")
            continue
        want = layer(*(t.transpose(0, 1)[None] for t in (q, k, v)), doc=ids[None])
        err = (got.float() - want[0].transpose(0, 1).float()).abs().max().item()
        RESULT["verify"].append(dict(attention="Docs packed vs ids", backend=backend,
                                     ok=err < 2e-2, max_abs=err))
        log(f"  packed vs ids, {backend}: max |diff| {err:.2e}")


# --- 2. token groups ---------------------------------------------------------------------------
def groups_runs(q_runs, k_runs):
    """flash-attn 4 direct, written by hand: per batch row one segment per query run, keys
    gathered; cu_seqlens and the gather index built once (what a careful user writes)."""
    index = torch.cat([torch.cat([torch.arange(a, b) for a, b in runs]) for runs in k_runs])
    lengths = [sum(b - a for a, b in runs) for runs in k_runs]
    index = (index[None] + torch.arange(B)[:, None] * S).flatten().to(DEV)
    cu_q = torch.tensor([b * S + a for b in range(B) for a, _ in q_runs] + [B * S],
                        dtype=torch.int32, device=DEV)
    starts = [0]
    for n in lengths * B:
        starts.append(starts[-1] + n)
    cu_k = torch.tensor(starts, dtype=torch.int32, device=DEV)
    return index, cu_q, cu_k, max(b - a for a, b in q_runs), max(lengths)


DIRECT = {  # pattern -> (query runs, key runs) per batch row
    "Anchor": ([(0, S // 2), (S // 2, S)], [[(0, S // 8)], [(S // 2, S // 2 + S // 8)]]),
    "Mixed": ([(0, S // 8), (S // 8, S // 2), (S // 2, 5 * S // 8), (5 * S // 8, S)],
              [[(0, S // 8), (S // 2, 5 * S // 8)], [(0, S // 2)],
               [(0, S // 8), (S // 2, 5 * S // 8)], [(S // 2, S)]]),
}


def fa4_groups(pattern):
    if suite.flash_attn_varlen_func is None:
        return
    index, cu_q, cu_k, max_q, max_k = groups_runs(*DIRECT[pattern.name])
    q_, k_, v_ = pattern.storage

    def fn(grad):
        q, k, v = (t.detach().requires_grad_(grad).flatten(0, 1) for t in (q_, k_, v_))
        out = suite.flash_attn_varlen_func(q, k.index_select(0, index), v.index_select(0, index),
                                           cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                           max_seqlen_q=max_q, max_seqlen_k=max_k)
        out = out[0] if isinstance(out, tuple) else out
        return out.view(B, S, H, D).transpose(1, 2)
    suite.record(pattern, "flash-attn 4 direct", fn, note="hand-gathered segments")


# Which key groups each query group attends (groups of S/8, 3S/8, S/8, 3S/8 tokens).
ALLOWED = {
    "Anchor": [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]],
    "Mixed": [[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]],
}


class GroupsPattern(suite.Pattern):
    """The suite's Pattern machinery (inputs, timing, flex and SDPA baselines) for a
    token-group spec: the hand-written mask_mod looks the pair of groups up in a table."""

    def _mods(self):
        bounds = torch.tensor([0, S // 8, S // 2, 5 * S // 8, S], device=DEV)
        group = torch.bucketize(torch.arange(S, device=DEV), bounds, right=True) - 1
        allowed = torch.tensor(ALLOWED[self.name], dtype=torch.bool, device=DEV)

        def by_group(b, h, q, k):
            return allowed[group[q], group[k]]
        return by_group, None, "mask"


def token_groups(name):
    log(f"== {name}")
    pattern = GroupsPattern(name)
    spec = GROUPS_MOD
    attn = next(a for a in attnspec.build(GROUPS_SPEC).attentions if a.name == name)
    pattern.density = attnspec.eager.mask_density(attn, B, S, S, {}, device=DEV)
    for backend in ("auto", "sdpa"):
        layer = getattr(spec, name)(backend=backend).to(DEV)

        def fn(grad, layer=layer):
            return layer(*pattern.views(grad))
        with torch.no_grad():
            fn(False)
        suite.record(pattern, f"attnspec {backend}", fn,
                     ran=getattr(layer, "last_backend", backend))
    fa4_groups(pattern)
    suite.flex_contestants(pattern)
    suite.sdpa_contestants(pattern)


def documents():
    """The suite's Documents pattern (B=1, S=32768): auto with ids, auto packed, flash-attn 4
    direct, back to back as the suite times them (issue 15: forward >= 0.97x direct)."""
    log("== Documents (ids form, packed form, flash-attn 4 direct)")
    pattern = suite.Pattern("Documents")
    doc = pattern.inputs["doc"]
    attn = next(a for a in suite.SPEC_IR.attentions if a.name == "Documents")
    pattern.density = attnspec.eager.mask_density(attn, 1, DOC_S, DOC_S, pattern.inputs,
                                                  device=DEV)
    counts = torch.bincount(doc[0])
    cu = torch.nn.functional.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    longest = int(counts.max())
    layer = suite.SPEC.Documents().to(DEV)

    def ids_form(grad):
        return layer(*pattern.views(grad), doc=doc)

    def packed_form(grad):
        q, k, v = (t.detach().requires_grad_(grad)[0] for t in pattern.storage)
        return layer(q, k, v, cu_seqlens=cu, max_seqlen=longest)[None].transpose(1, 2)
    for label, fn in (("attnspec auto, ids", ids_form), ("attnspec auto, packed", packed_form)):
        with torch.no_grad():
            fn(False)
        suite.record(pattern, label, fn, ran=getattr(layer, "last_backend", "auto"))
    suite.fa4_contestant(pattern)


# --- 3. the packed training loop ---------------------------------------------------------------
def document_lengths(rng, total):
    lengths = []
    while sum(lengths) < total:
        lengths.append(rng.randint(256, 4096))
    lengths[-1] -= sum(lengths) - total
    return [n for n in lengths if n > 0]


def to_device(values, dtype):
    """A host list on the device as a data loader hands it over: pinned, non-blocking."""
    host = torch.tensor(values, dtype=dtype)
    return (host.pin_memory() if CUDA else host).to(DEV, non_blocking=True)


def loop_contestants():
    layer = suite.SPEC.Documents().to(DEV)

    def auto_ids(q, k, v, lengths):
        counts = to_device(lengths, torch.int64)
        doc = torch.repeat_interleave(torch.arange(len(lengths), device=DEV), counts,
                                      output_size=DOC_S)
        out = layer(*(t.transpose(0, 1)[None] for t in (q, k, v)), doc=doc[None])
        return out[0].transpose(0, 1)  # [total, H, D], as the packed contestants return

    def auto_packed(q, k, v, lengths):
        cu = torch.nn.functional.pad(to_device(lengths, torch.int32).cumsum(0, dtype=torch.int32),
                                     (1, 0))
        return layer(q, k, v, cu_seqlens=cu, max_seqlen=max(lengths))

    def fa4_direct(q, k, v, lengths):
        cu = torch.nn.functional.pad(to_device(lengths, torch.int32).cumsum(0, dtype=torch.int32),
                                     (1, 0))
        out = suite.flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu,
                                           max_seqlen_q=max(lengths), max_seqlen_k=max(lengths),
                                           causal=True)
        return out[0] if isinstance(out, tuple) else out

    found = [("attnspec auto, ids", auto_ids), ("attnspec auto, packed", auto_packed)]
    if suite.flash_attn_varlen_func is not None:
        found.append(("flash-attn 4 direct", fa4_direct))
    return layer, found


def training_loop():
    log(f"== packed training loop: {STEPS} steps, S={DOC_S}, new document lengths every step")
    layer, contestants = loop_contestants()
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(DOC_S, H, D, generator=gen).to(DEV, BF).requires_grad_()
               for _ in range(3))
    grad = torch.randn(DOC_S, H, D, generator=gen).to(DEV, BF)
    for label, step in contestants:
        rng = random.Random(4)
        step(q, k, v, document_lengths(random.Random(99), DOC_S)).backward(grad)  # warm
        suite.sync()
        before = dict(dynamo_utils.counters["stats"])
        times, syncs = [], []
        for _ in range(STEPS):
            lengths = document_lengths(rng, DOC_S)
            suite.sync()
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if CUDA:
                    torch.cuda.set_sync_debug_mode("warn")
                step(q, k, v, lengths).backward(grad)
                if CUDA:
                    torch.cuda.set_sync_debug_mode("default")
            suite.sync()
            times.append((time.perf_counter() - start) * 1e3)
            syncs.append(sum("synchroniz" in str(w.message) for w in caught))
        after = dict(dynamo_utils.counters["stats"])
        compiles = after.get("unique_graphs", 0) - before.get("unique_graphs", 0)
        row = dict(contestant=label, ms_mean=sum(times) / STEPS, ms_steps=times,
                   syncs_after_first=sum(syncs[1:]), syncs_per_step=syncs, recompiles=compiles,
                   ran=getattr(layer, "last_backend", ""))
        RESULT["loop"].append(row)
        log(f"  {label:24} {row['ms_mean']:7.3f} ms/step, syncs after step 1: "
            f"{row['syncs_after_first']}, recompiles {compiles}, ran {row['ran']}")


def main():
    meta = {"gpu": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
            "flash_attn_4": suite.flash_attn_func is not None, "B": B, "H": H, "D": D, "S": S,
            "doc_S": DOC_S, "reps": suite.REPS}

    def save():
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "tokengroups.json"), "w") as f:
            json.dump({"meta": meta, "rows": suite.ROWS, **RESULT}, f, indent=1)

    verification()
    save()
    for name in ("Anchor", "Mixed"):
        token_groups(name)
        save()
    documents()
    save()
    training_loop()
    save()
    summary()


def summary():
    log("\n== summary (ms fwd / fwd+bwd, effective TFLOP/s fwd / fwd+bwd)")
    for name in ("Anchor", "Mixed", "Documents"):
        rows = [r for r in suite.ROWS if r["pattern"] == name]
        for contestant in dict.fromkeys(r["contestant"] for r in rows):
            got = {r["pass_"]: r for r in rows if r["contestant"] == contestant}
            cells = [(f"{got[p]['ms']:.3f}", f"{got[p]['tflops']:.0f}") if got.get(p) and
                     got[p]["ms"] else ("-", "-") for p in ("fwd", "fwd+bwd")]
            log(f"{name:9} {contestant:22} {cells[0][0]:>7} / {cells[1][0]:>7} ms  "
                f"{cells[0][1]:>4} / {cells[1][1]:>4} TF/s  {got.get('fwd', {}).get('ran', '')}")
    for row in RESULT["loop"]:
        log(f"loop    {row['contestant']:22} {row['ms_mean']:7.3f} ms/step  syncs after step 1: "
            f"{row['syncs_after_first']}  recompiles {row['recompiles']}")
    bad = [r for r in RESULT["verify"] if not r.get("ok", True)]
    log(f"verify  {len(RESULT['verify'])} checks, {len(bad)} failed")


if __name__ == "__main__":
    main()
