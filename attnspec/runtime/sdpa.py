"""PyTorch's scaled_dot_product_attention with a dense mask whose empty rows give 0, and one
call per token-group pattern.

Example:
    >>> q = torch.randn(1, 1, 3, 4)
    >>> out = _sdpa_masked(q, q, q, torch.tensor([[True, False, False]] * 2 + [[False] * 3]))
    >>> out[0, 0, 2].tolist()
    [0.0, 0.0, 0.0, 0.0]
"""

import math

import torch

from .errors import UnsupportedInputError

_sdpa = torch.nn.functional.scaled_dot_product_attention
# `auto` on CUDA prefers a dense-mask SDPA call to flex up to this many (query, key) pairs per
# head: there flex's fixed costs dominate (H100: 0.21 vs 0.27 ms at 1024², 0.08 vs 0.26 at 256²).
_SMALL_DENSE = 1 << 20


def _sdpa_refuse_lse(owner: str, lse_backends: tuple[str, ...]) -> None:
    """`return_lse=True` on SDPA: refused before any work (`auto` never asks it; an explicit
    backend never falls back behind the caller's back), naming the backends that return one.

    >>> _sdpa_refuse_lse("T", ("eager", "flex"))
    Traceback (most recent call last):
    ...
    attnspec.runtime.errors.UnsupportedInputError: T: backend 'sdpa' cannot return_lse=True: ...
    """
    raise UnsupportedInputError(
        f"{owner}: backend 'sdpa' cannot return_lse=True: scaled_dot_product_attention does not "
        f"return its log-sum-exp. Use backend {' or '.join(map(repr, lse_backends))}, or "
        "'auto' (it runs such calls on one of them)")


def _sdpa_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                 **options: object) -> torch.Tensor:
    """SDPA with a dense mask (bool, or float with -inf): rows with nothing to attend give
    exactly 0 with zero gradients on every kernel. Such rows reach the kernel unmasked (some
    kernels return NaN for a row without keys, and a NaN there poisons the backward even when
    the output is overwritten), then are set to 0."""
    attends = mask if mask.dtype == torch.bool else mask > -math.inf
    empty = ~attends.any(dim=-1, keepdim=True)
    if mask.dtype == torch.bool:
        mask = mask | empty
    else:
        mask = mask.masked_fill(empty, 0.0)
    return _sdpa(q, k, v, attn_mask=mask, **options).masked_fill(empty, 0.0)


def _runs(groups: dict[str, range], names: tuple[str, ...]) -> list[tuple[int, int]]:
    """The named groups' positions as contiguous (start, stop) runs, in order."""
    runs = []
    for start, stop in sorted((groups[n].start, groups[n].stop) for n in names):
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs


def _sdpa_patterns(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: dict[str, range],
                   patterns: tuple, **options: object) -> torch.Tensor:
    """One SDPA call per token-group pattern over contiguous slices, without a mask: every
    group is a query in exactly one pattern, so the pieces tile the queries."""
    pieces = []
    for queries, keys in patterns:
        key_runs = _runs(groups, keys)
        k_part = torch.cat([k[:, :, a:b] for a, b in key_runs], dim=2)
        v_part = torch.cat([v[:, :, a:b] for a, b in key_runs], dim=2)
        for a, b in _runs(groups, queries):
            if a == b:
                continue  # an empty query group
            if not k_part.shape[2]:  # empty key groups: nothing to attend, exactly 0
                piece = q[:, :, a:b] @ k_part[:, :1].transpose(-2, -1) @ v_part[:, :1]
            else:
                piece = _sdpa(q[:, :, a:b], k_part, v_part, **options)
            pieces.append((a, piece))
    return torch.cat([piece for _, piece in sorted(pieces, key=lambda p: p[0])], dim=2)
