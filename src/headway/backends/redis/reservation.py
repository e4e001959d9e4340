"""What a shared limiter hands out: :class:`RedisReservation`."""

from __future__ import annotations

from headway.backends._shared import SharedReservation

__all__ = ["RedisReservation"]


class RedisReservation(SharedReservation):
    """What :meth:`RedisLimiter.reserve` took: a ``headway.limits.Reservation``.

    Attributes:
        delay: seconds the caller must wait before proceeding.
        requests, tokens: what is reserved (``tokens`` changes with :meth:`settle`).
        shared: False when taken from the local fallback during a Redis outage.
    """

    __slots__ = ()
