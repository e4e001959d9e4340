from __future__ import annotations

import asyncio

import pytest
from concurrency_helpers import Gauge

from headway.concurrency import ConcurrencyLimit
from headway.errors import ConfigurationError

pytestmark = pytest.mark.virtual_time


async def test_slot_counts_and_releases() -> None:
    pool = ConcurrencyLimit(2)
    assert not pool.locked()
    async with pool.slot():
        assert pool.in_use == 1
        async with pool:
            assert pool.in_use == 2
            assert pool.locked()
    assert pool.in_use == 0
    assert "limit=2" in repr(pool)


async def test_release_without_acquire_is_an_error() -> None:
    pool = ConcurrencyLimit(1)
    with pytest.raises(RuntimeError):
        pool.release()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_invalid_limit(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        ConcurrencyLimit(bad)  # type: ignore[arg-type]
    pool = ConcurrencyLimit(1)
    with pytest.raises(ConfigurationError):
        pool.limit = bad  # type: ignore[assignment]


async def test_try_acquire() -> None:
    pool = ConcurrencyLimit(1)
    assert pool.try_acquire()
    assert not pool.try_acquire()
    pool.release()
    assert pool.try_acquire()
    pool.release()


async def test_waiters_are_served_in_arrival_order() -> None:
    pool = ConcurrencyLimit(2)
    order: list[int] = []

    async def worker(i: int) -> None:
        async with pool.slot():
            order.append(i)
            await asyncio.sleep(1)  # virtual time

    async with asyncio.TaskGroup() as tg:
        for i in range(10):
            tg.create_task(worker(i))
            await asyncio.sleep(0)  # arrival order = i
    assert order == list(range(10))


async def test_a_free_slot_is_not_taken_past_queued_waiters() -> None:
    pool = ConcurrencyLimit(1)
    await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    assert pool.waiting == 1
    pool.release()  # handed to the waiter, not free
    assert not pool.try_acquire()
    await waiter
    assert pool.in_use == 1
    pool.release()


async def test_cancelled_waiter_leaves_the_queue() -> None:
    pool = ConcurrencyLimit(1)
    await pool.acquire()
    waiter = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pool.waiting == 0
    pool.release()
    assert pool.in_use == 0
    assert pool.try_acquire()


async def test_waiter_cancelled_after_handover_passes_the_slot_on() -> None:
    pool = ConcurrencyLimit(1)
    await pool.acquire()
    first = asyncio.create_task(pool.acquire())
    second = asyncio.create_task(pool.acquire())
    await asyncio.sleep(0)
    pool.release()  # handed to `first`, which has not resumed yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    assert pool.in_use == 1
    pool.release()
    assert pool.in_use == 0


async def test_raising_the_limit_admits_waiters_lowering_lets_holders_finish() -> None:
    pool = ConcurrencyLimit(1)
    await pool.acquire()
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    pool.limit = 3
    await asyncio.sleep(0)
    assert pool.in_use == 3
    assert sum(w.done() for w in waiters) == 2
    pool.limit = 1
    pool.release()
    pool.release()
    await asyncio.sleep(0)
    assert not waiters[2].done()  # still 1 in use, at the new limit
    pool.release()
    await waiters[2]
    assert pool.in_use == 1
    pool.release()


async def test_limit_is_never_exceeded_under_load() -> None:
    pool = ConcurrencyLimit(3)
    gauge = Gauge()

    async def worker(i: int) -> None:
        async with pool.slot():
            with gauge:
                await asyncio.sleep(0.1 * (i % 7))

    async with asyncio.TaskGroup() as tg:
        for i in range(50):
            tg.create_task(worker(i))
    assert gauge.max == 3
    assert gauge.entered == 50
