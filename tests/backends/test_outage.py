"""Redis outages: callers fall back, nothing hangs, the shared state resumes by itself.

Each test runs its own ``redis-server`` on a free port and stops, freezes or restarts it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import pytest

from headway._clock import ManualClock
from headway.backends import BACKEND_RECOVERED, BACKEND_UNAVAILABLE, RedisBackend
from headway.errors import BackendUnavailableError, MaxWaitExceededError
from headway.events import Event, add_listener, remove_listener

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.backends.conftest import RedisServer

pytestmark = pytest.mark.integration

# A stopped server refuses at once, so the timeout only bounds a round trip: generous, so
# that a loaded machine never takes a slow answer for an outage. Only the frozen-server
# test waits for a timeout, and sets its own.
FAST: dict[str, Any] = {"timeout": 2.0, "retry_interval": 0.05}

#: Rounding between Redis's milliseconds and this process's seconds.
EPS = 0.002


def count_round_trips(backend: RedisBackend) -> list[int]:
    """Count the backend's script calls (round trips to Redis) from now on."""
    calls = [0]
    real = backend.eval_script

    async def counting(*args: Any) -> Any:
        calls[0] += 1
        return await real(*args)

    backend.eval_script = counting  # type: ignore[method-assign]
    return calls


def up(backend: RedisBackend) -> bool:
    return backend.available


@pytest.fixture
def events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    add_listener(seen.append)
    yield seen
    remove_listener(seen.append)


async def test_callers_fall_back_to_a_local_share_and_resume_after_a_restart(
    redis_server: RedisServer, events: list[Event], caplog: pytest.LogCaptureFixture
) -> None:
    # b1's outage and fallback run on a clock that moves only when told: its local waits
    # are exact and take no real time (Redis times the shared bucket on its own clock)
    clock = ManualClock()
    async with (
        RedisBackend(redis_server.url, clock=clock, **FAST) as b1,
        RedisBackend(redis_server.url, **FAST) as b2,
    ):
        lim = b1.limiter("api", rps=10, burst=10)
        await lim.reserve()
        await b2.limiter("api", rps=10, burst=10).reserve()
        assert (await lim.reserve()).shared
        assert b1.workers == 2

        redis_server.stop()
        caplog.set_level(logging.WARNING, logger="headway")
        local = []
        # a bound, not a wait: waiting out the 2 s timeout per call would take 16 s
        async with asyncio.timeout(5):
            for _ in range(8):
                local.append(await lim.reserve())
        assert not any(r.shared for r in local)
        assert not up(b1)
        # two workers were live: this one keeps half the rate (one every 1/5 s), and no
        # burst (the shared bucket may have just been drained): its fallback starts empty
        assert [r.delay for r in local] == pytest.approx([(k + 1) / 5 for k in range(8)], abs=1e-9)
        local[7].cancel()  # local reservations settle and cancel locally
        local[6].settle(0)
        down = [e for e in events if e.kind == BACKEND_UNAVAILABLE]
        assert len(down) == 1  # logged once per outage, not per call
        assert down[0].data["mode"] == "local"
        assert sum("backend.unavailable" in r.getMessage() for r in caplog.records) == 1

        redis_server.start()
        assert not (await lim.reserve()).shared  # no probe before retry_interval
        clock.advance(0.06)  # the next call after retry_interval probes Redis
        async with asyncio.timeout(5):
            back = await lim.reserve()
        assert back.shared
        assert up(b1)
        assert [e.kind for e in events].count(BACKEND_RECOVERED) == 1
        # the state is shared again: b2 sees what b1 took
        b2lim = b2.limiter("api")
        for _ in range(10):
            await lim.reserve()
        async with asyncio.timeout(5):  # a bound, not a wait
            while not (res := await b2lim.reserve()).shared:
                await asyncio.sleep(0.02)
        assert res.delay > 0.0


async def test_a_frozen_server_costs_each_caller_at_most_the_timeout(
    redis_server: RedisServer,
) -> None:
    # The outage is timed on a clock that moves only when told: no probe is due during
    # the outage however slowly the callers run, so exactly one round trip is tried.
    clock = ManualClock()
    async with RedisBackend(redis_server.url, timeout=0.5, retry_interval=0.05, clock=clock) as b:
        lim = b.limiter("frozen", rps=1000, burst=100)
        assert (await lim.reserve()).shared
        calls = count_round_trips(b)
        redis_server.freeze()
        # a bound, not a wait: twenty timeouts in a row would take 10 s
        async with asyncio.timeout(5):
            results = await asyncio.gather(*(lim.reserve() for _ in range(20)))
        assert calls[0] == 1  # one round trip timed out; the other callers did not wait
        assert not any(r.shared for r in results)
        assert not await b.ping()
        redis_server.thaw()
        async with asyncio.timeout(10):  # a bound, not a wait
            while True:
                clock.advance(0.06)  # a probe is due (again, if the last one was slow)
                if (await lim.reserve()).shared:
                    break
        assert await b.ping()


async def test_fail_mode_raises_a_clear_error_at_once(redis_server: RedisServer) -> None:
    clock = ManualClock()  # no probe falls due unless the test moves the clock
    async with RedisBackend(
        redis_server.url,
        on_backend_error="fail",
        clock=clock,
        **FAST,
    ) as b:
        lim = b.limiter("strict", rps=10)
        await lim.reserve()
        redis_server.stop()
        with pytest.raises(BackendUnavailableError, match="on_backend_error='fail'") as info:
            await lim.reserve()
        assert info.value.retryable
        calls = count_round_trips(b)
        for _ in range(10):  # during the outage: no waiting on Redis at all
            with pytest.raises(BackendUnavailableError):
                await lim.reserve()
        assert calls[0] == 0
        clock.advance(0.06)  # once the retry interval has passed, one call probes again
        with pytest.raises(BackendUnavailableError):
            await lim.reserve()
        assert calls[0] == 1


async def test_allow_mode_lets_calls_through(redis_server: RedisServer) -> None:
    async with RedisBackend(
        redis_server.url,
        on_backend_error="allow",
        **FAST,
    ) as b:
        lim = b.limiter("open", rps=1, burst=1)
        await lim.reserve()
        redis_server.stop()
        results = [await lim.reserve() for _ in range(5)]
        assert [r.delay for r in results] == [0.0] * 5
        results[0].settle(3)
        results[0].cancel()


async def test_a_fixed_local_share_and_a_pause_during_an_outage(
    redis_server: RedisServer,
) -> None:
    # the fallback runs on this process's clock: a manual one makes its waits exact
    async with RedisBackend(
        redis_server.url,
        local_share=0.5,
        clock=ManualClock(),
        **FAST,
    ) as b:
        lim = b.limiter("share", rps=100, burst=4)
        redis_server.stop()
        # half the rate (50/s), starting empty: one every 20 ms
        delays = [(await lim.reserve()).delay for _ in range(3)]
        assert delays == pytest.approx([0.02, 0.04, 0.06], abs=1e-9)
        lim.pause(0.03)
        lim.sync("requests", remaining=0)
        assert (await lim.reserve()).delay >= 0.03


async def test_a_server_that_never_was_does_not_hang_anyone(free_port: int) -> None:
    url = f"redis://127.0.0.1:{free_port}/0"
    async with RedisBackend(url, **FAST) as b:
        lim = b.limiter("ghost", rps=10)
        async with asyncio.timeout(1):  # refused at once, well within the 2 s timeout
            res = await lim.reserve()
        assert not res.shared
        store = b.breaker_store("ghost")
        store.publish_open(1.0)  # applies locally; Redis gets it when it is back
        assert store.open_for() is not None
        with pytest.raises(Exception, match="unreachable"):
            await store.refresh()


async def test_a_fallback_starts_after_the_shared_queue_and_recovery_caps_the_level(
    redis_server: RedisServer,
) -> None:
    """Issue 11 item 18: across an outage the fleet never gets the limit twice.

    Without it, the local fallback started full (a second's burst on top of the queue
    Redis had granted), and a Redis that came back (refilled, or restarted empty) gave
    its full burst again while the workers had been admitting all along.
    """
    # The fallback and the outage run on this process's clock: a manual one stands still
    # while the test runs (however slowly), and its local waits take no real time. Redis
    # still times the shared bucket on its own clock.
    clock = ManualClock()
    async with RedisBackend(redis_server.url, clock=clock, **FAST) as b:
        lim = b.limiter("fleet", rps=10, burst=10)
        sent = time.monotonic()
        granted = await asyncio.gather(*(lim.reserve() for _ in range(15)))
        assert all(r.shared for r in granted)
        last_wait = max(r.delay for r in granted)
        # 10 at once, 5 queued ahead: the last is due 0.5 s after the first, as Redis saw it
        assert last_wait >= 0.5 - (time.monotonic() - sent) - EPS
        redis_server.stop()
        first = await lim.reserve()
        assert not first.shared
        # the fallback refills only after the shared queue has run out (the clock stood
        # still: the last shared admission is last_wait away)
        assert first.delay == pytest.approx(last_wait + 1 / 10, abs=1e-9)
        redis_server.start()  # restarted empty: its bucket would be full
        clock.advance(0.06)  # a probe is due
        async with asyncio.timeout(5):
            back = await lim.reserve()
        assert back.shared
        # the level was capped at what the fallback said was left: no burst of 10 after
        # the restart; and for one probe interval this worker keeps to its local share
        assert back.delay > 0.0
        due = []
        for _ in range(3):
            sent = time.monotonic()
            res = await lim.reserve()
            assert res.shared
            due.append((sent + res.delay, time.monotonic() + res.delay))
        # Redis admits them at least 1/10 s apart (decided between sent and answered)
        for (lo1, _), (_, hi2) in itertools.pairwise(due):
            assert hi2 - lo1 >= 1 / 10 - EPS
        with pytest.raises(MaxWaitExceededError):  # no turn now: nothing is reserved
            await lim.reserve(max_wait=0.0)


async def test_a_start_up_ping_waits_out_a_slow_redis_but_not_a_refused_one(
    redis_server: Any,
) -> None:
    # `headway run --redis-url` checks Redis at start with `ping(within=5)`: on a loaded
    # machine connecting may take longer than one call's timeout, which is not an outage.
    async with RedisBackend(redis_server.url, timeout=0.2) as b:
        asked = [0]
        real = b.client.ping

        async def counted() -> Any:
            asked[0] += 1
            return await real()

        b.client.ping = counted  # type: ignore[method-assign]
        redis_server.freeze()
        task = asyncio.create_task(b.ping(within=30.0))
        async with asyncio.timeout(10):  # a bound: until one ask timed out and another went
            while asked[0] < 2:
                await asyncio.sleep(0.02)
        assert not task.done()
        redis_server.thaw()
        async with asyncio.timeout(10):
            assert await task
        assert b.available
        assert asked[0] >= 2
        redis_server.freeze()
        try:
            assert not await b.ping()  # without `within`: one timeout is an answer
        finally:
            redis_server.thaw()
    redis_server.stop()
    async with RedisBackend(redis_server.url, timeout=0.2) as b:
        async with asyncio.timeout(5):  # refused at once, not after `within`
            assert not await b.ping(within=60.0)
