"""The async iterator of :meth:`AsyncExecutor.map <headway.concurrency.AsyncExecutor.map>`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from headway._resources import ClosesOnExit
from headway.errors import ExecutorShutdownError

if TYPE_CHECKING:
    from headway.concurrency.executor import AsyncExecutor

__all__ = ["MapIterator"]

R = TypeVar("R")

_EXHAUSTED: Any = object()


class MapIterator(ClosesOnExit, Generic[R]):
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
        while self._in_flight < self._window and not executor.closed:
            try:
                item = await self._next_source_item()
            except BaseException:
                await self.aclose()
                raise
            if item is _EXHAUSTED:
                return
            task = executor.launch(self._func, item)
            self._launched.add(task)
            if self._ordered:
                self._queue.append(task)
            task.add_done_callback(self._on_done)
            self._in_flight += 1

    async def _finish(self) -> None:
        # Nothing in flight. Either the input is exhausted, or the executor closed.
        if self._executor.closed:
            item = await self._next_source_item()
            if item is not _EXHAUSTED:
                await self.aclose()
                raise ExecutorShutdownError(
                    "executor shut down before every item of this map was submitted"
                )
        self._closed = True

    def _on_done(self, task: asyncio.Task[R]) -> None:
        self._executor.forget(task)
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
