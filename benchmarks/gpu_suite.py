"""The performance suite (issue 5): every pattern of benchmarks/suite.attn through the generated
module (`auto`, and flex on Triton) against the hand-written baselines a user would otherwise
write: SDPA (its default kernel choice, cuDNN, flash), compiled flex_attention with
create_block_mask (Triton and the FLASH kernel), flash-attn 4 called directly. Then BlockMask
build times at 32k, recompiles across changing document lengths, and the module's own cost.

Run on the GPU machine after staging flash-attn 4 (see benchmarks/gpu_suite.sh):
    SITE=/tmp/fa4site PYTHONPATH=$PWD python3 benchmarks/gpu_suite.py [PATTERN ...] [--masks]
Writes $OUT/suite-<part>.json and prints a short table last. Inputs are laid out as a model
makes them: [B, S, H, D] storage (projection output), passed as [B, H, S, D] views; flash-attn
direct takes the [B, S, H, D] storage itself.
"""

from __future__ import annotations

import json
import os
import site
import statistics
import sys
import time
import warnings

site.addsitedir(os.environ.get("SITE", "/tmp/fa4site"))
warnings.filterwarnings("ignore", category=DeprecationWarning)

import torch  # noqa: E402
import torch._dynamo.utils as dynamo_utils  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: E402

import attnspec  # noqa: E402
from attnspec.bench import block_mask_ms, median_ms, random_documents  # noqa: E402

torch._dynamo.config.recompile_limit = 64  # the baselines compile flex for many patterns
# SUITE_DEVICE=cpu SUITE_S=256 SUITE_DOC_S=512: a dry run of the script's code paths on a CPU
DEV, BF = os.environ.get("SUITE_DEVICE", "cuda"), torch.bfloat16
B, H, D, S = 4, 16, 128, int(os.environ.get("SUITE_S", 8192))
DOC_B, DOC_S = 1, int(os.environ.get("SUITE_DOC_S", 32768))
REPS, WARMUP = int(os.environ.get("REPS", 10)), 3
OUT = os.environ.get("OUT", "gpu-out")
SPEC = attnspec.load("benchmarks/suite.attn")
SPEC_IR = attnspec.build(open("benchmarks/suite.attn").read())
FLEX = torch.compile(flex_attention, fullgraph=True)
TRITON, FLASH = {"BACKEND": "TRITON"}, {"BACKEND": "FLASH"}
ROWS: list[dict] = []

try:
    from flash_attn.cute import flash_attn_func, flash_attn_varlen_func
except ImportError:  # the table says "not available"
    flash_attn_func = flash_attn_varlen_func = None


def log(*parts):
    print(*parts, flush=True)


CUDA = DEV.startswith("cuda")


def sync():
    if CUDA:
        torch.cuda.synchronize()


def peak_gib():
    return torch.cuda.max_memory_allocated() / 2**30 if CUDA else 0.0


# --- one pattern: inputs, masks and the hand-written versions ------------------------------------
class Pattern:
    """Inputs and hand-written baselines of one suite attention."""

    def __init__(self, name: str):
        self.name = name
        self.batch, self.seq = (DOC_B, DOC_S) if name == "Documents" else (B, S)
        gen = torch.Generator().manual_seed(0)
        shape = (self.batch, self.seq, H, D)
        self.storage = [torch.randn(shape, generator=gen).to(DEV, BF) for _ in range(3)]
        self.grad = torch.randn(shape, generator=gen).to(DEV, BF).transpose(1, 2)
        self.inputs, self.density = self._inputs(gen), None
        self.mask_mod, self.score_mod, self.dense = self._mods()

    def views(self, grad=False):
        """q, k, v as [B, H, S, D] views of [B, S, H, D] storage (fresh leaves)."""
        return [t.detach().requires_grad_(grad).transpose(1, 2) for t in self.storage]

    def _inputs(self, gen) -> dict:
        if self.name == "Documents":
            doc = random_documents(self.batch, self.seq, gen).to(DEV)
            return {"doc": doc}
        if self.name == "TypedGraph":
            return graph_edges(self.batch, self.seq, gen)
        return {}

    def _mods(self):
        """(mask_mod, score_mod, dense mask or bias for SDPA) written by hand, attention-gym
        style."""
        n = self.name
        slopes = torch.tensor(attnspec.eager.alibi_slopes(H), device=DEV)
        if n == "Causal":
            return (lambda b, h, q, k: q >= k), None, None
        if n == "SlidingWindow":
            return (lambda b, h, q, k: (q >= k) & (q - k <= 1024)), None, "mask"
        if n == "Documents":
            doc = self.inputs["doc"]
            return (lambda b, h, q, k: (q >= k) & (doc[b, q] == doc[b, k])), None, "mask"
        if n == "AlibiCausal":
            def alibi(score, b, h, q, k):
                return score - slopes[h] * (q - k).abs()
            return (lambda b, h, q, k: q >= k), alibi, "bias"
        if n == "PrefixLM":
            return (lambda b, h, q, k: (k < 2048) | (q >= k)), None, "mask"
        if n == "Anchor":
            bounds = torch.tensor([0, 1024, 4096, 5120, 8192], device=DEV)
            group = torch.bucketize(torch.arange(S, device=DEV), bounds, right=True) - 1
            anchor_of = torch.tensor([0, 0, 2, 2], device=DEV)

            def anchor(b, h, q, k):
                return group[k] == anchor_of[group[q]]
            return anchor, None, "mask"
        tables = dense_graph(self.inputs, self.batch, self.seq)
        type_bias = torch.randn(H, 2, device=DEV) * 0.5
        gate = torch.randn(H, 2, 32, device=DEV) * 0.5
        edge, etype, dist = tables

        def graph_mask(b, h, q, k):
            return edge[b, q, k]

        def graph_score(score, b, h, q, k):
            t = etype[b, q, k]
            return (score + type_bias[h, t]) * torch.sigmoid(gate[h, t, dist[b, q, k]])
        return graph_mask, graph_score, "graph"

    def dense_mask(self):
        """The [B or 1, 1, S, S] bool mask (or float bias) an SDPA baseline passes."""
        q = torch.arange(self.seq, device=DEV)[:, None]
        k = torch.arange(self.seq, device=DEV)[None, :]
        b = torch.arange(self.batch, device=DEV)[:, None, None, None]
        if self.dense == "graph":
            return None  # scores transformed per edge: SDPA cannot express the gate
        keep = self.mask_mod(b, 0, q, k)
        keep = keep if keep.dim() == 4 else keep[None, None]
        if self.dense == "bias":
            slopes = torch.tensor(attnspec.eager.alibi_slopes(H), device=DEV)
            bias = -slopes[:, None, None] * (q - k).abs()
            return torch.where(keep, bias.to(BF), torch.tensor(-float("inf"), device=DEV,
                                                                dtype=BF))
        return keep


def graph_edges(batch, seq, gen) -> dict:
    """A sparse local graph: each node links to 64 random nodes within 512 positions."""
    src = torch.arange(seq).repeat_interleave(64)
    offset = torch.randint(-512, 513, (seq * 64,), generator=gen)
    dst = (src + offset).clamp(0, seq - 1)
    return {"graph": torch.stack([src, dst]).to(DEV),
            "graph_type": torch.randint(0, 2, (seq * 64,), generator=gen).to(DEV),
            "graph_distance": torch.randint(0, 40, (seq * 64,), generator=gen).to(DEV)}


def dense_graph(inputs, batch, seq):
    """Dense [B, S, S] edge / type / distance tables, as a hand-written flex version reads."""
    src, dst = inputs["graph"]
    edge = torch.zeros(batch, seq, seq, dtype=torch.bool, device=DEV)
    etype = torch.zeros(batch, seq, seq, dtype=torch.int64, device=DEV)
    dist = torch.zeros(batch, seq, seq, dtype=torch.int64, device=DEV)
    edge[:, src, dst] = True
    etype[:, src, dst] = inputs["graph_type"]
    dist[:, src, dst] = inputs["graph_distance"].clamp(max=31)
    return edge, etype, dist


# --- timing ------------------------------------------------------------------------------------
def record(pattern, contestant, fn, note="", mask_ms=None, ran=None):
    """Time fn(grad) forward (no_grad) and forward+backward; one row each."""
    for pass_, mult in (("fwd", 1.0), ("fwd+bwd", 3.5)):
        try:
            if pass_ == "fwd":
                def run():
                    with torch.no_grad():
                        return fn(False)
            else:
                def run():
                    fn(True).backward(pattern.grad)
            if CUDA:
                torch.cuda.reset_peak_memory_stats()
            ms = median_ms(run, DEV, REPS, WARMUP, inner=5)
            single = median_ms(run, DEV, REPS, 1)
            flops = 4 * pattern.batch * H * pattern.seq * pattern.seq * D * pattern.density
            ROWS.append(dict(pattern=pattern.name, contestant=contestant, ran=ran or contestant,
                             pass_=pass_, ms=ms, ms_single_call=single,
                             tflops=flops * mult / ms / 1e9,
                             mask_ms=mask_ms, peak_gib=peak_gib(),
                             note=note))
            log(f"  {contestant:18} {pass_:8} {ms:8.3f} ms {ROWS[-1]['tflops']:6.0f} TF/s "
                f"(one lone call {single:.3f} ms)")
        except Exception as e:  # noqa: BLE001 — a contestant that cannot run gets a note
            msg = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            ROWS.append(dict(pattern=pattern.name, contestant=contestant, ran=ran or contestant,
                             pass_=pass_, ms=None, tflops=None, mask_ms=mask_ms, peak_gib=None,
                             note=msg))
            log(f"  {contestant:18} {pass_:8} FAILED {msg}")
            if CUDA:
                torch.cuda.empty_cache()


def module_contestants(pattern):
    cls = getattr(SPEC, pattern.name)
    attn = next(a for a in SPEC_IR.attentions if a.name == pattern.name)
    pattern.density = attnspec.eager.mask_density(attn, pattern.batch, pattern.seq, pattern.seq,
                                                  pattern.inputs, device=DEV)
    for backend in ("auto", "flex"):
        if backend != "auto" and backend not in cls.BACKENDS:
            continue
        layer = cls(backend=backend).to(DEV)
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0, 0.5)

        def fn(grad, layer=layer):
            return layer(*pattern.views(grad), **pattern.inputs)

        with torch.no_grad():
            fn(False)
        ran = getattr(layer, "last_backend", backend)
        mask = block_mask_ms(SPEC, lambda: fn(False), DEV) if ran.startswith("flex") else None
        record(pattern, f"attnspec {backend}", fn, mask_ms=mask, ran=ran)


def sdpa_contestants(pattern):
    mask = pattern.dense_mask() if pattern.dense else None
    if pattern.dense == "graph":
        return
    causal = pattern.name == "Causal"
    for label, kernels in (("sdpa", None), ("sdpa cudnn", [SDPBackend.CUDNN_ATTENTION]),
                           ("sdpa flash2", [SDPBackend.FLASH_ATTENTION])):
        if kernels and not causal and kernels[0] == SDPBackend.FLASH_ATTENTION:
            continue  # the flash kernel takes no mask

        def fn(grad, kernels=kernels):
            q, k, v = pattern.views(grad)
            call = dict(is_causal=True) if causal else dict(attn_mask=mask)
            if kernels is None:
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, **call)
            with sdpa_kernel(kernels):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, **call)
        record(pattern, label, fn, note="" if causal else "dense mask")


def flex_contestants(pattern):
    start = time.perf_counter()
    block_mask = create_block_mask(pattern.mask_mod, pattern.batch if pattern.name in (
        "Documents", "TypedGraph") else None, None, pattern.seq, pattern.seq, device=DEV,
        _compile=True)
    sync()
    build = (time.perf_counter() - start) * 1e3
    for label, options in (("flex triton", TRITON), ("flex FLASH", FLASH)):
        def fn(grad, options=options):
            q, k, v = pattern.views(grad)
            return FLEX(q, k, v, score_mod=pattern.score_mod, block_mask=block_mask,
                        kernel_options=options)
        record(pattern, label, fn, mask_ms=build, note="create_block_mask(_compile=True), "
               "first call")


def fa4_contestant(pattern):
    if flash_attn_func is None or pattern.name not in ("Causal", "SlidingWindow", "Documents"):
        return
    q_, k_, v_ = pattern.storage
    if pattern.name == "Documents":
        doc = pattern.inputs["doc"][0]
        counts = torch.bincount(doc)
        cu = torch.zeros(len(counts) + 1, dtype=torch.int32, device=DEV)
        cu[1:] = torch.cumsum(counts, 0)
        longest = int(counts.max())

        def fn(grad):
            q, k, v = (t.detach().requires_grad_(grad)[0] for t in (q_, k_, v_))
            out = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu,
                                         max_seqlen_q=longest, max_seqlen_k=longest,
                                         causal=True)
            out = out[0] if isinstance(out, tuple) else out
            return out[None].transpose(1, 2)
    else:
        window = (1024, 0) if pattern.name == "SlidingWindow" else (None, None)

        def fn(grad):
            q, k, v = (t.detach().requires_grad_(grad) for t in (q_, k_, v_))
            out = flash_attn_func(q, k, v, causal=True, window_size=window)
            out = out[0] if isinstance(out, tuple) else out
            return out.transpose(1, 2)
    record(pattern, "flash-attn 4 direct", fn)


def run_pattern(name):
    log(f"== {name}")
    pattern = Pattern(name)
    module_contestants(pattern)
    sdpa_contestants(pattern)
    flex_contestants(pattern)
    fa4_contestant(pattern)
    if CUDA:
        torch.cuda.empty_cache()


# --- BlockMask build, recompiles, module overhead -------------------------------------------------
def wall_ms(fn, reps=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def block_masks():
    """Build times at S=32768 (B=1, H=1): ours uncached and cached vs create_block_mask."""
    log("== BlockMask build, S=32768")
    gen = torch.Generator().manual_seed(1)
    doc = random_documents(1, DOC_S, gen).to(DEV)
    compiled_cbm = torch.compile(create_block_mask)
    cases = {
        "causal": ("Causal", (), lambda b, h, q, k: q >= k),
        "window 1024": ("SlidingWindow", (), lambda b, h, q, k: (q >= k) & (q - k <= 1024)),
        "documents": ("Documents", (doc,),
                      lambda b, h, q, k: (q >= k) & (doc[b, q] == doc[b, k])),
    }
    out = {}
    for label, (name, args, mod) in cases.items():
        out[label] = block_mask_row(name, args, mod, compiled_cbm)
        log(f"  {label:12} " + "  ".join(f"{k} {v:.3f}" for k, v in out[label].items()))
    return out


def block_mask_row(name, args, mod, compiled_cbm) -> dict:
    """ms to build one pattern's BlockMask at DOC_S, each way."""
    device = torch.device(DEV)
    build = getattr(SPEC, f"_block_lists_{name}")
    lists = SPEC._flex_runner(build, device)

    def ours():
        return SPEC._block_mask_of(lists(1, DOC_S, DOC_S, device, *args), None, DOC_S, DOC_S)

    def cached():
        return SPEC._structured_block_mask(build, None, 1, DOC_S, DOC_S, device, args)

    return {
        "attnspec (uncached)": wall_ms(ours),
        "attnspec (cached)": wall_ms(cached),
        "create_block_mask": wall_ms(lambda: create_block_mask(mod, 1, 1, DOC_S, DOC_S,
                                                               device=DEV), reps=5),
        "create_block_mask(_compile=True)": wall_ms(lambda: create_block_mask(
            mod, 1, 1, DOC_S, DOC_S, device=DEV, _compile=True)),
        "torch.compile(create_block_mask)": wall_ms(lambda: compiled_cbm(
            mod, 1, 1, DOC_S, DOC_S, device=DEV)),
    }


def recompiles():
    """Module calls with new document lengths (same S), and with a new S: count compiles."""
    log("== recompiles across changing document lengths")
    layer = SPEC.Documents().to(DEV)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, H, 8192, D, generator=gen).to(DEV, BF) for _ in range(3))
    result = {}
    for backend in ("flex", "auto"):
        layer.backend = backend
        layer(q, k, v, doc=random_documents(1, 8192, gen).to(DEV))  # warm
        before = dict(dynamo_utils.counters["stats"])
        for i in range(6):
            docs = random_documents(1, 8192, gen, shortest=64 * (i + 1), longest=512 * (i + 1))
            layer(q, k, v, doc=docs.to(DEV)).sum()
        after = dict(dynamo_utils.counters["stats"])
        new = {key: after.get(key, 0) - before.get(key, 0) for key in after}
        result[backend] = {"calls": 6, "unique_graphs": new.get("unique_graphs", 0),
                           "ran": getattr(layer, "last_backend", backend)}
        log(f"  {backend}: {result[backend]}")
    return result


def main(argv):
    names = [a for a in argv if not a.startswith("--")] or \
        [a.name for a in SPEC_IR.attentions]
    part = os.environ.get("PART", "all")
    extra = {}
    meta = {"gpu": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
            "flash_attn_4": flash_attn_func is not None, "B": B, "H": H, "D": D, "S": S,
            "documents": {"B": DOC_B, "S": DOC_S}, "reps": REPS, "layout": "bshd views",
            "timing": "median of CUDA-event samples, 5 calls back to back per sample"}

    def save():  # after every step: a command cut short still leaves its rows
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, f"suite-{part}.json"), "w") as f:
            json.dump({"meta": meta, "rows": ROWS, **extra}, f, indent=1)

    for name in names:
        run_pattern(name)
        save()
    if "--masks" in argv:
        extra["block_masks"] = block_masks()
        save()
        extra["recompiles"] = recompiles()
        save()
    log("\n== summary (ms; fwd / fwd+bwd)")
    for name in names:
        for contestant in dict.fromkeys(r["contestant"] for r in ROWS if r["pattern"] == name):
            got = {r["pass_"]: r for r in ROWS if r["pattern"] == name
                   and r["contestant"] == contestant}
            cells = [f"{got[p]['ms']:.3f}" if got.get(p) and got[p]["ms"] else "-"
                     for p in ("fwd", "fwd+bwd")]
            ran = got.get("fwd", {}).get("ran", "")
            log(f"{name:13} {contestant:20} {cells[0]:>8} / {cells[1]:>8}  {ran}")


if __name__ == "__main__":
    main(sys.argv[1:])
