"""The one clock every headway component reads and sleeps through.

Nothing in headway calls :func:`time.monotonic` or :func:`asyncio.sleep` directly: it
asks a :class:`Clock`. The default, :data:`LOOP_CLOCK`, reads the running event loop's
``time()`` and sleeps with :func:`asyncio.sleep`, both looked up at call time. A test
that patches ``asyncio.sleep`` or runs the loop in virtual time
(:mod:`headway.testing`) therefore sees and controls every wait.

>>> import asyncio
>>> async def main() -> bool:
...     t0 = LOOP_CLOCK.now()
...     await LOOP_CLOCK.sleep(0)
...     return LOOP_CLOCK.now() >= t0
>>> asyncio.run(main())
True
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["LOOP_CLOCK", "Clock", "LoopClock", "ManualClock", "resolve_clock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic seconds and a sleep; all a timed component needs."""

    def now(self) -> float:
        """Return monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` (at least zero)."""
        ...


class LoopClock:
    """The default clock: the running loop's ``time()`` and ``asyncio.sleep``.

    Outside a running loop ``now()`` falls back to :func:`time.monotonic`, which is the
    same clock the default event loop reads.
    """

    __slots__ = ()

    def now(self) -> float:
        return _loop_now()

    async def sleep(self, seconds: float) -> None:
        # Looked up at call time so that patching ``asyncio.sleep`` is honoured.
        await asyncio.sleep(seconds if seconds > 0 else 0)

    def __repr__(self) -> str:
        return "LoopClock()"


LOOP_CLOCK: Clock = LoopClock()


class ManualClock:
    """A clock that only moves when told to; for unit tests without an event loop.

    ``sleep`` advances the clock by the requested amount at once and yields to the loop,
    so code under test runs to completion without real waiting.

    >>> import asyncio
    >>> clock = ManualClock(start=100.0)
    >>> asyncio.run(clock.sleep(2.5))
    >>> clock.now()
    102.5
    >>> clock.advance(1)
    >>> clock.now()
    103.5
    """

    __slots__ = ("_now", "sleeps")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (negative values are refused)."""
        if seconds < 0:
            raise ValueError("a clock cannot move backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self._now += seconds
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"


def resolve_clock(clock: Clock | None) -> Clock:
    """Return ``clock``, or the default loop clock when it is ``None``."""
    return LOOP_CLOCK if clock is None else clock


_get_running_loop = asyncio.get_running_loop
_get_asyncgen_hooks = sys.get_asyncgen_hooks
_monotonic = time.monotonic


def _forgotten() -> None:
    return None


# Which loop is running, cheaply. Before Python 3.12, ``asyncio.get_running_loop()``
# makes a ``getpid()`` system call on every read (its fork check), often the largest part
# of a limiter's fast path. The event loop installs its own asyncgen ``firstiter`` hook (a
# bound method of the loop, a new object each time ``run_forever`` starts) in the
# running thread for the whole run and restores the previous hooks when the run ends.
# So while the hook seen beside a running loop is still this thread's hook, that loop's
# run goes on in this thread: it is the running loop. A weak reference keeps no loop
# alive; a fork forgets it (the child has no running loop, as asyncio says). Any other
# hook (another run, another thread, none) takes the exact, slow way.
_seen: Callable[[], Any] = _forgotten


def _remember(hook: Any, loop: asyncio.AbstractEventLoop) -> None:
    global _seen
    if getattr(hook, "__self__", None) is loop:
        _seen = weakref.ref(hook)


def _forget() -> None:
    global _seen
    _seen = _forgotten


if sys.version_info >= (3, 12):  # pragma: no cover - no system call there
    running_loop = asyncio.get_running_loop

    def _loop_now() -> float:
        try:
            return _get_running_loop().time()
        except RuntimeError:
            return _monotonic()

else:
    if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
        os.register_at_fork(after_in_child=_forget)

    def running_loop() -> asyncio.AbstractEventLoop:
        """``asyncio.get_running_loop()`` without its system call on the fast path.

        Raises :class:`RuntimeError` outside a running loop, as asyncio does.

        >>> async def main() -> bool:
        ...     return running_loop() is asyncio.get_running_loop()
        >>> asyncio.run(main())
        True
        """
        hook: Any = _get_asyncgen_hooks()[0]
        if hook is _seen() and hook is not None:
            loop: asyncio.AbstractEventLoop = hook.__self__
            return loop
        loop = _get_running_loop()
        _remember(hook, loop)
        return loop

    def _loop_now() -> float:
        # LOOP_CLOCK.now() without the method call: the running loop's time() (looked up
        # now, so a patched loop.time is honoured), else time.monotonic().
        hook: Any = _get_asyncgen_hooks()[0]
        if hook is _seen() and hook is not None:
            now: float = hook.__self__.time()
            return now
        try:
            loop = _get_running_loop()
        except RuntimeError:
            return _monotonic()
        _remember(hook, loop)
        return loop.time()


def now_function(clock: Clock) -> Callable[[], float]:
    """``clock.now`` for a hot path: the loop clock's as a plain function call."""
    return _loop_now if clock is LOOP_CLOCK else clock.now
