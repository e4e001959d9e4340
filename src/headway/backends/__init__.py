"""Where limiter and breaker state lives: in this process (the default) or in Redis.

A limiter or breaker built without a backend keeps its state in memory, in one process.
When several workers — processes or machines — call one provider account, its limits are
global: give them one :class:`RedisBackend` and they share one limit.

>>> from headway.backends import Limit, llm_limits, shard_of
>>> Limit(rate=500, period=60).capacity
500.0
>>> [f"{x.unit}/{x.period:g}s" for x in llm_limits(rpm=500, tpm=90_000)]
['requests/60s', 'tokens/60s']
>>> shard_of("request-42", 4) == shard_of("request-42", 4)
True

Sharding a batch over ``N`` workers: each worker keeps the lines whose ``custom_id``
hashes to its shard (:func:`shard_of`, :class:`Shard`); see ``docs/distributed.md``.
"""

from __future__ import annotations

from headway.backends._base import (
    Backend,
    Limit,
    Shard,
    limits_of,
    llm_limits,
    shard_of,
)
from headway.backends.memory import MemoryBackend, MemoryBreakerState
from headway.backends.redis import (
    BACKEND_RECOVERED,
    BACKEND_UNAVAILABLE,
    RedisBackend,
    RedisBackendConfig,
    RedisBreakerState,
    RedisLimiter,
    RedisReservation,
)

__all__ = [
    "BACKEND_RECOVERED",
    "BACKEND_UNAVAILABLE",
    "Backend",
    "Limit",
    "MemoryBackend",
    "MemoryBreakerState",
    "RedisBackend",
    "RedisBackendConfig",
    "RedisBreakerState",
    "RedisLimiter",
    "RedisReservation",
    "Shard",
    "limits_of",
    "llm_limits",
    "shard_of",
]
