"""Properties of the slot pools and executors, each example in its own virtual-time loop."""

from __future__ import annotations

import asyncio

from concurrency_helpers import Gauge, run_virtual
from hypothesis import given
from hypothesis import strategies as st

from headway.concurrency import ConcurrencyLimit


@given(
    limit=st.integers(1, 5),
    jobs=st.lists(
        st.tuples(
            st.floats(0, 2),  # start
            st.floats(0, 2),  # hold
            st.none() | st.floats(0, 4),  # cancel at
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_cancellation_at_random_points_restores_every_slot(
    limit: int, jobs: list[tuple[float, float, float | None]]
) -> None:
    async def main() -> None:
        pool = ConcurrencyLimit(limit)
        gauge = Gauge()

        async def job(start: float, hold: float) -> None:
            await asyncio.sleep(start)
            async with pool.slot():
                with gauge:
                    assert pool.in_use <= limit
                    await asyncio.sleep(hold)

        tasks = [asyncio.create_task(job(start, hold)) for start, hold, _ in jobs]

        async def cancel_later(task: asyncio.Task[None], when: float) -> None:
            await asyncio.sleep(when)
            task.cancel()

        cancellers = [
            asyncio.create_task(cancel_later(task, when))
            for task, (_, _, when) in zip(tasks, jobs, strict=True)
            if when is not None
        ]
        await asyncio.gather(*tasks, *cancellers, return_exceptions=True)
        assert gauge.max <= limit
        assert pool.in_use == 0
        assert pool.waiting == 0
        assert gauge.now == 0
        # and the pool still works at full width
        for _ in range(limit):
            assert pool.try_acquire()
        assert not pool.try_acquire()

    run_virtual(main)
