"""Token-level property tests of the structured BlockMask builders (attnspec/runtime/flex.py).

Each BlockMask is expanded to tokens from its own kv_num_blocks / kv_indices /
full_kv_num_blocks / full_kv_indices tensors and compared with the true mask written directly
here: every attendable pair lies in a listed tile, every full tile is all attendable, and no
skipped tile holds an attendable pair. (Uncompiled flex_attention ignores the block lists, so
it is never used as the oracle.)
"""

import ast
import random

import pytest
import torch
from runtimes import RUNTIME, load_runtime
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

rt = load_runtime("flex")
SEEDS = range(60)


# ---------------------------------------------------------------------------------- helpers


def block_mask(classes, mask_mod, q_len, kv_len, block):
    """The BlockMask generated code builds from tile classes."""
    return rt._block_mask_of(rt._block_lists(classes), mask_mod, q_len, kv_len, block)


def tiles_from_lists(num, idx, n_k):
    """Dense bool [B, H, nQ, nK] of the tiles listed by (num, idx)."""
    keep = torch.arange(idx.shape[-1]) < num[..., None].long()
    dense = torch.zeros(*idx.shape[:-1], n_k + 1, dtype=torch.bool)
    dense.scatter_(-1, torch.where(keep, idx.long(), n_k), True)
    return dense[..., :n_k]


def to_tokens(tiles, block, sq, sk):
    return tiles.repeat_interleave(block, -2).repeat_interleave(block, -1)[..., :sq, :sk]


def expand(bm, block, sq, sk):
    """(partial, full) token masks [B, H, Sq, Sk] from the BlockMask's kv lists."""
    n_k = bm.kv_indices.shape[-1]
    partial = tiles_from_lists(bm.kv_num_blocks, bm.kv_indices, n_k)
    full = tiles_from_lists(bm.full_kv_num_blocks, bm.full_kv_indices, n_k)
    assert not (partial & full).any(), "a tile is listed both partial and full"
    return to_tokens(partial, block, sq, sk), to_tokens(full, block, sq, sk)


def tile_any_all(true, block):
    """(any, all) per tile of a token mask [B, H, Sq, Sk], over valid positions only."""
    sq, sk = true.shape[-2:]
    n_q, n_k = -(-sq // block), -(-sk // block)
    pad = (0, n_k * block - sk, 0, n_q * block - sq)
    t = torch.nn.functional.pad(true, pad, value=False)
    valid = torch.nn.functional.pad(torch.ones(sq, sk, dtype=torch.bool), pad, value=False)
    shape = (*true.shape[:-2], n_q, block, n_k, block)
    t, valid = t.reshape(shape), valid.reshape(n_q, block, n_k, block)
    any_ = t.any(-1).any(-2)
    all_ = (t | ~valid).all(-1).all(-2)
    return any_, all_


def check(classes, true, block, exact=False, mask_mod=None):
    """Build the BlockMask from tile classes and check it at token level against `true`."""
    b, h, sq, sk = true.shape
    assert classes.dtype == torch.int8 and classes.shape[:2] == (b, h)
    assert classes.shape[-2:] == (-(-sq // block), -(-sk // block))
    bm = block_mask(classes, mask_mod, sq, sk, block)
    assert bm.seq_lengths == (sq, sk) and bm.BLOCK_SIZE == (block, block)
    for t in (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices):
        assert t.dtype == torch.int32
    partial, full = expand(bm, block, sq, sk)
    assert not (true & ~(partial | full)).any(), "attendable pair outside the listed tiles"
    assert not (full & ~true).any(), "a full tile holds a masked pair"
    any_, all_ = tile_any_all(true, block)
    skipped = classes == 0
    assert not (skipped & any_).any(), "a skipped tile holds an attendable pair"
    assert not ((classes == 2) & ~all_).any()
    if exact:
        assert torch.equal(classes == 0, ~any_), "skip classification not exact"
        assert torch.equal(classes == 2, all_), "full classification not exact"
    return bm


def grid(sq, sk):
    q = torch.arange(sq)[:, None]
    k = torch.arange(sk)[None, :]
    return q, k


def band_true(sq, sk, lo, hi, bottom_right):
    q, k = grid(sq, sk)
    d = k - q - (sk - sq if bottom_right else 0)
    out = torch.ones(sq, sk, dtype=torch.bool)
    if lo is not None:
        out &= d >= lo
    if hi is not None:
        out &= d <= hi
    return out


def rand_lengths(rng):
    block = rng.choice([16, 32])
    pick = [1, block - 1, block, block + 1, 3 * block, rng.randint(1, 120), rng.randint(1, 120)]
    return rng.choice(pick), rng.choice(pick), block


def near_block_edge(rng, block):
    """An offset next to a tile corner: the classification boundaries sit there."""
    return rng.randint(-3, 3) * block + rng.choice([-block, 1 - block, 2 - block, -1, 0, 1])


def rand_band(rng, sq, sk, block):
    span = max(sq, sk) + 5
    lo = rng.choice([None, rng.randint(-span, span), 0, -rng.randint(0, 40),
                     near_block_edge(rng, block), near_block_edge(rng, block)])
    hi = rng.choice([None, rng.randint(-span, span), 0, rng.randint(0, 40),
                     near_block_edge(rng, block), near_block_edge(rng, block)])
    if lo is not None and hi is not None and lo > hi and rng.random() < 0.7:
        lo, hi = hi, lo
    return lo, hi, rng.random() < 0.5


def rand_ids(gen, rng, batch, length):
    if rng.random() < 0.5:  # sorted runs (packed documents)
        starts = torch.rand(batch, length, generator=gen) < rng.choice([0.02, 0.1, 0.4])
        return torch.cumsum(starts.long(), dim=-1)
    return torch.randint(0, rng.choice([1, 2, 3, 6]), (batch, length), generator=gen)


def rand_lengths_b(gen, rng, batch, sk):
    lengths = torch.randint(0, sk + 1, (batch,), generator=gen)
    lengths[0] = rng.choice([0, sk, int(lengths[0])])
    return lengths


def rand_valid(gen, rng, batch, sk):
    kind = rng.choice(["random", "suffix", "all", "none"])
    if kind == "random":
        return torch.rand(batch, sk, generator=gen) < rng.random()
    if kind == "suffix":
        return torch.arange(sk)[None, :] < torch.randint(0, sk + 1, (batch, 1), generator=gen)
    return torch.full((batch, sk), kind == "all")


def setup(seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    sq, sk, block = rand_lengths(rng)
    return rng, gen, sq, sk, block, rng.randint(1, 3), rng.randint(1, 2)


# ---------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("length, block", [(1, 16), (16, 16), (17, 16), (100, 32), (0, 8)])
def test_block_bounds(length, block):
    first, last = rt._block_bounds(length, block, "cpu")
    assert first.dtype == last.dtype == torch.int64
    assert len(first) == -(-length // block)
    if length:
        assert first.tolist() == list(range(0, length, block))
        assert last[-1] == length - 1 and (last - first < block).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_band(seed):
    rng, _, sq, sk, block, b, h = setup(seed)
    lo, hi, br = rand_band(rng, sq, sk, block)
    classes = rt._combine([rt._band_blocks(sq, sk, lo, hi, br, block, "cpu")], b, h)
    true = band_true(sq, sk, lo, hi, br).expand(b, h, sq, sk)
    check(classes, true, block, exact=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_segments(seed):
    rng, gen, sq, sk, block, b, h = setup(seed)
    same = rng.random() < 0.4
    if same:
        sk = sq
    q_ids = rand_ids(gen, rng, b, sq)
    kv_ids = q_ids if same else rand_ids(gen, rng, b, sk)
    classes = rt._combine([rt._segment_blocks(q_ids, kv_ids, block)], b, h)
    true = (q_ids[:, :, None] == kv_ids[:, None, :])[:, None].expand(b, h, sq, sk)
    sorted_ids = bool((q_ids.diff(dim=-1) >= 0).all())
    check(classes, true, block, exact=same and sorted_ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_key_length(seed):
    rng, gen, sq, sk, block, b, h = setup(seed)
    lengths = rand_lengths_b(gen, rng, b, sk).to(rng.choice([torch.int32, torch.int64]))
    classes = rt._combine([rt._key_length_blocks(lengths, sq, sk, block)], b, h)
    _, k = grid(sq, sk)
    true = (k[None] < lengths[:, None, None])[:, None].expand(b, h, sq, sk)
    check(classes, true, block, exact=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_key_padding(seed):
    rng, gen, sq, sk, block, b, h = setup(seed)
    valid = rand_valid(gen, rng, b, sk)
    classes = rt._combine([rt._key_padding_blocks(valid, sq, block)], b, h)
    true = valid[:, None, None, :].expand(b, h, sq, sk)
    check(classes, true, block, exact=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_prefix(seed):
    rng, gen, sq, sk, block, b, h = setup(seed)
    lo, hi, br = rand_band(rng, sq, sk, block)
    per_batch = rng.random() < 0.5
    edges = [max(0, rng.randint(0, 3) * block + rng.choice([-1, 0, 1, 2])) for _ in range(b)]
    if per_batch:
        prefix = torch.randint(0, sk + 2, (b,), generator=gen)
        prefix = torch.where(torch.rand(b, generator=gen) < 0.5, prefix, torch.tensor(edges))
    else:
        prefix = rng.choice([rng.randint(0, sk), edges[0]])
    classes = rt._prefix_blocks(prefix, sq, sk, lo, hi, br, block, "cpu")
    assert classes.shape[0] == (b if per_batch else 1)
    _, k = grid(sq, sk)
    p = torch.as_tensor(prefix).reshape(-1, 1, 1)
    true = (k[None] < p) | band_true(sq, sk, lo, hi, br)[None]
    check(rt._combine([classes], b, h), true[:, None].expand(b, h, sq, sk), block, exact=True)


@pytest.mark.parametrize("seed", SEEDS)
def test_combinations(seed):
    rng, gen, sq, sk, block, b, h = setup(seed)
    lo, hi, br = rand_band(rng, sq, sk, block)
    q_ids, kv_ids = rand_ids(gen, rng, b, sq), rand_ids(gen, rng, b, sk)
    lengths, valid = rand_lengths_b(gen, rng, b, sk), rand_valid(gen, rng, b, sk)
    prefix = torch.randint(0, sk + 1, (b,), generator=gen)
    per_head = torch.randint(0, 3, (b, h, -(-sq // block), -(-sk // block)), generator=gen)
    _, k = grid(sq, sk)
    parts = [
        (rt._band_blocks(sq, sk, lo, hi, br, block, "cpu"), band_true(sq, sk, lo, hi, br)),
        (rt._segment_blocks(q_ids, kv_ids, block), q_ids[:, :, None] == kv_ids[:, None, :]),
        (rt._key_length_blocks(lengths, sq, sk, block), k[None] < lengths[:, None, None]),
        (rt._key_padding_blocks(valid, sq, block), valid[:, None, :].expand(b, sq, sk)),
        (rt._prefix_blocks(prefix, sq, sk, None, 0, br, block, "cpu"),
         (k[None] < prefix[:, None, None]) | band_true(sq, sk, None, 0, br)),
    ]
    chosen = rng.sample(parts, rng.randint(1, len(parts)))
    true = torch.ones(b, h, sq, sk, dtype=torch.bool)
    for _, t in chosen:
        true = true & (t if t.dim() == 2 else t[:, None])
    classes = [c for c, _ in chosen]
    if rng.random() < 0.3:  # a [B, H, nQ, nK] term: tiles of an all-true mask, any class
        classes.append(torch.maximum(per_head, torch.ones_like(per_head)).to(torch.int8))
    check(rt._combine(classes, b, h), true, block)


def test_combine_is_min_with_broadcast():
    a = torch.tensor([[0, 1], [2, 2]], dtype=torch.int8)
    c = torch.tensor([[[2, 2], [1, 0]], [[2, 0], [2, 2]]], dtype=torch.int8)
    out = rt._combine([a, c], 2, 3)
    assert out.shape == (2, 3, 2, 2) and out.dtype == torch.int8 and out.is_contiguous()
    assert out[0, 2].tolist() == [[0, 1], [1, 0]]
    assert out[1, 0].tolist() == [[0, 0], [2, 2]]


def test_block_mask_layout():
    classes = torch.tensor([[[[2, 0, 1, 2], [0, 0, 0, 0], [1, 1, 2, 0]]]], dtype=torch.int8)
    bm = block_mask(classes, None, 40, 60, 16)
    assert bm.kv_num_blocks.shape == (1, 1, 3) and bm.kv_indices.shape == (1, 1, 3, 4)
    assert bm.kv_num_blocks.tolist() == [[[1, 0, 2]]]
    assert bm.full_kv_num_blocks.tolist() == [[[2, 0, 1]]]
    assert bm.kv_indices[0, 0, 0, :1].tolist() == [2]
    assert bm.kv_indices[0, 0, 2, :2].tolist() == [0, 1]
    assert bm.full_kv_indices[0, 0, 0, :2].tolist() == [0, 3]
    assert bm.full_kv_indices[0, 0, 2, :1].tolist() == [2]
    # q-side lists (used by backward) are the transpose, built by from_kv_blocks
    assert bm.q_num_blocks.tolist() == [[[1, 1, 1, 0]]]
    assert bm.full_q_num_blocks.tolist() == [[[1, 0, 1, 1]]]
    assert bm.shape == (1, 1, 40, 60)


def _mods(sq, sk, q_ids=None, kv_ids=None, lengths=None, prefix=None):
    def causal_br(b, h, q, k):
        return k - q - (sk - sq) <= 0

    def window(b, h, q, k):
        return ((k - q) >= -20) & ((k - q) <= 5)

    def segments(b, h, q, k):
        return q_ids[b, q] == kv_ids[b, k]

    def key_length(b, h, q, k):
        return k < lengths[b]

    def prefix_lm(b, h, q, k):
        return (k < prefix[b]) | (k <= q)

    return causal_br, window, segments, key_length, prefix_lm


@pytest.mark.parametrize("sq, sk, block", [(100, 100, 16), (37, 90, 32), (64, 50, 16)])
def test_against_create_block_mask(sq, sk, block):
    gen = torch.Generator().manual_seed(sq * sk)
    b, h = 2, 2
    q_ids = torch.cumsum((torch.rand(b, sq, generator=gen) < 0.05).long(), -1)
    kv_ids = q_ids if sq == sk else torch.cumsum((torch.rand(b, sk, generator=gen) < 0.05), -1)
    lengths = torch.tensor([sk // 3, sk])
    prefix = torch.tensor([7, sk // 2])
    mods = _mods(sq, sk, q_ids, kv_ids, lengths, prefix)
    ours = [
        rt._band_blocks(sq, sk, None, 0, True, block, "cpu"),
        rt._band_blocks(sq, sk, -20, 5, False, block, "cpu"),
        rt._segment_blocks(q_ids, kv_ids, block),
        rt._key_length_blocks(lengths, sq, sk, block),
        rt._prefix_blocks(prefix, sq, sk, None, 0, False, block, "cpu"),
    ]
    for mod, classes in zip(mods, ours, strict=True):
        classes = rt._combine([classes], b, h)
        ref = create_block_mask(mod, b, h, sq, sk, device="cpu", BLOCK_SIZE=block)
        true = ref.to_dense().bool()  # tiles only; tokens come from the mask below
        q, k = grid(sq, sk)
        bb = torch.arange(b)[:, None, None, None]
        hh = torch.arange(h)[None, :, None, None]
        tok = mod(bb, hh, q[None, None], k[None, None]).expand(b, h, sq, sk)
        ref_partial, ref_full = expand(ref, block, sq, sk)
        admitted = (ref_partial | ref_full) & tok
        ours_bm = check(classes, tok, block, mask_mod=mod)
        partial, full = expand(ours_bm, block, sq, sk)
        assert not (admitted & ~(partial | full)).any()
        assert not (full & ~tok).any()
        # same listed tiles; ours may call an edge tile full that create_block_mask (which
        # pads with False) lists as partial
        assert torch.equal(classes > 0, true)
        ref_full_tiles = tiles_from_lists(ref.full_kv_num_blocks, ref.full_kv_indices,
                                          classes.shape[-1])
        assert not (ref_full_tiles & (classes != 2)).any()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_attention_causal_segments():
    gen = torch.Generator().manual_seed(0)
    b, h, s, d, block = 2, 2, 80, 16, 32
    ids = torch.cumsum((torch.rand(b, s, generator=gen) < 0.08).long(), -1)

    def mask_mod(bi, hi, q, k):
        return (k <= q) & (ids[bi, q] == ids[bi, k])

    classes = rt._combine([rt._band_blocks(s, s, None, 0, False, block, "cpu"),
                           rt._segment_blocks(ids, ids, block)], b, h)
    bm = block_mask(classes, mask_mod, s, s, block)
    q, k, v = (torch.randn(b, h, s, d, generator=gen) for _ in range(3))
    out = flex_attention(q, k, v, block_mask=bm)
    qi, ki = grid(s, s)
    mask = (ki <= qi)[None] & (ids[:, :, None] == ids[:, None, :])
    scores = (q @ k.transpose(-1, -2)) / d**0.5
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    ref = torch.softmax(scores, -1) @ v
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_long_sequences_stay_in_block_space():
    """128k x 128k tokens (16 G pairs) is only 1024 x 1024 tiles: cheap if never materialised."""
    s, block = 131072, 128
    ids = torch.cumsum((torch.arange(s) % 5000 == 0).long(), -1)[None]
    classes = rt._combine([rt._band_blocks(s, s, None, 0, False, block, "cpu"),
                           rt._segment_blocks(ids, ids, block)], 1, 1)
    bm = block_mask(classes, None, s, s, block)
    assert bm.kv_num_blocks.shape == (1, 1, 1024)
    assert int(bm.full_kv_num_blocks.sum()) > 0 and int(bm.kv_num_blocks.sum()) > 0


def test_tensor_offsets_match_int_offsets():
    """lo / hi / prefix may be 0-d tensors (values that change must not recompile)."""
    for lo, hi, br in [(-20, 3, False), (None, 0, True), (-5, -14, False), (7, None, True)]:
        t = [None if x is None else torch.tensor(x) for x in (lo, hi)]
        ints = rt._band_blocks(70, 90, lo, hi, br, 16, "cpu")
        assert torch.equal(rt._band_blocks(70, 90, *t, br, 16, "cpu"), ints)
        ints = rt._prefix_blocks(33, 70, 90, lo, hi, br, 16, "cpu")
        assert torch.equal(rt._prefix_blocks(torch.tensor(33), 70, 90, *t, br, 16, "cpu"), ints)


def test_runtime_is_self_contained():
    """Standalone modules inline parts of the file: only torch and standard imports, `_`
    top-level names, each def documented."""
    tree = ast.parse((RUNTIME / "flex.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert [a.name for a in node.names] in (["torch"], ["math"], ["importlib.util"],
                                                    ["warnings"])
        elif isinstance(node, ast.ImportFrom) and node.module == "collections.abc":
            continue  # annotations
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            assert node.module == "errors"  # the runtime's own error classes, as flash.py
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module.startswith("torch")
            assert all(a.asname and a.asname.startswith("_") for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            assert node.name.startswith("_") and ast.get_docstring(node)
        elif isinstance(node, ast.Assign):
            assert all(t.id.startswith("_") for t in node.targets)


@pytest.mark.parametrize("seed", range(40))
def test_backward_lists_are_the_transpose_of_the_forward_lists(seed):
    """flex's backward walks the q-side lists (q_num_blocks / q_indices and their full twins)
    for dk and dv: they must list exactly the tiles of the kv-side lists, transposed."""
    gen = torch.Generator().manual_seed(seed)
    b, h = [(1, 1), (2, 1), (2, 3)][seed % 3]
    n_q, n_k = (int(n) for n in torch.randint(1, 6, (2,), generator=gen))
    classes = torch.randint(0, 3, (b, h, n_q, n_k), generator=gen).to(torch.int8)
    bm = block_mask(classes, None, n_q * 128 - 5, n_k * 128 - 3, 128)
    for (num, idx), (q_num, q_idx) in (
            ((bm.kv_num_blocks, bm.kv_indices), (bm.q_num_blocks, bm.q_indices)),
            ((bm.full_kv_num_blocks, bm.full_kv_indices),
             (bm.full_q_num_blocks, bm.full_q_indices))):
        assert torch.equal(tiles_from_lists(num, idx, n_k),
                           tiles_from_lists(q_num, q_idx, n_q).transpose(-2, -1))
