from __future__ import annotations

import asyncio
import bisect

import pytest
from concurrency_helpers import Gauge

from headway.concurrency import AsyncExecutor, RateLimitedExecutor
from headway.errors import ExecutorShutdownError
from headway.limits.bucket import TokenBucketRateLimiter

pytestmark = pytest.mark.virtual_time


def max_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + width - 1e-9) - i for i, t in enumerate(times))


async def test_attributes() -> None:
    ex = RateLimitedExecutor(5, 2.0, 3, max_tokens=4)
    assert isinstance(ex.executor, AsyncExecutor)
    assert isinstance(ex.limiter, TokenBucketRateLimiter)
    assert ex.limiter.rate == 5
    assert ex.limiter.period == 2.0
    assert ex.limiter.max_tokens == 4
    assert ex.max_concurrency == ex.executor.max_concurrency == 3
    assert "RateLimitedExecutor" in repr(ex)
    await ex.shutdown()


async def test_rate_is_respected() -> None:
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def call(i: int) -> int:
        stamps.append(loop.time())
        return i

    async with RateLimitedExecutor(rate=10, max_tokens=1) as ex:
        t0 = loop.time()
        results = await asyncio.gather(*(ex.execute(call, i) for i in range(50)))
    assert sorted(results) == list(range(50))
    assert loop.time() - t0 == pytest.approx(4.9)
    assert max_in_window(stamps, 1.0) <= 1 + 10
    assert max_in_window(stamps, 0.1) <= 1


@pytest.mark.parametrize("given_limiter", [False, True])
async def test_rate_and_cap_both_hold(given_limiter: bool) -> None:
    loop = asyncio.get_running_loop()
    gauge = Gauge()
    stamps: list[float] = []
    limiter = TokenBucketRateLimiter(20, max_tokens=5) if given_limiter else None

    async def call(i: int) -> int:
        stamps.append(loop.time())
        with gauge:
            await asyncio.sleep(2)  # long calls: the cap binds (virtual time)
        return i

    ex = RateLimitedExecutor(20, max_concurrency=4, max_tokens=5, limiter=limiter)
    if limiter is not None:
        assert ex.limiter is limiter
    async with ex:
        await asyncio.gather(*(ex.execute(call, i) for i in range(40)))
    assert gauge.max == 4
    assert max_in_window(stamps, 1.0) <= 5 + 20


async def test_cap_holds_with_positional_arguments() -> None:
    gauge = Gauge()

    async def call() -> None:
        with gauge:
            await asyncio.sleep(1)  # virtual time

    async with RateLimitedExecutor(1000, 1.0, 2) as ex:
        await asyncio.gather(*(ex.execute(call) for _ in range(10)))
    assert gauge.max == 2


async def test_map_is_paced_and_bounded() -> None:
    loop = asyncio.get_running_loop()
    gauge = Gauge()
    stamps: list[float] = []

    async def call(i: int) -> int:
        stamps.append(loop.time())
        with gauge:
            await asyncio.sleep(0.5)  # virtual time
        return i

    async with RateLimitedExecutor(10, max_concurrency=3, max_tokens=2) as ex:
        results = [r async for r in ex.map(call, range(30))]
    assert results == list(range(30))
    assert gauge.max <= 3
    assert max_in_window(stamps, 1.0) <= 2 + 10


async def test_shutdown_is_delegated() -> None:
    ex = RateLimitedExecutor(1, max_tokens=1)
    call = asyncio.create_task(ex.execute(asyncio.sleep, 100))
    await asyncio.sleep(0)
    await ex.shutdown(timeout=1)
    assert ex.closed
    assert ex.executor.closed
    with pytest.raises(ExecutorShutdownError):
        call.result()
    with pytest.raises(ExecutorShutdownError):
        await ex.execute(asyncio.sleep, 0)
    await ex.aclose()


async def test_a_call_cancelled_while_waiting_for_a_token_gives_it_back() -> None:
    limiter = TokenBucketRateLimiter(1, max_tokens=1)
    ex = RateLimitedExecutor(1, limiter=limiter)
    assert await ex.execute(asyncio.sleep, 0, "first") == "first"  # bucket now empty
    waiter = asyncio.create_task(ex.execute(asyncio.sleep, 0))
    await asyncio.sleep(0.5)  # virtual time
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.tokens == pytest.approx(0.5)  # the reservation was refunded
    await ex.shutdown()


async def test_context_manager_cancels_after_an_error() -> None:
    calls: list[asyncio.Task[None]] = []

    async def body() -> None:
        async with RateLimitedExecutor(1, max_tokens=1) as ex:
            calls.append(asyncio.create_task(ex.execute(asyncio.sleep, 100)))
            await asyncio.sleep(0)
            raise KeyError

    with pytest.raises(KeyError):
        await body()
    with pytest.raises(ExecutorShutdownError):
        calls[0].result()
