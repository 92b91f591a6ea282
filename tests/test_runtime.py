"""The runtime package (attnspec/runtime), imported as an ordinary package: a few real checks
per module, and its boundary (it imports torch and the standard library only, never the
compiler; importing it costs no torch)."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnspec.errors
from attnspec.runtime import MODULES, checks, core, edges, errors, groups, positions, sdpa, source
from attnspec.runtime import flash as flash_rt
from attnspec.runtime import flex as flex_rt

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "attnspec" / "runtime"
CPU = torch.device("cpu")


# --- the boundary --------------------------------------------------------------------------------
def imports_of(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import in the file, at any depth (lazy imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
    return found


@pytest.mark.parametrize("path", sorted(RUNTIME.glob("*.py")), ids=lambda p: p.stem)
def test_runtime_imports_nothing_of_the_compiler(path):
    """Only torch, the standard library, flash-attn and triton (lazily, inside functions) and
    the runtime's own modules (relative imports): generated modules inline this code verbatim."""
    for module, level in imports_of(path):
        root = module.split(".")[0]
        if level:
            assert level == 1, (path.name, module)  # a sibling runtime module
            continue
        allowed = root in sys.stdlib_module_names or root in ("torch", "flash_attn", "triton")
        assert allowed, (path.name, module)
        assert root != "attnspec", (path.name, module)


@pytest.mark.parametrize("module", MODULES)
def test_runtime_functions_are_typed_and_documented(module):
    """Every top-level function: annotated arguments and result, and a docstring (standalone
    modules inline them: the reader of a generated module sees these)."""
    for node in source.tree(module).body:
        if isinstance(node, ast.FunctionDef):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            assert node.returns is not None and all(a.annotation for a in args), node.name
            assert ast.get_docstring(node), node.name


def test_modules_lists_every_runtime_module():
    on_disk = {p.stem for p in RUNTIME.glob("*.py")} - {"__init__", "source"}
    assert set(MODULES) == on_disk


def test_importing_the_runtime_package_imports_no_torch():
    """`attnspec compile` reads the runtime as text: the package and its `source` and `errors`
    modules import no torch (the CLI's compile must not)."""
    code = ("import sys; import attnspec.runtime, attnspec.runtime.source, "
            "attnspec.runtime.errors, attnspec.errors; "
            "assert attnspec.runtime.source.top_level_names(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_top_level_names_bound_once_across_the_runtime():
    """Each name the runtime defines lives in one module (imports aside): a name reaches one
    definition, whichever module a generated module takes it from."""
    seen: dict[str, str] = {}
    for module in MODULES:
        for stmt in source.tree(module).body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                continue
            for name in source.bound_names(stmt):
                assert seen.setdefault(name, module) == module, (name, seen[name], module)


# --- errors --------------------------------------------------------------------------------------
def test_attnspec_errors_reexports_the_runtime_classes():
    assert attnspec.errors.UnsupportedBackendError is errors.UnsupportedBackendError
    assert attnspec.errors.UnsupportedInputError is errors.UnsupportedInputError
    assert attnspec.UnsupportedBackendError is errors.UnsupportedBackendError
    assert issubclass(errors.UnsupportedInputError, ValueError)
    with pytest.raises(attnspec.errors.UnsupportedInputError):
        flash_rt._flash_library(CPU)  # raised by the runtime, caught as the compiler's


# --- checks --------------------------------------------------------------------------------------
def test_select_backend_names_every_reason():
    assert checks._select_backend("A", "sdpa", ("eager", "sdpa"), {}) == "sdpa"
    assert checks._select_backend("A", "auto", ("eager",), {}) == "auto"
    with pytest.raises(errors.UnsupportedBackendError, match="- no masks\n  - no windows"):
        checks._select_backend("A", "flash", ("eager",), {"flash": ("no masks", "no windows")})
    with pytest.raises(errors.UnsupportedBackendError, match="unknown backend 'fast'"):
        checks._select_backend("A", "fast", ("eager",), {})


@pytest.mark.parametrize("value, ok", [(4, 4), (4.0, 4), (True, None), (0, None), (2.5, None),
                                       ("4", None)])
def test_int_setting(value, ok):
    if ok is None:
        with pytest.raises(ValueError, match="heads must be a positive integer"):
            checks._int_setting("heads", value)
    else:
        assert checks._int_setting("heads", value) == ok and type(ok) is int


def test_float_setting_refuses_nan_infinity_and_the_upper_bound():
    assert checks._float_setting("dropout", 0, 0.0, 1.0) == 0.0
    for bad in (math.nan, math.inf, 1.0, -0.5, 10**400):
        with pytest.raises(ValueError, match=r"dropout must be a finite number in \[0.0, 1.0\)"):
            checks._float_setting("dropout", bad, 0.0, 1.0)


def test_check_tensor_names_input_shape_dtype_and_device():
    ids = checks._check_tensor("ids", torch.zeros(2, 5, dtype=torch.int32), "int", ("B", "S"),
                               (2, None), CPU)
    assert ids.dtype == torch.int64
    with pytest.raises(ValueError, match=r"ids: expected shape \[B, S\] = \[2, 5\], got \[2, 4\]"):
        checks._check_tensor("ids", torch.zeros(2, 4), "int", ("B", "S"), (2, 5))
    with pytest.raises(ValueError, match="expected an int tensor, got dtype torch.float32"):
        checks._check_tensor("ids", torch.zeros(2), "int", ("B",), (2,))
    with pytest.raises(ValueError, match="ids: missing input"):
        checks._check_tensor("ids", None, "int", ("B",), (2,))
    with pytest.raises(ValueError, match="expected a tensor on meta"):
        checks._check_tensor("ids", torch.zeros(2), "float", ("B",), (2,), torch.device("meta"))


def test_read_checks_every_index_against_the_table():
    table = torch.arange(6.0).view(2, 3)
    assert checks._read(table, "t", torch.tensor([1]), torch.tensor([2])).tolist() == [5.0]
    with pytest.raises(ValueError, match=r"t: index range \[0, 3\] is outside dimension 1"):
        checks._read(table, "t", 0, torch.tensor([0, 3]))
    assert checks._read(table, "t", torch.zeros(0, dtype=torch.long), 0).numel() == 0


def test_unexpected_keywords_suggest_the_closest():
    with pytest.raises(ValueError, match=r"'documnets' \(did you mean 'documents'\?\)"):
        checks._check_unexpected("A", {"documnets": 1}, ("q", "k", "v", "documents"))


# --- groups and edges ----------------------------------------------------------------------------
def test_token_groups_fill_the_one_open_size():
    declared = (("image", 4), ("text", None), ("pad", 1))
    assert groups._token_groups(declared, None, 10, 10) == {
        "image": range(0, 4), "text": range(4, 9), "pad": range(9, 10)}
    with pytest.raises(ValueError, match="add up to 7, but the sequence has 10"):
        groups._token_groups(declared, {"text": 2}, 10, 10)
    with pytest.raises(ValueError, match=r"unknown token group\(s\) \['txt'\]"):
        groups._token_groups(declared, {"txt": 2}, 10, 10)
    x = torch.arange(6)
    assert groups._in_group(x, range(2, 4)).tolist() == [False, False, True, True, False, False]


def test_edge_tables_last_duplicate_wins_and_distances_clamp():
    index = torch.tensor([[0, 0, 1], [1, 1, 0]])
    t = edges._edge_tables("g", index, torch.tensor([0, 1, 1]), torch.tensor([9, 5, 1]), 2, 3,
                           CPU, types=2, max_distance=4, self_loops=True)
    assert t.edge.tolist() == [[True, True, False], [True, True, False]]
    assert t.type.tolist() == [[0, 1, 0], [1, 0, 0]]
    assert t.distance.tolist() == [[0, 3, 0], [1, 0, 0]]  # 5 clamped to max_distance - 1
    with pytest.raises(ValueError, match="g_type: edge types must be in"):
        edges._edge_tables("g", index, torch.tensor([0, 2, 1]), None, 2, 3, CPU, types=2,
                           max_distance=4, self_loops=False)


# --- positions -----------------------------------------------------------------------------------
def test_alibi_slopes_for_a_non_power_of_two():
    assert positions._alibi_slopes(2) == [2.0**-4, 2.0**-8]
    # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads
    assert positions._alibi_slopes(6) == [2.0 ** (-8 * i / 4) for i in (1, 2, 3, 4)] + [
        2.0**-1, 2.0**-3]
    t = positions._alibi_tensor(6, torch.float64, CPU)
    assert positions._alibi_tensor(6, torch.float64, CPU) is t  # made once
    assert positions._alibi_slope(torch.tensor([0, 5]), 6, torch.float64).tolist() == [
        t[0].item(), t[5].item()]


def test_t5_buckets_are_monotone_and_symmetric_in_kind():
    rel = torch.arange(-200, 201)
    buckets = positions._t5_bucket(rel, 32, 128, True)
    assert buckets[200].item() == 0 and buckets.max().item() == 31
    past, future = buckets[:200].flip(0), buckets[201:]
    assert torch.equal(future - 16, past)  # future positions take the upper half
    causal = positions._t5_bucket(rel, 32, 128, False)
    assert (causal[201:] == 0).all() and (causal[:200].diff() <= 0).all()


def test_rope_rotates_pairs_and_keeps_norms():
    x = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    angles = positions._rope_angles(torch.arange(5), 10000.0, 4, torch.float64)
    assert angles.shape == (1, 1, 5, 2)
    for interleaved in (False, True):
        y = positions._rope(x, angles, 4, interleaved)
        assert torch.equal(y[..., 4:], x[..., 4:])  # channels past `dims` pass unchanged
        assert torch.allclose(y[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1))
        assert torch.equal(y[:, :, 0], x[:, :, 0])  # position 0: angle 0


def test_sinusoidal_and_rms_norm():
    pe = positions._sinusoidal(4, 6, torch.float64, CPU)
    assert pe[0].tolist() == [0.0, 1.0] * 3
    assert pe[3, 0].item() == pytest.approx(math.sin(3))
    x = torch.randn(3, 8, dtype=torch.float64)
    y = positions._rms_norm(x, torch.ones(8, dtype=torch.float64))
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, dtype=torch.float64), atol=1e-5)


# --- core and sdpa -------------------------------------------------------------------------------
def test_compute_dtype_and_index_grids():
    assert core._compute_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32
    assert core._compute_dtype(torch.zeros(1, dtype=torch.float64)) == torch.float64
    b, h, q, k = core._index_grids(2, 3, 4, 5, CPU)
    assert (b + h + q + k).shape == (2, 3, 4, 5)


def test_softmax_rows_empty_rows_and_sinks():
    score = torch.tensor([[[[0.0, 0.0], [-math.inf, -math.inf]]]], requires_grad=True)
    probs = core._softmax_rows(score)
    assert probs.tolist() == [[[[0.5, 0.5], [0.0, 0.0]]]]
    probs.sum().backward()
    assert torch.isfinite(score.grad).all()
    sunk = core._softmax_rows(torch.zeros(1, 1, 1, 2, dtype=torch.float64), torch.zeros(1))
    torch.testing.assert_close(sunk, torch.full((1, 1, 1, 2), 1 / 3, dtype=torch.float64))


def test_sdpa_masked_matches_a_dense_softmax_and_zeroes_empty_rows():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(1, 2, 4, 4, generator=gen) > 0.4
    mask[0, 0, 1] = False  # a row with nothing to attend
    out = sdpa._sdpa_masked(q, k, v, mask, scale=0.5)
    score = (0.5 * q @ k.transpose(-2, -1)).masked_fill(~mask, -math.inf)
    want = core._softmax_rows(score) @ v
    torch.testing.assert_close(out, want)
    assert (out[0, 0, 1] == 0).all()


def test_sdpa_patterns_tile_the_queries():
    """Two groups, each attending itself: one call per pattern equals the masked call."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 6, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    ranges = {"a": range(0, 2), "b": range(2, 6)}
    assert sdpa._runs(ranges, ("b", "a")) == [(0, 6)]
    out = sdpa._sdpa_patterns(q, k, v, ranges, ((("a",), ("a",)), (("b",), ("b",))))
    block = torch.zeros(6, 6, dtype=torch.bool)
    block[:2, :2] = block[2:, 2:] = True
    torch.testing.assert_close(out, sdpa._sdpa_masked(q, k, v, block))


# --- flex and flash (their builders and packing have their own test files) -----------------------
def test_flex_band_blocks_of_causal():
    """k - q <= 0: diagonal tiles partial, tiles below full, tiles above skipped (also with a
    short last block)."""
    for length in (256, 200):
        classes = flex_rt._band_blocks(length, length, None, 0, False, 128, CPU)
        assert classes.tolist() == [[1, 0], [2, 1]]


def test_flex_pad_head_dim_and_spread():
    x = torch.ones(1, 1, 2, 8)
    assert flex_rt._pad_head_dim(x, 16).shape[-1] == 16 and flex_rt._pad_head_dim(x, 4) is x
    table = torch.randn(3, 4, requires_grad=True)
    spread = flex_rt._spread(table, replicas=8)
    assert spread.shape == (3, 4, 8) and torch.equal(spread[..., 5], table)
    spread.sum().backward()
    assert (table.grad == 8).all()  # every copy's gradient sums back


def test_flash_window_alignment_and_refusal():
    assert flash_rt._flash_window("A", None, 0, True, 4, 6) == (None, 0)
    assert flash_rt._flash_window("A", -3, 0, False, 4, 4) == (3, 0)
    with pytest.raises(errors.UnsupportedInputError, match="window_size"):
        flash_rt._flash_window("A", None, 0, False, 4, 6)  # top-left causal, Sq < Sk
