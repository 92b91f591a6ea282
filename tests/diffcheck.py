"""One differential check of a spec: every generated backend against the eager interpreter.

`check_spec(text)` compiles the spec with `attnspec.load` and runs the verify harness
(`attnspec.verify.verify_spec`: outputs and gradients against the interpreter in float64 on
fresh random inputs, flash-attn's tolerance rule). Two checks are added:

* **BlockMask, token level** (flex): uncompiled flex on CPU reads only `mask_mod` and ignores
  the BlockMask's tile lists, so a wrong structured BlockMask would pass verify there. The
  BlockMask the generated module builds (captured from its `_flex_runner` call) is expanded to
  tokens and compared with `attnspec.eager.evaluate_mask` at lengths that span several 128-tiles:
  every attendable pair lies in a listed tile, every "full" tile is all attendable, and the
  backward's query-side lists are the transpose of the key-side lists.
* **Long cases** (`long=True`): the verify cases again at lengths over several tiles (B=2,
  S=300; Sq=150, Sk=290 where the spec allows different lengths). On CUDA this is what runs
  compiled flex kernels through partial and full tiles.

Results are `attnspec.verify.Result`s (the BlockMask check has case "blockmask ..."), so passes,
refusals and failures are counted alike. `report(text, results, seed)` formats a failure with
the spec text, so it can be reproduced.

Example:
    >>> results = check_spec("attention A {\\n heads = 2\\n head_dim = 8\\n mask causal\\n}")
    >>> all(r.ok for r in results), sorted({r.backend for r in results})
    (True, ['eager', 'flex', 'sdpa'])
"""

from __future__ import annotations

import contextlib
import math
import warnings
import zlib
from collections.abc import Iterator, Sequence

import torch

import attnspec
from attnspec import eager, verify
from attnspec.errors import UnsupportedBackendError, UnsupportedInputError
from attnspec.ir import nodes as ir

LONG = 300  # > two 128-tiles, not a multiple of 128
LONG_Q, LONG_K = 150, 290
STAR_LONG = 140  # the first `*` token group in long cases (the others stay 7)


def spec_seed(text: str, base: int) -> int:
    """A reproducible input seed for one spec: its text hashed with the run's base seed.
    Comment lines do not count, so a spec saved to the corpus with a comment on top gets the
    same inputs again for the same base seed."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return (zlib.crc32(body.encode()) ^ base) % 2**31


def check_spec(text: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
               seed: int = 0, backends: Sequence[str] | None = None, long: bool = False,
               block_masks: bool = True) -> list[verify.Result]:
    """Every attention x backend x case of spec `text` against the interpreter (see module
    docstring). A spec that builds but fails to compile gives one failed "compile" result."""
    module_ir = attnspec.build(text)
    try:
        module = attnspec.load(text)
    except Exception as error:  # noqa: BLE001 — a valid spec must compile: report, not crash
        return [_result(module_ir.attentions[0], "compile", "compile", False,
                        f"{type(error).__name__}: {error}")]
    with _quiet():
        results = verify.verify_spec(module_ir, module, backends, dtype, device, seed)
        for attn in module_ir.attentions:
            cls = getattr(module, attn.name)
            wanted = verify.default_backends(cls, device) if backends is None else backends
            wanted = [b for b in wanted if b == "auto" or b in cls.BACKENDS]
            if long:
                results += _long_results(attn, cls, wanted, dtype, device, seed)
            if block_masks and "flex" in wanted:
                results += [_block_mask_result(module, attn, case, dtype, device, seed)
                            for case in long_cases(attn)]
    return results


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Uncompiled flex warns on every call on CPU; that is expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.comp")
        yield


def long_cases(attn: ir.AttentionIR) -> list[verify.Case]:
    """Cases over several 128-tiles: S=300 (token groups: their total with one long `*`
    group), and Sq=150, Sk=290 where the spec allows different lengths."""
    if attn.groups:
        total = _group_total(attn)
        return [verify.Case(f"groups S={total}", 2, total, total)]
    cases = [verify.Case(f"S={LONG}", 2, LONG, LONG)]
    if verify.cases_for(attn)[-1].q_len != verify.cases_for(attn)[-1].kv_len:
        cases.append(verify.Case(f"Sq={LONG_Q},Sk={LONG_K}", 2, LONG_Q, LONG_K))
    return cases


def _group_sizes(attn: ir.AttentionIR) -> dict[str, int]:
    """Sizes for the `*` groups of a long case: the first one long, the others 7."""
    stars = [g.name for g in attn.groups if g.size is None]
    return {name: STAR_LONG if i == 0 else 7 for i, name in enumerate(stars)}


def _group_total(attn: ir.AttentionIR) -> int:
    sizes = _group_sizes(attn)
    return sum(g.size if g.size is not None else sizes[g.name] for g in attn.groups)


def _long_results(attn, cls, backends, dtype, device, seed) -> list[verify.Result]:
    """The verify comparison on the long cases (token groups keep their 7-long `*` groups:
    verify's inputs assume them)."""
    if attn.groups:
        return []
    results = []
    for backend in backends:
        for i, case in enumerate(long_cases(attn)):
            try:
                results.append(verify.check_case(attn, cls, backend, case, dtype, device,
                                                 seed + 100 + i, "<fuzz>"))
            except UnsupportedInputError as error:
                results.append(_result(attn, backend, case.name, True, str(error), True))
            except Exception as error:  # noqa: BLE001 — a crash is a failed check
                results.append(_result(attn, backend, case.name, False,
                                       f"{type(error).__name__}: {error}"))
    return results


def _result(attn, backend: str, case: str, ok: bool, detail: str = "",
            refused: bool = False) -> verify.Result:
    detail = " ".join(line.strip() for line in detail.splitlines())
    return verify.Result("<fuzz>", attn.name, backend, case, ok, 0.0 if ok else math.inf,
                         "" if ok else "blockmask", detail, refused)


# --- the BlockMask at token level --------------------------------------------------------------
def _block_mask_result(module, attn, case: verify.Case, dtype, device,
                       seed: int) -> verify.Result:
    name = f"blockmask {case.name}"
    try:
        problem = check_block_mask(module, attn, case, dtype, device, seed)
    except (UnsupportedInputError, UnsupportedBackendError) as error:
        return _result(attn, "flex", name, True, str(error), refused=True)
    except Exception as error:  # noqa: BLE001 — a crash is a failed check
        return _result(attn, "flex", name, False, f"{type(error).__name__}: {error}")
    return _result(attn, "flex", name, problem is None, problem or "")


def check_block_mask(module, attn: ir.AttentionIR, case: verify.Case, dtype: torch.dtype,
                     device: str, seed: int) -> str | None:
    """None when the BlockMask flex builds for random inputs of `case` is sound, else what is
    wrong with it."""
    gen = torch.Generator().manual_seed(seed)
    instance = getattr(module, attn.name)(backend="flex").to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        for p in instance.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    args, inputs, sizes = verify.make_inputs(attn, case, dtype, device, gen)
    if attn.groups:
        sizes = _group_sizes(attn)
    with _capture_block_masks(module) as seen, torch.no_grad():
        instance(*args, **inputs, **({"sizes": sizes} if sizes else {}))
    if not seen:
        return "the flex backend never called flex_attention"
    state = {k: v.to(torch.float64) for k, v in instance.state_dict().items()}
    true = eager.evaluate_mask(attn, case.batch, case.q_len, case.kv_len, inputs, sizes or None,
                               state=state, device=device).cpu()
    if seen[-1] is None:  # no BlockMask: every pair must be attendable
        return None if true.all() else f"no BlockMask, but {_first(~true)} is masked"
    return block_mask_problem(seen[-1], true)


@contextlib.contextmanager
def _capture_block_masks(module) -> Iterator[list]:
    """The block_mask argument of every flex body the module runs while inside."""
    original, seen = module._flex_runner, []

    def runner(body, device):
        run = original(body, device)
        if not body.__name__.startswith("_flex_"):
            return run

        def call(*args, **kwargs):
            seen.append(args[3])  # (q, k, v, block_mask, ...): the generated body's signature
            return run(*args, **kwargs)
        return call

    module._flex_runner = runner
    try:
        yield seen
    finally:
        module._flex_runner = original


def block_mask_problem(block_mask, true: torch.Tensor) -> str | None:
    """Soundness of a BlockMask against the true token mask `[B, H, Sq, Sk]`: None, or the
    first problem found."""
    b, h, sq, sk = true.shape
    if tuple(block_mask.seq_lengths) != (sq, sk):
        return f"seq_lengths {tuple(block_mask.seq_lengths)} != {(sq, sk)}"
    bq, bk = block_mask.BLOCK_SIZE
    n_q, n_k = -(-sq // bq), -(-sk // bk)
    partial = _tiles(block_mask.kv_num_blocks, block_mask.kv_indices, n_k)
    full = _tiles(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, n_k)
    if partial.shape[-2] < n_q:
        return f"{partial.shape[-2]} query blocks listed, {n_q} needed"
    partial, full = (t[..., :n_q, :] for t in (partial, full))
    if (partial & full).any():
        return "a tile is listed both partial and full"
    listed = _tokens(partial | full, bq, bk, sq, sk)
    if (true & ~listed).any():
        return f"attendable pair in an unlisted tile at {_first(true & ~listed)}"
    over = _tokens(full, bq, bk, sq, sk) & ~true
    if over.any():
        return f"a full tile holds a masked pair at {_first(over)}"
    return _q_side_problem(block_mask, partial, full, n_q)


def _q_side_problem(block_mask, partial, full, n_q: int) -> str | None:
    """The backward reads the query-side lists: they must list the same tiles, transposed."""
    if block_mask.q_num_blocks is None:
        return None
    q_partial = _tiles(block_mask.q_num_blocks, block_mask.q_indices, n_q)
    q_full = _tiles(block_mask.full_q_num_blocks, block_mask.full_q_indices, n_q)
    n_k = partial.shape[-1]
    for kv_side, q_side, what in ((partial, q_partial, "partial"), (full, q_full, "full")):
        q_side = q_side[..., :n_k, :].transpose(-2, -1)
        if not torch.equal(*torch.broadcast_tensors(kv_side, q_side)):
            return f"the query-side {what} tile lists differ from the key-side ones"
    return None


def _tiles(num: torch.Tensor | None, idx: torch.Tensor | None, n: int) -> torch.Tensor:
    """Dense bool [B, H, rows, n] of the tiles listed by (num, idx); none listed if None."""
    if num is None or idx is None:
        return torch.zeros(1, 1, 1, n, dtype=torch.bool)
    num, idx = num.cpu().long(), idx.cpu().long()
    keep = torch.arange(idx.shape[-1]) < num[..., None]
    dense = torch.zeros(*idx.shape[:-1], max(n, int(idx.max()) + 1) + 1, dtype=torch.bool)
    dense.scatter_(-1, torch.where(keep, idx, dense.shape[-1] - 1), True)
    return dense[..., :n]


def _tokens(tiles: torch.Tensor, bq: int, bk: int, sq: int, sk: int) -> torch.Tensor:
    return tiles.repeat_interleave(bq, -2).repeat_interleave(bk, -1)[..., :sq, :sk]


def _first(bad: torch.Tensor) -> str:
    b, h, q, k = (int(i) for i in bad.nonzero()[0])
    return f"b={b}, h={h}, q={q}, k={k}"


# --- reporting ---------------------------------------------------------------------------------
def failures(results: list[verify.Result]) -> list[verify.Result]:
    return [r for r in results if not r.ok]


def report(text: str, results: list[verify.Result], seed: int, dtype: str = "float32") -> str:
    """A failure report: the failing rows, the seed and the spec text, ready for the corpus."""
    bad = failures(results)
    return (f"{len(bad)} of {len(results)} checks failed (input seed {seed}, {dtype}):\n"
            f"{verify.format_table(bad)}\n--- spec (save as tests/corpus/NAME.attn with a "
            f"comment saying what broke) ---\n{text}")
