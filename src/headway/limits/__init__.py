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

from headway.limits._reservation import RATE_LIMITED_PAUSE, Reservation
from headway.limits.adaptive import AdaptiveLimiter
from headway.limits.bucket import TokenBucketRateLimiter
from headway.limits.keyed import KeyedLimiter
from headway.limits.multi import MultiLimiter

__all__ = [
    "RATE_LIMITED_PAUSE",
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

    :class:`TokenBucketRateLimiter`, :class:`MultiLimiter` and the Redis limiter
    satisfy it. A Policy calls, per attempt, :meth:`reserve_nowait` (and
    :meth:`reserve` only when that returns ``None``), then after the attempt
    :meth:`on_success` or, for a rate 429, :meth:`on_rate_limited`.
    """

    def reserve_nowait(self, requests: float = 1.0, tokens: float = 0.0) -> Reservation | None:
        """Take the units for one call without awaiting; ``None``: await :meth:`reserve`.

        A limiter that needs a round trip (a shared one) returns ``None``.
        """
        ...

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

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429 came back; ``delay`` is the server's, capped by the policy.

        Pause everyone sharing the limiter when the server's bucket is ``empty`` (for
        ``delay``, or :data:`RATE_LIMITED_PAUSE` without one); otherwise only the
        request that got it backs off (the Policy does that).
        """
        ...

    def on_success(self) -> None:
        """An attempt succeeded (called once per success; must be cheap)."""
        ...
