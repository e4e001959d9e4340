"""Limits and circuit state shared by every worker through Redis (extra ``headway[redis]``).

One :class:`RedisBackend` per process, pointed at the Redis all workers share::

    backend = RedisBackend("redis://redis.internal:6379/0")
    limiter = backend.limiter("openai", rpm=500, tpm=90_000)
    reservation = await limiter.reserve(requests=1, tokens=1200)
    await asyncio.sleep(reservation.delay)      # or: async with limiter.slot(1, 1200): ...
    ...
    reservation.settle(actual_tokens)           # refund or charge the difference

How it works: every reservation is one Lua script, one round trip, atomic in Redis, timed
by the server's ``TIME`` (worker clocks never matter). All of a limiter's limits —
requests and tokens, per minute and per day — are reserved in the same script, all or
nothing. Keys expire by themselves once their bucket would be full again. Settles,
refunds, pauses and syncs from rate-limit headers ride along with the next reservation
(or :meth:`RedisLimiter.flush`), so they cost no extra round trip.

When Redis is unreachable every call still returns within ``timeout``: with
``on_backend_error="local"`` (the default) the limiter keeps a local limit at a share of
the global rate (``local_share``; ``"auto"`` = one over the number of live workers seen
before the outage), ``"fail"`` raises :class:`~headway.errors.BackendUnavailableError`,
``"allow"`` lets calls through. The outage is logged once; a call probes Redis again
every ``retry_interval`` seconds and the shared state resumes as soon as it answers.
"""

from __future__ import annotations

from headway.backends._shared import BACKEND_RECOVERED, BACKEND_UNAVAILABLE
from headway.backends.redis.backend import OnBackendError, RedisBackend, RedisBackendConfig
from headway.backends.redis.breaker import RedisBreakerState
from headway.backends.redis.limiter import RedisLimiter
from headway.backends.redis.reservation import RedisReservation

__all__ = [
    "BACKEND_RECOVERED",
    "BACKEND_UNAVAILABLE",
    "OnBackendError",
    "RedisBackend",
    "RedisBackendConfig",
    "RedisBreakerState",
    "RedisLimiter",
    "RedisReservation",
]
