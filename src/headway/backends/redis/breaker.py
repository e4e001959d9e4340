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

import uuid
from typing import TYPE_CHECKING

import headway.backends._scripts as _scripts
from headway.errors import ConfigurationError

if TYPE_CHECKING:
    from headway.backends.redis.backend import RedisBackend

__all__ = ["RedisBreakerState"]

_NOTHING = -1.0  # no write pending
_CLOSE = 0.0  # pending write: close


class RedisBreakerState:
    """The circuit state ``name``, shared by every worker's breaker of that name.

    Build it with :meth:`RedisBackend.breaker_store`. Times are seconds on the backend's
    clock; Redis measures the open period with its own ``TIME``.
    """

    def __init__(self, backend: RedisBackend, name: str, *, half_open_max_calls: int = 1) -> None:
        if half_open_max_calls < 1:
            raise ConfigurationError("half_open_max_calls must be at least 1")
        self.backend = backend
        self.name = name
        self.half_open_max_calls = half_open_max_calls
        tag = "{" + name + "}"
        self._state_key = backend.key("cb", tag, "state")
        self._lease_keys = [backend.key("cb", tag, f"trial{i}") for i in range(half_open_max_calls)]
        self._all_keys = [self._state_key, *self._lease_keys]
        self._token = f"{backend.worker_id}:{uuid.uuid4().hex[:8]}"
        client = backend.client
        self._read = client.register_script(_scripts.BREAKER_READ)
        self._open = client.register_script(_scripts.BREAKER_OPEN)
        self._trial = client.register_script(_scripts.BREAKER_TRIAL)
        self._free = client.register_script(_scripts.BREAKER_RELEASE)
        self._open_until: float | None = None  # local view, backend clock
        self._write = _NOTHING  # recovery seconds to publish (> 0 open, 0 close)
        self._want_trial = False
        self._lease: int | None = None  # lease index held (1-based)
        self._lease_busy = False
        self._release: list[int] = []
        #: Generation of the shared state last seen (bumped by every open/close).
        self.generation = 0

    # -- the sync view a breaker consults ---------------------------------------------

    def open_for(self) -> float | None:
        """Seconds the circuit stays open (``<= 0``: trial calls may go); None: closed."""
        self.backend.ensure_refresher()
        if self._open_until is None:
            return None
        return self._open_until - self.backend.clock.now()

    @property
    def is_open(self) -> bool:
        """Whether the shared circuit is open or half-open (as last seen)."""
        return self._open_until is not None

    def publish_open(self, recovery_time: float) -> None:
        """Open the circuit for every worker for ``recovery_time`` seconds."""
        if recovery_time <= 0:
            raise ValueError("recovery_time must be > 0")
        self._open_until = self.backend.clock.now() + recovery_time
        self._write = recovery_time
        self._drop_lease()
        self.backend.wake_refresher()

    def publish_closed(self) -> None:
        """Close the circuit for every worker (a trial call succeeded, or a reset)."""
        self._open_until = None
        self._write = _CLOSE
        self._drop_lease()
        self.backend.wake_refresher()

    def try_trial(self) -> bool:
        """Take this worker's half-open trial permit if it holds a cluster lease.

        Without one, ask the refresher to take a lease and return False for now.
        """
        if self._lease is not None and not self._lease_busy:
            self._lease_busy = True
            return True
        if self._lease is None:
            self._want_trial = True
            self.backend.wake_refresher()
        return False

    def release_trial(self) -> None:
        """Give the trial permit back (the trial call was cancelled or excluded)."""
        if self._lease is not None and self._lease_busy:
            self._release.append(self._lease)
            self._lease = None
            self._lease_busy = False
            self.backend.wake_refresher()

    def _drop_lease(self) -> None:
        # The open/close script frees every lease in Redis.
        self._lease = None
        self._lease_busy = False
        self._want_trial = False
        self._release.clear()

    # -- round trips ------------------------------------------------------------------

    async def refresh(self) -> float | None:
        """Read the shared state now; return :meth:`open_for`'s answer."""
        backend = self.backend
        if self._write != _NOTHING:
            await self._push()
        res = await backend.eval_script(self._read, [self._state_key], [])
        self.generation = int(res[2])
        if self._write == _NOTHING:  # no local write raced with the read
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
        self._write = _NOTHING
        try:
            gen = await backend.eval_script(
                self._open,
                self._all_keys,
                [write * 1000.0, backend.config.trial_lease * 1000.0 + 60_000.0],
            )
        except BaseException:
            if self._write == _NOTHING:
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
        if self._write != _NOTHING:
            await self._push()
        if self._release:
            await self._flush_releases()
        if self._want_trial and self._lease is None:
            got = await self.atry_trial()
            if got:
                self._lease_busy = False  # held for the next try_trial()
        if read:
            await self.refresh()

    def __repr__(self) -> str:
        return f"RedisBreakerState({self.name!r}, open_for={self.open_for()!r})"
