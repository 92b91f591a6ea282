"""Package metadata (pyproject.toml) and the README's links."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_python_classifiers_match_requires_python():
    lowest = re.fullmatch(r">=3\.(\d+)", PROJECT["requires-python"])[1]
    versions = [int(c.rsplit(".", 1)[1]) for c in PROJECT["classifiers"]
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert versions and min(versions) == int(lowest)
    assert len(set(PROJECT["classifiers"])) == len(PROJECT["classifiers"])


def test_no_license_claim_beyond_the_files():
    """An SPDX string or a license classifier only with a LICENSE file (the owner's choice)."""
    has_file = any((ROOT / name).exists() for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"))
    if not has_file:
        assert not isinstance(PROJECT.get("license"), str)
        assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])


def test_readme_relative_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    relative = [link for link in links if "://" not in link]
    assert relative, "the README links the docs"
    assert [link for link in relative if not (ROOT / link).exists()] == []
