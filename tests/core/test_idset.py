"""IdSet: a set of strings that moves to a SQLite file past its threshold."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headway._idset as idset_module
from headway._idset import Digests, IdSet

_ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "discard", "contains", "len"]),
        # a few ids (so that adds, discards and lookups meet), odd ones included
        st.sampled_from(["a", "b", "c", "d", "e", "f", "", "é", "\ud800", "x" * 300]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=_ops, threshold=st.integers(0, 6), buffer=st.integers(1, 5))
def test_behaves_like_a_set_across_the_spill(
    ops: list[tuple[str, str]], threshold: int, buffer: int
) -> None:
    model: set[str] = set()
    peak = 0
    with mock.patch.object(idset_module, "BUFFER", buffer), IdSet(threshold=threshold) as ids:
        for op, value in ops:
            if op == "add":
                ids.add(value)
                model.add(value)
                peak = max(peak, len(model))
            elif op == "discard":
                ids.discard(value)
                model.discard(value)
            elif op == "contains":
                assert (value in ids) == (value in model)
            else:
                assert len(ids) == len(model)
                assert bool(ids) == bool(model)
        assert len(ids) == len(model)
        assert all(value in ids for value in model)
        assert ids.spilled == (peak > threshold)


def test_small_sets_stay_in_memory() -> None:
    ids = IdSet(["a", "b"], threshold=2)
    assert not ids.spilled
    assert "a" in ids
    assert "z" not in ids
    assert len(ids) == 2
    assert repr(ids) == "<IdSet of 2 ids in memory>"
    ids.close()


def test_spills_to_an_unlinked_file_in_dir_and_close_drops_it(tmp_path: Path) -> None:
    ids = IdSet((f"id-{i}" for i in range(50)), threshold=10, dir=str(tmp_path))
    assert ids.spilled
    assert repr(ids) == "<IdSet of 50 ids on disk>"
    if os.name == "posix":  # unlinked at once: a killed process leaves nothing behind
        assert list(tmp_path.iterdir()) == []
    assert all(f"id-{i}" in ids for i in range(50))
    assert "id-50" not in ids
    assert 5 not in ids
    ids.close()
    ids.close()  # idempotent
    assert list(tmp_path.iterdir()) == []
    assert not ids.spilled
    assert len(ids) == 0
    assert "id-1" not in ids
    ids.add("again")  # usable as an empty set again
    assert len(ids) == 1
    ids.close()


def test_many_ids_through_the_buffer(tmp_path: Path) -> None:
    n = 3 * idset_module.BUFFER + 7
    with IdSet(threshold=100, dir=str(tmp_path)) as ids:
        for i in range(n):
            ids.add(str(i))
            ids.add(str(i))  # repeats are not counted twice
        assert len(ids) == n
        for i in range(0, n, 2):
            ids.discard(str(i))
        assert len(ids) == n // 2
        assert "1" in ids
        assert "0" not in ids
        assert str(n) not in ids


def test_threshold_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="threshold"):
        IdSet(threshold=-1)


def test_default_threshold_is_read_when_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idset_module, "SPILL_AT", 1)
    with IdSet(["a", "b"]) as ids:
        assert ids.spilled


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.lists(st.sampled_from(["d1", "d2", "d3", None]), min_size=1, max_size=2),
        max_size=30,
    ),
    st.sampled_from([0, 3, 1_000]),
)
@settings(max_examples=40)
def test_digests_answer_the_same_in_memory_and_spilled(
    recorded: dict[str, list[str | None]], spill_at: int
) -> None:
    with mock.patch.object(idset_module, "SPILL_AT", spill_at):
        d = Digests()
    try:
        for cid, digests in recorded.items():
            for digest in digests:
                d.add(cid, digest)
        assert bool(d) is any(x is not None for xs in recorded.values() for x in xs)
        for cid, digests in recorded.items():
            unsaid = None in digests  # a result that does not say: anything goes
            for digest in ("d1", "d2", "d3", None):
                assert d.answers(cid, digest) is (unsaid or (digest in digests)), (cid, digest)
    finally:
        d.close()
    assert not d
    d.close()  # idempotent
