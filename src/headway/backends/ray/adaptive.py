"""The learned limit shared through the named actor: :class:`RayAdaptiveLimiter`."""

from __future__ import annotations

import asyncio

from headway.backends._base import Limit
from headway.backends._learned import SharedRateLearner
from headway.backends.ray.backend import RayBackend
from headway.backends.ray.limiter import RayLimiter

__all__ = ["RayAdaptiveLimiter"]


class RayAdaptiveLimiter(SharedRateLearner):
    """An :class:`~headway.limits.AdaptiveLimiter` whose bucket and learned rate live in
    the backend's actor: the cluster learns the server's limit together.

    The twin of :class:`~headway.backends.redis.adaptive.SharedAdaptiveLimiter`: every
    worker on the same name paces on one shared bucket (a :class:`RayLimiter`) at one
    rate. Each worker runs the control law of :class:`~headway.limits.AdaptiveLimiter`
    (advertised limit, probing, the user's ceiling) on the headers and 429s it sees;
    what it learns goes to the actor, and every worker adopts the newest state there at
    most ``sync_every`` seconds later. So a 429 seen by one worker slows all of them, and
    a limit one worker reads in a header is the limit for all.

    Takes the arguments of :class:`~headway.backends._learned.SharedRateLearner`, with
    a :class:`RayBackend`.
    """

    backend: RayBackend
    shared: RayLimiter
    _version = ""  # the actor's version of the state last published or adopted

    def new_shared(self, limits: list[Limit]) -> RayLimiter:
        """A :class:`RayLimiter` whose rates the actor takes from this worker."""
        shared = RayLimiter(self.backend, self.name, limits, clock=self._clock)
        shared.retune = True
        return shared

    async def sync_learned(self) -> None:
        """Publish what this worker learned, or adopt what the others did (one round trip)."""
        self._synced_at = self._clock.now()
        publish = self._state() if self._dirty else None
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
            self._adopt(state)
