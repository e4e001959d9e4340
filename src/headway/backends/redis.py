"""Limits and circuit state shared by every worker through Redis (extra ``headway[redis]``).

One :class:`RedisBackend` per process, pointed at the Redis all workers share::

    backend = RedisBackend("redis://redis.internal:6379/0")
    limiter = backend.limiter("openai", rpm=500, tpm=90_000)
    reservation = await limiter.reserve(requests=1, tokens=1200)
    await asyncio.sleep(reservation.delay)      # or: async with limiter.slot(1, 1200): ...
    ...
    reservation.settle(actual_tokens)           # refund or charge the difference

How it works: every reservation is one Lua script, one round trip, atomic in Redis, timed
by the server's ``TIME`` (worker clocks never matter). All of a limiter's limits —
requests and tokens, per minute and per day — are reserved in the same script, all or
nothing. Keys expire by themselves once their bucket would be full again. Settles,
refunds, pauses and syncs from rate-limit headers ride along with the next reservation
(or :meth:`RedisLimiter.flush`), so they cost no extra round trip.

When Redis is unreachable every call still returns within ``timeout``: with
``on_backend_error="local"`` (the default) the limiter keeps a local limit at a share of
the global rate (``local_share``; ``"auto"`` = one over the number of live workers seen
before the outage), ``"fail"`` raises :class:`~headway.errors.BackendUnavailableError`,
``"allow"`` lets calls through. The outage is logged once; a call probes Redis again
every ``retry_interval`` seconds and the shared state resumes as soon as it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from headway._clock import Clock, resolve_clock
from headway._secrets import redact_url
from headway.backends import _scripts
from headway.backends._base import Limit, limits_of, llm_limits
from headway.backends._model import LocalBuckets
from headway.errors import (
    BackendUnavailableError,
    ConfigurationError,
    RateLimitExceededError,
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
from headway.limits import Reservation

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "BACKEND_RECOVERED",
    "BACKEND_UNAVAILABLE",
    "OnBackendError",
    "RedisBackend",
    "RedisBackendConfig",
    "RedisBreakerState",
    "RedisLimiter",
    "RedisReservation",
]

#: Event: Redis stopped answering (once per outage, WARNING). Data: error, mode.
BACKEND_UNAVAILABLE = "backend.unavailable"
#: Event: Redis answers again; shared state resumed (INFO). Data: outage (seconds).
BACKEND_RECOVERED = "backend.recovered"

OnBackendError = Literal["local", "fail", "allow"]

_SHARED = 0
_LOCAL = 1
_ALLOW = 2


class RedisBackendConfig(BaseModel):
    """Options of :class:`RedisBackend` (validated; see its docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str = "headway:"
    timeout: float = Field(default=0.5, gt=0)
    on_backend_error: OnBackendError = "local"
    local_share: float | Literal["auto"] = "auto"
    retry_interval: float = Field(default=1.0, gt=0)
    presence_window: float = Field(default=10.0, gt=0)
    breaker_refresh: float = Field(default=0.25, gt=0)
    trial_lease: float = Field(default=30.0, gt=0)

    def model_post_init(self, __context: Any) -> None:
        share = self.local_share
        if share != "auto" and not 0 < float(share) <= 1:
            raise ConfigurationError(
                f"local_share must be 'auto' or in (0, 1], not {share!r}: the share of the "
                "global rate one worker may use while Redis is unreachable"
            )


def _first(item: tuple[float, list[float]]) -> float:
    return item[0]


#: Most callers sent in one round trip.
_MAX_BATCH = 256
#: What a queued caller is told when it is its turn to lead the next round trip.
_LEAD: Any = object()


@dataclass(slots=True)
class _Request:
    amounts: list[float]
    max_wait: float | None
    requests: float
    tokens: float
    future: asyncio.Future[Any] | None = None


def _outcome(got: Any) -> RedisReservation:
    if isinstance(got, BaseException):
        raise got
    return got  # type: ignore[no-any-return]


class _Unavailable(BackendUnavailableError):
    """A Redis call failed (internally: the caller falls back)."""


class RedisBackend:
    """Shared limiter and breaker state in Redis for every worker of a fleet.

    Args:
        url_or_client: a ``redis://`` URL (the backend opens and closes its client) or a
            ``redis.asyncio.Redis`` client (used as given, never closed by headway).
        prefix: the start of every key headway writes.
        timeout: the longest any one Redis call may take, in seconds.
        on_backend_error: during an outage, ``"local"`` limits in process at
            ``local_share`` of the global rate, ``"fail"`` raises
            :class:`~headway.errors.BackendUnavailableError`, ``"allow"`` lets calls through.
        local_share: share of the global rate a worker keeps in an outage; ``"auto"``
            is one over the number of workers seen live in the last ``presence_window`` s.
        retry_interval: how often (s) a call probes Redis during an outage.
        presence_window: how long (s) a worker counts as live after its last reservation.
        breaker_refresh: how often (s) shared circuit states are re-read.
        trial_lease: the longest (s) one half-open trial call may hold its permit.
        clock: the clock timing outages and local fallbacks.

    >>> backend = RedisBackend("redis://:secret@localhost:6379/0", prefix="demo:")
    >>> backend
    RedisBackend('redis://***@localhost:6379/0', prefix='demo:', on_backend_error='local')
    """

    def __init__(
        self,
        url_or_client: str | Redis,
        *,
        prefix: str = "headway:",
        timeout: float = 0.5,
        on_backend_error: OnBackendError = "local",
        local_share: float | Literal["auto"] = "auto",
        retry_interval: float = 1.0,
        presence_window: float = 10.0,
        breaker_refresh: float = 0.25,
        trial_lease: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self.config = RedisBackendConfig(
            prefix=prefix,
            timeout=timeout,
            on_backend_error=on_backend_error,
            local_share=local_share,
            retry_interval=retry_interval,
            presence_window=presence_window,
            breaker_refresh=breaker_refresh,
            trial_lease=trial_lease,
        )
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        if isinstance(url_or_client, str):
            self.client: Redis = aioredis.Redis.from_url(
                url_or_client,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
            self._owns_client = True
            self._where = redact_url(url_or_client)
        else:
            self.client = url_or_client
            self._owns_client = False
            self._where = repr(url_or_client)
        self.clock = resolve_clock(clock)
        self.prefix = prefix
        #: A random id naming this worker in Redis (its presence entry, its trial leases).
        self.worker_id = uuid.uuid4().hex
        #: Workers seen live at the last reservation (this one included).
        self.workers = 1
        #: How many outages this backend has gone through.
        self.outages = 0
        self._reserve: AsyncScript = self.client.register_script(_scripts.RESERVE)
        self._br_read: AsyncScript = self.client.register_script(_scripts.BREAKER_READ)
        self._br_open: AsyncScript = self.client.register_script(_scripts.BREAKER_OPEN)
        self._br_trial: AsyncScript = self.client.register_script(_scripts.BREAKER_TRIAL)
        self._br_release: AsyncScript = self.client.register_script(_scripts.BREAKER_RELEASE)
        self._down = False
        self._down_since = 0.0
        self._retry_at = 0.0
        self._probing = False
        self._limiters: dict[str, RedisLimiter] = {}
        self._breakers: dict[str, RedisBreakerState] = {}
        self._shared_states: dict[str, SharedCircuitState[RedisBreakerState]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False

    # -- health -----------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False during an outage (between a failed call and the next answer)."""
        return not self._down

    def _may_call(self) -> bool:
        """Whether to call Redis now; during an outage one caller probes per interval."""
        if not self._down:
            return True
        if self._probing or self.clock.now() < self._retry_at:
            return False
        self._probing = True
        return True

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = self.clock.now() + self.config.retry_interval
        if self._down:
            return
        self._down = True
        self._down_since = self.clock.now()
        self.outages += 1
        emit(
            BACKEND_UNAVAILABLE,
            source=self._where,
            level=logging.WARNING,
            error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            mode=self.config.on_backend_error,
            retry_interval=self.config.retry_interval,
        )

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            emit(
                BACKEND_RECOVERED,
                source=self._where,
                level=logging.INFO,
                outage=round(self.clock.now() - self._down_since, 3),
            )

    async def _eval(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``script`` within ``timeout``; any trouble marks an outage and raises."""
        try:
            async with asyncio.timeout(self.config.timeout):
                result = await script(keys=keys, args=args)
        except self._errors as exc:
            self._probing = False
            self._failed(exc)
            raise _Unavailable(
                f"Redis at {self._where} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        except BaseException:
            self._probing = False
            raise
        self._probing = False
        self._recovered()
        return result

    def _unavailable(self, what: str) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"Redis at {self._where} is unreachable, so {what} cannot be shared "
            "(on_backend_error='fail'); it is retried every "
            f"{self.config.retry_interval:g}s. Use on_backend_error='local' to keep "
            "calling at a share of the global rate during an outage."
        )

    def local_share(self) -> float:
        """The share of a global rate this worker keeps during an outage."""
        share = self.config.local_share
        if share == "auto":
            return 1.0 / max(1, self.workers)
        return float(share)

    async def ping(self) -> bool:
        """Whether Redis answers within ``timeout`` (and mark it up or down)."""
        try:
            async with asyncio.timeout(self.config.timeout):
                await self.client.ping()
        except self._errors as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    def _ensure_refresher(self) -> None:
        if self._task is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(
            run_refresher(self, self._wake), name="headway-redis-breaker-refresher"
        )

    def _wake_refresher(self) -> None:
        self._ensure_refresher()
        if self._wake is not None:
            self._wake.set()

    # -- factories --------------------------------------------------------------------

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
    ) -> RedisLimiter:
        """The shared limiter ``name``: the same object for the same name in this process.

        Give ``limits`` or the LLM shorthands (``rpm``, ``tpm``, ``rpd``, ``tpd``, ``rps``,
        ``burst``; see :func:`~headway.backends.llm_limits`). Every worker must use the
        same name and the same limits to share them.
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
        lim = RedisLimiter(self, name, specs, max_wait=max_wait, clock=clock)
        self._limiters[name] = lim
        return lim

    def share(self, limiter: Any, name: str, *, max_wait: float | None = None) -> RedisLimiter:
        """A shared limiter with the limits of an in-memory one (``MultiLimiter``/bucket).

        >>> backend = RedisBackend("redis://localhost")
        >>> from headway.backends import Limit
        >>> class Bucket:  # anything with rate, period, max_tokens (and unit)
        ...     rate, period, max_tokens, unit = 60.0, 60.0, 10.0, "requests"
        >>> backend.share(Bucket(), "api").limits
        (Limit(rate=60.0, period=60.0, burst=10.0, unit='requests'),)
        """
        return self.limiter(name, limits=limits_of(limiter), max_wait=max_wait)

    def breaker_state(
        self, name: str, *, half_open_max_calls: int = 1
    ) -> SharedCircuitState[RedisBreakerState]:
        """The circuit state ``name`` shared by every worker's breaker of that name.

        ``CircuitBreaker(name=..., backend=backend)`` calls this. Give
        ``half_open_max_calls`` (the cluster-wide number of trial calls) by calling it
        once yourself before building the breakers, if it is not 1.
        """
        shared = self._shared_states.get(name)
        if shared is None:
            store = RedisBreakerState(self, name, half_open_max_calls=half_open_max_calls)
            self._breakers[name] = store
            shared = SharedCircuitState(store, self.clock, name)
            self._shared_states[name] = shared
        return shared

    def key(self, *parts: str) -> str:
        """A key under this backend's prefix."""
        return self.prefix + ":".join(parts)

    # -- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the breaker refresher, flush what limiters owe, close an owned client."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            # The refresher stops at its next turn (_closed); the cancel makes that now.
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        for lim in self._limiters.values():
            if lim._has_pending() and not self._down:
                with contextlib.suppress(BackendUnavailableError):
                    await lim.flush()
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> RedisBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisBackend({self._where!r}, prefix={self.prefix!r}, "
            f"on_backend_error={self.config.on_backend_error!r})"
        )


class RedisReservation(Reservation):
    """What :meth:`RedisLimiter.reserve` took: a ``headway.limits.Reservation``.

    Attributes:
        delay: seconds the caller must wait before proceeding.
        requests, tokens: what is reserved (``tokens`` changes with :meth:`settle`).
        shared: False when taken from the local fallback during a Redis outage.
    """

    __slots__ = ("_at", "_limiter", "_mark", "_source", "_state")

    def __init__(
        self,
        limiter: RedisLimiter,
        source: int,
        state: LocalBuckets | None,
        delay: float,
        requests: float,
        tokens: float,
        at: float = 0.0,
    ) -> None:
        # Reservation's own __init__ is for in-memory buckets: set every field here.
        self._at = at  # admission time: server ms (shared) or clock seconds (local)
        self._mark = limiter._shift  # pauses after this push the wait back
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
        """Whether the reservation was taken from the shared (Redis) limits."""
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
            self._limiter._settle(self._source, self._state, -diff)

    def cancel(self) -> None:
        """Give everything back (idempotent); used when the waiter is cancelled.

        A limit gets the units back only where this reservation is still last in its
        queue (a newcomer must not take the slot of a waiter still queued); cancelling
        several waiters gives back all of them when they are cancelled together.
        """
        if self._source < 0:
            return
        source, self._source = self._source, -1
        self._limiter._cancel(source, self._state, self._at, self.requests, self.tokens)

    async def wait(self) -> None:
        """Sleep until admitted (longer if the limiter is paused meanwhile); cancel if cancelled."""
        limiter = self._limiter
        if self._source < 0 or (self.delay <= 0.0 and limiter._shift == self._mark):
            return
        clock = limiter.clock
        try:
            mark = self._mark
            await clock.sleep(self.delay)
            while limiter._shift > mark:
                extra, mark = limiter._shift - mark, limiter._shift
                await clock.sleep(extra)
        except BaseException:
            self.cancel()
            raise

    def __repr__(self) -> str:
        return (
            f"RedisReservation(delay={self.delay:.6f}, requests={self.requests:g}, "
            f"tokens={self.tokens:g}, shared={self.shared})"
        )


class _Slot:
    __slots__ = ("_limiter", "_requests", "_tokens")

    def __init__(self, limiter: RedisLimiter, requests: float, tokens: float) -> None:
        self._limiter = limiter
        self._requests = requests
        self._tokens = tokens

    async def __aenter__(self) -> RedisReservation:
        res = await self._limiter.reserve(self._requests, self._tokens)
        await res.wait()
        return res

    async def __aexit__(self, *exc: object) -> None:
        return None


class RedisLimiter:
    """Several rate limits shared through Redis, reserved atomically: all or nothing.

    Satisfies the ``headway.limits.Limiter`` protocol (``reserve``, ``pause_until``,
    ``sync``), so it drops into a ``Policy`` or an ``Endpoint`` where an in-memory
    ``MultiLimiter`` would go. Within a process, reservations reach Redis one at a time
    in arrival order (FIFO); across processes, in the order Redis runs them. Waits never
    shrink for later callers, so a large request is never starved by small ones.

    Build it with :meth:`RedisBackend.limiter`.
    """

    def __init__(
        self,
        backend: RedisBackend,
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
        tag = "{" + name + "}"
        self._keys = [backend.key("rl", tag, x.unit, f"{x.period:g}") for x in self.limits]
        self._keys.append(backend.key("workers", tag))
        self._tokens = tuple(x.unit == "tokens" for x in self.limits)
        self._static = [(repr(x.per_second / 1000.0), repr(x.capacity)) for x in self.limits]
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
        self._queue: deque[_Request] = deque()
        self._local: LocalBuckets | None = None
        self._local_outage = -1

    # -- reserving --------------------------------------------------------------------

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> RedisReservation:
        """Reserve ``requests`` and ``tokens`` from every limit now; wait ``delay`` after.

        Raises :class:`~headway.errors.RequestTooLargeError` if a limit can never hold
        the amount, :class:`~headway.errors.RateLimitExceededError` if the wait would
        exceed ``max_wait`` (nothing is reserved then), and, during a Redis outage with
        ``on_backend_error="fail"``, :class:`~headway.errors.BackendUnavailableError`.

        Callers that arrive while a round trip is in flight queue here and go together,
        in arrival order, in the next one: one round trip serves them all.
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
        backend = self.backend
        if (
            backend._down
            and not self._busy
            and (backend._probing or self.clock.now() < backend._retry_at)
        ):  # an outage: no round trip, unless a probe is due
            return _outcome(self._reserve_local(amounts, max_wait, requests, tokens))
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
        elif isinstance(got, RedisReservation):
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

    async def _lead(self, req: _Request) -> Any:
        """Send ``req`` and every caller queued behind it in one round trip."""
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
                with contextlib.suppress(_Unavailable):
                    outcomes = await self._reserve_shared(batch)
        except BaseException:
            # cancelled mid round trip: the others go again (anything Redis took for them
            # is lost: too little used, never too much)
            for other in reversed(batch[1:]):
                queue.appendleft(other)
            self._hand_off()
            raise
        if outcomes is None:
            outcomes = [
                self._reserve_local(r.amounts, r.max_wait, r.requests, r.tokens) for r in batch
            ]
        for other, got in zip(batch[1:], outcomes[1:], strict=True):
            assert other.future is not None
            if other.future.done():  # cancelled meanwhile: give its units back
                if isinstance(got, RedisReservation):
                    got.cancel()
            else:
                other.future.set_result(got)
        self._hand_off()
        return outcomes[0]

    async def _reserve_shared(self, batch: list[_Request]) -> list[Any]:
        backend = self.backend
        now = self.clock.now()
        pause_ms = 0.0
        if self._pause_until > now and self._pause_until > self._pause_sent:
            pause_ms = (self._pause_until - now) * 1000.0
            self._pause_sent = self._pause_until
        n = len(self.limits)
        args: list[Any] = [
            n,
            len(batch),
            pause_ms,
            backend.worker_id,
            backend.config.presence_window * 1000.0,
            "",
        ]
        pending, caps = self._pending, self._caps
        for i in range(n):
            rate, cap = self._static[i]
            level_cap = caps[i]
            args += [rate, cap, pending[i], "" if level_cap is None else level_cap]
            pending[i] = 0.0
            caps[i] = None
        cancels = self._cancels
        args.append(len(cancels))
        if cancels:
            cancels.sort(key=_first, reverse=True)
            for at, back in cancels:
                args.append(at)
                args += back
            self._cancels = []
        for r in batch:
            args.append(-1 if r.max_wait is None else r.max_wait * 1000.0)
            args += r.amounts
        result = await backend._eval(backend._reserve, self._keys, args)
        backend.workers = int(result[0])
        shift = float(result[1]) / 1000.0
        server_now = float(result[2])
        seen = self._seen_shift
        if seen is not None and shift > seen:
            # what other workers paused (our own pause shifted our waiters already)
            extra = shift - seen - (self._own_shift if pause_ms else 0.0)
            if extra > 0:
                self._shift += extra
        if pause_ms:
            self._own_shift = 0.0
        self._seen_shift = shift
        outcomes: list[Any] = []
        for j, r in enumerate(batch):
            wait_ms = float(result[4 + 2 * j])
            wait = wait_ms / 1000.0
            if int(result[3 + 2 * j]):
                outcomes.append(
                    self._admitted(_SHARED, None, wait, r.requests, r.tokens, server_now + wait_ms)
                )
            else:
                outcomes.append(self._rejection(r.amounts, wait, r.max_wait))
        return outcomes

    def _reserve_local(
        self, amounts: list[float], max_wait: float | None, requests: float, tokens: float
    ) -> RedisReservation | BaseException:
        mode = self.backend.config.on_backend_error
        if mode == "fail":
            return self.backend._unavailable(f"limiter {self.name!r}")
        if mode == "allow":
            return RedisReservation(self, _ALLOW, None, 0.0, requests, tokens)
        local = self._local
        if local is None or self._local_outage != self.backend.outages:
            share = self.backend.local_share()
            local = LocalBuckets(
                [(x.per_second * share, max(1.0, x.capacity * share)) for x in self.limits],
                clock=self.clock,
            )
            self._local = local
            self._local_outage = self.backend.outages
        now = self.clock.now()
        caps = self._caps
        level_caps = None
        if any(c is not None for c in caps):
            level_caps, self._caps = caps, [None] * len(caps)
        ok, wait = local.reserve(
            amounts,
            max_wait=max_wait,
            pause=max(0.0, self._pause_until - now),
            level_caps=level_caps,
        )
        if not ok:
            return self._rejection(amounts, wait, max_wait)
        return self._admitted(_LOCAL, local, wait, requests, tokens, now + wait)

    def _admitted(
        self,
        source: int,
        state: LocalBuckets | None,
        wait: float,
        requests: float,
        tokens: float,
        at: float,
    ) -> RedisReservation:
        floor = self._pause_until - self.clock.now()
        if floor > wait:
            wait = floor
        if wait > 0 and enabled():
            emit(LIMITER_WAIT, source=self.name, requests=requests, tokens=tokens, wait=wait)
        return RedisReservation(self, source, state, wait, requests, tokens, at)

    def _rejection(
        self, amounts: list[float], wait: float, max_wait: float | None
    ) -> RateLimitExceededError:
        if enabled():
            emit(LIMITER_REJECTED, source=self.name, tokens=amounts, wait=wait, max_wait=max_wait)
        return RateLimitExceededError(
            f"limiter {self.name!r}: admission in {wait:.3f}s would exceed "
            f"max_wait={max_wait or 0.0:g}s; nothing was reserved",
            retry_after=wait,
        )

    def _settle(self, source: int, state: LocalBuckets | None, tokens: float) -> None:
        deltas = [tokens if t else 0.0 for t in self._tokens]
        if source == _SHARED:
            pending = self._pending
            for i, d in enumerate(deltas):
                pending[i] += d
        elif source == _LOCAL and state is not None:
            state.adjust(deltas)

    def _cancel(
        self, source: int, state: LocalBuckets | None, at: float, requests: float, tokens: float
    ) -> None:
        back = [tokens if t else requests for t in self._tokens]
        if source == _SHARED:
            self._cancels.append((at, back))
        elif source == _LOCAL and state is not None:
            state.cancel(at, back)

    def _has_pending(self) -> bool:
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
        """Send pending settles, refunds, pauses and syncs to Redis now.

        They otherwise ride along with this process's next reservation.
        """
        await self.reserve(0.0, 0.0)

    # -- steering from server signals -------------------------------------------------

    def pause_until(self, when: float) -> None:
        """Admit nobody before clock time ``when`` (after a 429 with Retry-After).

        Applies in this process at once and for every worker with the next round trip
        (call :meth:`flush` to publish it now). Later reservations queue behind it.
        """
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
        return f"RedisLimiter({self.name!r}, limits={list(self.limits)!r})"


from headway.backends._breaker import (  # noqa: E402
    RedisBreakerState,
    SharedCircuitState,
    run_refresher,
)
