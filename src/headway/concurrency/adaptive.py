"""An adaptive (AIMD) concurrency limit: grows while calls succeed, shrinks on overload."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar

from headway._clock import Clock, resolve_clock
from headway.concurrency.limit import ConcurrencyLimit, _check_limit, is_overload
from headway.errors import ConfigurationError
from headway.events import CONCURRENCY_LIMIT_CHANGED, EventListener, emit, enabled

__all__ = ["AdaptiveConcurrency"]


class AdaptiveConcurrency(ConcurrencyLimit):
    """A concurrency limit that finds the provider's capacity by itself (AIMD).

    Like TCP congestion control and Netflix's concurrency-limits ``AIMDLimit``: while
    calls succeed the limit grows *additively*, by ``increase`` for every ``limit``
    successes (one "round" of calls); on an overload signal (:func:`is_overload`: a 429,
    a timeout, a 503/504/529) it shrinks *multiplicatively* to ``limit * decrease``.
    It never leaves ``[min_limit, max_limit]``. Each change of the integer limit emits
    a ``concurrency.limit_changed`` event (old, new, reason).

    Two guards keep it stable:

    * it grows only while at least half the limit is in use (an idle client learns
      nothing about capacity, so the limit does not drift upwards);
    * calls made through :meth:`slot` that were already in flight when the limit was
      cut do not cut it again: a burst of 429s for one overload costs one decrease.

    :meth:`slot` measures each call through the clock and reports the outcome itself
    (success, overload, or neither for other errors and cancellation). Code that takes
    slots with :meth:`acquire`/:meth:`release` reports with :meth:`on_success` and
    :meth:`on_overload` instead; do not report calls made inside :meth:`slot`.

    Args:
        initial: the starting limit.
        min_limit, max_limit: the bounds of the limit.
        increase: slots added per round of successful calls (> 0).
        decrease: the factor applied on overload (0 < decrease < 1).
        slow_call_duration: a success slower than this (seconds) counts as overload.
        clock: the clock used to time calls in :meth:`slot`.
        name: the source name on events.
        listeners: event listeners called for this limit's events.

    >>> import asyncio
    >>> limit = AdaptiveConcurrency(8, min_limit=2, max_limit=64)
    >>> limit.on_overload()
    >>> limit.limit
    4
    >>> async def busy() -> None:
    ...     for _ in range(4):
    ...         await limit.acquire()
    ...     for _ in range(8):
    ...         limit.on_success(0.1)
    ...     for _ in range(4):
    ...         limit.release()
    >>> asyncio.run(busy())
    >>> limit.limit
    5
    """

    measures_calls: ClassVar[bool] = True

    def __init__(
        self,
        initial: int = 16,
        *,
        min_limit: int = 1,
        max_limit: int = 256,
        increase: float = 1.0,
        decrease: float = 0.5,
        slow_call_duration: float | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        listeners: Iterable[EventListener] = (),
    ) -> None:
        _check_limit(min_limit, "min_limit")
        _check_limit(max_limit, "max_limit")
        _check_limit(initial, "initial")
        if not min_limit <= initial <= max_limit:
            raise ConfigurationError(
                f"need min_limit <= initial <= max_limit, got {min_limit}, {initial}, {max_limit}"
            )
        if not increase > 0:
            raise ConfigurationError(f"increase must be > 0, got {increase!r}")
        if not 0 < decrease < 1:
            raise ConfigurationError(f"decrease must be between 0 and 1, got {decrease!r}")
        if slow_call_duration is not None and not slow_call_duration > 0:
            raise ConfigurationError(
                f"slow_call_duration must be > 0 seconds, got {slow_call_duration!r}"
            )
        super().__init__(initial)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.increase = float(increase)
        self.decrease = float(decrease)
        self.slow_call_duration = slow_call_duration
        self.name = name
        self.listeners: tuple[EventListener, ...] = tuple(listeners)
        self._clock = resolve_clock(clock)
        self._estimate = float(initial)
        self._epoch = 0  # bumped at every decrease

    @property
    def limit(self) -> int:
        """The current limit; settable by hand (clamped to the bounds)."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        _check_limit(value)
        self._estimate = float(min(self.max_limit, max(self.min_limit, value)))
        self._apply("manual")

    @property
    def estimate(self) -> float:
        """The fractional limit the algorithm tracks (``limit`` is its floor)."""
        return self._estimate

    def on_success(self, latency: float) -> None:
        """Report a call that succeeded after ``latency`` seconds."""
        if self.slow_call_duration is not None and latency > self.slow_call_duration:
            self._decrease("slow")
            return
        if self._in_use * 2 < self._limit or self._estimate >= self.max_limit:
            return
        self._estimate = min(float(self.max_limit), self._estimate + self.increase / self._limit)
        if int(self._estimate) != self._limit:
            self._apply("success")

    def on_overload(self) -> None:
        """Report an overload signal (a 429, a timeout, a 503): shrink the limit."""
        self._decrease("overload")

    def slot(self) -> _AdaptiveSlot:  # type: ignore[override]
        """``async with limit.slot():`` holds a slot and reports the block's outcome."""
        return _AdaptiveSlot(self)

    def _decrease(self, reason: str) -> None:
        self._epoch += 1
        self._estimate = max(float(self.min_limit), self._estimate * self.decrease)
        self._apply(reason)

    def _apply(self, reason: str) -> None:
        new = int(self._estimate)
        old = self._limit
        if new == old:
            return
        self._limit = new
        if new > old and self._waiters:
            self._wake()
        if enabled(logging.INFO, self.listeners):
            emit(
                CONCURRENCY_LIMIT_CHANGED,
                source=self.name,
                level=logging.INFO,
                listeners=self.listeners,
                old=old,
                new=new,
                reason=reason,
            )

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency(limit={self._limit}, in_use={self._in_use}, "
            f"min_limit={self.min_limit}, max_limit={self.max_limit})"
        )


class _AdaptiveSlot:
    """One call's slot in an :class:`AdaptiveConcurrency`; reports its outcome."""

    __slots__ = ("_epoch", "_limit", "_started")

    def __init__(self, limit: AdaptiveConcurrency) -> None:
        self._limit = limit
        self._started = 0.0
        self._epoch = 0

    async def __aenter__(self) -> None:
        limit = self._limit
        if limit._in_use < limit._limit and not limit._waiters:
            limit._in_use += 1  # acquire()'s fast path, without a coroutine more
        else:
            await limit.acquire()
        self._epoch = limit._epoch
        self._started = limit._clock.now()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.release(exc)

    def release(self, exc: BaseException | None = None) -> None:
        """Give the slot back and report how the call ended (``None``: success)."""
        limit = self._limit
        try:
            if exc is None:
                limit.on_success(limit._clock.now() - self._started)
            elif is_overload(exc) and self._epoch == limit._epoch:
                limit.on_overload()
        finally:
            limit.release()
