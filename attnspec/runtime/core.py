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
    e, denom, _ = _softmax_terms(score, sink)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


def _softmax_lse(score: torch.Tensor,
                 sink: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`_softmax_rows` and each row's log-sum-exp [..., Sq]: the natural log of the softmax
    denominator (the sink's exp(sink[h]) included), -inf for a row with nothing to attend
    (and no sink). `probs = exp(score - lse)`, so partial attentions merge by their lse.

    >>> probs, lse = _softmax_lse(torch.tensor([[0.0, 0.0], [-math.inf, -math.inf]]))
    >>> [round(x, 4) for x in lse.tolist()]
    [0.6931, -inf]
    """
    e, denom, m = _softmax_terms(score, sink)
    probs = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    return probs, _row_lse(m, denom).squeeze(-1)


def _softmax_terms(score: torch.Tensor, sink: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exp(score - m), each row's denominator, m) for a per-row shift m (detached: nothing
    depends on it); m = 0 for rows with nothing to attend, so they give e = 0, denom = 0."""
    if score.shape[-1]:
        m = score.amax(dim=-1, keepdim=True)
    else:  # no keys at all (kv_len 0): amax has nothing to reduce
        m = score.new_full((*score.shape[:-1], 1), -math.inf)
    if sink is not None:
        sink = sink.view(1, -1, 1, 1).to(score.dtype)
        m = torch.maximum(m, sink)
    # Rows with nothing to attend use m = 0. Any m gives the same result: no gradient through m.
    m = torch.where(m == -math.inf, torch.zeros_like(m), m).detach()
    e = torch.exp(score - m)
    denom = e.sum(dim=-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink - m)
    return e, denom, m


def _row_lse(m: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """log(denom) + m, and -inf where denom is 0 (a row with nothing to attend). The log reads 1
    there, so gradients stay finite (0) instead of 0 * inf = NaN."""
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(denom > 0, m + torch.log(safe), torch.full_like(denom, -math.inf))
