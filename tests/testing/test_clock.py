import asyncio
import time

import pytest

from headway.testing import VirtualClock


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
