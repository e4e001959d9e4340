"""The reservation rule (Python twin of the Lua script): invariants under Hypothesis."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headway import ManualClock
from headway.backends._model import Bucket, LocalBuckets, reserve

EPS = 1e-6

limit_st = st.tuples(
    st.floats(0.5, 50.0),  # rate per time unit
    st.floats(1.0, 20.0),  # capacity
)


@dataclass
class Admitted:
    at: float
    amounts: list[float]


op_st = st.one_of(
    st.tuples(st.just("reserve"), st.floats(0.0, 2.0), st.floats(0.0, 1.0), st.floats(0, 1)),
    st.tuples(st.just("cancel"), st.floats(0.0, 0.5), st.integers(0, 50), st.just(0.0)),
    st.tuples(st.just("pause"), st.floats(0.0, 0.5), st.floats(0.0, 3.0), st.just(0.0)),
    st.tuples(st.just("maxwait"), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0, 2)),
)


def _run(
    limits: list[tuple[float, float]], ops: list[tuple[str, float, float, float]]
) -> tuple[list[Bucket], list[Admitted]]:
    buckets = [Bucket(rate=r, capacity=c) for r, c in limits]
    now = 0.0
    admitted: list[Admitted] = []
    for kind, dt, a, b in ops:
        now += dt
        if kind in ("reserve", "maxwait"):
            # amounts: a fraction of each capacity (never above it)
            amounts = [c * (a if i == 0 else min(b, 1.0)) for i, (_, c) in enumerate(limits)]
            max_wait = b if kind == "maxwait" else None
            before = [(x.level, x.start) for x in buckets]
            ok, wait = reserve(buckets, now, amounts, max_wait=max_wait)
            assert wait >= 0
            if ok:
                admitted.append(Admitted(now + wait, amounts))
            else:
                assert max_wait is not None
                assert wait > max_wait
                # nothing reserved: the levels are those of a zero reservation
                probe = [
                    Bucket(x.rate, x.capacity, lv, t)
                    for x, (lv, t) in zip(buckets, before, strict=True)
                ]
                reserve(probe, now, [0.0] * len(buckets))
                for p, x in zip(probe, buckets, strict=True):
                    assert p.level == pytest.approx(x.level, abs=EPS)
        elif kind == "cancel":
            pending = [x for x in admitted if x.at > now]
            if pending:
                victim = pending[int(a) % len(pending)]
                admitted.remove(victim)
                reserve(buckets, now, [0.0] * len(buckets), cancels=[(victim.at, victim.amounts)])
        else:  # pause
            shifts = [x.shift for x in buckets]
            reserve(buckets, now, [0.0] * len(buckets), pause=a)
            delta = max(x.shift - s for x, s in zip(buckets, shifts, strict=True))
            for waiter in admitted:  # waiters still waiting move back by the pause
                if waiter.at > now:
                    waiter.at += delta
    return buckets, admitted


@given(st.lists(limit_st, min_size=1, max_size=3), st.lists(op_st, max_size=40))
def test_no_window_admits_more_than_capacity_plus_rate_times_length(
    limits: list[tuple[float, float]], ops: list[tuple[str, float, float, float]]
) -> None:
    _, admitted = _run(limits, ops)
    admitted.sort(key=lambda x: x.at)
    for i, (rate, cap) in enumerate(limits):
        for j in range(len(admitted)):
            total = 0.0
            for k in range(j, len(admitted)):
                total += admitted[k].amounts[i]
                window = admitted[k].at - admitted[j].at
                assert total <= cap + rate * window + 1e-6 * (1 + total)


@given(
    limit_st,
    st.lists(st.tuples(st.floats(0.0, 0.3), st.floats(0.0, 1.0)), min_size=1, max_size=40),
)
def test_later_callers_never_go_first_whatever_their_weight(
    limit: tuple[float, float], calls: list[tuple[float, float]]
) -> None:
    rate, cap = limit
    buckets = [Bucket(rate=rate, capacity=cap)]
    now = 0.0
    last = -1.0
    for dt, frac in calls:
        now += dt
        _, wait = reserve(buckets, now, [cap * frac])
        assert now + wait >= last - EPS  # FIFO: admission times never go backwards
        last = now + wait


def test_a_large_request_is_not_starved_by_small_ones() -> None:
    buckets = [Bucket(rate=100.0, capacity=100.0)]
    reserve(buckets, 0.0, [100.0])  # empty the bucket
    _, big = reserve(buckets, 0.0, [50.0])
    small_waits = [reserve(buckets, 0.001 * i, [1.0])[1] + 0.001 * i for i in range(1, 200)]
    assert big == pytest.approx(0.5)
    assert min(small_waits) >= big  # nobody overtakes the large request


def test_refunds_never_lift_a_level_above_capacity_and_charges_make_debt() -> None:
    buckets = [Bucket(rate=1.0, capacity=10.0)]
    reserve(buckets, 0.0, [0.0], adjusts=[5.0])
    assert buckets[0].level == 10.0
    reserve(buckets, 0.0, [0.0], adjusts=[-15.0])
    assert buckets[0].level == -5.0
    ok, wait = reserve(buckets, 0.0, [1.0])
    assert ok
    assert wait == pytest.approx(6.0)


def test_a_level_cap_lowers_and_never_raises() -> None:
    buckets = [Bucket(rate=1.0, capacity=10.0)]
    reserve(buckets, 0.0, [0.0], level_caps=[3.0])
    assert buckets[0].level == 3.0
    reserve(buckets, 0.0, [0.0], level_caps=[8.0])
    assert buckets[0].level == 3.0


def test_a_pause_admits_nobody_before_its_end_and_restarts_empty() -> None:
    buckets = [Bucket(rate=10.0, capacity=10.0)]
    ok, wait = reserve(buckets, 0.0, [1.0], pause=2.0)
    assert ok
    assert wait == pytest.approx(2.1)
    _, wait = reserve(buckets, 1.0, [1.0])
    assert wait == pytest.approx(1.2)
    _, wait = reserve(buckets, 1.0, [0.0], pause=0.5)  # ends before the pause in force
    assert wait == pytest.approx(1.2)


def test_local_buckets_follow_the_clock() -> None:
    clock = ManualClock()
    local = LocalBuckets([(10.0, 2.0), (100.0, 100.0)], clock=clock)
    assert local.reserve([2.0, 50.0]) == (True, 0.0)
    ok, wait = local.reserve([1.0, 10.0])
    assert ok
    assert wait == pytest.approx(0.1)
    assert local.level(0) == pytest.approx(-1.0)
    clock.advance(0.1)
    assert local.level(0) == pytest.approx(0.0)
    local.adjust([1.0, 0.0])  # a cancelled reservation's unit comes back
    assert local.level(0) == pytest.approx(1.0)
    assert local.reserve([1.0, 0.0], max_wait=0.0) == (True, 0.0)
    ok, wait = local.reserve([2.0, 0.0], max_wait=0.1)
    assert not ok
    assert wait == pytest.approx(0.2)
    assert local.level(0) == pytest.approx(0.0)  # nothing was taken
    local.adjust([0.0, 0.0])
    clock.advance(10)
    assert local.level(0) == 2.0
    fresh = LocalBuckets([(1.0, 3.0)], clock=clock)
    assert fresh.level(0) == 3.0
    fresh.adjust([-1.0])
    assert fresh.level(0) == 2.0
