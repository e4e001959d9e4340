"""What the server sees: arrivals, not turns, stay within the bucket's bound."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.limits import MultiLimiter, TokenBucketRateLimiter


class LateClock:
    """The loop's clock, waking sleepers late as a loaded event loop does.

    ``jitter`` is added to every sleep (timer granularity); ``stalls`` are
    ``(start, length)`` spans, relative to the first reading, during which the loop is
    blocked: a sleeper due then wakes when the stall ends.
    """

    def __init__(self, jitter: list[float], stalls: list[tuple[float, float]] = ()) -> None:  # type: ignore[assignment]
        self.jitter = jitter or [0.0]
        self.stalls = list(stalls)
        self.i = 0
        self.origin: float | None = None

    def now(self) -> float:
        now = asyncio.get_running_loop().time()
        if self.origin is None:
            self.origin = now
        return now

    async def sleep(self, seconds: float) -> None:
        now = self.now()
        assert self.origin is not None
        due = now + seconds + self.jitter[self.i % len(self.jitter)]
        self.i += 1
        for start, length in self.stalls:
            begin = self.origin + start
            if begin <= due < begin + length:
                due = begin + length
        await asyncio.sleep(due - now)


def max_in_window(times: list[float], width: float) -> int:
    times = sorted(times)
    best = j = 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] <= start + width + 1e-12:
            j += 1
        best = max(best, j - i + 1)
    return best


async def arrivals(
    limiter: TokenBucketRateLimiter, seconds: float, workers: int = 50
) -> list[float]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    seen: list[float] = []

    async def worker() -> None:
        while True:
            await limiter.wait()
            now = loop.time()
            if now >= end:
                return
            seen.append(now)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return seen


@pytest.mark.virtual_time
async def test_late_wakeups_do_not_bunch_arrivals_at_200_per_second() -> None:
    rng = random.Random(7)
    # timers fire up to 1 ms late; every ~0.2 s the loop stalls for 3-30 ms
    jitter = [rng.uniform(0.0, 0.001) for _ in range(997)]
    stalls = [(0.2 * k + rng.uniform(0, 0.1), rng.uniform(0.003, 0.03)) for k in range(25)]
    clock = LateClock(jitter, stalls)
    limiter = TokenBucketRateLimiter(200, 1.0, max_tokens=1, clock=clock)  # type: ignore[arg-type]
    seen = await arrivals(limiter, 5.0)
    assert max_in_window(seen, 0.1) <= 21
    assert max_in_window(seen, 1.0) <= 201
    # nothing can go while the loop is stalled; the rest of the time, 98% of the rate
    stalled = sum(length for _, length in stalls)
    assert len(seen) >= 0.98 * 200 * (5.0 - stalled)


@pytest.mark.virtual_time
async def test_without_lateness_nothing_is_lost() -> None:
    limiter = TokenBucketRateLimiter(200, 1.0, max_tokens=1)
    seen = await arrivals(limiter, 2.0)
    assert len(seen) >= 400
    assert max_in_window(seen, 0.1) <= 21


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0.0, 0.004), min_size=1, max_size=20),
    st.lists(st.tuples(st.floats(0.0, 1.5), st.floats(0.0, 0.2)), max_size=8),
    st.integers(1, 3),
)
def test_arrivals_never_exceed_the_bound(
    lateness: list[float], stalls: list[tuple[float, float]], burst: int
) -> None:
    from headway.testing import VirtualClock

    async def main() -> list[float]:
        with VirtualClock():
            clock = LateClock(lateness, stalls)
            limiter = TokenBucketRateLimiter(100, 1.0, max_tokens=burst, clock=clock)  # type: ignore[arg-type]
            return await arrivals(limiter, 1.5, workers=10)

    seen = asyncio.run(main())
    assert max_in_window(seen, 0.1) <= burst + 10
    assert max_in_window(seen, 0.5) <= burst + 50


@pytest.mark.virtual_time
async def test_multi_limiter_reservation_wait_keeps_arrivals_honest() -> None:
    clock = LateClock([0.0], [(0.05, 0.02), (0.3, 0.05)])
    limiter = TokenBucketRateLimiter(100, 1.0, max_tokens=1, clock=clock)  # type: ignore[arg-type]
    tokens = TokenBucketRateLimiter(1e6, 1.0, clock=clock, unit="tokens")  # type: ignore[arg-type]
    multi = MultiLimiter([limiter, tokens])
    loop = asyncio.get_running_loop()
    seen: list[float] = []

    async def worker() -> None:
        for _ in range(20):
            r = multi.reserve_nowait(1, 10)
            await r.wait()
            seen.append(loop.time())

    await asyncio.gather(*(worker() for _ in range(5)))
    assert max_in_window(seen, 0.1) <= 11
