"""The learned limit shared through the named actor: :class:`RayAdaptiveLimiter`."""

from __future__ import annotations

import asyncio

from headway.backends._base import Limit
from headway.backends.ray.backend import RayBackend
from headway.backends.ray.limiter import MAX_SHARED_PAUSE, RayLimiter
from headway.limits.adaptive import SharedLearningLimiter

__all__ = ["RayAdaptiveLimiter"]


class RayAdaptiveLimiter(SharedLearningLimiter):
    """An :class:`~headway.limits.AdaptiveLimiter` whose bucket and learned rate live in
    the backend's actor: the cluster learns the server's limit together.

    The twin of :class:`~headway.backends.redis.adaptive.SharedAdaptiveLimiter`: every
    worker on the same name paces on one shared bucket (a :class:`RayLimiter`) at one
    rate. Each worker runs the control law of :class:`~headway.limits.AdaptiveLimiter`
    (advertised limit, probing, the user's ceiling) on the headers and 429s it sees;
    what it learns goes to the actor, and every worker adopts the newest state there at
    most ``sync_every`` seconds later. So a 429 seen by one worker slows all of them, and
    a limit one worker reads in a header is the limit for all.

    Takes the arguments of :class:`~headway.limits.adaptive.SharedLearningLimiter`, with
    a :class:`RayBackend`.
    """

    max_shared_pause = MAX_SHARED_PAUSE
    backend: RayBackend
    shared: RayLimiter
    _version = ""  # the actor's version of the state last published or adopted

    def _new_shared(self, rate: float, burst: float, tpm: float | None) -> RayLimiter:
        """A :class:`RayLimiter` whose rates the actor takes from this worker."""
        limits = [Limit(rate, 60.0, burst=burst)]
        if tpm is not None:
            limits.append(Limit(tpm, 60.0, unit="tokens"))
        shared = RayLimiter(self.backend, str(self.name), limits, clock=self._clock)
        shared.retune = True
        return shared

    def _set_rate(self, rate: float, burst: float) -> None:
        self.shared.set_limit(0, Limit(rate, 60.0, burst=burst))

    async def sync_learned(self) -> None:
        """Publish what this worker learned, or adopt what the others did (one round trip)."""
        self._synced_at = self._clock.now()
        publish = self.learned_state() if self._dirty else None
        self._dirty = False
        try:
            version, state = await self.backend.call("learned", self.name, publish)
        except asyncio.CancelledError:
            self._dirty = self._dirty or publish is not None
            raise
        except Exception:
            # The actor is away: keep the local view (published at the next sync); the
            # shared bucket falls back to its local share on its own.
            self._dirty = self._dirty or publish is not None
            return
        if publish is not None:
            self._version = version
        elif version != self._version and state is not None:
            self._version = version
            self.adopt(state)
