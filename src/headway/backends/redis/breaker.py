"""Circuit state shared through Redis: one worker opens the circuit, all see it open.

A :class:`RedisBreakerState` is the :class:`~headway.resilience.breaker.BreakerStore`
a ``CircuitBreaker(name=..., backend=redis_backend)`` consults. A breaker decides on
every call without waiting for Redis, so the store keeps a local view: writes (open,
close) apply to it at once and are sent to Redis right away by the backend's refresher
task; the refresher also re-reads the shared state every ``breaker_refresh`` seconds,
so a circuit opened elsewhere is seen here within that time.

Half-open trial calls are limited cluster-wide: ``half_open_max_calls`` lease keys, each
taken with ``SET NX PX`` (expiring after ``trial_lease`` s, so a worker that dies in a
trial never blocks the circuit). :meth:`RedisBreakerState.try_trial` answers from the
lease this worker holds; when it holds none it asks the refresher for one and says no
for now (the caller gets ``CircuitBreakerOpenError`` and comes back shortly).

The async methods (:meth:`~RedisBreakerState.refresh`, :meth:`~RedisBreakerState.aopen`,
:meth:`~RedisBreakerState.aclose_circuit`, :meth:`~RedisBreakerState.atry_trial`,
:meth:`~RedisBreakerState.arelease_trial`) do their round trip at once, for callers that
can await.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import headway.backends._scripts as _scripts
from headway.backends._shared import NOTHING, SharedCircuit

if TYPE_CHECKING:
    from headway.backends.redis.backend import RedisBackend

__all__ = ["RedisBreakerState"]


class RedisBreakerState(SharedCircuit):
    """The circuit state ``name``, shared by every worker's breaker of that name.

    Build it with :meth:`RedisBackend.breaker_store`. Times are seconds on the backend's
    clock; Redis measures the open period with its own ``TIME``.
    """

    backend: RedisBackend

    def __init__(self, backend: RedisBackend, name: str, *, half_open_max_calls: int = 1) -> None:
        super().__init__(backend, name, half_open_max_calls=half_open_max_calls)
        tag = "{" + name + "}"
        self._state_key = backend.key("cb", tag, "state")
        self._lease_keys = [backend.key("cb", tag, f"trial{i}") for i in range(half_open_max_calls)]
        self._all_keys = [self._state_key, *self._lease_keys]
        client = backend.client
        self._read = client.register_script(_scripts.BREAKER_READ)
        self._open = client.register_script(_scripts.BREAKER_OPEN)
        self._trial = client.register_script(_scripts.BREAKER_TRIAL)
        self._free = client.register_script(_scripts.BREAKER_RELEASE)

    # -- round trips ------------------------------------------------------------------

    async def refresh(self) -> float | None:
        """Read the shared state now; return :meth:`open_for`'s answer."""
        backend = self.backend
        if self._write != NOTHING:
            await self._push()
        res = await backend.eval_script(self._read, [self._state_key], [])
        self.generation = int(res[2])
        if self._write == NOTHING:  # no local write raced with the read
            if int(res[0]):
                self._open_until = backend.clock.now() + float(res[1]) / 1000.0
            else:
                self._open_until = None
                self._lease = None
                self._lease_busy = False
        return self.open_for()

    async def _push(self) -> None:
        backend = self.backend
        write = self._write
        self._write = NOTHING
        try:
            gen = await backend.eval_script(
                self._open,
                self._all_keys,
                [write * 1000.0, backend.config.trial_lease * 1000.0 + 60_000.0],
            )
        except BaseException:
            if self._write == NOTHING:
                self._write = write  # try again on the next round
            raise
        self.generation = int(gen)

    async def aopen(self, recovery_time: float) -> None:
        """Open the circuit for everyone now (one round trip)."""
        self.publish_open(recovery_time)
        await self._push()

    async def aclose_circuit(self) -> None:
        """Close the circuit for everyone now (one round trip)."""
        self.publish_closed()
        await self._push()

    async def atry_trial(self) -> bool:
        """Take a cluster-wide trial lease now; False if closed, still open or all taken."""
        if self._lease is not None:
            return self.try_trial()
        backend = self.backend
        res = await backend.eval_script(
            self._trial,
            self._all_keys,
            [self._token, int(backend.config.trial_lease * 1000.0)],
        )
        self._want_trial = False
        idx = int(res[0])
        if idx > 0:
            self._lease = idx
            self._lease_busy = True
            return True
        if idx < 0:
            left = float(res[1]) / 1000.0
            if left > 0:
                self._open_until = backend.clock.now() + left
        return False

    async def arelease_trial(self) -> None:
        """Give the trial lease back now."""
        self.release_trial()
        await self._flush_releases()

    async def _flush_releases(self) -> None:
        backend = self.backend
        while self._release:
            idx = self._release.pop()
            await backend.eval_script(self._free, [self._lease_keys[idx - 1]], [self._token])

    async def step(self, read: bool) -> None:
        """One round of the backend's refresher: writes, lease requests, then a read."""
        if self._write != NOTHING:
            await self._push()
        if self._release:
            await self._flush_releases()
        if self._want_trial and self._lease is None:
            got = await self.atry_trial()
            if got:
                self._lease_busy = False  # held for the next try_trial()
        if read:
            await self.refresh()
