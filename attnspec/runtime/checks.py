"""Checks of what reaches a generated module: the backend, settings and their overrides,
call-time tensors (shape, dtype, device), table reads and param shapes. Each error names the
input or setting and what was expected.

Example:
    >>> _int_setting("heads", 4.0)
    4
    >>> _check_tensor("w", torch.zeros(2, 3), "float", ("B", "S"), (2, None)).shape
    torch.Size([2, 3])
"""

import math

import torch

from .errors import UnsupportedBackendError


def _select_backend(owner: str, backend: str, available: tuple[str, ...],
                    unsupported: dict[str, tuple[str, ...]]) -> str:
    """The backend a module instance runs (`auto` picks per call, by device); a backend that
    cannot run the spec raises with every reason."""
    if backend == "auto" or backend in available:
        return backend
    if backend in unsupported:
        reasons = "\n".join(f"  - {r}" for r in unsupported[backend])
        raise UnsupportedBackendError(f"{owner}: backend {backend!r} cannot run this spec:\n"
                                      f"{reasons}")
    raise UnsupportedBackendError(
        f"{owner}: unknown backend {backend!r}; this module has: auto, {', '.join(available)}"
    )


def _check_overrides(owner: str, overrides: dict, settings: tuple[str, ...]) -> None:
    """Every override must name a setting of the attention."""
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(
            f"{owner}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(settings)}"
        )


def _int_setting(name: str, value: object, positive: bool = True) -> int:
    """An integer setting (every override and default passes here): an int or an integral
    float, positive for sizes. Bools are refused: `heads=True` is a mistake, not 1."""
    expected = "a positive integer" if positive else "an integer"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()) or (positive and value <= 0):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def _float_setting(name: str, value: object, low: float | None = None,
                   high: float | None = None) -> float:
    """A float setting (every override and default passes here): a finite number in
    [low, high), either bound None for none. NaN is refused explicitly: it fails no bound."""
    expected = "a finite number"
    if high is not None:
        expected += f" in [{low}, {high})"
    elif low is not None:
        expected += f" >= {low}"
    # The largest float: `abs(value) <=` it is False for NaN, infinities and ints that float()
    # cannot hold (float() would raise OverflowError).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            abs(value) <= 1.7976931348623157e308) or (low is not None and value < low) or (
            high is not None and value >= high):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def _check_heads(owner: str, heads: int, kv_heads: int) -> None:
    """GQA: every kv head serves the same number of query heads."""
    if heads % kv_heads != 0:
        raise ValueError(f"{owner}: heads ({heads}) must be a multiple of kv_heads ({kv_heads})")


# Devices where a learned table's gradient is summed per cell by `_TableRead` instead of
# advanced indexing's backward. On CUDA that backward is `index_put_` with accumulate: a sort,
# then one warp per distinct cell, so a table of a few cells read by millions of pairs (a graph's
# per-type bias, T5's buckets) serialises (pytorch/pytorch#41162). On the CPU it is a plain
# loop, already fast; tests add "cpu" here.
_TABLE_SORTED_SUMS = ("cuda",)


def _read(table: torch.Tensor, name: str, *index: torch.Tensor | int) -> torch.Tensor:
    """`table[index]`, every index checked against the table's shape: an index out of range
    (possible after constructor overrides) is a ValueError, never garbage or an IndexError.
    While torch.compile traces, the range is checked by an assert in the graph instead (reading
    min/max on the host would break the graph, with a host sync, every call); Inductor's own
    backward of the read is fast there. A learned table read on CUDA goes through `_TableRead`."""
    if torch.compiler.is_compiling():
        return _read_compiled(table, index)
    for axis, i in enumerate(index):
        size = table.shape[axis]
        if isinstance(i, torch.Tensor) and not i.numel():
            continue  # an empty batch or sequence reads nothing
        low, high = (int(i.min()), int(i.max())) if isinstance(i, torch.Tensor) else (i, i)
        if low < 0 or high >= size:
            raise ValueError(
                f"{name}: index range [{low}, {high}] is outside dimension {axis} of size {size} "
                "(did a constructor override change a size the spec relies on?)"
            )
    if (table.requires_grad and torch.is_grad_enabled() and len(index) == table.dim()
            and table.device.type in _TABLE_SORTED_SUMS):
        return _TableRead.apply(table, *index)
    return table[index]


class _TableRead(torch.autograd.Function):
    """`table[index]` (one index per dimension, tensors broadcasting, ints) whose backward sums
    the gradient per table cell without atomics or a warp per cell: the cells read are sorted
    once, and each cell's sum is the difference of a float64 running sum at the ends of its run.
    Deterministic, and parallel however many reads share a cell.

    >>> t = torch.zeros(2, 3, requires_grad=True)
    >>> _TableRead.apply(t, torch.tensor([1, 1, 0]), torch.tensor([2, 2, 0])).sum().backward()
    >>> t.grad.tolist()
    [[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
    """

    @staticmethod
    def forward(ctx, table, *index):
        cells = torch.zeros((), dtype=torch.long, device=table.device)
        for i, size in zip(index, table.shape):  # the row-major cell of each read (Horner)
            cells = cells * size + torch.as_tensor(i, device=table.device)
        ctx.save_for_backward(cells)
        ctx.table_shape = table.shape
        return table[index]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (cells,) = ctx.saved_tensors
        flat = cells.expand(grad.shape).reshape(-1)
        order = torch.argsort(flat, stable=True)
        running = torch.cumsum(grad.reshape(-1).index_select(0, order).double(), 0)
        running = torch.cat([running.new_zeros(1), running])
        n_cells = math.prod(ctx.table_shape)
        cell_ids = torch.arange(n_cells, device=flat.device)
        ends = torch.searchsorted(flat.index_select(0, order), cell_ids, right=True)
        sums = running.index_select(0, ends).diff(prepend=running.new_zeros(1))
        no_grads = [None] * (len(ctx.needs_input_grad) - 1)  # the indices
        return (sums.to(grad.dtype).view(ctx.table_shape), *no_grads)


def _read_compiled(table: torch.Tensor, index: tuple) -> torch.Tensor:
    """`_read` inside a compiled graph: an index out of range fails the graph's assert (a
    RuntimeError; no message naming the table: building one needs the host values)."""
    for axis, i in enumerate(index):
        if isinstance(i, torch.Tensor):
            torch._assert_async(((i >= 0) & (i < table.shape[axis])).all())
    return table[index]


def _param_shape(name: str, *sizes: int) -> tuple[int, ...]:
    """A param's shape, every size a positive int (an override may have made one 0)."""
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"{name}: dimensions must be positive integers, got {list(sizes)}")
    return sizes


def _check_rope_dims(dims: int, head_dim: int) -> None:
    """RoPE rotates pairs of channels: a positive even count within head_dim."""
    if isinstance(dims, bool) or not isinstance(dims, int) or dims <= 0 or dims % 2:
        raise ValueError(f"rope dims must be a positive even integer, got {dims!r}")
    if dims > head_dim:
        raise ValueError(f"rope dims ({dims}) must not exceed head_dim ({head_dim})")


def _check_tensor(name: str, value: object, kind: str, labels: tuple[str, ...],
                  sizes: tuple[int | None, ...],
                  device: torch.device | None = None) -> torch.Tensor:
    """`value` must be a tensor of `kind` ("int", "float", "bool") and shape `sizes`
    (None = any), on `device` when given; the error names the input and its expected shape.
    Ints become int64. A tensor on another device is an error, not a silent copy: the copy
    would cost a host sync per call and defeat the caches keyed by the tensor.
    Messages are built only on failure: `str()` of a SymInt size breaks torch.compile's graph
    (dynamic shapes) on every call."""
    if value is None:
        raise ValueError(f"{name}: missing input, expected shape {_shape_text(labels, sizes)}")
    if not isinstance(value, torch.Tensor):
        got = type(value).__name__
        raise ValueError(f"{name}: expected a tensor of shape {_shape_text(labels, sizes)}, "
                         f"got {got}")
    shape = value.shape
    if len(shape) != len(sizes) or any(s is not None and s != n for s, n in zip(sizes, shape)):
        raise ValueError(f"{name}: expected shape {_shape_text(labels, sizes)}, "
                         f"got {list(shape)}")
    if kind == "float":
        ok = value.dtype.is_floating_point
    elif kind == "bool":
        ok = value.dtype == torch.bool
    else:
        ok = not (value.dtype.is_floating_point or value.dtype.is_complex
                  or value.dtype == torch.bool)
    if not ok:
        article = "an" if kind == "int" else "a"
        raise ValueError(f"{name}: expected {article} {kind} tensor, got dtype {value.dtype}")
    if device is not None and value.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of the attention's "
                         f"inputs), got one on {value.device}")
    return value.long() if kind == "int" else value


def _shape_text(labels: tuple[str, ...], sizes: tuple[int | None, ...]) -> str:
    """`[B, S, dim] = [*, *, 64]`: the expected shape, for an error message."""
    known = ", ".join("*" if s is None else str(s) for s in sizes)
    return f"[{', '.join(str(x) for x in labels)}] = [{known}]"


def _same_dtype(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    """q, k and v must share one dtype."""
    dtypes = [t.dtype for t in tensors]
    if len(set(dtypes)) > 1:
        pairs = ", ".join(f"{n}: {d}" for n, d in zip(names, dtypes))
        raise ValueError(f"{', '.join(names)} must have one dtype, got {pairs}")


def _same_device(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> None:
    """q, k and v must be on one device."""
    devices = [t.device for t in tensors]
    if len(set(devices)) > 1:
        pairs = ", ".join(f"{n}: {d}" for n, d in zip(names, devices))
        raise ValueError(f"{', '.join(names)} must be on one device, got {pairs}")


def _check_weight(owner: str, weight: torch.Tensor, x: torch.Tensor, name: str,
                  projection: bool = False) -> None:
    """`weight`, a parameter of the module, must be on `x`'s device and, for the projection `x`
    goes through, in its dtype (unless autocast is on): a clear error instead of a RuntimeError
    inside a matmul. One parameter stands for all (they move together with module.to); walking
    module.parameters() would cost tens of microseconds per call."""
    if weight.device != x.device:
        raise ValueError(f"{name}: on {x.device}, but {owner}'s parameters are on {weight.device};"
                         f" move one of them (module.to({str(x.device)!r}))")
    if projection and weight.dtype != x.dtype and not _autocast_on(x.device):
        raise ValueError(f"{name}: dtype {x.dtype}, but {owner}'s parameters are {weight.dtype}; "
                         f"convert one of them (module.to({x.dtype}) or {name}.to({weight.dtype}))"
                         ", or run under torch.autocast")


def _autocast_on(device: torch.device) -> bool:
    """Whether autocast is on for the device's type (then dtypes may differ)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except (RuntimeError, TypeError):  # a device type autocast does not know (e.g. meta)
        return False


def _check_unexpected(owner: str, unexpected: dict, valid: tuple[str, ...]) -> None:
    """Keyword arguments forward() does not take (a misspelt input, most likely): ValueError
    naming each, with the closest valid name."""
    import difflib  # only on this error path

    named = []
    for name in sorted(unexpected):
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        named.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{owner}: unexpected input(s) {', '.join(named)}; this attention takes "
                     f"{', '.join(valid)}")


def _seq_len(q_len: int, kv_len: int, names: str) -> int:
    """Inputs with a `seq` dimension need q_len == kv_len."""
    if q_len != kv_len:
        raise ValueError(
            f"{names}: a `seq` dimension needs q_len == kv_len, got q_len {q_len} and kv_len "
            f"{kv_len} (the lengths of q and k)"
        )
    return q_len


def _check_no_sizes(sizes: dict | None) -> None:
    """An attention without token groups takes no `sizes`."""
    if sizes:  # None or {}: nothing to check
        raise ValueError(f"sizes: this attention has no token groups, got {sorted(sizes)}")
