import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from aiolimiter import AsyncLimiter
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.testing import VirtualClock

T = TypeVar("T")


@pytest.mark.virtual_time
async def test_marker_runs_an_hour_instantly() -> None:
    loop = asyncio.get_running_loop()
    t0, real0 = loop.time(), time.perf_counter()
    await asyncio.sleep(3600)
    assert loop.time() - t0 == pytest.approx(3600)
    assert time.perf_counter() - real0 < 1.0


async def test_fixture_advance_and_timeout(virtual_clock: VirtualClock) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.sleep(60)
    assert virtual_clock.elapsed == pytest.approx(5)
    virtual_clock.advance(10)
    assert virtual_clock.elapsed == pytest.approx(15)
    with pytest.raises(ValueError):
        virtual_clock.advance(-1)


def work_in_a_thread() -> int:
    time.sleep(0.02)
    return 42


async def test_thread_work_is_waited_for_in_real_time(virtual_clock: VirtualClock) -> None:
    # A timer is pending while a thread works: the thread's result must win.
    async with asyncio.timeout(30):
        assert await asyncio.to_thread(work_in_a_thread) == 42


async def test_uninstall_restores_real_time_and_keeps_timers() -> None:
    loop = asyncio.get_running_loop()
    clock = VirtualClock().install()
    with pytest.raises(RuntimeError):
        clock.install()
    handle = loop.call_later(0.01, lambda: None)
    clock.advance(100)
    clock.uninstall()
    clock.uninstall()  # idempotent
    assert not clock.installed
    assert handle.when() - loop.time() < 1
    handle.cancel()
    assert "not installed" in repr(clock)


def run_with_watchdog(main: Callable[[], Coroutine[Any, Any, T]], limit: float = 10.0) -> T:
    """Run ``main()`` in a fresh loop; cancel it if it is still running after ``limit`` s.

    A livelocked loop still iterates, so a cancel sent from a timer thread ends it.
    """
    loop = asyncio.new_event_loop()
    task = loop.create_task(main())
    watchdog = threading.Timer(limit, loop.call_soon_threadsafe, (task.cancel,))
    watchdog.start()
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        pytest.fail(f"the loop was still running after {limit} s of real time: livelock")
    finally:
        watchdog.cancel()
        loop.close()


async def paced_acquirers(start: float, count: int, pause: float) -> tuple[float, int]:
    with VirtualClock(start=start) as clock:
        limiter = AsyncLimiter(1, 10)

        async def one() -> None:
            await asyncio.sleep(pause)
            async with limiter:
                pass

        await asyncio.gather(*(one() for _ in range(count)))
        return clock.elapsed, clock.jumps


def test_limiter_waker_at_now_plus_epsilon_does_not_livelock() -> None:
    # aiolimiter schedules its waker at "now + 2e-14", which rounds to now: the loop must
    # still move time forward (this hung forever before).
    elapsed, jumps = run_with_watchdog(lambda: paced_acquirers(3.3, 361, 0.0123))
    assert elapsed == pytest.approx(0.0123 + 360 * 10, abs=1e-6)
    assert jumps < 2 * 361


@settings(max_examples=15, deadline=None)
@given(
    start=st.floats(0, 1e7, allow_nan=False),
    count=st.integers(2, 40),
    pause=st.floats(0, 1, allow_nan=False),
)
def test_paced_acquirers_always_finish(start: float, count: int, pause: float) -> None:
    elapsed, _ = run_with_watchdog(lambda: paced_acquirers(start, count, pause))
    assert elapsed == pytest.approx(pause + (count - 1) * 10, rel=1e-6, abs=1e-3)


async def test_a_timer_due_now_does_not_move_time_once(virtual_clock: VirtualClock) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    done = loop.create_future()
    loop.call_at(t0, done.set_result, None)
    await done
    assert loop.time() == t0  # one timer due now runs now; time steps only on a stall


def test_the_default_jump_only_polls_open_sockets() -> None:
    async def main() -> tuple[float, int]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        try:
            with VirtualClock() as clock:
                for _ in range(1000):
                    await asyncio.sleep(15)
                return clock.elapsed, clock.jumps
        finally:
            server.close()
            await server.wait_closed()

    elapsed, jumps = run_with_watchdog(main)
    assert elapsed == pytest.approx(15_000)
    assert jumps == 1000


async def test_io_grace_waits_for_a_reply_from_another_thread() -> None:
    # A server in another thread answers in real time: with an io_grace the loop waits
    # for the reply before it jumps to the pending timeout.
    left, right = socket.socketpair()
    answer = threading.Timer(0.01, right.send, (b"pong",))
    try:
        with VirtualClock(io_grace=0.5) as clock:
            reader, writer = await asyncio.open_connection(sock=left)
            answer.start()
            async with asyncio.timeout(30):
                assert await reader.read(4) == b"pong"
            assert clock.elapsed < 30
            writer.close()
            await writer.wait_closed()
    finally:
        answer.join()
        right.close()


async def test_reinstalling_keeps_one_offset_and_timers_in_place() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(3):
        clock = VirtualClock().install()
        handle = loop.call_later(500, lambda: None)
        clock.advance(400)
        clock.uninstall()
        # The loop's time goes on from the virtual time reached, at real speed: the
        # timer keeps the 100 s it had left.
        assert 99 < handle.when() - loop.time() <= 100
        handle.cancel()
    assert loop.time.__self__.real.__self__ is loop  # type: ignore[attr-defined]


async def test_start_is_refused_while_timers_are_pending() -> None:
    loop = asyncio.get_running_loop()
    handle = loop.call_later(60, lambda: None)
    try:
        with pytest.raises(RuntimeError, match="pending timers"):
            VirtualClock(start=loop.time() + 100).install()
    finally:
        handle.cancel()
