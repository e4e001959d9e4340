"""The learned limit shared through Redis: every worker on a name paces at one rate."""

from __future__ import annotations

import asyncio

import pytest

from headway import ManualClock
from headway.backends import RedisBackend
from headway.backends._base import Limit
from headway.backends.redis.adaptive import MAX_SHARED_PAUSE, SharedAdaptiveLimiter
from headway.backends.redis.limiter import MAX_PAUSE
from headway.errors import ConfigurationError, MaxWaitExceededError


async def test_learned_rate_is_shared_by_every_worker(make_backend: object) -> None:
    make = make_backend  # type: ignore[assignment]
    a_backend: RedisBackend = make()  # type: ignore[operator]
    b_backend: RedisBackend = make()  # type: ignore[operator]
    async with a_backend, b_backend:
        a = SharedAdaptiveLimiter(a_backend, "llm", rpm=6000, sync_every=0.0)
        b = SharedAdaptiveLimiter(b_backend, "llm", rpm=6000, sync_every=0.0)
        assert a.rate_in_force() == (60.0, "server")  # nothing known: probing starts low
        # worker A reads the server's limit in a header
        a.observe_headers(
            {"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "1199"}
        )
        assert a.rate_in_force() == (1200.0, "server")
        await (await a.reserve()).wait()  # publishes what A learned
        await (await b.reserve()).wait()  # B adopts it
        assert b.rate_in_force() == (1200.0, "server")
        assert b.learned_limits() == {"requests": 1200.0}
        assert b.shared.limits[0].rate == 1200.0
        # worker B is told the bucket is empty: both slow down
        b.on_rate_limited(0.5, empty=True)
        slowed = b.rate_in_force()
        assert slowed is not None
        assert slowed[0] < 1200.0
        await b.sync_learned()
        await a.sync_learned()
        assert a.rate_in_force() == slowed
        assert a.rate_limited_count == 0
        assert b.rate_limited_count == 1
        assert a.rate_in_force("tokens") is None


async def test_probing_is_shared_and_quiet_429s_change_nothing(backend: RedisBackend) -> None:
    a = SharedAdaptiveLimiter(backend, "probe", sync_every=0.0, tpm=10_000)
    assert a.reserve_nowait() is None
    assert a.learned_limits() == {}
    a.on_rate_limited(None, empty=False)
    assert a.rate_in_force() == (60.0, "server")
    r = await a.reserve(1, 10)
    await r.wait()
    a.on_success()  # not yet a second later: nothing to probe
    a.on_rate_limited(None, empty=True)  # no delay given: a call's worth of pause
    assert a.learned_limits() == {"requests": 30.0}
    await a.sync_learned()
    a.sync("requests", 0)
    assert "limited by server" in repr(a)


async def test_shared_pause_is_capped(backend: RedisBackend) -> None:
    a = SharedAdaptiveLimiter(backend, "cap")
    now = a.shared.clock.now()
    a.pause(86_400.0)  # Retry-After: 86400 must not stop every worker for a day
    assert a.shared._pause_until <= now + MAX_SHARED_PAUSE + 1.0
    limiter = backend.limiter("plain", rpm=60)
    limiter.pause(86_400.0)
    assert limiter._pause_until <= limiter.clock.now() + MAX_PAUSE + 1.0
    await limiter.flush()
    ttl = await backend.client.pttl(limiter._keys[0])
    assert 0 < ttl <= (MAX_PAUSE + 120.0) * 1000


async def test_set_limit_keeps_unit_and_period(backend: RedisBackend) -> None:
    limiter = backend.limiter("setlimit", rpm=60)
    limiter.set_limit(0, Limit(120, 60.0, burst=2))
    assert limiter.limits[0].rate == 120
    with pytest.raises(ConfigurationError, match="unit and the period"):
        limiter.set_limit(0, Limit(1, 1.0))
    with pytest.raises(ConfigurationError):
        SharedAdaptiveLimiter(backend, "bad", rpm=0)
    with pytest.raises(ConfigurationError):
        SharedAdaptiveLimiter(backend, "bad", burst_seconds=0)
    await asyncio.sleep(0)


async def test_an_advertised_limit_survives_a_probe_published_after_it(
    make_backend: object,
) -> None:
    # Virtual time (a manual clock): a learns 1200/min from a header and publishes it;
    # b, still probing (it has seen no header), publishes its probe after that. The
    # advertised limit wins: a keeps it and publishes it again, and b ends up at it too.
    make = make_backend  # type: ignore[assignment]
    clock = ManualClock(1000.0)
    a_backend: RedisBackend = make()  # type: ignore[operator]
    b_backend: RedisBackend = make()  # type: ignore[operator]
    async with a_backend, b_backend:
        a = SharedAdaptiveLimiter(a_backend, "late", rpm=6000, clock=clock)
        b = SharedAdaptiveLimiter(b_backend, "late", rpm=6000, clock=clock)
        a.observe_headers({"x-ratelimit-limit-requests": "1200"})
        await a.sync_learned()  # published: adv=1200
        clock.advance(1.0)
        b.on_success()
        clock.advance(0.2)
        b.on_success()  # a probe: b's state (no advertised limit) is to be published
        await b.sync_learned()  # published after a's
        assert b.rate_in_force() != (1200.0, "server")
        await a.sync_learned()  # a adopts b's newer state, but it has heard the server
        assert a.rate_in_force() == (1200.0, "server")
        await a.sync_learned()  # and publishes it again
        await b.sync_learned()
        assert b.rate_in_force() == (1200.0, "server")


async def test_a_call_is_booked_at_most_the_horizon_ahead(backend: RedisBackend) -> None:
    # At the 60/min start rate the horizon is two intervals (2 s): three calls are booked
    # (waits 0, 1, 2 s); a fourth is not booked 3 s ahead at a rate that may still rise,
    # it waits holding nothing (the manual clock's sleep) and asks again.
    clock = ManualClock(1000.0)
    a = SharedAdaptiveLimiter(backend, "horizon", clock=clock)
    waits = [(await a.reserve()).delay for _ in range(3)]
    assert waits == pytest.approx([0.0, 1.0, 2.0], abs=0.2)
    with pytest.raises(MaxWaitExceededError):
        await a.reserve(max_wait=2.5)  # the server's clock stands still meanwhile
    assert clock.sleeps
    assert all(0.0 < s <= a.sync_every for s in clock.sleeps)
    # a rate learned meanwhile applies to the call that waited
    a.observe_headers({"x-ratelimit-limit-requests": "1200"})
    assert (await a.reserve()).delay < 0.5
