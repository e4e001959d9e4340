"""Circuit state shared by breakers: in one process (memory) and across workers (Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from headway import CircuitBreakerOpenError, ManualClock
from headway.backends import MemoryBackend, MemoryBreakerState, RedisBackend
from headway.errors import ConfigurationError, ServerError
from headway.resilience.breaker import CircuitBreaker, CircuitState

MakeBackend = Callable[..., RedisBackend]


def state_of(breaker: CircuitBreaker) -> CircuitState:
    """The breaker's state, read afresh (not narrowed by the type checker)."""
    return breaker.state


def is_open(state: MemoryBreakerState) -> bool:
    return state.is_open


def _fail(breaker: CircuitBreaker) -> None:
    breaker.acquire().record_failure(ServerError("boom", status_code=503))


# -- in one process -------------------------------------------------------------------


def test_breakers_of_one_name_share_the_circuit_in_memory() -> None:
    clock = ManualClock()
    backend = MemoryBackend(clock=clock)
    a = CircuitBreaker(2, 10.0, name="svc", clock=clock, backend=backend)
    b = CircuitBreaker(2, 10.0, name="svc", clock=clock, backend=backend)
    other = CircuitBreaker(2, 10.0, name="other", clock=clock, backend=backend)
    _fail(a)
    _fail(a)
    assert state_of(a) is CircuitState.OPEN
    assert state_of(b) is CircuitState.OPEN
    assert state_of(other) is CircuitState.CLOSED
    with pytest.raises(CircuitBreakerOpenError):
        b.acquire()
    clock.advance(10.0)
    trial = b.acquire()  # one trial call for both breakers
    assert trial.trial
    with pytest.raises(CircuitBreakerOpenError):
        a.acquire()
    trial.release()  # cancelled: the permit comes back
    trial = a.acquire()
    trial.record_success()
    assert state_of(a) is CircuitState.CLOSED
    assert state_of(b) is CircuitState.CLOSED
    b.force_open()
    assert state_of(a) is CircuitState.OPEN
    a.reset()
    assert state_of(b) is CircuitState.CLOSED
    assert backend.breaker_store("svc") is backend.breaker_store("svc")
    assert isinstance(backend.breaker_store("svc"), MemoryBreakerState)
    assert "svc" in repr(backend.breaker_store("svc"))


def test_a_failed_trial_reopens_for_everyone() -> None:
    clock = ManualClock()
    backend = MemoryBackend(clock=clock)
    a = CircuitBreaker(1, 5.0, name="svc", clock=clock, backend=backend)
    b = CircuitBreaker(1, 5.0, name="svc", clock=clock, backend=backend)
    _fail(a)
    clock.advance(5.0)
    assert state_of(b) is CircuitState.HALF_OPEN
    _fail(b)
    assert state_of(a) is CircuitState.OPEN
    assert a.retry_after == pytest.approx(5.0)


def test_memory_breaker_state_store() -> None:
    clock = ManualClock()
    state = MemoryBreakerState("x", half_open_max_calls=2, clock=clock)
    assert state.open_for() is None
    assert not state.try_trial()
    assert not is_open(state)
    state.publish_open(1.0)
    assert is_open(state)
    assert not state.try_trial()
    clock.advance(1.0)
    assert state.try_trial()
    assert state.try_trial()
    assert not state.try_trial()
    state.release_trial()
    assert state.try_trial()
    state.release_trial()
    state.release_trial()
    state.release_trial()  # never below zero
    assert "MemoryBreakerState('x'" in repr(state)
    with pytest.raises(ValueError):
        state.publish_open(0)
    with pytest.raises(ConfigurationError):
        MemoryBreakerState("y", half_open_max_calls=0)


async def test_memory_backend_limiters_by_name() -> None:
    backend = MemoryBackend()
    lim = backend.limiter("api", rpm=60, tpm=1000)
    assert backend.limiter("api") is lim
    with pytest.raises(ConfigurationError):
        backend.limiter("api", rpm=61)
    with pytest.raises(ConfigurationError):
        backend.limiter("empty")
    res = await lim.reserve(1, 100)
    assert res.delay == 0.0
    assert "api" in repr(backend)
    async with backend as same:
        assert same is backend


# -- across workers, through Redis ----------------------------------------------------

# refresh often; a generous timeout, so that a slow answer is not taken for an outage
FAST: dict[str, Any] = {"breaker_refresh": 0.01, "timeout": 5.0}


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    # a bound, not a wait: a loaded machine may take a while to run the refreshers
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_one_worker_opens_the_circuit_and_every_worker_sees_it(
    make_backend: MakeBackend,
) -> None:
    wa, wb = make_backend(**FAST), make_backend(**FAST)
    # open for 30 s: b surely finds it still open, however slowly it refreshes
    a = CircuitBreaker(2, 30.0, name="svc", backend=wa)
    b = CircuitBreaker(2, 30.0, name="svc", backend=wb)
    assert state_of(b) is CircuitState.CLOSED  # starts b's refresher
    _fail(a)
    _fail(a)
    assert state_of(a) is CircuitState.OPEN
    await _until(lambda: state_of(b) is not CircuitState.CLOSED)
    with pytest.raises(CircuitBreakerOpenError):
        b.acquire()
    assert b.retry_after > 15.0  # the open period a published
    # A third worker re-opens the circuit for a moment (the latest publish wins): both
    # breakers adopt the shorter period. After it: one trial call in the whole cluster.
    await make_backend(**FAST).breaker_store("svc").aopen(0.001)
    permit = None

    def got_trial() -> bool:
        nonlocal permit
        try:
            permit = a.acquire()
        except CircuitBreakerOpenError:
            return False
        return True

    await _until(got_trial)
    assert permit is not None
    assert permit.trial
    for _ in range(10):  # b never gets a second trial while a's is in flight
        with pytest.raises(CircuitBreakerOpenError):
            b.acquire()
        await asyncio.sleep(0.005)
    permit.record_success()
    assert state_of(a) is CircuitState.CLOSED
    await _until(lambda: state_of(b) is CircuitState.CLOSED)
    b.acquire().record_success()


async def test_a_released_trial_lets_another_worker_try(make_backend: MakeBackend) -> None:
    wa, wb = make_backend(**FAST), make_backend(**FAST)
    a = CircuitBreaker(1, 0.03, name="svc", backend=wa)
    b = CircuitBreaker(1, 30.0, name="svc", backend=wb)  # b re-opens for longer
    _fail(a)
    await _until(lambda: state_of(b) is not CircuitState.CLOSED)
    await asyncio.sleep(0.04)
    permits: dict[str, Any] = {}

    def trial(name: str, breaker: CircuitBreaker) -> Callable[[], bool]:
        def attempt() -> bool:
            try:
                permits[name] = breaker.acquire()
            except CircuitBreakerOpenError:
                return False
            return True

        return attempt

    await _until(trial("a", a))
    permits["a"].release()  # cancelled trial: the cluster permit is freed
    await _until(trial("b", b))
    _fail_permit = permits["b"]
    _fail_permit.record_failure(ServerError("still down", status_code=503))
    # a adopts b's 30 s (not its own 0.03 s), however late it refreshes
    await _until(lambda: state_of(a) is CircuitState.OPEN and a.retry_after > 15.0)


async def test_store_round_trips(make_backend: MakeBackend, prefix: str) -> None:
    # trial leases of 10 s: none runs out while the test runs, however slowly
    wa = make_backend(trial_lease=10.0, **FAST)
    wb = make_backend(trial_lease=10.0, **FAST)
    sa = wa.breaker_store("db", half_open_max_calls=2)
    sb = wb.breaker_store("db", half_open_max_calls=2)
    assert await sb.refresh() is None
    assert not await sb.atry_trial()  # closed: no trials
    await sa.aopen(30.0)  # long enough that a loaded machine still finds it open
    left = await sb.refresh()
    assert left is not None
    assert 29.0 < left <= 30.0
    assert sb.is_open
    assert not await sb.atry_trial()  # still open
    await sa.aopen(0.001)  # opened again, now for a moment: the later end wins
    async with asyncio.timeout(5):
        while not await sa.atry_trial():
            await asyncio.sleep(0.005)
    assert await sb.atry_trial()
    wc = make_backend(trial_lease=10.0, **FAST)
    sc = wc.breaker_store("db", half_open_max_calls=2)
    assert not await sc.atry_trial()  # both leases taken
    await sa.arelease_trial()
    assert await sc.atry_trial()
    # b and c never give theirs back: the leases expire by themselves
    for i in range(2):
        ttl = await wa.client.pttl(f"{prefix}cb:{{db}}:trial{i}")
        assert 0 < ttl <= 10_000
    await sb.aclose_circuit()
    assert await sa.refresh() is None
    assert sa.generation >= 2
    assert "RedisBreakerState('db'" in repr(sa)
    with pytest.raises(ValueError):
        sa.publish_open(-1)
    with pytest.raises(ConfigurationError):
        wa.breaker_store("bad", half_open_max_calls=0)


async def test_a_circuit_opened_during_an_outage_is_published_when_redis_is_back(
    redis_server: Any,
) -> None:
    # a stopped server refuses at once: the timeout only bounds a round trip on a loaded
    # machine, and is generous so that a slow answer is not taken for an outage
    opts: dict[str, Any] = {"timeout": 2.0, "retry_interval": 0.05, "breaker_refresh": 0.01}
    async with (
        RedisBackend(redis_server.url, **opts) as wa,
        RedisBackend(redis_server.url, **opts) as wb,
    ):
        a = CircuitBreaker(1, 5.0, name="svc", backend=wa)
        b = CircuitBreaker(1, 5.0, name="svc", backend=wb)
        assert state_of(b) is CircuitState.CLOSED
        redis_server.stop()
        _fail(a)  # opens here; Redis is down
        assert state_of(a) is CircuitState.OPEN
        with pytest.raises(CircuitBreakerOpenError):
            a.acquire()
        await asyncio.sleep(0.03)
        assert state_of(b) is CircuitState.CLOSED  # nobody could tell b
        redis_server.start()
        await _until(lambda: state_of(b) is CircuitState.OPEN)
