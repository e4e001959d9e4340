"""The learned limit shared through Redis: :class:`SharedAdaptiveLimiter`.

Every worker on the same name paces on one shared bucket (a
:class:`~headway.backends.redis.limiter.RedisLimiter`) at one rate: the rate the
workers learned together. Each worker runs the control law of
:class:`~headway.limits.AdaptiveLimiter` (advertised limit, probing, the user's ceiling)
on the headers and 429s it sees; what it learns is written to a Redis hash, and every
worker adopts the newest state there at most ``sync_every`` seconds later. So a 429 seen
by one worker slows all of them, and a limit one worker reads in a header is the limit
for all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from headway.backends._base import Limit
from headway.backends.redis.limiter import MAX_PAUSE, RedisLimiter
from headway.limits.adaptive import STATE_FIELDS, SharedLearningLimiter

if TYPE_CHECKING:
    from headway.backends.redis.backend import RedisBackend
    from headway.backends.redis.reservation import RedisReservation

__all__ = ["MAX_SHARED_PAUSE", "SharedAdaptiveLimiter"]

#: The longest pause one 429 may impose on every worker (seconds).
MAX_SHARED_PAUSE = MAX_PAUSE


class SharedAdaptiveLimiter(SharedLearningLimiter):
    """An :class:`~headway.limits.AdaptiveLimiter` whose bucket and learned rate live in Redis.

    Takes the arguments of :class:`~headway.limits.adaptive.SharedLearningLimiter`
    (``backend``, ``name``, ``rpm``, ``tpm``, ``start_rpm``, ``burst_seconds``,
    ``sync_every``, ``clock``, ``listeners``), with a
    :class:`~headway.backends.RedisBackend`. The learned state is a Redis hash.
    """

    max_shared_pause = MAX_SHARED_PAUSE
    backend: RedisBackend
    shared: RedisLimiter
    _version = -1  # the hash's version last published or adopted

    def _new_shared(self, rate: float, burst: float, tpm: float | None) -> RedisLimiter:
        limits = [Limit(rate, 60.0, burst=burst)]
        if tpm is not None:
            limits.append(Limit(tpm, 60.0, unit="tokens"))
        self._key = self.backend.key("learned", "{" + str(self.name) + "}")
        return RedisLimiter(self.backend, str(self.name), limits, clock=self._clock)

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> RedisReservation:
        """As :meth:`SharedLearningLimiter.reserve
        <headway.limits.adaptive.SharedLearningLimiter.reserve>`, typed for Redis."""
        reservation: RedisReservation = await super().reserve(requests, tokens, max_wait=max_wait)
        return reservation

    def _set_rate(self, rate: float, burst: float) -> None:
        self.shared.set_limit(0, Limit(rate, 60.0, burst=burst))

    async def sync_learned(self) -> None:
        """Publish what this worker learned, or adopt what the others did (one round trip)."""
        self._synced_at = self._clock.now()
        client = self.backend.client
        try:
            if self._dirty:
                self._dirty = False
                async with client.pipeline(transaction=True) as pipe:
                    pipe.hset(self._key, mapping=self.learned_state())  # type: ignore[arg-type]
                    pipe.hincrby(self._key, "version", 1)
                    pipe.pexpire(self._key, 3_600_000)
                    result = await pipe.execute()
                self._version = int(result[1])
                return
            raw = await client.hgetall(self._key)
        except (RedisError, OSError, TimeoutError):
            return  # Redis away: keep the local view; the shared bucket copes on its own
        state = {_text(k): _text(v) for k, v in raw.items()}
        version = int(state.get("version", "-1") or -1)
        if version > self._version and all(f in state for f in STATE_FIELDS):
            self._version = version
            self.adopt(state)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
