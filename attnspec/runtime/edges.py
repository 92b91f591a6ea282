"""`edges` inputs (graphs): dense [Sq, Sk] tables the mask and score read (eager, SDPA, flex), or
an edge list sorted by query with its segment reductions (the edges backend).

Example:
    >>> t = _edge_tables("g", torch.tensor([[0, 1], [1, 0]]), None, None, 2, 2,
    ...                  torch.device("cpu"),
    ...                  types=1, max_distance=4, self_loops=False)
    >>> t.edge.tolist()
    [[False, True], [True, False]]
"""

import collections
import functools
import math
import os

import torch

from .checks import _check_tensor
from .core import _row_lse

_Edges = collections.namedtuple("_Edges", ["edge", "type", "distance"])


def _edge_inputs(name: str, edge_index: object, edge_type: object, edge_distance: object,
                 q_len: int, kv_len: int, device: torch.device, *, types: int,
                 max_distance: int, batch: int | None = None) -> tuple:
    """An `edges` input checked: (src, dst, type, distance, rows) as int64 vectors [E],
    distance clamped to [0, max_distance - 1]. Types and distances are optional (contract
    §4.4): 0 for every edge when not given.

    Two call forms. `edge_index` [2, E] is one list shared by every batch row: `rows` is None.
    `edge_index` [B, 2, E] (B = `batch` when given) is one list per batch row, padded with -1
    in both rows; `g_type` / `g_distance` are then [B, E]. Padding entries are dropped and
    `rows` says each kept edge's batch row. Raises `ValueError` naming the input for bad shapes
    and ranges.

    >>> index = torch.tensor([[[0, 1], [1, 0]], [[1, -1], [1, -1]]])  # row 1: one edge, a pad
    >>> src, dst, _, _, rows = _edge_inputs("g", index, None, None, 2, 2, torch.device("cpu"),
    ...                                     types=1, max_distance=4, batch=2)
    >>> src.tolist(), dst.tolist(), rows.tolist()
    ([0, 1, 1], [1, 0, 1], [0, 0, 1])
    """
    per_row = isinstance(edge_index, torch.Tensor) and edge_index.dim() == 3
    if per_row:
        edge_index = _check_tensor(name, edge_index, "int", ("B", "2", "E"), (batch, 2, None),
                                   device)
        labels, sizes = ("B", "E"), (edge_index.shape[0], edge_index.shape[2])
    else:
        edge_index = _check_tensor(name, edge_index, "int", ("2", "E"), (2, None), device)
        labels, sizes = ("E",), (edge_index.shape[1],)
    src, dst = edge_index.select(-2, 0), edge_index.select(-2, 1)  # [E], or [B, E] per row
    values = {}
    for field, given in (("type", edge_type), ("distance", edge_distance)):
        if given is None:
            values[field] = torch.zeros(sizes, dtype=torch.long, device=device)
            continue
        values[field] = _check_tensor(f"{name}_{field}", given, "int", labels, sizes, device)
    pad = (src == -1) & (dst == -1) if per_row else None
    if src.numel():
        _check_edge_ranges(name, src, dst, values["type"], pad, q_len, kv_len, types)
    distance = values["distance"].clamp(0, max_distance - 1)
    if not per_row:
        return src, dst, values["type"], distance, None
    keep = ~pad
    rows = torch.arange(src.shape[0], device=device).view(-1, 1).expand_as(src)
    return src[keep], dst[keep], values["type"][keep], distance[keep], rows[keep]


def _check_edge_ranges(name: str, src: torch.Tensor, dst: torch.Tensor, etype: torch.Tensor,
                       pad: torch.Tensor | None, q_len: int, kv_len: int, types: int) -> None:
    """Edge positions in [0, Sq) x [0, Sk) and types in [0, types), padding entries (`pad`,
    per-row form) aside; a pad must have -1 in both rows. All checks in one device-to-host
    sync (the only one an edges input costs); under torch.compile an assert in the graph."""
    bad_index = (src < 0) | (src >= q_len) | (dst < 0) | (dst >= kv_len)
    bad_type = (etype < 0) | (etype >= types)
    checks = [bad_index, bad_type]
    if pad is not None:
        # A lone -1 is neither an edge nor a pad: most likely a bug in the caller's padding.
        checks = [bad_index & ~pad, bad_type & ~pad, (src == -1) != (dst == -1)]
    outside = torch.stack([c.any() for c in checks])
    if torch.compiler.is_compiling():
        # Reading the flags on the host would break the graph on every call (the error then
        # names no input).
        torch._assert_async(~outside.any())
        return
    flags = outside.tolist()
    if pad is not None and flags[2]:
        raise ValueError(f"{name}: a padding entry of edge_index [B, 2, E] must be -1 in both "
                         "rows, got -1 in only one")
    if flags[0]:
        raise ValueError(
            f"{name}: edge index out of range, expected 0 <= row 0 < Sq = {q_len} and "
            f"0 <= row 1 < Sk = {kv_len}" + (" (or -1 in both: padding)" if pad is not None
                                             else "")
        )
    if flags[1]:
        raise ValueError(f"{name}_type: edge types must be in [0, {types}), got values outside")


def _edge_tables(name: str, edge_index: object, edge_type: object, edge_distance: object,
                 q_len: int, kv_len: int, device: torch.device, *, types: int,
                 max_distance: int, self_loops: bool, batch: int | None = None) -> _Edges:
    """Dense tables of an `edges` input: edge (bool), type and distance (int64, 0 where there
    is no edge; distance clamped to [0, max_distance - 1]). The last duplicate wins. [Sq, Sk]
    for a shared [2, E] list; [B, 1, Sq, Sk] for one list per batch row ([B, 2, E]): both
    broadcast against the [B, H, Sq, Sk] grids."""
    src, dst, etype, distance, rows = _edge_inputs(name, edge_index, edge_type, edge_distance,
                                                   q_len, kv_len, device, types=types,
                                                   max_distance=max_distance, batch=batch)
    cells, shape = q_len * kv_len, (q_len, kv_len)
    cell = src * kv_len + dst
    if rows is not None:  # batch row b owns cells b * Sq * Sk onwards
        cell = cell + rows * cells
        cells, shape = cells * edge_index.shape[0], (edge_index.shape[0], 1, q_len, kv_len)
    # last[cell] = position of the last edge of that cell in the list, -1 where there is none
    last = torch.full((cells,), -1, dtype=torch.long, device=device)
    order = torch.arange(src.shape[0], device=device)
    last = last.scatter_reduce(0, cell, order, reduce="amax")
    zero = torch.zeros(1, dtype=torch.long, device=device)
    edge = (last >= 0).view(shape)
    etype = torch.cat((zero, etype))[last + 1].view(shape)
    edist = torch.cat((zero, distance))[last + 1].view(shape)
    if self_loops:
        diagonal = torch.arange(min(q_len, kv_len), device=device)
        edge = edge.clone()
        edge[..., diagonal, diagonal] = True
    return _Edges(edge, etype, edist)


# `batch`: each edge's batch row [E] for one list per batch row, None for a shared list.
_EdgeList = collections.namedtuple("_EdgeList", ["edge", "type", "distance", "src", "dst",
                                                 "batch"])


def _edge_list(name: str, edge_index: object, edge_type: object, edge_distance: object,
               q_len: int, kv_len: int, device: torch.device, *, types: int,
               max_distance: int, self_loops: bool, batch: int | None = None) -> _EdgeList:
    """An `edges` input as per-edge vectors [E'] sorted by (batch row, query, key): `src`,
    `dst`, `type`, `distance` (clamped to [0, max_distance - 1]), `edge` (all True, so
    `NAME.edge` reads as a mask) and `batch` (each edge's batch row for the per-row form
    [B, 2, E], else None). Duplicates resolve as the language says (the last wins, within a
    batch row); with `self_loops` the diagonal of every row joins with type and distance 0
    unless an edge gives its own. O(E) memory."""
    src, dst, etype, distance, rows = _edge_inputs(name, edge_index, edge_type, edge_distance,
                                                   q_len, kv_len, device, types=types,
                                                   max_distance=max_distance, batch=batch)
    if self_loops:  # first, so that a listed (i, i) edge wins with its own type and distance
        diagonal = torch.arange(min(q_len, kv_len), device=device)
        if rows is not None:  # (i, i) in every batch row
            n_rows = edge_index.shape[0]
            rows = torch.cat((torch.arange(n_rows, device=device).repeat_interleave(
                diagonal.shape[0]), rows))
            diagonal = diagonal.repeat(n_rows)
        zeros = torch.zeros_like(diagonal)
        src, dst = torch.cat((diagonal, src)), torch.cat((diagonal, dst))
        etype, distance = torch.cat((zeros, etype)), torch.cat((zeros, distance))
    key = src * kv_len + dst
    if rows is not None:
        key = key + rows * (q_len * kv_len)
    order = torch.argsort(key, stable=True)  # equal pairs keep their given order
    ordered = key[order]
    last = torch.ones_like(ordered, dtype=torch.bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    keep = order[last]
    return _EdgeList(torch.ones_like(keep, dtype=torch.bool), etype[keep], distance[keep],
                     src[keep], dst[keep], None if rows is None else rows[keep])


def _edge_batch_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, edges: _EdgeList,
                     rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One edge list per batch row as one graph over every batch row's queries and keys:
    q [B, H, Sq, D] -> [1, H, B·Sq, D] (k, v likewise over B·Sk), each edge's query row
    `batch · Sq + rows` and key row `batch · Sk + dst`, and `b` = each edge's batch row as
    [1, 1, E] for the pipeline (masks that read `b` see the edge's own row).
    Returns (q, k, v, rows, keys, b); `_edge_batch_back` undoes the flattening of the output.

    >>> q = torch.zeros(2, 1, 3, 4)
    >>> e = _EdgeList(*(torch.tensor([1]),) * 5, torch.tensor([1]))
    >>> [t.shape[2] if t.dim() == 4 else t.tolist() for t in _edge_batch_rows(q, q, q, e, e.src)]
    [6, 6, 6, [4], [4], [[[1]]]]
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    q, k, v = (x.transpose(0, 1).flatten(1, 2).unsqueeze(0) for x in (q, k, v))
    return (q, k, v, edges.batch * q_len + rows, edges.batch * kv_len + edges.dst,
            edges.batch.view(1, 1, -1))


def _edge_batch_back(x: torch.Tensor, batch: int) -> torch.Tensor:
    """A flattened result [1, H, B·S, *] (out, or lse [1, H, B·S]) back to [B, H, S, *].

    >>> _edge_batch_back(torch.arange(6).view(1, 1, 6), 2).tolist()
    [[[0, 1, 2]], [[3, 4, 5]]]
    """
    return x[0].unflatten(1, (batch, -1)).transpose(0, 1)


def _segment_softmax(score: torch.Tensor, index: torch.Tensor, n: int,
                     sink: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax of `score` [B, H, E] over the entries that share a row `index` [E] (< n); a
    row whose entries are all -inf (or that has none) gives 0. With `sink` [H], each row's
    denominator also holds exp(sink[h])."""
    weights, total, _ = _segment_terms(score, index, n, sink)
    return weights / total.masked_fill(total == 0, 1.0).index_select(-1, index)


def _segment_softmax_lse(score: torch.Tensor, index: torch.Tensor, n: int,
                         sink: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`_segment_softmax` and each row's log-sum-exp [B, H, n], from the shift and the sum the
    softmax has anyway (`_row_lse`: -inf for a row with nothing to attend and no sink)."""
    weights, total, peak = _segment_terms(score, index, n, sink)
    probs = weights / total.masked_fill(total == 0, 1.0).index_select(-1, index)
    return probs, _row_lse(peak, total)


def _segment_terms(score: torch.Tensor, index: torch.Tensor, n: int, sink: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exp(score - peak of its row) [B, H, E], each row's denominator [B, H, n], the peaks).

    Rows are read back with `index_select`, not `t[..., index]`: the backward of advanced
    indexing is a sorting `index_put_`, ~10x slower on CUDA at a million edges.
    """
    shape = (*score.shape[:-1], n)
    rows = index.expand(score.shape)
    peak = torch.full(shape, -math.inf, dtype=score.dtype, device=score.device)
    peak = peak.scatter_reduce(-1, rows, score.detach(), reduce="amax")  # shift only: no grad
    if sink is not None:
        sink = sink.to(score.dtype).view(1, -1, 1)
        peak = torch.maximum(peak, sink.detach())
    peak = peak.masked_fill(peak == -math.inf, 0.0)
    weights = torch.exp(score - peak.index_select(-1, index))
    total = torch.zeros(shape, dtype=score.dtype, device=score.device).index_add(-1, index,
                                                                                weights)
    if sink is not None:
        total = total + torch.exp(sink - peak)
    return weights, total, peak


# Gathered rows [B, H, chunk, D] held at once by the per-edge products below: 2**26 elements
# (256 MiB in float32), whatever the number of edges.
_EDGE_CHUNK_ELEMENTS = 1 << 26


def _edge_chunks(rows: int, n_edges: int) -> list[slice]:
    """Slices of the edge axis such that `rows` gathered values per edge fit the budget. Under
    torch.compile one slice: Inductor fuses each gather into the product that reads it, so the
    [B, H, E, D] rows are never stored."""
    if torch.compiler.is_compiling():
        return [slice(0, n_edges)]
    step = max(1, _EDGE_CHUNK_ELEMENTS // max(rows, 1))
    return [slice(i, min(i + step, n_edges)) for i in range(0, n_edges, step)] or [slice(0, 0)]


# The fused kernels run on CUDA: checked on an H100 (benchmarks/gpu_edge_kernels.py, 2026-12-07:
# 84 kernel checks at head dims 16-256, 77/300 tokens, Sq != Sk, bf16/fp16/fp32, and the graph
# specs through verify, all passing) and faster than the torch formulation at every size
# measured (the suite's typed graph: forward 125 -> 20 ms). False gives the torch formulation
# (benchmarks compare the two).
_EDGE_FUSED_ON_CUDA = True


tl = None  # triton.language, once `_edge_kernels` has imported triton (Triton resolves it)


def _edge_interpret() -> bool:
    """Whether Triton's interpreter is on (TRITON_INTERPRET=1: kernels run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _edge_triton(t: torch.Tensor) -> bool:
    """Whether the per-edge products of `t` run as the fused Triton kernels below: on CUDA when
    triton imports (and `_EDGE_FUSED_ON_CUDA`), outside torch.compile (there Inductor fuses the
    torch formulation itself), and on the CPU under Triton's interpreter (how the tests run
    them). float64 keeps the torch formulation: the kernels accumulate in float32."""
    if t.dtype == torch.float64 or torch.compiler.is_compiling():
        return False
    if not (_edge_interpret() if not t.is_cuda else _EDGE_FUSED_ON_CUDA):
        return False
    return _edge_kernels(_edge_interpret()) is not None


@functools.cache
def _edge_kernels(interpret: bool) -> dict | None:
    """The fused edge kernels, defined lazily (None without triton), once per interpreter mode
    (Triton reads TRITON_INTERPRET when a kernel is defined): `sddmm` gives per-edge dot
    products without storing the gathered rows; `spmm` sums weighted rows per segment of a
    CSR structure, one program per (row, batch*head, column block) and no atomics, so results
    are deterministic. Both accumulate in float32."""
    try:
        import triton
    except ImportError:
        return None
    # The kernels read triton.language as the module global `tl`: Triton's compiler resolves
    # names (annotations included) in the kernel's globals, and its interpreter recognises
    # block sizes by the annotation's text, `tl.constexpr`.
    global tl
    tl = triton.language

    @triton.jit
    def sddmm(a_ptr, b_ptr, src_ptr, dst_ptr, out_ptr, E, H, D, sab, sah, sas, sad, sbb, sbh,
              sbs, sbd, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
        z = tl.program_id(1).to(tl.int64)
        e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
        live = e < E
        rows_a = tl.load(src_ptr + e, mask=live, other=0)
        rows_b = tl.load(dst_ptr + e, mask=live, other=0)
        base_a = a_ptr + (z // H) * sab + (z % H) * sah + rows_a * sas
        base_b = b_ptr + (z // H) * sbb + (z % H) * sbh + rows_b * sbs
        acc = tl.zeros([BLOCK_E], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)
            m = live[:, None] & (d < D)[None, :]
            x = tl.load(base_a[:, None] + d[None, :] * sad, mask=m, other=0.0)
            y = tl.load(base_b[:, None] + d[None, :] * sbd, mask=m, other=0.0)
            acc += tl.sum(x.to(tl.float32) * y.to(tl.float32), axis=1)
        tl.store(out_ptr + z * E + e, acc, mask=live)

    @triton.jit
    def spmm(w_ptr, v_ptr, ptr_ptr, perm_ptr, col_ptr, out_ptr, E, H, D, svb, svh, svs, svd,
             BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
        i = tl.program_id(0).to(tl.int64)
        z = tl.program_id(1).to(tl.int64)
        d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        start = tl.load(ptr_ptr + i)
        end = tl.load(ptr_ptr + i + 1)
        base_v = v_ptr + (z // H) * svb + (z % H) * svh
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for e0 in range(start, end, BLOCK_E):
            e = e0 + tl.arange(0, BLOCK_E)
            live = e < end
            edge = tl.load(perm_ptr + e, mask=live, other=0)
            row = tl.load(col_ptr + edge, mask=live, other=0)
            w = tl.load(w_ptr + z * E + edge, mask=live, other=0.0).to(tl.float32)
            x = tl.load(base_v + row[:, None] * svs + d[None, :] * svd,
                        mask=live[:, None] & (d < D)[None, :], other=0.0)
            acc += tl.sum(w[:, None] * x.to(tl.float32), axis=0)
        tl.store(out_ptr + (z * tl.num_programs(0) + i) * D + d, acc, mask=d < D)

    return {"sddmm": sddmm, "spmm": spmm}


def _edge_block(n: int, low: int = 16, high: int = 128) -> int:
    """A power of two for a kernel's block over `n` values, within [low, high]."""
    return max(low, min(high, 1 << max(n - 1, 0).bit_length()))


def _sddmm(a: torch.Tensor, b: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """float32 [B, H, E]: sum_d a[b, h, src[e], d] * b[b, h, dst[e], d], fused (no [B, H, E, D])."""
    B, H, _, D = a.shape
    n_edges = src.shape[0]
    out = torch.empty((B, H, n_edges), dtype=torch.float32, device=a.device)
    if n_edges and B * H:
        block_e = 64
        grid = (_edge_cdiv(n_edges, block_e), B * H)
        kernel = _edge_kernels(_edge_interpret())["sddmm"]
        kernel[grid](a, b, src, dst, out, n_edges, H, D, *a.stride(), *b.stride(),
                     BLOCK_E=block_e, BLOCK_D=_edge_block(D))
    return out


def _spmm(w: torch.Tensor, v: torch.Tensor, segments: tuple, col: torch.Tensor,
          n: int) -> torch.Tensor:
    """float32 [B, H, n, D]: row i sums w[b, h, e] * v[b, h, col[e], :] over its edges, given as
    `segments` = (ptr [n + 1], perm [E]) from `_csr` (row i owns edges perm[ptr[i]:ptr[i+1]])."""
    B, H, _, D = v.shape
    ptr, perm = segments
    out = torch.zeros((B, H, n, D), dtype=torch.float32, device=v.device)
    if n and B * H and col.shape[0]:
        block_d = _edge_block(D, high=64)
        grid = (n, B * H, _edge_cdiv(D, block_d))
        kernel = _edge_kernels(_edge_interpret())["spmm"]
        kernel[grid](w, v, ptr, perm, col, out, col.shape[0], H, D, *v.stride(),
                     BLOCK_E=16, BLOCK_D=block_d)
    return out


def _edge_cdiv(a: int, b: int) -> int:
    """Blocks of `b` that cover `a` (ceil division)."""
    return -(-a // b)


def _csr(index: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments of the edges by `index` (< n): (ptr [n + 1], perm [E]); segment i holds the
    edges perm[ptr[i]:ptr[i+1]], in their given order (a stable sort; none for sorted input).

    >>> _csr(torch.tensor([2, 0, 2]), 3)
    (tensor([0, 1, 1, 3]), tensor([1, 0, 2]))
    """
    perm = torch.argsort(index, stable=True)
    ptr = torch.searchsorted(index[perm], torch.arange(n + 1, device=index.device))
    return ptr, perm


class _EdgeScores(torch.autograd.Function):
    """Per-edge q.k: q [B, H, Sq, D] and k [B, H, Sk, D] -> [B, H, E] in `dtype`, where edge e
    pairs query `src[e]` with key `dst[e]`. Only the inputs are kept for the backward, and the
    gathered rows exist one chunk at a time (or never, in the fused kernels on CUDA), so memory
    is O(B*H*E) for any head dim; gradients scatter back with `index_add_` (or per-row sums)."""

    @staticmethod
    def forward(ctx, q, k, src, dst, dtype):
        ctx.save_for_backward(q, k, src, dst)
        ctx.dtype = dtype
        if _edge_triton(q):
            return _sddmm(q, k, src, dst).to(dtype)
        out = torch.empty((*q.shape[:2], src.shape[0]), dtype=dtype, device=q.device)
        for part in _edge_chunks(q.shape[0] * q.shape[1] * q.shape[3], src.shape[0]):
            out[..., part] = (q.index_select(2, src[part]).to(dtype)
                              * k.index_select(2, dst[part]).to(dtype)).sum(-1)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, k, src, dst = ctx.saved_tensors
        if _edge_triton(q):
            grad = grad.contiguous()
            dq = _spmm(grad, k, _csr(src, q.shape[2]), dst, q.shape[2]) \
                if ctx.needs_input_grad[0] else None
            dk = _spmm(grad, q, _csr(dst, k.shape[2]), src, k.shape[2]) \
                if ctx.needs_input_grad[1] else None
            return (None if dq is None else dq.to(q.dtype),
                    None if dk is None else dk.to(k.dtype), None, None, None)
        dq = torch.zeros(q.shape, dtype=ctx.dtype, device=q.device)
        dk = torch.zeros(k.shape, dtype=ctx.dtype, device=k.device)
        for part in _edge_chunks(q.shape[0] * q.shape[1] * q.shape[3], src.shape[0]):
            g = grad[..., part].unsqueeze(-1).to(ctx.dtype)
            if ctx.needs_input_grad[0]:
                dq.index_add_(2, src[part], g * k.index_select(2, dst[part]).to(ctx.dtype))
            if ctx.needs_input_grad[1]:
                dk.index_add_(2, dst[part], g * q.index_select(2, src[part]).to(ctx.dtype))
        return dq.to(q.dtype), dk.to(k.dtype), None, None, None


class _EdgeAggregate(torch.autograd.Function):
    """The output rows: out[b, h, i] = sum over edges e with src[e] = i of
    p[b, h, e] * v[b, h, dst[e]], for p [B, H, E] and v [B, H, Sk, Dv] -> [B, H, n, Dv] in p's
    dtype. Like `_EdgeScores`, it keeps only its inputs and gathers one chunk at a time (or
    runs the fused kernels)."""

    @staticmethod
    def forward(ctx, p, v, src, dst, n):
        ctx.save_for_backward(p, v, src, dst)
        if _edge_triton(p):
            return _spmm(p.contiguous(), v, _csr(src, n), dst, n).to(p.dtype)
        out = torch.zeros((*p.shape[:2], n, v.shape[-1]), dtype=p.dtype, device=p.device)
        for part in _edge_chunks(p.shape[0] * p.shape[1] * v.shape[-1], src.shape[0]):
            out.index_add_(2, src[part], p[..., part].unsqueeze(-1)
                           * v.index_select(2, dst[part]).to(p.dtype))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, v, src, dst = ctx.saved_tensors
        if _edge_triton(p):
            dp = _sddmm(grad, v, src, dst).to(p.dtype)
            dv = _spmm(p.contiguous(), grad, _csr(dst, v.shape[2]), src, v.shape[2]) \
                if ctx.needs_input_grad[1] else None
            return dp, None if dv is None else dv.to(v.dtype), None, None, None
        dp = torch.empty_like(p)
        dv = torch.zeros(v.shape, dtype=p.dtype, device=v.device)
        grad = grad.to(p.dtype)
        for part in _edge_chunks(p.shape[0] * p.shape[1] * v.shape[-1], src.shape[0]):
            rows = grad.index_select(2, src[part])
            dp[..., part] = (rows * v.index_select(2, dst[part]).to(p.dtype)).sum(-1)
            if ctx.needs_input_grad[1]:
                dv.index_add_(2, dst[part], p[..., part].unsqueeze(-1) * rows)
        return dp, dv.to(v.dtype), None, None, None


def _edge_scores(q: torch.Tensor, k: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    """Per-edge q.k in `dtype` ([B, H, E]; see `_EdgeScores`).

    >>> q = torch.arange(4.0).view(1, 1, 2, 2)
    >>> _edge_scores(q, q, torch.tensor([0, 1]), torch.tensor([1, 1]), torch.float32).tolist()
    [[[3.0, 13.0]]]
    """
    return _EdgeScores.apply(q, k, src, dst, dtype)


def _edge_aggregate(p: torch.Tensor, v: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                    n: int) -> torch.Tensor:
    """Rows of `p`-weighted values summed per query ([B, H, n, Dv]; see `_EdgeAggregate`).

    >>> v = torch.arange(4.0).view(1, 1, 2, 2)
    >>> p = torch.tensor([[[0.5, 0.5, 1.0]]])
    >>> _edge_aggregate(p, v, torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 2).tolist()
    [[[[1.0, 2.0], [2.0, 3.0]]]]
    """
    return _EdgeAggregate.apply(p, v, src, dst, n)
