"""KV caches for decoding: checking the cache a call passes, appending new keys and values, and
gathering a row's keys as a dense tensor (for the backends that do not read pages themselves).

Two layouts, both flash-attn's (so the flash backend passes them to the kernel as they are):

* contiguous: `cache_k [B, capacity, kv_heads, head_dim]`, `cache_v [B, capacity, kv_heads,
  value_dim]`;
* paged: a pool `cache_k [num_pages, page_size, kv_heads, head_dim]` (and `cache_v`) and a page
  table `cache_pages int[B, max_pages]`: position p of row b lives in page
  `cache_pages[b, p // page_size]`, slot `p % page_size`. Pages may come in any order.

`cache_len int[B]` counts the tokens a row holds before the call. The new tokens go to
positions `cache_len[b] .. cache_len[b] + Sq - 1`; the caller advances `cache_len` once per step
(after every layer: all layers share it).

Example:
    >>> k_cache, v_cache = torch.zeros(2, 4, 1, 2), torch.zeros(2, 4, 1, 2)
    >>> new = torch.ones(2, 1, 1, 2)
    >>> kv_cache_append(k_cache, v_cache, new, new, torch.tensor([0, 2]))
    >>> k_cache[:, :, 0, 0].tolist()
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
"""

import torch


def kv_cache_append(cache_k: torch.Tensor, cache_v: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, cache_len: torch.Tensor,
                    cache_pages: torch.Tensor | None = None) -> None:
    """Write `k [B, kv_heads, S, head_dim]` and `v [B, kv_heads, S, value_dim]` into the cache at
    positions `cache_len[b] + i` (in place; `cache_len` itself is not changed). With
    `cache_pages`, the cache is a page pool (see the module docstring). Use it for a prefill
    computed elsewhere; a decoding module appends its own new tokens."""
    rows, slots = _kv_slots(cache_len.to(torch.int64), k.shape[2], cache_k, cache_pages)
    cache_k[rows, slots] = k.transpose(1, 2).to(cache_k.dtype)
    cache_v[rows, slots] = v.transpose(1, 2).to(cache_v.dtype)


def _kv_slots(cache_len: torch.Tensor, count: int, cache_k: torch.Tensor,
              cache_pages: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors [B, count] (first axis, second axis of the cache) of positions
    `cache_len[b] + i`, i < count."""
    positions = cache_len.view(-1, 1) + torch.arange(count, device=cache_k.device)
    if cache_pages is None:
        rows = torch.arange(positions.shape[0], device=cache_k.device).view(-1, 1)
        return rows.expand_as(positions), positions
    page_size = cache_k.shape[1]
    pages = torch.gather(cache_pages.to(torch.int64), 1, positions // page_size)
    return pages, positions % page_size


def _kv_gather(cache_k: torch.Tensor, cache_v: torch.Tensor, rows: torch.Tensor,
               cache_pages: torch.Tensor | None, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of positions 0..length-1 as dense `[B, kv_heads, length, *]` tensors;
    positions at or past a row's key count `rows[b]` read 0 (a page or slot not written yet may
    hold anything, NaN included, and 0 * NaN would reach the output)."""
    zeros = torch.zeros(rows.shape[0], dtype=torch.int64, device=cache_k.device)
    pages = None
    if cache_pages is not None:
        # Table entries past a row's last page may be anything (-1 often): read page 0 there.
        pages = cache_pages[:, :_ceil_div(length, cache_k.shape[1])]
        pages = torch.where((pages >= 0) & (pages < cache_k.shape[0]), pages, 0)
    index = _kv_slots(zeros, length, cache_k, pages)
    keep = (_kv_positions(zeros, length) < rows.view(-1, 1))[:, :, None, None]
    k = torch.where(keep, cache_k[index], cache_k.new_zeros(()))
    v = torch.where(keep, cache_v[index], cache_v.new_zeros(()))
    return k.transpose(1, 2), v.transpose(1, 2)


def _kv_positions(cache_len: torch.Tensor, count: int) -> torch.Tensor:
    """[B, count] int64 positions `cache_len[b] + i` of the new tokens."""
    return cache_len.view(-1, 1) + torch.arange(count, device=cache_len.device)


def _ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for ints: pages needed for a tokens."""
    return -(-a // b)


def _check_kv_cache(name: str, paged: bool, tensors: tuple, B: int, Sq: int, kv_heads: int,
                    head_dim: int, value_dim: int, device: torch.device,
                    check_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Check a call's cache (`tensors` = (NAME_k, NAME_v, NAME_len[, NAME_pages])) and return
    `cache_len` as int64 and the page table (int64) or None. Raises ValueError naming the input
    and the expected shape. `check_values` also reads the lengths and pages in use (one device
    synchronisation): lengths in [0, capacity - Sq], pages in [0, num_pages)."""
    cache_k, cache_v, cache_len = tensors[:3]
    if paged:
        dims = (("num_pages", None), ("page_size", None))
    else:
        dims = (("B", B), ("capacity", None))
    _kv_check_tensor(f"{name}_k", cache_k, "float", dims + (("kv_heads", kv_heads),
                                                             ("head_dim", head_dim)), device)
    slots = tuple((label, cache_k.shape[i]) for i, (label, _) in enumerate(dims))
    _kv_check_tensor(f"{name}_v", cache_v, "float", slots + (("kv_heads", kv_heads),
                                                              ("value_dim", value_dim)), device)
    _kv_check_tensor(f"{name}_len", cache_len, "int", (("B", B),), device)
    pages = None
    capacity = cache_k.shape[1]
    if paged:
        pages = tensors[3]
        _kv_check_tensor(f"{name}_pages", pages, "int", (("B", B), ("max_pages", None)), device)
        capacity = pages.shape[1] * cache_k.shape[1]
        pages = pages.to(torch.int64)
    cache_len = cache_len.to(torch.int64)
    if check_values and B:
        _kv_check_values(name, cache_len, pages, Sq, capacity, cache_k.shape[0])
    return cache_len, pages


def _kv_check_tensor(what: str, t: object, kind: str, dims: tuple,
                     device: torch.device) -> None:
    """ValueError naming `what` unless `t` is a `kind` tensor of shape `dims` ((label, size or
    None), ...) on `device`."""
    want = "[" + ", ".join(label if size is None else f"{label}={size}"
                           for label, size in dims) + "]"
    if not isinstance(t, torch.Tensor):
        got = "nothing" if t is None else type(t).__name__
        raise ValueError(f"{what} must be a {kind}{want} tensor, got {got}")
    ok_type = t.is_floating_point() if kind == "float" else \
        not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
    if not ok_type:
        raise ValueError(f"{what} must be {kind}{want}, got dtype {t.dtype}")
    if t.dim() != len(dims) or any(size is not None and size != n
                                   for (_, size), n in zip(dims, t.shape, strict=False)):
        raise ValueError(f"{what} must have shape {want}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{what} is on {t.device}, but q is on {device}")


def _kv_check_values(name: str, cache_len: torch.Tensor, pages: torch.Tensor | None, Sq: int,
                     capacity: int, num_pages: int) -> None:
    """The lengths leave room for Sq new tokens; the pages a row uses exist."""
    low, high = torch.stack([cache_len.min(), cache_len.max()]).tolist()  # one sync
    if low < 0 or high + Sq > capacity:
        raise ValueError(f"{name}_len must lie in [0, capacity - Sq] = [0, {capacity - Sq}] "
                         f"(capacity {capacity}, Sq={Sq} new tokens), got values in "
                         f"[{low}, {high}]")
    if pages is None:
        return
    page_size = capacity // pages.shape[1]
    used = torch.arange(pages.shape[1], device=pages.device) < \
        _ceil_div_tensor(cache_len + Sq, page_size).view(-1, 1)
    bad = used & ((pages < 0) | (pages >= num_pages))
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}_pages [B, max_pages] must hold page numbers in [0, "
                         f"{num_pages}) for the pages in use; row {row} page {col} is "
                         f"{int(pages[row, col])}")


def _ceil_div_tensor(a: torch.Tensor, b: int) -> torch.Tensor:
    """ceil(a / b) elementwise, for int tensors."""
    return torch.div(a + b - 1, b, rounding_mode="floor")
