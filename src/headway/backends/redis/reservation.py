"""What a shared limiter hands out: :class:`RedisReservation` and its slot."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from headway.backends._model import LocalBuckets
from headway.limits import Reservation

if TYPE_CHECKING:
    from headway.backends.redis.limiter import RedisLimiter

__all__ = ["RedisReservation"]

_SHARED = 0
_LOCAL = 1
_ALLOW = 2


class RedisReservation(Reservation):
    """What :meth:`RedisLimiter.reserve` took: a ``headway.limits.Reservation``.

    Attributes:
        delay: seconds the caller must wait before proceeding.
        requests, tokens: what is reserved (``tokens`` changes with :meth:`settle`).
        shared: False when taken from the local fallback during a Redis outage.
    """

    __slots__ = ("_at", "_limiter", "_mark", "_source", "_state")

    def __init__(
        self,
        limiter: RedisLimiter,
        source: int,
        state: LocalBuckets | None,
        delay: float,
        requests: float,
        tokens: float,
        at: float = 0.0,
    ) -> None:
        # Reservation's own __init__ is for in-memory buckets: set every field here.
        self._at = at  # admission time: server ms (shared) or clock seconds (local)
        self._mark = limiter.shift  # pauses after this push the wait back
        self._limiter = limiter
        self._source = source
        self._state = state
        self.delay = delay
        self.requests = requests
        self.tokens = tokens

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` gave the reservation back."""
        return self._source < 0

    @property
    def shared(self) -> bool:
        """Whether the reservation was taken from the shared (Redis) limits."""
        return self._source == _SHARED

    def settle(self, tokens: float) -> None:
        """The call used ``tokens``: refund or charge the difference with the estimate."""
        if not tokens >= 0.0 or tokens == math.inf:
            raise ValueError(f"settled tokens must be a finite number >= 0, got {tokens!r}")
        if self._source < 0:
            return
        diff = float(tokens) - self.tokens
        if diff:
            self.tokens = float(tokens)
            self._limiter.settle_units(self._source, self._state, -diff)

    def cancel(self) -> None:
        """Give everything back (idempotent); used when the waiter is cancelled.

        A limit gets the units back only where this reservation is still last in its
        queue (a newcomer must not take the slot of a waiter still queued); cancelling
        several waiters gives back all of them when they are cancelled together.
        """
        if self._source < 0:
            return
        source, self._source = self._source, -1
        self._limiter.cancel_units(source, self._state, self._at, self.requests, self.tokens)

    async def wait(self) -> None:
        """Sleep until admitted (longer if the limiter is paused meanwhile); cancel if cancelled."""
        limiter = self._limiter
        if self._source < 0 or (self.delay <= 0.0 and limiter.shift == self._mark):
            return
        clock = limiter.clock
        try:
            mark = self._mark
            await clock.sleep(self.delay)
            while limiter.shift > mark:
                extra, mark = limiter.shift - mark, limiter.shift
                await clock.sleep(extra)
        except BaseException:
            self.cancel()
            raise

    def __repr__(self) -> str:
        return (
            f"RedisReservation(delay={self.delay:.6f}, requests={self.requests:g}, "
            f"tokens={self.tokens:g}, shared={self.shared})"
        )


class _Slot:
    __slots__ = ("_limiter", "_requests", "_tokens")

    def __init__(self, limiter: RedisLimiter, requests: float, tokens: float) -> None:
        self._limiter = limiter
        self._requests = requests
        self._tokens = tokens

    async def __aenter__(self) -> RedisReservation:
        res = await self._limiter.reserve(self._requests, self._tokens)
        await res.wait()
        return res

    async def __aexit__(self, *exc: object) -> None:
        return None
