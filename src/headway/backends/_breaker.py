"""Circuit state shared through Redis: one worker opens the circuit, all see it open.

A :class:`RedisBreakerState` is what a ``CircuitBreaker(backend=...)`` consults. A
breaker decides on every call without waiting for Redis, so the state keeps a local view:
writes (open, close) apply to it at once and are sent to Redis right away by the
backend's refresher task; the refresher also re-reads the shared state every
``breaker_refresh`` seconds, so a circuit opened elsewhere is seen here within that time.

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

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from headway._clock import Clock
from headway.backends._base import BreakerStateStore
from headway.errors import ConfigurationError
from headway.events import BREAKER_STATE_CHANGED, emit

if TYPE_CHECKING:
    from headway.backends.redis import RedisBackend

#: The store underneath a :class:`SharedCircuitState`.
StoreT = TypeVar("StoreT", bound=BreakerStateStore)

__all__ = ["RedisBreakerState", "SharedCircuitState"]

_NOTHING = -1.0  # no write pending
_CLOSE = 0.0  # pending write: close


class RedisBreakerState:
    """The circuit state ``name``, shared by every worker's breaker of that name.

    Build it with :meth:`RedisBackend.breaker_state`. Times are seconds on the backend's
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
        self.backend._ensure_refresher()
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
        self.backend._wake_refresher()

    def publish_closed(self) -> None:
        """Close the circuit for every worker (a trial call succeeded, or a reset)."""
        self._open_until = None
        self._write = _CLOSE
        self._drop_lease()
        self.backend._wake_refresher()

    def try_trial(self) -> bool:
        """Take this worker's half-open trial permit if it holds a cluster lease.

        Without one, ask the refresher to take a lease and return False for now.
        """
        if self._lease is not None and not self._lease_busy:
            self._lease_busy = True
            return True
        if self._lease is None:
            self._want_trial = True
            self.backend._wake_refresher()
        return False

    def release_trial(self) -> None:
        """Give the trial permit back (the trial call was cancelled or excluded)."""
        if self._lease is not None and self._lease_busy:
            self._release.append(self._lease)
            self._lease = None
            self._lease_busy = False
            self.backend._wake_refresher()

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
        res = await backend._eval(backend._br_read, [self._state_key], [])
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
            gen = await backend._eval(
                backend._br_open,
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
        res = await backend._eval(
            backend._br_trial,
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
            await backend._eval(backend._br_release, [self._lease_keys[idx - 1]], [self._token])

    async def _step(self, read: bool) -> None:
        """One refresher round for this state: writes, lease requests, then a read."""
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


async def run_refresher(backend: RedisBackend, wake: asyncio.Event) -> None:
    """The backend's one background task: keep every shared circuit state fresh."""
    from headway.backends.redis.backend import _Unavailable

    clock = backend.clock
    interval = backend.config.breaker_refresh
    next_read = clock.now()
    while not backend._closed:
        read = clock.now() >= next_read
        if read:
            next_read = clock.now() + interval
        wake.clear()
        if backend._may_call():
            try:
                for state in list(backend._breakers.values()):
                    await state._step(read)
            except _Unavailable:
                pass
            finally:
                backend._probing = False
        with contextlib.suppress(TimeoutError):
            delay = max(0.0, next_read - clock.now())
            if backend._down:
                delay = max(delay, backend._retry_at - clock.now())
            async with asyncio.timeout(delay):
                await wake.wait()


class SharedCircuitState(Generic[StoreT]):
    """The state object a ``CircuitBreaker(backend=...)`` keeps, backed by a shared store.

    ``CircuitBreaker`` keeps everything that changes in one state object with the
    attributes ``state``, ``generation``, ``open_until``, ``forced``,
    ``consecutive_failures``, ``trials_in_flight``, ``trial_successes`` and ``window``,
    and asks ``backend.breaker_state(name)`` for it. This is that object for a shared
    backend: failure counts stay per worker, while the circuit itself is shared —

    * a transition to open (or a forced open) is published to every worker, and a
      circuit opened elsewhere is adopted here (the breaker then rejects at once);
    * a close (trial calls succeeded, or ``reset()``) is published and adopted too;
    * half-open trial calls need a cluster-wide trial permit from the store, so at most
      ``half_open_max_calls`` run at a time across all workers.

    Built by :meth:`RedisBackend.breaker_state` and :meth:`MemoryBackend.breaker_state`
    (the same object for the same name); ``store`` is the shared state underneath.
    """

    #: How long a forced open (``force_open()`` without seconds) is published for.
    FORCED_OPEN_SECONDS = 86_400.0

    def __init__(self, store: StoreT, clock: Clock, name: str) -> None:
        from headway.resilience.breaker import CircuitState

        self._CS = CircuitState
        self.store: StoreT = store
        self.name = name
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._open_until = 0.0
        self.forced = False
        self.consecutive_failures = 0
        self.trial_successes = 0
        self.window: Any = None
        self._trials = 0
        self._last_trials = 0

    # -- state, merged with the shared view ------------------------------------------
    @property
    def state(self) -> Any:
        CS = self._CS
        shared = self.store.open_for()
        local = self._state
        if shared is None:
            if local is not CS.CLOSED:
                self._adopt(CS.CLOSED, "closed by another worker")
        elif local is CS.CLOSED or (local is CS.HALF_OPEN and shared > 0):
            self._adopt(CS.OPEN, "opened by another worker")
            self._open_until = self._clock.now() + shared
        elif local is CS.OPEN and not self.forced:
            self._open_until = self._clock.now() + shared
        return self._state

    @state.setter
    def state(self, value: Any) -> None:
        self._state = value
        if value is self._CS.CLOSED:
            self.store.publish_closed()

    @property
    def open_until(self) -> float:
        return self._open_until

    @open_until.setter
    def open_until(self, value: float) -> None:
        self._open_until = value
        if self._state is self._CS.OPEN:
            left = self.FORCED_OPEN_SECONDS if self.forced else value - self._clock.now()
            self.store.publish_open(max(left, 1e-3))

    @property
    def generation(self) -> int:
        return self._generation

    @generation.setter
    def generation(self, value: int) -> None:
        self._generation = value

    @property
    def trials_in_flight(self) -> int:
        n = self._trials
        if self._state is self._CS.HALF_OPEN:
            if n == 0 and not self.store.try_trial():
                n = self._max_trials()  # all trial permits are taken in the cluster
            elif n > 0:
                n = max(n, self._max_trials())  # one trial per worker at a time
        self._last_trials = n
        return n

    @trials_in_flight.setter
    def trials_in_flight(self, value: int) -> None:
        before = self._trials
        if value <= 0:
            self._trials = 0
        else:
            self._trials = max(0, before + value - self._last_trials)
        if self._state is self._CS.HALF_OPEN and before > 0 and self._trials == 0:
            self.store.release_trial()  # ended without a verdict (or one more to go)
        self._last_trials = self._trials

    def _max_trials(self) -> int:
        return int(getattr(self.store, "half_open_max_calls", 1))

    def _adopt(self, new: Any, reason: str) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._trials = 0
        self.trial_successes = 0
        self.forced = False
        if new is self._CS.CLOSED:
            self.consecutive_failures = 0
            if self.window is not None:
                self.window.clear()
        emit(
            BREAKER_STATE_CHANGED,
            source=self.name,
            level=logging.WARNING if new is self._CS.OPEN else logging.INFO,
            old=old,
            new=new,
            reason=reason,
        )

    def __repr__(self) -> str:
        return f"SharedCircuitState({self.name!r}, state={self._state!s}, store={self.store!r})"
