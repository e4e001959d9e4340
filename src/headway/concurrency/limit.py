"""Slot pools: :class:`ConcurrencyLimit`, FIFO and cancel-safe, and :func:`is_overload`."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import ClassVar

from headway.errors import ConfigurationError, QuotaExceededError, RateLimitError, ServerError

__all__ = ["ConcurrencyLimit", "is_overload"]

#: Server statuses that say "too much load" (service unavailable, gateway timeout,
#: Anthropic's overloaded).
_OVERLOAD_STATUSES = frozenset({503, 504, 529})


def _check_limit(value: int, what: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be an integer >= 1, got {value!r}")
    return value


class ConcurrencyLimit:
    """A pool of ``limit`` slots, served first-come-first-served and cancel-safe.

    Taking a free slot with nobody waiting costs no lock and no allocation. When the
    pool is full, callers queue in arrival order; a released slot is handed straight to
    the oldest waiter. A waiter cancelled while queued leaves the queue; one cancelled
    just after being handed a slot hands it on. ``limit`` may be changed at any time:
    raising it admits waiters at once, lowering it lets the holders above the new limit
    finish (nobody is interrupted).

    Args:
        limit: the number of slots (>= 1).

    >>> import asyncio
    >>> pool = ConcurrencyLimit(2)
    >>> async def main() -> tuple[int, int]:
    ...     async with pool.slot():
    ...         inside = pool.in_use
    ...     return inside, pool.in_use
    >>> asyncio.run(main())
    (1, 0)
    """

    #: Whether :meth:`slot` measures each call and learns from its outcome (an adaptive
    #: limit): a pipeline then takes slots through :meth:`slot`, else through
    #: :meth:`try_acquire`/:meth:`acquire` and :meth:`release`.
    measures_calls: ClassVar[bool] = False

    def __init__(self, limit: int) -> None:
        self._limit = _check_limit(limit)
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._slot = _Slot(self)

    @property
    def limit(self) -> int:
        """The number of slots; settable (raising it admits waiters at once)."""
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = _check_limit(value)
        self._wake()

    @property
    def in_use(self) -> int:
        """Slots currently held."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Callers queued for a slot."""
        return len(self._waiters)

    def locked(self) -> bool:
        """Whether a caller would have to wait for a slot now."""
        return self._in_use >= self._limit or bool(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued; never waits."""
        in_use = self._in_use
        if in_use < self._limit and not self._waiters:
            self._in_use = in_use + 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot (FIFO). Pair with :meth:`release`; prefer :meth:`slot`."""
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Give a slot back; the oldest waiter gets it."""
        in_use = self._in_use - 1
        if in_use < 0:
            raise RuntimeError("release() called more times than acquire()")
        self._in_use = in_use
        if self._waiters:
            self._wake()

    def slot(self) -> _Slot:
        """``async with pool.slot():`` holds one slot for the block."""
        return self._slot

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._in_use < self._limit:
            fut = waiters.popleft()
            if fut.done():  # pragma: no cover - cancelled waiters remove themselves
                continue
            self._in_use += 1
            fut.set_result(None)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(limit={self._limit}, in_use={self._in_use}, "
            f"waiting={len(self._waiters)})"
        )


class _Slot:
    """The context manager behind :meth:`ConcurrencyLimit.slot` (stateless, shared)."""

    __slots__ = ("_pool",)

    def __init__(self, pool: ConcurrencyLimit) -> None:
        self._pool = pool

    async def __aenter__(self) -> None:
        pool = self._pool
        if pool._in_use < pool._limit and not pool._waiters:
            pool._in_use += 1  # acquire()'s fast path, without a coroutine more
        else:
            await pool.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._pool.release()

    def release(self, exc: BaseException | None = None) -> None:
        """Give the slot back (``exc``, how the call ended, is not needed here)."""
        self._pool.release()


def is_overload(exc: BaseException) -> bool:
    """Whether ``exc`` says the service is overloaded (an AIMD decrease signal).

    True for rate-limit errors (429, but not an exhausted quota), timeouts (including
    :class:`~headway.errors.APITimeoutError`) and server errors 503, 504 and 529.

    >>> from headway.errors import RateLimitError, ServerError
    >>> is_overload(RateLimitError("slow down", status_code=429))
    True
    >>> is_overload(ServerError("boom", status_code=500))
    False
    """
    if isinstance(exc, RateLimitError):
        return not isinstance(exc, QuotaExceededError)
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, ServerError) and exc.status_code in _OVERLOAD_STATUSES
