"""Limiter and breaker state in a named Ray actor: one limit for a Ray cluster, no extra service.

``pip install 'headway[ray]'``. Every process of a Ray cluster (the driver, Ray Data's
actors, tasks) that builds a :class:`RayBackend` with the same ``name`` talks to one named
actor holding the limits and the circuit state, so all of them share one RPM/TPM and one
circuit — the same contract as :class:`~headway.backends.RedisBackend`, without Redis.

* **Batched reservations.** Callers of one process that arrive while a round trip to the
  actor is in flight go together in the next one (up to 256 per trip, in arrival order):
  under load an admission costs a fraction of a round trip, not one each.
* **The actor's clock.** Waits are computed on the actor's monotonic clock and applied on
  arrival, so a worker is late by at most the return half of a round trip, never early.
* **Same rule as Redis.** The actor runs the reservation rule of the Redis script
  (:mod:`headway.backends._model`): all-or-nothing over every limit, FIFO, settle,
  refund, cancel, shared pauses (a 429's Retry-After) and server-figure syncs.
* **A learned limit.** :class:`RayAdaptiveLimiter` learns the server's limit with the
  control law of :class:`~headway.limits.AdaptiveLimiter`; the actor keeps what the
  workers learned and paces every one of them at it.
* **One circuit.** :meth:`RayBackend.breaker_store` is the
  :class:`~headway.resilience.breaker.BreakerStore` of a ``CircuitBreaker(name=...,
  backend=ray_backend)``: an open circuit is seen by every process, half-open trial
  calls are leased cluster-wide.
* **Actor down.** A failed or slow round trip (``timeout``) makes the limiter fall back
  to a local limit at one over the number of workers seen live, probing the actor again
  every ``retry_interval`` seconds (``backend.unavailable`` / ``backend.recovered``
  events). A probe looks the named actor up again and creates it if it is gone (a
  non-detached actor dies with the process that created it). The local limit starts
  empty, as with Redis: it adds no burst to what the actor already admitted.

>>> from headway.backends.ray import SharedState
>>> state = SharedState()
>>> shift, now, workers, out = state.reserve("api", [(1.0, 2.0)], "w1", None, None, [], 0.0,
...                                          [([2.0], None), ([1.0], None)])
>>> workers, [(ok, round(wait, 3)) for ok, wait in out]
(1, [(True, 0.0), (True, 1.0)])
>>> state.stats()
{'trips': 1, 'reservations': 2, 'restarted': 0}
"""

from __future__ import annotations

from headway.backends._shared import BACKEND_RECOVERED, BACKEND_UNAVAILABLE
from headway.backends.ray.adaptive import RayAdaptiveLimiter
from headway.backends.ray.backend import RayBackend
from headway.backends.ray.breaker import RayBreakerState
from headway.backends.ray.limiter import MAX_SHARED_PAUSE, RayLimiter, RayReservation
from headway.backends.ray.state import SharedState

__all__ = [
    "BACKEND_RECOVERED",
    "BACKEND_UNAVAILABLE",
    "MAX_SHARED_PAUSE",
    "RayAdaptiveLimiter",
    "RayBackend",
    "RayBreakerState",
    "RayLimiter",
    "RayReservation",
    "SharedState",
]
