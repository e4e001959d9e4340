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

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from headway import _resources
from headway._clock import Clock, resolve_clock
from headway.errors import (
    ConfigurationError,
    ExecutorShutdownError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
)
from headway.events import CONCURRENCY_LIMIT_CHANGED, EventListener, emit, enabled

if TYPE_CHECKING:
    from headway.limits.bucket import TokenBucketRateLimiter

__all__ = [
    "DEFAULT_MAP_WINDOW",
    "AdaptiveConcurrency",
    "AsyncExecutor",
    "ConcurrencyLimit",
    "MapIterator",
    "RateLimitedExecutor",
    "is_overload",
]

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

#: In-flight bound of :meth:`AsyncExecutor.map` when the executor itself is unbounded.
DEFAULT_MAP_WINDOW = 100

#: Server statuses that say "too much load" (service unavailable, gateway timeout,
#: Anthropic's overloaded).
_OVERLOAD_STATUSES = frozenset({503, 504, 529})


def _check_limit(value: int, what: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be an integer >= 1, got {value!r}")
    return value


# -- slot pools -------------------------------------------------------------------------


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

    __slots__ = ("_in_use", "_limit", "_slot", "_waiters")

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
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
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
        if self._in_use <= 0:
            raise RuntimeError("release() called more times than acquire()")
        self._in_use -= 1
        if self._waiters:
            self._wake()

    def slot(self) -> _Slot:
        """``async with pool.slot():`` holds one slot for the block."""
        return self._slot

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

    __slots__ = (
        "_clock",
        "_epoch",
        "_estimate",
        "decrease",
        "increase",
        "listeners",
        "max_limit",
        "min_limit",
        "name",
        "slow_call_duration",
    )

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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        limit = self._limit
        try:
            if exc is None:
                limit.on_success(limit._clock.now() - self._started)
            elif is_overload(exc) and self._epoch == limit._epoch:
                limit.on_overload()
        finally:
            limit.release()


# -- executors --------------------------------------------------------------------------


class _Call:
    """Book-keeping for one call in flight through an executor."""

    __slots__ = ("cancelled_by_shutdown", "cancelling", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.cancelling = task.cancelling() if task is not None else 0
        self.cancelled_by_shutdown = False


class AsyncExecutor:
    """Run coroutine functions with bounded concurrency, and shut down cleanly.

    :meth:`execute` runs the call in the caller's own task once a slot is free (no task
    is created). :meth:`map` streams results with at most ``max_in_flight`` calls
    launched and not yet consumed; its tasks belong to the executor. After
    :meth:`shutdown` starts, new work is refused with
    :class:`~headway.errors.ExecutorShutdownError`; calls already submitted may finish
    within the timeout, then are cancelled, and their callers get
    :class:`~headway.errors.ExecutorShutdownError` (the caller's task itself is not
    left cancelled). Every task is awaited and every exception retrieved.

    As an async context manager it shuts down on exit: after a clean exit it waits for
    work still in flight; after an exception (or cancellation) it cancels it at once.

    Args:
        max_concurrency: the most calls running at once; ``None`` for no bound.
        clock: the clock the shutdown timeout is measured with.

    >>> import asyncio
    >>> async def main() -> str:
    ...     ex = AsyncExecutor(max_concurrency=4)
    ...     await ex.shutdown()
    ...     try:
    ...         await ex.execute(asyncio.sleep, 0)
    ...     except ExecutorShutdownError as exc:
    ...         return type(exc).__name__
    ...     return "ran"
    >>> asyncio.run(main())
    'ExecutorShutdownError'
    """

    __slots__ = (
        "__weakref__",
        "_calls",
        "_clock",
        "_closed",
        "_idle_waiters",
        "_pool",
        "_running",
        "_tasks",
    )

    def __init__(self, max_concurrency: int | None = None, *, clock: Clock | None = None) -> None:
        self._pool = None if max_concurrency is None else ConcurrencyLimit(max_concurrency)
        self._clock = resolve_clock(clock)
        self._closed = False
        self._running = 0
        self._calls: set[_Call] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle_waiters: list[asyncio.Future[None]] = []
        _resources.track(self)  # the leak guard names an executor never shut down

    @property
    def max_concurrency(self) -> int | None:
        """The most calls running at once (``None``: unbounded)."""
        return None if self._pool is None else self._pool.limit

    @property
    def active(self) -> int:
        """Calls running now (holding a slot)."""
        return self._running

    @property
    def pending(self) -> int:
        """Calls submitted and not finished: running or waiting for a slot."""
        return len(self._calls)

    @property
    def closed(self) -> bool:
        """Whether shutdown has started; new work is refused."""
        return self._closed

    async def execute(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Wait for a slot, then ``await func(*args, **kwargs)`` and return its result.

        Raises:
            ExecutorShutdownError: the executor is shut down, or shut down and cancelled
                this call before it finished.
        """
        if self._closed:
            raise ExecutorShutdownError(
                "executor is shut down: it accepts no new work; create a new executor"
            )
        return await self._call(func, args, kwargs)

    async def _call(self, func: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
        call = _Call(asyncio.current_task())
        calls = self._calls
        calls.add(call)
        try:
            pool = self._pool
            if pool is not None:
                await pool.acquire()
            self._running += 1
            try:
                return await func(*args, **kwargs)
            finally:
                self._running -= 1
                if pool is not None:
                    pool.release()
        except asyncio.CancelledError:
            task = call.task
            if call.cancelled_by_shutdown and task is not None:
                call.cancelled_by_shutdown = False  # our cancel request is taken back here
                if task.uncancel() <= call.cancelling:
                    raise ExecutorShutdownError(
                        "executor shut down before this call finished; the call was cancelled"
                    ) from None
            raise
        finally:
            calls.discard(call)
            if call.cancelled_by_shutdown and call.task is not None:
                call.task.uncancel()  # the call swallowed our cancel: take the request back
            if self._closed and not calls and not self._tasks:
                self._set_idle()

    def map(
        self,
        func: Callable[[T], Awaitable[R]],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
    ) -> MapIterator[R]:
        """Call ``func(item)`` for each item concurrently; stream the results.

        At most ``max_in_flight`` calls are launched and not yet consumed (default:
        ``max_concurrency``, or :data:`DEFAULT_MAP_WINDOW` if unbounded), so memory stays
        bounded however long the input. Results come in input order (``ordered=True``)
        or as they complete. The first failure cancels the remaining calls and is
        raised. ``iterable`` may be sync or async; it is read lazily.

        Use ``async with ex.map(...) as results:`` (or call ``aclose()``) to cancel the
        rest when you stop early; otherwise the executor's shutdown does it.
        """
        if max_in_flight is None:
            max_in_flight = self.max_concurrency or DEFAULT_MAP_WINDOW
        _check_limit(max_in_flight, "max_in_flight")
        return MapIterator(self, func, iterable, ordered, max_in_flight)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Refuse new work, wait for calls in flight, cancel what is left after ``timeout``.

        ``timeout=None`` waits for every call; ``timeout=0`` cancels at once. Cancelled
        calls raise :class:`~headway.errors.ExecutorShutdownError` in their callers. Returns
        when nothing of the executor runs any more. Idempotent; safe to call concurrently.
        """
        self._closed = True
        _resources.untrack(self)
        if self._is_idle():
            return
        current = asyncio.current_task()
        if any(call.task is current for call in self._calls) or current in self._tasks:
            raise RuntimeError("an executor cannot be shut down from inside one of its calls")
        if timeout is None:
            await self._wait_idle()
        elif timeout > 0:
            await self._wait_idle(timeout)
        if self._is_idle():
            return
        tasks: set[asyncio.Task[Any]] = set()
        for call in self._calls:
            if call.task is not None and not call.cancelled_by_shutdown:
                call.cancelled_by_shutdown = True
                tasks.add(call.task)
        tasks.update(self._tasks)
        for task in tasks:
            task.cancel()
        await self._wait_idle()

    async def __aenter__(self) -> AsyncExecutor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown(None if exc_type is None else 0)

    async def aclose(self) -> None:
        """Shut down, waiting for calls in flight (``shutdown()``)."""
        await self.shutdown()

    def _is_idle(self) -> bool:
        return not self._calls and not self._tasks

    def _set_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait_idle(self, timeout: float | None = None) -> None:
        if self._is_idle():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._idle_waiters.append(fut)
        if timeout is None:
            try:
                await fut
            finally:
                fut.cancel()
            return
        timer = loop.create_task(self._clock.sleep(timeout))
        try:
            await asyncio.wait((fut, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            fut.cancel()
            timer.cancel()
            await asyncio.wait((timer,))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._closed and not self._tasks and not self._calls:
            self._set_idle()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"AsyncExecutor(max_concurrency={self.max_concurrency}, active={self._running}, "
            f"{state})"
        )


_EXHAUSTED: Any = object()


class MapIterator(Generic[R]):
    """The async iterator :meth:`AsyncExecutor.map` returns (also an async context manager).

    ``aclose()`` (or leaving ``async with``) cancels the calls still in flight and waits
    for them to finish. The input is never closed: it belongs to the caller.
    """

    __slots__ = (
        "_async_source",
        "_closed",
        "_executor",
        "_func",
        "_in_flight",
        "_launched",
        "_ordered",
        "_queue",
        "_source",
        "_wakeup",
        "_window",
    )

    def __init__(
        self,
        executor: AsyncExecutor,
        func: Callable[[Any], Awaitable[R]],
        iterable: Iterable[Any] | AsyncIterable[Any],
        ordered: bool,
        window: int,
    ) -> None:
        self._executor = executor
        self._func = func
        self._ordered = ordered
        self._window = window
        if isinstance(iterable, AsyncIterable):
            self._async_source: AsyncIterator[Any] | None = aiter(iterable)
            self._source: Iterator[Any] | None = None
        else:
            self._async_source = None
            self._source = iter(iterable)
        self._closed = False
        self._in_flight = 0  # launched and not yet yielded
        self._launched: set[asyncio.Task[R]] = set()  # not yet done
        # ordered: launch order; unordered: completion order
        self._queue: deque[asyncio.Task[R]] = deque()
        self._wakeup: asyncio.Future[None] | None = None

    def __aiter__(self) -> MapIterator[R]:
        return self

    async def __aenter__(self) -> MapIterator[R]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def __anext__(self) -> R:
        if self._closed:
            raise StopAsyncIteration
        queue = self._queue
        while True:
            await self._fill()
            if queue and queue[0].done():
                task = queue.popleft()
                break
            if self._in_flight == 0:
                await self._finish()
                raise StopAsyncIteration
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._wakeup = fut
            try:
                await fut
            finally:
                self._wakeup = None
            if self._closed:  # closed by aclose() from elsewhere meanwhile
                raise StopAsyncIteration
        self._in_flight -= 1
        if task.cancelled():
            await self.aclose()
            raise ExecutorShutdownError(
                "executor shut down before this map finished; its calls were cancelled"
            )
        exc = task.exception()
        if exc is not None:
            await self.aclose()
            raise exc
        return task.result()

    async def _next_source_item(self) -> Any:
        if self._async_source is not None:
            try:
                return await anext(self._async_source)
            except StopAsyncIteration:
                self._async_source = None
                return _EXHAUSTED
        if self._source is not None:
            try:
                return next(self._source)
            except StopIteration:
                self._source = None
        return _EXHAUSTED

    async def _fill(self) -> None:
        executor = self._executor
        while self._in_flight < self._window and not executor._closed:
            try:
                item = await self._next_source_item()
            except BaseException:
                await self.aclose()
                raise
            if item is _EXHAUSTED:
                return
            task = asyncio.get_running_loop().create_task(executor._call(self._func, (item,), {}))
            executor._track(task)
            self._launched.add(task)
            if self._ordered:
                self._queue.append(task)
            task.add_done_callback(self._on_done)
            self._in_flight += 1

    async def _finish(self) -> None:
        # Nothing in flight. Either the input is exhausted, or the executor closed.
        if self._executor._closed:
            item = await self._next_source_item()
            if item is not _EXHAUSTED:
                await self.aclose()
                raise ExecutorShutdownError(
                    "executor shut down before every item of this map was submitted"
                )
        self._closed = True

    def _on_done(self, task: asyncio.Task[R]) -> None:
        self._executor._untrack(task)
        self._launched.discard(task)
        if not task.cancelled():
            task.exception()  # mark retrieved: the consumer gets it from result()
        if self._closed:
            return
        if not self._ordered:
            self._queue.append(task)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def aclose(self) -> None:
        """Stop: cancel the calls still in flight and wait until they have finished."""
        self._closed = True
        self._queue.clear()
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        while self._launched:
            pending = tuple(self._launched)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    def __repr__(self) -> str:
        return f"MapIterator(in_flight={self._in_flight}, closed={self._closed})"


class RateLimitedExecutor:
    """An :class:`AsyncExecutor` whose calls also wait for a token-bucket limiter.

    Every call first takes a concurrency slot, then waits for a token, then runs: the
    concurrency cap and the rate both always hold. :meth:`shutdown` is the inner
    executor's.

    Args:
        rate: tokens per ``period`` (calls per period).
        period: seconds per ``rate`` tokens.
        max_concurrency: the most calls running at once (``None``: unbounded).
        max_tokens: the bucket's burst size (default ``rate``).
        limiter: use this limiter (shared with others) instead of building one; ``rate``,
            ``period`` and ``max_tokens`` are then ignored.
        clock: the clock for the limiter built here and for the shutdown timeout.

    >>> import asyncio
    >>> async def main() -> list[int]:
    ...     async with RateLimitedExecutor(rate=100, max_concurrency=5) as ex:
    ...         return [r async for r in ex.map(abs_later, [-1, -2, 3])]
    >>> async def abs_later(x: int) -> int:
    ...     return abs(x)
    >>> asyncio.run(main())
    [1, 2, 3]
    """

    __slots__ = ("executor", "limiter")

    def __init__(
        self,
        rate: float,
        period: float = 1.0,
        max_concurrency: int | None = None,
        *,
        max_tokens: float | None = None,
        limiter: TokenBucketRateLimiter | None = None,
        clock: Clock | None = None,
    ) -> None:
        if limiter is None:
            from headway.limits.bucket import TokenBucketRateLimiter

            limiter = TokenBucketRateLimiter(rate, period, max_tokens, clock=clock)
        self.limiter: TokenBucketRateLimiter = limiter
        self.executor = AsyncExecutor(max_concurrency, clock=clock)

    @property
    def max_concurrency(self) -> int | None:
        """The inner executor's concurrency cap."""
        return self.executor.max_concurrency

    @property
    def closed(self) -> bool:
        """Whether the inner executor has started shutting down."""
        return self.executor.closed

    async def _limited(self, func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        # Runs inside the executor's slot: the token wait is part of the held slot.
        await self.limiter.wait()
        return await func(*args, **kwargs)

    async def execute(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Take a slot, wait for a token, then ``await func(*args, **kwargs)``."""
        result: T = await self.executor.execute(self._limited, func, *args, **kwargs)
        return result

    def map(
        self,
        func: Callable[[T], Awaitable[R]],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
    ) -> MapIterator[R]:
        """:meth:`AsyncExecutor.map` with every call paced by the limiter."""
        limited: Callable[[T], Awaitable[R]] = functools.partial(self._limited, func)
        return self.executor.map(limited, iterable, ordered=ordered, max_in_flight=max_in_flight)

    async def shutdown(self, timeout: float | None = None) -> None:
        """Shut the inner executor down (see :meth:`AsyncExecutor.shutdown`)."""
        await self.executor.shutdown(timeout)

    async def aclose(self) -> None:
        """Shut down, waiting for calls in flight."""
        await self.executor.shutdown()

    async def __aenter__(self) -> RateLimitedExecutor:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.executor.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"RateLimitedExecutor(limiter={self.limiter!r}, executor={self.executor!r})"
