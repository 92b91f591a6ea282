"""The examples in the package's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import attnspec

MODULES = sorted(m.name for m in pkgutil.walk_packages(attnspec.__path__, "attnspec.")
                 if m.name != "attnspec.pytest_plugin")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # an optional extra (e.g. matplotlib) is not installed
        pytest.skip(str(e))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
