"""Deadlines: our expiry becomes APITimeoutError; everything else passes untouched."""

from __future__ import annotations

import asyncio

import pytest

from headway import APITimeoutError, Event, add_listener, remove_listener
from headway.events import TIMEOUT
from headway.resilience.timeouts import DeadlineTimer, deadline, with_timeout
from headway.testing import VirtualClock


async def test_expiry_raises_api_timeout_error(virtual_clock: VirtualClock) -> None:
    seen: list[Event] = []
    with pytest.raises(APITimeoutError) as info:
        async with deadline(2.5, scope="attempt", source="ep", listeners=(seen.append,)) as d:
            await asyncio.sleep(60)
    assert isinstance(info.value, TimeoutError)
    assert "2.5s" in str(info.value)
    assert "attempt deadline" in str(info.value)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert d.expired()
    assert virtual_clock.elapsed == pytest.approx(2.5)
    assert [(e.kind, e.source, dict(e.data)) for e in seen] == [
        (TIMEOUT, "ep", {"scope": "attempt", "seconds": 2.5})
    ]


async def test_total_scope_message(virtual_clock: VirtualClock) -> None:
    with pytest.raises(APITimeoutError, match=r"Request timed out after 1s \(total deadline\)"):
        await with_timeout(asyncio.sleep(5), 1)


async def test_no_expiry_returns_result_and_reports_when(virtual_clock: VirtualClock) -> None:
    async with deadline(10) as d:
        await asyncio.sleep(1)
        when = d.when()
    assert when == pytest.approx(asyncio.get_running_loop().time() + 9)
    assert not d.expired()
    assert await with_timeout(asyncio.sleep(0, "x"), 1) == "x"


async def test_none_means_no_deadline(virtual_clock: VirtualClock) -> None:
    async with deadline(None) as d:
        await asyncio.sleep(3600)
    assert d.when() is None
    assert not d.expired()


def test_negative_deadline_is_refused() -> None:
    with pytest.raises(ValueError):
        deadline(-1)


async def test_inner_timeout_error_passes_unchanged(virtual_clock: VirtualClock) -> None:
    inner = TimeoutError("the server's own timeout")
    with pytest.raises(TimeoutError) as info:
        async with deadline(5):
            raise inner
    assert info.value is inner


async def test_inner_timeout_after_our_expiry_is_not_converted(
    virtual_clock: VirtualClock,
) -> None:
    # The work swallows our cancellation and raises its own error: that error wins.
    class Boom(Exception):
        pass

    async def work() -> None:
        async with deadline(1):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                raise Boom from None

    with pytest.raises(Boom):
        await work()


async def test_outside_cancellation_is_never_converted(virtual_clock: VirtualClock) -> None:
    async def work() -> None:
        async with deadline(10):
            await asyncio.sleep(60)

    task = asyncio.create_task(work())
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outside_cancellation_at_expiry_instant_stays_cancellation(
    virtual_clock: VirtualClock,
) -> None:
    loop = asyncio.get_running_loop()
    for order in ("before", "after"):

        async def work() -> None:
            async with deadline(5):
                await asyncio.sleep(60)

        task = asyncio.create_task(work())
        await asyncio.sleep(0)
        when = loop.time() + 5
        # Land the outside cancel at the very loop time the deadline fires.
        loop.call_at(when if order == "after" else when - 1e-9, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_nested_total_deadline_wins_inside_attempt(virtual_clock: VirtualClock) -> None:
    with pytest.raises(APITimeoutError, match="total") as info:
        async with deadline(3, scope="total"), deadline(10, scope="attempt"):
            await asyncio.sleep(60)
    assert "3s" in str(info.value)


async def test_timeout_event_goes_to_global_listeners(virtual_clock: VirtualClock) -> None:
    seen: list[Event] = []
    add_listener(seen.append)
    try:
        with pytest.raises(APITimeoutError):
            await with_timeout(asyncio.sleep(2), 1, scope="attempt")
    finally:
        remove_listener(seen.append)
    assert [e.data["scope"] for e in seen if e.kind == TIMEOUT] == ["attempt"]


# -- DeadlineTimer: one loop timer for many deadlines of one length -------------------------


async def test_deadline_timer_cancels_only_the_overdue_blocks(virtual_clock: VirtualClock) -> None:
    seen: list[Event] = []
    timer = DeadlineTimer(10, scope="attempt", source="ep", listeners=(seen.append,))
    loop = asyncio.get_running_loop()
    timers_before = len(getattr(loop, "_scheduled", ()))

    async def block(start: float, length: float) -> float:
        await asyncio.sleep(start)
        return await timer.run(_sleep_then(length))

    results = await asyncio.gather(
        *(block(i, 12.0 if i % 3 == 0 else 3.0) for i in range(9)), return_exceptions=True
    )
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, APITimeoutError), i
            assert "10s" in str(result)
            assert "attempt deadline" in str(result)
        else:
            assert result == 3.0, i
    assert [e.data["scope"] for e in seen if e.kind == TIMEOUT] == ["attempt"] * 3
    assert timer.running == 0
    # Nine blocks ran, but the timer kept at most one loop timer of its own.
    assert len(getattr(loop, "_scheduled", ())) <= timers_before + 1


async def _sleep_then(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def test_deadline_timer_lets_outside_cancellation_and_inner_timeouts_through(
    virtual_clock: VirtualClock,
) -> None:
    timer = DeadlineTimer(5)

    async def raises_timeout() -> None:
        raise TimeoutError("from the work")

    with pytest.raises(TimeoutError, match="from the work") as info:
        await timer.run(raises_timeout())
    assert not isinstance(info.value, APITimeoutError)
    task = asyncio.create_task(timer.run(asyncio.sleep(60)))
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # A cancel from outside landing at the instant the deadline fires stays a cancel.
    task = asyncio.create_task(timer.run(asyncio.sleep(60)))
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_at(asyncio.get_running_loop().time() + 5, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert timer.running == 0
    assert await timer.run(_sleep_then(4.5)) == 4.5


async def test_deadline_timer_forgets_ended_blocks_behind_a_long_one(
    virtual_clock: VirtualClock,
) -> None:
    timer = DeadlineTimer(1000)
    long = asyncio.create_task(timer.run(asyncio.sleep(500)))
    await asyncio.sleep(0)
    for _ in range(500):
        await timer.run(asyncio.sleep(0))
    assert timer.running == 1
    assert timer.queued <= 2 * timer.running + 64
    await long
    assert timer.running == 0
    assert timer.queued == 0


def test_deadline_timer_serves_one_event_loop_after_another() -> None:
    timer = DeadlineTimer(0.01)
    for _ in range(2):
        with pytest.raises(APITimeoutError):
            asyncio.run(timer.run(asyncio.sleep(1)))
    assert timer.running == 0


def test_deadline_timer_refuses_a_length_of_zero() -> None:
    with pytest.raises(ValueError, match="> 0"):
        DeadlineTimer(0)
