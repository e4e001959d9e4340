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
from collections import deque
from collections.abc import Awaitable
from types import TracebackType
from typing import Literal, TypeVar

from headway._clock import running_loop
from headway.errors import APITimeoutError
from headway.events import TIMEOUT, EventListener, emit, enabled

__all__ = ["Deadline", "DeadlineTimer", "deadline", "with_timeout"]

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
        return _timeout_error(self.seconds, self.scope, self.source, self.listeners)


def _timeout_error(
    seconds: float | None, scope: Scope, source: str | None, listeners: tuple[EventListener, ...]
) -> APITimeoutError:
    """The error of a deadline that fired (and its ``timeout`` event)."""
    if enabled(logging.INFO, listeners):
        emit(
            TIMEOUT,
            source=source,
            level=logging.INFO,
            listeners=listeners,
            scope=scope,
            seconds=seconds,
        )
    what = "Attempt" if scope == "attempt" else "Request"
    return APITimeoutError(f"{what} timed out after {seconds:g}s ({scope} deadline)")


class _Entry:
    """One block under a :class:`DeadlineTimer`: its task, when it is due, its state."""

    __slots__ = ("cancelling", "due", "state", "task")

    def __init__(self, task: asyncio.Task[object], due: float) -> None:
        self.task = task
        self.due = due
        self.cancelling = task.cancelling()
        self.state = _RUNNING


_RUNNING = 0
_DONE = 1
_FIRED = 2


class DeadlineTimer:
    """Deadlines of one length for many blocks, on one timer of the event loop.

    :meth:`run` behaves as ``async with deadline(seconds, scope=...)`` around one
    awaitable: when ``seconds`` pass first, the work is cancelled and
    :class:`~headway.APITimeoutError` raised (with its ``timeout`` event); a
    ``TimeoutError`` of the work itself and a cancellation from outside pass through.
    It costs no timer per block: blocks that share the length fall due in the order they
    started, so they wait in one queue, and one loop timer, armed for the oldest block
    still running, cancels those that are overdue. A :class:`~headway.Policy` runs its
    ``attempt_timeout`` on one.

    Args:
        seconds: the length of every deadline (> 0).
        scope: ``"attempt"`` or ``"total"``, for the error and event.
        source: the ``source`` of the ``timeout`` events.
        listeners: extra listeners of the ``timeout`` events.

    >>> import asyncio
    >>> timer = DeadlineTimer(0.01, scope="attempt")
    >>> async def main() -> str:
    ...     try:
    ...         await timer.run(asyncio.sleep(10))
    ...     except APITimeoutError as exc:
    ...         return str(exc)
    ...     return "finished"
    >>> asyncio.run(main())
    'Attempt timed out after 0.01s (attempt deadline)'
    """

    def __init__(
        self,
        seconds: float,
        *,
        scope: Scope = "attempt",
        source: str | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> None:
        if not seconds > 0:
            raise ValueError(f"a deadline must be > 0 seconds (got {seconds!r})")
        self.seconds = seconds
        self.scope: Scope = scope
        self.source = source
        self.listeners = listeners
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Entry] = deque()
        self._running = 0
        self._handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> int:
        """Blocks under this timer now."""
        return self._running

    @property
    def queued(self) -> int:
        """Blocks queued: those running and, behind an older one still running, ended ones
        not yet dropped (never more than about twice those running)."""
        return len(self._queue)

    async def run(self, awaitable: Awaitable[T]) -> T:
        """``await awaitable`` within the deadline (see the class)."""
        entry = self._enter()
        try:
            result = await awaitable
        except asyncio.CancelledError as exc:
            if self._leave(entry):
                error = _timeout_error(self.seconds, self.scope, self.source, self.listeners)
                raise error from exc
            raise
        except BaseException:
            self._leave(entry)
            raise
        self._leave(entry)
        return result

    def _enter(self) -> _Entry:
        loop = running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - a coroutine awaited outside any task
            raise RuntimeError("a deadline needs to run inside a task")
        if loop is not self._loop:  # first use, or a new event loop
            self._loop, self._queue, self._running, self._handle = loop, deque(), 0, None
        entry = _Entry(task, loop.time() + self.seconds)
        queue = self._queue
        queue.append(entry)
        self._running += 1
        if self._handle is None:
            self._handle = loop.call_at(entry.due, self._fire)
        return entry

    def _leave(self, entry: _Entry) -> bool:
        """The block of ``entry`` ended: whether the deadline is what cancelled it."""
        fired = entry.state == _FIRED
        if entry.state == _RUNNING:
            self._running -= 1
        entry.state = _DONE
        queue = self._queue
        while queue and queue[0].state == _DONE:
            queue.popleft()
        if len(queue) > 2 * self._running + 64:
            # An old block still runs at the head: drop the ended ones behind it.
            self._queue = deque(e for e in queue if e.state != _DONE)
        return fired and entry.task.uncancel() <= entry.cancelling

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._handle = None
        now = loop.time()
        queue = self._queue
        while queue:
            entry = queue[0]
            if entry.state == _RUNNING:
                if entry.due > now:
                    self._handle = loop.call_at(entry.due, self._fire)
                    return
                entry.state = _FIRED
                self._running -= 1
                entry.task.cancel()
            queue.popleft()


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
