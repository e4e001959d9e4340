"""TokenBucketRateLimiter: reservations, waits, cancellation, pause, sync, events."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from unittest.mock import AsyncMock

import pytest

from headway import ConfigurationError, ManualClock, MaxWaitExceededError, events
from headway.errors import RequestTooLargeError
from headway.events import Event
from headway.limits import Limiter, TokenBucketRateLimiter
from headway.testing import VirtualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


@pytest.fixture
def seen() -> Iterator[list[Event]]:
    got: list[Event] = []
    events.add_listener(got.append)
    yield got
    events.remove_listener(got.append)


# -- construction ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": math.nan},
        {"rate": math.inf},
        {"rate": "fast"},
        {"rate": 1, "period": 0},
        {"rate": 1, "period": -2},
        {"rate": 1, "max_tokens": 0},
        {"rate": 1, "max_tokens": -1},
        {"rate": 1, "initial_tokens": -1},
        {"rate": 1, "max_tokens": 2, "initial_tokens": 3},
        {"rate": 1, "max_wait": -0.5},
        {"rate": 1, "unit": "bytes"},
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as info:
        TokenBucketRateLimiter(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigurationError) or "must be" in str(info.value)
    assert str(info.value)


def test_defaults_start_full_with_capacity_equal_to_rate(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(5, clock=clock)
    assert (limiter.rate, limiter.period, limiter.max_tokens) == (5.0, 1.0, 5.0)
    assert limiter.tokens == 5.0
    assert limiter.unit == "requests"
    assert limiter.clock is clock
    assert limiter.paused_until is None
    assert "rate=5" in repr(limiter)
    named = TokenBucketRateLimiter(5, clock=clock, name="api", initial_tokens=0)
    assert named.tokens == 0.0
    assert "'api'" in repr(named)


def test_satisfies_the_limiter_protocol() -> None:
    assert isinstance(TokenBucketRateLimiter(1), Limiter)


# -- reserving -------------------------------------------------------------------------
async def test_acquire_returns_zero_then_the_wait(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(2, period=1.0, max_tokens=2, clock=clock)
    assert [await limiter.acquire() for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    assert limiter.tokens == pytest.approx(-2.0)
    clock.advance(1.0)
    assert limiter.tokens == pytest.approx(0.0)
    clock.advance(10.0)
    assert limiter.tokens == 2.0  # refill stops at max_tokens


async def test_period_scales_the_refill(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(60, period=60.0, max_tokens=1, clock=clock)
    assert await limiter.acquire() == 0.0
    assert await limiter.acquire() == pytest.approx(1.0)


async def test_weighted_requests_wait_in_proportion(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(10, max_tokens=10, initial_tokens=0, clock=clock)
    assert await limiter.acquire(5) == pytest.approx(0.5)
    assert await limiter.acquire(10) == pytest.approx(1.5)
    assert await limiter.acquire(0) == pytest.approx(1.5)  # zero waits for the queue


def test_request_larger_than_capacity_fails_at_once_reserving_nothing(
    clock: ManualClock,
) -> None:
    limiter = TokenBucketRateLimiter(10, max_tokens=10, clock=clock, name="api")
    with pytest.raises(RequestTooLargeError) as info:
        limiter.try_reserve(11)
    assert info.value.requested == 11
    assert info.value.capacity == 10
    assert "max_tokens" in str(info.value)
    assert "'api'" in str(info.value)
    assert limiter.tokens == 10.0


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_negative_or_nan_request_is_a_value_error(clock: ManualClock, bad: float) -> None:
    limiter = TokenBucketRateLimiter(10, clock=clock)
    with pytest.raises(ValueError, match=">= 0"):
        limiter.try_reserve(bad)
    assert limiter.tokens == 10.0


def test_max_wait_rejects_and_reserves_nothing(clock: ManualClock, seen: list[Event]) -> None:
    limiter = TokenBucketRateLimiter(1, max_tokens=1, clock=clock, max_wait=2.0, name="x")
    assert limiter.try_reserve() == 0.0
    assert limiter.try_reserve() == pytest.approx(1.0)
    assert limiter.try_reserve() == pytest.approx(2.0)
    before = limiter.tokens
    with pytest.raises(MaxWaitExceededError) as info:
        limiter.try_reserve()
    assert info.value.retry_after == pytest.approx(3.0)
    assert info.value.retryable
    assert "max_wait" in str(info.value)
    assert limiter.tokens == before
    # a per-call max_wait overrides the limiter's
    with pytest.raises(MaxWaitExceededError):
        limiter.try_reserve(max_wait=0.5)
    assert limiter.try_reserve(max_wait=10) == pytest.approx(3.0)
    rejected = [e for e in seen if e.kind == events.LIMITER_REJECTED]
    assert len(rejected) == 2
    assert rejected[0].source == "x"
    assert rejected[0].data["max_wait"] == 2.0


async def test_wait_honours_max_wait(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(1, max_tokens=1, clock=clock)
    await limiter.wait()
    with pytest.raises(MaxWaitExceededError):
        await limiter.wait(max_wait=0.1)
    await limiter.wait(max_wait=1.0)
    assert clock.now() == pytest.approx(1001.0)


def test_tokens_is_settable(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(10, clock=clock)
    limiter.tokens = 0
    assert limiter.try_reserve() == pytest.approx(0.1)
    limiter.tokens = 1000
    assert limiter.tokens == 10.0
    limiter.tokens = -5
    assert limiter.tokens == -5.0
    with pytest.raises(ValueError):
        limiter.tokens = math.nan


def test_refund_and_charge(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(10, clock=clock)
    limiter.charge(15)
    assert limiter.tokens == pytest.approx(-5.0)
    limiter.refund(3)
    assert limiter.tokens == pytest.approx(-2.0)
    limiter.refund(100)
    assert limiter.tokens == 10.0  # never above max_tokens
    with pytest.raises(ValueError):
        limiter.refund(-1)
    with pytest.raises(ValueError):
        limiter.charge(-1)


# -- waiting ---------------------------------------------------------------------------
@pytest.mark.virtual_time
async def test_slot_paces_callers_in_virtual_time() -> None:
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(10, max_tokens=1)
    t0 = loop.time()
    times = []
    for _ in range(5):
        async with limiter.slot():
            times.append(loop.time() - t0)
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


async def test_execute_calls_through_and_sleeps_the_wait(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(4, max_tokens=1, clock=clock)
    func = AsyncMock(return_value="ok")
    assert await limiter.execute(func, 1, key="v") == "ok"
    assert await limiter.execute(func, 2) == "ok"
    func.assert_awaited_with(2)
    assert func.await_args_list[0].kwargs == {"key": "v"}
    assert clock.sleeps == [pytest.approx(0.25)]


@pytest.mark.virtual_time
async def test_execute_sleeps_through_patched_asyncio_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The default clock looks asyncio.sleep up at call time: a patched sleep sees the wait.
    sleep = AsyncMock()
    monkeypatch.setattr(asyncio, "sleep", sleep)
    limiter = TokenBucketRateLimiter(rate=2, max_tokens=1)
    await limiter.execute(AsyncMock())
    await limiter.execute(AsyncMock())
    assert sleep.await_count == 1
    assert sleep.await_args is not None
    assert sleep.await_args.args[0] == pytest.approx(0.5)


async def test_execute_with_a_replaced_acquire_just_sleeps(clock: ManualClock) -> None:
    fake_acquire = AsyncMock(return_value=0.75)

    class Patched(TokenBucketRateLimiter):
        __slots__ = ()

        async def acquire(self, tokens: float = 1.0) -> float:
            return float(await fake_acquire(tokens))

    patched = Patched(4, clock=clock)
    func = AsyncMock(return_value=3)
    assert await patched.execute(func) == 3
    assert clock.sleeps == [0.75]
    fake_acquire.assert_awaited_once_with(1.0)
    assert patched.tokens == 4.0  # the double reserved nothing


@pytest.mark.virtual_time
async def test_cancelled_wait_gives_tokens_back() -> None:
    limiter = TokenBucketRateLimiter(1, max_tokens=1)
    await limiter.wait()
    task = asyncio.create_task(limiter.wait(1))
    await asyncio.sleep(0.3)  # virtual time
    assert limiter.tokens == pytest.approx(-0.7)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.tokens == pytest.approx(0.3)
    assert await limiter.acquire() == pytest.approx(0.7)


@pytest.mark.virtual_time
async def test_timeout_in_slot_refunds_and_the_queue_moves_on() -> None:
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(1, max_tokens=1)
    await limiter.wait()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5), limiter.slot(1):
            pytest.fail("admitted before its turn")
    t0 = loop.time()
    async with limiter.slot():
        pass
    assert loop.time() - t0 == pytest.approx(0.5)


@pytest.mark.virtual_time
async def test_cancelled_waiter_in_the_middle_passes_its_turn_then_returns() -> None:
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(1, max_tokens=1)
    await limiter.wait()
    first = asyncio.create_task(limiter.wait())  # turn at +1
    second = asyncio.create_task(limiter.wait())  # turn at +2
    await asyncio.sleep(0)
    t0 = loop.time()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    # A newcomer must not jump ahead of `second` nor go with it at the same instant.
    assert limiter.try_reserve() == pytest.approx(3.0)
    await second
    assert loop.time() - t0 == pytest.approx(2.0)


@pytest.mark.virtual_time
async def test_cancelling_the_whole_queue_restores_the_level() -> None:
    limiter = TokenBucketRateLimiter(2, max_tokens=2)
    await limiter.wait(2)
    tasks = [asyncio.create_task(limiter.wait(n)) for n in (1, 2, 0.5, 2)]
    await asyncio.sleep(0.25)  # virtual time
    for task in tasks:  # front first: the middle ones become holes, then all go back
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert limiter.tokens == pytest.approx(0.5)
    assert limiter.try_reserve(0.5) == 0.0


@pytest.mark.virtual_time
async def test_refund_while_others_wait_keeps_fifo() -> None:
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(10, max_tokens=10)
    await limiter.wait(10)
    big = asyncio.create_task(limiter.wait(10))  # turn at +1
    await asyncio.sleep(0.1)
    limiter.refund(10)  # e.g. a settled over-estimate
    t0 = loop.time()
    await limiter.wait(1)  # queues behind `big`, not in front of it
    assert loop.time() - t0 == pytest.approx(0.9)
    assert big.done()


# -- pause -----------------------------------------------------------------------------
@pytest.mark.virtual_time
async def test_pause_holds_back_waiting_and_new_callers(seen: list[Event]) -> None:
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(10, max_tokens=1, name="api")
    t0 = loop.time()
    done: list[tuple[int, float]] = []

    async def call(i: int) -> None:
        async with limiter.slot():
            done.append((i, loop.time() - t0))

    tasks = [asyncio.create_task(call(i)) for i in range(3)]
    await asyncio.sleep(0.05)  # 0 went at once; 1 and 2 wait for 0.1 and 0.2
    limiter.pause(2.0)
    assert limiter.paused_until == pytest.approx(t0 + 2.05)
    limiter.pause_until(t0 + 1.0)  # an earlier end changes nothing
    await call(3)
    await asyncio.gather(*tasks)
    assert [i for i, _ in done] == [0, 1, 2, 3]
    assert [t for _, t in done] == pytest.approx([0.0, 2.1, 2.2, 2.3])
    paused = [e for e in seen if e.kind == events.LIMITER_PAUSED]
    assert len(paused) == 1
    assert paused[0].source == "api"
    assert paused[0].data["seconds"] == pytest.approx(2.0)
    assert limiter.paused_until is None


@pytest.mark.virtual_time
async def test_a_burst_of_pauses_is_announced_once(seen: list[Event]) -> None:
    """Each 429 of a burst pauses a little later than the last: one event, not thirty;
    a pause that extends the one in force by a second or more is news again."""
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(10, name="api")
    for _ in range(30):
        limiter.pause(10.0)
        await asyncio.sleep(0.001)
    limiter.pause(12.0)
    paused = [e for e in seen if e.kind == events.LIMITER_PAUSED]
    assert [round(e.data["seconds"]) for e in paused] == [10, 12]
    assert limiter.paused_until == pytest.approx(loop.time() + 12.0)


@pytest.mark.virtual_time
async def test_pause_empties_the_bucket_and_extends() -> None:
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(10, max_tokens=10)
    t0 = loop.time()
    limiter.pause(1.0)
    limiter.pause(1.5)  # extends the pause to 1.5 s
    await limiter.wait()
    assert loop.time() - t0 == pytest.approx(1.6)  # no burst right after a 429
    with pytest.raises(ValueError):
        limiter.pause(-1)


# -- sync ------------------------------------------------------------------------------
def test_sync_lowers_but_never_raises(clock: ManualClock, seen: list[Event]) -> None:
    limiter = TokenBucketRateLimiter(100, clock=clock, name="rpm")
    limiter.sync(remaining=40, reset_after=12.0, limit=100)
    assert limiter.tokens == 40.0
    limiter.sync(90)
    assert limiter.tokens == 40.0
    limiter.sync(30, in_flight=5)
    assert limiter.tokens == 25.0
    limiter.sync(-3)  # a negative figure counts as zero
    assert limiter.tokens == 0.0
    synced = [e for e in seen if e.kind == events.LIMITER_SYNCED]
    assert synced[0].data == {
        "remaining": 40,
        "reset": 12.0,
        "limit": 100,
        "before": 100.0,
        "after": 40.0,
    }


def test_sync_accounts_for_callers_already_waiting(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(10, max_tokens=10, initial_tokens=0, clock=clock)
    limiter.try_reserve(5)  # waits 0.5 s: level -5
    limiter.sync(3)  # the server has 3, and 5 are promised here: nothing to lower
    assert limiter.tokens == pytest.approx(-5.0)
    limiter.sync(3, in_flight=4)  # but 4 more are on the wire: 1 short
    assert limiter.tokens == pytest.approx(-6.0)


def test_sync_unit_form_applies_to_the_matching_unit_or_name(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(100, clock=clock, unit="tokens", name="tpm")
    limiter.sync("requests", 1, None)
    assert limiter.tokens == 100.0
    limiter.sync("tokens", 60, 2.0, 100)
    assert limiter.tokens == 60.0
    limiter.sync("tpm", 50)
    assert limiter.tokens == 50.0
    limiter.sync(unit="tokens", remaining=40)
    assert limiter.tokens == 40.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"remaining": math.nan},
        {"remaining": 1, "reset_after": -1},
        {"remaining": 1, "limit": -1},
        {"remaining": 1, "in_flight": -1},
    ],
)
def test_sync_rejects_bad_figures(clock: ManualClock, kwargs: dict[str, float]) -> None:
    limiter = TokenBucketRateLimiter(10, clock=clock)
    with pytest.raises(ValueError):
        limiter.sync(**kwargs)
    assert limiter.tokens == 10.0


# -- reserve (the Limiter protocol) ----------------------------------------------------
async def test_reserve_charges_by_unit(clock: ManualClock) -> None:
    requests = TokenBucketRateLimiter(10, clock=clock)
    tokens = TokenBucketRateLimiter(1000, clock=clock, unit="tokens")
    r1 = await requests.reserve(1, 500)
    r2 = tokens.reserve_nowait(1, 500)
    assert (r1.delay, r2.delay) == (0.0, 0.0)
    assert requests.tokens == 9.0
    assert tokens.tokens == 500.0
    r1.settle(100)  # a requests limit ignores tokens
    r2.settle(200)
    assert requests.tokens == 9.0
    assert tokens.tokens == 800.0
    r2.cancel()
    r1.cancel()
    assert requests.tokens == 10.0
    assert tokens.tokens == 1000.0
    with pytest.raises(ValueError):
        await requests.reserve(-1)


@pytest.mark.virtual_time
async def test_reservation_wait_is_cancel_safe() -> None:
    limiter = TokenBucketRateLimiter(1, max_tokens=1, unit="tokens")
    await limiter.wait()
    reservation = await limiter.reserve(tokens=1)
    assert reservation.delay == pytest.approx(1.0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.4):
            await reservation.wait()
    assert reservation.cancelled
    assert limiter.tokens == pytest.approx(0.4)
    await reservation.wait()  # a cancelled reservation does not wait


# -- events ----------------------------------------------------------------------------
def test_wait_event_only_when_someone_listens(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = TokenBucketRateLimiter(1, max_tokens=1, clock=clock, name="q")
    caplog.set_level(logging.WARNING, logger="headway")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("emit called with nobody listening")

    monkeypatch.setattr(events, "emit", boom)
    limiter.try_reserve()
    limiter.try_reserve()  # waits; nobody listens: no event built
    monkeypatch.undo()
    got: list[Event] = []
    events.add_listener(got.append)
    try:
        limiter.try_reserve(1)
    finally:
        events.remove_listener(got.append)
    assert [e.kind for e in got] == [events.LIMITER_WAIT]
    assert got[0].data == {"tokens": 1, "wait": pytest.approx(2.0)}
    assert got[0].source == "q"


async def test_virtual_clock_instance_works_as_clock() -> None:
    with VirtualClock() as vc:
        limiter = TokenBucketRateLimiter(5, max_tokens=1, clock=vc)
        for _ in range(6):
            await limiter.wait()
        assert vc.elapsed == pytest.approx(1.0)


@pytest.mark.virtual_time
async def test_a_refund_during_a_pause_cannot_end_it_early() -> None:
    # Found by Hypothesis: a waiter cancelled during a pause gave back more than the
    # pause had left, so a newcomer went before the pause ended.
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(1, period=0.5, max_tokens=1)
    t0 = loop.time()
    await limiter.wait(0.5)
    waiter = asyncio.create_task(limiter.wait(1))
    await asyncio.sleep(0)
    limiter.pause(1.0)
    await asyncio.sleep(0.25)  # virtual time
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    limiter.refund(5)
    await limiter.wait(0)
    assert loop.time() - t0 >= 1.0 - 1e-9


def test_rate_and_period_are_settable_from_now_on(clock: ManualClock) -> None:
    limiter = TokenBucketRateLimiter(10, max_tokens=10, initial_tokens=0, clock=clock)
    clock.advance(0.5)  # 5 tokens at the old rate
    limiter.rate = 2
    clock.advance(1.0)  # 2 more at the new one
    assert limiter.tokens == pytest.approx(7.0)
    limiter.period = 2.0  # now 1 per second
    clock.advance(1.0)
    assert limiter.tokens == pytest.approx(8.0)
    assert (limiter.rate, limiter.period) == (2.0, 2.0)
    with pytest.raises(ValueError):
        limiter.rate = 0
    with pytest.raises(ValueError):
        limiter.period = -1


@pytest.mark.virtual_time
async def test_a_heavy_request_is_not_starved_by_one_unit_loopers() -> None:
    # aiolimiter serves the smallest request first and never serves this one.
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(100, period=1.0)
    stop = False

    async def looper() -> None:
        while not stop:
            async with limiter.slot(1):
                await asyncio.sleep(0)

    loopers = [asyncio.create_task(looper()) for _ in range(20)]
    await asyncio.sleep(1.0)  # virtual time
    t0 = loop.time()
    async with asyncio.timeout(10):
        await limiter.wait(50)
    waited = loop.time() - t0
    stop = True
    for task in loopers:
        task.cancel()
    await asyncio.gather(*loopers, return_exceptions=True)
    assert waited <= 1.5
    assert waited >= 0.5  # it did wait its turn: 50 units at 100/s


@pytest.mark.virtual_time
async def test_cancelling_a_long_queue_front_first_gives_everything_back() -> None:
    # A timeout storm cancels the oldest waiters first: each is in the middle of the
    # queue when it goes, and all come back once the last one goes.
    limiter = TokenBucketRateLimiter(100, max_tokens=1)
    await limiter.wait()
    tasks = [asyncio.create_task(limiter.wait()) for _ in range(1500)]
    await asyncio.sleep(0)
    assert limiter.tokens == pytest.approx(-1500.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert limiter.tokens == pytest.approx(0.0)
    assert limiter.try_reserve() == pytest.approx(0.01)
