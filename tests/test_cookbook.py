"""The cookbook (docs/cookbook.md, specs/cookbook/*.attn) stays true.

- Every attention of every cookbook spec, on every backend generated into it that runs on CPU,
  matches the eager interpreter (the verify harness: fresh random inputs, outputs and gradients)
  on one case: q_len != kv_len where the spec allows it, else the first case.
  `attnspec verify specs/cookbook` runs all cases.
- The masks say what the recipes claim: each is compared with the pattern written out here in
  plain torch after attention-gym's description (NATTEN sees exactly KH*KW keys, the tiled and
  Morton layouts are permutations of row-major NATTEN, the Flamingo intervals reproduce
  torchtune's example, ...).
- Every `attn` block of the tutorial, the cookbook and the migration guide builds, and the
  cookbook documents every file in specs/cookbook.
"""

from __future__ import annotations

import functools
import random
import re
from pathlib import Path

import pytest
import torch

import attnspec
from attnspec.eager import evaluate_mask
from attnspec.verify import cases_for, check_case, default_backends

ROOT = Path(__file__).resolve().parent.parent
COOKBOOK = ROOT / "specs" / "cookbook"
FILES = sorted(COOKBOOK.glob("*.attn"))
DOCS = [ROOT / "docs" / name for name in ("tutorial.md", "cookbook.md", "migration.md")]
SEED = random.randrange(2**31)  # fresh inputs each run; printed on failure


@functools.cache
def compiled(path: Path):
    return attnspec.build(path), attnspec.load(path)


def attention(file: str, name: str):
    module_ir, _ = compiled(COOKBOOK / file)
    return next(a for a in module_ir.attentions if a.name == name)


def backend_cases():
    for path in FILES:
        module_ir, module = compiled(path)
        for attn in module_ir.attentions:
            for backend in default_backends(getattr(module, attn.name), "cpu"):
                yield pytest.param(path, attn.name, backend,
                                   id=f"{path.stem}-{attn.name}-{backend}")


@pytest.mark.parametrize("path, name, backend", list(backend_cases()))
def test_recipe_matches_eager_interpreter(path, name, backend):
    module_ir, module = compiled(path)
    attn = next(a for a in module_ir.attentions if a.name == name)
    case = cases_for(attn)[-1] if len(cases_for(attn)) == 3 else cases_for(attn)[0]
    result = check_case(attn, getattr(module, name), backend, case, torch.float32, "cpu",
                        SEED, path.name)
    assert result.ok, f"seed {SEED}: {result}"


# --- the masks mean what the cookbook says ----------------------------------------------------
def grid(sq: int, sk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key index grids [Sq, 1], [1, Sk]."""
    sk = sq if sk is None else sk
    return torch.arange(sq).view(-1, 1), torch.arange(sk).view(1, -1)


def mask_of(file: str, name: str, sq: int, sk: int | None = None, b: int = 1,
            **inputs) -> torch.Tensor:
    """The spec's mask for batch row 0, head 0: [Sq, Sk]."""
    sk = sq if sk is None else sk
    return evaluate_mask(attention(file, name), b, sq, sk, inputs=inputs)[0, 0]


def natten_rowmajor(pixels: list[tuple[int, int]], height: int, width: int,
                    kh: int = 3, kw: int = 3) -> torch.Tensor:
    """NATTEN between the pixels at the given (row, col), by the definition: the kernel window
    centred on the query, shifted to stay inside the canvas."""
    def centre(x: int, size: int, n: int) -> int:
        return min(max(x, size // 2), n - 1 - size // 2)

    return torch.tensor([[abs(centre(r, kh, height) - r2) <= kh // 2
                          and abs(centre(c, kw, width) - c2) <= kw // 2
                          for r2, c2 in pixels] for r, c in pixels])


def test_natten_and_sasa():
    pixels = [(i // 7, i % 7) for i in range(35)]
    natten = mask_of("natten.attn", "NATTEN", 35)
    assert torch.equal(natten, natten_rowmajor(pixels, 5, 7))
    assert (natten.sum(1) == 9).all() and natten.diagonal().all()  # always KH*KW keys, itself
    sasa = torch.tensor([[abs(r - r2) <= 1 and abs(c - c2) <= 1 for r2, c2 in pixels]
                         for r, c in pixels])
    assert torch.equal(mask_of("natten.attn", "SASA", 35), sasa)


def test_tiled_and_morton_natten_are_permuted_natten():
    # tile-major 4 x 6 canvas, 2 x 3 tiles: tiles in row-major order, pixels row-major inside
    tiled = [(tr * 2 + r, tc * 3 + c) for tr in range(2) for tc in range(2)
             for r in range(2) for c in range(3)]
    assert torch.equal(mask_of("natten_tiled.attn", "TiledNATTEN", 24),
                       natten_rowmajor(tiled, 4, 6))

    def bits(i: int, start: int) -> int:  # every other bit of i from `start`, compacted
        return sum(((i >> (2 * n + start)) & 1) << n for n in range(3))

    morton = [(bits(i, 1), bits(i, 0)) for i in range(64)]
    assert sorted(morton) == [(r, c) for r in range(8) for c in range(8)]
    assert torch.equal(mask_of("natten_tiled.attn", "MortonNATTEN", 64),
                       natten_rowmajor(morton, 8, 8))


def test_sliding_tile_attention_2d():
    def tile(i: int) -> tuple[int, int]:
        return (i // 4) // 3, (i // 4) % 3

    def near(qt: int, kt: int, tiles: int) -> bool:  # kernel of 2 tiles: 1 back, 0 forward
        centre = min(max(qt, 1), tiles - 1)
        return centre - 1 <= kt <= centre

    def allowed(i: int, j: int) -> bool:
        if i >= 24:
            return True  # text sees everything
        if j >= 24:
            return True  # video sees all text
        (qr, qc), (kr, kc) = tile(i), tile(j)
        return near(qr, kr, 2) and near(qc, kc, 3)

    want = torch.tensor([[allowed(i, j) for j in range(29)] for i in range(29)])
    assert torch.equal(mask_of("sta.attn", "STA2D", 29), want)


def test_block_diffusion():
    n, block = 16, 4
    q, k = grid(2 * n)
    qn, kn, qb, kb = q < n, k < n, (q % n) // block, (k % n) // block
    want = (qb == kb) & (qn == kn) | (qb > kb) & qn & ~kn | (qb >= kb) & ~qn & ~kn
    assert torch.equal(mask_of("block_diffusion.attn", "BlockDiffusion", 2 * n), want)


def test_jetspec_masks():
    parents = [-1, 0, 1, 1, 3, 3, 0]  # attention-gym's demo tree
    ancestor = torch.eye(7, dtype=torch.bool)
    for node, parent in enumerate(parents[1:], start=1):
        ancestor[node] |= ancestor[parent]
    prefix = 5
    want = torch.cat([torch.ones(7, prefix, dtype=torch.bool), ancestor], dim=1)
    got = mask_of("jetspec.attn", "TreeCausal", 7, 7 + prefix, ancestor=ancestor[None])
    assert torch.equal(got, want)
    q, k = grid(12, 12 + prefix)
    kk = k - prefix
    want = (k < prefix) | (k >= prefix) & (q // 4 == kk // 4) & (kk % 4 <= q % 4)
    assert torch.equal(mask_of("jetspec.attn", "DraftBlocks", 12, 12 + prefix), want)


def test_sparse_videogen_masks():
    prompt, per_frame, frames, width = 2, 7, 5, 2
    q, k = grid(prompt + frames * per_frame)
    rows, cols = q < prompt, k < prompt
    spatial = rows | (k < prompt + per_frame) | ((q - k).abs() < (width * per_frame) // 4 * 4)
    in_frame_q, in_frame_k = (q - prompt) % per_frame, (k - prompt) % per_frame
    temporal = rows | cols | ((in_frame_q - in_frame_k).abs() < width * per_frame // frames)
    assert torch.equal(mask_of("svg.attn", "SVGSpatial", 37), spatial)
    assert torch.equal(mask_of("svg.attn", "SVGTemporal", 37), temporal)
    per_head = evaluate_mask(attention("svg.attn", "SVGPerHead"), 1, 37, 37,
                             inputs={"spatial": torch.tensor([True, False, True, False])})[0]
    assert torch.equal(per_head[0], spatial) and torch.equal(per_head[1], temporal)


def test_dilated_batchify_and_no_self():
    q, k = grid(23)
    d = (q - k).abs()
    assert torch.equal(mask_of("dilated_sliding_window.attn", "Dilated", 23),
                       (d <= 4) & (d % 2 == 0))
    assert torch.equal(mask_of("document_variants.attn", "Batchify", 23),
                       (q // 8 == k // 8) & (q % 8 >= k % 8))
    assert torch.equal(mask_of("no_self.attn", "NoSelf", 23), q != k)


def docs_from_lengths(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position document id and document start of packed documents."""
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    starts = torch.tensor([0, *lengths]).cumsum(0)[:-1]
    return doc, starts[doc]


def test_document_prefix_lm_is_a_prefix_lm_inside_each_document():
    doc, start = docs_from_lengths([6, 3, 9])
    q, k = grid(18)
    local_q, local_k = q - start.view(-1, 1), k - start.view(1, -1)
    want = (doc.view(-1, 1) == doc.view(1, -1)) & ((local_k < 4) | (local_q >= local_k))
    got = mask_of("document_variants.attn", "DocumentPrefixLM", 18,
                  doc=doc[None], doc_start=start[None])
    assert torch.equal(got, want)
    causal_docs = (doc.view(-1, 1) == doc.view(1, -1)) & (q >= k)
    assert torch.equal(mask_of("document_variants.attn", "PackedCausalOffsets", 18,
                               doc_start=start[None]), causal_docs)


def test_shared_prefix():
    lengths, prefix_of = [3, 2, 2, 2, 3, 2, 2, 2], [0, 0, 0, 0, 4, 4, 4, 4]  # attention-gym's demo
    doc, start = docs_from_lengths(lengths)
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    prefix_doc = torch.tensor(prefix_of)[doc]
    q, k = grid(len(doc))
    own = (k >= start.view(-1, 1)) & (q >= k)
    pre = (doc != prefix_doc).view(-1, 1) & (k >= offsets[prefix_doc].view(-1, 1)) \
        & (k < offsets[prefix_doc + 1].view(-1, 1))
    got = mask_of("shared_prefix.attn", "SharedPrefix", len(doc), doc=doc[None],
                  prefix_doc=prefix_doc[None])
    assert torch.equal(got, own | pre)


def test_flamingo_reproduces_torchtunes_example():
    # "<img1><img2>These are two dogs. <img3>This is a cat." -> intervals [[0,7],[1,7],[7,12]]
    intervals = torch.zeros(1, 8, 2, dtype=torch.long)
    intervals[0, :3] = torch.tensor([[0, 7], [1, 7], [7, 12]])
    got = mask_of("flamingo.attn", "FlamingoIntervals", 12, 12, intervals=intervals)
    image = got.view(12, 3, 4)  # [text, image, token]
    assert (image == image[..., :1]).all()  # an image is seen whole or not at all
    seen = image[..., 0].int().tolist()
    assert seen == [[1, 0, 0]] + [[1, 1, 0]] * 6 + [[0, 0, 1]] * 5
    latest = torch.tensor([[-1, 0, 0, 1, 1, 1, 2]])  # text before any image sees nothing
    got = mask_of("flamingo.attn", "FlamingoLatestImage", 7, 12, latest_image=latest)
    want = torch.arange(12).view(1, -1) // 4 == latest.view(-1, 1)
    assert torch.equal(got, want) and not got[0].any()


def test_longformer_and_vsa_forms_agree():
    is_global = torch.zeros(1, 20, dtype=torch.bool)
    is_global[0, [0, 9]] = True
    q, k = grid(20)
    want = ((q - k).abs() <= 3) | is_global[0].view(-1, 1) | is_global[0].view(1, -1)
    assert torch.equal(mask_of("longformer.attn", "LongformerGlobal", 20, is_global=is_global),
                       want)
    gen = torch.Generator().manual_seed(SEED)
    topk = torch.randint(0, 12, (1, 4, 10, 2), generator=gen)
    block_map = torch.zeros(1, 4, 10, 12, dtype=torch.bool)
    block_map.scatter_(-1, topk, True)
    a = evaluate_mask(attention("vsa.attn", "VSATopK"), 1, 40, 48, inputs={"topk": topk})
    b = evaluate_mask(attention("vsa.attn", "VSABlockMap"), 1, 40, 48,
                      inputs={"block_map": block_map})
    assert torch.equal(a, b) and a.any() and not a.all()


def test_bottom_right_window_is_flash_attns():
    sq, sk, w = 5, 12, 5
    q, k = grid(sq, sk)
    want = (k <= q + sk - sq) & (k >= q + sk - sq - w)  # flash-attn causal + window (w, 0)
    assert torch.equal(mask_of("windows.attn", "SlidingWindowBottomRight", sq, sk), want)


# --- the docs ---------------------------------------------------------------------------------
def attn_blocks(path: Path) -> list[str]:
    return re.findall(r"```attn\n(.*?)```", path.read_text(), re.S)


def doc_module(name: str):
    """The module compiled from the ```attn block of docs/migration.md declaring `name`."""
    text = next(b for b in attn_blocks(ROOT / "docs" / "migration.md")
                if f"attention {name} " in b)
    return attnspec.load(text)


def test_migration_flex_example_matches_flex_attention():
    from torch.nn.attention.flex_attention import and_masks, create_block_mask, flex_attention

    H, S = 16, 300
    doc = torch.repeat_interleave(torch.arange(3), torch.tensor([100, 60, 140]))
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1) / H)

    def causal(b, h, qi, ki):
        return qi >= ki

    def window(b, h, qi, ki):
        return qi - ki <= 64

    def same_doc(b, h, qi, ki):
        return doc[qi] == doc[ki]

    def score_mod(s, b, h, qi, ki):
        return 30.0 * torch.tanh(s / 30.0) - slopes[h] * (qi - ki)

    gen = torch.Generator().manual_seed(SEED)
    q = torch.randn(1, H, S, 64, generator=gen)
    k, v = (torch.randn(1, 4, S, 64, generator=gen) for _ in range(2))
    block_mask = create_block_mask(and_masks(causal, window, same_doc), None, None, S, S,
                                   device="cpu")
    want = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True)
    for backend in ("eager", "flex"):
        got = doc_module("PackedWindow").PackedWindow(backend=backend)(q, k, v, doc=doc[None])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_migration_sdpa_example_matches_sdpa():
    B, H, S, M = 3, 8, 50, 8
    gen = torch.Generator().manual_seed(SEED)
    lengths, table = torch.tensor([50, 31, 7]), torch.randn(H, 2 * M + 1, generator=gen)
    pos = torch.arange(S)
    pad = pos[None, :] >= lengths[:, None]
    bias = table[:, (pos[None, :] - pos[:, None]).clamp(-M, M) + M]
    mask = bias.expand(B, H, S, S).masked_fill(pad[:, None, None, :], float("-inf"))
    q, k, v = (torch.randn(B, H, S, 64, generator=gen) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for backend in ("eager", "sdpa"):
        enc = doc_module("Encoder").Encoder(backend=backend)
        with torch.no_grad():
            enc.rel.copy_(table)
        torch.testing.assert_close(enc(q, k, v, lengths=lengths), want, rtol=1e-4, atol=1e-5)


def test_migration_varlen_example_matches_per_sequence_attention():
    cu, H, D = [0, 100, 160, 300], 8, 128
    gen = torch.Generator().manual_seed(SEED)
    q = torch.randn(300, H, D, generator=gen)  # flash-attn's varlen layout [total, heads, dim]
    k, v = (torch.randn(300, 2, D, generator=gen) for _ in range(2))
    want = torch.empty_like(q)
    for lo, hi in zip(cu, cu[1:]):  # one sequence at a time, as flash_attn_varlen_func
        qs, ks, vs = q[lo:hi], k[lo:hi].repeat_interleave(4, 1), v[lo:hi].repeat_interleave(4, 1)
        s = torch.einsum("qhd,khd->hqk", qs, ks) / D**0.5
        s = 50.0 * torch.tanh(s / 50.0)
        i, j = grid(hi - lo)
        s = s.masked_fill(~((j <= i) & (j >= i - 128)), float("-inf"))  # causal, (128, 0)
        want[lo:hi] = torch.einsum("hqk,khd->qhd", s.softmax(-1), vs)
    doc = torch.repeat_interleave(torch.arange(3), torch.tensor(cu).diff())[None]
    for backend in ("eager", "flex"):
        attn = doc_module("VarlenWindow").VarlenWindow(backend=backend)
        got = attn(*(x.transpose(0, 1)[None] for x in (q, k, v)), doc=doc)[0].transpose(0, 1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_migration_decode_mask_is_per_row_bottom_right():
    cache_len, sq, sk = torch.tensor([9, 3, 12]), 3, 12
    attn = next(a for a in attnspec.build(next(
        b for b in attn_blocks(ROOT / "docs" / "migration.md") if "DecodeStep" in b)).attentions)
    got = evaluate_mask(attn, 3, sq, sk, inputs={"cache_len": cache_len})[:, 0]
    q, k = grid(sq, sk)
    n = cache_len.view(-1, 1, 1)
    assert torch.equal(got, (k < n) & (k <= q + n - sq))  # the last query sits at n - 1


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_attn_block_in_the_docs_builds(path):
    blocks = attn_blocks(path)
    assert blocks, f"{path.name} has no ```attn blocks"
    for text in blocks:
        attnspec.build(text)


def test_cookbook_documents_every_recipe_file():
    text = (ROOT / "docs" / "cookbook.md").read_text()
    named = set(re.findall(r"specs/cookbook/(\w+\.attn)", text))
    assert named == {p.name for p in FILES}
    for seed in re.findall(r"specs/(\w+\.attn)", text):
        assert (ROOT / "specs" / seed).exists(), seed
