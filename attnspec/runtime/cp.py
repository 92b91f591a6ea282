"""Context parallelism: one sequence sharded over the ranks of a process group.

A plan (`cp_plan`) says which global positions each rank holds. A generated module called with
`cp=plan` takes this rank's rows of q/k/v (or of x in layer mode), all-gathers K and V into
global order, evaluates every mask and score expression at global positions (`q` = this rank's
positions, `k` = 0..S-1) and returns this rank's rows of the output. docs/parallel.md tells
how to train with it.

Why all-gather and not a ring: every backend then runs unchanged on [local rows] x [all keys],
and the gather's backward (a reduce-scatter) gives each rank the gradient of its own K/V
shard. `torch.distributed.nn.functional.all_gather` is avoided: its backward gave a wrong dK
on gloo for non-contiguous incoming gradients.

Example (the positions each of 2 ranks holds of 10, balanced head-tail for causal masks):
    >>> [s.tolist() for s in _cp_assignment(10, 2, "head_tail")]
    [[0, 1, 2, 8, 9], [3, 4, 5, 6, 7]]
    >>> ids = torch.tensor([0] * 4 + [1] * 6)  # documents: head-tail inside each
    >>> [s.tolist() for s in _cp_assignment(10, 2, "documents", ids)]
    [[0, 3, 4, 5, 9], [1, 2, 6, 7, 8]]
"""

import torch

from .errors import UnsupportedBackendError

# The rules a plan may balance by (docs/parallel.md): contiguous chunks; head-tail (rank r holds
# chunks r and 2W-1-r of 2W, so a causal mask gives every rank the same work); head-tail inside
# every document (causal document masks).
_CP_BALANCES = ("none", "head_tail", "documents")


class CPPlan:
    """Which positions of a `seq_len` sequence each rank of `group` holds (see `cp_plan`).

    `positions` is this rank's global positions (a LongTensor, in the order of its rows);
    `shards` every rank's. A plan is immutable; it keeps per-device copies of its index
    tensors, so one plan serves every layer of a model.
    """

    def __init__(self, group, world_size: int, rank: int, seq_len: int, balance: str,
                 shards: tuple[torch.Tensor, ...]):
        self.group, self.world_size, self.rank = group, world_size, rank
        self.seq_len, self.balance, self.shards = seq_len, balance, shards
        self.positions = shards[rank]
        self.local_len = len(self.positions)
        self._on_device = {}

    def __repr__(self) -> str:
        return (f"CPPlan(rank={self.rank}, world_size={self.world_size}, "
                f"seq_len={self.seq_len}, balance={self.balance!r}, local_len={self.local_len})")

    def shard(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's rows of a whole sequence `tensor` along `dim` (length seq_len)."""
        _cp_check_length(self, tensor, dim, self.seq_len, "tensor", "the whole sequence")
        return tensor.index_select(dim, _cp_index(self, "positions", tensor.device))

    def unshard(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """The whole sequence from every rank's shard along `dim` (this rank's is `tensor`),
        in global order; gradients flow back to each rank's shard (autograd all-gather)."""
        return _cp_gather(self, tensor, dim, "tensor")

    def reduce_param_grads(self, module: torch.nn.Module) -> None:
        """Sum `module`'s parameter gradients over this plan's group (`cp_reduce_param_grads`)."""
        cp_reduce_param_grads(module, self)


def cp_plan(group_or_mesh: object, seq_len: int, balance: object = "head_tail",
            documents: torch.Tensor | None = None) -> CPPlan:
    """A context-parallel plan: how a sequence of `seq_len` positions is sharded over the ranks
    of `group_or_mesh` (a ProcessGroup, a 1-D DeviceMesh such as `mesh["cp"]`, or None for the
    default group). Call it on every rank with the same arguments.

    `balance` picks the positions of each rank (every choice gives the same results; it only
    moves work): "head_tail" (rank r holds chunks r and 2W-1-r of 2W: equal work under causal
    masks), "none" (contiguous chunks: full and windowed masks), "documents" (head-tail inside
    every document; `documents` is a [S] or [1, S] tensor of document ids, runs of equal ids),
    or a sequence of W position lists that partition range(seq_len). A generated class's
    `CP_BALANCE` is the rule for its spec. Shards may differ in length by a few positions.

    Example (on each of 2 ranks, after `torch.distributed.init_process_group`)::

        plan = cp_plan(mesh["cp"], 8192)              # or cp_plan(None, 8192)
        x_local = plan.shard(x, dim=1)                # this rank's rows of x [B, S, dim]
        y_local = attention(x_local, cp=plan)         # this rank's rows of the output
        y = plan.unshard(y_local, dim=1)              # the whole output, if needed
    """
    import torch.distributed as dist

    group = _cp_group(group_or_mesh)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    name = balance if isinstance(balance, str) else "custom"
    return CPPlan(group, world, rank, _cp_length(seq_len), name,
                  _cp_assignment(seq_len, world, balance, documents))


def _cp_group(group_or_mesh: object) -> object:
    """The ProcessGroup of a group, a 1-D DeviceMesh, or None (the default group)."""
    import torch.distributed as dist

    if group_or_mesh is None:
        return dist.group.WORLD
    if not hasattr(group_or_mesh, "get_group"):
        return group_or_mesh
    if group_or_mesh.ndim != 1:
        raise ValueError(f"cp_plan: expected a 1-D DeviceMesh (e.g. mesh['cp']), got "
                         f"{group_or_mesh.ndim} dimensions")
    return group_or_mesh.get_group()


def _cp_length(seq_len: object) -> int:
    """`seq_len`, checked: a positive int."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"cp_plan: seq_len must be a positive integer, got {seq_len!r}")
    return seq_len


def _cp_assignment(seq_len: int, world: int, balance: object = "head_tail",
                   documents: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Every rank's global positions (a partition of range(seq_len)) under `balance`."""
    if not isinstance(balance, str):
        return _cp_custom(seq_len, world, balance)
    if balance not in _CP_BALANCES:
        raise ValueError(f"cp_plan: balance must be one of {', '.join(_CP_BALANCES)} or a list "
                         f"of position lists, got {balance!r}")
    if (balance == "documents") != (documents is not None):
        raise ValueError("cp_plan: `documents` (document ids [S]) goes with balance='documents'"
                         " and only with it")
    positions = torch.arange(seq_len)
    if balance == "none":
        return tuple(torch.tensor_split(positions, world))
    if balance == "head_tail":
        return _cp_head_tail(positions, world)
    runs = _cp_document_runs(documents, seq_len)
    parts = [_cp_head_tail(run, world) for run in torch.split(positions, runs)]
    return tuple(torch.cat([p[r] for p in parts]) for r in range(world))


def _cp_head_tail(positions: torch.Tensor, world: int) -> tuple[torch.Tensor, ...]:
    """Rank r: chunks r and 2W-1-r of `positions` cut into 2W nearly equal chunks."""
    chunks = torch.tensor_split(positions, 2 * world)
    return tuple(torch.cat((chunks[r], chunks[2 * world - 1 - r])) for r in range(world))


def _cp_document_runs(documents: object, seq_len: int) -> list[int]:
    """The lengths of the runs of equal ids in `documents` ([S] or [1, S])."""
    if not isinstance(documents, torch.Tensor) or documents.dim() not in (1, 2) or \
            documents.shape[-1] != seq_len or documents.numel() != seq_len:
        shape = tuple(documents.shape) if isinstance(documents, torch.Tensor) else documents
        raise ValueError(f"cp_plan: documents must be ids [S] or [1, S] with S = {seq_len}, "
                         f"got {shape}")
    ids = documents.reshape(-1).cpu()
    _, counts = torch.unique_consecutive(ids, return_counts=True)
    return counts.tolist()


def _cp_custom(seq_len: int, world: int, shards: object) -> tuple[torch.Tensor, ...]:
    """User-given shards, checked to be W lists that partition range(seq_len)."""
    shards = tuple(torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in shards)
    joined = torch.cat(shards) if shards else torch.zeros(0, dtype=torch.long)
    if len(shards) != world or not torch.equal(joined.sort().values, torch.arange(seq_len)):
        raise ValueError(f"cp_plan: balance as position lists needs {world} lists that together "
                         f"hold each of 0..{seq_len - 1} once")
    return shards


def _cp_index(plan: CPPlan, what: str, device: torch.device) -> torch.Tensor:
    """A plan's index tensor on `device`, made once: "positions" (this rank's rows) or
    "gather" (for each global position, its row in the padded all-gather of every shard)."""
    key = (what, str(device))
    if key not in plan._on_device:
        if what == "positions":
            index = plan.positions
        else:
            width = max(len(s) for s in plan.shards)
            index = torch.empty(plan.seq_len, dtype=torch.long)
            for r, s in enumerate(plan.shards):
                index[s] = r * width + torch.arange(len(s))
        plan._on_device[key] = index.to(device)
    return plan._on_device[key]


def _cp_check_length(plan: CPPlan, tensor: object, dim: int, length: int, name: str,
                     what: str) -> None:
    """A ValueError naming `name` unless `tensor` has `length` positions along `dim`."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() <= dim or tensor.shape[dim] != length:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name}: expected {length} positions ({what}) in dim {dim}, got "
                         f"shape {shape} (cp: rank {plan.rank} of {plan.world_size}, seq_len "
                         f"{plan.seq_len})")


def _cp_rows(plan: object, tensor: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """This rank's global positions, after checking that `tensor` holds its shard along `dim`
    (a ValueError naming `name` otherwise)."""
    if not all(hasattr(plan, a) for a in ("shards", "positions", "local_len", "group")):
        raise ValueError(f"cp: expected a plan from cp_plan(...), got {type(plan).__name__}")
    _cp_check_length(plan, tensor, dim, plan.local_len, name, "this rank's shard")
    return _cp_index(plan, "positions", tensor.device)


def _cp_gather(plan: CPPlan, tensor: torch.Tensor, dim: int, name: str) -> torch.Tensor:
    """Every rank's shard of `tensor` along `dim`, in global order (autograd: the backward
    reduce-scatters the gradient to the shard's owner). Shards are padded to the longest."""
    from torch.distributed import _functional_collectives as collectives

    _cp_rows(plan, tensor, dim, name)
    width = max(len(s) for s in plan.shards)
    if tensor.shape[dim] < width:
        pad = list(tensor.shape)
        pad[dim] = width - tensor.shape[dim]
        tensor = torch.cat((tensor, tensor.new_zeros(pad)), dim=dim)
    # `all_gather_single_autograd` in torch >= 2.10; the older name before. Both gather along
    # dim 0 best (other dims go through a chunk-and-cat): the sequence dim is moved there.
    try:
        gather = collectives.all_gather_single_autograd
    except AttributeError:
        gather = collectives.all_gather_tensor_autograd
    gathered = gather(tensor.movedim(dim, 0).contiguous(), 0, plan.group)
    index = _cp_index(plan, "gather", tensor.device)
    return gathered.index_select(0, index).movedim(0, dim)


def _cp_choices(owner: str, backend: str, cuda: bool, auto_cpu: str | None,
                auto_cuda: tuple[str, ...], unsupported: dict) -> tuple[str, ...]:
    """The backends a call with `cp=plan` tries, in order: `backend`, or `auto`'s choices
    under context parallelism on this device. A backend that cannot run the spec under it
    raises UnsupportedBackendError with every reason, never a wrong result."""
    if backend == "auto":
        choices = tuple(auto_cuda) if cuda else ((auto_cpu,) if auto_cpu else ())
        if choices:
            return choices
        reasons = "".join(f"\n  - {name}: {r}" for name, why in unsupported.items() for r in why)
        raise UnsupportedBackendError(f"{owner}: no backend runs this spec under context "
                                      f"parallelism (cp=...):{reasons}")
    if backend in unsupported:
        reasons = "".join(f"\n  - {r}" for r in unsupported[backend])
        raise UnsupportedBackendError(f"{owner}: backend {backend!r} cannot run this spec under "
                                      f"context parallelism (cp=...):{reasons}")
    return (backend,)


def _cp_table_rows(tables: tuple, q_pos: torch.Tensor) -> tuple:
    """This rank's rows `q_pos` of an `edges` input's dense tables, [S, S] or [B, 1, S, S]
    (one edge list per batch row): eager and SDPA broadcast them against [rows, S] grids."""
    return type(tables)(*(t.index_select(-2, q_pos) for t in tables))


def _cp_edge_rows(edges: tuple, q_pos: torch.Tensor,
                  seq_len: int) -> tuple[tuple, torch.Tensor]:
    """An edge list (sorted by query) cut to the edges whose query is one of this rank's rows
    `q_pos`, and each kept edge's row in q: (edges, rows). A field that is None (the batch
    row of a list shared by the batch) stays None."""
    row_of = torch.full((seq_len,), -1, dtype=torch.long, device=q_pos.device)
    row_of[q_pos] = torch.arange(len(q_pos), device=q_pos.device)
    rows = row_of[edges.src]
    keep = rows >= 0
    return type(edges)(*(None if f is None else f[keep] for f in edges)), rows[keep]


def cp_reduce_param_grads(module: torch.nn.Module, plan: CPPlan) -> None:
    """Sum every parameter gradient of `module` over the plan's group, in place.

    Under context parallelism each rank's backward gives only its rows' part of a learned
    parameter's gradient; the sum over the group is the whole. Call it after backward when
    nothing else reduces gradients over the context-parallel ranks (an FSDP/DDP wrapper whose
    mesh holds the cp dimension already does: docs/parallel.md).

    Example (on every rank)::

        loss.backward()
        cp_reduce_param_grads(model, plan)
        optimizer.step()
    """
    import torch.distributed as dist

    for param in module.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM, group=plan.group)
