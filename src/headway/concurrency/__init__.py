"""Bounded concurrency: slot pools, an adaptive (AIMD) limit and executors.

* :class:`ConcurrencyLimit` is a plain pool of slots: at most ``limit`` holders at
  once, waiters served first-come-first-served, a cancelled waiter gives back what it
  was handed. ``async with limit.slot(): ...``.
* :class:`AdaptiveConcurrency` is a :class:`ConcurrencyLimit` whose limit moves by
  itself, AIMD style (as Netflix's concurrency-limits): it grows additively while calls
  succeed and shrinks multiplicatively on overload signals (429, timeouts, 503).
* :class:`AsyncExecutor` runs coroutine functions with at most ``max_concurrency`` in
  flight, streams ``map`` results with bounded in-flight work, and shuts down cleanly:
  no task is left behind and no exception goes unretrieved.
* :class:`RateLimitedExecutor` adds a :class:`~headway.limits.TokenBucketRateLimiter`:
  every call waits for a concurrency slot *and* a token.

>>> import asyncio
>>> async def double(x: int) -> int:
...     await asyncio.sleep(0)
...     return 2 * x
>>> async def main() -> list[int]:
...     async with AsyncExecutor(max_concurrency=2) as ex:
...         first = await ex.execute(double, 1)
...         rest = [r async for r in ex.map(double, [2, 3, 4])]
...     return [first, *rest]
>>> asyncio.run(main())
[2, 4, 6, 8]
"""

from __future__ import annotations

from headway.concurrency.adaptive import AdaptiveConcurrency
from headway.concurrency.executor import DEFAULT_MAP_WINDOW, AsyncExecutor, RateLimitedExecutor
from headway.concurrency.limit import ConcurrencyLimit, is_overload
from headway.concurrency.mapping import MapIterator

__all__ = [
    "DEFAULT_MAP_WINDOW",
    "AdaptiveConcurrency",
    "AsyncExecutor",
    "ConcurrencyLimit",
    "MapIterator",
    "RateLimitedExecutor",
    "is_overload",
]
