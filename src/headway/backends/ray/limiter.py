"""The limiter whose limits the named actor holds: :class:`RayLimiter`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headway.backends._base import Limit
from headway.backends._shared import Request, SharedLimiter, SharedReservation
from headway.errors import ConfigurationError

#: The longest pause one 429 may impose on every worker (seconds).
MAX_SHARED_PAUSE = 120.0

if TYPE_CHECKING:
    from headway.backends.ray.backend import RayBackend

__all__ = ["MAX_SHARED_PAUSE", "RayLimiter", "RayReservation"]


class RayReservation(SharedReservation):
    """What :meth:`RayLimiter.reserve` took: a ``headway.limits.Reservation``.

    ``shared`` is False when it was taken from the local fallback (actor away).
    """

    __slots__ = ()


class RayLimiter(SharedLimiter):
    """Several rate limits held by the backend's actor, reserved atomically.

    Satisfies the ``headway.limits.Limiter`` protocol (``reserve``, ``pause_until``,
    ``pause``, ``sync``), so it goes wherever a limiter goes (a ``Policy``). Build it with
    :meth:`RayBackend.limiter`. A pause is at most ``MAX_SHARED_PAUSE`` (120 s) long.
    """

    reservation = RayReservation
    max_pause = MAX_SHARED_PAUSE
    backend: RayBackend

    def setup(self) -> None:
        """The rates sent to the actor (per second, capacity)."""
        self._specs = [(x.per_second, x.capacity) for x in self.limits]
        #: Whether :meth:`set_limit` changed a rate: the actor adopts this worker's rates.
        self.retune = False

    async def send(self, batch: list[Request]) -> list[Any]:
        """One ``reserve`` round trip to the actor (with settles, caps, cancels, a pause)."""
        backend = self.backend
        pause = self.take_pause(self.clock.now())
        adjusts, caps, cancels = self.take_settles()
        try:
            shift, actor_now, workers, out = await backend.call(
                "reserve",
                self.name,
                self._specs,
                backend.worker_id,
                adjusts if any(adjusts) else None,
                caps if any(c is not None for c in caps) else None,
                cancels,
                pause,
                [(r.amounts, r.max_wait) for r in batch],
                self.retune,
                self.round_trips > 0,  # reserved here before: a missing name was lost
            )
        except BaseException as exc:
            # not applied (or unknown): keep the settles for the next trip
            self.restore_settles(adjusts, cancels)
            if isinstance(exc, ValueError):  # the actor holds other limits under this name
                return [
                    ConfigurationError(
                        f"limiter {self.name!r}: another worker uses other limits under this "
                        "name; one name, one set of limits"
                    )
                    for _ in batch
                ]
            raise
        backend.workers = int(workers)
        self.saw_shift(shift, bool(pause))
        return [
            self.answer(r, ok, wait, actor_now + wait)
            for r, (ok, wait) in zip(batch, out, strict=True)
        ]

    def limit_changed(self, index: int, limit: Limit) -> None:
        """The rates sent to the actor: it adopts them (a learned rate)."""
        self._specs[index] = (limit.per_second, limit.capacity)
        self.retune = True
