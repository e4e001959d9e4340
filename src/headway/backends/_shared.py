"""What the shared backends (Redis, a Ray actor) have in common.

A shared backend keeps limiter and circuit state in a store every worker reaches (a Redis
server, a named Ray actor). Its client side is the same whatever the store:

* :class:`SharedLimiter` batches a process's reservations into round trips (callers that
  arrive while one is in flight go together in the next one, in arrival order), carries
  settles, refunds, pauses and server-figure syncs along with them, and falls back to a
  local share of each limit while the store is away.
* :class:`SharedReservation` is what it hands out: a ``headway.limits.Reservation``
  whose wait is pushed back by pauses published later.
* :class:`SharedBackend` tracks outages (one event each way, a probe every
  ``retry_interval`` seconds) and runs the task that keeps shared circuit states fresh.

A store supplies one round trip (:meth:`SharedLimiter.send`) and, for its circuits, a
:class:`SharedCircuit` with a ``step``; the rest lives here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from headway._clock import Clock, resolve_clock
from headway.backends._base import Backend, Limit
from headway.backends._model import LocalBuckets
from headway.errors import (
    BackendUnavailableError,
    ConfigurationError,
    MaxWaitExceededError,
    RequestTooLargeError,
)
from headway.events import (
    LIMITER_PAUSED,
    LIMITER_REJECTED,
    LIMITER_SYNCED,
    LIMITER_WAIT,
    emit,
    enabled,
)
from headway.limits import RATE_LIMITED_PAUSE, Reservation
from headway.limits.bucket import PAUSE_NEWS

__all__ = ["SharedBackend", "SharedCircuit", "SharedLimiter", "SharedReservation"]

#: Event: the store stopped answering (once per outage, WARNING). Data: error.
BACKEND_UNAVAILABLE = "backend.unavailable"
#: Event: the store answers again; shared state resumed (INFO). Data: outage (seconds).
BACKEND_RECOVERED = "backend.recovered"

#: Where a reservation was taken: the shared store, the local fallback, or nowhere
#: (``on_backend_error="allow"``); a cancelled one has none.
SHARED, LOCAL, ALLOW, CANCELLED = 0, 1, 2, -1

#: Most callers sent in one round trip.
_MAX_BATCH = 256
#: What a queued caller is told when it is its turn to lead the next round trip.
_LEAD: Any = object()


@dataclass(slots=True)
class Request:
    """One caller's reservation, queued for the next round trip."""

    amounts: list[float]
    max_wait: float | None
    requests: float
    tokens: float
    future: asyncio.Future[Any] | None = None


def _outcome(got: SharedReservation | BaseException) -> SharedReservation:
    if isinstance(got, BaseException):
        raise got
    return got


L = TypeVar("L", bound="SharedLimiter")
S = TypeVar("S", bound="SharedCircuit")


class SharedBackend(Backend[L, S]):
    """A :class:`~headway.backends.Backend` whose state lives in a store shared by workers.

    Keeps the outage state (``outages``, ``workers`` seen live, when to probe) and the
    refresher task of the circuit stores. ``where`` names the store in events.
    """

    #: What a failed round trip raises (after :meth:`mark_failed`).
    outage_error: type[BaseException] = BackendUnavailableError
    #: The classes :meth:`limiter` and :meth:`breaker_store` build.
    limiter_type: type[L]
    circuit_type: type[S]

    def __init__(
        self,
        *,
        where: str,
        worker_id: str,
        retry_interval: float,
        breaker_refresh: float,
        clock: Clock | None,
    ) -> None:
        super().__init__()
        self.where = where
        #: A random id naming this worker in the store (its presence, its trial leases).
        self.worker_id = worker_id
        self.retry_interval = retry_interval
        self.breaker_refresh = breaker_refresh
        self.clock = resolve_clock(clock)
        #: Workers seen live at the last reservation (this one included).
        self.workers = 1
        #: How many outages this backend has gone through.
        self.outages = 0
        self._down = False
        self._down_since = 0.0
        self._retry_at = -math.inf
        self._probing = False
        self._refresher: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False

    def new_limiter(self, name: str, limits: tuple[Limit, ...], **options: Any) -> L:
        """A ``limiter_type`` (through :meth:`limiter`, one per name)."""
        return self.limiter_type(self, name, limits, **options)

    def new_breaker_store(self, name: str, *, half_open_max_calls: int = 1) -> S:
        """A ``circuit_type`` (through :meth:`breaker_store`, one per name)."""
        return self.circuit_type(self, name, half_open_max_calls=half_open_max_calls)

    # -- health -----------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False during an outage (between a failed call and the next answer)."""
        return not self._down

    def resting(self, now: float) -> bool:
        """Whether an outage is on and no probe is due at ``now``: skip the store."""
        return self._down and (self._probing or now < self._retry_at)

    def may_call(self) -> bool:
        """Whether to call the store now; during an outage one caller probes per interval.

        A caller told yes calls :meth:`call_done` when its call is over.
        """
        if not self._down:
            return True
        if self._probing or self.clock.now() < self._retry_at:
            return False
        self._probing = True
        return True

    def call_done(self) -> None:
        """A call let through by :meth:`may_call` is over (answered or not)."""
        self._probing = False

    def outage_fields(self) -> dict[str, Any]:
        """Extra data of the ``backend.unavailable`` event."""
        return {}

    def mark_failed(self, exc: BaseException) -> None:
        """A call failed: an outage starts (one event), or goes on; probe again later."""
        self._retry_at = self.clock.now() + self.retry_interval
        if self._down:
            return
        self._down = True
        self._down_since = self.clock.now()
        self.outages += 1
        emit(
            BACKEND_UNAVAILABLE,
            source=self.where,
            level=logging.WARNING,
            error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            **self.outage_fields(),
            retry_interval=self.retry_interval,
        )

    def mark_recovered(self) -> None:
        """A call was answered: an outage is over (one event)."""
        if self._down:
            self._down = False
            emit(
                BACKEND_RECOVERED,
                source=self.where,
                level=logging.INFO,
                outage=round(self.clock.now() - self._down_since, 3),
            )

    def local_share(self) -> float:
        """The share of a global rate this worker keeps during an outage: one over the
        number of workers seen live."""
        return 1.0 / max(1, self.workers)

    # -- the circuit stores' refresher ------------------------------------------------

    def ensure_refresher(self) -> None:
        """Start the task that keeps shared circuit states fresh (once, in a loop)."""
        if self._closed or (self._refresher is not None and not self._refresher.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake = asyncio.Event()
        self._refresher = loop.create_task(
            self._refresh(self._wake), name=f"headway-breakers:{self.where}"
        )

    def wake_refresher(self) -> None:
        """A shared circuit state has something to send: run the refresher now."""
        self.ensure_refresher()
        if self._wake is not None:
            self._wake.set()

    async def _refresh(self, wake: asyncio.Event) -> None:
        """The refresher task: one round per ``breaker_refresh`` s (or when woken)."""
        clock = self.clock
        next_read = clock.now()
        while not self._closed:
            read = clock.now() >= next_read
            if read:
                next_read = clock.now() + self.breaker_refresh
            wake.clear()
            if self.may_call():
                try:
                    for store in list(self._breakers.values()):
                        await store.step(read)
                except self.outage_error:
                    pass  # marked failed: probe again after retry_interval
                finally:
                    self.call_done()
            delay = max(0.0, next_read - clock.now())
            if self._down:
                delay = max(delay, self._retry_at - clock.now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()

    async def aclose(self) -> None:
        """Stop the breaker refresher and flush what the limiters owe (idempotent)."""
        if self._closed:
            return
        self._closed = True
        task, self._refresher = self._refresher, None
        if task is not None:
            # The refresher stops at its next turn (_closed); the cancel makes that now.
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        for _, lim in self._limiters.values():
            if lim.has_pending() and not self._down:
                with contextlib.suppress(BackendUnavailableError):
                    await lim.flush()


#: No circuit write pending.
NOTHING = -1.0


class SharedCircuit:
    """The circuit ``name`` shared through a store: a
    :class:`~headway.resilience.breaker.BreakerStore`.

    A breaker decides on every call without waiting for the store, so this is a local
    view: writes (open, close) apply to it at once and reach the store with the
    backend's refresher, which also re-reads the shared state every ``breaker_refresh``
    seconds, so a circuit opened by any worker is seen here within that time.
    Half-open trial permits are leased store-wide (``half_open_max_calls`` at once, each
    for ``trial_lease`` seconds at most): :meth:`try_trial` answers from the lease this
    worker holds and, without one, asks the refresher for one and says no for now (the
    caller gets ``CircuitBreakerOpenError`` and comes back shortly).

    A store's circuit implements :meth:`step`, one round of the refresher.
    """

    def __init__(
        self, backend: SharedBackend[Any, Any], name: str, *, half_open_max_calls: int = 1
    ) -> None:
        if half_open_max_calls < 1:
            raise ConfigurationError("half_open_max_calls must be at least 1")
        self.backend = backend
        self.name = name
        self.half_open_max_calls = half_open_max_calls
        self._token = f"{backend.worker_id}:{uuid.uuid4().hex[:8]}"
        self._open_until: float | None = None  # local view, backend clock
        self._write = NOTHING  # recovery seconds to publish (> 0 open, 0 close)
        self._want_trial = False
        self._lease: int | None = None  # the trial lease held (1-based)
        self._lease_busy = False
        self._release: list[int] = []
        #: Generation of the shared state last seen (bumped by every open/close).
        self.generation = 0

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
        self._publish(self.backend.clock.now() + recovery_time, recovery_time)

    def publish_closed(self) -> None:
        """Close the circuit for every worker (a trial call succeeded, or a reset)."""
        self._publish(None, 0.0)

    def _publish(self, open_until: float | None, write: float) -> None:
        self._open_until = open_until
        self._write = write
        # an open or a close frees every lease in the store
        self._lease = None
        self._lease_busy = self._want_trial = False
        self._release.clear()
        self.backend.wake_refresher()

    def try_trial(self) -> bool:
        """Take this worker's half-open trial permit if it holds a lease.

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

    async def step(self, read: bool) -> None:
        """One round of the backend's refresher: writes, lease requests, then a read."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, open_for={self.open_for()!r})"


class SharedReservation(Reservation):
    """What a :class:`SharedLimiter` took: a ``headway.limits.Reservation``.

    Attributes:
        delay: seconds the caller must wait before proceeding.
        requests, tokens: what is reserved (``tokens`` changes with :meth:`settle`).
        shared: False when taken from the local fallback during an outage.
    """

    __slots__ = ("_at", "_limiter", "_mark", "_source", "_state")

    def __init__(
        self,
        limiter: SharedLimiter,
        source: int,
        state: LocalBuckets | None,
        delay: float,
        requests: float,
        tokens: float,
        at: float = 0.0,
    ) -> None:
        # Reservation's own __init__ is for in-memory buckets: set every field here.
        self._at = at  # admission time: the store's time (shared) or clock seconds (local)
        self._mark = limiter.shift  # pauses after this push the wait back
        self._limiter = limiter
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
        """Whether the reservation was taken from the shared limits."""
        return self._source == SHARED

    def settle(self, tokens: float) -> None:
        """The call used ``tokens``: refund or charge the difference with the estimate."""
        if not tokens >= 0.0 or tokens == math.inf:
            raise ValueError(f"settled tokens must be a finite number >= 0, got {tokens!r}")
        if self._source < 0:
            return
        diff = float(tokens) - self.tokens
        if diff:
            self.tokens = float(tokens)
            self._limiter.settle_units(self._source, self._state, -diff)

    def cancel(self) -> None:
        """Give everything back (idempotent); used when the waiter is cancelled.

        A limit gets the units back only where this reservation is still last in its
        queue (a newcomer must not take the slot of a waiter still queued); cancelling
        several waiters gives back all of them when they are cancelled together.
        """
        if self._source < 0:
            return
        source, self._source = self._source, CANCELLED
        self._limiter.cancel_units(source, self._state, self._at, self.requests, self.tokens)

    async def wait(self) -> None:
        """Sleep until admitted (longer if the limiter is paused meanwhile); cancel if cancelled."""
        limiter = self._limiter
        if self._source < 0 or (self.delay <= 0.0 and limiter.shift == self._mark):
            return
        clock = limiter.clock
        try:
            mark = self._mark
            await clock.sleep(self.delay)
            while limiter.shift > mark:
                extra, mark = limiter.shift - mark, limiter.shift
                await clock.sleep(extra)
        except BaseException:
            self.cancel()
            raise

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(delay={self.delay:.6f}, requests={self.requests:g}, "
            f"tokens={self.tokens:g}, shared={self.shared})"
        )


class _Slot:
    __slots__ = ("_limiter", "_requests", "_tokens")

    def __init__(self, limiter: SharedLimiter, requests: float, tokens: float) -> None:
        self._limiter = limiter
        self._requests = requests
        self._tokens = tokens

    async def __aenter__(self) -> SharedReservation:
        res = await self._limiter.reserve(self._requests, self._tokens)
        await res.wait()
        return res

    async def __aexit__(self, *exc: object) -> None:
        return None


class SharedLimiter:
    """Several rate limits held in a shared store, reserved atomically: all or nothing.

    Satisfies the ``headway.limits.Limiter`` protocol (``reserve``, ``pause_until``,
    ``sync``), so it drops into a ``Policy`` or an ``Endpoint`` where an in-memory
    ``MultiLimiter`` would go. Within a process, reservations reach the store one round
    trip at a time in arrival order (FIFO); across processes, in the order the store runs
    them. Waits never shrink for later callers, so a large request is never starved by
    small ones.

    A store's limiter implements :meth:`send` (one round trip for a batch of callers).
    """

    #: The class of the reservations handed out.
    reservation: type[SharedReservation] = SharedReservation
    #: The longest a pause (a 429's Retry-After) holds every worker, in seconds.
    max_pause: float = math.inf

    def __init__(
        self,
        backend: SharedBackend[Any, Any],
        name: str,
        limits: Iterable[Limit],
        *,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        self.limits = tuple(limits)
        if not self.limits:
            raise ConfigurationError(f"limiter {name!r} needs at least one Limit")
        seen = {(x.unit, x.period) for x in self.limits}
        if len(seen) != len(self.limits):
            raise ConfigurationError(
                f"limiter {name!r}: two limits with the same unit and period; keep one"
            )
        self.max_wait = max_wait
        self.clock = resolve_clock(clock if clock is not None else backend.clock)
        self._tokens = tuple(x.unit == "tokens" for x in self.limits)
        n = len(self.limits)
        self._pending = [0.0] * n
        self._caps: list[float | None] = [None] * n
        self._cancels: list[tuple[float, list[float]]] = []
        self._pause_until = -math.inf
        self._pause_sent = -math.inf
        #: total pause length seen (here or from other workers): waiters extend by it
        self._shift = 0.0
        self._seen_shift: float | None = None
        self._own_shift = 0.0
        self._busy = False  # a round trip is in flight; newcomers queue
        self._queue: deque[Request] = deque()
        self._local: LocalBuckets | None = None
        self._local_outage = -1
        self._local_share = 1.0
        #: clock time of the last admission the store granted this worker (the fallback
        #: refills only after it: those admissions already use the shared rate)
        self._shared_until = -math.inf
        #: the wait of the last admission the store granted: how far ahead the fleet's
        #: queue of shared admissions ran then (other workers' run about as far)
        self._last_wait = 0.0
        #: Round trips made to the store (for the curious and the tests).
        self.round_trips = 0
        self.setup()

    def setup(self) -> None:
        """Hook, at the end of ``__init__``: the store's own state (keys, its copy of
        the rates)."""

    # -- reserving --------------------------------------------------------------------

    def amounts(self, requests: float, tokens: float) -> list[float]:
        """What each limit is charged for ``requests`` and ``tokens`` (checked)."""
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
        return amounts

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> SharedReservation:
        """Reserve ``requests`` and ``tokens`` from every limit now; wait ``delay`` after.

        Raises :class:`~headway.errors.RequestTooLargeError` if a limit can never hold
        the amount and :class:`~headway.errors.MaxWaitExceededError` if the wait would
        exceed ``max_wait`` (nothing is reserved then).

        Callers that arrive while a round trip is in flight queue here and go together,
        in arrival order, in the next one: one round trip serves them all.
        """
        amounts = self.amounts(requests, tokens)
        return await self.submit(
            Request(amounts, self.max_wait if max_wait is None else max_wait, requests, tokens)
        )

    async def submit(self, req: Request) -> SharedReservation:
        """Send ``req`` with the next round trip (leading it if none is in flight)."""
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

    def _abandon(self, req: Request) -> None:
        """A queued caller was cancelled: withdraw it, or undo what it was given."""
        fut = req.future
        assert fut is not None
        if not fut.done() or fut.cancelled():
            with contextlib.suppress(ValueError):
                self._queue.remove(req)  # not sent yet (if sent: the leader undoes it)
            return
        got = fut.result()
        if got is _LEAD:
            self._hand_off()
        elif isinstance(got, SharedReservation):
            got.cancel()

    def _hand_off(self) -> None:
        """Make the next queued caller lead the next round trip, or go idle."""
        queue = self._queue
        while queue:
            nxt = queue.popleft()
            assert nxt.future is not None
            if not nxt.future.done():
                nxt.future.set_result(_LEAD)
                return
        self._busy = False

    async def _lead(self, req: Request) -> Any:
        """Send ``req`` and every caller queued behind it in one round trip."""
        batch = [req]
        queue = self._queue
        while queue and len(batch) < _MAX_BATCH:
            nxt = queue.popleft()
            assert nxt.future is not None
            if not nxt.future.done():
                batch.append(nxt)
        backend = self.backend
        outcomes: list[Any] | None = None
        try:
            if backend.may_call():
                try:
                    outcomes = await self.send(batch)
                    self.round_trips += 1
                except backend.outage_error:
                    pass  # marked failed: the local fallback answers
                finally:
                    backend.call_done()
        except BaseException:
            # cancelled mid round trip: the others go again (anything the store took for
            # them is lost: too little used, never too much)
            for other in reversed(batch[1:]):
                queue.appendleft(other)
            self._hand_off()
            raise
        if outcomes is None:
            outcomes = [self.reserve_local(r) for r in batch]
        for other, got in zip(batch[1:], outcomes[1:], strict=True):
            assert other.future is not None
            if other.future.done():  # cancelled meanwhile: give its units back
                if isinstance(got, SharedReservation):
                    got.cancel()
            else:
                other.future.set_result(got)
        self._hand_off()
        return outcomes[0]

    async def send(self, batch: list[Request]) -> list[Any]:
        """One round trip to the store for ``batch``: a reservation or an error each.

        Raises the backend's ``outage_error`` (after marking the outage) when the store
        cannot be reached; the callers then go to :meth:`reserve_local`.
        """
        raise NotImplementedError

    def take_pause(self, now: float) -> float:
        """Seconds of pause still to publish with this round trip (0: none)."""
        if self._pause_until > now and self._pause_until > self._pause_sent:
            self._pause_sent = self._pause_until
            return self._pause_until - now
        return 0.0

    def take_settles(
        self,
    ) -> tuple[list[float], list[float | None], list[tuple[float, list[float]]]]:
        """The settles, level caps and cancels to send with this round trip (latest
        cancel first); they are cleared here (see :meth:`restore_settles`)."""
        n = len(self.limits)
        out = (self._pending, self._caps, sorted(self._cancels, key=_first, reverse=True))
        self._pending, self._caps, self._cancels = [0.0] * n, [None] * n, []
        return out

    def restore_settles(
        self, adjusts: list[float], cancels: list[tuple[float, list[float]]]
    ) -> None:
        """A round trip failed: keep its settles and cancels for the next one."""
        self._pending = [a + b for a, b in zip(adjusts, self._pending, strict=True)]
        self._cancels.extend(cancels)

    def saw_shift(self, shift: float, paused: bool) -> None:
        """The store's total pause length is ``shift``: push waiters back by what other
        workers paused since the last round trip (``paused``: this trip sent our own)."""
        seen = self._seen_shift
        if seen is not None and shift > seen:
            # what other workers paused (our own pause shifted our waiters already)
            extra = shift - seen - (self._own_shift if paused else 0.0)
            if extra > 0:
                self._shift += extra
        if paused:
            self._own_shift = 0.0
        self._seen_shift = shift

    def answer(self, r: Request, ok: bool, wait: float, at: float) -> Any:
        """The outcome of ``r`` the store gave: admitted after ``wait`` s (at the store's
        time ``at``), or refused."""
        if ok:
            return self.admitted(SHARED, None, wait, r.requests, r.tokens, at)
        return self.rejection(r.amounts, wait, r.max_wait)

    def reserve_local(self, r: Request) -> SharedReservation | BaseException:
        """Reserve from this worker's share of each limit (the store is away).

        The share starts EMPTY: the shared bucket may have just been drained, so the
        fallback adds no burst, only the share's rate; and nothing refills before the
        fleet's queue of shared admissions has run out.
        """
        local = self._local
        backend = self.backend
        now = self.clock.now()
        if local is None or self._local_outage != backend.outages:
            share = self._local_share = backend.local_share()
            local = LocalBuckets(
                [(x.per_second * share, max(1.0, x.capacity * share)) for x in self.limits],
                clock=self.clock,
            )
            # ours (shared_until) and, about as long, the other workers'
            start = max(now + self._last_wait, self._shared_until)
            for bucket in local.buckets:
                bucket.level, bucket.start = 0.0, start
            self._local = local
            self._local_outage = backend.outages
        caps = self._caps
        level_caps = None
        if any(c is not None for c in caps):
            level_caps, self._caps = caps, [None] * len(caps)
        ok, wait = local.reserve(
            r.amounts,
            max_wait=r.max_wait,
            pause=max(0.0, self._pause_until - now),
            level_caps=level_caps,
        )
        if not ok:
            return self.rejection(r.amounts, wait, r.max_wait)
        return self.admitted(LOCAL, local, wait, r.requests, r.tokens, now + wait)

    def admitted(
        self,
        source: int,
        state: LocalBuckets | None,
        wait: float,
        requests: float,
        tokens: float,
        at: float,
    ) -> SharedReservation:
        """A reservation of ``source`` admitted after ``wait`` (at least the pause)."""
        now = self.clock.now()
        floor = self._pause_until - now
        if floor > wait:
            wait = floor
        if source == SHARED:
            self._last_wait = wait
            if now + wait > self._shared_until:
                self._shared_until = now + wait
        if wait > 0 and enabled():
            emit(LIMITER_WAIT, source=self.name, requests=requests, tokens=tokens, wait=wait)
        return self.reservation(self, source, state, wait, requests, tokens, at)

    def rejection(
        self, amounts: list[float], wait: float, max_wait: float | None
    ) -> MaxWaitExceededError:
        """The error of a caller whose wait would exceed ``max_wait``."""
        if enabled():
            emit(LIMITER_REJECTED, source=self.name, tokens=amounts, wait=wait, max_wait=max_wait)
        return MaxWaitExceededError(
            f"limiter {self.name!r}: admission in {wait:.3f}s would exceed "
            f"max_wait={max_wait or 0.0:g}s; nothing was reserved",
            retry_after=wait,
        )

    @property
    def shift(self) -> float:
        """Total seconds waiting reservations were pushed back by pauses (only grows)."""
        return self._shift

    def settle_units(self, source: int, state: LocalBuckets | None, tokens: float) -> None:
        """A reservation of ``source`` settled: ``tokens`` more were used (< 0: fewer)."""
        deltas = [tokens if t else 0.0 for t in self._tokens]
        if source == SHARED:
            pending = self._pending
            for i, d in enumerate(deltas):
                pending[i] += d
        elif source == LOCAL and state is not None:
            state.adjust(deltas)

    def cancel_units(
        self, source: int, state: LocalBuckets | None, at: float, requests: float, tokens: float
    ) -> None:
        """Give back a cancelled reservation of ``source`` admitted ``at``."""
        back = [tokens if t else requests for t in self._tokens]
        if source == SHARED:
            self._cancels.append((at, back))
        elif source == LOCAL and state is not None:
            state.cancel(at, back)

    def has_pending(self) -> bool:
        """Whether settles, cancels, caps or a pause still wait to be sent to the store."""
        return (
            any(self._pending)
            or bool(self._cancels)
            or any(c is not None for c in self._caps)
            or (self._pause_until > self._pause_sent and self._pause_until > self.clock.now())
        )

    def slot(self, requests: float = 1.0, tokens: float = 0.0) -> _Slot:
        """``async with limiter.slot(1, 800) as reservation:`` waits; refunds if cancelled."""
        return _Slot(self, requests, tokens)

    async def acquire(self, requests: float = 1.0, tokens: float = 0.0) -> float:
        """Reserve, wait until admitted (refunding if cancelled) and return the wait."""
        res = await self.reserve(requests, tokens)
        await res.wait()
        return res.delay

    async def flush(self) -> None:
        """Send pending settles, refunds, pauses and syncs to the store now.

        They otherwise ride along with this process's next reservation.
        """
        await self.reserve(0.0, 0.0)

    # -- steering from server signals -------------------------------------------------

    def pause_until(self, when: float) -> None:
        """Admit nobody before clock time ``when`` (after a 429 with Retry-After).

        Applies in this process at once and for every worker with the next round trip
        (call :meth:`flush` to publish it now). Later reservations queue behind it. A
        pause is at most :attr:`max_pause` long.
        """
        now = self.clock.now()
        if when > now + self.max_pause:
            when = now + self.max_pause
        start = max(self._pause_until, now)
        if when > start:
            self._pause_until = when
            self._shift += when - start
            self._own_shift += when - start
            # a burst of 429s each pauses a little later than the last: said once
            if (start == now or when - start >= PAUSE_NEWS) and enabled(logging.INFO):
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

    def reserve_nowait(
        self, requests: float = 1.0, tokens: float = 0.0
    ) -> SharedReservation | None:
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

        What a limiter that learns its rate uses to change the shared bucket's rate and
        burst.
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
        self.limit_changed(index, limit)

    def limit_changed(self, index: int, limit: Limit) -> None:
        """Hook: limit ``index`` became ``limit`` (the store's copy of the rates)."""

    def sync(
        self,
        unit: str,
        remaining: float,
        reset_after: float | None = None,
        limit: float | None = None,
    ) -> None:
        """The server says ``remaining`` ``unit`` are left: lower the shared level to that.

        Applies to the limit of that unit whose capacity is ``limit`` if given, else to
        the shortest one. Never raises a level. Published with the next round trip.
        """
        candidates = [i for i, x in enumerate(self.limits) if x.unit == unit]
        if not candidates:
            return
        if limit is not None:
            exact = [i for i in candidates if self.limits[i].capacity == limit]
            candidates = exact or candidates
        i = min(candidates, key=lambda j: self.limits[j].period)
        old = self._caps[i]
        self._caps[i] = remaining if old is None else min(old, remaining)
        if enabled():
            emit(LIMITER_SYNCED, source=self.name, remaining=remaining, reset=reset_after)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, limits={list(self.limits)!r})"


def _first(item: tuple[float, list[float]]) -> float:
    return item[0]
