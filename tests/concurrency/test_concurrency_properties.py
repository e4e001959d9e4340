"""Properties of the slot pools and executors, each example in its own virtual-time loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from concurrency_helpers import Gauge, run_virtual
from hypothesis import given
from hypothesis import strategies as st

from headway.concurrency import AdaptiveConcurrency, AsyncExecutor, ConcurrencyLimit
from headway.errors import ExecutorShutdownError


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


@given(
    cap=st.integers(1, 4),
    window=st.none() | st.integers(1, 6),
    ordered=st.booleans(),
    delays=st.lists(st.floats(0, 3), min_size=0, max_size=30),
)
def test_map_returns_every_result_with_bounded_work(
    cap: int, window: int | None, ordered: bool, delays: list[float]
) -> None:
    async def main() -> None:
        gauge = Gauge()
        pulled = consumed = 0
        bound = window or cap

        def source() -> Iterator[int]:
            nonlocal pulled
            for i in range(len(delays)):
                pulled += 1
                yield i

        async def work(i: int) -> int:
            with gauge:
                await asyncio.sleep(delays[i])
            return i

        out: list[int] = []
        async with AsyncExecutor(cap) as ex:
            async for r in ex.map(work, source(), ordered=ordered, max_in_flight=window):
                consumed += 1
                assert pulled - consumed <= bound
                out.append(r)
        assert gauge.max <= cap
        if ordered:
            assert out == list(range(len(delays)))
        else:
            assert sorted(out) == list(range(len(delays)))
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run_virtual(main)


@given(
    cap=st.none() | st.integers(1, 4),
    calls=st.lists(st.tuples(st.floats(0, 2), st.floats(0, 6)), min_size=1, max_size=15),
    shutdown_at=st.floats(0, 3),
    timeout=st.none() | st.floats(0, 4),
)
def test_shutdown_at_a_random_point_settles_every_call(
    cap: int | None,
    calls: list[tuple[float, float]],
    shutdown_at: float,
    timeout: float | None,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ex = AsyncExecutor(cap)

        async def submit(start: float, duration: float) -> tuple[str, float]:
            await asyncio.sleep(start)
            try:
                await ex.execute(asyncio.sleep, duration)
            except ExecutorShutdownError:
                return "refused", loop.time()
            return "done", loop.time()

        t0 = loop.time()
        tasks = [asyncio.create_task(submit(s, d)) for s, d in calls]
        await asyncio.sleep(shutdown_at)
        await ex.shutdown(timeout)
        closed_at = loop.time()
        assert ex.pending == 0
        assert ex.active == 0
        outcomes = await asyncio.gather(*tasks)  # nobody is left cancelled
        for (start, _), (outcome, at) in zip(calls, outcomes, strict=True):
            if outcome == "done":
                assert at <= closed_at
            elif t0 + start < t0 + shutdown_at and timeout is None:
                pytest.fail("shutdown() without a timeout cancelled a submitted call")
        if timeout is not None:
            assert closed_at - t0 <= shutdown_at + timeout + 1e-6
        assert asyncio.all_tasks() == {asyncio.current_task()}

    run_virtual(main)


@given(
    events=st.lists(
        st.tuples(st.sampled_from(["ok", "overload", "slow"]), st.floats(0, 1)),
        max_size=60,
    ),
    initial=st.integers(2, 20),
)
def test_adaptive_limit_stays_within_bounds(events: list[tuple[str, float]], initial: int) -> None:
    async def main() -> None:
        limit = AdaptiveConcurrency(initial, min_limit=2, max_limit=20, slow_call_duration=0.8)
        gauge = Gauge()

        async def call(kind: str, latency: float) -> None:
            async with limit.slot():
                with gauge:
                    await asyncio.sleep(latency)
                    if kind == "overload":
                        raise TimeoutError
                    if kind == "slow":
                        await asyncio.sleep(1)  # virtual time

        tasks = [asyncio.create_task(call(k, lat)) for k, lat in events]
        await asyncio.gather(*tasks, return_exceptions=True)
        assert 2 <= limit.limit <= 20
        assert gauge.max <= max(initial, 20)
        assert limit.in_use == 0
        assert limit.waiting == 0

    run_virtual(main)
