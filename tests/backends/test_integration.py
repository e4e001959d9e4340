"""A Policy with a shared limiter and a shared breaker: the pieces fit without glue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from headway import CircuitBreakerOpenError, RateLimitError, ServerError
from headway.backends import RedisBackend
from headway.limits import Limiter
from headway.resilience.breaker import CircuitBreaker, CircuitState
from headway.resilience.policy import Policy
from headway.resilience.retry import RetryPolicy

pytestmark = pytest.mark.integration

MakeBackend = Callable[..., RedisBackend]


def state_of(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state


async def test_a_policy_paces_through_the_shared_limiter_and_settles(
    backend: RedisBackend,
) -> None:
    # one a second after a burst of 2: the round trips, however slow, refill little
    limiter = backend.limiter("llm", rps=1, burst=2, tpm=6000)
    t0 = time.monotonic()
    assert isinstance(limiter, Limiter)
    policy = Policy(retry=None, limiter=limiter)
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    async with asyncio.timeout(5):  # a bound, not a wait: neither call waits
        assert await policy.execute(call, tokens=10) == "ok"
        assert await policy.execute(call, tokens=10) == "ok"
    assert calls == 2
    nxt = await limiter.reserve()
    # the policy's two calls took the burst: the next turn is 1 s after the first call
    assert 1.0 - (time.monotonic() - t0) - 0.002 <= nxt.delay <= 1.0 + 0.002


async def test_a_429_pauses_every_worker(make_backend: MakeBackend) -> None:
    a = make_backend().limiter("api", rps=100, burst=10)
    b = make_backend().limiter("api", rps=100, burst=10)
    policy = Policy(retry=RetryPolicy(max_retries=0), limiter=a)

    async def limited() -> None:
        raise RateLimitError("slow down", status_code=429, retry_after=5.0)

    with pytest.raises(RateLimitError):
        await policy.execute(limited)
    await a.flush()
    res = await b.reserve()
    assert res.delay >= 3.0  # b, another worker, is held back too (slack for a loaded machine)


async def test_a_breaker_opened_by_one_policy_rejects_in_another_worker(
    make_backend: MakeBackend,
) -> None:
    wa, wb = make_backend(breaker_refresh=0.01), make_backend(breaker_refresh=0.01)
    pa = Policy(retry=None, breaker=CircuitBreaker(1, 5.0, name="svc", backend=wa))
    breaker_b = CircuitBreaker(1, 5.0, name="svc", backend=wb)
    pb = Policy(retry=None, breaker=breaker_b)
    assert state_of(breaker_b) is CircuitState.CLOSED

    async def down() -> None:
        raise ServerError("down", status_code=503)

    with pytest.raises(ServerError):
        await pa.execute(down)

    async def ok() -> str:
        return "ok"

    async with asyncio.timeout(5):  # a bound, not a wait
        while state_of(breaker_b) is CircuitState.CLOSED:
            await asyncio.sleep(0.005)
    with pytest.raises(CircuitBreakerOpenError):
        await pb.execute(ok)
