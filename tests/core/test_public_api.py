import importlib

import pytest

import headway


def test_every_public_name_resolves_and_is_documented() -> None:
    for name in headway.__all__:
        value = getattr(headway, name)
        if callable(value) and not name.startswith("_"):
            assert value.__doc__, f"headway.{name} has no docstring"
    assert set(headway.__all__) <= set(dir(headway))


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        headway.nope  # noqa: B018


def test_lazy_names_are_the_submodule_objects() -> None:
    policy_module = importlib.import_module("headway.resilience.policy")
    assert headway.Policy is policy_module.Policy
    assert headway.__version__
