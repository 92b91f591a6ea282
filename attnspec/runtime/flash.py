"""flash-attn: finding the installed library and packing q, k, v for one kernel call.

It finds the installed flash-attn (imported on first use, so a module without it still imports),
calls `flash_attn_func` on [B, S, H, D] views when every sequence has the full lengths, and
otherwise packs the tensors into flash-attn's varlen layout [total, H, D] with int32 `cu_seqlens`
(documents, unpadded keys) for one `flash_attn_varlen_func` call. Everything the
kernels cannot express for a particular call (a dtype, a device, head dims, document ids out of
order, a window that alignment makes negative) raises `UnsupportedInputError` before any kernel
runs: the call is refused, never silently wrong.

Semantics pinned by the tests (tests/test_flash.py models flash-attn in pure torch):
* flash-attn aligns each sequence bottom-right: query i of a sequence with `sq` queries and
  `sk` keys keeps keys `i + sk - sq - left <= j <= i + sk - sq + right` (None = unbounded).
* Rows with no key to attend (no valid key in their sequence, or above the first key when
  `sq > sk`) are set to exactly 0, whatever the kernel wrote there.
* `return_lse`: flash-attn's softmax log-sum-exp (natural log, float32, the learnable sink's
  term included), [B, H, Sq] from `flash_attn_func` and [H, total_q] from varlen calls,
  unpacked to [B, H, Sq]. Rows with no key to attend get -inf (the sink logit with sinks),
  whatever the kernel wrote (flash-attn 2 writes +inf). flash-attn 2's backward ignores the
  lse's gradient, so its calls that return one and need a backward are refused.
"""

import math
from collections.abc import Callable

import torch

from .errors import UnsupportedInputError
from .packed import _packed_runs

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
# flash-attn 4 gave wrong dq at head_dim 8 on the H100 (differential fuzzing, 2026-11-23)
_FLASH_MIN_HEAD_DIM = 16
_FLASH_MAX_HEAD_DIM = 256
# flash-attn 4 (4.0.0b36) returns wrong gradients below this head dim: dq off by 20-110x the
# tolerance at head_dim 16 (varlen at every length, dense from 77 tokens on), dk/dv too with GQA;
# the forward is right. Calls that need a backward there are refused (H200 matrix, issue 20).
_FLASH4_BACKWARD_MIN_HEAD_DIM = 32
_FLASH_LIBRARIES = {}
# Answers about ids tensors, oldest first: key -> (ids, a copy, value); see
# `_flash_remembered` for why the key is sound.
_FLASH_REMEMBERED = {}


class _FlashLibrary:
    """One installed flash-attn: `version` 4 (flash_attn.cute) or 2 (flash_attn), with its
    `flash_attn_func` (`dense`, [B, S, H, D]) and `flash_attn_varlen_func` (`varlen`)."""

    def __init__(self, version: int, dense: Callable, varlen: Callable):
        self.version = version
        self.name = f"flash-attn {version}"
        self.dense = dense
        self.varlen = varlen

    def options(self, scale: float, window: tuple[int | None, int | None], softcap: float,
                alibi_slopes: torch.Tensor | None, sink: torch.Tensor | None) -> dict:
        """Keyword arguments of either function; `window` is (left, right), None = unbounded."""
        causal = window[0] is None and window[1] == 0
        # flash-attn's backward adds dq (and with GQA dk/dv) from several blocks with atomics;
        # under torch.use_deterministic_algorithms(True) it takes its deterministic path.
        deterministic = torch.are_deterministic_algorithms_enabled()
        if self.version == 4:
            return dict(softmax_scale=scale, causal=causal, softcap=softcap, learnable_sink=sink,
                        window_size=(None, None) if causal else window,
                        deterministic=deterministic)
        sides = (-1, -1) if causal else tuple(-1 if w is None else w for w in window)
        return dict(dropout_p=0.0, softmax_scale=scale, causal=causal, window_size=sides,
                    softcap=softcap, alibi_slopes=alibi_slopes, deterministic=deterministic)

    def dense_call(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse: bool = False,
                   **options: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q [B, Sq, H, D], k/v [B, Sk, Hk, *], any strides with a contiguous last dim ->
        (out, lse [B, H, Sq] float32 with `lse`, else None)."""
        out = self.dense(q, k, v, **self.lse_option(lse), **self.options(**options))
        return _flash_result(out, lse)

    def varlen_call(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor,
                    cu_k: torch.Tensor, max_q: int, max_k: int,
                    seqused_k: torch.Tensor | None = None, lse: bool = False,
                    **options: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q [total_q, H, D], k/v [total_k, Hk, *], int32 cu_seqlens, int longest lengths (upper
        bounds: flash-attn sizes its grid by them); `seqused_k` (flash-attn 4 only): int32
        keys used per sequence, from the sequence's start -> (out, lse [H, total_q] float32
        with `lse`, else None)."""
        more = self.lse_option(lse)
        if self.version == 4:
            used = {} if seqused_k is None else {"seqused_k": seqused_k}
            out = self.varlen(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                              max_seqlen_k=max_k, **used, **more, **self.options(**options))
        else:
            out = self.varlen(q, k, v, cu_q, cu_k, max_q, max_k, **more,
                              **self.options(**options))
        return _flash_result(out, lse)

    def lse_option(self, lse: bool) -> dict:
        """The keyword that makes either version return its softmax log-sum-exp (natural log,
        float32): flash-attn 4's `return_lse`, flash-attn 2's `return_attn_probs` (which returns
        (out, softmax_lse, S_dmask))."""
        if not lse:
            return {}
        return {"return_lse": True} if self.version == 4 else {"return_attn_probs": True}


def _flash_result(out: object, lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(output, lse or None) of a flash-attn call made with `lse_option(lse)`: flash-attn 4
    returns (out, lse or None), flash-attn 2 out or, asked for more, (out, lse, S_dmask)."""
    if lse:
        return out[0], out[1]
    return (out[0] if isinstance(out, tuple) else out), None


def _flash_library(device: torch.device) -> _FlashLibrary:
    """The flash-attn that runs on `device`: flash-attn 4 on sm90 and newer when installed, else
    flash-attn 2. Found once per device; UnsupportedInputError when there is none."""
    if device.type != "cuda":
        raise UnsupportedInputError(f"backend 'flash' runs on CUDA tensors only (flash-attn "
                                    f"kernels), got device {device}; use 'sdpa' or 'eager'")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _FLASH_LIBRARIES:
        _FLASH_LIBRARIES[index] = _find_flash(torch.cuda.get_device_capability(index))
    found = _FLASH_LIBRARIES[index]
    if isinstance(found, str):
        raise UnsupportedInputError(found)
    return found


def _find_flash(capability: tuple[int, int]) -> _FlashLibrary | str:
    """A _FlashLibrary, or the message explaining why none can be imported."""
    problems = []
    if capability[0] >= 9:
        try:
            from flash_attn.cute import flash_attn_func as fa4_dense
            from flash_attn.cute import flash_attn_varlen_func as fa4_varlen
            return _FlashLibrary(4, fa4_dense, fa4_varlen)
        except ImportError as e:
            problems.append(f"flash-attn 4 (flash_attn.cute): {e}")
    else:
        problems.append(f"flash-attn 4 needs sm90 or newer, this GPU is sm{capability[0]}"
                        f"{capability[1]}")
    try:
        from flash_attn import flash_attn_func as fa2_dense
        from flash_attn import flash_attn_varlen_func as fa2_varlen
        return _FlashLibrary(2, fa2_dense, fa2_varlen)
    except ImportError as e:
        problems.append(f"flash-attn 2 (flash_attn): {e}")
    return ("backend 'flash' needs flash-attn: pip install flash-attn-4 (Hopper or newer) or "
            "flash-attn; " + "; ".join(problems))


def _flash_check(owner: str, library: _FlashLibrary, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, alibi_slopes: torch.Tensor | None,
                 sink: torch.Tensor | None, lse: bool = False) -> None:
    """What this library cannot run for these inputs, before any work is done (`lse`: the
    call returns the log-sum-exp too)."""
    problems = _flash_backward_problems(library, q, k, v, sink, lse)
    if q.dtype not in _FLASH_DTYPES:
        problems.append(f"q, k, v are {q.dtype}: flash-attn computes in float16/bfloat16 only "
                        "(cast them, or use another backend)")
    for name, size in (("head_dim", q.shape[-1]), ("value_dim", v.shape[-1])):
        if size % 8 or not _FLASH_MIN_HEAD_DIM <= size <= _FLASH_MAX_HEAD_DIM:
            problems.append(f"{name} {size}: flash-attn needs a multiple of 8 from "
                            f"{_FLASH_MIN_HEAD_DIM} to {_FLASH_MAX_HEAD_DIM}")
    if library.version == 2 and q.shape[-1] != v.shape[-1]:
        problems.append(f"flash-attn 2 needs head_dim == value_dim, got {q.shape[-1]} and "
                        f"{v.shape[-1]}")
    if alibi_slopes is not None and library.version == 4:
        problems.append("ALiBi: flash-attn 4 has no alibi_slopes (it would need a CuTe "
                        "score_mod); install flash-attn 2, or use 'flex'")
    if sink is not None and library.version == 2:
        problems.append("sinks: flash-attn 2 has no learnable_sink; use flash-attn 4 or 'flex'")
    if problems:
        raise UnsupportedInputError(f"{owner}: backend 'flash' ({library.name}) cannot run this "
                                    "call:\n" + "\n".join(f"  - {p}" for p in problems))


def _flash_backward_problems(library: _FlashLibrary, q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, sink: torch.Tensor | None,
                             lse: bool = False) -> list[str]:
    """What this library's backward gets wrong, when this call will need one: head dims below
    flash-attn 4's floor; flash-attn 2's log-sum-exp, which its backward ignores (gradients
    through a returned lse would be silently missing)."""
    tensors = [t for t in (q, k, v, sink) if t is not None]
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return []
    if library.version == 2:
        return ["return_lse=True with gradients: flash-attn 2's backward ignores the gradient "
                "of its log-sum-exp; use flash-attn 4, 'flex' or 'eager' (or torch.no_grad())"
                ] if lse else []
    size = min(q.shape[-1], v.shape[-1])
    if size >= _FLASH4_BACKWARD_MIN_HEAD_DIM:
        return []
    return [f"gradients at head dim {size}: flash-attn 4's backward is wrong below "
            f"{_FLASH4_BACKWARD_MIN_HEAD_DIM} (its forward is right: inference runs); use "
            "'flex' or 'sdpa' to train"]


def _flash_remembered(ids: torch.Tensor, what: str, compute: Callable[[], object],
                      largest: int = 1 << 20) -> object:
    """`compute()` for this ids tensor, remembered while the very same tensor comes back with the
    same contents: every layer of a model gets the same document ids, and each answer costs
    device-to-host syncs.

    Why a hit is sound: the answer depends on the contents of `ids` only. `_version` cannot
    vouch for them (numpy writes through `torch.from_numpy`, `.data` writes and DLPack views do
    not move it; inference tensors have none), so id, `_version`, shape, dtype and device only
    find the candidate and a copy of `ids` taken at the computation confirms it (`torch.equal`:
    one host sync, where computing the answer takes one or two). Not remembered: while
    torch.compile traces, and for more than `largest` ids. Answers under inference mode are kept
    apart (their cu_seqlens cannot be saved for a backward outside it).
    """
    if torch.compiler.is_compiling() or ids.numel() > largest:
        return compute()
    key = (id(ids), None if ids.is_inference() else ids._version, ids.shape, ids.dtype,
           ids.device, what, torch.is_inference_mode_enabled())
    found = _FLASH_REMEMBERED.pop(key, None)
    if found is not None and found[0] is ids and torch.equal(found[1], ids):
        _FLASH_REMEMBERED[key] = found  # newest last
        return found[2]
    copy = ids.detach().clone()  # the values `compute` reads
    value = compute()
    _FLASH_REMEMBERED[key] = (ids, copy, value)
    while len(_FLASH_REMEMBERED) > 16:
        del _FLASH_REMEMBERED[next(iter(_FLASH_REMEMBERED))]  # the least recently used
    return value


def _flash_window(owner: str, lo: int | None, hi: int | None, bottom_right: bool, Sq: int,
                  Sk: int) -> tuple[int | None, int | None]:
    """flash-attn's (left, right) for the band `lo <= k - q - shift <= hi` (None = unbounded),
    `shift` = kv_len - q_len when bottom-right, else 0. flash-attn aligns at kv_len - q_len
    (runs of documents have q_len == kv_len), so a top-left band moves by that much."""
    delta = Sk - Sq
    shift = delta if bottom_right else 0
    left = None if lo is None else delta - shift - lo
    right = None if hi is None else shift + hi - delta
    if (left is not None and left < 0) or (right is not None and right < 0):
        raise UnsupportedInputError(
            f"{owner}: backend 'flash' cannot run the band {lo} <= k - q <= {hi} "
            f"({'bottom-right' if bottom_right else 'top-left'}) with q_len {Sq} and kv_len "
            f"{Sk}: it becomes window_size=({left}, {right}) and flash-attn needs both >= 0 "
            "(its windows are aligned bottom-right and hold the diagonal); use 'flex'")
    return left, right


def _flash_runs(ids: torch.Tensor | None, B: int, S: int,
                device: torch.device) -> tuple[torch.Tensor, int]:
    """int32 cu_seqlens [n + 1] and the longest length of the sequences: one per run of equal
    `ids` in each row, or one per row when `ids` is None. Ids of a packed call come with them
    (no sync); others are derived on the device with one sync, remembered per ids tensor."""
    if ids is None:
        return torch.arange(0, (B + 1) * S, S, dtype=torch.int32, device=device), S
    packed = _packed_runs(ids)
    return packed if packed is not None else _flash_id_facts(ids, B, S, device)[0]


def _flash_check_documents(owner: str, name: str, ids: torch.Tensor) -> None:
    """Varlen sequences are contiguous runs: each document's ids must form one run per row,
    which non-decreasing ids guarantee (found with the runs: one lookup, one sync)."""
    if _packed_runs(ids) is None:
        _flash_document_runs(owner, name, ids, *ids.shape, ids.device)


def _flash_document_runs(owner: str, name: str, ids: torch.Tensor, B: int, S: int,
                         device: torch.device) -> tuple[torch.Tensor, int]:
    """`_flash_runs` of document ids, refused (naming the input) where they decrease: one
    lookup of the remembered facts (a hit costs its one sync), none for a packed call."""
    packed = _packed_runs(ids)
    if packed is not None:
        return packed
    runs, decreasing = _flash_id_facts(ids, B, S, device)
    if decreasing:
        raise UnsupportedInputError(
            f"{owner}: backend 'flash' needs the document ids `{name}` non-decreasing along "
            "each row (every document one contiguous run); they decrease somewhere. Sort the "
            "packing, or use backend='flex', which runs any ids")
    return runs


def _flash_id_facts(ids: torch.Tensor, B: int, S: int,
                    device: torch.device) -> tuple[tuple[torch.Tensor, int], bool]:
    """((cu_seqlens, longest), whether the ids decrease somewhere), remembered per ids tensor
    (`_flash_remembered`: a hit costs the one sync of its check)."""
    return _flash_remembered(ids, "runs", lambda: _flash_id_runs(ids, B, S, device, True))


def _flash_id_runs(ids: torch.Tensor, B: int, S: int, device: torch.device,
                   with_order: bool = False) -> tuple:
    """(cu_seqlens, longest) of an ids tensor, and with `with_order` whether they decrease
    somewhere: computed on the device, then the run count, the longest run and the order flag
    come to the host in one transfer (the one sync: the run count sizes cu_seqlens and the
    kernel's grid)."""
    starts = torch.ones(B, S, dtype=torch.bool, device=device)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    starts = starts.flatten()
    position = torch.arange(B * S, device=device)
    run_start = torch.cummax(torch.where(starts, position, 0), 0).values
    decreasing = (ids[:, 1:] < ids[:, :-1]).any()
    stats = torch.stack([starts.sum(), (position - run_start + 1).max(), decreasing.long()])
    count, longest, decreasing = stats.tolist()
    first = torch.nonzero_static(starts, size=count).flatten()
    runs = (torch.cat([first, first.new_full((1,), B * S)]).to(torch.int32), longest)
    return (runs, bool(decreasing)) if with_order else runs


def _flash_keep_keys(key_valid: torch.Tensor,
                     cu_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Unpadding: the flat indices of the valid keys, and cu_seqlens / longest length of the
    sequences they leave (each sequence keeps its valid keys, in order)."""
    flat = key_valid.flatten()
    before = torch.cat([flat.new_zeros(1, dtype=torch.int64), flat.cumsum(0)])
    cu = before[cu_k.long()].to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return flat.nonzero().flatten(), cu, longest


def _flash_check_left_padded(owner: str, key_valid: torch.Tensor, cu_k: torch.Tensor) -> None:
    """A band meets unpadded keys exactly when no valid key is followed by an invalid one in the
    same sequence (left padding): flash-attn aligns the window at the end of the keys it is
    given, which is then where the band's alignment puts it. One host sync (the answer).

    >>> cu = torch.tensor([0, 3, 6], dtype=torch.int32)
    >>> _flash_check_left_padded("T", torch.tensor([[0, 1, 1, 0, 0, 1]]).bool(), cu)
    >>> _flash_check_left_padded("T", torch.tensor([[1, 0, 1, 1, 1, 1]]).bool(), cu)
    Traceback (most recent call last):
    ...
    attnspec.runtime.errors.UnsupportedInputError: T: backend 'flash' runs a band ...
    """
    flat = key_valid.flatten()
    starts = torch.zeros(flat.numel() + 1, dtype=torch.bool, device=flat.device)
    starts[cu_k.long()] = True
    drops = flat[:-1] & ~flat[1:] & ~starts[1:-1]
    if bool(drops.any()):
        raise UnsupportedInputError(
            f"{owner}: backend 'flash' runs a band (causal, windows) with key padding only when "
            "each sequence's valid keys come last (left padding); a valid key is followed by a "
            "padded one here. Use 'flex' or 'sdpa' for other padding")


def _flash_pack(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[B, H, S, D] -> [B*S, H, D] (rows `keep` only, when given)."""
    packed = x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])
    return packed if keep is None else packed.index_select(0, keep)


def _flash_empty_rows(cu_q: torch.Tensor, cu_k: torch.Tensor, total_q: int,
                      right: int | None) -> torch.Tensor:
    """[total_q] bool: packed query rows with no key in their window: every row of a sequence
    without keys, and the first rows of a sequence with more queries than keys (above the
    bottom-right-aligned diagonal) when the window is bounded on the right."""
    lengths_q = (cu_q[1:] - cu_q[:-1]).long()
    lengths_k = (cu_k[1:] - cu_k[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(lengths_q.numel(), device=cu_q.device),
                                  lengths_q, output_size=total_q)
    local = torch.arange(total_q, device=cu_q.device) - cu_q.long()[seq]
    empty = lengths_k[seq] == 0
    if right is not None:
        empty = empty | (local + lengths_k[seq] - lengths_q[seq] + right < 0)
    return empty


def _flash_attend(owner: str, library: _FlashLibrary, q: torch.Tensor, k: torch.Tensor,
                  v: torch.Tensor, *, scale: float, documents: torch.Tensor | None = None,
                  document_name: str = "documents",
                  key_valid: torch.Tensor | None = None, band: tuple | None = None,
                  softcap: float | None = None, alibi_slopes: torch.Tensor | None = None,
                  sink: torch.Tensor | None = None, return_lse: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """q [B, H, Sq, D], k/v [B, Hk, Sk, *] -> [B, H, Sq, Dv] through one flash-attn call.
    `documents` [B, S] ids (checked non-decreasing by the caller), `key_valid` [B, Sk] bool,
    `band` (lo, hi, bottom_right). `return_lse`: (out, lse [B, H, Sq] float32)."""
    _flash_check(owner, library, q, k, v, alibi_slopes, sink, return_lse)
    B, H, Sq = q.shape[:3]
    Sk, Dv = k.shape[2], v.shape[3]
    window = _flash_window(owner, *band, Sq, Sk) if band is not None else (None, None)
    options = dict(scale=scale, window=window, softcap=softcap or 0.0,
                   alibi_slopes=alibi_slopes, sink=sink, lse=return_lse)
    if documents is None and key_valid is None:
        # Equal lengths: flash_attn_func on [B, S, H, D] views, no copies (the projections of a
        # layer produce exactly that layout).
        out, lse = library.dense_call(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                      **options)
        if window[1] is not None and Sq > Sk + window[1]:  # rows above the first key
            above = torch.arange(Sq, device=q.device) < Sq - Sk - window[1]
            out = out.masked_fill(above.view(1, -1, 1, 1), 0.0)
            lse = _flash_empty_lse(lse, above.view(1, 1, -1), sink)
        return _flash_return(out.transpose(1, 2), lse, return_lse)
    if documents is not None:
        cu_q, max_q = _flash_document_runs(owner, document_name, documents, B, Sq, q.device)
        cu_k, max_k = cu_q, max_q
    else:
        cu_q, max_q = _flash_runs(None, B, Sq, q.device)
        cu_k, max_k = _flash_runs(None, B, Sk, q.device)
    keep = None
    if key_valid is not None:
        if band is not None:
            _flash_check_left_padded(owner, key_valid, cu_k)
        keep, cu_k, max_k = _flash_keep_keys(key_valid, cu_k)
    if max_k == 0:  # no key anywhere: every row is 0 (a product over zero keys keeps autograd)
        return _flash_no_keys(q, k, v, sink, return_lse)
    out, lse = library.varlen_call(_flash_pack(q), _flash_pack(k, keep), _flash_pack(v, keep),
                                   cu_q, cu_k, max_q, max_k, **options)
    lse = _flash_unpack_lse(lse, B, Sq)
    if key_valid is not None:
        empty = _flash_empty_rows(cu_q, cu_k, out.shape[0], window[1])
        out = out.masked_fill(empty.view(-1, 1, 1), 0.0)
        lse = _flash_empty_lse(lse, empty.view(B, 1, Sq), sink)
    return _flash_return(out.view(B, Sq, H, Dv).transpose(1, 2), lse, return_lse)


def _flash_return(out: torch.Tensor, lse: torch.Tensor | None,
                  return_lse: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """What `_flash_attend` and `_flash_groups` return: out, or (out, lse [B, H, Sq])."""
    return (out, lse) if return_lse else out


def _flash_unpack_lse(lse: torch.Tensor | None, B: int, Sq: int) -> torch.Tensor | None:
    """A varlen call's lse [H, total_q] (queries packed in place, total_q = B * Sq) as
    [B, H, Sq], the layout of the module's outputs (a view)."""
    if lse is None:
        return None
    return lse.view(lse.shape[0], B, Sq).transpose(0, 1)


def _flash_empty_lse(lse: torch.Tensor | None, empty: torch.Tensor,
                     sink: torch.Tensor | None) -> torch.Tensor | None:
    """lse [B, H, Sq] with the rows `empty` (broadcast against it) set to what a row without
    keys has: -inf, or with sinks the sink logit (the denominator's one term). Whatever the
    kernel wrote there: flash-attn 2 writes +inf for such rows."""
    if lse is None:
        return None
    if sink is None:
        return lse.masked_fill(empty, -math.inf)
    return torch.where(empty, sink.to(lse.dtype).view(1, -1, 1), lse)


def _flash_no_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   sink: torch.Tensor | None, return_lse: bool
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The result when no row has a key: out 0 (a product over zero keys keeps autograd; the
    sink's gradient is 0 too) and lse -inf, or the sink logit, for every row."""
    out = q @ k[:, :1, :0].transpose(-2, -1) @ v[:, :1, :0]
    if sink is not None:
        out = out + 0 * sink.sum()
    if not return_lse:
        return out
    B, H, Sq = q.shape[:3]
    if sink is None:
        return out, torch.full((B, H, Sq), -math.inf, dtype=torch.float32, device=q.device)
    return out, sink.to(torch.float32).view(1, -1, 1).expand(B, H, Sq)


# --- token groups: every pattern in one varlen call -------------------------------------------
# Layouts of token-group calls: (device, B, Sk, group ranges, patterns) -> _FlashSegments. They
# are functions of Python ints only (no tensor contents), so a hit is always sound.
_FLASH_SEGMENTS = {}


class _FlashSegments:
    """The varlen layout of token-group patterns over a batch: segment i of row b holds the
    query run `q_runs[i]` and the keys `keys` gathered for it. Queries stay in place (every
    group is a query in exactly one pattern, so the runs tile the sequence in order); keys are
    gathered per segment, `key_index` [B * Lk] into k packed as [B * Sk, ...]."""

    def __init__(self, q_runs: list[tuple[int, int]], k_runs: list[list[tuple[int, int]]],
                 B: int, Sq: int, Sk: int, device: torch.device):
        lengths_k = [sum(b - a for a, b in runs) for runs in k_runs]
        per_row = torch.tensor([i for runs in k_runs for a, b in runs for i in range(a, b)],
                               dtype=torch.int64).view(1, -1)
        rows = torch.arange(B, dtype=torch.int64).view(-1, 1)
        self.key_index = (per_row + rows * Sk).flatten().to(device)
        starts_q = [b_ * Sq + a for b_ in range(B) for a, _ in q_runs] + [B * Sq]
        total_k = sum(lengths_k)
        starts_k = [b_ * total_k + s for b_ in range(B)
                    for s in _cumulative(lengths_k)[:-1]] + [B * total_k]
        self.cu_q = torch.tensor(starts_q, dtype=torch.int32, device=device)
        self.cu_k = torch.tensor(starts_k, dtype=torch.int32, device=device)
        self.max_q = max(b - a for a, b in q_runs)
        self.max_k = max(lengths_k)
        count = len(q_runs) * B
        sizes_k = torch.tensor(lengths_k * B, dtype=torch.int64)
        # Per gathered key: its segment (to sort valid keys first within each segment).
        self.key_segment = torch.repeat_interleave(torch.arange(count), sizes_k).to(device)
        sizes_q = torch.tensor([b - a for a, b in q_runs] * B, dtype=torch.int64)
        # Per packed query row: its segment (rows of segments without keys are set to 0).
        self.query_segment = torch.repeat_interleave(torch.arange(count), sizes_q).to(device)
        self.empty = 0 in lengths_k
        self.count = count


def _cumulative(lengths: list[int]) -> list[int]:
    """Offsets of consecutive lengths, from 0 to their sum: [2, 3] -> [0, 2, 5]."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return out


def _flash_segments(groups: dict[str, range], patterns: tuple, B: int, Sq: int, Sk: int,
                    device: torch.device) -> _FlashSegments:
    """The layout of these group sizes, built once per (device, B, sizes): every later call
    with the same sizes reuses its tensors (no host-to-device copy, no sync)."""
    key = (device, B, Sq, Sk, tuple((n, r.start, r.stop) for n, r in groups.items()), patterns)
    found = _FLASH_SEGMENTS.get(key)
    if found is None:
        q_runs, k_runs = _flash_segment_runs(groups, patterns)
        found = _FlashSegments(q_runs, k_runs, B, Sq, Sk, device)
        _FLASH_SEGMENTS[key] = found
        while len(_FLASH_SEGMENTS) > 64:
            del _FLASH_SEGMENTS[next(iter(_FLASH_SEGMENTS))]  # the oldest
    return found


def _flash_segment_runs(groups: dict[str, range], patterns: tuple) -> tuple[list, list]:
    """Segments in query order: (query run, key runs) where a query run is a stretch of
    adjacent groups of one pattern and the key runs are that pattern's key groups, adjacent
    ones merged. Empty query runs are left out (they have no rows).

    >>> g = {"a": range(0, 2), "b": range(2, 5), "c": range(5, 6)}
    >>> _flash_segment_runs(g, ((("a", "c"), ("a",)), (("b",), ("a", "b"))))
    ([(0, 2), (2, 5), (5, 6)], [[(0, 2)], [(0, 5)], [(0, 2)]])
    """
    owner = {g: n for n, (queries, _) in enumerate(patterns) for g in queries}
    q_runs, k_runs, last = [], [], None
    for name, positions in sorted(groups.items(), key=lambda item: item[1].start):
        if not len(positions):
            continue
        if q_runs and last == owner[name] and q_runs[-1][1] == positions.start:
            q_runs[-1] = (q_runs[-1][0], positions.stop)
            continue
        last = owner[name]
        q_runs.append((positions.start, positions.stop))
        k_runs.append(_merged_runs([groups[k] for k in patterns[last][1]]))
    return q_runs, k_runs


def _merged_runs(ranges: list[range]) -> list[tuple[int, int]]:
    """Non-empty ranges in order as (start, stop) runs, adjacent ones merged."""
    runs = []
    for r in sorted((r for r in ranges if len(r)), key=lambda r: r.start):
        if runs and runs[-1][1] == r.start:
            runs[-1] = (runs[-1][0], r.stop)
        else:
            runs.append((r.start, r.stop))
    return runs


def _flash_groups(owner: str, library: _FlashLibrary, q: torch.Tensor, k: torch.Tensor,
                  v: torch.Tensor, groups: dict[str, range], patterns: tuple, *, scale: float,
                  key_valid: torch.Tensor | None = None, softcap: float | None = None,
                  sink: torch.Tensor | None = None, return_lse: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Token-group patterns through ONE flash-attn varlen call: q [B, H, S, D], k/v
    [B, Hk, S, *] -> [B, H, S, Dv]. Each segment is a run of query groups (in place) attending
    its pattern's key groups, gathered contiguous. `key_valid` [B, S] bool: each segment's valid
    keys are sorted first (a stable sort on the device) and `seqused_k` counts them, so padding
    costs no sync and no dense mask (flash-attn 4: seqused_k; flash-attn 2 has none and refuses).
    `return_lse`: (out, lse [B, H, S] float32).
    """
    _flash_check(owner, library, q, k, v, None, sink, return_lse)
    B, H, Sq = q.shape[:3]
    Sk, Dv = k.shape[2], v.shape[3]
    layout = _flash_segments(groups, patterns, B, Sq, Sk, q.device)
    if layout.max_k == 0:  # no pattern has a key: every row is 0 (autograd kept)
        return _flash_no_keys(q, k, v, sink, return_lse)
    index, used = layout.key_index, None
    if key_valid is not None:
        if library.version != 4:
            raise UnsupportedInputError(f"{owner}: backend 'flash' ({library.name}) runs key "
                                        "padding with token groups through seqused_k, which "
                                        "flash-attn 4 has and flash-attn 2 does not")
        index, used = _flash_valid_first(layout, key_valid.flatten().index_select(0, index),
                                         index)
    options = dict(scale=scale, window=(None, None), softcap=softcap or 0.0, alibi_slopes=None,
                   sink=sink, lse=return_lse)
    out, lse = library.varlen_call(_flash_pack(q), _flash_pack(k, index), _flash_pack(v, index),
                                   layout.cu_q, layout.cu_k, layout.max_q, layout.max_k,
                                   seqused_k=used, **options)
    lse = _flash_unpack_lse(lse, B, Sq)  # queries stay in place: [H, B * S] -> [B, H, S]
    if used is not None or layout.empty:  # rows of segments without keys are exactly 0
        lengths = used if used is not None else layout.cu_k[1:] - layout.cu_k[:-1]
        empty = (lengths == 0).index_select(0, layout.query_segment)
        out = out.masked_fill(empty.view(-1, 1, 1), 0.0)
        lse = _flash_empty_lse(lse, empty.view(B, 1, Sq), sink)
    return _flash_return(out.view(B, Sq, H, Dv).transpose(1, 2), lse, return_lse)


def _flash_valid_first(layout: _FlashSegments, valid: torch.Tensor,
                       index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gather index with each segment's valid keys first, in order, and int32 seqused_k
    (valid keys per segment). Patterns have no positions inside a segment, so reordering keys
    changes nothing but which of them the kernel reads. On the device, no sync."""
    order = torch.sort(layout.key_segment * 2 + (~valid).long(), stable=True).indices
    # Valid keys per segment from a running count read at the segment bounds (gathers only).
    before = torch.nn.functional.pad(valid.to(torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
    used = before[layout.cu_k[1:].long()] - before[layout.cu_k[:-1].long()]
    return index.index_select(0, order), used


def _flash_decode(owner: str, library: _FlashLibrary, q: torch.Tensor, cache_k: torch.Tensor,
                  cache_v: torch.Tensor, rows: torch.Tensor, pages: torch.Tensor | None, *,
                  scale: float, band: tuple | None = None, softcap: float | None = None,
                  sink: torch.Tensor | None = None, return_lse: bool = False
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decoding through one `flash_attn_varlen_func` call of flash-attn 4, reading the cache
    where it lies: q [B, H, Sq, D] (the new tokens, already in the cache) attends the first
    `rows[b]` keys of its row (`seqused_k`), of a contiguous `[B, capacity, Hk, D]` cache or of a
    page pool `[num_pages, page_size, Hk, D]` through `pages` (`page_table`). Positions are
    absolute and flash-attn aligns each row at its own end, so the band `lo <= k - q <= hi`
    is `window_size=(-lo, hi)` as written. -> [B, H, Sq, Dv]; with `return_lse` also the
    lse [B, H, Sq] (float32) that batched q gives (every query sees itself: no empty row)."""
    if library.version != 4:
        raise UnsupportedInputError(f"{owner}: backend 'flash' decodes with flash-attn 4 "
                                    f"(seqused_k, page_table); found {library.name}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, cache_k, cache_v)):
        raise UnsupportedInputError(f"{owner}: backend 'flash' decodes for inference only (no "
                                    "backward through a cache); use 'eager' or 'sdpa'")
    _flash_check(owner, library, q, cache_k[:1, :1].transpose(1, 2),
                 cache_v[:1, :1].transpose(1, 2), None, sink)
    lo, hi = band if band is not None else (None, None)
    left, right = (None if lo is None else -lo), hi
    if (left is not None and left < 0) or (right is not None and right < 0):
        raise UnsupportedInputError(f"{owner}: backend 'flash' cannot decode the band {lo} <= "
                                    f"k - q <= {hi}: flash-attn windows hold the diagonal")
    options = library.options(scale=scale, window=(left, right), softcap=softcap or 0.0,
                              alibi_slopes=None, sink=sink)
    table = None if pages is None else pages.to(torch.int32)
    out, lse = _flash_result(library.varlen(
        q.transpose(1, 2), cache_k, cache_v, seqused_k=rows.to(torch.int32), page_table=table,
        **library.lse_option(return_lse), **options), return_lse)
    return _flash_return(out.transpose(1, 2), lse, return_lse)
