"""The dense reference computation every backend shares: the compute dtype, index grids and
a softmax whose fully masked rows are 0.

Example:
    >>> _softmax_rows(torch.tensor([[0.0, -math.inf], [-math.inf, -math.inf]])).tolist()
    [[1.0, 0.0], [0.0, 0.0]]
"""

import math

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Scores are computed in float32 for half-precision inputs, else in the input dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _index_grids(B: int, H: int, Sq: int, Sk: int, device: torch.device | str,
                 q_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Broadcastable int64 index tensors b [B,1,1,1], h [1,H,1,1], q [1,1,Sq,1], k [1,1,1,Sk].
    Under context parallelism q is this rank's rows' global positions `q_pos` instead."""
    rows = torch.arange(Sq, device=device) if q_pos is None else q_pos
    return (torch.arange(B, device=device).view(B, 1, 1, 1),
            torch.arange(H, device=device).view(1, H, 1, 1),
            rows.view(1, 1, -1, 1),
            torch.arange(Sk, device=device).view(1, 1, 1, Sk))


def _at_rows(x: torch.Tensor, rows: torch.Tensor | None, dim: int = 0) -> torch.Tensor:
    """x's entries at the positions `rows` along `dim`; x itself when `rows` is None (no
    context parallelism: the rows are all positions, in order)."""
    return x if rows is None else x.index_select(dim, rows)


def _softmax_rows(score: torch.Tensor, sink: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over keys (the last dim). A row with no attendable key gives exactly 0, never NaN;
    a sink logit per head, if given, joins every row's denominator with value 0."""
    if score.shape[-1] == 0:  # no keys at all: every row attends nothing
        return score
    m = score.amax(dim=-1, keepdim=True)
    if sink is not None:
        sink = sink.view(1, -1, 1, 1).to(score.dtype)
        m = torch.maximum(m, sink)
    # Rows with nothing to attend use m = 0. Any m gives the same result: no gradient through m.
    m = torch.where(m == -math.inf, torch.zeros_like(m), m).detach()
    e = torch.exp(score - m)
    denom = e.sum(dim=-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink - m)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))
