"""Deadlines: our expiry becomes APITimeoutError; everything else passes untouched."""

from __future__ import annotations

import asyncio

import pytest

from headway import APITimeoutError, Event, add_listener, remove_listener
from headway.events import TIMEOUT
from headway.resilience.timeouts import deadline, with_timeout
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
