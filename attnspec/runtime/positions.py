"""Position encodings and norms: ALiBi slopes, T5 relative buckets, RoPE, the sinusoidal
table, RMSNorm.

Example:
    >>> _alibi_slopes(4)
    [0.25, 0.0625, 0.015625, 0.00390625]
    >>> _t5_bucket(torch.tensor([-9, -3, 0, 3, 9]), 8, 16, True).tolist()
    [3, 2, 0, 6, 7]
"""

import math

import torch


def _alibi_slopes(heads: int) -> list[float]:
    """The ALiBi paper's slopes: 2^(-8(i+1)/H) for H a power of two; otherwise those of the
    nearest lower power of two n, then every other slope of 2n (Press et al., `_get_slopes`)."""

    def power_of_two(n):
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    n = 2 ** math.floor(math.log2(heads))
    if n == heads:
        return power_of_two(heads)
    return power_of_two(n) + power_of_two(2 * n)[0::2][: heads - n]


_ALIBI_TENSORS = {}


def _alibi_tensor(heads: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """`_alibi_slopes(heads)` as a tensor, made once per (heads, dtype, device): a host-to-device
    copy per call would make the host wait for the GPU. One made under inference mode is kept
    apart: an inference tensor cannot be saved for a backward outside it. While torch.compile
    traces, the tensor is a constant of the graph (the cache key would break the graph)."""
    if torch.compiler.is_compiling():
        return torch.tensor(_alibi_slopes(heads), dtype=dtype, device=device)
    key = (heads, dtype, str(device), torch.is_inference_mode_enabled())
    if key not in _ALIBI_TENSORS:
        _ALIBI_TENSORS[key] = torch.tensor(_alibi_slopes(heads), dtype=dtype, device=device)
    return _ALIBI_TENSORS[key]


def _alibi_slope(head: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """The ALiBi slope of each head index in `head` (the spec's `alibi_slope(h)`)."""
    return _alibi_tensor(heads, dtype, head.device)[head]


def _t5_bucket(rel: torch.Tensor | int, buckets: int, max_distance: int,
               bidirectional: bool) -> torch.Tensor:
    """Hugging Face T5's `_relative_position_bucket`, its log-spaced buckets found by integer
    comparisons with boundaries computed on the host: the same buckets on every device (a device
    `log` one ulp low would move exact boundaries such as 16, 32, 64 into the bucket below)."""
    rel = torch.as_tensor(rel)
    bucket = torch.zeros_like(rel)
    if bidirectional:
        buckets //= 2
        bucket = bucket + (rel > 0).long() * buckets
        rel = torch.abs(rel)
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = buckets // 2
    large = torch.full_like(rel, max_exact)
    for first in _t5_boundaries(buckets, max_exact, max_distance):
        large = large + (rel >= first).long()
    return bucket + torch.where(rel < max_exact, rel, large)


def _t5_boundaries(buckets: int, max_exact: int, max_distance: int) -> list[int]:
    """The first relative position of each log bucket `max_exact + 1 .. buckets - 1`: HF's
    `max_exact + int(log(rel / max_exact) / log(max_distance / max_exact) * (buckets -
    max_exact))` in float64 (Python's `math.log`), which never decreases in `rel` and reaches
    `buckets` at `max_distance`, so a binary search finds each first position."""
    def bucket_of(r):
        ratio = math.log(r / max_exact) / math.log(max_distance / max_exact)
        return max_exact + int(ratio * (buckets - max_exact))

    firsts = []
    for target in range(max_exact + 1, buckets):
        lo, hi = max_exact, max_distance
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if bucket_of(mid) >= target else (mid + 1, hi)
        firsts.append(lo)
    return firsts


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension with a learned gain (qk_norm = rms)."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def _rope_angles(positions: torch.Tensor, base: float, dims: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """Angles [batch or 1, 1, S, dims // 2]: position * base^(-2i/dims)."""
    inv_freq = base ** (-torch.arange(0, dims, 2, dtype=dtype, device=positions.device) / dims)
    positions = positions.to(dtype)
    if positions.dim() == 1:
        positions = positions[None]
    return positions[:, None, :, None] * inv_freq


def _rope(x: torch.Tensor, angles: torch.Tensor, dims: int, interleaved: bool) -> torch.Tensor:
    """Rotate the first `dims` channels of x [B, H, S, D]; the rest pass unchanged."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    if interleaved:
        x1, x2 = x[..., 0:dims:2], x[..., 1:dims:2]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = x[..., : dims // 2], x[..., dims // 2 : dims]
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, x[..., dims:]), dim=-1)


def _sinusoidal(length: int, dim: int, dtype: torch.dtype,
                device: torch.device | str) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/dim)), PE[pos, 2i+1] = cos(pos / 10000^(2i/dim))."""
    pos = torch.arange(length, dtype=dtype, device=device)[:, None]
    angle = pos / 10000.0 ** (torch.arange(0, dim, 2, dtype=dtype, device=device) / dim)
    pe = torch.zeros(length, dim, dtype=dtype, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return pe
