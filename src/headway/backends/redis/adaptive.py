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

from headway._clock import Clock
from headway.backends._base import Limit
from headway.backends.redis.limiter import MAX_PAUSE, RedisLimiter
from headway.events import EventListener
from headway.limits.adaptive import _START_RPM, STATE_FIELDS, SharedLearningLimiter

if TYPE_CHECKING:
    from headway.backends.redis.backend import RedisBackend
    from headway.backends.redis.reservation import RedisReservation

__all__ = ["MAX_SHARED_PAUSE", "SharedAdaptiveLimiter"]

#: The longest pause one 429 may impose on every worker (seconds).
MAX_SHARED_PAUSE = MAX_PAUSE


class SharedAdaptiveLimiter(SharedLearningLimiter):
    """An :class:`~headway.limits.AdaptiveLimiter` whose bucket and learned rate live in Redis.

    Args:
        backend: the :class:`~headway.backends.RedisBackend`.
        name: the limit's name; workers with the same name share bucket and rate.
        rpm, tpm: the user's ceilings (``None``: none). The token limit is shared only
            when ``tpm`` is given.
        start_rpm, burst_seconds: as for :class:`~headway.limits.AdaptiveLimiter`.
        sync_every: seconds between reads of the shared state.
        clock: where time is read and slept.
        listeners: called with a :class:`~headway.limits.adaptive.RateChanged` event on
            every change of the shared rate this worker makes or adopts.
    """

    max_shared_pause = MAX_SHARED_PAUSE
    shared: RedisLimiter

    def __init__(
        self,
        backend: RedisBackend,
        name: str,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        start_rpm: float = _START_RPM,
        burst_seconds: float = 1.0,
        sync_every: float = 0.5,
        clock: Clock | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> None:
        self._learn(
            rpm=rpm,
            tpm=None,  # the token ceiling is the shared bucket's own limit
            start_rpm=start_rpm,
            burst_seconds=burst_seconds,
            clock=clock if clock is not None else backend.clock,
            name=name,
            listeners=listeners,
        )
        self._share(sync_every)
        self.backend = backend
        limits = [Limit(self.requests.rate, 60.0, burst=self._burst(self.requests.rate))]
        if tpm is not None:
            limits.append(Limit(tpm, 60.0, unit="tokens"))
        self.shared = RedisLimiter(backend, name, limits, clock=self._clock)
        self._key = backend.key("learned", "{" + name + "}")
        self._version = -1

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> RedisReservation:
        """Sync the learned rate (every ``sync_every`` s), then reserve on the shared bucket."""
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
