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

from headway.backends import BACKEND_RECOVERED, BACKEND_UNAVAILABLE, RedisBackend
from headway.errors import BackendUnavailableError, MaxWaitExceededError
from headway.events import Event, add_listener, remove_listener

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.backends.conftest import RedisServer

pytestmark = pytest.mark.integration

# short, yet long enough for a round trip on a loaded machine
FAST: dict[str, Any] = {"timeout": 0.2, "retry_interval": 0.05}


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
    async with (
        RedisBackend(redis_server.url, **FAST) as b1,
        RedisBackend(redis_server.url, **FAST) as b2,
    ):
        lim = b1.limiter("api", rps=10, burst=10)
        await lim.reserve()
        await b2.limiter("api", rps=10, burst=10).reserve()
        assert (await lim.reserve()).shared
        assert b1.workers == 2

        redis_server.stop()
        caplog.set_level(logging.WARNING, logger="headway")
        t0 = time.monotonic()
        local, due = [], []
        async with asyncio.timeout(2):
            for _ in range(8):
                local.append(await lim.reserve())
                due.append(time.monotonic() + local[-1].delay)
        assert time.monotonic() - t0 < 1.0  # nothing hangs
        assert not any(r.shared for r in local)
        assert not up(b1)
        # two workers were live: this one keeps half the rate (one every 1/5 s), and no
        # burst (the shared bucket may have just been drained): its fallback starts empty
        assert local[0].delay >= 1 / 5 - 0.03
        assert min(b - a for a, b in itertools.pairwise(due)) >= 1 / 5 - 0.03
        local[7].cancel()  # local reservations settle and cancel locally
        local[6].settle(0)
        down = [e for e in events if e.kind == BACKEND_UNAVAILABLE]
        assert len(down) == 1  # logged once per outage, not per call
        assert down[0].data["mode"] == "local"
        assert sum("backend.unavailable" in r.getMessage() for r in caplog.records) == 1

        redis_server.start()
        await asyncio.sleep(0.06)  # the next call after retry_interval probes Redis
        async with asyncio.timeout(2):
            back = await lim.reserve()
        assert back.shared
        assert up(b1)
        assert [e.kind for e in events].count(BACKEND_RECOVERED) == 1
        # the state is shared again: b2 sees what b1 took
        b2lim = b2.limiter("api")
        for _ in range(10):
            await lim.reserve()
        async with asyncio.timeout(2):
            while not (res := await b2lim.reserve()).shared:
                await asyncio.sleep(0.02)
        assert res.delay > 0.0


async def test_a_frozen_server_costs_each_caller_at_most_the_timeout(
    redis_server: RedisServer,
) -> None:
    async with RedisBackend(redis_server.url, **FAST) as b:
        lim = b.limiter("frozen", rps=1000, burst=100)
        assert (await lim.reserve()).shared
        redis_server.freeze()
        t0 = time.monotonic()
        async with asyncio.timeout(2):
            results = await asyncio.gather(*(lim.reserve() for _ in range(20)))
        assert time.monotonic() - t0 < 1.0  # one timeout (0.2 s), not twenty in a row
        assert not any(r.shared for r in results)
        assert not await b.ping()
        redis_server.thaw()
        await asyncio.sleep(0.06)
        async with asyncio.timeout(2):
            while not (await lim.reserve()).shared:
                await asyncio.sleep(0.02)
        assert await b.ping()


async def test_fail_mode_raises_a_clear_error_at_once(redis_server: RedisServer) -> None:
    async with RedisBackend(
        redis_server.url,
        on_backend_error="fail",
        **FAST,
    ) as b:
        lim = b.limiter("strict", rps=10)
        await lim.reserve()
        redis_server.stop()
        with pytest.raises(BackendUnavailableError, match="on_backend_error='fail'") as info:
            await lim.reserve()
        assert info.value.retryable
        t0 = time.monotonic()
        for _ in range(10):  # during the outage: no waiting on Redis at all
            with pytest.raises(BackendUnavailableError):
                await lim.reserve()
        assert time.monotonic() - t0 < 0.15  # less than one timeout (0.2 s)


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
    async with RedisBackend(
        redis_server.url,
        local_share=0.5,
        **FAST,
    ) as b:
        lim = b.limiter("share", rps=100, burst=4)
        redis_server.stop()
        # half the rate (50/s), starting empty: one every 20 ms
        delays = [(await lim.reserve()).delay for _ in range(3)]
        assert delays == pytest.approx([0.02, 0.04, 0.06], abs=0.005)
        lim.pause(0.03)
        lim.sync("requests", remaining=0)
        assert (await lim.reserve()).delay >= 0.03


async def test_a_server_that_never_was_does_not_hang_anyone(free_port: int) -> None:
    url = f"redis://127.0.0.1:{free_port}/0"
    async with RedisBackend(url, **FAST) as b:
        lim = b.limiter("ghost", rps=10)
        async with asyncio.timeout(1):
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
    async with RedisBackend(redis_server.url, **FAST) as b:
        lim = b.limiter("fleet", rps=10, burst=10)
        granted = await asyncio.gather(*(lim.reserve() for _ in range(15)))
        assert all(r.shared for r in granted)
        last_due = time.monotonic() + max(r.delay for r in granted)
        assert last_due - time.monotonic() > 0.3  # 10 at once, 5 queued ahead
        redis_server.stop()
        first = await lim.reserve()
        assert not first.shared
        # the fallback refills only after the shared queue has run out
        assert time.monotonic() + first.delay >= last_due + 1 / 10 - 0.02
        redis_server.start()  # restarted empty: its bucket would be full
        await asyncio.sleep(0.06)
        async with asyncio.timeout(2):
            back = await lim.reserve()
        assert back.shared
        # the level was capped at what the fallback said was left: no burst of 10 after
        # the restart; and for one probe interval this worker keeps to its local share
        assert back.delay > 0.0
        due = []
        for _ in range(3):
            res = await lim.reserve()
            assert res.shared
            due.append(time.monotonic() + res.delay)
        gaps = [b - a for a, b in itertools.pairwise(due)]
        assert min(gaps) >= 1 / 10 - 0.02
        with pytest.raises(MaxWaitExceededError):  # no turn now: nothing is reserved
            await lim.reserve(max_wait=0.0)
