"""Hypothesis properties of the backoff schedule, the retry budget and cancellation."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headway import APIConnectionError, ManualClock
from headway.resilience.retry import JitterMode, RetryBudget, RetryPolicy, retry_with_backoff

delays = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
factors = st.floats(min_value=1.0, max_value=10.0, allow_nan=False)


@st.composite
def schedules(draw: st.DrawFn) -> tuple[float, float, float, int]:
    base = draw(delays)
    cap = draw(st.floats(min_value=base, max_value=1000.0, allow_nan=False))
    return base, cap, draw(factors), draw(st.integers(1, 40))


@given(schedules())
def test_unjittered_schedule_is_exponential_capped_and_monotone(
    s: tuple[float, float, float, int],
) -> None:
    base, cap, factor, n = s
    policy = RetryPolicy(
        max_retries=n, base_delay=base, max_delay=cap, backoff_factor=factor, jitter=False
    )
    got = list(policy.delays())
    assert len(got) == n
    for i, d in enumerate(got, start=1):
        assert d <= cap
        assert d == min(base * factor ** (i - 1), cap) or d == cap
    assert all(a <= b for a, b in itertools.pairwise(got))


@given(schedules(), st.sampled_from(["full", "equal"]))
def test_full_and_equal_jitter_stay_in_range(
    s: tuple[float, float, float, int], mode: JitterMode
) -> None:
    base, cap, factor, n = s
    policy = RetryPolicy(
        max_retries=n, base_delay=base, max_delay=cap, backoff_factor=factor, jitter=mode
    )
    exact = RetryPolicy(
        max_retries=n, base_delay=base, max_delay=cap, backoff_factor=factor, jitter=False
    )
    for d, top in zip(policy.delays(), exact.delays(), strict=True):
        low = 0.0 if mode == "full" else top / 2
        assert low <= d <= top


@given(schedules())
def test_decorrelated_jitter_stays_between_base_and_cap(s: tuple[float, float, float, int]) -> None:
    base, cap, factor, n = s
    policy = RetryPolicy(
        max_retries=n, base_delay=base, max_delay=cap, backoff_factor=factor, jitter="decorrelated"
    )
    previous = base
    for d in policy.delays():
        assert min(base, cap) <= d <= cap
        assert d <= max(3 * previous, base)
        previous = d


@given(
    ratio=st.floats(0.0, 2.0),
    floor=st.floats(0.0, 5.0),
    window=st.floats(0.5, 30.0),
    ops=st.lists(
        st.tuples(st.sampled_from(["request", "retry"]), st.floats(0.0, 3.0)), max_size=200
    ),
)
def test_budget_never_allows_more_than_ratio_plus_floor_in_a_window(
    ratio: float, floor: float, window: float, ops: list[tuple[str, float]]
) -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=ratio, min_retries_per_second=floor, window=window, clock=clock)
    history: list[tuple[float, str]] = []
    for op, dt in ops:
        clock.advance(dt)
        if op == "request":
            budget.record_request()
            history.append((clock.now(), "request"))
            continue
        if not budget.try_withdraw():
            continue
        history.append((clock.now(), "retry"))
        # When a retry is granted, the retries of the window stay within the allowance.
        # The budget keeps whole buckets (width = window / 10): the retries of the last
        # window - width seconds are all still counted, and the requests it counts all
        # happened in the last window.
        now, width, eps = clock.now(), window / 10, 1e-6
        retries = sum(1 for t, k in history if k == "retry" and t > now - window + width + eps)
        requests = sum(1 for t, k in history if k == "request" and t > now - window - eps)
        assert retries <= ratio * requests + floor * window + 1e-9


@given(st.integers(0, 5), st.sampled_from([True, False, "equal", "decorrelated"]))
def test_cancelled_error_is_never_retried(n_failures: int, jitter: bool | JitterMode) -> None:
    calls: list[int] = []

    async def func() -> None:
        calls.append(1)
        if len(calls) <= n_failures:
            raise APIConnectionError("reset")
        raise asyncio.CancelledError

    async def main() -> None:
        policy = RetryPolicy(max_retries=10, jitter=jitter, clock=ManualClock())
        try:
            await policy.call(func)
        except asyncio.CancelledError:
            pass
        else:  # pragma: no cover - the property failed
            raise AssertionError("CancelledError was swallowed")
        calls.clear()
        try:
            await retry_with_backoff(
                func, max_retries=10, base_delay=0, retry_exceptions=(BaseException,)
            )
        except asyncio.CancelledError:
            pass
        else:  # pragma: no cover
            raise AssertionError("CancelledError was swallowed")

    asyncio.run(main())
    assert len(calls) == n_failures + 1


@given(
    ops=st.lists(st.tuples(st.integers(0, 70), st.floats(0.0, 3.0)), max_size=60),
)
def test_record_requests_counts_like_record_request_and_never_too_recent(
    ops: list[tuple[int, float]],
) -> None:
    """``record_requests(n)`` loses no call and, like ``n`` ``record_request()`` calls,
    never counts one as more recent than it is (only calls of the last window count)."""
    clock = ManualClock()
    one_by_one = RetryBudget(ratio=0.3, min_retries_per_second=1.0, window=10.0, clock=clock)
    batched = RetryBudget(ratio=0.3, min_retries_per_second=1.0, window=10.0, clock=clock)
    history: list[float] = []
    for n, dt in ops:
        clock.advance(dt)
        for _ in range(n):
            one_by_one.record_request()
        batched.record_requests(n)
        history.extend([clock.now()] * n)
        recent = sum(1 for t in history if t > clock.now() - 10.0 - 1e-6)
        assert batched.requests <= recent
        assert one_by_one.requests <= recent
        if clock.now() < 1.0:  # still in the first slice: nothing expired, all counted
            assert batched.requests == one_by_one.requests == len(history)


def test_record_requests_refuses_a_negative_count() -> None:
    budget = RetryBudget(clock=ManualClock())
    with pytest.raises(ValueError, match="n >= 0"):
        budget.record_requests(-1)
    budget.record_requests(0)
    assert budget.requests == 0
