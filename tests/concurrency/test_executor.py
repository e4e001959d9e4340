from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from concurrency_helpers import Gauge

from headway.concurrency import DEFAULT_MAP_WINDOW, AsyncExecutor
from headway.errors import ConfigurationError, ExecutorShutdownError

pytestmark = pytest.mark.virtual_time


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def echo(x: int, *, delay: float = 0.0) -> int:
    await asyncio.sleep(delay)
    return x


async def fail(x: int) -> int:
    await asyncio.sleep(0)
    raise ValueError(f"bad {x}")


# -- execute ----------------------------------------------------------------------------


async def test_execute_returns_and_passes_arguments() -> None:
    ex = AsyncExecutor()
    assert await ex.execute(echo, 3, delay=1) == 3
    assert ex.max_concurrency is None
    assert ex.active == 0
    assert not ex.closed
    assert "open" in repr(ex)
    await ex.aclose()


async def test_execute_propagates_errors() -> None:
    ex = AsyncExecutor(2)
    with pytest.raises(ValueError, match="bad 1"):
        await ex.execute(fail, 1)
    assert ex.active == 0
    assert await ex.execute(echo, 2) == 2  # the slot came back
    await ex.aclose()


async def test_execute_is_bounded() -> None:
    ex = AsyncExecutor(max_concurrency=3)
    gauge = Gauge()

    async def work(i: int) -> int:
        with gauge:
            assert ex.active <= 3
            await asyncio.sleep(1 + i % 3)  # virtual time
        return i

    results = await asyncio.gather(*(ex.execute(work, i) for i in range(20)))
    assert results == list(range(20))
    assert gauge.max == 3
    assert ex.pending == 0
    await ex.aclose()


async def test_unbounded_executor_runs_everything_at_once() -> None:
    ex = AsyncExecutor()
    gauge = Gauge()

    async def work() -> None:
        with gauge:
            await asyncio.sleep(1)  # virtual time

    await asyncio.gather(*(ex.execute(work) for _ in range(50)))
    assert gauge.max == 50
    await ex.aclose()


async def test_execute_after_shutdown_is_refused() -> None:
    ex = AsyncExecutor(1)
    await ex.shutdown()
    assert ex.closed
    with pytest.raises(ExecutorShutdownError, match="shut down"):
        await ex.execute(echo, 1)
    await ex.shutdown()  # idempotent


async def test_caller_cancellation_is_not_converted_and_frees_the_slot() -> None:
    ex = AsyncExecutor(1)
    started = asyncio.Event()

    async def long() -> None:
        started.set()
        await asyncio.sleep(100)

    task = asyncio.create_task(ex.execute(long))
    waiting = asyncio.create_task(ex.execute(echo, 7))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await waiting == 7
    assert ex.active == 0
    await ex.aclose()


# -- shutdown ---------------------------------------------------------------------------


async def test_shutdown_waits_for_calls_in_flight() -> None:
    ex = AsyncExecutor(2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    calls = [asyncio.create_task(ex.execute(echo, i, delay=5)) for i in range(4)]
    await asyncio.sleep(0)
    await ex.shutdown()
    # submitted before shutdown: all finish, in two rounds of two
    assert [c.result() for c in calls] == [0, 1, 2, 3]
    assert loop.time() - t0 == pytest.approx(10)
    assert not other_tasks()


async def test_shutdown_timeout_cancels_leftovers() -> None:
    ex = AsyncExecutor(2)
    loop = asyncio.get_running_loop()
    quick = asyncio.create_task(ex.execute(echo, 1, delay=1))
    slow = asyncio.create_task(ex.execute(echo, 2, delay=100))
    queued = asyncio.create_task(ex.execute(echo, 3, delay=1))
    await asyncio.sleep(0)
    t0 = loop.time()
    await ex.shutdown(timeout=5)
    assert loop.time() - t0 == pytest.approx(5)
    assert quick.result() == 1
    assert queued.result() == 3  # got the quick one's slot and finished in time
    with pytest.raises(ExecutorShutdownError, match="cancelled"):
        slow.result()
    assert not slow.cancelled()  # the caller's task itself is not left cancelled
    assert ex.pending == 0
    assert not other_tasks()


async def test_shutdown_cancels_calls_still_waiting_for_a_slot() -> None:
    ex = AsyncExecutor(1)
    running = asyncio.create_task(ex.execute(echo, 1, delay=100))
    queued = asyncio.create_task(ex.execute(echo, 2))
    await asyncio.sleep(0)
    await ex.shutdown(timeout=0)
    for task in (running, queued):
        with pytest.raises(ExecutorShutdownError):
            task.result()


async def test_caller_survives_a_shutdown_cancel_and_can_go_on() -> None:
    ex = AsyncExecutor()
    after: list[str] = []

    async def caller() -> None:
        try:
            await ex.execute(asyncio.sleep, 100)
        except ExecutorShutdownError:
            after.append("caught")
        await asyncio.sleep(1)  # not cancelled any more
        after.append("went on")

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    await ex.shutdown(timeout=0)
    await task
    assert after == ["caught", "went on"]


async def test_concurrent_shutdowns_all_return_when_idle() -> None:
    ex = AsyncExecutor()
    call = asyncio.create_task(ex.execute(echo, 1, delay=3))
    await asyncio.sleep(0)
    await asyncio.gather(ex.shutdown(), ex.shutdown(timeout=10), ex.aclose())
    assert call.result() == 1


async def test_shutdown_from_inside_a_call_is_refused() -> None:
    ex = AsyncExecutor()

    async def bad() -> None:
        await ex.shutdown()

    with pytest.raises(RuntimeError, match="inside"):
        await ex.execute(bad)
    await ex.shutdown()


async def test_shutdown_itself_cancelled_leaves_no_timer_behind() -> None:
    ex = AsyncExecutor()
    call = asyncio.create_task(ex.execute(asyncio.sleep, 100))
    await asyncio.sleep(0)
    closer = asyncio.create_task(ex.shutdown(timeout=50))
    await asyncio.sleep(1)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert other_tasks() == {call}
    await ex.shutdown(timeout=0)
    assert not other_tasks()
    with pytest.raises(ExecutorShutdownError):
        await call


async def test_context_manager_waits_after_a_clean_exit() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with AsyncExecutor(2) as ex:
        call = asyncio.create_task(ex.execute(echo, 1, delay=4))
        await asyncio.sleep(0)
    assert ex.closed
    assert call.result() == 1
    assert loop.time() - t0 == pytest.approx(4)


async def test_context_manager_cancels_at_once_after_an_error() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    calls: list[asyncio.Task[int]] = []

    async def body() -> None:
        async with AsyncExecutor(2) as ex:
            calls.append(asyncio.create_task(ex.execute(echo, 1, delay=400)))
            await asyncio.sleep(0)
            raise KeyError("body failed")

    with pytest.raises(KeyError):
        await body()
    assert loop.time() - t0 == pytest.approx(0)
    with pytest.raises(ExecutorShutdownError):
        calls[0].result()
    assert not other_tasks()


# -- map --------------------------------------------------------------------------------


async def test_map_ordered_streams_in_input_order() -> None:
    async with AsyncExecutor(4) as ex:
        delays = [3, 1, 2, 0.5, 4]

        async def work(i: int) -> int:
            return await echo(i, delay=delays[i])

        assert [r async for r in ex.map(work, range(5))] == [0, 1, 2, 3, 4]


async def test_map_unordered_yields_as_completed() -> None:
    async with AsyncExecutor(10) as ex:
        delays = [3, 1, 2, 0.5, 4]

        async def work(i: int) -> int:
            return await echo(i, delay=delays[i])

        assert [r async for r in ex.map(work, range(5), ordered=False)] == [3, 1, 2, 0, 4]


@pytest.mark.parametrize("ordered", [True, False])
async def test_map_bounds_work_in_flight(ordered: bool) -> None:
    gauge = Gauge()
    pulled = 0

    def source() -> Iterator[int]:
        nonlocal pulled
        for i in range(40):
            pulled += 1
            yield i

    async def work(i: int) -> int:
        with gauge:
            await asyncio.sleep(1 + (i * 7) % 5)
        return i

    consumed = 0
    async with AsyncExecutor(3) as ex:
        async for _ in ex.map(work, source(), ordered=ordered):
            consumed += 1
            assert pulled - consumed <= 3  # launched and not yet consumed
            await asyncio.sleep(0.5)  # a slow consumer
    assert gauge.max == 3
    assert consumed == 40


async def test_map_window_can_exceed_the_concurrency_cap() -> None:
    gauge = Gauge()

    async def work(i: int) -> int:
        with gauge:
            await asyncio.sleep(1)
        return i

    async with AsyncExecutor(2) as ex:
        results = [r async for r in ex.map(work, range(10), max_in_flight=6)]
    assert results == list(range(10))
    assert gauge.max == 2


async def test_map_streams_from_an_endless_async_source() -> None:
    async def naturals() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    async def square(i: int) -> int:
        await asyncio.sleep(0.1)
        return i * i

    got: list[int] = []
    async with AsyncExecutor(4) as ex, ex.map(square, naturals()) as results:
        async for r in results:
            got.append(r)
            if len(got) == 5:
                break
    assert got == [0, 1, 4, 9, 16]
    assert not other_tasks()


async def test_map_of_unbounded_executor_uses_the_default_window() -> None:
    gauge = Gauge()

    async def work(i: int) -> int:
        with gauge:
            await asyncio.sleep(1)
        return i

    async with AsyncExecutor() as ex:
        out = [r async for r in ex.map(work, range(DEFAULT_MAP_WINDOW + 50))]
    assert len(out) == DEFAULT_MAP_WINDOW + 50
    assert gauge.max == DEFAULT_MAP_WINDOW


async def test_map_rejects_a_bad_window() -> None:
    ex = AsyncExecutor()
    with pytest.raises(ConfigurationError):
        ex.map(echo, [1], max_in_flight=0)
    await ex.aclose()


async def test_map_error_propagates_and_cancels_the_rest() -> None:
    cancelled: list[int] = []

    async def work(i: int) -> int:
        if i == 2:
            await asyncio.sleep(1)
            raise ValueError("item 2")
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    async with AsyncExecutor(5) as ex:
        results = ex.map(work, range(5), ordered=False)
        with pytest.raises(ValueError, match="item 2"):
            async for _ in results:
                pass
        assert sorted(cancelled) == [0, 1, 3, 4]
        assert not other_tasks()
        assert [r async for r in results] == []  # closed


async def test_map_source_error_propagates_and_cancels_the_rest() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise LookupError("source broke")

    async with AsyncExecutor(1) as ex:
        with pytest.raises(LookupError):
            async for _ in ex.map(echo, source()):
                pass
        assert not other_tasks()


async def test_map_aclose_cancels_and_waits() -> None:
    async with AsyncExecutor(3) as ex:
        results = ex.map(asyncio.sleep, [100, 100, 100, 100])
        consumer = asyncio.create_task(anext(results))
        await asyncio.sleep(1)
        assert len(other_tasks()) == 4  # the consumer and three calls
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await results.aclose()
        assert not other_tasks()
        assert "closed=True" in repr(results)


async def test_abandoned_map_is_cleaned_up_by_shutdown_without_warnings() -> None:
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    try:

        async def work(i: int) -> int:
            await asyncio.sleep(i)
            if i % 2:
                raise ValueError(i)
            return i

        ex = AsyncExecutor(4)
        results = ex.map(work, range(8), ordered=False)
        assert await anext(results) == 0
        del results  # abandoned with failures still to come
        await asyncio.sleep(10)  # they all finish, some with errors nobody reads
        await ex.shutdown()
        gc.collect()
        await asyncio.sleep(0)
        assert not other_tasks()
        assert problems == []
    finally:
        loop.set_exception_handler(None)


async def test_map_interrupted_by_shutdown_timeout() -> None:
    ex = AsyncExecutor(2)
    results = ex.map(asyncio.sleep, [1, 100, 1, 1])
    assert await anext(results) is None
    closer = asyncio.create_task(ex.shutdown(timeout=5))
    with pytest.raises(ExecutorShutdownError):
        async for _ in results:
            pass
    await closer
    assert not other_tasks()


async def test_map_stops_launching_once_the_executor_is_shut_down() -> None:
    ex = AsyncExecutor(1)
    results = ex.map(echo, range(5), max_in_flight=2)
    assert await anext(results) == 0
    await ex.shutdown()
    # what was already launched is delivered, then the refusal
    rest: list[int] = []

    async def consume() -> None:
        async for r in results:
            rest.append(r)

    with pytest.raises(ExecutorShutdownError, match="submitted"):
        await consume()
    assert rest == [1]


async def test_map_after_shutdown() -> None:
    ex = AsyncExecutor(1)
    await ex.shutdown()
    assert [r async for r in ex.map(echo, [])] == []
    with pytest.raises(ExecutorShutdownError):
        await anext(ex.map(echo, [1]))


async def test_map_cancelled_before_start_reports_shutdown() -> None:
    ex = AsyncExecutor(1)
    results = ex.map(echo, [1, 2, 3], max_in_flight=3)
    consumer = asyncio.create_task(anext(results))
    await asyncio.sleep(0)  # three tasks created, none run yet... or just started
    await ex.shutdown(timeout=0)
    with pytest.raises(ExecutorShutdownError):
        await consumer
    assert not other_tasks()


async def test_map_over_a_finite_async_source() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(5):
            await asyncio.sleep(0.1)
            yield i

    async with AsyncExecutor(2) as ex:
        assert [r async for r in ex.map(echo, numbers(), ordered=False)] == [0, 1, 2, 3, 4]


async def test_overlapping_shutdowns_cancel_each_call_once() -> None:
    ex = AsyncExecutor()
    call = asyncio.create_task(ex.execute(asyncio.sleep, 100))
    await asyncio.sleep(0)
    await asyncio.gather(ex.shutdown(timeout=1), ex.shutdown(timeout=1))
    with pytest.raises(ExecutorShutdownError):
        await call


async def test_map_closed_from_another_task_ends_the_waiting_consumer() -> None:
    async with AsyncExecutor(2) as ex:
        results = ex.map(asyncio.sleep, [100, 100, 100])
        consumer = asyncio.create_task(anext(results))
        await asyncio.sleep(1)
        await results.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(consumer, 1)
        assert not other_tasks()


async def test_a_call_that_swallows_the_shutdown_cancel_leaves_its_caller_clean() -> None:
    ex = AsyncExecutor()

    async def stubborn() -> str:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            return "survived"
        return "finished"

    async def caller() -> tuple[str, int]:
        result = await ex.execute(stubborn)
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(1)  # would raise if a cancel request were still pending
        return result, task.cancelling()

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    await ex.shutdown(timeout=0)
    assert await task == ("survived", 0)


async def test_an_open_executor_is_known_to_the_leak_guard() -> None:
    from headway._resources import open_resources

    ex = AsyncExecutor()
    assert ex in open_resources()
    await ex.shutdown()
    assert ex not in open_resources()
