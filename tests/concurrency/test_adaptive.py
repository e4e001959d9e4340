from __future__ import annotations

import asyncio

import pytest
from concurrency_helpers import Gauge

from headway import ManualClock
from headway.concurrency import AdaptiveConcurrency, is_overload
from headway.errors import (
    APITimeoutError,
    ConfigurationError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
)
from headway.events import CONCURRENCY_LIMIT_CHANGED, Event

pytestmark = pytest.mark.virtual_time


def rate_limited() -> RateLimitError:
    return RateLimitError("slow down", status_code=429)


async def fill(limit: AdaptiveConcurrency, n: int) -> None:
    for _ in range(n):
        await limit.acquire()


def drain(limit: AdaptiveConcurrency, n: int) -> None:
    for _ in range(n):
        limit.release()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (rate_limited(), True),
        (QuotaExceededError("quota", status_code=429), False),
        (APITimeoutError(), True),
        (TimeoutError(), True),
        (ServerError("unavailable", status_code=503), True),
        (ServerError("overloaded", status_code=529), True),
        (ServerError("boom", status_code=500), False),
        (ValueError(), False),
    ],
)
def test_is_overload(exc: BaseException, expected: bool) -> None:
    assert is_overload(exc) is expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": 10, "min_limit": 11},
        {"initial": 10, "max_limit": 9},
        {"increase": 0},
        {"decrease": 1.0},
        {"decrease": 0},
        {"slow_call_duration": 0},
    ],
)
def test_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        AdaptiveConcurrency(**kwargs)  # type: ignore[arg-type]


def test_overload_decreases_multiplicatively_down_to_min() -> None:
    limit = AdaptiveConcurrency(16, min_limit=3)
    seen = [limit.limit]
    for _ in range(4):
        limit.on_overload()
        seen.append(limit.limit)
    assert seen == [16, 8, 4, 3, 3]
    assert limit.estimate == 3.0


async def test_success_increases_additively_by_one_per_round() -> None:
    limit = AdaptiveConcurrency(4, max_limit=100)
    await fill(limit, 4)
    for _ in range(4):  # one round at limit 4
        limit.on_success(0.1)
    assert limit.limit == 5
    for _ in range(5):  # one round at limit 5
        limit.on_success(0.1)
    assert limit.limit == 6
    drain(limit, 4)


async def test_growth_respects_max_limit() -> None:
    limit = AdaptiveConcurrency(2, max_limit=3, increase=5)
    await fill(limit, 2)
    for _ in range(20):
        limit.on_success(0.1)
    assert limit.limit == 3
    drain(limit, 2)


def test_no_growth_while_mostly_idle() -> None:
    limit = AdaptiveConcurrency(10)
    for _ in range(100):
        limit.on_success(0.1)  # nothing in use: the limit was never tested
    assert limit.limit == 10


def test_slow_success_counts_as_overload() -> None:
    limit = AdaptiveConcurrency(8, slow_call_duration=2.0)
    limit.on_success(1.0)
    assert limit.limit == 8
    limit.on_success(2.5)
    assert limit.limit == 4


def test_manual_limit_is_clamped_and_reported() -> None:
    events: list[Event] = []
    limit = AdaptiveConcurrency(8, min_limit=2, max_limit=20, listeners=[events.append])
    limit.limit = 50
    assert limit.limit == 20
    limit.limit = 1
    assert limit.limit == 2
    with pytest.raises(ConfigurationError):
        limit.limit = 0
    assert [(e.data["old"], e.data["new"], e.data["reason"]) for e in events] == [
        (8, 20, "manual"),
        (20, 2, "manual"),
    ]
    assert events[0].kind == CONCURRENCY_LIMIT_CHANGED
    assert "limit=2" in repr(limit)


async def test_events_name_the_source() -> None:
    events: list[Event] = []
    limit = AdaptiveConcurrency(4, name="openai", listeners=[events.append])
    limit.on_overload()
    assert events[0].source == "openai"
    assert events[0].data == {"old": 4, "new": 2, "reason": "overload"}


async def test_growth_admits_waiters() -> None:
    limit = AdaptiveConcurrency(2, max_limit=10)
    await fill(limit, 2)
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    limit.on_success(0.1)
    limit.on_success(0.1)  # one round at limit 2: now 3
    await asyncio.wait_for(waiter, 1)
    assert limit.in_use == 3
    drain(limit, 3)


async def test_slot_reports_success_with_measured_latency() -> None:
    clock = ManualClock()
    limit = AdaptiveConcurrency(1, max_limit=4, slow_call_duration=5, clock=clock)
    async with limit.slot():
        clock.advance(1)
    assert limit.limit == 2
    async with limit.slot():
        clock.advance(6)  # slow
    assert limit.limit == 1
    assert limit.in_use == 0


async def test_slot_cuts_once_for_a_burst_of_overloads() -> None:
    limit = AdaptiveConcurrency(16)
    gauge = Gauge()

    async def call() -> None:
        async with limit.slot():
            with gauge:
                await asyncio.sleep(1)  # virtual time
                raise rate_limited()

    results = await asyncio.gather(*(call() for _ in range(16)), return_exceptions=True)
    assert all(isinstance(r, RateLimitError) for r in results)
    assert limit.limit == 8  # one overload, one cut — not 16 -> 1
    assert limit.in_use == 0
    # a call started after the cut cuts again
    with pytest.raises(RateLimitError):
        await call()
    assert limit.limit == 4


async def test_slot_ignores_other_errors_and_cancellation() -> None:
    limit = AdaptiveConcurrency(4)

    with pytest.raises(ValueError):
        async with limit.slot():
            raise ValueError("not about load")
    assert limit.limit == 4

    async def hold() -> None:
        async with limit.slot():
            await asyncio.sleep(100)  # virtual time

    task = asyncio.create_task(hold())
    await asyncio.sleep(1)  # virtual time
    assert limit.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limit.limit == 4
    assert limit.in_use == 0


async def test_aimd_converges_below_a_hidden_server_cap() -> None:
    """A server that 429s above 10 concurrent calls: the limit saws around 10."""
    limit = AdaptiveConcurrency(32, max_limit=64)
    server = Gauge()
    limits: list[int] = []

    async def call() -> None:
        async with limit.slot():
            with server:
                await asyncio.sleep(0.1)
                if server.now > 10:
                    raise rate_limited()

    async def client() -> None:
        for _ in range(150):
            try:
                await call()
            except RateLimitError:
                await asyncio.sleep(0.05)
            limits.append(limit.limit)

    await asyncio.gather(*(client() for _ in range(40)))
    tail = limits[len(limits) // 2 :]
    assert max(tail) <= 16
    assert min(tail) >= 4
    assert limit.in_use == 0
