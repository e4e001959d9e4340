"""Rate limiters: a FIFO token bucket, atomic multi-limit reservations, keyed limits.

* :class:`TokenBucketRateLimiter`: ``rate`` units per ``period``, bursts up to
  ``max_tokens``; reserves at once and tells the caller how long to wait.
* :class:`MultiLimiter`: several limits (requests and tokens per minute and per day)
  reserved all-or-nothing, with :meth:`Reservation.settle` for the real token count.
* :class:`KeyedLimiter`: one limiter per endpoint, model or key.
* :class:`AdaptiveLimiter`: follows the server's real limit (advertised or probed),
  under the user's ceiling.
* :class:`Limiter`: what :class:`~headway.Policy` needs from a limiter.

>>> import asyncio
>>> from headway import ManualClock
>>> clock = ManualClock()
>>> limiter = TokenBucketRateLimiter(rate=100, max_tokens=1, clock=clock)
>>> async def main() -> None:
...     for _ in range(3):
...         await limiter.wait()
>>> asyncio.run(main()); round(clock.now(), 6)
0.02
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from headway.limits._reservation import Reservation
from headway.limits.adaptive import AdaptiveLimiter
from headway.limits.bucket import TokenBucketRateLimiter
from headway.limits.keyed import KeyedLimiter
from headway.limits.multi import MultiLimiter

__all__ = [
    "AdaptiveLimiter",
    "KeyedLimiter",
    "Limiter",
    "MultiLimiter",
    "Reservation",
    "TokenBucketRateLimiter",
]


@runtime_checkable
class Limiter(Protocol):
    """What a :class:`~headway.Policy` needs from a limiter.

    :class:`TokenBucketRateLimiter` and :class:`MultiLimiter` satisfy it, as will the
    Redis-backed limiters.
    """

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Reservation:
        """Take the units for one call at once; ``delay`` on the result says when to go."""
        ...

    def pause_until(self, when: float) -> None:
        """Admit nobody before clock time ``when``."""
        ...

    def pause(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` from now (a 429's Retry-After)."""
        ...

    def sync(
        self,
        unit: str,
        remaining: float,
        reset_after: float | None = None,
        limit: float | None = None,
    ) -> None:
        """Lower the ``unit`` limit to the server's ``remaining`` figure (never raise it)."""
        ...
