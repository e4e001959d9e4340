"""headway.clock: the loop clock, resolve_clock and ManualClock."""

import asyncio
import gc
import os
import sys
import threading
import time
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from headway import Clock, ManualClock
from headway._clock import resolve_clock, running_loop
from headway.clock import LOOP_CLOCK
from headway.limits import TokenBucketRateLimiter
from headway.testing import VirtualClock

T = TypeVar("T")


async def test_loop_clock_reads_the_running_loop() -> None:
    loop = asyncio.get_running_loop()
    assert abs(LOOP_CLOCK.now() - loop.time()) < 0.5
    await LOOP_CLOCK.sleep(-1)
    assert isinstance(LOOP_CLOCK, Clock)
    assert repr(LOOP_CLOCK) == "LoopClock()"


def test_loop_clock_outside_a_loop_and_resolve() -> None:
    assert LOOP_CLOCK.now() > 0
    manual = ManualClock()
    assert resolve_clock(None) is LOOP_CLOCK
    assert resolve_clock(manual) is manual


async def test_manual_clock() -> None:
    clock = ManualClock(start=5)
    await clock.sleep(-3)
    await clock.sleep(2)
    assert clock.now() == 7
    assert clock.sleeps == [0.0, 2]
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert "7" in repr(clock)


# -- the loop clock's fast path (the running loop found without a system call) ---------------
# It must follow whatever the running loop's ``time`` is now: patched mid-run (virtual
# time, looptime), another loop in a later ``asyncio.run``, another loop in another thread.


def _patched(loop: asyncio.AbstractEventLoop, value: float) -> None:
    loop.time = lambda: value  # type: ignore[method-assign]


async def test_the_loop_clock_follows_a_patch_made_while_the_loop_runs() -> None:
    loop = asyncio.get_running_loop()
    limiter = TokenBucketRateLimiter(rate=1, max_tokens=1)
    assert running_loop() is loop
    before = LOOP_CLOCK.now()  # the fast path has seen this loop
    with VirtualClock(start=before) as clock:
        clock.advance(3600.0)
        assert LOOP_CLOCK.now() == before + 3600.0
        assert limiter.try_take()
        assert not limiter.try_take()
        clock.advance(1.0)  # one second of loop time refills one request
        assert limiter.try_take()
    _patched(loop, 12345.0)
    try:
        assert LOOP_CLOCK.now() == 12345.0
        assert running_loop() is loop
    finally:
        del loop.time


def test_one_limiter_across_runs_reads_each_runs_loop() -> None:
    limiter = TokenBucketRateLimiter(rate=1, max_tokens=1, clock=LOOP_CLOCK)

    async def run(at: float) -> tuple[float, bool, bool]:
        loop = asyncio.get_running_loop()
        _patched(loop, at)
        assert running_loop() is loop
        return LOOP_CLOCK.now(), limiter.try_take(), limiter.try_take()

    t = time.monotonic() + 1000.0  # the limiter was made at time.monotonic()
    assert run_in_new_loop(run(t)) == (t, True, False)
    assert run_in_new_loop(run(t + 0.5)) == (t + 0.5, False, False)  # half a token so far
    assert run_in_new_loop(run(t + 1.5)) == (t + 1.5, True, False)
    # Outside any loop: time.monotonic(), not the last loop's (patched) time.
    assert LOOP_CLOCK.now() == pytest.approx(time.monotonic(), abs=60.0)


def run_in_new_loop(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_loops_in_threads_each_read_their_own_time() -> None:
    go = threading.Barrier(2)
    seen: dict[float, set[float]] = {}

    async def reader(at: float) -> None:
        _patched(asyncio.get_running_loop(), at)
        reads = seen.setdefault(at, set())
        go.wait()
        for _ in range(2000):  # the two threads take turns (switch interval shortened)
            reads.add(LOOP_CLOCK.now())
            assert running_loop() is asyncio.get_running_loop()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        other = threading.Thread(target=lambda: run_in_new_loop(reader(2.0)))
        other.start()
        run_in_new_loop(reader(1.0))
        other.join()
    finally:
        sys.setswitchinterval(interval)
    assert seen == {1.0: {1.0}, 2.0: {2.0}}


def test_a_loop_moved_to_another_thread_is_not_taken_for_this_threads_loop() -> None:
    moved = asyncio.new_event_loop()
    _patched(moved, 1.0)
    started, release = threading.Event(), threading.Event()

    async def read() -> float:
        return LOOP_CLOCK.now()

    async def hold() -> None:
        started.set()
        await moved.run_in_executor(None, release.wait)

    try:
        assert moved.run_until_complete(read()) == 1.0  # seen running in this thread
        other = threading.Thread(target=lambda: moved.run_until_complete(hold()))
        other.start()
        started.wait()  # `moved` now runs in the other thread

        async def here() -> tuple[float, bool]:
            _patched(asyncio.get_running_loop(), 2.0)
            return LOOP_CLOCK.now(), running_loop() is asyncio.get_running_loop()

        try:
            assert run_in_new_loop(here()) == (2.0, True)
        finally:
            release.set()
            other.join()
    finally:
        moved.close()


async def test_foreign_asyncgen_hooks_take_the_exact_way() -> None:
    loop = asyncio.get_running_loop()
    hooks = sys.get_asyncgen_hooks()
    _patched(loop, 7.0)
    sys.set_asyncgen_hooks(firstiter=lambda agen: None)
    try:
        assert LOOP_CLOCK.now() == 7.0
        assert running_loop() is loop
    finally:
        sys.set_asyncgen_hooks(*hooks)
        del loop.time


def test_no_loop_is_kept_alive_and_none_is_found_after_its_run() -> None:
    async def main() -> weakref.ref[asyncio.AbstractEventLoop]:
        LOOP_CLOCK.now()
        return weakref.ref(running_loop())

    ref = asyncio.run(main())
    gc.collect()
    assert ref() is None
    with pytest.raises(RuntimeError):
        running_loop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
async def test_a_forked_child_has_no_running_loop() -> None:
    running_loop()  # seen in the parent
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code only
        code = 0
        try:
            running_loop()
            code = 1
        except RuntimeError:
            code = 0 if abs(LOOP_CLOCK.now() - time.monotonic()) < 60 else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert running_loop() is asyncio.get_running_loop()
