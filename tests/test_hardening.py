"""Issue 20: a trusted cache directory, a whole-file expansion budget, validated constructor
overrides, and picklable modules from every `attnspec.load`."""

from __future__ import annotations

import io
import math
import os
import pickle
import time
import warnings
from pathlib import Path

import jinja2
import pytest
import torch

import attnspec
from attnspec import cache
from attnspec.codegen import emit
from attnspec.errors import AttnSpecError
from attnspec.grammar import parser
from attnspec.ir import expr_builder
from attnspec.ir.build import build_attention, build_text, macro_table

ROOT = Path(__file__).resolve().parent.parent
TEXT = "attention A {\n heads = 2\n mask causal\n}\n"


# --- 1. the cache directory is trusted before anything in it is loaded -------------------------
class _Planted:
    """Unpickling this writes MARKER: proof that a planted cache file was loaded."""

    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def _payload(marker: Path) -> bytes:
    planted = _Planted()
    planted.marker = str(marker)
    return pickle.dumps(planted)


def _fill_cache(root: Path) -> list[Path]:
    """Lark's and jinja2's cache files, written by a fresh parser and environment in `root`."""
    parser._parser.__wrapped__()
    emit._environment.__wrapped__().get_template(emit.TEMPLATE)
    files = sorted(root.glob("grammar-*.lark-cache")) + sorted(root.glob("__jinja2_*.cache"))
    assert len(files) == 2, files
    return files


def _plant(files: list[Path], marker: Path) -> None:
    """Replace each cache file with a pickle that writes `marker` when loaded (after jinja2's
    magic header, since jinja2 unpickles the checksum that follows it)."""
    for f in files:
        head = jinja2.bccache.bc_magic if f.name.startswith("__jinja2_") else b""
        f.write_bytes(head + _payload(marker))


def _load_caches() -> None:
    """What `attnspec check` / `compile` load, built fresh (the module-level memos aside)."""
    parser._parser.__wrapped__().parse(TEXT)
    emit._environment.__wrapped__().get_template(emit.TEMPLATE)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSPEC_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(cache, "_WARNED", set(), raising=False)
    return tmp_path / "c"


def test_the_planted_pickle_would_run(cache_root, tmp_path):
    """The test's own premise: loading the planted file does write the marker."""
    marker = tmp_path / "marker"
    pickle.loads(_payload(marker))
    assert marker.read_text() == "pwned"


def test_a_group_writable_directory_is_refused_and_nothing_in_it_loaded(cache_root, tmp_path):
    marker = tmp_path / "marker"
    _plant(_fill_cache(cache_root), marker)
    cache_root.chmod(0o775)
    with pytest.warns(UserWarning, match="writable by group or others") as record:
        assert cache.cache_dir() is None
        _load_caches()
    assert not marker.exists()
    assert "chmod go-w" in str(record[0].message) and str(cache_root) in str(record[0].message)


def test_the_refusal_warns_once(cache_root):
    cache_root.mkdir(mode=0o700)
    cache_root.chmod(0o777)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            assert cache.cache_dir() is None
    assert len(record) == 1


def test_a_directory_of_another_user_is_refused(cache_root, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    _plant(_fill_cache(cache_root), marker)
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 4242)
    with pytest.warns(UserWarning, match="owned by uid"):
        assert cache.cache_dir() is None
        _load_caches()
    assert not marker.exists()


def test_a_default_directory_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNSPEC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cache, "_WARNED", set(), raising=False)
    (tmp_path / "attnspec").mkdir(mode=0o777)
    (tmp_path / "attnspec").chmod(0o777)
    with pytest.warns(UserWarning):
        assert cache.cache_dir() is None
    (tmp_path / "attnspec").chmod(0o700)
    assert cache.cache_dir() == str(tmp_path / "attnspec")


def test_a_new_directory_is_private(cache_root):
    assert cache.cache_dir() == str(cache_root)
    assert cache_root.stat().st_mode & 0o077 == 0


def test_a_symlink_counts_as_its_target(cache_root, tmp_path):
    """A symlink is followed: used when its target is a private directory of this user."""
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    cache_root.symlink_to(target)
    assert cache.cache_dir() == str(cache_root)
    target.chmod(0o757)
    with pytest.warns(UserWarning, match="writable by group or others"):
        assert cache.cache_dir() is None


@pytest.mark.parametrize("kind", ["group-writable", "symlink", "other owner"])
def test_an_untrusted_file_in_a_trusted_directory_is_not_loaded(cache_root, tmp_path, kind):
    """A file planted while the directory was open (and left after `chmod go-w`) is skipped
    and replaced: both caches still work."""
    marker = tmp_path / "marker"
    files = _fill_cache(cache_root)
    for f in files:
        elsewhere = tmp_path / f"planted-{f.name}"
        _plant([f], marker)
        if kind == "group-writable":
            f.chmod(0o666)
        elif kind == "symlink":
            f.rename(elsewhere)
            f.symlink_to(elsewhere)
        elif os.geteuid() == 0:
            os.chown(f, 4242, 4242)
        else:
            pytest.skip("giving a file to another user needs root")
    _load_caches()
    assert not marker.exists()
    for f in files:  # rewritten as this user's private files
        assert not f.is_symlink() and f.stat().st_uid == os.geteuid()
        assert f.stat().st_mode & 0o022 == 0


def test_cache_files_are_private_and_reused(cache_root):
    files = _fill_cache(cache_root)
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)
    before = [f.stat().st_mtime_ns for f in files]
    _load_caches()
    assert [f.stat().st_mtime_ns for f in files] == before  # loaded, not rewritten


# --- 2. a whole file's macro expansion has a budget ----------------------------------------------
HEAD = "attention A {\n    heads = 2\n    head_dim = 8\n"


def doubling_lets(levels: int = 30, nested: bool = True) -> str:
    """`f(i)` uses `f(i-1)` twice: as `f(f(x))` (nested) or `f(x) + f(x)`."""
    lines = ["let f0(x) = x + x"]
    for i in range(1, levels + 1):
        body = f"f{i-1}(f{i-1}(x))" if nested else f"f{i-1}(x) + f{i-1}(x)"
        lines.append(f"let f{i}(x) = {body}")
    return "\n".join(lines) + "\n"


def failing_build(text: str) -> tuple[AttnSpecError, float]:
    start = time.perf_counter()
    with pytest.raises(AttnSpecError) as e:
        build_text(text, "blowup.attn")
    return e.value, time.perf_counter() - start


@pytest.mark.parametrize("nested", [True, False])
def test_a_doubling_let_chain_fails_fast_at_the_use(nested):
    text = doubling_lets(30, nested) + HEAD + "    bias f30(q - k) * 0.0\n}\n"
    error, seconds = failing_build(text)
    assert seconds < 2
    [d] = error.diagnostics
    assert f"expands to more than {expr_builder.MAX_EXPANDED_NODES} nodes" in d.message
    assert "`f30(...)`" in d.message and d.hint and "simplify" in d.hint
    assert (d.span.line, d.span.col) == (35, 10)  # the use, not somewhere inside the lets
    assert str(error).startswith("blowup.attn:35:10: error[E307]: ")


def test_many_expressions_under_the_cap_fail_on_the_file_budget():
    """Each bias is under the per-expression cap; together they pass the file's budget."""
    lets = doubling_lets(9, nested=False)
    macros = macro_table(parser.parse(lets), expr_builder.Diagnostics())
    bias = parser.parse(HEAD + "    bias f9(q - k) * 0.0\n}").attentions[0].body[-1].expr
    each = expr_builder.ExpansionSize(macros).of(bias)
    assert 10_000 < each < expr_builder.MAX_EXPANDED_NODES
    count = expr_builder.MAX_FILE_NODES // each + 5
    body = "    bias f9(q - k) * 0.0\n" * count
    error, seconds = failing_build(lets + HEAD + body + "}\n")
    assert seconds < 2
    [d] = error.diagnostics
    assert f"expands to more than {expr_builder.MAX_FILE_NODES} nodes" in d.message
    first_over = expr_builder.MAX_FILE_NODES // each + 1
    assert (d.span.line, d.span.col) == (10 + 3 + first_over, 10)


def test_the_budget_counts_every_attention_of_the_file():
    each = HEAD.replace("A {", "{name} {") + "    bias f9(q - k) * 0.0\n" * 10 + "}\n"
    attentions = "".join(each.replace("{name}", f"A{i}") for i in range(3))
    error, _ = failing_build(doubling_lets(9, nested=False) + attentions)
    assert "file expands to more than" in error.diagnostics[0].message


def shipped_specs() -> list[Path]:
    return sorted((ROOT / "specs").rglob("*.attn"))


@pytest.mark.parametrize("path", shipped_specs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_spec_builds_and_the_estimate_bounds_the_build(path):
    """The size the budget check computes up front is at least what the builder builds."""
    build_text(path.read_text(), str(path))
    file = parser.parse(path.read_text(), str(path))
    diags = expr_builder.Diagnostics()
    macros = macro_table(file, diags)
    budget = expr_builder.Budget()
    for attention in file.attentions:
        build_attention(attention, macros, diags, budget)
    size = expr_builder.ExpansionSize(macros)
    estimate = sum(size.of(e) for e in expr_builder.file_expressions(file))
    assert budget.spent <= estimate < expr_builder.MAX_FILE_NODES // 100


# --- 3. constructor overrides are validated -----------------------------------------------------
OVERRIDE_SPEC = "attention A {\n heads = 2\n head_dim = 8\n mask causal\n}\n"
FINITE = "must be a finite number, got"
DROPOUT = "must be a finite number in [0.0, 1.0), got"
POSITIVE = "must be a positive integer, got"


@pytest.mark.parametrize("name, value, expected", [
    ("scale", math.nan, FINITE), ("scale", math.inf, FINITE), ("scale", -math.inf, FINITE),
    ("scale", "0.1", FINITE), ("scale", True, FINITE), ("scale", None, FINITE),
    pytest.param("scale", 10 ** 400, FINITE, id="scale-10**400"),
    ("dropout", math.nan, DROPOUT), ("dropout", -0.1, DROPOUT), ("dropout", 1.5, DROPOUT),
    ("dropout", 1.0, DROPOUT), ("dropout", math.inf, DROPOUT), ("dropout", "0", DROPOUT),
    ("heads", 0, POSITIVE), ("head_dim", -1, POSITIVE), ("heads", True, POSITIVE),
    ("heads", "2", POSITIVE), ("heads", 2.5, POSITIVE), ("heads", math.nan, POSITIVE),
    ("heads", math.inf, POSITIVE),
])
def test_bad_overrides_raise_value_error_naming_them(name, value, expected):
    cls = attnspec.load(OVERRIDE_SPEC).A
    with pytest.raises(ValueError) as e:
        cls(**{name: value})
    assert str(e.value).startswith(f"{name} {expected} {value!r}")


def test_a_huge_int_size_is_a_value_error():
    with pytest.raises(ValueError, match="heads"):
        attnspec.load(OVERRIDE_SPEC).A(heads=10 ** 400, kv_heads=3)


@pytest.mark.parametrize("overrides", [{"scale": 0}, {"scale": -2.0}, {"dropout": 0},
                                       {"dropout": 0.999}, {"heads": 4.0}, {"head_dim": 16}])
def test_valid_overrides_are_kept(overrides):
    attn = attnspec.load(OVERRIDE_SPEC).A(**overrides)
    for name, value in overrides.items():
        assert getattr(attn, name) == value


# --- 4. modules from any load pickle --------------------------------------------------------
LAYER = "attention L {\n dim = 16\n heads = 2\n mask causal\n bias -0.1 * abs(q - k)\n}\n"


def _kernel_args():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 5, 8, generator=gen) for _ in range(3)]


def _layer_args():
    return [torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))]


def test_instances_from_every_load_pickle_and_round_trip():
    loads = [(attnspec.load(OVERRIDE_SPEC).A, _kernel_args) for _ in range(3)]
    loads += [(attnspec.load(LAYER).L, _layer_args) for _ in range(2)]
    loads.append((attnspec.load(OVERRIDE_SPEC, backend="eager").A, _kernel_args))
    for cls, args in loads:
        attn = cls()
        expected = attn(*args())
        again = pickle.loads(pickle.dumps(attn))
        assert type(again) is type(attn)
        torch.testing.assert_close(again(*args()), expected, rtol=0, atol=0)
        buffer = io.BytesIO()
        torch.save(attn, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        torch.testing.assert_close(loaded(*args()), expected, rtol=0, atol=0)


def test_a_second_load_of_the_same_text_is_the_same_module():
    first = attnspec.load(OVERRIDE_SPEC)
    assert attnspec.load(OVERRIDE_SPEC) is first
    assert attnspec.load(OVERRIDE_SPEC, backend="eager") is not first
    assert attnspec.load(OVERRIDE_SPEC.replace("heads = 2", "heads = 4")) is not first
