"""Virtual time for asyncio: the loop's clock jumps to the next timer whenever it is idle.

With a :class:`VirtualClock` installed on a loop, ``loop.time()`` returns virtual
seconds. Whenever the loop has nothing ready to run and no I/O is pending, instead of
sleeping until its next timer it moves virtual time forward to that timer at once. So
``asyncio.sleep(3600)``, ``asyncio.timeout``, headway's limiters, backoff sleeps and
breaker recovery, and FakeAPI's latencies all complete in microseconds of real time,
and give the same result every run.

Real I/O still works: the sockets are polled before every jump and what is ready is
served before time moves (a loopback server on the same loop, like
:class:`~headway.testing.FakeAPI`, has its bytes delivered by the time the client's send
returns), a wait with no timer at all is a real wait, and while work runs in a thread
(``run_in_executor``, ``asyncio.to_thread``, DNS look-ups) the loop waits for it in real
time instead of skipping past it. A jump costs one non-blocking poll, so an open socket
does not slow virtual time down.

Time always moves when only timers remain: a timer that keeps falling due at the same
instant (a limiter whose waker lands "now plus 1e-14", which rounds to now) makes the
clock step by the loop's clock resolution, as a real clock would, instead of spinning.

Pitfalls:

* Code that reads :func:`time.monotonic` or :func:`time.time` directly does not see
  virtual time. headway never does (see :mod:`headway._clock`).
* A server in *another thread or process* answers in real time while virtual time races
  ahead: an ``asyncio.timeout`` around such a call may fire early. Give such a test an
  ``io_grace`` (real seconds to wait for I/O before each jump), or no virtual time.
* Only loops built on :mod:`selectors` (the default loop on every platform but the
  Windows proactor) can be driven; uvloop cannot.

>>> import asyncio
>>> async def main() -> float:
...     with VirtualClock() as clock:
...         await asyncio.sleep(3600)  # one hour, instantly
...         return round(clock.elapsed)
>>> asyncio.run(main())
3600
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

__all__ = ["VirtualClock"]

#: Real seconds the loop waits for I/O before a jump while sockets are open (0: it polls).
DEFAULT_IO_GRACE = 0.0


class _OffsetTime:
    """A loop's real clock moved forward to where a :class:`VirtualClock` left it."""

    __slots__ = ("offset", "real")

    def __init__(self, real: Callable[[], float], offset: float) -> None:
        self.real = real
        self.offset = offset

    def time(self) -> float:
        return self.real() + self.offset


class VirtualClock:
    """A loop clock that runs in virtual time; also a headway :class:`~headway.Clock`.

    Use it as a context manager inside a running loop (``with VirtualClock() as c:``),
    or call :meth:`install` / :meth:`uninstall` with a loop. The pytest fixture
    ``virtual_clock`` and the ``virtual_time`` marker do this for you.

    Args:
        start: virtual time at install; by default the loop's current time, so timers
            scheduled before install keep their order.
        io_grace: real seconds to wait for I/O before each jump while sockets other
            than the loop's own are registered; by default the loop only polls them,
            which is enough for servers on the same loop (loopback bytes are delivered
            by the time the sender's write returns). Give a server in another thread or
            process a few milliseconds.
    """

    def __init__(self, start: float | None = None, *, io_grace: float = DEFAULT_IO_GRACE) -> None:
        self._start_arg = start
        self.io_grace = io_grace
        self._now = 0.0
        self._start = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._selector: selectors.BaseSelector | None = None
        self._real_select: Callable[[float | None], list[Any]] | None = None
        self._real_time: Callable[[], float] | None = None
        self._real_run_in_executor: Callable[..., asyncio.Future[Any]] | None = None
        self._threads = 0
        self._due_at = math.nan
        self.jumps = 0

    # -- Clock protocol -------------------------------------------------------------------
    def now(self) -> float:
        """Current virtual time in seconds."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of virtual time."""
        await asyncio.sleep(max(0.0, seconds))

    # -- control --------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Virtual seconds since install."""
        return self._now - self._start

    @property
    def installed(self) -> bool:
        return self._loop is not None

    def advance(self, seconds: float) -> None:
        """Move virtual time forward by hand; timers now due run at the next iteration."""
        if seconds < 0:
            raise ValueError("virtual time cannot move backwards")
        self._now += seconds

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> Self:
        """Drive ``loop`` (default: the running loop) in virtual time."""
        if self._loop is not None:
            raise RuntimeError("this VirtualClock is already installed on a loop")
        loop = loop if loop is not None else asyncio.get_running_loop()
        selector = getattr(loop, "_selector", None)
        if not isinstance(selector, selectors.BaseSelector):
            raise RuntimeError(
                f"virtual time needs a selector event loop; {type(loop).__name__} is not one"
            )
        if getattr(loop.time, "__self__", None).__class__ is VirtualClock:
            raise RuntimeError("another VirtualClock is already installed on this loop")
        self._loop = loop
        self._selector = selector
        self._real_time = loop.time
        self._real_select = selector.select
        self._real_run_in_executor = loop.run_in_executor
        now = loop.time()
        if self._start_arg is not None and self._start_arg != now:
            if getattr(loop, "_scheduled", None):
                raise RuntimeError(
                    "VirtualClock(start=...) needs a loop without pending timers (they are "
                    "set in the loop's time); leave start out to begin at the loop's time"
                )
            now = self._start_arg
        self._now = self._start = now
        loop.time = self.now  # type: ignore[method-assign]
        selector.select = self._select  # type: ignore[method-assign]
        loop.run_in_executor = self._run_in_executor  # type: ignore[method-assign,assignment]
        return self

    def uninstall(self) -> None:
        """Give the loop a real clock back; pending timers keep their remaining delay.

        The loop's time then runs at real speed on from the virtual time reached (real
        time plus a fixed offset), so the timers set in virtual time stay in place.
        """
        loop, selector = self._loop, self._selector
        if loop is None or selector is None:
            return
        del selector.select
        del loop.run_in_executor
        real = self._real_time
        assert real is not None
        bound = getattr(real, "__self__", None)
        if isinstance(bound, _OffsetTime):
            real = bound.real  # one offset, not one per install
        offset = _OffsetTime(real, self._now - real())
        loop.time = offset.time  # type: ignore[method-assign]
        self._loop = self._selector = None

    def __enter__(self) -> Self:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    def __repr__(self) -> str:
        state = "installed" if self._loop is not None else "not installed"
        return f"VirtualClock(elapsed={self.elapsed:.6f}, {state})"

    # -- internals ------------------------------------------------------------------------
    def _select(self, timeout: float | None = None) -> list[Any]:
        real_select = self._real_select
        assert real_select is not None
        if timeout is None:
            # Nothing scheduled at all: only I/O or another thread can wake the loop.
            return real_select(None)
        events = real_select(0)
        if events:
            return events
        if timeout <= 0:
            self._step_if_stalled()
            return events
        if self._threads:
            # A thread is working: its time is real, wait for it (or for the timer).
            events = real_select(timeout)
            if events:
                return events
        elif self._has_sockets():
            events = self._grace(real_select, timeout)
            if events:
                return events
        self._now += timeout
        self.jumps += 1
        return []

    def _has_sockets(self) -> bool:
        # The loop's own self-pipe is always registered; anything more is a socket.
        assert self._selector is not None
        return len(self._selector.get_map()) > 1

    def _grace(self, real_select: Callable[[float | None], list[Any]], timeout: float) -> list[Any]:
        if self.io_grace > 0:
            return real_select(min(timeout, self.io_grace))
        return []  # polled once already: what has arrived is served, nothing more to wait

    def _step_if_stalled(self) -> None:
        """A timer is due and nothing else is ready: make sure time does not stand still.

        The first such pass at an instant is normal (a timer due now runs now). A second
        one at the same instant means timers keep falling due "now" (``now + 1e-14``
        rounds to ``now``): step by the loop's clock resolution, as real time would.
        """
        loop = self._loop
        if getattr(loop, "_ready", None) or getattr(loop, "_stopping", False):
            return  # callbacks are ready: the loop is working, not waiting on a timer
        now = self._now
        if now != self._due_at:
            self._due_at = now
            return
        step = max(getattr(loop, "_clock_resolution", 1e-9), math.ulp(now))
        self._now = now + step
        self.jumps += 1

    def _run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        assert self._real_run_in_executor is not None
        future = self._real_run_in_executor(executor, func, *args)
        self._threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future[Any]) -> None:
        self._threads -= 1
