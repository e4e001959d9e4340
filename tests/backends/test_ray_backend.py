"""The named-actor backend's client side, against a stand-in actor (no Ray needed).

The stand-in runs :class:`SharedState` — the very class Ray wraps as the actor — in this
process, on the test's (virtual) clock, one awaited "round trip" per call. The same
backend against a real Ray cluster is tested in ``tests/ray``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headway import CircuitBreakerOpenError
from headway._clock import resolve_clock
from headway.backends.ray import (
    MAX_SHARED_PAUSE,
    RayAdaptiveLimiter,
    RayBackend,
    RayBreakerState,
    RayReservation,
    SharedState,
)
from headway.errors import (
    ConfigurationError,
    MaxWaitExceededError,
    RequestTooLargeError,
    ServerError,
)
from headway.events import Event, add_listener, remove_listener
from headway.limits import Limiter
from headway.limits.adaptive import RATE_CHANGED
from headway.resilience.breaker import BreakerStore, CircuitBreaker, CircuitState


class _Method:
    def __init__(self, actor: StubActor, fn: Callable[..., Any]) -> None:
        self.actor = actor
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        async def trip() -> Any:
            await asyncio.sleep(0.001)  # the network, both ways
            if self.actor.down:
                raise ConnectionError("actor unavailable")
            self.actor.trips += 1
            return self.fn(*args)

        return trip()


class StubActor:
    """Stands in for the Ray actor handle: ``handle.method.remote(...)`` is awaitable."""

    def __init__(self) -> None:
        self.state = SharedState(now=resolve_clock(None).now)
        self.reserve = _Method(self, self.state.reserve)
        self.breaker = _Method(self, self.state.breaker)
        self.learned = _Method(self, self.state.learned)
        self.down = False
        self.trips = 0


@pytest.fixture
def events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    add_listener(seen.append)
    yield seen
    remove_listener(seen.append)


def worst_window(times: list[float], window: float) -> int:
    """The most admissions in any ``window`` seconds."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.virtual_time
async def test_two_workers_share_one_limit_in_few_round_trips() -> None:
    actor = StubActor()
    a, b = RayBackend(actor=actor), RayBackend(actor=actor)
    la, lb = a.limiter("api", rps=10, burst=2), b.limiter("api", rps=10, burst=2)
    assert a.limiter("api") is la
    clock = la.clock
    t0 = clock.now()
    admitted: list[float] = []

    async def one(limiter: Any) -> None:
        await limiter.acquire()
        admitted.append(clock.now() - t0)

    await asyncio.gather(*(one(la if i % 2 else lb) for i in range(60)))
    # 60 calls, one limit of 10/s with a burst of 2: ~5.8 s for everyone together
    assert max(admitted) == pytest.approx(5.8, abs=0.05)
    assert worst_window(admitted, 1.0) <= 2 + 10
    assert actor.trips < 60 / 4  # callers waiting on one trip go together in the next
    assert la.round_trips + lb.round_trips == actor.trips
    assert b.workers == 2
    await a.aclose()
    await b.aclose()


@pytest.mark.virtual_time
async def test_settle_cancel_sync_and_pause_are_shared() -> None:
    actor = StubActor()
    a, b = RayBackend(actor=actor), RayBackend(actor=actor)
    la = a.limiter("llm", rpm=600, tpm=6000, burst=10)
    lb = b.limiter("llm", rpm=600, tpm=6000, burst=10)
    res = await la.reserve(tokens=6000)
    assert isinstance(res, RayReservation)
    assert res.shared
    assert res.delay == 0.0
    res.settle(1000)  # 5000 tokens back, published with the next trip
    await la.flush()
    assert (await lb.reserve(tokens=5000)).delay == 0.0
    nxt = await lb.reserve(tokens=3000)
    assert nxt.delay == pytest.approx(30.0, abs=0.1)
    nxt.cancel()  # last in line: everything back
    assert nxt.cancelled
    await lb.flush()
    assert (await lb.reserve(tokens=3000)).delay == pytest.approx(30.0, abs=0.1)
    la.sync("tokens", 0.0)  # the server says nothing is left
    la.sync("nothing", 1.0)  # no such unit: ignored
    await la.flush()
    assert (await lb.reserve(tokens=100)).delay > 0
    la.pause(5.0)  # a 429 with Retry-After: 5 for everyone
    await la.flush()
    clock = lb.clock
    t0 = clock.now()
    await lb.acquire(tokens=0)
    assert clock.now() - t0 >= 5.0
    with pytest.raises(RequestTooLargeError):
        await la.reserve(tokens=7000)
    with pytest.raises(ValueError, match="negative"):
        await la.reserve(requests=-1)
    with pytest.raises(MaxWaitExceededError):
        await la.reserve(tokens=6000, max_wait=0.1)
    with pytest.raises(ValueError, match="finite"):
        res.settle(-1)
    assert "llm" in repr(la)
    assert "shared=True" in repr(res)


async def test_limits_of_one_name_must_agree() -> None:
    actor = StubActor()
    a, b = RayBackend(actor=actor), RayBackend(actor=actor)
    await a.limiter("x", rpm=60).acquire()
    with pytest.raises(ConfigurationError, match="one set of limits"):
        a.limiter("x", rpm=120)
    with pytest.raises(ConfigurationError, match="at least one"):
        a.limiter("y")
    with pytest.raises(ConfigurationError, match="other limits"):
        await b.limiter("x", rpm=120).acquire()
    assert b.outages == 0
    state = SharedState()
    state.reserve("z", [(1.0, 1.0)], "w", None, None, [], 0.0, [])
    with pytest.raises(ValueError, match="one set of limits"):
        state.reserve("z", [(2.0, 1.0)], "w", None, None, [], 0.0, [])


@pytest.mark.virtual_time
async def test_an_unreachable_actor_means_a_local_share_then_recovery(
    events: list[Event],
) -> None:
    actor = StubActor()
    a, b = RayBackend(actor=actor, retry_interval=1.0), RayBackend(actor=actor)
    la, lb = a.limiter("api", rps=10, burst=10), b.limiter("api", rps=10, burst=10)
    await lb.acquire()
    await la.acquire()  # a has seen b: two workers
    assert a.workers == 2
    actor.down = True
    clock = la.clock
    t0 = clock.now()
    waits = [await la.acquire() for _ in range(10)]
    # half of the limit each, starting empty (no burst on top of what the actor
    # admitted): 5/s from the start
    assert waits[0] == pytest.approx(0.2, abs=0.01)
    assert clock.now() - t0 == pytest.approx(2.0, abs=0.05)
    assert [e.kind for e in events].count("backend.unavailable") == 1
    actor.down = False
    await clock.sleep(1.0)
    res = await la.reserve()
    assert res.shared
    assert "backend.recovered" in [e.kind for e in events]
    local = la._local
    assert local is not None


@pytest.mark.virtual_time
async def test_a_limit_whose_state_was_lost_starts_empty() -> None:
    # A fresh actor's limit starts full (the server's bucket is full too); one that lost
    # its state — the actor restarted, or created anew under a worker that reserved
    # before — starts empty: the server may still count what the old state admitted.
    actor = StubActor()
    lim = RayBackend(actor=actor).limiter("api", rps=10, burst=10)
    first = [await lim.reserve() for _ in range(10)]
    assert [r.delay for r in first] == [0.0] * 10  # a fresh cluster: the full burst
    await asyncio.sleep(1.0)  # full again
    actor.state = SharedState(now=actor.state._now)  # the actor was created anew
    actor.reserve = _Method(actor, actor.state.reserve)
    again = [await lim.reserve() for _ in range(3)]
    assert all(r.shared for r in again)
    # the rate, no burst (less the stand-in's 1 ms round trips)
    assert [r.delay for r in again] == pytest.approx([0.1, 0.2, 0.3], abs=0.005)
    restarted = SharedState(now=actor.state._now, restarted=True)
    out = restarted.reserve("x", [(10.0, 10.0)], "w", None, None, [], 0.0, [([1.0], None)])
    assert out[3] == [(True, pytest.approx(0.1))]
    fresh = SharedState(now=actor.state._now)
    out = fresh.reserve("x", [(10.0, 10.0)], "w", None, None, [], 0.0, [([1.0], None)])
    assert out[3] == [(True, 0.0)]
    out = fresh.reserve("y", [(10.0, 10.0)], "w", None, None, [], 0.0, [([1.0], None)], known=True)
    assert out[3] == [(True, pytest.approx(0.1))]


@pytest.mark.virtual_time
async def test_a_cancelled_waiter_gives_its_reservation_back() -> None:
    actor = StubActor()
    backend = RayBackend(actor=actor)
    lim = backend.limiter("api", rps=1, burst=1)
    await lim.acquire()
    waiter = asyncio.ensure_future(lim.acquire())
    queued = [asyncio.ensure_future(lim.reserve()) for _ in range(3)]
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    for q in queued:
        (await q).cancel()
    await lim.flush()
    clock = lim.clock
    t0 = clock.now()
    await lim.acquire()
    assert clock.now() - t0 <= 1.0


@pytest.mark.virtual_time
async def test_one_worker_opens_the_circuit_for_all_and_one_trial_runs() -> None:
    actor = StubActor()
    a = RayBackend(actor=actor, breaker_refresh=0.25)
    b = RayBackend(actor=actor, breaker_refresh=0.25)
    ba = CircuitBreaker(2, 10.0, name="svc", backend=a)
    bb = CircuitBreaker(2, 10.0, name="svc", backend=b)
    assert bb.state is CircuitState.CLOSED  # starts b's refresher
    for _ in range(2):
        ba.acquire().record_failure(ServerError("boom", status_code=503))
    assert ba.state is CircuitState.OPEN
    await asyncio.sleep(0.6)  # a publishes, b reads
    assert bb.state is CircuitState.OPEN
    with pytest.raises(CircuitBreakerOpenError):
        bb.acquire()
    await asyncio.sleep(10.0)
    # half-open: a trial permit is leased cluster-wide; ask, then come back
    got = []
    for br in (ba, bb):
        with contextlib.suppress(CircuitBreakerOpenError):
            got.append(br.acquire())
    await asyncio.sleep(0.6)
    for br in (ba, bb):
        with contextlib.suppress(CircuitBreakerOpenError):
            got.append(br.acquire())
    assert len(got) == 1  # one trial for the two workers
    got[0].record_success()
    await asyncio.sleep(0.6)
    assert ba.state is CircuitState.CLOSED
    assert bb.state is CircuitState.CLOSED
    assert "svc" in repr(a.breaker_store("svc"))
    await a.aclose()
    await b.aclose()
    await a.aclose()  # idempotent


@pytest.mark.virtual_time
async def test_breaker_writes_survive_an_outage() -> None:
    actor = StubActor()
    a, b = RayBackend(actor=actor), RayBackend(actor=actor)
    sa = a.breaker_store("svc")
    sb = b.breaker_store("svc")
    assert sb.open_for() is None
    actor.down = True
    sa.publish_open(30.0)
    await asyncio.sleep(0.6)
    assert sb.open_for() is None  # not published yet
    actor.down = False
    await asyncio.sleep(1.0)
    left = sb.open_for()
    assert left is not None
    assert 0 < left <= 30.0
    sa.publish_closed()
    await asyncio.sleep(0.6)
    assert sb.open_for() is None
    assert not sa.try_trial()
    sa.release_trial()  # nothing held: nothing to do
    with pytest.raises(ValueError, match="> 0"):
        sa.publish_open(0)
    await a.aclose()
    await b.aclose()


@pytest.mark.virtual_time
async def test_breaker_store_is_a_breaker_store_with_a_cluster_wide_trial_cap() -> None:
    actor = StubActor()
    backends = [RayBackend(actor=actor) for _ in range(3)]
    stores = [bk.breaker_store("db", half_open_max_calls=2) for bk in backends]
    assert backends[0].breaker_store("db") is stores[0]  # one store per name
    assert isinstance(stores[0], RayBreakerState)
    store: BreakerStore = stores[0]  # the protocol the breaker talks to
    assert await stores[1].refresh() is None
    assert not stores[0].is_open
    store.publish_open(5.0)
    assert stores[0].is_open
    assert stores[0].open_for() == pytest.approx(5.0)
    assert await stores[0].refresh() == pytest.approx(5.0, abs=0.01)  # write, then read
    left = await stores[2].refresh()
    assert left is not None
    assert 0 < left <= 5.0
    await asyncio.sleep(5.0)
    # trial time: every worker asks; the actor leases two, the third gets none
    assert not any(s.try_trial() for s in stores)
    await asyncio.sleep(0.5)
    taken = [s.try_trial() for s in stores]
    assert sum(taken) == 2  # the third asked again: denied at the next round trip
    other = stores[taken.index(False)]
    await asyncio.sleep(0.5)
    assert not other.try_trial()  # both leases still held
    stores[taken.index(True)].release_trial()  # a cancelled trial: its lease goes back
    await asyncio.sleep(0.5)
    assert not other.try_trial()  # asks again (each ask is one round trip's answer)
    await asyncio.sleep(0.5)
    assert other.try_trial()
    other.publish_closed()
    assert await other.refresh() is None  # the close goes out first
    for s in stores:
        await s.refresh()
        assert s.open_for() is None
    for bk in backends:
        await bk.aclose()
    stores[0].publish_open(1.0)  # a closed backend starts no refresher again
    assert stores[0].open_for() is not None
    await asyncio.sleep(0.5)
    assert await stores[1].refresh() is None  # so the open never left this process


def test_store_rules() -> None:
    state = SharedState()
    with pytest.raises(ConfigurationError):
        RayBackend(actor=StubActor()).breaker_store("x", half_open_max_calls=0)
    left, gen, got = state.breaker("x", 0.001, "t1", False, False, 1, 30.0)
    assert left is not None
    assert gen == 1
    assert not got
    import time

    time.sleep(0.002)
    assert state.breaker("x", -1.0, "t1", True, False, 1, 30.0)[2]
    assert not state.breaker("x", -1.0, "t2", True, False, 1, 30.0)[2]
    assert state.breaker("x", -1.0, "t1", False, True, 1, 30.0)[2] is False
    assert state.breaker("x", -1.0, "t2", True, False, 1, 30.0)[2]
    assert state.breaker("x", 0.0, "t2", False, False, 1, 30.0)[0] is None


@given(
    steps=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 12)), min_size=1, max_size=25),
    rate=st.sampled_from([1.0, 5.0, 20.0]),
    burst=st.sampled_from([1.0, 3.0, 10.0]),
)
def test_batched_admissions_never_exceed_burst_plus_rate(
    steps: list[tuple[float, int]], rate: float, burst: float
) -> None:
    """Whatever the batching, the admissions the actor hands out fit the token bucket,
    and one trip of k callers admits them exactly as k trips at the same instant."""
    now = [0.0]
    batched = SharedState(now=lambda: now[0])
    single = SharedState(now=lambda: now[0])
    admitted: list[float] = []
    for advance, k in steps:
        now[0] += advance
        _, t, _, out = batched.reserve(
            "x", [(rate, burst)], "w", None, None, [], 0.0, [([1.0], None)] * k
        )
        one_by_one = [
            single.reserve("x", [(rate, burst)], "w", None, None, [], 0.0, [([1.0], None)])[3][0]
            for _ in range(k)
        ]
        assert [ok for ok, _ in out] == [ok for ok, _ in one_by_one]
        assert [w for _, w in out] == pytest.approx([w for _, w in one_by_one])
        admitted += [t + wait for ok, wait in out if ok]
    admitted.sort()
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= burst + rate * (admitted[j] - admitted[i]) + 1e-6


@pytest.mark.virtual_time
async def test_a_pause_elsewhere_pushes_back_waiters_here(events: list[Event]) -> None:
    actor = StubActor()
    async with RayBackend(actor=actor) as a, RayBackend(actor=actor) as b:
        la, lb = a.limiter("api", rps=1, burst=1), b.limiter("api", rps=1, burst=1)
        clock = lb.clock
        await lb.acquire()
        await la.acquire()  # a has seen the actor's pause shift once
        t0 = clock.now()
        waiter = asyncio.ensure_future(lb.acquire())  # admitted in ~2 s
        await asyncio.sleep(0.1)
        la.pause(5.0)  # a 429 in a: every worker waits 5 s more
        await la.flush()
        await lb.flush()  # b's next trip learns of it
        await waiter
        assert clock.now() - t0 >= 5.0
        assert "limiter.paused" in [e.kind for e in events]
        async with lb.slot() as res:
            assert res.shared
        lb.sync("requests", 0.0, limit=1.0)
        await lb.flush()
        assert (await lb.reserve()).delay > 0
        assert "RayBackend" in repr(a)


@pytest.mark.virtual_time
async def test_local_reservations_settle_cancel_and_reject() -> None:
    actor = StubActor()
    actor.down = True
    backend = RayBackend(actor=actor, retry_interval=120.0)
    lim = backend.limiter("api", rpm=60, tpm=600, burst=1)
    first = await lim.reserve(tokens=0)
    assert not first.shared
    assert first.delay == pytest.approx(1.0)  # the local share starts empty: no burst
    await asyncio.sleep(61.0)  # and fills at its rate
    res = await lim.reserve(tokens=600)
    assert not res.shared
    assert res.delay == 0.0
    res.settle(100)  # 500 tokens back, locally
    again = await lim.reserve(tokens=500)
    assert again.delay == pytest.approx(1.0)  # the request limit, not the tokens
    again.cancel()
    with pytest.raises(MaxWaitExceededError):
        await lim.reserve(tokens=600, max_wait=0.5)
    lim.pause(3.0)
    paused = await lim.reserve(tokens=0)
    assert paused.delay >= 3.0
    actor.down = False
    await asyncio.sleep(60.0)  # time to probe the actor again (120 s after the outage)
    leader = asyncio.ensure_future(lim.reserve())
    queued = asyncio.ensure_future(lim.reserve())
    await asyncio.sleep(0)  # the leader's trip is in flight, the other waits for the next
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert (await leader).shared
    backend.kill()  # not a Ray actor: nothing to do
    await backend.aclose()


@pytest.mark.virtual_time
async def test_the_policy_hooks_of_the_limiter_protocol() -> None:
    lim = RayBackend(actor=StubActor()).limiter("api", rps=10, burst=10)
    assert lim.reserve_nowait() is None  # shared: always a round trip
    lim.on_success()
    lim.on_rate_limited(2.0, empty=False)  # only that request backs off
    assert (await lim.reserve()).delay == 0.0
    lim.on_rate_limited(2.0, empty=True)  # the server's bucket is empty: everyone waits
    assert (await lim.reserve()).delay >= 2.0
    lim.on_rate_limited(None, empty=True)
    assert (await lim.reserve()).delay > 0.0


# -- the learned limit, shared through the actor ------------------------------------------


def test_the_actor_retunes_a_learned_limit_and_refuses_other_limits() -> None:
    state = SharedState(now=lambda: 0.0)
    state.reserve("x", [(1.0, 2.0)], "w", None, None, [], 0.0, [([2.0], None)])
    with pytest.raises(ValueError, match="one name, one set of limits"):
        state.reserve("x", [(2.0, 2.0)], "w", None, None, [], 0.0, [([1.0], None)])
    with pytest.raises(ValueError, match="one name"):  # retune keeps the number of limits
        state.reserve("x", [(2.0, 2.0), (1.0, 1.0)], "w", None, None, [], 0.0, [], True)
    # retuned: the level (empty) stays, the next unit comes at the new rate
    out = state.reserve("x", [(4.0, 2.0)], "w", None, None, [], 0.0, [([1.0], None)], True)
    assert out[3] == [(True, 0.25)]
    assert state.learned("x", None) == ("", None)
    version, held = state.learned("x", {"adv": "300"})
    assert held == {"adv": "300"}
    assert state.learned("x", None) == (version, held)
    assert state.learned("x", {"adv": "200"})[0] != version
    assert SharedState().learned("x", {"adv": "300"})[0] != version  # another actor


@pytest.mark.virtual_time
async def test_a_limit_one_worker_reads_is_the_limit_for_all(events: list[Event]) -> None:
    actor = StubActor()
    a, b = RayBackend(actor=actor), RayBackend(actor=actor)
    la = RayAdaptiveLimiter(a, "api", rpm=6000, sync_every=0.5)
    lb = RayAdaptiveLimiter(b, "api", rpm=6000, sync_every=0.5)
    assert isinstance(la, Limiter)
    assert la.reserve_nowait() is None
    assert la.rate_in_force() == (60.0, "server")  # nothing heard yet: start low
    assert la.rate_in_force("tokens") is None
    assert la.learned_limits() == {}
    la.observe_headers({"x-ratelimit-limit-requests": "1200"})
    assert la.rate_in_force() == (1200.0, "server")
    await la.reserve()  # publishes the learned state; the actor's bucket takes the rate
    bucket = actor.state._limits["api"][1][0]
    assert bucket.rate == pytest.approx(20.0)  # 1200/min
    assert bucket.capacity == pytest.approx(20.0)  # a second's worth
    await asyncio.sleep(0.5)
    await lb.reserve()  # b syncs: adopts what a learned
    assert lb.rate_in_force() == (1200.0, "server")
    assert lb.learned_limits() == {"requests": 1200.0}
    assert any(e.kind == RATE_CHANGED for e in events)
    # both pace on the shared bucket at the learned rate
    clock = la.shared.clock
    t0 = clock.now()
    admitted: list[float] = []

    async def one(limiter: RayAdaptiveLimiter) -> None:
        res = await limiter.reserve()
        await res.wait()
        admitted.append(clock.now() - t0)

    await asyncio.gather(*(one(la if i % 2 else lb) for i in range(200)))
    assert worst_window(admitted, 1.0) <= 20 + 20 + 1  # a second's rate plus the burst
    assert max(admitted) == pytest.approx((200 - 19) / 20.0, abs=0.6)
    assert "rpm=1200" in repr(la)
    await a.aclose()
    await b.aclose()


@pytest.mark.virtual_time
async def test_an_advertised_limit_survives_a_probe_published_after_it() -> None:
    # a learns 1200/min from a header and publishes it; b, still probing (it has seen no
    # header yet), publishes its probe after that. The advertised limit must win: a keeps
    # it and publishes it again, and b ends up at it too, without a new header.
    actor = StubActor()
    a, b = RayBackend(actor=actor), RayBackend(actor=actor)
    la = RayAdaptiveLimiter(a, "api", rpm=6000, sync_every=0.5)
    lb = RayAdaptiveLimiter(b, "api", rpm=6000, sync_every=0.5)
    await la.reserve()
    await lb.reserve()
    la.observe_headers({"x-ratelimit-limit-requests": "1200"})
    await la.reserve()  # published: adv=1200
    await asyncio.sleep(1.0)
    lb.on_success()
    await asyncio.sleep(0.2)
    lb.on_success()  # a probe: b's state (no advertised limit) is dirty
    await lb.reserve()  # published after a's
    assert lb.rate_in_force() != (1200.0, "server")
    await asyncio.sleep(0.5)
    await la.reserve()  # a adopts b's newer state, but it has seen the server's figure
    assert la.rate_in_force() == (1200.0, "server")
    await asyncio.sleep(0.5)
    await la.reserve()  # and publishes it again
    await asyncio.sleep(0.5)
    await lb.reserve()
    assert lb.rate_in_force() == (1200.0, "server")
    await a.aclose()
    await b.aclose()


@pytest.mark.virtual_time
async def test_calls_are_not_booked_far_ahead_of_a_rate_that_may_rise() -> None:
    # 40 calls at the 60/min start rate: booked at once they would wait 0..39 s. Booked
    # at most the horizon ahead, they take the 1200/min learned after a second.
    la = RayAdaptiveLimiter(RayBackend(actor=StubActor()), "api", sync_every=0.5)
    clock = la.shared.clock
    t0 = clock.now()
    admitted: list[float] = []

    async def one() -> None:
        res = await la.reserve()
        await res.wait()
        admitted.append(clock.now() - t0)

    calls = [asyncio.ensure_future(one()) for _ in range(40)]
    await asyncio.sleep(1.0)
    la.observe_headers({"x-ratelimit-limit-requests": "1200"})
    await asyncio.gather(*calls)
    assert len(admitted) == 40
    assert max(admitted) < 6.0
    await la.backend.aclose()


@pytest.mark.virtual_time
async def test_a_429_seen_by_one_worker_slows_and_pauses_all() -> None:
    actor = StubActor()
    a, b = RayBackend(actor=actor), RayBackend(actor=actor)
    la = RayAdaptiveLimiter(a, "api", rpm=6000, tpm=100_000, sync_every=0.5)
    lb = RayAdaptiveLimiter(b, "api", rpm=6000, tpm=100_000, sync_every=0.5)
    la.observe_headers({"x-ratelimit-limit-requests": "600"})
    await la.reserve()
    await asyncio.sleep(0.5)
    await lb.reserve()
    assert lb.rate_in_force() == (600.0, "server")
    lb.on_rate_limited(1.0, empty=False)  # this request only
    assert lb.rate_limited_count == 1
    assert lb.rate_in_force() == (600.0, "server")
    lb.on_rate_limited(3.0, empty=True)  # the server's bucket is empty: slow and pause
    slowed = lb.rate_in_force()
    assert slowed is not None
    assert slowed[0] < 600.0
    clock = lb.shared.clock
    t0 = clock.now()
    await lb.sync_learned()  # b publishes its decrease
    await lb.shared.flush()  # and the pause
    await asyncio.sleep(0.5)
    res = await la.reserve()
    assert la.rate_in_force() == slowed  # a adopted b's decrease
    await res.wait()
    assert clock.now() - t0 >= 3.0 - 0.01  # and waited out the shared pause
    t0 = clock.now()
    lb.pause(10 * MAX_SHARED_PAUSE)  # one 429 never stops the cluster for long
    await (await lb.reserve()).wait()
    assert MAX_SHARED_PAUSE - 1.0 <= clock.now() - t0 <= MAX_SHARED_PAUSE + 1.0
    lb.sync("requests", 0.0)
    lb.on_success()
    # a server that advertises nothing: probing upward while answers come, shared
    lc = RayAdaptiveLimiter(RayBackend(actor=StubActor()), "probe", sync_every=0.1)
    for _ in range(5):
        await asyncio.sleep(1.0)
        lc.on_success()
    rate = lc.rate_in_force()
    assert rate is not None
    assert rate[0] > 60.0
    with pytest.raises(ConfigurationError, match="rpm"):
        RayAdaptiveLimiter(a, "bad", rpm=0)
    with pytest.raises(ConfigurationError, match="burst_seconds"):
        RayAdaptiveLimiter(a, "bad", burst_seconds=0)
    await a.aclose()
    await b.aclose()
    await lc.backend.aclose()


@pytest.mark.virtual_time
async def test_a_learned_rate_waits_out_an_actor_outage() -> None:
    actor = StubActor()
    a, b = RayBackend(actor=actor), RayBackend(actor=actor)
    la = RayAdaptiveLimiter(a, "api", sync_every=0.5)
    lb = RayAdaptiveLimiter(b, "api", sync_every=0.5)
    actor.down = True
    la.observe_headers({"anthropic-ratelimit-requests-limit": "300"})
    await la.sync_learned()  # the actor is away: kept, published later
    actor.down = False
    await la.sync_learned()
    await lb.sync_learned()
    assert lb.rate_in_force() == (300.0, "server")
    # the actor restarts with nothing learned: what is published next is adopted
    actor.state = SharedState(now=resolve_clock(None).now)
    actor.reserve = _Method(actor, actor.state.reserve)
    actor.learned = _Method(actor, actor.state.learned)
    la.observe_headers({"anthropic-ratelimit-requests-limit": "150"})
    await la.sync_learned()
    await lb.sync_learned()
    assert lb.rate_in_force() == (150.0, "server")
    await a.aclose()
    await b.aclose()
