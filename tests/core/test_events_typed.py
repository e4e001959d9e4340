"""Typed events: per-kind dataclasses carrying the exception, attempt and delay."""

from __future__ import annotations

import logging

import pytest

from headway import APIConnectionError, CircuitBreaker, Policy, RateLimitError, RetryPolicy
from headway.events import (
    RETRY_GAVE_UP,
    RETRY_SCHEDULED,
    BreakerCallRecorded,
    BreakerOpened,
    Event,
    RateLimited,
    RetryGaveUp,
    RetryScheduled,
)
from headway.testing import VirtualClock

pytestmark = pytest.mark.virtual_time


async def test_retry_events_carry_the_exception_attempt_and_delay(
    virtual_clock: VirtualClock,
) -> None:
    seen: list[Event] = []
    reset = APIConnectionError("reset")
    slow = RateLimitError("slow down", status_code=429, retry_after=2.0, bucket_empty=False)
    errors: list[BaseException] = [reset, slow, reset]

    async def call() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    retry = RetryPolicy(max_retries=1, jitter=False, base_delay=0.5)
    policy = Policy(retry=retry, listeners=(seen.append,))
    with pytest.raises(APIConnectionError):
        await policy.execute(call)
    first, rate, gave_up = seen
    assert type(first) is RetryScheduled
    assert (first.kind, first.attempt, first.delay, first.exception) == (
        RETRY_SCHEDULED,
        1,
        0.5,
        reset,
    )
    assert isinstance(rate, RateLimited)
    assert (rate.delay, rate.exception, rate.rate_limited) == (2.0, slow, True)
    assert isinstance(gave_up, RetryGaveUp)
    assert (gave_up.kind, gave_up.exception) == (RETRY_GAVE_UP, reset)
    assert "retries exhausted" in gave_up.data["reason"]


async def test_the_breaker_reports_each_call_and_its_opening() -> None:
    seen: list[Event] = []
    breaker = CircuitBreaker(failure_threshold=2, listeners=[seen.append])
    boom = ConnectionError("down")

    async def fail() -> None:
        raise boom

    async def ok() -> str:
        return "ok"

    assert await breaker.execute(ok) == "ok"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.execute(fail)
    calls = [e for e in seen if isinstance(e, BreakerCallRecorded)]
    assert [(c.exception, c.failure) for c in calls] == [(None, False), (boom, True), (boom, True)]
    opened = [e for e in seen if isinstance(e, BreakerOpened)]
    assert len(opened) == 1
    assert opened[0].new == "open"
    assert opened[0].level == logging.WARNING


def test_typed_events_still_log_through_the_bridge(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="headway")
    breaker = CircuitBreaker(failure_threshold=1, name="svc")
    breaker.record(breaker.try_enter(), ConnectionError("x"))
    records = [r for r in caplog.records if isinstance(r.headway_event, BreakerOpened)]  # type: ignore[attr-defined]
    assert records
    assert "breaker.state_changed" in records[0].getMessage()
