"""RedisLimiter against a real Redis: atomic multi-limit reservations, settle, pause, sync.

Redis measures time with its own clock, so these tests run in real time. Most check the
waits Redis hands out without sleeping them, at rates so low (one unit a second or slower)
that however long a round trip takes on a loaded machine it barely refills anything; where
the time that passed matters, a wait is bounded by the time measured around the calls:
Redis read its clock somewhere between sending and answering. The few that sleep keep every
wait under 0.1 s, or sleep on a :class:`ManualClock` that only records what was asked.
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
from headway._clock import ManualClock
from headway.backends import Limit, RedisBackend, RedisLimiter, limits_of
from headway.backends._model import Bucket, reserve_batch
from headway.backends._scripts import RESERVE
from headway.errors import ConfigurationError, RequestTooLargeError
from headway.limits import Limiter, MultiLimiter, Reservation, TokenBucketRateLimiter

pytestmark = pytest.mark.integration

MakeBackend = Callable[..., RedisBackend]

#: Rounding between Redis's milliseconds and this process's seconds (both clocks tick at
#: the same rate; only the time a round trip takes is unknown, and it is measured).
EPS = 0.002


async def timed(lim: RedisLimiter, *args: Any, **kw: Any) -> tuple[float, float, Reservation]:
    """Reserve; return (sent, answered, reservation): Redis decided in between, so the
    admission is due within ``[sent + delay, answered + delay]`` on this process's clock."""
    sent = time.monotonic()
    res = await lim.reserve(*args, **kw)
    return sent, time.monotonic(), res


async def test_a_burst_then_evenly_spaced_fifo_waits(backend: RedisBackend) -> None:
    lim = backend.limiter("api", rps=1, burst=5)
    t0 = time.monotonic()
    got = [await timed(lim) for _ in range(10)]
    elapsed = time.monotonic() - t0
    delays = [r.delay for _, _, r in got]
    assert delays[:5] == [0.0] * 5
    # after the burst, one a second: each admission 1 s after the one before
    for (lo1, hi1, r1), (lo2, hi2, r2) in itertools.pairwise(got[5:]):
        assert lo2 + r2.delay - (hi1 + r1.delay) <= 1.0 + EPS
        assert hi2 + r2.delay - (lo1 + r1.delay) >= 1.0 - EPS
    assert 5.0 - elapsed - EPS <= delays[9] <= 5.0 + EPS
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
    t0 = time.monotonic()
    first = await lim.reserve(1, 100)
    assert first.delay == 0.0
    with pytest.raises(MaxWaitExceededError) as info:
        await lim.reserve(1, 50, max_wait=0.0)
    # 50 tokens at 100/s, less what refilled since the first reservation
    assert 0.5 - (time.monotonic() - t0) - EPS <= info.value.retry_after <= 0.5 + EPS
    # the refused call took no request: 9 are still there
    nine = await lim.reserve(9, 0, max_wait=0.0)
    assert nine.delay == 0.0
    with pytest.raises(RequestTooLargeError):
        await lim.reserve(1, 101)
    with pytest.raises(ValueError):
        await lim.reserve(-1, 0)


async def test_max_wait_default_of_the_limiter(backend: RedisBackend) -> None:
    # one a 10 s: however slow the round trips, the second caller's turn is far off
    lim = backend.limiter("mw", limits=[Limit(1, 10.0)], max_wait=0.001)
    t0 = time.monotonic()
    await lim.reserve()
    with pytest.raises(MaxWaitExceededError):
        await lim.reserve()  # the limiter's own max_wait
    delay = (await lim.reserve(max_wait=20.0)).delay  # one given with the call wins
    elapsed = time.monotonic() - t0
    assert 10.0 - elapsed - EPS <= delay <= 10.0 + EPS


async def test_settle_refunds_the_over_estimate_and_charges_the_rest(
    backend: RedisBackend,
) -> None:
    # 100 tokens a minute: what refills during the round trips is a rounding error
    lim = backend.limiter("tok", limits=[Limit(100, 60.0, burst=100, unit="tokens")])
    t0 = time.monotonic()
    res = await lim.reserve(1, 100)
    res.settle(10)  # 90 come back with the next round trip
    res.settle(10)  # settling again to the same figure changes nothing
    assert res.tokens == 10
    assert (await lim.reserve(1, 90, max_wait=0.0)).delay == 0.0
    res2 = await lim.reserve(1, 0)
    res2.settle(50)  # used more than estimated: a debt later callers wait out
    await lim.flush()
    late = await lim.reserve(1, 0)
    # a debt of 50 tokens at 100/min: 30 s, less what refilled since the first reservation
    assert 30.0 - (time.monotonic() - t0) - EPS <= late.delay <= 30.0 + EPS
    with pytest.raises(ValueError):
        res.settle(-1)


async def test_cancelling_the_last_waiter_gives_its_slot_back(backend: RedisBackend) -> None:
    lim = backend.limiter("cancel", limits=[Limit(1, 10.0)])  # one a 10 s
    await lim.reserve()
    a = await lim.reserve()
    b_sent, _, b = await timed(lim)
    assert b.delay > a.delay > 0
    b.cancel()
    b.cancel()  # idempotent
    assert b.cancelled
    b.settle(5)  # nothing after a cancel
    _, c_answered, c = await timed(lim)
    # c takes b's turn (not the one 10 s after it)
    assert b.delay - (c_answered - b_sent) - EPS <= c.delay <= b.delay + EPS


async def test_cancelling_a_waiter_in_the_middle_does_not_let_a_newcomer_double_up(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("middle", limits=[Limit(1, 10.0)])  # one a 10 s
    await lim.reserve()
    a = await lim.reserve()
    b = await lim.reserve()
    a.cancel()
    c = await lim.reserve()
    assert c.delay > b.delay + 5.0  # after b (10 s on), not on a's freed slot nor on b's


async def test_cancelling_every_waiter_together_gives_everything_back(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("all", rps=2, burst=1)
    await lim.reserve()
    got = [await timed(lim) for _ in range(20)]
    waiters = [r for _, _, r in got]
    for w in waiters:  # in any order: they ride along together, latest first
        w.cancel()
    lo, hi, nxt = await timed(lim)
    # nxt takes the first waiter's slot: everything came back
    first_lo, first_hi, first = got[0]
    assert lo + nxt.delay <= first_hi + first.delay + EPS
    assert hi + nxt.delay >= first_lo + first.delay - EPS
    _, last_hi, last = got[-1]  # the last waiter was 19 turns (9.5 s) later
    assert last_hi + last.delay - (first_lo + first.delay) >= 9.5 - EPS


async def test_slot_waits_and_a_cancelled_wait_gives_the_units_back(
    backend: RedisBackend,
) -> None:
    lim = backend.limiter("slot", rps=20, burst=1)
    t_first = time.monotonic()
    async with lim.slot() as first:
        assert first.delay == 0.0
    t0 = time.monotonic()
    waited = await lim.acquire()
    # bound by what has passed since the first slot
    assert 0.05 - (time.monotonic() - t_first) - EPS <= waited <= 0.05 + EPS
    assert time.monotonic() - t0 >= waited * 0.9

    # A cancelled wait: one a 10 s, so the waiter is surely still sleeping when cancelled.
    slow = backend.limiter("slot-cancel", limits=[Limit(1, 10.0)])
    await slow.reserve()
    reserved = asyncio.Event()
    taken: list[tuple[float, float, Reservation]] = []
    real_reserve = slow.reserve

    async def spy(*args: Any, **kw: Any) -> Reservation:
        sent = time.monotonic()
        res = await real_reserve(*args, **kw)
        taken.append((sent, time.monotonic(), res))
        reserved.set()
        return res  # acquire goes on to sleep in res.wait() in this same step

    slow.reserve = spy  # type: ignore[method-assign]
    task = asyncio.create_task(slow.acquire())
    async with asyncio.timeout(5):  # a bound, not a wait
        await reserved.wait()
    del slow.reserve
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [(w_lo, w_hi, waiter)] = taken
    assert waiter.delay > 5.0
    lo, hi, nxt = await timed(slow)
    # the cancelled waiter's turn came back: nxt is due when the waiter was (not 10 s on)
    assert lo + nxt.delay <= w_hi + waiter.delay + EPS
    assert hi + nxt.delay >= w_lo + waiter.delay - EPS


async def test_a_pause_holds_back_every_worker(make_backend: MakeBackend) -> None:
    a = make_backend().limiter("shared", rps=100, burst=10)
    b = make_backend().limiter("shared", rps=100, burst=10)
    assert (await b.reserve()).delay == 0.0
    t0 = time.monotonic()
    a.pause(30.0)  # long, so that it is surely still on however slow the round trips
    a.pause_until(0.0)  # an earlier end changes nothing
    a_sent, a_answered, local = await timed(a)  # publishes the pause with this round trip
    # the pause, then one unit at 100/s: the bucket restarts empty at the end
    assert 30.01 - (a_answered - t0) - EPS <= local.delay <= 30.01 + EPS
    _, b_answered, other = await timed(b)
    # b queues behind the pause and a's unit: 10 ms after a, as Redis saw it
    assert 0.01 - (b_answered - a_sent) - EPS <= other.delay - local.delay <= 0.01 + EPS


async def test_a_waiter_is_pushed_back_by_a_pause_from_another_worker(
    make_backend: MakeBackend,
) -> None:
    # one a 10 s, so that b's waiter is surely still queued when a pauses; b sleeps on a
    # clock that records what it is asked to sleep (the delays come from Redis's clock)
    clock = ManualClock()
    a = make_backend().limiter("push", limits=[Limit(1, 10.0)])
    b = make_backend().limiter("push", limits=[Limit(1, 10.0)], clock=clock)
    await b.reserve()
    w_sent, _, waiting = await timed(b)
    assert 5.0 < waiting.delay <= 10.0
    t_pause = time.monotonic()
    a.pause(30.0)
    await a.flush()
    flushed = time.monotonic()
    await b.reserve()  # b learns of the pause
    async with asyncio.timeout(5):
        await waiting.wait()
    # its own delay, then pushed back to the end of a's pause (30 s from when a paused,
    # less the time a took to send it), not beyond
    assert clock.sleeps[0] == waiting.delay
    assert 30.0 - (flushed - t_pause) - EPS <= sum(clock.sleeps) <= 30.0 + flushed - w_sent + EPS


async def test_a_local_pause_holds_back_this_process_at_once(backend: RedisBackend) -> None:
    # the limiter sleeps on a clock that records what it is asked to sleep, so the pause
    # can be long (it is sent as a length: Redis applies it on its own clock)
    clock = ManualClock()
    lim = backend.limiter("lp", rps=100, burst=10, clock=clock)
    first = await lim.reserve()
    assert first.delay == 0.0
    lim.pause(30.0)
    res = await lim.reserve()
    assert res.delay >= 30.0
    async with asyncio.timeout(5):
        await first.wait()  # admitted, but not started: the pause holds it back too
    assert sum(clock.sleeps) >= 30.0 - EPS


async def test_sync_lowers_the_shared_level_and_never_raises_it(backend: RedisBackend) -> None:
    lim = backend.limiter(
        "sync", limits=[Limit(10, 1.0, burst=10), Limit(6000, 60.0, unit="tokens")]
    )
    lim.sync("requests", remaining=0, reset_after=1.0)
    lim.sync("requests", remaining=5)  # the lower figure wins
    lim.sync("nothing-like-this", remaining=0)
    res = await lim.reserve()
    # the level is capped at 0 when the round trip arrives: one request at 10/s
    assert res.delay == pytest.approx(0.1, abs=EPS)
    tok = backend.limiter(
        "sync-t", limits=[Limit(1000, 1.0), Limit(6000, 60.0, burst=6000, unit="tokens")]
    )
    tok.sync("tokens", remaining=0, limit=6000)
    lo, _, first = await timed(tok, 1, 10)
    assert first.delay == pytest.approx(0.1, abs=EPS)  # 10 tokens at 100/s
    tok.sync("tokens", remaining=10_000)  # never raises the level
    _, hi, second = await timed(tok, 1, 10)
    # queued 0.1 s after the first, less what passed between the two round trips
    assert 0.2 - (hi - lo) - EPS <= second.delay <= 0.2 + EPS


async def test_workers_count_and_keys_expire_by_themselves(
    make_backend: MakeBackend, prefix: str
) -> None:
    b1, b2 = make_backend(), make_backend()
    # slow to refill (3 per 10 s), so the bucket's key lives ~11 s: still there however
    # slowly this test runs, and its expiry is still seen
    limit = Limit(3, 10.0, burst=5)
    lim1 = b1.limiter("ttl", limits=[limit])
    await lim1.reserve()
    await b2.limiter("ttl", limits=[limit]).reserve()
    await lim1.reserve()
    assert b1.workers == 2
    assert b1.local_share() == 0.5
    keys = sorted([k.decode() async for k in b1.client.scan_iter(match=prefix + "*")])
    assert keys == [prefix + "rl:{ttl}:requests:10", prefix + "workers:{ttl}"]
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
    # each admission is due within [sent + delay, answered + delay] (Redis decided between)
    admitted: list[tuple[float, float]] = []

    async def worker(lim: RedisLimiter) -> None:
        for _ in range(n):
            lo, hi, res = await timed(lim)
            admitted.append((lo + res.delay, hi + res.delay))

    t0 = time.monotonic()
    await asyncio.gather(*(worker(x) for x in limiters))
    elapsed = time.monotonic() - t0
    admitted.sort()
    # 24 units at 50/s after a burst of 5: the last is admitted 0.38 s after the first
    assert max(hi for _, hi in admitted) - t0 >= (3 * n - burst) / rate - EPS
    assert sum(1 for lo, _ in admitted if lo <= t0 + elapsed) <= burst + elapsed * rate + EPS
    for i, (start, _) in enumerate(admitted):
        for j in range(i, len(admitted)):
            # any j - i + 1 admissions span at most this (latest end, earliest start)
            window = max(hi for _, hi in admitted[i : j + 1]) - start
            assert j - i + 1 <= burst + rate * window + EPS


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
    lim = backend.limiter("queue", limits=[Limit(1, 10.0)])  # one a 10 s
    t0 = time.monotonic()
    first = asyncio.create_task(lim.reserve())
    queued = asyncio.create_task(lim.reserve())
    await asyncio.sleep(0)  # both started: the first leads, the second queues
    queued.cancel()
    assert (await first).delay == 0.0
    with pytest.raises(asyncio.CancelledError):
        await queued
    nxt = await lim.reserve()
    # the next turn, 10 s after the first: the cancelled one took nothing (else 20 s)
    assert 10.0 - (time.monotonic() - t0) - EPS <= nxt.delay <= 10.0 + EPS


async def test_a_big_queue_goes_in_few_round_trips_in_order(backend: RedisBackend) -> None:
    # one a second: a round trip, however slow, ends long before the queue runs dry
    lim = backend.limiter("many", rps=1, burst=1)

    async def one() -> tuple[float, float, Reservation]:
        # Redis read its clock somewhere between sent and answered: the admission is
        # due within [sent + delay, answered + delay], however late this task resumes
        sent = time.monotonic()
        res = await lim.reserve()
        return sent + res.delay, time.monotonic() + res.delay, res

    calls = 0
    real_eval = backend.eval_script

    async def counting(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real_eval(*args)

    backend.eval_script = counting  # type: ignore[method-assign]
    t0 = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(300)))  # more than one batch
    del backend.eval_script
    # the first leads alone; the other 299 queue behind it and go in batches of 256
    assert calls == 3
    # in arrival order, 1 s apart
    for (lo1, hi1, _), (lo2, hi2, _) in itertools.pairwise(results):
        assert lo2 - hi1 <= 1.0 + EPS
        assert hi2 - lo1 >= 1.0 - EPS
    assert results[0][2].delay == 0.0
    assert results[0][0] >= t0
    assert results[-1][0] - results[0][1] <= 299.0 + EPS
    assert results[-1][1] - results[0][0] >= 299.0 - EPS
    for _, _, r in results:
        r.cancel()
