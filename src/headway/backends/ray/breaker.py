"""The circuit shared through the named actor: :class:`RayBreakerState`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headway.backends._shared import NOTHING, SharedCircuit

if TYPE_CHECKING:
    from headway.backends.ray.backend import RayBackend

__all__ = ["RayBreakerState"]


class RayBreakerState(SharedCircuit):
    """The circuit ``name`` shared through the backend's actor: a
    :class:`~headway.resilience.breaker.BreakerStore`.

    Build it with :meth:`RayBackend.breaker_store` (``CircuitBreaker(name=...,
    backend=ray_backend)`` does). A local view kept fresh by the backend's refresher
    (see :class:`~headway.backends._shared.SharedCircuit`); the actor leases the
    half-open trial permits cluster-wide.
    """

    backend: RayBackend

    async def refresh(self) -> float | None:
        """Read the shared state now (one round trip, with any pending write or lease
        request); return :meth:`open_for`'s answer."""
        await self.step(True)
        return self.open_for()

    async def step(self, read: bool) -> None:
        """One round trip: publish a write, take or release a lease, read the state."""
        write, want = self._write, self._want_trial and self._lease is None
        release = bool(self._release)
        if write == NOTHING and not want and not release and not read:
            return
        self._write = NOTHING
        self._release.clear()
        backend = self.backend
        try:
            left, gen, got = await backend.call(
                "breaker",
                self.name,
                write,
                self._token,
                want,
                release,
                self.half_open_max_calls,
                backend.trial_lease,
            )
        except BaseException:
            if self._write == NOTHING:
                self._write = write
            if release and not self._release:
                self._release.append(1)
            raise
        self.generation = gen
        if want:
            self._want_trial = False
            if got:
                self._lease, self._lease_busy = 1, False  # held for the next try_trial()
        if self._write == NOTHING:  # no local write raced with the trip
            if left is None:
                self._open_until = None
                self._lease, self._lease_busy = None, False
            else:
                self._open_until = backend.clock.now() + left
