"""MultiLimiter and Reservation: atomic multi-limit reservations, settle, cancel, sync."""

from __future__ import annotations

import asyncio

import pytest

from headway import ConfigurationError, ManualClock, MaxWaitExceededError, events
from headway.errors import RequestTooLargeError
from headway.events import Event
from headway.limits import Limiter, MultiLimiter, Reservation, TokenBucketRateLimiter


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def levels(multi: MultiLimiter) -> list[float]:
    return [lim.tokens for lim in multi.limiters]


# -- construction ----------------------------------------------------------------------
def test_for_llm_builds_named_limits(clock: ManualClock) -> None:
    multi = MultiLimiter.for_llm(
        rps=5, rpm=100, rpd=1000, tpm=10_000, tpd=100_000, burst=3, clock=clock, name="m"
    )
    got = [(lim.name, lim.unit, lim.rate, lim.period, lim.max_tokens) for lim in multi.limiters]
    assert got == [
        ("rps", "requests", 5.0, 1.0, 3.0),
        ("rpm", "requests", 100.0, 60.0, 3.0),
        ("rpd", "requests", 1000.0, 86_400.0, 1000.0),
        ("tpm", "tokens", 10_000.0, 60.0, 10_000.0),
        ("tpd", "tokens", 100_000.0, 86_400.0, 100_000.0),
    ]
    assert multi.clock is clock
    assert "rpm=100/60s" in repr(multi)
    assert "'m'" in repr(multi)
    assert isinstance(multi, Limiter)


@pytest.mark.parametrize(
    "make",
    [
        lambda c: MultiLimiter([]),
        lambda c: MultiLimiter.for_llm(clock=c),
        lambda c: MultiLimiter([object()]),  # type: ignore[list-item]
        lambda c: MultiLimiter([TokenBucketRateLimiter(1, clock=c)] * 2),
        lambda c: MultiLimiter([TokenBucketRateLimiter(1, clock=c), TokenBucketRateLimiter(1)]),
        lambda c: MultiLimiter([TokenBucketRateLimiter(1)], clock=c),
        lambda c: MultiLimiter([TokenBucketRateLimiter(1, clock=c)], max_wait=-1),
        lambda c: MultiLimiter.for_llm(rpm=0, clock=c),
    ],
)
def test_bad_configuration_is_refused(make: object, clock: ManualClock) -> None:
    with pytest.raises(ValueError) as info:
        make(clock)  # type: ignore[operator]
    assert str(info.value)
    assert isinstance(info.value, ConfigurationError | ValueError)


# -- reserving -------------------------------------------------------------------------
async def test_reserve_takes_from_every_limit_by_unit(clock: ManualClock) -> None:
    multi = MultiLimiter.for_llm(rpm=60, tpm=1000, clock=clock)
    r = await multi.reserve(1, 300)
    assert isinstance(r, Reservation)
    assert (r.delay, r.requests, r.tokens) == (0.0, 1, 300)
    assert levels(multi) == [59.0, 700.0]
    assert "delay=0" in repr(r)


async def test_delay_is_the_slowest_limit(clock: ManualClock) -> None:
    multi = MultiLimiter.for_llm(rpm=60, tpm=600, clock=clock)  # 1 req/s, 10 tok/s
    await multi.reserve(60, 0)
    r = await multi.reserve(1, 100)  # requests: wait 1 s; tokens: fine
    assert r.delay == pytest.approx(1.0)
    # r goes at 1 s, when the token bucket is still full (600) and takes 100: then 100
    # short at 10/s is 10 s more (r is booked when it goes, not when it reserved).
    r2 = await multi.reserve(0, 600)
    assert r2.delay == pytest.approx(11.0)


def test_too_large_on_one_limit_reserves_nothing_anywhere(clock: ManualClock) -> None:
    multi = MultiLimiter.for_llm(rpm=60, tpm=1000, clock=clock)
    with pytest.raises(RequestTooLargeError) as info:
        multi.reserve_nowait(1, 1001)
    assert "tpm" in str(info.value)
    assert levels(multi) == [60.0, 1000.0]
    with pytest.raises(ValueError):
        multi.reserve_nowait(-1, 0)


def test_max_wait_rejects_all_or_nothing(clock: ManualClock) -> None:
    got: list[Event] = []
    events.add_listener(got.append)
    try:
        multi = MultiLimiter.for_llm(rpm=60, tpm=600, clock=clock, max_wait=5.0, name="llm")
        multi.reserve_nowait(1, 600)
        before = levels(multi)
        with pytest.raises(MaxWaitExceededError) as info:
            multi.reserve_nowait(1, 100)  # tokens would wait 10 s
        assert info.value.retry_after == pytest.approx(10.0)
        assert levels(multi) == before
        assert multi.reserve_nowait(1, 100, max_wait=60).delay == pytest.approx(10.0)
    finally:
        events.remove_listener(got.append)
    kinds = [e.kind for e in got]
    assert kinds == [events.LIMITER_REJECTED, events.LIMITER_WAIT]
    assert got[0].source == "llm"


async def test_a_fast_limit_is_not_bunched_behind_a_slow_one(clock: ManualClock) -> None:
    # 1 request/s with no burst, and a token limit that makes the first call wait 100 s.
    requests = TokenBucketRateLimiter(1, max_tokens=1, clock=clock)
    tokens = TokenBucketRateLimiter(
        10, max_tokens=1000, initial_tokens=0, clock=clock, unit="tokens"
    )
    multi = MultiLimiter([requests, tokens])
    first = await multi.reserve(1, 1000)
    assert first.delay == pytest.approx(100.0)
    # Calls with no tokens queue behind it and are spaced 1 s apart, not sent together.
    delays = [(await multi.reserve(1, 0)).delay for _ in range(3)]
    assert delays == pytest.approx([101.0, 102.0, 103.0])


async def test_settle_refunds_and_charges_token_limits_only(clock: ManualClock) -> None:
    multi = MultiLimiter.for_llm(rpm=60, tpm=1000, clock=clock)
    r = await multi.reserve(1, 400)
    r.settle(250)
    assert levels(multi) == [59.0, 750.0]
    r.settle(900)
    assert levels(multi) == [59.0, 100.0]
    assert r.tokens == 900
    r.cancel()
    assert levels(multi) == [60.0, 1000.0]
    r.cancel()  # idempotent
    r.settle(10)  # no effect after cancel
    assert levels(multi) == [60.0, 1000.0]
    assert r.cancelled
    assert "cancelled" in repr(r)
    with pytest.raises(ValueError):
        r.settle(-1)


@pytest.mark.virtual_time
async def test_slot_waits_and_is_cancel_safe() -> None:
    loop = asyncio.get_running_loop()
    multi = MultiLimiter.for_llm(rps=1, tpm=600, burst=1)
    t0 = loop.time()
    async with multi.slot(1, 10) as r:
        assert r.delay == 0.0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5), multi.slot(1, 10):
            pytest.fail("admitted early")
    assert levels(multi) == pytest.approx([0.5, 595.0])
    async with multi.slot(1, 10) as r:
        assert loop.time() - t0 == pytest.approx(1.0)
        r.settle(5)
    assert levels(multi)[1] == pytest.approx(595.0)


@pytest.mark.virtual_time
async def test_pause_stops_every_limit_and_waiting_reservations() -> None:
    loop = asyncio.get_running_loop()
    multi = MultiLimiter.for_llm(rps=10, tpm=6000, burst=1)
    t0 = loop.time()
    await multi.reserve()
    r = await multi.reserve(1, 10)  # would go at +0.1
    multi.pause(3.0)
    await r.wait()
    assert loop.time() - t0 == pytest.approx(3.1)
    multi.pause_until(loop.time() + 1.0)
    async with multi.slot():
        pass
    assert loop.time() - t0 == pytest.approx(4.2)
    with pytest.raises(ValueError):
        multi.pause(-1)


# -- sync ------------------------------------------------------------------------------
def test_sync_picks_the_limit_by_name_unit_and_limit(clock: ManualClock) -> None:
    multi = MultiLimiter.for_llm(rps=10, rpm=100, rpd=5000, tpm=10_000, clock=clock)
    multi.sync("rpm", 50, 30.0)
    assert levels(multi) == [10.0, 50.0, 5000.0, 10_000.0]
    multi.sync("requests", 5000, None, limit=5000)  # closest rate: rpd (no change: 5000)
    multi.sync("requests", 4000, None, limit=5000)
    assert levels(multi) == [10.0, 50.0, 4000.0, 10_000.0]
    multi.sync("requests", 4, None)  # no limit: the shortest window, never the daily one
    assert levels(multi) == [4.0, 50.0, 4000.0, 10_000.0]
    multi.sync("tokens", 7000, 6.0, in_flight=500)
    assert levels(multi) == [4.0, 50.0, 4000.0, 6500.0]
    multi.sync("images", 0, None)  # unknown: ignored
    multi.sync("tokens", 9000, 1.0)  # never raised
    assert levels(multi) == [4.0, 50.0, 4000.0, 6500.0]


def test_a_limit_changed_later_is_honoured(clock: ManualClock) -> None:
    multi = MultiLimiter.for_llm(rps=10, burst=1, clock=clock)
    multi.reserve_nowait()
    multi.limiters[0].rate = 1
    assert multi.reserve_nowait().delay == pytest.approx(1.0)
