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
  non-detached actor dies with the process that created it). A restarted or re-created
  actor starts with full buckets.

>>> from headway.backends.ray import SharedState
>>> state = SharedState()
>>> shift, now, workers, out = state.reserve("api", [(1.0, 2.0)], "w1", None, None, [], 0.0,
...                                          [([2.0], None), ([1.0], None)])
>>> workers, [(ok, round(wait, 3)) for ok, wait in out]
(1, [(True, 0.0), (True, 1.0)])
>>> state.stats()
{'trips': 1, 'reservations': 2}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headway import events
from headway._clock import Clock, resolve_clock
from headway.backends._base import Limit, llm_limits
from headway.backends._model import Bucket, LocalBuckets, reserve_batch
from headway.errors import ConfigurationError, MaxWaitExceededError, RequestTooLargeError
from headway.events import LIMITER_PAUSED, LIMITER_WAIT, EventListener, emit, enabled
from headway.limits import RATE_LIMITED_PAUSE, Limiter, Reservation
from headway.limits.adaptive import (
    _START_RPM,
    RATE_CHANGED,
    RateChanged,
    RateControl,
    Source,
    _number,
)
from headway.resilience.breaker import BreakerBackend, BreakerStore

__all__ = [
    "MAX_SHARED_PAUSE",
    "RayAdaptiveLimiter",
    "RayBackend",
    "RayBreakerState",
    "RayLimiter",
    "RayReservation",
    "SharedState",
]

logger = logging.getLogger("headway")

#: Event kinds, the same as the Redis backend's.
BACKEND_UNAVAILABLE = "backend.unavailable"
BACKEND_RECOVERED = "backend.recovered"

_MAX_BATCH = 256
_LEAD: Any = object()
_SHARED, _LOCAL, _CANCELLED = 0, 1, -1
_PRESENCE = 10.0  # seconds a worker counts as live after its last round trip
#: The longest pause one 429 may impose on every worker (seconds), as with Redis.
MAX_SHARED_PAUSE = 120.0


class SharedState:
    """The state the named actor holds (a plain class: Ray wraps it, tests call it directly).

    ``now``: the clock (the actor's ``time.monotonic``; tests pass a virtual one).

    Limits are kept per name as :class:`~headway.backends._model.Bucket` lists, on the
    actor's monotonic clock (seconds). Methods run one at a time (the actor is serial),
    which is what makes a reservation atomic.
    """

    def __init__(self, now: Any = time.monotonic) -> None:
        self._now = now
        self._limits: dict[str, tuple[tuple[tuple[float, float], ...], list[Bucket]]] = {}
        self._clients: dict[str, float] = {}
        self._breakers: dict[str, _Circuit] = {}
        self._learned: dict[str, tuple[int, dict[str, str]]] = {}
        self._epoch = uuid.uuid4().hex[:12]
        self._trips = 0
        self._reserved = 0

    def stats(self) -> dict[str, int]:
        """Round trips served and reservations made in them (batching: several per trip)."""
        return {"trips": self._trips, "reservations": self._reserved}

    def reserve(
        self,
        name: str,
        specs: Sequence[tuple[float, float]],
        client: str,
        adjusts: Sequence[float] | None,
        caps: Sequence[float | None] | None,
        cancels: Sequence[tuple[float, Sequence[float]]],
        pause: float,
        callers: Sequence[tuple[Sequence[float], float | None]],
        retune: bool = False,
    ) -> tuple[float, float, int, list[tuple[bool, float]]]:
        """Apply settles/caps/cancels/pause, then reserve for ``callers`` in order.

        With ``retune`` the limits' rates and capacities become ``specs`` (a learned
        rate: the levels stay); without it other ``specs`` than the name's are refused.
        Returns ``(total pause shift, actor now, live workers, [(admitted, wait)])``.
        """
        now = self._now()
        key = tuple((float(r), float(c)) for r, c in specs)
        entry = self._limits.get(name)
        if entry is None:
            entry = (key, [Bucket(rate=r, capacity=c) for r, c in key])
            self._limits[name] = entry
        elif entry[0] != key:
            if not retune or len(key) != len(entry[0]):
                raise ValueError(
                    f"limiter {name!r} already exists with other limits; "
                    "one name, one set of limits"
                )
            for b, (rate, cap) in zip(entry[1], key, strict=True):
                b.rate, b.capacity = rate, cap
            entry = (key, entry[1])
            self._limits[name] = entry
        self._clients[client] = now
        if len(self._clients) > 1:
            for c, seen in list(self._clients.items()):
                if now - seen > _PRESENCE:
                    del self._clients[c]
        buckets = entry[1]
        self._trips += 1
        self._reserved += sum(1 for amounts, _ in callers if any(amounts))
        out = reserve_batch(
            buckets, now, callers, adjusts=adjusts, level_caps=caps, cancels=cancels, pause=pause
        )
        return max(b.shift for b in buckets), now, len(self._clients), out

    def learned(self, name: str, state: dict[str, str] | None) -> tuple[str, dict[str, str] | None]:
        """The rate the workers learned for ``name``: store ``state`` (a new version) if
        given; return ``(version, state)`` (``("", None)``: nothing learned yet).

        A version names this actor too (``"<actor id>:<n>"``): after a restart the
        versions differ from every one seen before.
        """
        n, held = self._learned.get(name, (0, None))
        if state is not None:
            n, held = n + 1, dict(state)
            self._learned[name] = (n, held)
        return (f"{self._epoch}:{n}" if n else ""), held

    def breaker(
        self,
        name: str,
        write: float,
        token: str,
        want_trial: bool,
        release: bool,
        max_trials: int,
        lease: float,
    ) -> tuple[float | None, int, bool]:
        """One breaker round: a write (``> 0`` open for that long, ``0`` close, ``< 0``
        none), a trial request or release; returns ``(open_for, generation, got_trial)``."""
        now = self._now()
        c = self._breakers.get(name)
        if c is None:
            c = self._breakers[name] = _Circuit()
        if write >= 0:
            c.open_until = now + write if write > 0 else None
            c.generation += 1
            c.trials.clear()
        if release:
            c.trials.pop(token, None)
        for t, until in list(c.trials.items()):
            if until <= now:
                del c.trials[t]
        got = False
        if (
            want_trial
            and c.open_until is not None
            and c.open_until <= now
            and (token in c.trials or len(c.trials) < max_trials)
        ):
            c.trials[token] = now + lease
            got = True
        left = None if c.open_until is None else c.open_until - now
        return left, c.generation, got


@dataclass(slots=True)
class _Circuit:
    open_until: float | None = None
    generation: int = 0
    trials: dict[str, float] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.trials = {}


@dataclass(slots=True)
class _Request:
    amounts: list[float]
    max_wait: float | None
    requests: float
    tokens: float
    future: asyncio.Future[Any] | None = None


def _outcome(got: Any) -> RayReservation:
    if isinstance(got, BaseException):
        raise got
    return got  # type: ignore[no-any-return]


class RayBackend:
    """Named limiters and circuit states held by one named Ray actor.

    Args:
        name: the actor's name; every process using the same name (and ``namespace``)
            shares its limits and circuits.
        namespace: the Ray namespace of the actor.
        detached: create the actor detached (it outlives the job that created it; kill
            it with :meth:`kill`). By default it lives as long as the process that
            created it first: create it on the driver (``headway.ray.run`` does).
        timeout: seconds a round trip to the actor may take before the local fallback.
        retry_interval: seconds between probes of an actor that failed.
        breaker_refresh: seconds between reads of the shared circuit state.
        trial_lease: seconds a half-open trial permit is held at most.
        clock: the clock waits are slept on (``headway.testing`` swaps it).
        actor: an actor handle to use instead of the named one (anything whose methods
            have ``.remote(...)`` returning an awaitable: tests pass a stand-in).

    ``ray`` must be initialised (``ray.init()``) or the code must run inside Ray.
    """

    def __init__(
        self,
        name: str = "headway-limits",
        *,
        namespace: str = "headway",
        detached: bool = False,
        timeout: float = 2.0,
        retry_interval: float = 1.0,
        breaker_refresh: float = 0.25,
        trial_lease: float = 30.0,
        clock: Clock | None = None,
        actor: Any = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.clock = resolve_clock(clock)
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.breaker_refresh = breaker_refresh
        self.trial_lease = trial_lease
        self.worker_id = f"{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.workers = 1
        self.outages = 0
        self._down = False
        self._down_since = 0.0
        self._retry_at = -math.inf
        self._options: dict[str, Any] | None = None
        if actor is None:
            self._options = {
                "name": name,
                "namespace": namespace,
                "get_if_exists": True,
                "num_cpus": 0,
                "max_restarts": -1,
            }
            if detached:
                self._options["lifetime"] = "detached"
            actor = self._named_actor()
        self.actor: Any = actor
        self._limiters: dict[str, RayLimiter] = {}
        self._breakers: dict[str, RayBreakerState] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False
        self._wake: asyncio.Event | None = None

    # -- the Backend protocol ---------------------------------------------------------

    def limiter(
        self,
        name: str,
        *,
        limits: Iterable[Limit] = (),
        rpm: float | None = None,
        tpm: float | None = None,
        rpd: float | None = None,
        tpd: float | None = None,
        rps: float | None = None,
        burst: float | None = None,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> RayLimiter:
        """The limiter ``name``, shared by every process using this actor.

        >>> # every worker: backend.limiter("openai", rpm=500, tpm=200_000)
        """
        specs = tuple(limits)
        if any(x is not None for x in (rpm, tpm, rpd, tpd, rps)):
            specs += llm_limits(rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd, rps=rps, burst=burst)
        existing = self._limiters.get(name)
        if existing is not None:
            if specs and specs != existing.limits:
                raise ConfigurationError(
                    f"limiter {name!r} already exists with limits {existing.limits}; "
                    "one name, one set of limits"
                )
            return existing
        if not specs:
            raise ConfigurationError(f"limiter {name!r} needs at least one Limit")
        lim = RayLimiter(self, name, specs, max_wait=max_wait, clock=clock)
        self._limiters[name] = lim
        return lim

    def breaker_store(self, name: str, *, half_open_max_calls: int = 1) -> RayBreakerState:
        """The store of the circuit ``name``, shared by every process's breakers of that name.

        ``CircuitBreaker(name=..., backend=backend)`` calls this; the same object for the
        same name. Give ``half_open_max_calls`` (the cluster-wide number of trial calls)
        by calling it once yourself before building the breakers, if it is not 1.
        """
        store = self._breakers.get(name)
        if store is None:
            store = RayBreakerState(self, name, half_open_max_calls=half_open_max_calls)
            self._breakers[name] = store
        return store

    async def aclose(self) -> None:
        """Stop the breaker refresher for good (idempotent); the actor stays for the others."""
        self._closed = True
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> RayBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def kill(self) -> None:
        """Kill the actor (its state is lost): at the end of a job, for a detached one."""
        with contextlib.suppress(Exception):
            import ray

            if isinstance(self.actor, ray.actor.ActorHandle):
                ray.kill(self.actor)

    # -- outage bookkeeping -----------------------------------------------------------

    def _may_call(self) -> bool:
        return not self._down or self.clock.now() >= self._retry_at

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = self.clock.now() + self.retry_interval
        if self._down:
            return
        self._down = True
        self._down_since = self.clock.now()
        self.outages += 1
        emit(
            BACKEND_UNAVAILABLE,
            source=f"ray:{self.name}",
            level=logging.WARNING,
            error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            retry_interval=self.retry_interval,
        )

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            emit(
                BACKEND_RECOVERED,
                source=f"ray:{self.name}",
                level=logging.INFO,
                outage=round(self.clock.now() - self._down_since, 3),
            )

    def _named_actor(self) -> Any:
        import ray

        assert self._options is not None
        return ray.remote(SharedState).options(**self._options).remote()

    async def _call(self, method: str, *args: Any) -> Any:
        """One round trip to the actor's ``method``, bounded by ``timeout``."""
        if self._down and self._options is not None:
            # A probe after a failure: the actor may be gone for good (a non-detached
            # actor dies with the process that created it); look it up or create it anew.
            self.actor = self._named_actor()
        async with asyncio.timeout(self.timeout):
            return await getattr(self.actor, method).remote(*args)

    # -- breaker refresher ------------------------------------------------------------

    def ensure_refresher(self) -> None:
        """Start the task that keeps shared circuit states fresh (once, in a loop)."""
        if self._closed or (self._refresher is not None and not self._refresher.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake = asyncio.Event()
        self._refresher = loop.create_task(self._refresh_loop(), name="headway-ray-breakers")

    def wake_refresher(self) -> None:
        """A shared circuit state has something to send: run the refresher now."""
        self.ensure_refresher()
        if self._wake is not None:
            self._wake.set()

    async def _refresh_loop(self) -> None:
        """The refresher task: one round per ``breaker_refresh`` s (or when woken)."""
        wake = self._wake
        assert wake is not None
        clock = self.clock
        next_read = clock.now()
        while not self._closed:
            read = clock.now() >= next_read
            if read:
                next_read = clock.now() + self.breaker_refresh
            wake.clear()
            if self._may_call():
                for store in list(self._breakers.values()):
                    try:
                        await store.step(read)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        self._failed(exc)
                        break  # the actor is away: probe again after retry_interval
            delay = max(0.0, next_read - clock.now())
            if self._down:
                delay = max(delay, self._retry_at - clock.now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()

    def __repr__(self) -> str:
        return f"RayBackend({self.name!r}, namespace={self.namespace!r})"


class RayReservation(Reservation):
    """What :meth:`RayLimiter.reserve` took: a ``headway.limits.Reservation``."""

    __slots__ = ("_at", "_lim", "_mark", "_source", "_state")

    def __init__(
        self,
        limiter: RayLimiter,
        source: int,
        state: LocalBuckets | None,
        delay: float,
        requests: float,
        tokens: float,
        at: float = 0.0,
    ) -> None:
        self._at = at  # admission time: actor seconds (shared) or clock seconds (local)
        self._mark = limiter._shift
        self._lim = limiter
        self._source = source
        self._state = state
        self.delay = delay
        self.requests = requests
        self.tokens = tokens

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` gave the reservation back."""
        return self._source < 0

    @property
    def shared(self) -> bool:
        """Whether it was taken from the shared (actor) limits."""
        return self._source == _SHARED

    def settle(self, tokens: float) -> None:
        """The call used ``tokens``: refund or charge the difference with the estimate."""
        if not tokens >= 0.0 or tokens == math.inf:
            raise ValueError(f"settled tokens must be a finite number >= 0, got {tokens!r}")
        if self._source < 0:
            return
        diff = float(tokens) - self.tokens
        if diff:
            self.tokens = float(tokens)
            self._lim._settle(self._source, self._state, -diff)

    def cancel(self) -> None:
        """Give everything back (idempotent), where it is still last in line."""
        if self._source < 0:
            return
        source, self._source = self._source, _CANCELLED
        self._lim._cancel(source, self._state, self._at, self.requests, self.tokens)

    async def wait(self) -> None:
        """Sleep until admitted (longer if the limiter is paused meanwhile); cancel if cancelled."""
        lim = self._lim
        if self._source < 0 or (self.delay <= 0.0 and lim._shift == self._mark):
            return
        try:
            mark = self._mark
            await lim.clock.sleep(self.delay)
            while lim._shift > mark:
                extra, mark = lim._shift - mark, lim._shift
                await lim.clock.sleep(extra)
        except BaseException:
            self.cancel()
            raise

    def __repr__(self) -> str:
        return (
            f"RayReservation(delay={self.delay:.6f}, requests={self.requests:g}, "
            f"tokens={self.tokens:g}, shared={self.shared})"
        )


class RayLimiter:
    """Several rate limits held by the backend's actor, reserved atomically.

    Satisfies the ``headway.limits.Limiter`` protocol (``reserve``, ``pause_until``,
    ``pause``, ``sync``), so it goes wherever a limiter goes (a ``Policy``). Build it with
    :meth:`RayBackend.limiter`.
    """

    def __init__(
        self,
        backend: RayBackend,
        name: str,
        limits: Iterable[Limit],
        *,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        self.limits = tuple(limits)
        seen = {(x.unit, x.period) for x in self.limits}
        if len(seen) != len(self.limits):
            raise ConfigurationError(
                f"limiter {name!r}: two limits with the same unit and period; keep one"
            )
        self.max_wait = max_wait
        self.clock = resolve_clock(clock if clock is not None else backend.clock)
        self._specs = [(x.per_second, x.capacity) for x in self.limits]
        self._tokens = tuple(x.unit == "tokens" for x in self.limits)
        n = len(self.limits)
        self._pending = [0.0] * n
        self._caps: list[float | None] = [None] * n
        self._cancels: list[tuple[float, list[float]]] = []
        self._pause_until = -math.inf
        self._pause_sent = -math.inf
        self._shift = 0.0
        self._seen_shift: float | None = None
        self._own_shift = 0.0
        self._busy = False
        self._queue: deque[_Request] = deque()
        self._local: LocalBuckets | None = None
        self._local_outage = -1
        #: Round trips made to the actor (for the curious and the tests).
        self.round_trips = 0
        #: Whether :meth:`set_limit` changed a rate: the actor adopts this worker's rates.
        self.retune = False

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> RayReservation:
        """Reserve ``requests`` and ``tokens`` from every limit now; wait ``delay`` after.

        Raises :class:`~headway.errors.RequestTooLargeError` if a limit can never hold
        the amount and :class:`~headway.errors.MaxWaitExceededError` if the wait would
        exceed ``max_wait`` (nothing is reserved then).
        """
        amounts = [tokens if t else requests for t in self._tokens]
        for amount, lim in zip(amounts, self.limits, strict=True):
            if amount > lim.capacity:
                raise RequestTooLargeError(
                    f"limiter {self.name!r}: {amount:g} {lim.unit} can never be admitted by "
                    f"a limit of {lim.rate:g} per {lim.period:g}s (capacity "
                    f"{lim.capacity:g}); split the request or raise the burst",
                    requested=amount,
                    capacity=lim.capacity,
                )
            if amount < 0:
                raise ValueError(f"cannot reserve a negative amount ({amount:g})")
        if max_wait is None:
            max_wait = self.max_wait
        req = _Request(amounts, max_wait, requests, tokens)
        if self._busy:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            req.future = fut
            self._queue.append(req)
            try:
                got = await fut
            except asyncio.CancelledError:
                self._abandon(req)
                raise
            if got is not _LEAD:
                return _outcome(got)
        else:
            self._busy = True
        return _outcome(await self._lead(req))

    def _abandon(self, req: _Request) -> None:
        fut = req.future
        assert fut is not None
        if not fut.done() or fut.cancelled():
            with contextlib.suppress(ValueError):
                self._queue.remove(req)
            return
        got = fut.result()
        if got is _LEAD:
            self._hand_off()
        elif isinstance(got, RayReservation):
            got.cancel()

    def _hand_off(self) -> None:
        queue = self._queue
        while queue:
            nxt = queue.popleft()
            assert nxt.future is not None
            if not nxt.future.done():
                nxt.future.set_result(_LEAD)
                return
        self._busy = False

    async def _lead(self, req: _Request) -> Any:
        batch = [req]
        queue = self._queue
        while queue and len(batch) < _MAX_BATCH:
            nxt = queue.popleft()
            assert nxt.future is not None
            if not nxt.future.done():
                batch.append(nxt)
        outcomes: list[Any] | None = None
        try:
            if self.backend._may_call():
                outcomes = await self._reserve_shared(batch)
        except asyncio.CancelledError:
            for other in reversed(batch[1:]):
                queue.appendleft(other)
            self._hand_off()
            raise
        except ValueError:  # the actor holds other limits under this name
            outcomes = [
                ConfigurationError(
                    f"limiter {self.name!r}: another worker uses other limits under this "
                    "name; one name, one set of limits"
                )
                for _ in batch
            ]
        except Exception as exc:
            self.backend._failed(exc)
        if outcomes is None:
            outcomes = [self._reserve_local(r) for r in batch]
        for other, got in zip(batch[1:], outcomes[1:], strict=True):
            assert other.future is not None
            if other.future.done():
                if isinstance(got, RayReservation):
                    got.cancel()
            else:
                other.future.set_result(got)
        self._hand_off()
        return outcomes[0]

    async def _reserve_shared(self, batch: list[_Request]) -> list[Any]:
        backend = self.backend
        now = self.clock.now()
        pause = 0.0
        if self._pause_until > now and self._pause_until > self._pause_sent:
            pause = self._pause_until - now
            self._pause_sent = self._pause_until
        adjusts = self._pending if any(self._pending) else None
        caps = self._caps if any(c is not None for c in self._caps) else None
        cancels = sorted(self._cancels, key=lambda c: c[0], reverse=True)
        n = len(self.limits)
        self._pending, self._caps, self._cancels = [0.0] * n, [None] * n, []
        try:
            shift, actor_now, workers, out = await backend._call(
                "reserve",
                self.name,
                self._specs,
                backend.worker_id,
                adjusts,
                caps,
                cancels,
                pause,
                [(r.amounts, r.max_wait) for r in batch],
                self.retune,
            )
        except BaseException:
            # not applied (or unknown): keep the settles for the next trip
            if adjusts is not None:
                self._pending = [a + b for a, b in zip(adjusts, self._pending, strict=True)]
            self._cancels.extend(cancels)
            raise
        self.round_trips += 1
        backend._recovered()
        backend.workers = int(workers)
        seen = self._seen_shift
        if seen is not None and shift > seen:
            extra = shift - seen - (self._own_shift if pause else 0.0)
            if extra > 0:
                self._shift += extra
        if pause:
            self._own_shift = 0.0
        self._seen_shift = shift
        outcomes: list[Any] = []
        for r, (ok, wait) in zip(batch, out, strict=True):
            if ok:
                outcomes.append(
                    self._admitted(_SHARED, None, wait, r.requests, r.tokens, actor_now + wait)
                )
            else:
                outcomes.append(self._rejection(wait, r.max_wait))
        return outcomes

    def _reserve_local(self, r: _Request) -> RayReservation | BaseException:
        backend = self.backend
        local = self._local
        if local is None or self._local_outage != backend.outages:
            share = 1.0 / max(1, backend.workers)
            local = LocalBuckets(
                [(x.per_second * share, max(1.0, x.capacity * share)) for x in self.limits],
                clock=self.clock,
            )
            self._local, self._local_outage = local, backend.outages
        now = self.clock.now()
        ok, wait = local.reserve(
            r.amounts, max_wait=r.max_wait, pause=max(0.0, self._pause_until - now)
        )
        if not ok:
            return self._rejection(wait, r.max_wait)
        return self._admitted(_LOCAL, local, wait, r.requests, r.tokens, now + wait)

    def _admitted(
        self,
        source: int,
        state: LocalBuckets | None,
        wait: float,
        requests: float,
        tokens: float,
        at: float,
    ) -> RayReservation:
        floor = self._pause_until - self.clock.now()
        if floor > wait:
            wait = floor
        if wait > 0 and enabled():
            emit(LIMITER_WAIT, source=self.name, requests=requests, tokens=tokens, wait=wait)
        return RayReservation(self, source, state, wait, requests, tokens, at)

    def _rejection(self, wait: float, max_wait: float | None) -> MaxWaitExceededError:
        return MaxWaitExceededError(
            f"limiter {self.name!r}: admission in {wait:.3f}s would exceed "
            f"max_wait={max_wait or 0.0:g}s; nothing was reserved",
            retry_after=wait,
        )

    def _settle(self, source: int, state: LocalBuckets | None, tokens: float) -> None:
        deltas = [tokens if t else 0.0 for t in self._tokens]
        if source == _SHARED:
            for i, d in enumerate(deltas):
                self._pending[i] += d
        elif state is not None:
            state.adjust(deltas)

    def _cancel(
        self, source: int, state: LocalBuckets | None, at: float, requests: float, tokens: float
    ) -> None:
        back = [tokens if t else requests for t in self._tokens]
        if source == _SHARED:
            self._cancels.append((at, back))
        elif state is not None:
            state.cancel(at, back)

    async def acquire(self, requests: float = 1.0, tokens: float = 0.0) -> float:
        """Reserve, wait until admitted (refunding if cancelled) and return the wait."""
        res = await self.reserve(requests, tokens)
        await res.wait()
        return res.delay

    def slot(self, requests: float = 1.0, tokens: float = 0.0) -> _Slot:
        """``async with limiter.slot(1, 800) as reservation:`` waits; refunds if cancelled."""
        return _Slot(self, requests, tokens)

    async def flush(self) -> None:
        """Send pending settles, refunds, pauses and syncs to the actor now."""
        await self.reserve(0.0, 0.0)

    def pause_until(self, when: float) -> None:
        """Admit nobody before clock time ``when``; every worker from the next round trip."""
        now = self.clock.now()
        start = max(self._pause_until, now)
        if when > start:
            self._pause_until = when
            self._shift += when - start
            self._own_shift += when - start
            if enabled(logging.INFO):
                emit(
                    LIMITER_PAUSED,
                    source=self.name,
                    level=logging.INFO,
                    until=when,
                    seconds=when - now,
                )

    def pause(self, seconds: float) -> None:
        """:meth:`pause_until` ``now + seconds``."""
        self.pause_until(self.clock.now() + seconds)

    def reserve_nowait(self, requests: float = 1.0, tokens: float = 0.0) -> RayReservation | None:
        """Always ``None``: a shared reservation needs a round trip; await :meth:`reserve`."""
        return None

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429: pause every worker if the server's bucket is ``empty`` (for
        ``delay``, already capped by the policy, or ``RATE_LIMITED_PAUSE`` seconds)."""
        if empty:
            self.pause(delay if delay is not None and delay > 0.0 else RATE_LIMITED_PAUSE)

    def on_success(self) -> None:
        """An attempt succeeded: a no-op for fixed limits."""

    def set_limit(self, index: int, limit: Limit) -> None:
        """Replace limit ``index`` (same unit and period) from the next round trip on.

        What :class:`RayAdaptiveLimiter` uses to change the shared rate and burst: the
        actor takes the rates of the latest round trip (as Redis takes each call's).
        """
        old = self.limits[index]
        if (limit.unit, limit.period) != (old.unit, old.period):
            raise ConfigurationError(
                f"limiter {self.name!r}: limit {index} is {old.unit} per {old.period:g}s; "
                "a new rate keeps the unit and the period"
            )
        limits = list(self.limits)
        limits[index] = limit
        self.limits = tuple(limits)
        self._specs[index] = (limit.per_second, limit.capacity)
        self.retune = True

    def sync(
        self,
        unit: str,
        remaining: float,
        reset_after: float | None = None,
        limit: float | None = None,
    ) -> None:
        """The server says ``remaining`` ``unit`` are left: lower the shared level to that."""
        candidates = [i for i, x in enumerate(self.limits) if x.unit == unit]
        if not candidates:
            return
        if limit is not None:
            candidates = [i for i in candidates if self.limits[i].capacity == limit] or candidates
        i = min(candidates, key=lambda j: self.limits[j].period)
        old = self._caps[i]
        self._caps[i] = remaining if old is None else min(old, remaining)

    def __repr__(self) -> str:
        return f"RayLimiter({self.name!r}, limits={list(self.limits)!r})"


class _Slot:
    __slots__ = ("_limiter", "_requests", "_tokens")

    def __init__(self, limiter: RayLimiter, requests: float, tokens: float) -> None:
        self._limiter = limiter
        self._requests = requests
        self._tokens = tokens

    async def __aenter__(self) -> RayReservation:
        res = await self._limiter.reserve(self._requests, self._tokens)
        await res.wait()
        return res

    async def __aexit__(self, *exc: object) -> None:
        return None


_NOTHING = -1.0


class RayBreakerState:
    """The circuit ``name`` shared through the backend's actor: a
    :class:`~headway.resilience.breaker.BreakerStore`.

    Build it with :meth:`RayBackend.breaker_store` (``CircuitBreaker(name=...,
    backend=ray_backend)`` does). The breaker reads a local view; writes (open, close)
    apply to it at once and reach the actor with the backend's refresher, which also
    re-reads the shared state every ``breaker_refresh`` seconds, so a circuit opened by
    any process of the cluster is seen here within that time. Half-open trial permits
    are leased cluster-wide (``half_open_max_calls`` at once, each for ``trial_lease``
    seconds at most): :meth:`try_trial` answers from the lease this process holds and,
    without one, asks the refresher for one and says no for now.
    """

    def __init__(self, backend: RayBackend, name: str, *, half_open_max_calls: int = 1) -> None:
        if half_open_max_calls < 1:
            raise ConfigurationError("half_open_max_calls must be at least 1")
        self.backend = backend
        self.name = name
        self.half_open_max_calls = half_open_max_calls
        self._token = f"{backend.worker_id}:{uuid.uuid4().hex[:8]}"
        self._open_until: float | None = None
        self._write = _NOTHING
        self._want_trial = False
        self._release = False
        self._lease = False
        self._lease_busy = False
        self.generation = 0

    def open_for(self) -> float | None:
        """Seconds the circuit stays open (``<= 0``: trial calls may go); None: closed."""
        self.backend.ensure_refresher()
        if self._open_until is None:
            return None
        return self._open_until - self.backend.clock.now()

    def publish_open(self, recovery_time: float) -> None:
        """Open the circuit for every worker for ``recovery_time`` seconds."""
        if recovery_time <= 0:
            raise ValueError("recovery_time must be > 0")
        self._open_until = self.backend.clock.now() + recovery_time
        self._write = recovery_time
        self._lease = self._lease_busy = self._want_trial = False
        self.backend.wake_refresher()

    def publish_closed(self) -> None:
        """Close the circuit for every worker."""
        self._open_until = None
        self._write = 0.0
        self._lease = self._lease_busy = self._want_trial = False
        self.backend.wake_refresher()

    def try_trial(self) -> bool:
        """Use this worker's trial lease if it holds one; else ask for one, False for now."""
        if self._lease and not self._lease_busy:
            self._lease_busy = True
            return True
        if not self._lease:
            self._want_trial = True
            self.backend.wake_refresher()
        return False

    def release_trial(self) -> None:
        """Give the trial permit back."""
        if self._lease and self._lease_busy:
            self._lease = self._lease_busy = False
            self._release = True
            self.backend.wake_refresher()

    @property
    def is_open(self) -> bool:
        """Whether the shared circuit is open or half-open (as last seen)."""
        return self._open_until is not None

    async def refresh(self) -> float | None:
        """Read the shared state now (one round trip, with any pending write or lease
        request); return :meth:`open_for`'s answer."""
        await self.step(True)
        return self.open_for()

    async def step(self, read: bool) -> None:
        """One round trip: publish a write, take or release a lease, read the state."""
        write, want, release = self._write, self._want_trial and not self._lease, self._release
        if write == _NOTHING and not want and not release and not read:
            return
        self._write, self._release = _NOTHING, False
        backend = self.backend
        try:
            left, gen, got = await backend._call(
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
            if self._write == _NOTHING:
                self._write = write
            self._release = self._release or release
            raise
        backend._recovered()
        self.generation = gen
        if want:
            self._want_trial = False
            if got:
                self._lease, self._lease_busy = True, False
        if self._write == _NOTHING:  # no local write raced with the trip
            if left is None:
                self._open_until = None
                self._lease = self._lease_busy = False
            else:
                self._open_until = backend.clock.now() + left

    def __repr__(self) -> str:
        return f"RayBreakerState({self.name!r}, open_for={self.open_for()!r})"


class RayAdaptiveLimiter:
    """An :class:`~headway.limits.AdaptiveLimiter` whose bucket and learned rate live in
    the backend's actor: the cluster learns the server's limit together.

    The twin of :class:`~headway.backends.redis.adaptive.SharedAdaptiveLimiter`: every
    worker on the same name paces on one shared bucket (a :class:`RayLimiter`) at one
    rate. Each worker runs the control law of :class:`~headway.limits.AdaptiveLimiter`
    (advertised limit, probing, the user's ceiling) on the headers and 429s it sees;
    what it learns goes to the actor, and every worker adopts the newest state there at
    most ``sync_every`` seconds later. So a 429 seen by one worker slows all of them, and
    a limit one worker reads in a header is the limit for all.

    Args:
        backend: the :class:`RayBackend`.
        name: the limit's name; workers with the same name share bucket and rate.
        rpm, tpm: the user's ceilings (``None``: none). The token limit is shared only
            when ``tpm`` is given (at ``tpm``).
        start_rpm, burst_seconds: as for :class:`~headway.limits.AdaptiveLimiter`.
        sync_every: seconds between reads of the shared state.
        clock: where time is read and slept.
        listeners: called with a :class:`~headway.limits.adaptive.RateChanged` event on
            every change of the shared rate this worker makes or adopts.
    """

    def __init__(
        self,
        backend: RayBackend,
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
        for what, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigurationError(f"{what} must be a number > 0 or None, got {value!r}")
        if not (burst_seconds > 0 and math.isfinite(burst_seconds)):
            raise ConfigurationError(f"burst_seconds must be > 0, got {burst_seconds!r}")
        self.backend = backend
        self.name = name
        self.burst_seconds = float(burst_seconds)
        self.sync_every = float(sync_every)
        self._clock = resolve_clock(clock if clock is not None else backend.clock)
        self.requests = RateControl(ceiling=rpm, start=start_rpm)
        limits = [Limit(self.requests.rate, 60.0, burst=self._burst(self.requests.rate))]
        if tpm is not None:
            limits.append(Limit(tpm, 60.0, unit="tokens"))
        self.shared = RayLimiter(backend, name, limits, clock=self._clock)
        self.shared.retune = True  # the actor takes the learned rate
        self._version = ""
        self._dirty = False
        self._synced_at = -math.inf
        self._seen_limit: str | None = None
        self._reported = self.requests.rate
        self.rate_limited_count = 0
        self.listeners: tuple[EventListener, ...] = tuple(listeners)

    def _burst(self, rate: float) -> float:
        if self.requests.advertised is None:
            return 1.0
        return max(1.0, rate / 60.0 * self.burst_seconds)

    # -- what a display needs ----------------------------------------------------------
    def rate_in_force(self, unit: str = "requests") -> tuple[float, Source] | None:
        """The shared rate in force per minute and who sets it (requests only)."""
        if unit != "requests":
            return None
        return self.requests.rate, self.requests.source

    def learned_limits(self) -> dict[str, float]:
        """What the workers learned together, per minute."""
        c = self.requests
        if c.advertised is not None:
            return {"requests": c.advertised * c.share}
        return {} if c.slow_start else {"requests": c.learned}

    # -- the Limiter protocol ----------------------------------------------------------
    def reserve_nowait(self, requests: float = 1.0, tokens: float = 0.0) -> None:
        """Always ``None``: a shared reservation takes a round trip (await :meth:`reserve`)."""
        return

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> RayReservation:
        """Sync the learned rate (every ``sync_every`` s), then reserve on the shared bucket."""
        if self._dirty or self._clock.now() - self._synced_at >= self.sync_every:
            await self.sync_learned()
        return await self.shared.reserve(requests, tokens, max_wait=max_wait)

    def pause_until(self, when: float) -> None:
        """Admit nobody, in any worker, before ``when`` (at most ``MAX_SHARED_PAUSE`` s)."""
        self.shared.pause_until(min(when, self._clock.now() + MAX_SHARED_PAUSE))

    def pause(self, seconds: float) -> None:
        """:meth:`pause_until` ``now + seconds``."""
        self.pause_until(self._clock.now() + seconds)

    def sync(
        self,
        unit: str,
        remaining: float,
        reset_after: float | None = None,
        limit: float | None = None,
    ) -> None:
        """Lower the shared level of ``unit`` to the server's ``remaining`` figure."""
        self.shared.sync(unit, remaining, reset_after, limit)

    def on_success(self) -> None:
        """An attempt was answered: probe upward (shared at the next sync)."""
        c = self.requests
        if c.advertised is not None and c.share >= 1.0:
            return
        if c.succeeded(self._clock.now()):
            self._changed("probe")

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429: when the server's bucket is empty, every worker pauses and slows."""
        self.rate_limited_count += 1
        if not empty:
            return
        now = self._clock.now()
        if self.requests.rate_limited(now):
            self._changed("rate_limited")
        if delay is None or not delay > 0.0:
            delay = 60.0 / self.requests.rate
        self.pause_until(now + delay)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn an advertised request limit; lower the shared level when little is left."""
        get = headers.get
        limit = get("x-ratelimit-limit-requests") or get("anthropic-ratelimit-requests-limit")
        if limit != self._seen_limit:
            self._seen_limit = limit
            value = _number(limit)
            if value is not None and self.requests.advertise(value, self._clock.now()):
                self._changed("advertised")
        left = _number(
            get("x-ratelimit-remaining-requests") or get("anthropic-ratelimit-requests-remaining")
        )
        total = _number(limit)
        if left is not None and (total is None or left < 0.5 * total):
            self.shared.sync("requests", left)

    # -- sharing -------------------------------------------------------------------------
    def _changed(self, reason: str) -> None:
        self._dirty = True
        self._apply(reason)

    def _apply(self, reason: str) -> None:
        c = self.requests
        self.shared.set_limit(0, Limit(c.rate, 60.0, burst=self._burst(c.rate)))
        old, new = self._reported, c.rate
        if reason == "probe" and abs(new - old) < 0.02 * old:
            return
        self._reported = new
        if events.enabled(logging.INFO, self.listeners):
            events.publish(
                RateChanged(
                    RATE_CHANGED,
                    self.name,
                    {
                        "unit": "requests",
                        "old": old,
                        "new": new,
                        "limited_by": c.source,
                        "reason": reason,
                    },
                    self._clock.now(),
                    logging.INFO,
                    unit="requests",
                    old=old,
                    new=new,
                    limited_by=c.source,
                    reason=reason,
                ),
                self.listeners,
            )

    def _state(self) -> dict[str, str]:
        c = self.requests
        return {
            "adv": "" if c.advertised is None else repr(c.advertised),
            "share": repr(c.share),
            "learned": repr(c.learned),
            "peak": repr(c.peak),
            "slow": "1" if c.slow_start else "0",
        }

    def _adopt(self, state: Mapping[str, str]) -> None:
        c = self.requests
        adv = state.get("adv", "")
        c.advertised = float(adv) if adv else None
        c.share = float(state.get("share", "1"))
        c.learned = float(state.get("learned", repr(c.learned)))
        if c.ceiling is not None and c.learned > c.ceiling:
            c.learned = c.ceiling
        c.peak = float(state.get("peak", repr(c.peak)))
        c.slow_start = state.get("slow", "1") == "1"
        if c.update():
            self._apply("shared")

    async def sync_learned(self) -> None:
        """Publish what this worker learned, or adopt what the others did (one round trip)."""
        self._synced_at = self._clock.now()
        publish = self._state() if self._dirty else None
        self._dirty = False
        try:
            version, state = await self.backend._call("learned", self.name, publish)
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

    def __repr__(self) -> str:
        return (
            f"RayAdaptiveLimiter({self.name!r}, rpm={self.requests.rate:g} "
            f"limited by {self.requests.source})"
        )


if TYPE_CHECKING:  # mypy checks the protocols are met

    def _protocols(
        lim: RayLimiter, learner: RayAdaptiveLimiter, store: RayBreakerState, backend: RayBackend
    ) -> None:
        _lim: Limiter = lim
        _learner: Limiter = learner
        _store: BreakerStore = store
        _backend: BreakerBackend = backend
