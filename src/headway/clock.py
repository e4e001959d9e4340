"""Clocks: where headway's timed components read time and sleep.

* :class:`Clock`: the protocol (``now()`` and ``async sleep(seconds)``);
* :data:`LOOP_CLOCK`: the running event loop's clock, the default everywhere;
* :class:`ManualClock`: time that moves only when told to (doctests, unit tests); for
  whole programs in virtual time see :class:`headway.testing.VirtualClock`.

>>> import asyncio
>>> clock = ManualClock()
>>> asyncio.run(clock.sleep(2.5))
>>> clock.now()
2.5
"""

from __future__ import annotations

from headway._clock import LOOP_CLOCK, Clock, ManualClock

__all__ = ["LOOP_CLOCK", "Clock", "ManualClock"]
