"""headway._resources: the open-resource registry the leak guard reads."""

from __future__ import annotations

import gc

import pytest

from headway import _resources

pytestmark = pytest.mark.unit


class Weak:
    pass


class Slotted:
    __slots__ = ()


def test_track_untrack_is_idempotent() -> None:
    obj = Weak()
    _resources.track(obj)
    _resources.track(obj)
    assert _resources.open_resources().count(obj) == 1
    _resources.untrack(obj)
    _resources.untrack(obj)
    _resources.untrack(Weak())  # unknown: ignored
    assert obj not in _resources.open_resources()


def test_objects_without_weakref_support_are_held_until_untracked() -> None:
    obj = Slotted()
    _resources.track(obj)
    assert obj in _resources.open_resources()
    _resources.untrack(obj)
    assert obj not in _resources.open_resources()


def test_a_dropped_object_is_still_listed_while_watched() -> None:
    _resources.watch()
    try:
        _resources.track(Weak())
        gc.collect()
        leftovers = [o for o in _resources.open_resources() if type(o) is Weak]
        assert len(leftovers) == 1
        _resources.untrack(leftovers[0])
    finally:
        _resources.unwatch()
