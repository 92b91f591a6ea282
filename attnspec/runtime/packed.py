"""The packed input form of document specs (`same(doc)`): tokens `[total, ...]` plus
`cu_seqlens`, as flash-attn's varlen functions take them.

The packed call becomes an ordinary call with batch 1 and document ids derived on the device
(`searchsorted`), so every backend runs it; the flash backend reads `cu_seqlens` and the longest
length straight from `_PACKED_RUNS` instead of deriving them from the ids (which would cost
device-to-host syncs). That registry holds only ids tensors created here, which nothing else
holds a reference to: their contents cannot change, so a hit needs no check.

Example:
    >>> ids = _packed_documents(torch.tensor([0, 2, 2, 5]), 3, 5, torch.device("cpu"))
    >>> ids.tolist()
    [[0, 0, 2, 2, 2]]
    >>> cu, longest = _packed_runs(ids)
    >>> cu.tolist(), cu.dtype, longest
    ([0, 2, 2, 5], torch.int32, 3)
"""

import torch

# id(ids) -> (ids, int32 cu_seqlens, longest length), newest last: see the module docstring.
# Holding ids keeps its id from being reused while the entry lives.
_PACKED_RUNS = {}
_PACKED_KEPT = 16
_CU_SEQLENS_DTYPES = (torch.int32, torch.int64)


def _packed_documents(cu_seqlens: object, max_seqlen: object, total: int,
                      device: torch.device) -> torch.Tensor:
    """[1, total] int64 document ids of a packed call (document i holds tokens
    cu_seqlens[i]:cu_seqlens[i + 1]), its cu_seqlens and longest length remembered for flash.
    `cu_seqlens` is validated: on the host when `max_seqlen` is None (one sync, which finds
    the longest length too) or the tensors are on the CPU; else on the device, asynchronously."""
    cu = _check_cu_seqlens(cu_seqlens, device)
    longest = _check_max_seqlen(cu, max_seqlen, total)
    positions = torch.arange(total, dtype=cu.dtype, device=device)
    ids = (torch.searchsorted(cu, positions, right=True) - 1).view(1, total)
    _PACKED_RUNS[id(ids)] = (ids, cu.to(torch.int32), longest)
    while len(_PACKED_RUNS) > _PACKED_KEPT:
        del _PACKED_RUNS[next(iter(_PACKED_RUNS))]  # the oldest: its call has returned
    return ids


def _packed_runs(ids: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(int32 cu_seqlens, longest length) of ids made by `_packed_documents`, else None."""
    found = _PACKED_RUNS.get(id(ids))
    if found is None or found[0] is not ids:
        return None
    return found[1], found[2]


def _check_cu_seqlens(cu_seqlens: object, device: torch.device) -> torch.Tensor:
    """What can be checked without reading the values: a 1-D int32/int64 tensor on `device`."""
    expected = f"a 1-D int32 or int64 tensor [documents + 1] on {device}"
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens: expected {expected}, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected {expected}, got shape {list(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in _CU_SEQLENS_DTYPES or cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens: expected {expected}, got {cu_seqlens.dtype} on "
                         f"{cu_seqlens.device}")
    return cu_seqlens


def _check_max_seqlen(cu: torch.Tensor, max_seqlen: object, total: int) -> int:
    """The longest document: `max_seqlen` when given (then, on CUDA, `cu_seqlens` is checked on
    the device: a bad one stops the next kernel with a device-side assert), else read from
    `cu_seqlens` checked on the host."""
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or
                                   not isinstance(max_seqlen, int) or max_seqlen < 1):
        raise ValueError(f"max_seqlen: expected a positive int (the longest document), got "
                         f"{max_seqlen!r}")
    if max_seqlen is not None and cu.device.type != "cpu":
        lengths = cu[1:] - cu[:-1]
        ok = (cu[0] == 0) & (cu[-1] == total) & (lengths >= 0).all() & \
            (lengths <= max_seqlen).all()
        torch._assert_async(ok, "cu_seqlens: must start at 0, never decrease, end at total "
                                "and hold no document longer than max_seqlen")
        return max_seqlen
    values = cu.tolist()
    lengths = [b - a for a, b in zip(values, values[1:])]
    if values[0] != 0 or values[-1] != total or min(lengths) < 0:
        raise ValueError(f"cu_seqlens: expected offsets from 0 to total = {total}, never "
                         f"decreasing, got {_short(values)}")
    longest = max(lengths)
    if max_seqlen is not None and longest > max_seqlen:
        raise ValueError(f"max_seqlen: {max_seqlen}, but cu_seqlens holds a document of "
                         f"{longest} tokens")
    return longest if max_seqlen is None else max_seqlen


def _short(values: list[int]) -> str:
    """The first offsets of a long cu_seqlens, for an error message."""
    return str(values) if len(values) <= 8 else f"[{', '.join(map(str, values[:8]))}, ...]"
