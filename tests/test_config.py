"""`[tool.attnspec]` in pyproject.toml (attnspec.config): found by walking up from the spec,
overridden by flags, unknown keys and bad values named with their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnspec.cli import main
from attnspec.config import ConfigError, find_config, parse_config

UNUSED_INPUT = "attention A {\n heads = 2\n head_dim = 4\n input doc: int[batch, seq]\n" \
               " mask causal\n}\n"


def _project(tmp_path: Path, table: str) -> Path:
    """A project with `table` under [tool.attnspec] and a spec two directories down."""
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "x"\n\n[tool.attnspec]\n{table}')
    spec = tmp_path / "specs" / "deep" / "a.attn"
    spec.parent.mkdir(parents=True)
    spec.write_text(UNUSED_INPUT)
    return spec


def test_found_by_walking_up_from_the_spec(tmp_path):
    spec = _project(tmp_path, 'backend = "sdpa"\ndtype = "bf16"\n')
    config = find_config(spec)
    assert (config.backend, config.dtype) == ("sdpa", "bf16")
    assert config.path == str((tmp_path / "pyproject.toml").resolve())


def test_a_pyproject_without_the_table_is_passed_over(tmp_path):
    spec = _project(tmp_path, 'dtype = "fp16"\n')
    (spec.parent / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    assert find_config(spec).dtype == "fp16"


@pytest.mark.parametrize(("table", "message"), [
    ('backned = "flex"\n', "pyproject.toml:5: unknown key `backned` in [tool.attnspec]; "
                           "did you mean `backend`?"),
    ('backend = "flax"\n', "pyproject.toml:5: [tool.attnspec] backend must be one of auto"),
    ('ignore = ["W999"]\n', "unknown code 'W999'"),
    ('ignore = ["E201"]\n', "E201 is an error: only warnings"),
    ('error = "W401"\n', "must be a list of warning codes"),
    ('dtype = "half"\n', "dtype must be one of float64"),
])
def test_bad_tables_are_errors_naming_key_and_line(tmp_path, table, message):
    with pytest.raises(ConfigError) as info:
        parse_config(f'[project]\nname = "x"\n\n[tool.attnspec]\n{table}', "pyproject.toml")
    assert message in str(info.value)


def test_a_bad_table_is_a_usage_error_on_the_command_line(tmp_path, capsys):
    spec = _project(tmp_path, 'output_format = "concise"\n')
    assert main(["check", str(spec)]) == 2
    assert "did you mean `output-format`?" in capsys.readouterr().err


def test_ignore_and_error_change_warnings(tmp_path, capsys):
    spec = _project(tmp_path, 'ignore = ["W401"]\n')
    assert main(["check", str(spec)]) == 0
    assert "W401" not in capsys.readouterr().err
    (tmp_path / "pyproject.toml").write_text('[tool.attnspec]\nerror = ["W401"]\n')
    assert main(["check", str(spec)]) == 1
    assert "error[W401]: input `doc` is never used" in capsys.readouterr().err
    assert main(["compile", str(spec), "-o", "-"]) == 1  # promoted: the spec does not build


def test_flags_override_the_table(tmp_path, capsys):
    spec = _project(tmp_path, 'backend = "sdpa"\noutput-format = "concise"\n')
    assert main(["compile", str(spec), "-o", "-"]) == 0
    assert "default backend sdpa" in capsys.readouterr().out
    assert main(["compile", str(spec), "-o", "-", "--backend", "eager"]) == 0
    assert "default backend eager" in capsys.readouterr().out
    assert main(["check", str(spec)]) == 0
    assert ": warning[W401]: input `doc`" in capsys.readouterr().out  # concise, on stdout
    assert main(["check", str(spec), "--output-format", "full"]) == 0
    assert "   input doc" in capsys.readouterr().err


def test_the_dtype_default_comes_from_the_table(tmp_path, monkeypatch):
    spec = _project(tmp_path, 'dtype = "float64"\n')
    seen = {}
    monkeypatch.setattr("attnspec.verify.run_cli",
                        lambda args, loaded, failures: seen.setdefault("dtype", args.dtype) and 0)
    main(["verify", str(spec), "--backend", "eager"])
    assert seen["dtype"] == "float64"
    seen.clear()
    main(["verify", str(spec), "--backend", "eager", "--dtype", "bf16"])
    assert seen["dtype"] == "bf16"


def test_an_unknown_dtype_flag_is_a_usage_error(capsys):
    assert main(["verify", "x.attn", "--dtype", "half"]) == 2
    assert "unknown dtype 'half'; use one of float64, float32" in capsys.readouterr().err


def test_invalid_toml_is_an_error_only_where_it_concerns_attnspec():
    assert parse_config("[project\nname = 1", "pyproject.toml") is None
    with pytest.raises(ConfigError, match="pyproject.toml: not valid TOML"):
        parse_config("[tool.attnspec]\nbackend = ", "pyproject.toml")
