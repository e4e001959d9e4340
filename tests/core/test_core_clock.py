"""headway.clock: the loop clock, resolve_clock and ManualClock."""

import asyncio

import pytest

from headway import Clock, ManualClock
from headway._clock import resolve_clock
from headway.clock import LOOP_CLOCK


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
