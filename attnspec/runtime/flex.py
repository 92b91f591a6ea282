"""FlexAttention: running generated flex bodies (compiled once, FLASH or Triton kernel) and
structured BlockMask builders.

Each builder classifies every (query block, key block) tile of a recognised mask as

* 0 = skip: no valid (q, k) pair of the tile is attendable,
* 1 = partial: some pairs may be attendable (the kernel applies `mask_mod` there),
* 2 = full: every valid pair of the tile is attendable (the kernel skips `mask_mod`).

The classification only has to be sound: "skip" must never hide an attendable pair and "full"
must never contain a masked valid pair; "partial" is always safe. Everything is computed with
vectorised torch ops over block indices (or over tokens per side for id/padding tensors), so
the cost is O(blocks) and no Sq x Sk tensor is ever built. `_combine` ANDs the classifications
of a conjunction, `_block_lists` lays the result out as a BlockMask's eight tensors and
`_block_mask_of` wraps them (`_structured_block_mask` compiles the build and keeps the result).

Positions past the end of a sequence (the tail of the last block) are not "valid pairs": the
flex kernels mask them out by sequence length in full and partial blocks alike.
"""

import importlib.util
import warnings
from collections.abc import Callable, Iterable

import torch
from torch.nn.attention.flex_attention import BlockMask as _BlockMask
from torch.nn.attention.flex_attention import create_block_mask as _create_block_mask
from torch.nn.attention.flex_attention import flex_attention as _flex_attention
from torch.nn.attention.flex_attention import noop_mask as _noop_mask

from .errors import UnsupportedInputError

try:
    from torch.nn.attention.flex_attention import AuxRequest as _AuxRequest
except ImportError:  # torch < 2.9 returns the log-sum-exp with return_lse=True
    _AuxRequest = None

_BLOCK = 128
_FLEX_BLOCK = _BLOCK  # the tile size generated code passes to the builders
_FLEX_COMPILED = {}
# Bodies whose compile for flex's FLASH kernel failed: they run on the Triton kernel from then on.
_FLEX_FLASH_FAILED = set()
_FLEX_FLASH_OPTIONS = {"BACKEND": "FLASH"}
_FLEX_FLASH_FOUND = {}  # "cute": whether torch >= 2.11 and flash_attn.cute is installed
# Bodies whose Triton kernel needs smaller tiles than flex's defaults to fit in shared memory.
_FLEX_SMALL_TILES = set()
_FLEX_SMALL_OPTIONS = {"BLOCK_M": 64, "BLOCK_N": 32, "num_stages": 1, "num_warps": 4}
# Training calls always run flex's main Triton kernel. Below 128 queries a static-shape compile
# picks flex's decoding kernel for the forward; its outputs are right, but the backward that
# follows it gave wrong dq/dk/dv (120-1100x the tolerance) on the H200 at 77 tokens (GQA,
# sinks, layer mode; benchmarks/gpu_flex_first_compile.py, issue 20). Inference keeps the
# decoding kernel.
_FLEX_TRAINING_OPTIONS = {"FORCE_USE_FLEX_ATTENTION": True}
# auto's "flex-small" (graphs): flex when Sq·Sk is at most this, else the edge list. Flex's
# dense edge tables and its mask over every pair grow as N²; at 8k nodes and out-degree 16 the
# edge list was 10x faster forward (H200, issue 14).
_FLEX_SMALL_GRAPH = 1 << 22
_FLEX_MIN_HEAD_DIM = 16  # Inductor: "embedding dimension ... must be at least 16"
# BlockMask builders whose compile failed: they run uncompiled from then on.
_FLEX_BUILD_FAILED = set()
# BlockMasks built recently, oldest first: key -> (tensors, their copies, BlockMask); see
# `_cached_block_mask` for why the key is sound.
_FLEX_MASKS = {}
_FLEX_MASKS_KEPT = 16


def _flex_runner(body: Callable, device: torch.device) -> Callable:
    """`body` compiled once per process on CUDA (captured tensors are its arguments, so new
    values never recompile); uncompiled on CPU, where flex runs forward only."""
    if device.type != "cuda":
        return body
    if body not in _FLEX_COMPILED:
        _FLEX_COMPILED[body] = torch.compile(body, fullgraph=True)
    return _FLEX_COMPILED[body]


def _flex_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   **options: object) -> tuple[torch.Tensor, torch.Tensor]:
    """flex_attention's output and log-sum-exp (for sinks and `return_lse`), on old and new
    torch alike. The lse is the natural log: torch (2.13 read) rescales its kernels' base-2
    statistics by ln 2 before returning them, on every kernel; fully masked rows give -inf."""
    if _AuxRequest is None:
        return _flex_attention(q, k, v, return_lse=True, **options)
    out, aux = _flex_attention(q, k, v, return_aux=_AuxRequest(lse=True), **options)
    return out, aux.lse


def _flex_no_cpu_backward(owner: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          params: Iterable[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """flex_attention has no CPU backward: refuse before the forward, not in the middle of it.
    Without grad mode q, k, v come back detached: flex refuses CPU tensors that require grad
    even under no_grad (a NotImplementedError from inside torch)."""
    if not torch.is_grad_enabled():
        return q.detach(), k.detach(), v.detach()
    if any(t.requires_grad for t in (q, k, v, *params)):
        raise ValueError(f"{owner}: FlexAttention has no backward on CPU; use a CUDA device, "
                         "or backend='sdpa' / 'eager' for training on CPU")
    return q, k, v


def _flex_flash_usable(q: torch.Tensor, captured: tuple[torch.Tensor, ...]) -> bool:
    """Whether flex's FLASH kernel (flash-attn 4's CuTe DSL, torch >= 2.11) can run this call:
    a CUDA sm90+ device, fp16/bf16, `flash_attn.cute` installed, no gradient wanted for a tensor
    the score_mod captures (the kernel has none) and no deterministic-algorithms mode."""
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    if torch.cuda.get_device_capability(q.device)[0] < 9:
        return False
    if torch.are_deterministic_algorithms_enabled():
        return False
    # Checked at trace time, even under no_grad; a captured setting is a plain number.
    if any(isinstance(t, torch.Tensor) and t.requires_grad for t in captured):
        return False
    if "cute" not in _FLEX_FLASH_FOUND:  # looked up once: a path scan per call would cost
        version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
        _FLEX_FLASH_FOUND["cute"] = version >= (2, 11) and \
            importlib.util.find_spec("flash_attn") is not None and \
            importlib.util.find_spec("flash_attn.cute") is not None
    return _FLEX_FLASH_FOUND["cute"]


def _flex_run(body: Callable, args: tuple, captured: tuple[torch.Tensor, ...],
              fast: bool) -> tuple[tuple[torch.Tensor, torch.Tensor | None], str]:
    """Run a generated flex body: on flex's FLASH kernel when `fast` and usable, else Triton.
    Returns the body's result and the kernel that ran ("flash", "triton", or "cpu": flex
    runs uncompiled there, materialising the scores, which no benchmark should call Triton).

    A FLASH compile that fails (an unsupported score_mod, int64 tables, a head dim, ...) is
    remembered and that body runs on Triton from then on, with one warning: both kernels
    compute the same thing, and a real error in the call shows again on Triton.
    """
    q = args[0]
    if q.is_cuda and min(q.shape[-1], args[2].shape[-1]) < _FLEX_MIN_HEAD_DIM:
        dv = args[2].shape[-1]
        # Inductor's flex lowering refuses head dims below 16: zero columns keep q.k and the
        # output exact (the scale is passed explicitly), and the extra columns are sliced off.
        padded = tuple(_pad_head_dim(t, _FLEX_MIN_HEAD_DIM) for t in args[:3])
        (out, lse), kernel = _flex_run(body, padded + tuple(args[3:]), captured, fast)
        return (out[..., :dv], lse), kernel
    if fast and body not in _FLEX_FLASH_FAILED and _flex_flash_usable(q, captured) \
            and not _flex_needs_backward(args[:3]):
        try:
            return _flex_runner(body, q.device)(*args, kernel_options=_FLEX_FLASH_OPTIONS), "flash"
        except Exception as error:  # noqa: BLE001 — compile-time refusals come in many types
            _FLEX_FLASH_FAILED.add(body)
            warnings.warn(f"{body.__name__}: flex's FLASH kernel cannot run it "
                          f"({str(error).splitlines()[0][:200]}); using the Triton kernel",
                          stacklevel=3)
    run = _flex_runner(body, q.device)
    label = "triton" if q.is_cuda else "cpu"
    training = _FLEX_TRAINING_OPTIONS if _flex_needs_backward(args[:3]) else {}
    if body not in _FLEX_SMALL_TILES:
        try:
            return run(*args, kernel_options=training or None), label
        except RuntimeError as error:
            if "out of resource" not in str(error):
                raise
            # A score_mod reading many captured tensors can leave no Triton config that fits
            # in shared memory at large head dims: smaller tiles do (remembered per body).
            _FLEX_SMALL_TILES.add(body)
    return run(*args, kernel_options={**_FLEX_SMALL_OPTIONS, **training}), label


def _flex_needs_backward(qkv: tuple[torch.Tensor, ...]) -> bool:
    """Whether this call will need a backward. flex's FLASH kernel (flash-attn 4's CuTe code)
    runs forward only: its backward gave wrong gradients on the H200 matrix (issue 20) - dq at
    head_dim 16 on a plain causal mask, and dq/dk/dv off by up to 1e15 with score_mods (ALiBi,
    softcap) and GQA at head dims 32 and 256 - so training calls run on Triton."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in qkv)


def _pad_head_dim(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with its last (head) dim zero-padded to at least `size`: for kernels with a minimum
    head dim, zero q/k columns add nothing to q.k and zero v columns give output columns to drop."""
    return torch.nn.functional.pad(x, (0, size - x.shape[-1])) if x.shape[-1] < size else x


def _spread(param: torch.Tensor, replicas: int = 32, budget: int = 1 << 20) -> torch.Tensor:
    """`param` with a trailing axis of `replicas` copies (fewer for big tables: at most `budget`
    elements), for a score_mod to read replica `kv_idx % R`. The copies' gradients sum back into
    `param`; in flex's backward the atomic adds for one param entry then spread over R
    addresses (one address for every pair of a head is what serialises learned bias tables)."""
    copies = max(1, min(replicas, budget // max(param.numel(), 1)))
    return param.unsqueeze(-1).expand(*param.shape, copies).contiguous()


def _general_block_mask(mask_mod: Callable, batch: int | None, heads: int | None, q_len: int,
                        kv_len: int, device: torch.device) -> _BlockMask:
    """`create_block_mask` for a mask without recognised structure: `mask_mod` is evaluated on
    every (query, key) pair, compiled on CUDA (fused, no [Sq, Sk] tensor kept); uncompiled on
    CPU. `batch` / `heads` are None unless the mask reads `b` / `h`. Kept for reuse like the
    structured ones, keyed by the mask's code and the values it captured (token-group bounds,
    sizes, the very same tensors)."""
    cells = tuple(cell.cell_contents for cell in mask_mod.__closure__ or ())
    arguments = tuple(tuple(sorted(c.items())) if isinstance(c, dict) else c for c in cells)
    return _cached_block_mask(
        (mask_mod.__code__, batch, heads), q_len, kv_len, device, arguments,
        lambda: _flex_runner(_create_block_mask, device)(
            mask_mod, batch, heads, q_len, kv_len, device=device, BLOCK_SIZE=_BLOCK))


def _built_lists(build: Callable, arguments: tuple) -> tuple[torch.Tensor, ...]:
    """`build(*arguments)`, compiled on CUDA; run as is when compiling it fails (once, with a
    warning): the BlockMask is then slower to build, never different."""
    device = arguments[3]
    if device.type == "cuda" and build not in _FLEX_BUILD_FAILED:
        try:
            return _flex_runner(build, device)(*arguments)
        except Exception as error:  # noqa: BLE001 — a compiler bug must not stop the forward
            _FLEX_BUILD_FAILED.add(build)
            warnings.warn(f"{build.__name__}: compiling the BlockMask builder failed "
                          f"({type(error).__name__}); building it uncompiled", stacklevel=3)
    return build(*arguments)


def _structured_block_mask(build: Callable, mask_mod: Callable | None, batch: int, q_len: int,
                           kv_len: int, device: torch.device, arguments: tuple) -> _BlockMask:
    """The BlockMask `build(batch, q_len, kv_len, device, *arguments)` describes, built in
    O(blocks) (compiled on CUDA: a handful of kernels) and kept for reuse.

    A BlockMask is reused when the build, the sizes and the very same argument objects with the
    same contents come again, as when every layer of a model gets the same document ids, or a
    mask reads no tensor at all (`_cached_block_mask`).
    """
    return _cached_block_mask(
        (build, batch), q_len, kv_len, device, arguments,
        lambda: _block_mask_of(_built_lists(build, (batch, q_len, kv_len, device, *arguments)),
                               mask_mod, q_len, kv_len))


def _cached_block_mask(what: object, q_len: int, kv_len: int, device: torch.device,
                       arguments: tuple, make: Callable[[], _BlockMask],
                       largest: int = 1 << 20) -> _BlockMask:
    """`make()`, or the BlockMask it made before for the same `what`, sizes and arguments.

    Why a hit is sound: the BlockMask (its tile lists and its `mask_mod`) depends on nothing but
    `what`, the sizes and the arguments. Values other than tensors are compared by equality. A
    tensor must be the very same object (the entry holds it, so its id cannot pass to another)
    with the same contents as when the mask was built: `_version` alone cannot say so, since a
    write through numpy (`torch.from_numpy`), `.data` or a DLPack view does not move it, and an
    inference tensor has none. So id, `_version`, shape, dtype and device only find the
    candidate, and a copy of each tensor taken at the build confirms it (`torch.equal`: one
    compare, a host sync on CUDA; ids [B, S] and lengths [B] are small). A mismatch rebuilds.

    Built every call, never cached: while torch.compile traces (the builder is plain tensor ops
    and goes into the graph, where it sees each call's values), with a tensor argument of more
    than `largest` elements (its copy and compare would cost about what the build does) or an
    unhashable value. Masks built under inference mode have a key of their own: their tensors
    cannot be saved for a backward outside it.
    """
    if torch.compiler.is_compiling():
        return make()
    tensors = tuple(a for a in arguments if isinstance(a, torch.Tensor))
    if any(t.numel() > largest for t in tensors):
        return make()
    key = (what, q_len, kv_len, str(device), torch.is_inference_mode_enabled(), tuple(
        (id(a), None if a.is_inference() else a._version, a.shape, a.dtype, a.device)
        if isinstance(a, torch.Tensor) else a for a in arguments))
    try:
        found = _FLEX_MASKS.pop(key, None)
    except TypeError:  # an unhashable captured value: build every time
        return make()
    if found is not None and all(x is y and torch.equal(c, y)
                                 for x, c, y in zip(found[0], found[1], tensors)):
        _FLEX_MASKS[key] = found  # newest last
        return found[2]
    copies = tuple(t.detach().clone() for t in tensors)  # the values `make` reads
    block_mask = make()
    _FLEX_MASKS[key] = (tensors, copies, block_mask)
    while len(_FLEX_MASKS) > _FLEX_MASKS_KEPT:
        del _FLEX_MASKS[next(iter(_FLEX_MASKS))]  # the least recently used
    return block_mask


def _num_blocks(length: int, block: int) -> int:
    """Number of `block`-sized tiles needed to cover `length` positions."""
    return (length + block - 1) // block


def _block_bounds(length: int, block: int,
                  device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last VALID position of each block, as int64 tensors [n].

    The last block is clipped to `length - 1`, so bounds never point past the sequence end.
    """
    first = torch.arange(_num_blocks(length, block), device=device, dtype=torch.int64) * block
    last = torch.clamp(first + (block - 1), max=length - 1)
    return first, last


def _classes(any_: torch.Tensor, all_: torch.Tensor) -> torch.Tensor:
    """int8 tile classes from "some pair attendable" and "every pair attendable" flags."""
    two = torch.full_like(any_, 2, dtype=torch.int8)
    return torch.where(all_, two, any_.to(torch.int8))


def _band_rect(q_first: torch.Tensor, q_last: torch.Tensor, k_first: torch.Tensor,
               k_last: torch.Tensor, lo: int | torch.Tensor | None, hi: int | torch.Tensor | None,
               shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(any, all) of `lo <= k - q - shift <= hi` over the rectangles [q_first, q_last] x
    [k_first, k_last] (broadcastable tensors; rectangles must be non-empty).

    `d = k - q - shift` takes every integer between its extremes on a rectangle, so the band
    meets the rectangle iff the ranges overlap (and lo <= hi), and covers it iff the range lies
    inside.
    """
    d_min = k_first - q_last - shift
    d_max = k_last - q_first - shift
    any_ = torch.ones_like(d_min, dtype=torch.bool)
    all_ = torch.ones_like(d_min, dtype=torch.bool)
    if lo is not None:
        any_ = any_ & (d_max >= lo)
        all_ = all_ & (d_min >= lo)
    if hi is not None:
        any_ = any_ & (d_min <= hi)
        all_ = all_ & (d_max <= hi)
    if lo is not None and hi is not None:
        any_ = any_ & (lo <= hi)  # an empty band (lo > hi) meets nothing
    return any_, all_


def _band_blocks(q_len: int, kv_len: int, lo: int | torch.Tensor | None,
                 hi: int | torch.Tensor | None, bottom_right: bool, block: int,
                 device: torch.device | str) -> torch.Tensor:
    """Tile classes int8 [nQ, nK] of the band `lo <= k - q - shift <= hi`.

    `shift` is `kv_len - q_len` for bottom-right alignment, else 0; `lo` / `hi` may be None
    (unbounded) and may be ints or 0-d tensors.
    """
    shift = kv_len - q_len if bottom_right else 0
    q_first, q_last = _block_bounds(q_len, block, device)
    k_first, k_last = _block_bounds(kv_len, block, device)
    any_, all_ = _band_rect(q_first[:, None], q_last[:, None], k_first[None, :],
                            k_last[None, :], lo, hi, shift)
    return _classes(any_, all_)


def _block_min_max(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block min and max of `x` [..., S] along the last axis -> two tensors [..., n].

    The tail of the last block is filled by repeating the last valid element, which leaves
    min and max unchanged (S positions are gathered: O(tokens), not O(tokens^2)).
    """
    length = x.shape[-1]
    n = _num_blocks(length, block)
    index = torch.clamp(torch.arange(n * block, device=x.device), max=max(length - 1, 0))
    tiles = x[..., index].reshape(*x.shape[:-1], n, block)
    return tiles.amin(dim=-1), tiles.amax(dim=-1)


def _segment_blocks(q_ids: torch.Tensor, kv_ids: torch.Tensor, block: int) -> torch.Tensor:
    """Tile classes int8 [B, nQ, nK] of `q_ids[b, q] == kv_ids[b, k]` (ids in any order).

    Skip when the [min, max] id ranges of the two blocks are disjoint (then no id can match);
    full when both blocks hold one single equal id; partial otherwise (always sound).
    """
    q_min, q_max = _block_min_max(q_ids, block)
    k_min, k_max = _block_min_max(kv_ids, block)
    q_min, q_max = q_min[..., :, None], q_max[..., :, None]
    k_min, k_max = k_min[..., None, :], k_max[..., None, :]
    any_ = (q_max >= k_min) & (k_max >= q_min)
    all_ = (q_min == q_max) & (k_min == k_max) & (q_min == k_min)
    return _classes(any_, all_)


def _key_length_blocks(lengths: torch.Tensor, q_len: int, kv_len: int, block: int) -> torch.Tensor:
    """Tile classes int8 [B, nQ, nK] of `k < lengths[b]` (`lengths` int [B]).

    Full when the key block's last valid position is below the length, skip when its first is
    at or past it.
    """
    k_first, k_last = _block_bounds(kv_len, block, lengths.device)
    length = lengths.to(torch.int64)[:, None]
    classes = _classes(k_first[None, :] < length, k_last[None, :] < length)
    return classes[:, None, :].expand(-1, _num_blocks(q_len, block), -1)


def _key_padding_blocks(valid: torch.Tensor, q_len: int, block: int) -> torch.Tensor:
    """Tile classes int8 [B, nQ, nK] of `valid[b, k]` (`valid` bool [B, Sk]).

    Full when every key of the block is valid, skip when none is.
    """
    low, high = _block_min_max(valid.to(torch.int8), block)
    classes = _classes(high == 1, low == 1)
    return classes[:, None, :].expand(-1, _num_blocks(q_len, block), -1)


def _prefix_blocks(prefix: torch.Tensor | int, q_len: int, kv_len: int,
                   lo: int | torch.Tensor | None, hi: int | torch.Tensor | None, bottom_right: bool,
                   block: int, device: torch.device | str) -> torch.Tensor:
    """Tile classes int8 [B or 1, nQ, nK] of `k < prefix | band(lo, hi)` (prefix-LM).

    `prefix` is an int or an int tensor [B]. Exact, not just sound: a tile is full iff the keys
    at or past the prefix (a sub-rectangle) are all in the band or there are none; it is skipped
    iff no key is below the prefix and the band misses it.
    """
    shift = kv_len - q_len if bottom_right else 0
    p = torch.as_tensor(prefix, device=device).to(torch.int64).reshape(-1, 1)
    q_first, q_last = _block_bounds(q_len, block, device)
    k_first, k_last = _block_bounds(kv_len, block, device)
    q_first, q_last = q_first[None, :, None], q_last[None, :, None]
    rest_first = torch.maximum(k_first[None, :], p)[:, None, :]
    k_first, k_last = k_first[None, None, :], k_last[None, None, :]
    band_any, _ = _band_rect(q_first, q_last, k_first, k_last, lo, hi, shift)
    _, rest_all = _band_rect(q_first, q_last, rest_first, k_last, lo, hi, shift)
    any_ = band_any | (k_first < p[:, :, None])
    return _classes(any_, rest_all | (rest_first > k_last))


def _combine(classes: list[torch.Tensor], B: int, H: int) -> torch.Tensor:
    """AND of masks: elementwise min of tile classes -> int8 [B, H, nQ, nK].

    Each entry is [nQ, nK], [B, nQ, nK] or [B, H, nQ, nK]; size-1 batch / head dims broadcast.
    The list must not be empty.
    """
    out = None
    for c in classes:
        if c.dim() == 2:
            c = c[None, None]
        elif c.dim() == 3:
            c = c[:, None]
        out = c if out is None else torch.minimum(out, c)
    return out.expand(B, H, *out.shape[-2:]).contiguous()


def _ordered(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count int32 [..., nQ], indices int32 [..., nQ, nK]) of the flagged key blocks.

    Flagged blocks come first in ascending order (a stable descending sort on the flag), as
    `create_block_mask` lays them out; entries past the count are ignored by the kernels.
    (A cumulative-sum-and-scatter version avoids the sort but trips Inductor's Triton codegen
    in torch 2.11 when the builder is compiled.)
    """
    count = flags.sum(dim=-1, dtype=torch.int32)
    indices = torch.argsort(flags.to(torch.int8), dim=-1, descending=True, stable=True)
    return count.contiguous(), indices.to(torch.int32).contiguous()


def _block_lists(classes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The eight BlockMask tensors of int8 tile classes [B, H, nQ, nK]: partial (1) and full (2)
    tiles in key-block order per query block, and the transposed (query-block order per key
    block) lists that backward reads. Both sides come straight from the classes, which costs
    less than `from_kv_blocks` re-deriving the q side from the kv lists.
    """
    partial, full = classes == 1, classes == 2
    return (*_ordered(partial), *_ordered(full),
            *_ordered(partial.transpose(-2, -1).contiguous()),
            *_ordered(full.transpose(-2, -1).contiguous()))


def _block_mask_of(lists: tuple[torch.Tensor, ...], mask_mod: Callable | None, q_len: int,
                   kv_len: int, block: int = _BLOCK) -> _BlockMask:
    """A BlockMask of the eight tensors `_block_lists` returns (no further work on them)."""
    kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx = lists
    return _BlockMask(
        seq_lengths=(q_len, kv_len), kv_num_blocks=kv_num, kv_indices=kv_idx,
        full_kv_num_blocks=full_num, full_kv_indices=full_idx, q_num_blocks=q_num,
        q_indices=q_idx, full_q_num_blocks=full_q_num, full_q_indices=full_q_idx,
        BLOCK_SIZE=(block, block), mask_mod=mask_mod or _noop_mask)


# Learned tables read by a score_mod get their gradient from flex's per-pair score gradients,
# which its backward rounds to the input dtype first. Where a table's gradient is a cancelling
# sum (ALiBi slopes times |q - k|, a bias that depends on the query only: its exact gradient is
# 0) the half-precision result missed the tolerance by 1.1-16x (H100 matrix, 2026-12-06,
# cookbook AlibiLearnedSlopes and CallTimeBias). Such calls are refused, not run.


def _flex_check_table_gradients(owner: str, q: torch.Tensor, tables: dict) -> None:
    """Refuse a call that would train learned tables through flex's backward (`tables`: name ->
    param) in half precision, or at all under `torch.use_deterministic_algorithms(True)`: the
    backward adds each pair's table gradient with atomics, in an order that varies between
    runs. Frozen tables, float32 inputs (outside deterministic mode) and inference run."""
    if not torch.is_grad_enabled():
        return
    training = sorted(name for name, table in tables.items() if table.requires_grad)
    if training and torch.are_deterministic_algorithms_enabled():
        raise UnsupportedInputError(
            f"{owner}: flex's backward sums the gradients of learned tables "
            f"({', '.join(training)}) with atomic adds, whose order varies between runs, and "
            "torch.use_deterministic_algorithms(True) is on; freeze the tables, or use "
            "backend='sdpa'/'eager' (auto does)")
    if training and q.dtype in (torch.float16, torch.bfloat16):
        raise UnsupportedInputError(
            f"{owner}: flex's backward rounds score gradients to {q.dtype} before summing them "
            f"into learned tables ({', '.join(training)}): measured beyond the verification "
            "tolerance; use float32 inputs, freeze the tables, or backend='sdpa'/'eager' "
            "(auto does)")


def _flex_shared_edges(owner: str, name: str, edge_index: object) -> None:
    """Refuse one edge list per batch row (`edge_index` [B, 2, E]): flex's mask_mod and
    score_mod read one [Sq, Sk] table of the edges, shared by the batch. Raised before any
    table is built; `auto` steps past it to the next backend."""
    if isinstance(edge_index, torch.Tensor) and edge_index.dim() == 3:
        raise UnsupportedInputError(
            f"{owner}: {name} is one edge list per batch row ([B, 2, E]); flex reads one edge "
            "list shared by the batch; per-row lists run on edges, eager or sdpa")


def _flex_decode_block_mask(mask_mod: Callable, rows: torch.Tensor, q_len: int, kv_len: int,
                            block: int = _BLOCK) -> _BlockMask:
    """Decoding's BlockMask, built from the row lengths in O(B·blocks) without a device sync:
    row b visits its first ceil(rows[b] / block) key blocks (each partial: `mask_mod` decides
    within them), so a short row costs little in a batch of long ones."""
    batch, device = rows.shape[0], rows.device
    q_blocks, kv_blocks = -(-q_len // block), -(-kv_len // block)
    count = torch.div(rows + block - 1, block, rounding_mode="floor").clamp(max=kv_blocks)
    count = count.to(torch.int32).view(batch, 1, 1).expand(batch, 1, q_blocks).contiguous()
    order = torch.arange(kv_blocks, device=device, dtype=torch.int32)
    indices = order.view(1, 1, 1, -1).expand(batch, 1, q_blocks, kv_blocks).contiguous()
    return _BlockMask.from_kv_blocks(count, indices, BLOCK_SIZE=block, mask_mod=mask_mod,
                                     seq_lengths=(q_len, kv_len))



def _flex_paged_logical(pages: torch.Tensor, rows: torch.Tensor, page_size: int,
                        num_pages: int, block: int = _BLOCK) -> tuple[torch.Tensor, ...]:
    """A paged cache read in place (attention-gym's paged attention): the pool is one key
    sequence of num_pages * page_size slots shared by the batch. Returns (physical [B, blocks]:
    the physical key block of each of a row's logical blocks, count [B]: the blocks a row uses,
    logical [B, physical blocks]: the row's logical block of each physical block, -1 where it
    is not the row's), with which the mods turn a physical key index back into the row's
    position. Needs page_size a multiple of `block`."""
    batch, device = rows.shape[0], rows.device
    per_page = page_size // block
    count = torch.div(rows + block - 1, block, rounding_mode="floor")
    logical_block = torch.arange(pages.shape[1] * per_page, device=device)
    page = pages.gather(1, (logical_block // per_page).view(1, -1).expand(batch, -1))
    physical = page.clamp(0, num_pages - 1) * per_page + logical_block % per_page
    used = logical_block.view(1, -1) < count.view(-1, 1)
    total = num_pages * per_page
    logical = torch.full((batch, total + 1), -1, dtype=torch.int64, device=device)
    # Blocks a row does not use go to the spare last column, dropped after the scatter.
    logical.scatter_(1, torch.where(used, physical, total), logical_block.expand(batch, -1))
    return physical, count, logical[:, :total]


def _flex_paged_block_mask(physical: torch.Tensor, count: torch.Tensor, q_len: int,
                           kv_len: int, mask_mod: Callable, block: int = _BLOCK) -> _BlockMask:
    """Row b's BlockMask lists the physical key blocks of its pages, in its own order (from
    `_flex_paged_logical`); every listed block is partial: `mask_mod` decides within it."""
    batch, blocks = physical.shape
    q_blocks = -(-q_len // block)
    # BlockMask counts key blocks by the width of its index list: one column per block of
    # the pool (entries past a row's count are never read).
    total = kv_len // block
    physical = torch.nn.functional.pad(physical[:, :total], (0, max(0, total - blocks)))
    count = count.clamp(max=total)
    indices = physical.to(torch.int32).view(batch, 1, 1, total).expand(
        batch, 1, q_blocks, total).contiguous()
    counts = count.to(torch.int32).view(batch, 1, 1).expand(batch, 1, q_blocks).contiguous()
    return _BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=block, mask_mod=mask_mod,
                                     seq_lengths=(q_len, kv_len))
