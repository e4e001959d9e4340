"""RedisLimiter against a real Redis: atomic multi-limit reservations, settle, pause, sync.

Redis measures time with its own clock, so these tests run in real time. Most check the
waits Redis hands out without sleeping them (low rates, so the few milliseconds a round
trip takes barely refill anything); the few that sleep keep every wait under 0.1 s.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from headway import MaxWaitExceededError
from headway.backends import Limit, RedisBackend, RedisLimiter, limits_of
from headway.backends._model import Bucket, reserve_batch
from headway.backends._scripts import RESERVE
from headway.errors import ConfigurationError, RequestTooLargeError
from headway.limits import Limiter, MultiLimiter, Reservation, TokenBucketRateLimiter

pytestmark = pytest.mark.integration

MakeBackend = Callable[..., RedisBackend]


async def test_a_burst_then_evenly_spaced_fifo_waits(backend: RedisBackend) -> None:
    lim = backend.limiter("api", rps=10, burst=5)
    t0 = time.monotonic()
    delays = [(await lim.reserve()).delay for _ in range(10)]
    elapsed = time.monotonic() - t0
    assert delays[:5] == [0.0] * 5
    assert delays[5:] == sorted(delays[5:])
    assert 0.5 - elapsed - 0.002 <= delays[9] <= 0.5 + 0.002
    assert isinstance(lim, Limiter)
    res = await lim.reserve()
    assert isinstance(res, Reservation)
    assert res.shared
    assert "shared=True" in repr(res)
    assert "RedisLimiter('api'" in repr(lim)


async def test_concurrent_callers_in_one_process_are_served_in_arrival_order(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("fifo", rps=10, burst=1)
    # weights vary: a big request is not overtaken by the small ones after it
    weights = [1.0, 1.0, 50.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    lim2 = backend.limiter("fifo-w", limits=[Limit(10, 1.0, burst=50)])
    reservations = await asyncio.gather(*(lim.reserve() for _ in range(30)))
    delays = [r.delay for r in reservations]
    assert delays == sorted(delays)
    weighted = await asyncio.gather(*(lim2.reserve(w) for w in weights))
    wd = [r.delay for r in weighted]
    assert wd == sorted(wd)


async def test_all_limits_or_none(backend: RedisBackend) -> None:
    lim = backend.limiter(
        "llm", limits=[Limit(10, 1.0, burst=10), Limit(100, 1.0, burst=100, unit="tokens")]
    )
    first = await lim.reserve(1, 100)
    assert first.delay == 0.0
    with pytest.raises(MaxWaitExceededError) as info:
        await lim.reserve(1, 50, max_wait=0.0)
    assert info.value.retry_after == pytest.approx(0.5, abs=0.03)
    # the refused call took no request: 9 are still there
    nine = await lim.reserve(9, 0, max_wait=0.0)
    assert nine.delay == 0.0
    with pytest.raises(RequestTooLargeError):
        await lim.reserve(1, 101)
    with pytest.raises(ValueError):
        await lim.reserve(-1, 0)


async def test_max_wait_default_of_the_limiter(backend: RedisBackend) -> None:
    lim = backend.limiter("mw", rps=10, burst=1, max_wait=0.001)
    t0 = time.monotonic()
    await lim.reserve()
    with pytest.raises(MaxWaitExceededError):
        await lim.reserve()
    delay = (await lim.reserve(max_wait=1.0)).delay
    elapsed = time.monotonic() - t0  # round trips take real time on a busy machine
    assert 0.1 - elapsed - 0.002 <= delay <= 0.1 + 0.002


async def test_settle_refunds_the_over_estimate_and_charges_the_rest(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("tok", limits=[Limit(100, 1.0, burst=100, unit="tokens")])
    res = await lim.reserve(1, 100)
    res.settle(10)  # 90 come back with the next round trip
    res.settle(10)  # settling again to the same figure changes nothing
    assert res.tokens == 10
    assert (await lim.reserve(1, 90, max_wait=0.0)).delay == 0.0
    res2 = await lim.reserve(1, 0)
    res2.settle(50)  # used more than estimated: a debt later callers wait out
    await lim.flush()
    late = await lim.reserve(1, 0)
    assert late.delay == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError):
        res.settle(-1)


async def test_cancelling_the_last_waiter_gives_its_slot_back(backend: RedisBackend) -> None:
    lim = backend.limiter("cancel", rps=10, burst=1)
    await lim.reserve()
    a = await lim.reserve()
    b = await lim.reserve()
    assert b.delay > a.delay > 0
    b.cancel()
    b.cancel()  # idempotent
    assert b.cancelled
    b.settle(5)  # nothing after a cancel
    c = await lim.reserve()
    assert c.delay == pytest.approx(b.delay, abs=0.03)


async def test_cancelling_a_waiter_in_the_middle_does_not_let_a_newcomer_double_up(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("middle", rps=10, burst=1)
    await lim.reserve()
    a = await lim.reserve()
    b = await lim.reserve()
    a.cancel()
    c = await lim.reserve()
    assert c.delay > b.delay + 0.05  # after b, not on a's freed slot nor on b's


async def test_cancelling_every_waiter_together_gives_everything_back(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("all", rps=2, burst=1)
    await lim.reserve()
    waiters = [await lim.reserve()]
    first_admitted = time.monotonic() + waiters[0].delay  # about: received + delay
    waiters += [await lim.reserve() for _ in range(19)]
    for w in waiters:  # in any order: they ride along together, latest first
        w.cancel()
    nxt = await lim.reserve()
    # nxt takes the first waiter's slot: everything came back
    assert time.monotonic() + nxt.delay == pytest.approx(first_admitted, abs=0.03)
    assert waiters[-1].delay > 9.0


async def test_slot_waits_and_a_cancelled_wait_gives_the_units_back(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("slot", rps=20, burst=1)
    t_first = time.monotonic()
    async with lim.slot() as first:
        assert first.delay == 0.0
    t0 = time.monotonic()
    waited = await lim.acquire()
    # round trips take real time on a busy machine: bound by what has passed (with 10 ms
    # for the two clocks: Redis's and this process's)
    assert 0.05 - (time.monotonic() - t_first) - 0.01 <= waited <= 0.05 + 0.01
    assert time.monotonic() - t0 >= waited * 0.9
    t1 = time.monotonic()
    task = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0.02)  # reserved, now sleeping
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    nxt = await lim.reserve()  # the cancelled waiter's slot came back: due at t1 + 0.05
    assert 0.05 - (time.monotonic() - t1) - 0.01 <= nxt.delay <= 0.05 + 0.01


async def test_a_pause_holds_back_every_worker(make_backend: MakeBackend) -> None:
    a = make_backend().limiter("shared", rps=100, burst=10)
    b = make_backend().limiter("shared", rps=100, burst=10)
    assert (await b.reserve()).delay == 0.0
    a.pause(0.04)
    a.pause_until(0.0)  # an earlier end changes nothing
    local = await a.reserve()  # publishes the pause with this round trip
    assert local.delay == pytest.approx(0.05, abs=0.012)  # restarts empty at the end
    other = await b.reserve()
    assert other.delay == pytest.approx(0.06, abs=0.015)


async def test_a_waiter_is_pushed_back_by_a_pause_from_another_worker(
    make_backend: MakeBackend,
) -> None:
    a = make_backend().limiter("push", rps=20, burst=1)
    b = make_backend().limiter("push", rps=20, burst=1)
    await b.reserve()
    waiting = await b.reserve()
    assert 0 < waiting.delay <= 0.05
    a.pause(0.03)
    await a.flush()
    await b.reserve()  # b learns of the pause
    t0 = time.monotonic()
    async with asyncio.timeout(1):
        await waiting.wait()
    assert time.monotonic() - t0 >= 0.025


async def test_a_local_pause_holds_back_this_process_at_once(backend: RedisBackend) -> None:
    lim = backend.limiter("lp", rps=100, burst=10)
    first = await lim.reserve()
    assert first.delay == 0.0
    lim.pause(0.02)
    res = await lim.reserve()
    assert res.delay >= 0.015
    t0 = time.monotonic()
    async with asyncio.timeout(1):
        await first.wait()  # not sent yet: the pause holds it back too
    assert time.monotonic() - t0 >= 0.015


async def test_sync_lowers_the_shared_level_and_never_raises_it(backend: RedisBackend) -> None:
    lim = backend.limiter(
        "sync", limits=[Limit(10, 1.0, burst=10), Limit(6000, 60.0, unit="tokens")]
    )
    lim.sync("requests", remaining=0, reset_after=1.0)
    lim.sync("requests", remaining=5)  # the lower figure wins
    lim.sync("nothing-like-this", remaining=0)
    res = await lim.reserve()
    assert res.delay == pytest.approx(0.1, abs=0.03)
    tok = backend.limiter(
        "sync-t", limits=[Limit(1000, 1.0), Limit(6000, 60.0, burst=6000, unit="tokens")]
    )
    tok.sync("tokens", remaining=0, limit=6000)
    assert (await tok.reserve(1, 10)).delay == pytest.approx(0.1, abs=0.03)
    tok.sync("tokens", remaining=10_000)  # never raises the level
    assert (await tok.reserve(1, 10)).delay == pytest.approx(0.2, abs=0.03)


async def test_workers_count_and_keys_expire_by_themselves(
    make_backend: MakeBackend, prefix: str
) -> None:
    b1, b2 = make_backend(), make_backend()
    lim1 = b1.limiter("ttl", rps=1000, burst=5)
    await lim1.reserve()
    await b2.limiter("ttl", rps=1000, burst=5).reserve()
    await lim1.reserve()
    assert b1.workers == 2
    assert b1.local_share() == 0.5
    keys = sorted([k.decode() async for k in b1.client.scan_iter(match=prefix + "*")])
    assert keys == [prefix + "rl:{ttl}:requests:1", prefix + "workers:{ttl}"]
    for k in keys:
        ttl = await b1.client.pttl(k)
        assert 0 < ttl <= 21_000


async def test_a_flushed_script_cache_is_reloaded(backend: RedisBackend) -> None:
    lim = backend.limiter("noscript", rps=1000, burst=5)
    await lim.reserve()
    await backend.client.script_flush()
    assert (await lim.reserve()).shared


async def test_one_name_one_limiter(backend: RedisBackend) -> None:
    lim = backend.limiter("same", rpm=60, tpm=1000)
    assert backend.limiter("same") is lim
    assert backend.limiter("same", rpm=60, tpm=1000) is lim
    with pytest.raises(ConfigurationError):
        backend.limiter("same", rpm=61)
    with pytest.raises(ConfigurationError):
        backend.limiter("none")
    with pytest.raises(ConfigurationError):
        RedisLimiter(backend, "dup", [Limit(1), Limit(2)])


async def test_share_copies_an_in_memory_limiter(backend: RedisBackend) -> None:
    multi = MultiLimiter.for_llm(rpm=600, tpm=6000)
    lim = backend.share(multi, "copied")
    assert lim.limits == limits_of(multi)
    assert [x.unit for x in lim.limits] == ["requests", "tokens"]
    bucket = TokenBucketRateLimiter(50, 1.0, 5)
    assert backend.share(bucket, "one").limits == (Limit(50, 1.0, burst=5),)
    with pytest.raises(ConfigurationError):
        limits_of(object())


async def test_close_flushes_what_is_owed(redis_url: str, prefix: str) -> None:
    b1 = RedisBackend(redis_url, prefix=prefix)
    lim = b1.limiter("owed", limits=[Limit(1000, 1.0, burst=100, unit="tokens")])
    res = await lim.reserve(1, 100)
    res.settle(0)
    await b1.aclose()
    await b1.aclose()  # idempotent
    async with RedisBackend(redis_url, prefix=prefix) as b2:
        lim2 = b2.limiter("owed", limits=[Limit(1000, 1.0, burst=100, unit="tokens")])
        assert (await lim2.reserve(1, 100, max_wait=0.0)).delay == 0.0
        keys = [k async for k in b2.client.scan_iter(match=prefix + "*")]
        await b2.client.delete(*keys)


async def test_a_given_client_is_used_and_left_open(redis_url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        async with RedisBackend(client, prefix=prefix) as b:
            assert (await b.limiter("given", rps=10).reserve()).shared
            assert await b.ping()
        assert await client.ping()  # still open
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        await client.delete(*keys)
    finally:
        await client.aclose()


async def test_many_workers_share_one_rate_and_no_window_goes_over(
    make_backend: MakeBackend,
) -> None:
    rate, burst, n = 50.0, 5, 8
    limiters = [make_backend().limiter("fleet", rps=rate, burst=burst) for _ in range(3)]
    admitted: list[float] = []

    async def worker(lim: RedisLimiter) -> None:
        for _ in range(n):
            res = await lim.reserve()
            admitted.append(time.monotonic() + res.delay)

    t0 = time.monotonic()
    await asyncio.gather(*(worker(x) for x in limiters))
    elapsed = time.monotonic() - t0
    admitted.sort()
    # 24 units at 50/s after a burst of 5: the last is admitted ~0.38 s after the first
    assert admitted[-1] - t0 >= (3 * n - burst) / rate - 0.01
    assert sum(1 for a in admitted if a <= t0 + elapsed) <= burst + elapsed * rate + 2
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - start
            # receipt times jitter by a round trip: allow 2 units for that
            assert j - i + 1 <= burst + rate * window + 2


# -- the Lua script and its Python twin, step by step -----------------------------------

_op = st.tuples(
    st.floats(0.0, 30.0),  # ms since the last step
    st.lists(  # callers in one round trip: shares of each capacity, max_wait ms
        st.tuples(
            st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
            st.one_of(st.none(), st.floats(0.0, 50.0)),
        ),
        min_size=0,
        max_size=3,
    ),
    st.lists(st.floats(-5.0, 5.0), min_size=2, max_size=2),  # settles
    st.one_of(st.none(), st.floats(-2.0, 10.0)),  # sync level cap on limit 0
    st.one_of(st.just(0.0), st.floats(0.0, 40.0)),  # pause ms
    st.booleans(),  # cancel the last admitted reservation
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_op, min_size=1, max_size=25))
@example(  # a cancel 0.98 µs before the queue's tail: both must give it back
    ops=[
        (0.0, [], [0.0, 0.0], None, 0.0, False),
        (0.0, [([0.0, 1.0], None)], [0.0, 0.0], None, 0.0, False),
        (0.0, [([0.0, 0.0], 0.0)], [0.0, -0.001953125], None, 0.0, True),
    ]
)
def test_the_lua_script_and_the_python_model_agree(
    redis_url: str, prefix: str, ops: list[Any]
) -> None:
    client = redis.Redis.from_url(redis_url)
    script = client.register_script(RESERVE)
    rates, caps = [0.2, 2.0], [5.0, 40.0]  # per ms; capacities
    tag = f"{prefix}model:{time.monotonic_ns()}"
    keys = [f"{tag}:a", f"{tag}:b", f"{tag}:w"]
    buckets = [Bucket(rate=r, capacity=c) for r, c in zip(rates, caps, strict=True)]
    now = 1_000_000.0
    last: tuple[float, list[float]] | None = None
    try:
        for dt, callers, adjusts, cap0, pause, cancel in ops:
            now += dt
            batch = [([s * c for s, c in zip(sh, caps, strict=True)], mw) for sh, mw in callers]
            cancels = [last] if cancel and last is not None else []
            args: list[Any] = [2, len(batch), pause, "w", 1e9, now]
            for i in range(2):
                level_cap = cap0 if i == 0 and cap0 is not None else ""
                args += [rates[i], caps[i], adjusts[i], level_cap]
            args.append(len(cancels))
            for at, back in cancels:
                args += [at, *back]
            for amounts, mw in batch:
                args += [-1 if mw is None else mw, *amounts]
            out = script(keys=keys, args=args)
            expected = reserve_batch(
                buckets,
                now,
                batch,
                adjusts=adjusts,
                level_caps=[cap0, None],
                cancels=cancels,
                pause=pause,
                tolerance=0.001,  # 1 µs, as the script (times here are milliseconds)
            )
            assert float(out[2]) == now
            assert len(out) == 3 + 2 * len(batch)
            for j, (m_ok, m_wait) in enumerate(expected):
                assert bool(out[3 + 2 * j]) == m_ok
                assert float(out[4 + 2 * j]) == pytest.approx(m_wait, rel=1e-9, abs=1e-6)
                if m_ok and any(batch[j][0]):
                    last = (now + m_wait, batch[j][0])
            for key, b in zip(keys, buckets, strict=False):
                stored = client.hgetall(key)
                assert float(stored[b"l"]) == pytest.approx(b.level, rel=1e-9, abs=1e-6)
                assert float(stored[b"t"]) == pytest.approx(b.start, rel=1e-12, abs=1e-6)
            if cancel:
                last = None
    finally:
        client.delete(*keys)
        client.close()


async def test_a_queued_caller_cancelled_before_its_round_trip_takes_nothing(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("queue", rps=10, burst=1)
    first = asyncio.create_task(lim.reserve())
    queued = asyncio.create_task(lim.reserve())
    await asyncio.sleep(0)  # both started: the first leads, the second queues
    queued.cancel()
    assert (await first).delay == 0.0
    with pytest.raises(asyncio.CancelledError):
        await queued
    nxt = await lim.reserve()
    assert nxt.delay == pytest.approx(0.1, abs=0.03)  # the cancelled one took nothing


async def test_a_big_queue_goes_in_few_round_trips_in_order(backend: RedisBackend) -> None:
    lim = backend.limiter("many", rps=10, burst=1)

    async def one() -> tuple[float, float, Reservation]:
        # Redis read its clock somewhere between sent and answered: the admission is
        # due within [sent + delay, answered + delay], however late this task resumes
        sent = time.monotonic()
        res = await lim.reserve()
        return sent + res.delay, time.monotonic() + res.delay, res

    t0 = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(300)))  # more than one batch
    # in arrival order, 0.1 s apart
    for (lo1, hi1, _), (lo2, hi2, _) in itertools.pairwise(results):
        assert lo2 - hi1 <= 0.1 + 0.002
        assert hi2 - lo1 >= 0.1 - 0.002
    assert results[0][0] - t0 < 1.0
    assert results[-1][0] - results[0][1] <= 29.9 + 0.002
    assert results[-1][1] - results[0][0] >= 29.9 - 0.002
    for _, _, r in results:
        r.cancel()
