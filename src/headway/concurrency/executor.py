"""Executors: :class:`AsyncExecutor` (bounded, clean shutdown) and :class:`RateLimitedExecutor`."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from headway import _resources
from headway._clock import Clock, resolve_clock
from headway.concurrency.limit import ConcurrencyLimit, _check_limit
from headway.concurrency.mapping import MapIterator
from headway.errors import ExecutorShutdownError

if TYPE_CHECKING:
    from headway.limits.bucket import TokenBucketRateLimiter

__all__ = ["DEFAULT_MAP_WINDOW", "AsyncExecutor", "RateLimitedExecutor"]

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

#: In-flight bound of :meth:`AsyncExecutor.map` when the executor itself is unbounded.
DEFAULT_MAP_WINDOW = 100


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
        "__dict__",  # instances stay mockable: patch.object(obj, "method", ...)
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

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
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

    def launch(self, func: Callable[..., Awaitable[T]], item: Any) -> asyncio.Task[T]:
        """Start ``func(item)`` as a call of this executor, in a task it waits for on close.

        For :meth:`map`'s iterator (a task it owns); pair with :meth:`forget` when the
        task is done.
        """
        task = asyncio.get_running_loop().create_task(self._call(func, (item,), {}))
        self._tasks.add(task)
        return task

    def forget(self, task: asyncio.Task[Any]) -> None:
        """A task of :meth:`launch` is done: stop waiting for it on close."""
        self._tasks.discard(task)
        if self._closed and not self._tasks and not self._calls:
            self._set_idle()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"AsyncExecutor(max_concurrency={self.max_concurrency}, active={self._running}, "
            f"{state})"
        )


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

    __slots__ = ("__dict__", "executor", "limiter")  # "__dict__": mockable instances

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

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.executor.__aexit__(*exc_info)

    def __repr__(self) -> str:
        return f"RateLimitedExecutor(limiter={self.limiter!r}, executor={self.executor!r})"
