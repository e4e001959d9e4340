"""Every example in headway's docstrings runs as part of the suite."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import headway

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(headway.__path__, prefix="headway.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{name} needs an optional dependency: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
