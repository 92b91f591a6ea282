"""`edges` inputs (graphs): an edge list becomes dense [Sq, Sk] tables the mask and score read.

Example:
    >>> t = _edge_tables("g", torch.tensor([[0, 1], [1, 0]]), None, None, 2, 2,
    ...                  torch.device("cpu"),
    ...                  types=1, max_distance=4, self_loops=False)
    >>> t.edge.tolist()
    [[False, True], [True, False]]
"""

import collections

import torch

from .checks import _check_tensor

_Edges = collections.namedtuple("_Edges", ["edge", "type", "distance"])


def _edge_tables(name: str, edge_index: object, edge_type: object, edge_distance: object,
                 q_len: int, kv_len: int, device: torch.device, *, types: int,
                 max_distance: int, self_loops: bool) -> _Edges:
    """Dense [Sq, Sk] tables of an `edges` input: edge (bool), type and distance (int64, 0 where
    there is no edge; distance clamped to [0, max_distance - 1]). The last duplicate wins.
    Types and distances are optional (contract §4.4): 0 for every edge when not given."""
    edge_index = _check_tensor(name, edge_index, "int", ("2", "E"), (2, None), device)
    n_edges = edge_index.shape[1]
    src, dst = edge_index[0], edge_index[1]
    values = {}
    for field, given in (("type", edge_type), ("distance", edge_distance)):
        label = f"{name}_{field}"
        if given is None:
            values[field] = torch.zeros(n_edges, dtype=torch.long, device=device)
            continue
        values[field] = _check_tensor(label, given, "int", ("E",), (n_edges,), device)
    if n_edges:
        # Both range checks in one device-to-host sync (the only one an edges input costs).
        outside = torch.stack([((src < 0) | (src >= q_len) | (dst < 0) | (dst >= kv_len)).any(),
                               ((values["type"] < 0) | (values["type"] >= types)).any()])
        bad_index, bad_type = outside.tolist()
        if bad_index:
            raise ValueError(
                f"{name}: edge index out of range, expected 0 <= row 0 < Sq = {q_len} and "
                f"0 <= row 1 < Sk = {kv_len}"
            )
        if bad_type:
            raise ValueError(f"{name}_type: edge types must be in [0, {types}), got values "
                             "outside")
    distance = values["distance"].clamp(0, max_distance - 1)
    # last[i * Sk + j] = position of the last edge (i, j) in edge_index, -1 where there is none
    last = torch.full((q_len * kv_len,), -1, dtype=torch.long, device=device)
    order = torch.arange(n_edges, device=device)
    last = last.scatter_reduce(0, src * kv_len + dst, order, reduce="amax")
    zero = torch.zeros(1, dtype=torch.long, device=device)
    edge = (last >= 0).view(q_len, kv_len)
    etype = torch.cat((zero, values["type"]))[last + 1].view(q_len, kv_len)
    edist = torch.cat((zero, distance))[last + 1].view(q_len, kv_len)
    if self_loops:
        diagonal = torch.arange(min(q_len, kv_len), device=device)
        edge = edge.clone()
        edge[diagonal, diagonal] = True
    return _Edges(edge, etype, edist)
