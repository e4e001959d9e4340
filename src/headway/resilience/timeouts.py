"""Deadlines: per-attempt and total, cancelling the work in flight.

A deadline is :func:`asyncio.timeout` on the loop's clock (so virtual time drives it)
with two differences that matter for API calls:

* when *our* deadline fires, the work is cancelled and :class:`~headway.APITimeoutError`
  (also a builtin :class:`TimeoutError`) is raised, naming the scope and the seconds;
* every other outcome passes through untouched: a ``TimeoutError`` raised by the work
  itself stays that error, and a cancellation from outside (the caller's task being
  cancelled) stays a ``CancelledError`` — even if it arrives while our deadline expires.

``None`` means no deadline. A ``timeout`` event (scope, seconds) is emitted when one fires.

>>> import asyncio
>>> async def main() -> str:
...     try:
...         async with deadline(0.01, scope="attempt"):
...             await asyncio.sleep(10)
...     except APITimeoutError as exc:
...         return str(exc)
...     return "finished"
>>> asyncio.run(main())
'Attempt timed out after 0.01s (attempt deadline)'
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from types import TracebackType
from typing import Literal, TypeVar

from headway.errors import APITimeoutError
from headway.events import TIMEOUT, EventListener, emit, enabled

__all__ = ["Deadline", "deadline", "with_timeout"]

T = TypeVar("T")

Scope = Literal["attempt", "total"]


class Deadline:
    """An async context manager cancelling its block after ``seconds``.

    Raises :class:`~headway.APITimeoutError` when the deadline (and nothing else)
    stopped the block. Use :func:`deadline` to build one. Single use.
    """

    __slots__ = ("_cm", "listeners", "scope", "seconds", "source")

    def __init__(
        self,
        seconds: float | None,
        *,
        scope: Scope = "total",
        source: str | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> None:
        self.seconds = seconds
        self.scope = scope
        self.source = source
        self.listeners = listeners
        self._cm: asyncio.Timeout | None = None

    def when(self) -> float | None:
        """The loop time at which the deadline fires, or ``None`` without a deadline."""
        cm = self._cm
        return None if cm is None else cm.when()

    def expired(self) -> bool:
        """Whether the deadline fired."""
        cm = self._cm
        return cm is not None and cm.expired()

    async def __aenter__(self) -> Deadline:
        if self.seconds is not None:
            cm = self._cm = asyncio.timeout(self.seconds)
            await cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cm = self._cm
        if cm is None:
            return
        try:
            await cm.__aexit__(exc_type, exc, tb)
        except TimeoutError as timeout_exc:
            # asyncio.timeout raises TimeoutError only when its own expiry cancelled the
            # block and no other cancellation is pending: this is our deadline.
            raise self._error() from timeout_exc

    def _error(self) -> APITimeoutError:
        seconds = self.seconds
        if enabled(logging.INFO, self.listeners):
            emit(
                TIMEOUT,
                source=self.source,
                level=logging.INFO,
                listeners=self.listeners,
                scope=self.scope,
                seconds=seconds,
            )
        what = "Attempt" if self.scope == "attempt" else "Request"
        return APITimeoutError(f"{what} timed out after {seconds:g}s ({self.scope} deadline)")


def deadline(
    seconds: float | None,
    *,
    scope: Scope = "total",
    source: str | None = None,
    listeners: tuple[EventListener, ...] = (),
) -> Deadline:
    """A deadline of ``seconds`` (``None``: none) around an ``async with`` block.

    >>> import asyncio
    >>> async def main() -> int:
    ...     async with deadline(5):
    ...         return 42
    >>> asyncio.run(main())
    42
    """
    if seconds is not None and seconds < 0:
        raise ValueError(f"a deadline must be >= 0 seconds (got {seconds!r})")
    return Deadline(seconds, scope=scope, source=source, listeners=listeners)


async def with_timeout(
    awaitable: Awaitable[T],
    seconds: float | None,
    *,
    scope: Scope = "total",
    source: str | None = None,
    listeners: tuple[EventListener, ...] = (),
) -> T:
    """Await ``awaitable`` with a deadline; raise :class:`~headway.APITimeoutError` on expiry.

    >>> import asyncio
    >>> async def slow() -> str:
    ...     await asyncio.sleep(10)
    ...     return "late"
    >>> async def main() -> str:
    ...     try:
    ...         return await with_timeout(slow(), 0.01)
    ...     except TimeoutError as exc:  # APITimeoutError is a TimeoutError
    ...         return type(exc).__name__
    >>> asyncio.run(main())
    'APITimeoutError'
    """
    async with deadline(seconds, scope=scope, source=source, listeners=listeners):
        return await awaitable
