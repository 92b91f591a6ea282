"""The cross-call caches (flex BlockMasks, flash-attn's cu_seqlens) cannot be fooled by a write
that leaves `_version` alone, by inference tensors (which have no `_version`) or by
torch.compile tracing (issue 20, item 3).

On CPU the uncompiled flex_attention ignores a BlockMask's tile lists, so a stale BlockMask
does not change the output here: the tests expand the BlockMask the way the CUDA kernels read
it (skipped tiles, full tiles without `mask_mod`, partial tiles with it) and compare that mask
with the interpreter's. flash-attn cannot run on CPU: its runtime functions are tested directly.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from runtimes import load_runtime
from torch.nn.attention.flex_attention import create_mask
from torch.utils import dlpack

import attnspec
from attnspec import eager, verify
from attnspec.errors import UnsupportedInputError

ROOT = Path(__file__).resolve().parent.parent
B, S, BLOCK = 2, 300, 128  # three tiles per side, the last one partial


def kernel_spec(lines: str) -> str:
    return f"attention T {{\n heads = 2\n head_dim = 16\n {lines}\n}}\n"


def split(*bounds) -> torch.Tensor:
    """Document ids [B, S]: row b changes document at each position of bounds[b]."""
    ids = torch.zeros(B, S, dtype=torch.long)
    for row, cuts in enumerate(bounds):
        for cut in cuts:
            ids[row, cut:] += 1
    return ids


# spec, input name, values before and after the write (the write turns full tiles partial or
# empty, so a stale BlockMask would skip `mask_mod` where it must not)
CASES = {
    "documents": (kernel_spec("input doc: int[batch, seq]\n mask causal & same(doc)"), "doc",
                  split((), ()), split((100, 190), (5, 140, 260))),
    "lengths": (kernel_spec("input lengths: int[batch]\n mask key_len(lengths)"), "lengths",
                torch.tensor([S, S]), torch.tensor([50, 200])),
}


# --- writes that do not move `_version` -------------------------------------------------------
def numpy_write(values):
    array = values.numpy().copy()

    def write(new):
        array[...] = new.numpy()
    return torch.from_numpy(array), write


def data_index_write(values):
    tensor = values.clone()

    def write(new):
        tensor.data[...] = new
    return tensor, write


def data_copy_write(values):
    tensor = values.clone()

    def write(new):
        tensor.data.copy_(new)
    return tensor, write


def dlpack_write(values):
    tensor = values.clone()

    def write(new):
        dlpack.from_dlpack(dlpack.to_dlpack(tensor))[...] = new
    return tensor, write


WRITES = {"numpy": numpy_write, "data[...]": data_index_write, "data.copy_": data_copy_write,
          "dlpack": dlpack_write}


# --- helpers --------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():  # flex on CPU: "called without torch.compile()"
        warnings.simplefilter("ignore", UserWarning)
        yield


def fresh(spec):
    """The module of `spec` with empty caches (`attnspec.load` returns one module per spec)."""
    module = attnspec.load(spec)
    module._FLEX_MASKS.clear()
    getattr(module, "_ALIBI_TENSORS", {}).clear()
    return module


def block_masks_seen(module, monkeypatch) -> list:
    """The BlockMask of every flex call the module makes from now on."""
    seen, run = [], module._flex_run

    def spy(body, args, captured, fast):
        seen.append(args[3])
        return run(body, args, captured, fast)

    monkeypatch.setattr(module, "_flex_run", spy)
    return seen


def tiles(num, idx, n_k):
    """Dense bool [B, H, nQ, nK] of the tiles a (num, idx) pair lists."""
    keep = torch.arange(idx.shape[-1]) < num[..., None].long()
    dense = torch.zeros(*idx.shape[:-1], n_k + 1, dtype=torch.bool)
    dense.scatter_(-1, torch.where(keep, idx.long(), n_k), True)
    return dense[..., :n_k].repeat_interleave(BLOCK, -2).repeat_interleave(BLOCK, -1)


def kernel_mask(block_mask, heads):
    """The mask the CUDA kernels apply for this BlockMask [B, H, S, S]: full tiles attend every
    pair, partial tiles what `mask_mod` says, skipped tiles nothing."""
    n_k = block_mask.kv_indices.shape[-1]
    full = tiles(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, n_k)[..., :S, :S]
    partial = tiles(block_mask.kv_num_blocks, block_mask.kv_indices, n_k)[..., :S, :S]
    mod = create_mask(block_mask.mask_mod, B, heads, S, S, device="cpu")
    return (full | (partial & mod)).expand(B, heads, S, S)


def qkv():
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(B, 2, S, 16, generator=gen) for _ in range(3))


# --- flex: a write that keeps `_version` rebuilds the BlockMask --------------------------------
@pytest.mark.parametrize("how", WRITES)
@pytest.mark.parametrize("case", CASES)
def test_a_write_that_keeps_the_version_rebuilds_the_block_mask(case, how, monkeypatch):
    spec, name, before, after = CASES[case]
    module, attn = fresh(spec), attnspec.build(spec).attentions[0]
    seen = block_masks_seen(module, monkeypatch)
    layer = module.T(backend="flex")
    q, k, v = qkv()
    tensor, write = WRITES[how](before)
    with torch.no_grad():
        layer(q, k, v, **{name: tensor})
        layer(q, k, v, **{name: tensor})
        assert seen[1] is seen[0]  # unchanged: every layer reuses the BlockMask
        version = tensor._version
        write(after)
        assert torch.equal(tensor, after) and tensor._version == version  # the premise
        out = layer(q, k, v, **{name: tensor})
    assert seen[2] is not seen[0], "the stale BlockMask was reused"
    want = eager.evaluate_mask(attn, B, S, S, {name: after})
    assert torch.equal(kernel_mask(seen[2], layer.heads), want)
    ref = eager.run(attn, {}, q.double(), k.double(), v.double(), inputs={name: after})
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_torch_compile_builds_the_block_mask_in_the_graph(case):
    """Under torch.compile the caches are neither read nor filled: the builder runs in the
    graph on each call's values (dynamo's eager backend: no inductor on CPU)."""
    spec, name, before, after = CASES[case]
    module, attn = fresh(spec), attnspec.build(spec).attentions[0]
    layer = module.T(backend="flex")
    compiled = torch.compile(layer, backend="eager")
    q, k, v = qkv()
    array = before.numpy().copy()
    with torch.no_grad():
        compiled(q, k, v, **{name: torch.from_numpy(array)})
        array[...] = after.numpy()
        out = compiled(q, k, v, **{name: torch.from_numpy(array)})
    assert not module._FLEX_MASKS
    ref = eager.run(attn, {}, q.double(), k.double(), v.double(), inputs={name: after})
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_large_tensors_are_not_cached():
    """Over 1M elements a copy and a compare would cost about what a build does."""
    module = fresh(CASES["documents"][0])
    large, small = torch.zeros((1 << 20) + 1), torch.zeros(1 << 20)
    for tensor in (large, large, small, small):
        module._cached_block_mask("what", 1, 1, "cpu", (tensor,), object)
    assert len(module._FLEX_MASKS) == 1


# --- inference mode: every flex spec with tensor inputs ----------------------------------------
def flex_attentions_with_inputs():
    found = []
    for path in sorted(ROOT.glob("specs/**/*.attn")):
        for attn in attnspec.build(path).attentions:
            if attn.inputs:
                found.append(pytest.param(path, attn.name,
                                          id=f"{path.relative_to(ROOT / 'specs')}:{attn.name}"))
    return found


LOADED: dict = {}


@pytest.mark.parametrize("path, name", flex_attentions_with_inputs())
def test_flex_and_sdpa_run_under_inference_mode(path, name):
    if path not in LOADED:
        LOADED[path] = (attnspec.build(path), attnspec.load(path))
    module_ir, module = LOADED[path]
    attn = next(a for a in module_ir.attentions if a.name == name)
    cls = getattr(module, name)
    backends = [b for b in ("flex", "sdpa") if b in cls.BACKENDS]
    if "flex" not in backends:
        pytest.skip("no flex backend")
    case = verify.cases_for(attn)[0]
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():  # the inputs are inference tensors too
        args, inputs, sizes = verify.make_inputs(attn, case, torch.float32, "cpu", gen)
        reference = cls(backend="eager")
        want = reference(*args, **inputs, **({"sizes": sizes} if sizes else {}))
        for backend in backends:
            layer = cls(backend=backend)
            layer.load_state_dict(reference.state_dict())
            for _ in range(2):  # a miss, then a hit of the caches
                got = layer(*args, **inputs, **({"sizes": sizes} if sizes else {}))
                torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_block_masks_of_inference_mode_are_kept_apart():
    """Their tensors cannot be saved for a backward outside inference mode."""
    spec, name, before, _ = CASES["documents"]
    module = fresh(spec)
    build = module._block_lists_T
    with torch.inference_mode():
        inside = module._structured_block_mask(build, None, B, S, S, before.device, (before,))
    outside = module._structured_block_mask(build, None, B, S, S, before.device, (before,))
    assert outside is not inside and not outside.kv_indices.is_inference()


def test_alibi_slopes_of_inference_mode_are_kept_apart():
    module = fresh(kernel_spec("mask causal\n bias alibi"))
    with torch.inference_mode():
        inside = module._alibi_tensor(2, torch.float32, torch.device("cpu"))
    outside = module._alibi_tensor(2, torch.float32, torch.device("cpu"))
    assert inside.is_inference() and not outside.is_inference()
    assert torch.equal(inside, outside)


# --- flash-attn's remembered cu_seqlens and document checks (runtime functions) ----------------
@pytest.fixture()
def flash():
    return load_runtime("flash")


@pytest.mark.parametrize("how", WRITES)
def test_flash_runs_follow_a_write_that_keeps_the_version(flash, how):
    before, after = CASES["documents"][2:]
    tensor, write = WRITES[how](before)
    first = flash._flash_runs(tensor, B, S, tensor.device)
    assert flash._flash_runs(tensor, B, S, tensor.device) is first  # remembered
    write(after)
    cu, longest = flash._flash_runs(tensor, B, S, tensor.device)
    want_cu, want_longest = flash._flash_id_runs(after, B, S, after.device)
    assert torch.equal(cu, want_cu) and longest == want_longest


@pytest.mark.parametrize("how", WRITES)
def test_flash_document_check_follows_a_write_that_keeps_the_version(flash, how):
    sorted_ids = CASES["documents"][3]
    unsorted = sorted_ids.flip(-1)
    tensor, write = WRITES[how](sorted_ids)
    flash._flash_check_documents("T", "doc", tensor)  # sorted: accepted, and remembered
    write(unsorted)
    with pytest.raises(UnsupportedInputError, match="non-decreasing"):
        flash._flash_check_documents("T", "doc", tensor)


def test_flash_runtime_under_inference_mode(flash):
    before, after = CASES["documents"][2:]
    with torch.inference_mode():
        ids = after.clone()
        flash._flash_check_documents("T", "doc", ids)
        cu, longest = flash._flash_runs(ids, B, S, ids.device)
        assert flash._flash_runs(ids, B, S, ids.device)[0] is cu  # remembered by contents
        ids.copy_(before)  # inference tensors have no version: the contents decide
        cu, longest = flash._flash_runs(ids, B, S, ids.device)
    want_cu, want_longest = flash._flash_id_runs(before, B, S, before.device)
    assert torch.equal(cu, want_cu) and longest == want_longest
