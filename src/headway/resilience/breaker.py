"""The circuit breaker: stop calling a service that is down, and find out when it is back.

A :class:`CircuitBreaker` is ``CLOSED`` while calls go well. When too many fail it
trips ``OPEN`` and rejects calls at once with
:class:`~headway.errors.CircuitBreakerOpenError` (``retry_after`` says when to come
back), without calling. After ``recovery_time`` it lets ``half_open_max_calls`` trial
calls through (``HALF_OPEN``): ``success_threshold`` successes close it again, one
failure re-opens it.

What trips it:

* **consecutive failures** (default): ``failure_threshold`` failures in a row;
* **failure ratio**: with ``failure_rate_threshold`` set, the share of failures among
  the calls of the last ``window`` seconds, once at least ``minimum_calls`` were made;
* **slow calls**: with ``slow_call_duration`` set, the share of calls slower than that
  (successful or not) over the same window reaching ``slow_call_rate_threshold``.

What counts as a failure: any exception, except

* ``excluded_exceptions`` and cancellation: neither success nor failure (a trial
  call's permit is freed for the next trial);
* headway's own local errors (a local limiter refusing to wait, a shut-down executor,
  another open breaker, a configuration error): they say nothing about the service;
* errors ``failure_predicate(exc)`` says are not failures: by default
  (:func:`default_failure_predicate`) 4xx client errors and 429s, since a service that
  answers "bad request" or "slow down" is up. These count as successes.

>>> import asyncio
>>> from headway import ManualClock
>>> clock = ManualClock()
>>> breaker = CircuitBreaker(failure_threshold=2, recovery_time=10, clock=clock)
>>> async def boom() -> None:
...     raise ConnectionError("down")
>>> async def main() -> list[str]:
...     seen = []
...     for _ in range(3):
...         try:
...             await breaker.execute(boom)
...         except Exception as exc:
...             seen.append(type(exc).__name__)
...     return seen
>>> asyncio.run(main())
['ConnectionError', 'ConnectionError', 'CircuitBreakerOpenError']
>>> breaker.state
<CircuitState.OPEN: 'open'>
>>> clock.advance(10)
>>> breaker.state
<CircuitState.HALF_OPEN: 'half_open'>
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar

from headway import events
from headway._clock import LOOP_CLOCK, Clock, resolve_clock
from headway.errors import (
    APIClientError,
    APIConnectionError,
    APITimeoutError,
    CircuitBreakerOpenError,
    ConfigurationError,
    HeadwayError,
)
from headway.events import (
    BREAKER_CALL_RECORDED,
    BREAKER_REJECTED,
    BREAKER_STATE_CHANGED,
    GLOBAL_LISTENERS,
    EventListener,
    emit,
    enabled,
    publish,
)

__all__ = [
    "BreakerBackend",
    "BreakerPermit",
    "BreakerStore",
    "BreakerTicket",
    "CircuitBreaker",
    "CircuitState",
    "default_failure_predicate",
]

P = ParamSpec("P")
T = TypeVar("T")

#: Number of buckets the failure-ratio window is kept in.
WINDOW_BUCKETS = 20

#: How long a shared circuit opened by ``force_open()`` (no seconds) is published for.
FORCED_OPEN_SECONDS = 86_400.0


class CircuitState(enum.StrEnum):
    """The three states of a :class:`CircuitBreaker` (equal to their string values)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Members as module constants: attribute access on an Enum class is slow on the hot path.
_CLOSED = CircuitState.CLOSED
_OPEN = CircuitState.OPEN
_HALF_OPEN = CircuitState.HALF_OPEN


def default_failure_predicate(exc: BaseException) -> bool:
    """Whether ``exc`` counts as a breaker failure by default.

    Client errors (any :class:`~headway.errors.APIClientError` with a status below 500,
    429 included) are not failures: the service answered. Connection errors, timeouts,
    5xx and anything else are.

    >>> from headway.errors import BadRequestError, RateLimitError, ServerError
    >>> default_failure_predicate(BadRequestError("bad", status_code=400))
    False
    >>> default_failure_predicate(RateLimitError("slow down", status_code=429))
    False
    >>> default_failure_predicate(ServerError("oops", status_code=503))
    True
    """
    if isinstance(exc, APIClientError) and not isinstance(
        exc, APIConnectionError | APITimeoutError
    ):
        code = exc.status_code
        return code is None or code >= 500
    return True


#: The methods a pipeline calls: replacing one on an instance (a mock) turns
#: ``closed_ticket`` off, so that the pipeline calls them.
_PIPELINE_METHODS = ("try_enter", "record", "release", "acquire")

# Outcome of a finished call, as the state machine sees it.
_SUCCESS = 0
_FAILURE = 1
_IGNORED = 2


# The records below are plain ``__slots__`` classes, not dataclasses: building a dataclass
# compiles its generated methods at import, a cost ``headway run`` pays before its first
# request.


class _Bucket:
    __slots__ = ("calls", "failures", "slow", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.calls = 0
        self.failures = 0
        self.slow = 0


class _Window:
    """Call outcomes of the last ``span`` seconds, in ``WINDOW_BUCKETS`` time buckets."""

    __slots__ = ("buckets", "calls", "failures", "slow", "span", "width")

    def __init__(self, span: float, width: float) -> None:
        self.span = span
        self.width = width
        self.buckets: deque[_Bucket] = deque()
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        self.evict(now)
        buckets = self.buckets
        if buckets and now < buckets[-1].start + self.width:
            bucket = buckets[-1]
        else:
            bucket = _Bucket(math.floor(now / self.width) * self.width)
            buckets.append(bucket)
        bucket.calls += 1
        self.calls += 1
        if failed:
            bucket.failures += 1
            self.failures += 1
        if slow:
            bucket.slow += 1
            self.slow += 1

    def evict(self, now: float) -> None:
        horizon = now - self.span
        buckets = self.buckets
        while buckets and buckets[0].start + self.width <= horizon:
            old = buckets.popleft()
            self.calls -= old.calls
            self.failures -= old.failures
            self.slow -= old.slow

    def clear(self) -> None:
        self.buckets.clear()
        self.calls = self.failures = self.slow = 0


class BreakerStore(Protocol):
    """Circuit state kept outside the breaker, shared by the breakers of one name.

    A :class:`CircuitBreaker` built with ``backend=`` keeps its failure counts, and
    decides every call, on its own; the circuit itself lives in the store. The breaker
    calls these operations:

    * ``open_for()`` before deciding (the shared view: a circuit opened or closed by
      another worker is adopted);
    * ``publish_open(seconds)`` when it opens (``force_open()`` without seconds
      publishes :data:`FORCED_OPEN_SECONDS`) and ``publish_closed()`` when it closes;
    * ``try_trial()`` for a half-open trial call (one per breaker at a time; the store
      caps them across breakers) and ``release_trial()`` when a trial ends without
      closing or re-opening the circuit.

    :class:`headway.backends.MemoryBreakerState` (one process) and
    :class:`headway.backends.RedisBreakerState` (every worker) implement it. Without a
    backend the state stays in the breaker and no store is consulted.
    """

    def open_for(self) -> float | None:
        """Seconds the circuit stays open (``<= 0``: trial time); None: closed."""
        ...

    def publish_open(self, recovery_time: float) -> None:
        """Open the circuit for everyone for ``recovery_time`` (> 0) seconds."""
        ...

    def publish_closed(self) -> None:
        """Close the circuit for everyone."""
        ...

    def try_trial(self) -> bool:
        """Take a half-open trial permit (False: none free, or not trial time)."""
        ...

    def release_trial(self) -> None:
        """Give back a trial permit taken by :meth:`try_trial`."""
        ...


class BreakerBackend(Protocol):
    """A backend that can hold circuit state (``CircuitBreaker(backend=...)``)."""

    def breaker_store(self, name: str, *, half_open_max_calls: int = 1) -> BreakerStore:
        """The store of the circuit ``name``, shared by every breaker of that name."""
        ...


class _BreakerState:
    """Everything about a breaker that changes, as this breaker sees it."""

    __slots__ = (
        "consecutive_failures",
        "forced",
        "generation",
        "open_until",
        "state",
        "trial_successes",
        "trials_in_flight",
        "window",
    )

    def __init__(self) -> None:
        self.state: CircuitState = _CLOSED
        self.generation = 1  # bumped at every transition; permits of older ones are ignored
        self.open_until = 0.0  # OPEN: when trial calls may start
        self.forced = False  # opened by force_open(): only reset() closes it
        self.consecutive_failures = 0
        self.trials_in_flight = 0
        self.trial_successes = 0
        self.window: _Window | None = None


class BreakerPermit:
    """Leave to make one call through a :class:`CircuitBreaker`; report how it went.

    Exactly one report counts: :meth:`record_success`, :meth:`record_failure` or
    :meth:`release` (the call was cancelled or is not to be judged); later ones are
    ignored. As a (sync) context manager it reports the block's outcome itself.

    Attributes:
        trial: whether this is a half-open trial call.
        started: the clock time the permit was granted (0.0 when durations are not
            measured).
    """

    __slots__ = ("_breaker", "_done", "_generation", "started", "trial")

    def __init__(
        self, breaker: CircuitBreaker, generation: int, trial: bool, started: float
    ) -> None:
        self._breaker = breaker
        self._generation = generation
        self.trial = trial
        self.started = started
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the outcome was reported (or the permit released)."""
        return self._done

    def record_success(self, duration: float | None = None) -> None:
        """The call succeeded, after ``duration`` seconds (default: measured)."""
        if not self._done:
            self._done = True
            self._breaker._finish(self, _SUCCESS, duration)

    def record_failure(
        self, exc: BaseException | None = None, duration: float | None = None
    ) -> None:
        """The call raised ``exc``; the breaker decides whether that is a failure.

        Excluded exceptions and cancellation release the permit, errors the failure
        predicate rejects count as successes, the rest as failures. ``exc=None`` is a
        plain failure.
        """
        if not self._done:
            self._done = True
            breaker = self._breaker
            outcome = _FAILURE if exc is None else breaker._classify(exc)
            breaker._finish(self, outcome, duration)

    def release(self) -> None:
        """Give the permit back without a verdict (cancelled, or excluded)."""
        if not self._done:
            self._done = True
            self._breaker._finish(self, _IGNORED, None)

    def __enter__(self) -> BreakerPermit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.record_success()
        else:
            self.record_failure(exc)

    def __repr__(self) -> str:
        kind = "trial" if self.trial else "normal"
        return f"BreakerPermit({kind}, done={self._done})"


#: What :meth:`CircuitBreaker.try_enter` hands out: a permit, or a closed breaker's
#: generation number (no object per call).
BreakerTicket = BreakerPermit | int

# The permits of ``async with breaker:`` blocks, innermost first, per task context.
_GUARDS: ContextVar[tuple[BreakerPermit, Any] | None] = ContextVar(
    "headway_breaker_guards", default=None
)


class CircuitBreaker:
    """Stop calling a failing service; let a few trial calls find out when it is back.

    Args:
        failure_threshold: consecutive failures that trip a closed breaker (used when
            ``failure_rate_threshold`` is ``None``).
        recovery_time: seconds to stay open before trial calls are let through.
        half_open_max_calls: trial calls allowed in flight at once while half-open.
        success_threshold: trial successes needed to close again.
        excluded_exceptions: exception types that are neither success nor failure.
        failure_predicate: ``predicate(exc) -> bool``, whether an exception is a failure
            (``False`` counts as a success). Default: :func:`default_failure_predicate`.
        name: the breaker's name, in errors and events.
        clock: the clock all times are read from.
        failure_rate_threshold: trip when this share (0 < x <= 1) of the calls in the
            last ``window`` seconds failed, once ``minimum_calls`` were made there.
        window: seconds the failure and slow-call ratios look back.
        minimum_calls: calls needed in the window before a ratio can trip the breaker.
        slow_call_duration: a call slower than this (seconds) is slow. A slow trial call
            re-opens a half-open breaker.
        slow_call_rate_threshold: trip when this share of the window's calls were slow.
        listeners: event listeners for this breaker's events (state changes at INFO,
            WARNING when opening; rejections at DEBUG). Each event's ``data`` has
            ``old``, ``new`` and ``reason`` for state changes.
        backend: where the circuit lives. ``None`` (default): in this breaker. A
            :class:`BreakerBackend` (``MemoryBackend``, ``RedisBackend``) shares it
            through the :class:`BreakerStore` of ``name`` among every breaker of that
            name; counts stay per breaker (see :class:`BreakerStore`).

    The low-level API, for code that needs the steps apart (the Policy)::

        permit = breaker.acquire()          # raises CircuitBreakerOpenError
        try:
            result = await call()
        except BaseException as exc:
            permit.record_failure(exc)      # classifies: failure / success / ignored
            raise
        permit.record_success()

    A pipeline's form is :meth:`try_enter` / :meth:`record` with a ticket, and
    :attr:`closed_ticket` its fast path: the ticket :meth:`try_enter` would give (an
    ``int`` >= 1) while that is all it would do, else ``None``: the breaker is closed, counts
    consecutive failures only and has none, has no listeners of its own, no
    ``backend``, and nothing replaced its methods on the instance (a mock). While it
    still equals a call's ticket, :meth:`record` of that call's success would change
    nothing but the per-call events of global listeners, and may be left out.

    >>> import asyncio
    >>> breaker = CircuitBreaker(failure_threshold=3, name="api")
    >>> async def ok() -> int:
    ...     return 42
    >>> asyncio.run(breaker.execute(ok))
    42
    >>> breaker.force_open()
    >>> try:
    ...     breaker.acquire()
    ... except CircuitBreakerOpenError as exc:
    ...     print(str(exc).startswith("Circuit breaker is open"))
    True
    >>> breaker.reset()
    >>> breaker.state.value
    'closed'
    """

    __slots__ = (
        "__dict__",  # instances stay mockable: patch.object(obj, "method", ...)
        "_clock",
        "_fast",
        "_lean",
        "_listeners",
        "_s",
        "_store",
        "closed_ticket",
        "excluded_exceptions",
        "failure_predicate",
        "failure_rate_threshold",
        "failure_threshold",
        "half_open_max_calls",
        "minimum_calls",
        "name",
        "recovery_time",
        "slow_call_duration",
        "slow_call_rate_threshold",
        "success_threshold",
        "window",
    )

    def __init__(
        self,
        failure_threshold: int = 5,
        recovery_time: float = 30.0,
        *,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        excluded_exceptions: Iterable[type[BaseException]] = (),
        failure_predicate: Callable[[BaseException], bool] | None = None,
        name: str | None = None,
        clock: Clock | None = None,
        failure_rate_threshold: float | None = None,
        window: float = 60.0,
        minimum_calls: int = 10,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        listeners: Iterable[EventListener] = (),
        backend: BreakerBackend | None = None,
    ) -> None:
        _positive_int("failure_threshold", failure_threshold)
        _positive_int("half_open_max_calls", half_open_max_calls)
        _positive_int("success_threshold", success_threshold)
        _positive_int("minimum_calls", minimum_calls)
        if not recovery_time >= 0:
            raise ConfigurationError(f"recovery_time must be >= 0 seconds, got {recovery_time!r}")
        if not window > 0:
            raise ConfigurationError(f"window must be > 0 seconds, got {window!r}")
        if failure_rate_threshold is not None:
            _ratio("failure_rate_threshold", failure_rate_threshold)
        _ratio("slow_call_rate_threshold", slow_call_rate_threshold)
        if slow_call_duration is not None and not slow_call_duration > 0:
            raise ConfigurationError(
                f"slow_call_duration must be > 0 seconds, got {slow_call_duration!r}"
            )
        self.failure_threshold = failure_threshold
        self.recovery_time = float(recovery_time)
        self.half_open_max_calls = half_open_max_calls
        self.success_threshold = success_threshold
        self.excluded_exceptions: tuple[type[BaseException], ...] = tuple(excluded_exceptions)
        self.failure_predicate = failure_predicate or default_failure_predicate
        self.name = name
        self.failure_rate_threshold = failure_rate_threshold
        self.window = float(window)
        self.minimum_calls = minimum_calls
        self.slow_call_duration = slow_call_duration
        self.slow_call_rate_threshold = float(slow_call_rate_threshold)
        self._listeners: tuple[EventListener, ...] = tuple(listeners)
        self._clock = resolve_clock(clock)
        store: BreakerStore | None = None
        if backend is not None:
            factory = getattr(backend, "breaker_store", None)
            if factory is None:
                raise ConfigurationError(
                    f"{backend!r} cannot hold circuit state (it has no breaker_store()); "
                    "pass backend=None to keep the state in this breaker"
                )
            if not name:
                raise ConfigurationError(
                    "a breaker with a backend shares its state by name: pass name=..."
                )
            store = factory(name, half_open_max_calls=half_open_max_calls)
        self._store = store
        self._s = state = _BreakerState()
        if failure_rate_threshold is not None or slow_call_duration is not None:
            state.window = _Window(self.window, self.window / WINDOW_BUCKETS)
        # Unshared, closed and counting consecutive failures only: try_enter() needs no
        # permit.
        self._lean = (
            store is None
            and state.window is None
            and slow_call_duration is None
            and type(self).acquire is CircuitBreaker.acquire
        )
        # The same for a breaker that judges by its window (failure rate): while closed,
        # try_enter() hands out the generation, and record() adds the outcome to the
        # window without a permit object.
        self._lean_window = (
            store is None
            and state.window is not None
            and slow_call_duration is None
            and type(self).acquire is CircuitBreaker.acquire
        )
        # ... and nothing replaced the pipeline's methods: closed_ticket may stand in.
        self._fast = (
            self._lean
            and type(self).try_enter is CircuitBreaker.try_enter
            and type(self).record is CircuitBreaker.record
        )
        self.closed_ticket: int | None = None
        self._refresh_ticket()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _PIPELINE_METHODS:  # patch.object(breaker, "try_enter", ...)
            self._refresh_ticket()

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        if name in _PIPELINE_METHODS:  # the patch undone
            self._refresh_ticket()

    def _refresh_ticket(self) -> None:
        """Keep :attr:`closed_ticket` true to the state."""
        s = self._s
        fast = (
            self._fast
            and s.state is _CLOSED
            and not s.consecutive_failures
            and not self._listeners
            and self.__dict__.keys().isdisjoint(_PIPELINE_METHODS)
        )
        object.__setattr__(self, "closed_ticket", s.generation if fast else None)

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose recovery time is over is half-open)."""
        s = self._s
        if self._store is not None:
            self._sync(self._clock.now())
        if s.state is _OPEN and not s.forced:
            now = self._clock.now()
            if now >= s.open_until:
                self._transition(_HALF_OPEN, "recovery time elapsed", now)
        return s.state

    @property
    def failure_count(self) -> int:
        """Consecutive failures while closed (reset by a success and on closing)."""
        return self._s.consecutive_failures

    @property
    def retry_after(self) -> float:
        """Seconds until a call may be let through (0.0 unless open)."""
        s = self._s
        if self._store is not None:
            self._sync(self._clock.now())
        if s.state is not _OPEN:
            return 0.0
        if s.forced:
            return self.recovery_time
        return max(0.0, s.open_until - self._clock.now())

    @property
    def listeners(self) -> tuple[EventListener, ...]:
        """This breaker's own event listeners."""
        return self._listeners

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for this breaker's events (state changes, rejections)."""
        self._listeners = (*self._listeners, listener)
        self._refresh_ticket()

    def remove_listener(self, listener: EventListener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        self._listeners = tuple(x for x in self._listeners if x != listener)
        self._refresh_ticket()

    # -- calls ----------------------------------------------------------------------------
    def acquire(self) -> BreakerPermit:
        """Ask leave to make one call.

        Returns a :class:`BreakerPermit` to report the outcome with. Raises
        :class:`~headway.errors.CircuitBreakerOpenError` (without side effects on the
        call) when open, or half-open with every trial permit taken.
        """
        s = self._s
        store = self._store
        if store is not None:
            self._sync(self._clock.now())
        if s.state is _CLOSED:
            started = 0.0 if self.slow_call_duration is None else self._clock.now()
            return BreakerPermit(self, s.generation, False, started)
        now = self._clock.now()
        if s.state is _OPEN:
            if s.forced or now < s.open_until:
                raise self._rejection(now)
            self._transition(_HALF_OPEN, "recovery time elapsed", now)
        if store is None:
            if s.trials_in_flight >= self.half_open_max_calls:
                raise self._rejection(now)
        elif s.trials_in_flight > 0 or not store.try_trial():
            # One trial per breaker at a time; the store caps them across breakers.
            raise self._rejection(now)
        s.trials_in_flight += 1
        return BreakerPermit(self, s.generation, True, now)

    def try_enter(self) -> BreakerTicket:
        """Ask leave for one call without waiting: a ticket for :meth:`record`/:meth:`release`.

        The pipeline's form of :meth:`acquire`: while closed, a breaker that counts
        consecutive failures only hands out its generation number instead of a
        :class:`BreakerPermit` (no object per call). Raises
        :class:`~headway.errors.CircuitBreakerOpenError` when open.
        """
        if self._lean or self._lean_window:
            s = self._s
            if s.state is _CLOSED:
                return s.generation
        return self.acquire()

    def record(
        self,
        ticket: BreakerTicket,
        outcome: BaseException | None = None,
        duration: float | None = None,
    ) -> None:
        """Report how the call of ``ticket`` went: ``None`` for success, else its error.

        Cancellation and other non-``Exception`` outcomes give the ticket back without a
        verdict. ``duration``: the call's seconds (for slow-call judgement).
        """
        if type(ticket) is not int:
            assert isinstance(ticket, BreakerPermit)
            if outcome is None:
                ticket.record_success(duration)
            else:
                ticket.record_failure(outcome, duration)
        elif self._s.window is not None:  # a windowed breaker's closed-state ticket
            if outcome is None:
                self._closed_outcome(ticket, _SUCCESS)
            elif isinstance(outcome, Exception):
                self._closed_outcome(ticket, self._classify(outcome))
        elif outcome is None:
            s = self._s
            if s.consecutive_failures and s.generation == ticket:
                s.consecutive_failures = 0
                self._refresh_ticket()
        elif isinstance(outcome, Exception):
            self._closed_failure(ticket, outcome)
        if self._listeners or GLOBAL_LISTENERS:  # per-call events go to listeners only
            self._call_event(outcome)

    def _call_event(self, outcome: BaseException | None) -> None:
        failure = outcome is not None and self._classify(outcome) == _FAILURE
        data = {"exception": outcome, "failure": failure}
        event = events.BreakerCallRecorded(
            BREAKER_CALL_RECORDED,
            self.name,
            data,
            LOOP_CLOCK.now(),
            logging.DEBUG,
            exception=outcome,
            failure=failure,
        )
        publish(event, self._listeners)

    def release(self, ticket: BreakerTicket) -> None:
        """Give ``ticket`` back without a verdict (the call was never made)."""
        if type(ticket) is not int:
            assert isinstance(ticket, BreakerPermit)
            ticket.release()

    async def execute(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call ``await func(*args, **kwargs)`` through the breaker and record the outcome.

        Raises:
            CircuitBreakerOpenError: the breaker is open; ``func`` was not called.
        """
        ticket = self.try_enter()
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            self.record(ticket, exc)
            raise
        self.record(ticket)
        return result

    async def __aenter__(self) -> BreakerPermit:
        permit = self.acquire()
        _GUARDS.set((permit, _GUARDS.get()))
        return permit

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        top = _GUARDS.get()
        if top is None or top[0]._breaker is not self:
            raise RuntimeError("`async with breaker:` exited in another task than it entered")
        permit, outer = top
        _GUARDS.set(outer)
        if exc is None:
            permit.record_success()
        else:
            permit.record_failure(exc)

    # -- manual control -------------------------------------------------------------------
    def force_open(self, seconds: float | None = None) -> None:
        """Open now: for ``seconds``, or (``None``) until :meth:`reset`.

        While forced open indefinitely, rejections carry ``retry_after=recovery_time``
        as a polling hint.
        """
        now = self._clock.now()
        if seconds is None:
            self._transition(_OPEN, "forced open", now, force=True)
        else:
            self._transition(_OPEN, "forced open", now, open_for=max(0.0, seconds))

    def reset(self) -> None:
        """Close now and forget all counts."""
        self._transition(_CLOSED, "reset", self._clock.now())

    # -- internals ------------------------------------------------------------------------
    def _classify(self, exc: BaseException) -> int:
        if not isinstance(exc, Exception):  # cancellation, KeyboardInterrupt, ...
            return _IGNORED
        if self.excluded_exceptions and isinstance(exc, self.excluded_exceptions):
            return _IGNORED
        if isinstance(exc, HeadwayError) and not isinstance(exc, APIClientError):
            return _IGNORED  # a local decision, not the service's answer
        return _FAILURE if self.failure_predicate(exc) else _SUCCESS

    def _finish(self, permit: BreakerPermit, outcome: int, duration: float | None) -> None:
        s = self._s
        if permit._generation != s.generation:
            return  # granted before the last transition: it no longer counts
        if s.window is None and not permit.trial:
            self._count(outcome)  # the common case
            return
        slow = False
        if outcome != _IGNORED and self.slow_call_duration is not None:
            if duration is None:
                duration = self._clock.now() - permit.started
            slow = duration > self.slow_call_duration
        if permit.trial:
            s.trials_in_flight -= 1
            if outcome == _FAILURE or slow:
                reason = "trial call failed" if outcome == _FAILURE else "trial call was slow"
                self._transition(_OPEN, reason, self._clock.now())
                return
            if outcome == _SUCCESS:
                s.trial_successes += 1
                if s.trial_successes >= self.success_threshold:
                    self._transition(_CLOSED, "trial calls succeeded", self._clock.now())
                    return
            if self._store is not None:
                self._store.release_trial()  # ended without a verdict, or one more to go
            return
        if outcome != _IGNORED:
            self._judge(outcome, slow)

    def _closed_outcome(self, generation: int, outcome: int) -> None:
        """:meth:`_finish` of a closed windowed breaker's permit, without the permit."""
        if generation == self._s.generation and outcome != _IGNORED:
            self._judge(outcome, False)

    def _judge(self, outcome: int, slow: bool) -> None:
        """A closed breaker with a window learns one call's outcome; it may trip."""
        s = self._s
        if outcome == _FAILURE:
            s.consecutive_failures += 1
        else:
            s.consecutive_failures = 0
        window = s.window
        assert window is not None  # no window: handled by _count()
        now = self._clock.now()
        window.add(now, outcome == _FAILURE, slow)
        trip = self._window_trips(window)
        if (
            trip is None
            and self.failure_rate_threshold is None
            and s.consecutive_failures >= self.failure_threshold
        ):
            trip = f"{s.consecutive_failures} consecutive failures"
        if trip is not None:
            self._transition(_OPEN, trip, now)

    def _closed_failure(self, generation: int, exc: BaseException) -> None:
        """``BreakerPermit(self, generation, False, 0.0).record_failure(exc)`` for a breaker
        without a window, without the permit object (the Policy's fast path)."""
        if (
            self.failure_predicate is default_failure_predicate
            and not self.excluded_exceptions
            and isinstance(exc, Exception)
            and not isinstance(exc, HeadwayError)
        ):
            outcome = _FAILURE  # what _classify() says of any other error by default
        else:
            outcome = self._classify(exc)
        if generation == self._s.generation:
            self._count(outcome)

    def _count(self, outcome: int) -> None:
        """A closed breaker that counts consecutive failures only learns ``outcome``."""
        s = self._s
        if outcome == _SUCCESS:
            s.consecutive_failures = 0
        elif outcome == _FAILURE:
            s.consecutive_failures += 1
            if s.consecutive_failures >= self.failure_threshold:
                reason = f"{s.consecutive_failures} consecutive failures"
                self._transition(_OPEN, reason, self._clock.now())
        self._refresh_ticket()

    def _window_trips(self, window: _Window) -> str | None:
        calls = window.calls
        if calls < self.minimum_calls:
            return None
        rate = self.failure_rate_threshold
        if rate is not None and window.failures >= rate * calls:
            return f"failure rate {window.failures}/{calls} in {self.window:g}s"
        if self.slow_call_duration is not None and window.slow >= (
            self.slow_call_rate_threshold * calls
        ):
            return f"slow call rate {window.slow}/{calls} in {self.window:g}s"
        return None

    def _sync(self, now: float) -> None:
        """Adopt the shared circuit's state (a circuit opened or closed elsewhere)."""
        assert self._store is not None
        shared = self._store.open_for()
        s = self._s
        if shared is None:
            if s.state is not _CLOSED:
                self._transition(_CLOSED, "closed by another breaker", now, share=False)
        elif s.state is _CLOSED or (s.state is _HALF_OPEN and shared > 0):
            reason = "opened by another breaker"
            self._transition(_OPEN, reason, now, open_for=shared, share=False)
        elif s.state is _OPEN and not s.forced:
            s.open_until = now + shared

    def _transition(
        self,
        new: CircuitState,
        reason: str,
        now: float,
        *,
        force: bool = False,
        open_for: float | None = None,
        share: bool = True,
    ) -> None:
        """Move to ``new``; an open lasts ``open_for`` s (default: recovery time) or,
        with ``force``, until reset. A shared circuit hears of opens and closes, unless
        ``share`` is false (the change was adopted from it)."""
        s = self._s
        old = s.state
        s.state = new
        s.generation += 1
        s.trials_in_flight = 0
        s.trial_successes = 0
        s.forced = force
        store = self._store
        if new is _OPEN:
            seconds = self.recovery_time if open_for is None else open_for
            s.open_until = now + seconds
            if store is not None and share:
                store.publish_open(FORCED_OPEN_SECONDS if force else max(seconds, 1e-3))
        elif new is _CLOSED:
            s.consecutive_failures = 0
            if s.window is not None:
                s.window.clear()
            if store is not None and share:
                store.publish_closed()
        self._refresh_ticket()
        if old is new:
            return
        level = logging.WARNING if new is _OPEN else logging.INFO
        if enabled(level, self._listeners):
            cls = events.BreakerOpened if new is _OPEN else events.BreakerStateChanged
            data = {"old": old, "new": new, "reason": reason}
            event = cls(
                BREAKER_STATE_CHANGED,
                self.name,
                data,
                LOOP_CLOCK.now(),
                level,
                old=old.value,
                new=new.value,
                reason=reason,
            )
            publish(event, self._listeners)

    def _rejection(self, now: float) -> CircuitBreakerOpenError:
        s = self._s
        if s.state is _HALF_OPEN:
            retry_after = 0.0
            who = f" ({self.name!r})" if self.name else ""
            message = (
                f"Circuit breaker is open{who}: half-open with {s.trials_in_flight} trial "
                "call(s) in flight; try again when they finish"
            )
        else:
            retry_after = self.recovery_time if s.forced else max(0.0, s.open_until - now)
            message = None
        if enabled(logging.DEBUG, self._listeners):
            emit(
                BREAKER_REJECTED,
                source=self.name,
                listeners=self._listeners,
                retry_after=retry_after,
                state=s.state,
            )
        return CircuitBreakerOpenError(message, retry_after=retry_after, name=self.name)

    def __repr__(self) -> str:
        s = self._s
        return (
            f"CircuitBreaker(name={self.name!r}, state={s.state.value}, "
            f"failure_count={s.consecutive_failures})"
        )


def _positive_int(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what} must be an integer >= 1, got {value!r}")


def _ratio(what: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigurationError(f"{what} must be a ratio in (0, 1], got {value!r}")
