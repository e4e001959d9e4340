"""Retry with exponential backoff, jitter, server delays and a shared retry budget.

Three ways in, one set of rules:

* :func:`retry_with_backoff` retries one call (``func(*args, **kwargs)``);
* :class:`RetryPolicy` is the reusable, validated configuration (and ``await policy.call(...)``);
* :func:`retry` is a decorator that keeps the wrapped function's signature for type checkers.

The schedule: the n-th retry waits ``min(base_delay * backoff_factor ** (n - 1), max_delay)``
(1.0 s, then 2.0 s, then 4.0 s with the defaults), randomised by the jitter strategy:

==================  ==========================================================  ============
jitter              delay before retry n (``d`` = the exponential delay)         range
==================  ==========================================================  ============
``"none"``/False    ``d``                                                       exactly d
``"full"``/True     ``uniform(0, d)`` (AWS measured it the cheapest in total)   [0, d]
``"equal"``         ``d / 2 + uniform(0, d / 2)``                               [d/2, d]
``"decorrelated"``  ``min(max_delay, uniform(base_delay, 3 * previous))``       [base, max]
==================  ==========================================================  ============

What is never retried, whatever ``retry_on`` or ``retry_exceptions`` say:
:func:`headway.errors.never_retry` errors — cancellation, authentication, not-found,
bad-request, quota and configuration errors, and any API error whose server said
``x-should-retry: false``. ``CancelledError`` is not even caught.

A server's delay wins over the schedule: a :class:`~headway.errors.RateLimitError` (or any
headway error) with ``retry_after`` waits exactly that long, if it is at most
``max_server_delay`` (120 s by default). Above the cap the retry gives up at once and raises
the error, as the OpenAI SDK does: waiting minutes inside one call is rarely what a caller
wants, and the error carries the delay for whoever decides.

A :class:`RetryBudget` (on by default in :class:`RetryPolicy`) is shared by every call of a
policy. As in gRPC and Finagle, retries are allowed only while they stay below ``ratio`` of
the calls in a sliding window plus a small floor per second; when most calls fail, the
budget runs dry and calls fail fast instead of multiplying the load on a sick service.

Events: ``retry.scheduled`` (attempt, delay, reason), ``retry.gave_up`` (attempts, reason),
``retry.budget_exhausted`` (attempt, reason). Every sleep goes through the :class:`Clock`.

>>> import asyncio
>>> from headway import ManualClock
>>> calls = []
>>> async def flaky() -> str:
...     calls.append(1)
...     if len(calls) < 3:
...         raise ConnectionError("reset")
...     return "ok"
>>> clock = ManualClock()
>>> policy = RetryPolicy(max_retries=3, jitter=False, clock=clock)
>>> asyncio.run(policy.call(flaky))
'ok'
>>> clock.sleeps
[1.0, 2.0]
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Annotated, Any, Literal, ParamSpec, Protocol, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from headway import events as _events
from headway._clock import LOOP_CLOCK, Clock, now_function, resolve_clock
from headway.errors import (
    ConfigurationError,
    HeadwayError,
    _transient,
    is_retryable,
    never_retry,
)
from headway.events import (
    RETRY_BUDGET_EXHAUSTED,
    RETRY_GAVE_UP,
    RETRY_SCHEDULED,
    EventListener,
    emit,
    enabled,
)

__all__ = [
    "DEFAULT_MAX_SERVER_DELAY",
    "JitterMode",
    "RetryBudget",
    "RetryDecorator",
    "RetryPolicy",
    "retry",
    "retry_with_backoff",
]

P = ParamSpec("P")
T = TypeVar("T")

JitterMode = Literal["none", "full", "equal", "decorrelated"]
RetryPredicate = Callable[[BaseException], bool]
ExceptionTypes = tuple[type[BaseException], ...]

#: Longest server-requested delay (``retry_after``) a retry waits by default, in seconds.
DEFAULT_MAX_SERVER_DELAY = 120.0

_ANY_EXCEPTION: ExceptionTypes = (Exception,)

_JITTER_MODES: frozenset[str] = frozenset({"none", "full", "equal", "decorrelated"})


def _jitter_mode(jitter: bool | str) -> JitterMode:
    if jitter is True:
        return "full"
    if jitter is False:
        return "none"
    if jitter in _JITTER_MODES:
        return jitter  # type: ignore[return-value]
    raise ConfigurationError(
        f"jitter must be True, False or one of {sorted(_JITTER_MODES)}; got {jitter!r}"
    )


def _exp_delay(retry: int, base_delay: float, backoff_factor: float, max_delay: float) -> float:
    """The un-jittered delay before retry number ``retry`` (1-based)."""
    try:
        delay = base_delay * backoff_factor ** (retry - 1)
    except OverflowError:
        return max_delay
    return delay if delay < max_delay else max_delay


def _schedule_delay(
    mode: str,
    retry: int,
    previous: float,
    base_delay: float,
    backoff_factor: float,
    max_delay: float,
    rand: Callable[[], float],
) -> float:
    """Delay before retry number ``retry``; ``previous`` is the last delay (decorrelated)."""
    if mode == "decorrelated":
        low = base_delay if base_delay < max_delay else max_delay
        high = 3.0 * previous
        if high < low:
            high = low
        delay = low + (high - low) * rand()
        return delay if delay < max_delay else max_delay
    delay = _exp_delay(retry, base_delay, backoff_factor, max_delay)
    if mode == "full":
        return delay * rand()
    if mode == "equal":
        half = delay / 2.0
        jittered = half + half * rand()
        return jittered if jittered < delay else delay
    return delay


def _server_delay(exc: BaseException) -> float | None:
    """The delay a server asked for (``retry_after`` on a headway error), if any."""
    if isinstance(exc, HeadwayError):
        delay = getattr(exc, "retry_after", None)
        if isinstance(delay, int | float):
            return float(delay) if delay > 0 else 0.0
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{name}: {text}" if text else name


class RetryBudget:
    """Retries allowed across many calls: a ratio of recent calls plus a floor per second.

    Every call deposits one request (:meth:`record_request`); every retry withdraws one
    (:meth:`try_spend`). Over the last ``window`` seconds, at most
    ``ratio * calls + min_retries_per_second * window`` retries are allowed. With the
    defaults (20 % and 10/s over 10 s), a service where every call fails sees at most
    1.2x the load plus a trickle, instead of 4x with three retries per call.

    The window is kept in ``buckets`` slices. To stay cheap on the success path, a
    deposit does not read the clock: deposits are booked in batches, in the slice of
    the last clock reading (every retry reads the clock, and so does every 32nd
    deposit). A deposit is therefore never counted as more recent than it is: the
    budget errs on the side of fewer retries.

    One budget is shared by every call of a :class:`RetryPolicy` (and of a
    :class:`~headway.Policy`); share one object between policies to share the budget.

    >>> from headway import ManualClock
    >>> budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, window=10.0,
    ...                      clock=ManualClock())
    >>> for _ in range(4):
    ...     budget.record_request()
    >>> [budget.try_spend() for _ in range(3)]
    [True, True, False]
    """

    __slots__ = (
        "_clock",
        "_epoch",
        "_floor",
        "_n",
        "_now",
        "_pending",
        "_req",
        "_ret",
        "_total_req",
        "_total_ret",
        "_width",
        "min_retries_per_second",
        "ratio",
        "window",
    )

    #: Deposits booked without reading the clock, at most.
    BATCH = 32

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        window: float = 10.0,
        *,
        clock: Clock | None = None,
        buckets: int = 10,
    ) -> None:
        if ratio < 0 or min_retries_per_second < 0:
            raise ConfigurationError(
                "RetryBudget ratio and min_retries_per_second must be >= 0 "
                f"(got ratio={ratio!r}, min_retries_per_second={min_retries_per_second!r})"
            )
        if window <= 0 or buckets < 1:
            raise ConfigurationError(
                f"RetryBudget window must be > 0 and buckets >= 1 (got {window!r}, {buckets!r})"
            )
        self.ratio = float(ratio)
        self.min_retries_per_second = float(min_retries_per_second)
        self.window = float(window)
        self._floor = self.min_retries_per_second * self.window
        self._clock = resolve_clock(clock)
        self._now = now_function(self._clock)
        self._n = int(buckets)
        self._width = self.window / self._n
        self._req = [0] * self._n
        self._ret = [0] * self._n
        self._total_req = 0
        self._total_ret = 0
        self._pending = 0
        self._epoch: int | None = None

    def _slot(self) -> int:
        """Index of the current bucket: book pending deposits, expire old buckets."""
        return self._advance(int(self._now() // self._width))

    def _advance(self, epoch: int) -> int:
        # _slot() with the clock already read (``epoch`` is the slice it fell in).
        pending = self._pending
        last = self._epoch
        if pending:
            if last is not None:
                # Booked where the clock was last read: never later than they happened.
                self._req[last % self._n] += pending
                self._total_req += pending
            self._pending = 0
        if epoch != last:
            n = self._n
            if last is None or epoch - last >= n or epoch < last:
                self._req[:] = self._ret[:] = [0] * n
                self._total_req = self._total_ret = 0
            else:
                req, ret = self._req, self._ret
                for e in range(last + 1, epoch + 1):
                    i = e % n
                    self._total_req -= req[i]
                    self._total_ret -= ret[i]
                    req[i] = ret[i] = 0
            self._epoch = epoch
        return epoch % self._n

    def record_request(self) -> None:
        """Count one call (its first attempt) towards the budget."""
        if self._epoch is None:
            self._slot()  # the first deposit reads the clock
        self._pending += 1
        if self._pending >= self.BATCH:
            self._slot()

    def try_spend(self) -> bool:
        """Withdraw one retry if the budget allows it; return whether it did."""
        epoch = int(self._now() // self._width)
        last = self._epoch
        pending = self._pending
        if epoch == last and last is not None:
            # _advance() without expiry (same slice as the last reading): book deposits.
            i = epoch % self._n
            if pending:
                self._req[i] += pending
                self._total_req += pending
                self._pending = 0
        else:
            i = self._advance(epoch)
        if self.ratio * self._total_req + self._floor - self._total_ret < 1.0:
            return False
        self._ret[i] += 1
        self._total_ret += 1
        return True

    @property
    def available(self) -> float:
        """Retries the budget would allow right now."""
        self._slot()
        return max(0.0, self.ratio * self._total_req + self._floor - self._total_ret)

    @property
    def requests(self) -> int:
        """Calls counted in the current window."""
        self._slot()
        return self._total_req

    @property
    def retries(self) -> int:
        """Retries spent in the current window."""
        self._slot()
        return self._total_ret

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio!r}, min_retries_per_second="
            f"{self.min_retries_per_second!r}, window={self.window!r})"
        )


def _exception_types(value: Any, what: str) -> ExceptionTypes:
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, tuple | list | set | frozenset) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        return tuple(value)
    raise ConfigurationError(f"{what} must be an exception type or a tuple of them; got {value!r}")


class _Engine:
    """The compiled form of a :class:`RetryPolicy`: plain slots, cheap on the hot path."""

    __slots__ = (
        "backoff_factor",
        "base_delay",
        "budget",
        "clock",
        "exclude",
        "listeners",
        "max_delay",
        "max_retries",
        "max_server_delay",
        "mode",
        "name",
        "owner",
        "predicate",
        "rand",
        "transient",
        "types",
    )

    def __init__(self, policy: RetryPolicy) -> None:
        self.owner = policy
        self.max_retries = policy.max_retries
        self.base_delay = policy.base_delay
        self.max_delay = policy.max_delay
        self.backoff_factor = policy.backoff_factor
        self.mode = _jitter_mode(policy.jitter)
        # The validators turned single types into tuples; keep mypy and copies honest.
        retry_on = policy.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        self.types: ExceptionTypes | None = None
        self.predicate: RetryPredicate | None = None
        if isinstance(retry_on, tuple):
            self.types = retry_on
        else:
            self.predicate = retry_on
        exclude = policy.exclude
        self.exclude: ExceptionTypes = (exclude,) if isinstance(exclude, type) else exclude
        # The default rules (never_retry, then is_retryable) as one check.
        self.transient = self.predicate is is_retryable and not self.exclude
        self.max_server_delay = policy.max_server_delay
        self.budget = policy.budget
        self.clock = resolve_clock(policy.clock)
        self.name = policy.name
        self.listeners = policy.listeners
        self.rand: Callable[[], float] = random.random

    def delay(self, retry: int, previous: float) -> float:
        return _schedule_delay(
            self.mode,
            retry,
            previous,
            self.base_delay,
            self.backoff_factor,
            self.max_delay,
            self.rand,
        )

    def should_retry(self, exc: BaseException) -> bool:
        if never_retry(exc):
            return False
        if self.exclude and isinstance(exc, self.exclude):
            return False
        types = self.types
        if types is not None:
            return isinstance(exc, types)
        assert self.predicate is not None
        return bool(self.predicate(exc))

    def next_delay(
        self,
        exc: BaseException,
        retry: int,
        previous: float,
        remaining: float | None = None,
        source: str | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> float | None:
        """Decide the retry after ``exc``: the delay to sleep, or ``None`` to give up.

        ``retry`` is the number of the retry being considered (1 after the first failure);
        ``remaining`` the seconds left before a deadline (no retry may start after it).
        Emits the events.
        """
        if self.transient:
            retryable = _transient(exc)
        elif never_retry(exc) or (self.exclude and isinstance(exc, self.exclude)):
            retryable = False
        elif self.types is not None:
            retryable = isinstance(exc, self.types)
        else:
            assert self.predicate is not None
            retryable = bool(self.predicate(exc))
        if not retryable:
            if retry > 1:
                _emit_gave_up(
                    exc, retry, "not retryable", source or self.name, listeners or self.listeners
                )
            return None
        if retry > self.max_retries:
            _emit_gave_up(
                exc, retry, "retries exhausted", source or self.name, listeners or self.listeners
            )
            return None
        delay = _server_delay(exc) if isinstance(exc, HeadwayError) else None
        if delay is not None:
            if delay > self.max_server_delay:
                why = f"server delay {delay:g}s exceeds max_server_delay {self.max_server_delay:g}s"
                _emit_gave_up(exc, retry, why, source or self.name, listeners or self.listeners)
                return None
        else:
            mode = self.mode
            if mode == "full" or mode == "none":
                # _schedule_delay() inlined for the two common strategies.
                try:
                    delay = self.base_delay * self.backoff_factor ** (retry - 1)
                except OverflowError:
                    delay = self.max_delay
                if delay > self.max_delay:
                    delay = self.max_delay
                if mode == "full":
                    delay *= self.rand()
            else:
                delay = _schedule_delay(
                    mode,
                    retry,
                    previous,
                    self.base_delay,
                    self.backoff_factor,
                    self.max_delay,
                    self.rand,
                )
        if remaining is not None and delay >= remaining:
            _emit_gave_up(
                exc,
                retry,
                "deadline would pass before the retry",
                source or self.name,
                listeners or self.listeners,
            )
            return None
        budget = self.budget
        if budget is not None and not budget.try_spend():
            listeners = listeners or self.listeners
            if enabled(logging.WARNING, listeners):
                emit(
                    RETRY_BUDGET_EXHAUSTED,
                    source=source or self.name,
                    level=logging.WARNING,
                    listeners=listeners,
                    attempt=retry,
                    reason=_reason(exc),
                )
            return None
        listeners = listeners or self.listeners
        if listeners or _events._listeners or _events.logger.isEnabledFor(logging.INFO):
            emit(
                RETRY_SCHEDULED,
                source=source or self.name,
                level=logging.INFO,
                listeners=listeners,
                attempt=retry,
                delay=delay,
                reason=_reason(exc),
            )
        return delay

    async def call(
        self, func: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        budget = self.budget
        if budget is not None:
            budget.record_request()
        retry = 0
        previous = self.base_delay
        while True:
            try:
                return await func(*args, **kwargs)
            except Exception as exc:
                retry += 1
                delay = self.next_delay(exc, retry, previous)
                if delay is None:
                    raise
                previous = delay if delay > 0.0 else self.base_delay
            if delay > 0.0:
                await self.clock.sleep(delay)


class RetryPolicy(BaseModel):
    """A reusable retry configuration: schedule, what to retry, server delays and budget.

    Args:
        max_retries: retries after the first attempt (0 disables retrying).
        base_delay: delay before the first retry, in seconds.
        max_delay: cap on any scheduled delay.
        backoff_factor: growth of the delay per retry (>= 1).
        jitter: ``True`` (= ``"full"``), ``False`` (= ``"none"``), ``"equal"`` or
            ``"decorrelated"``; see the table in :mod:`headway.resilience.retry`.
        retry_on: exception types to retry, or a predicate ``(exc) -> bool``. Default:
            :func:`headway.is_retryable` (transient errors by headway's table).
        exclude: exception types never retried.
        max_server_delay: longest ``retry_after`` honoured; above it the call gives up.
        budget: a :class:`RetryBudget` shared by every call; ``None`` turns it off.
        clock: where to sleep; the loop clock by default.
        name: shown as the ``source`` of events.
        listeners: extra event listeners for this policy's events.

    >>> policy = RetryPolicy(max_retries=4, jitter=False)
    >>> list(policy.delays())
    [1.0, 2.0, 4.0, 8.0]
    >>> RetryPolicy(retry_on=ValueError).should_retry(ValueError("x"))
    True
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    max_retries: Annotated[int, Field(ge=0)] = 3
    base_delay: Annotated[float, Field(ge=0)] = 1.0
    max_delay: Annotated[float, Field(ge=0)] = 60.0
    backoff_factor: Annotated[float, Field(ge=1.0)] = 2.0
    jitter: bool | JitterMode = True
    retry_on: type[BaseException] | ExceptionTypes | RetryPredicate = is_retryable
    exclude: type[BaseException] | ExceptionTypes = ()
    max_server_delay: Annotated[float, Field(ge=0)] = DEFAULT_MAX_SERVER_DELAY
    budget: RetryBudget | None = Field(default_factory=RetryBudget)
    clock: Clock | None = None
    name: str | None = None
    listeners: tuple[EventListener, ...] = ()

    @field_validator("retry_on", mode="before")
    @classmethod
    def _check_retry_on(cls, value: Any) -> Any:
        if isinstance(value, type | tuple | list | set | frozenset):
            return _exception_types(value, "retry_on")
        if not callable(value):
            raise ValueError(
                f"retry_on must be exception types or a predicate (exc) -> bool; got {value!r}"
            )
        return value

    @field_validator("exclude", mode="before")
    @classmethod
    def _check_exclude(cls, value: Any) -> Any:
        return _exception_types(value, "exclude")

    @field_validator("jitter", mode="before")
    @classmethod
    def _check_jitter(cls, value: Any) -> Any:
        _jitter_mode(value)
        return value

    @model_validator(mode="after")
    def _finish(self) -> RetryPolicy:
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}) must be >= base_delay ({self.base_delay})"
            )
        self._engine()
        return self

    def _engine(self) -> _Engine:
        # The compiled policy lives in the instance dict (not a pydantic private
        # attribute, whose lookup is slow); a copy gets its own on first use.
        engine: _Engine | None = self.__dict__.get("_rt")
        if engine is None or engine.owner is not self:
            engine = self.__dict__["_rt"] = _Engine(self)
        return engine

    # -- the schedule ---------------------------------------------------------------------
    @property
    def jitter_mode(self) -> JitterMode:
        """The jitter strategy in words: ``"none"``, ``"full"``, ``"equal"``, ``"decorrelated"``."""
        return self._engine().mode

    def delay(self, retry: int, previous: float | None = None) -> float:
        """Delay before retry number ``retry`` (1-based), jittered by the policy's strategy.

        ``previous`` is the delay before the previous retry (decorrelated jitter grows
        from it; it defaults to ``base_delay``).
        """
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        return self._engine().delay(retry, self.base_delay if previous is None else previous)

    def delays(self) -> Iterator[float]:
        """The delays before each of the ``max_retries`` retries (one random draw)."""
        previous = self.base_delay
        for n in range(1, self.max_retries + 1):
            previous = self.delay(n, previous)
            yield previous

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is of a kind this policy retries (ignoring counts and budget)."""
        return self._engine().should_retry(exc)

    # -- running ---------------------------------------------------------------------------
    async def call(self, func: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Call ``await func(*args, **kwargs)``, retrying by this policy; raise the last error.

        A zero delay retries at once, without a sleep.
        """
        return await self._engine().call(func, args, kwargs)

    def wrap(self, func: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate ``func`` so that every call retries by this policy (signature kept)."""
        call = self._engine().call

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await call(func, args, kwargs)

        wrapper.retry_policy = self  # type: ignore[attr-defined]
        return wrapper


class RetryDecorator(Protocol):
    """What ``retry(...)`` returns: a decorator keeping the function's signature."""

    def __call__(self, func: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """Wrap ``func``."""
        ...


@overload
def retry(func: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


@overload
def retry(
    *,
    policy: RetryPolicy | None = None,
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    backoff_factor: float = 2.0,
    jitter: bool | JitterMode = True,
    retry_on: type[BaseException] | ExceptionTypes | RetryPredicate = is_retryable,
    exclude: type[BaseException] | ExceptionTypes = (),
    max_server_delay: float = DEFAULT_MAX_SERVER_DELAY,
    budget: RetryBudget | Literal["default"] | None = "default",
    clock: Clock | None = None,
    name: str | None = None,
    listeners: tuple[EventListener, ...] = (),
) -> RetryDecorator: ...


def retry(
    func: Callable[..., Awaitable[Any]] | None = None,
    /,
    *,
    policy: RetryPolicy | None = None,
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    backoff_factor: float = 2.0,
    jitter: bool | JitterMode = True,
    retry_on: type[BaseException] | ExceptionTypes | RetryPredicate = is_retryable,
    exclude: type[BaseException] | ExceptionTypes = (),
    max_server_delay: float = DEFAULT_MAX_SERVER_DELAY,
    budget: RetryBudget | Literal["default"] | None = "default",
    clock: Clock | None = None,
    name: str | None = None,
    listeners: tuple[EventListener, ...] = (),
) -> Any:
    """Decorate an async function so that its calls retry; the signature is kept for mypy.

    Use bare (``@retry``: headway's defaults) or with options (``@retry(max_retries=5)``),
    or pass a ready :class:`RetryPolicy` (``@retry(policy=p)``; other options are then
    ignored). All calls of the decorated function share one :class:`RetryBudget`.

    >>> import asyncio
    >>> attempts = []
    >>> @retry(max_retries=2, base_delay=0, retry_on=KeyError)
    ... async def lookup(key: str) -> int:
    ...     attempts.append(key)
    ...     if len(attempts) < 3:
    ...         raise KeyError(key)
    ...     return len(key)
    >>> asyncio.run(lookup("abc")), len(attempts)
    (3, 3)
    """
    if policy is None:
        policy = RetryPolicy(
            max_retries=max_retries,
            base_delay=base_delay,
            max_delay=max_delay,
            backoff_factor=backoff_factor,
            jitter=jitter,
            retry_on=retry_on,
            exclude=exclude,
            max_server_delay=max_server_delay,
            clock=clock,
            name=name,
            listeners=listeners,
            **({} if budget == "default" else {"budget": budget}),
        )
    if func is not None:
        return policy.wrap(func)
    return policy.wrap


async def retry_with_backoff(
    func: Callable[..., Awaitable[T]],
    *args: Any,
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    backoff_factor: float = 2.0,
    jitter: bool | JitterMode = True,
    retry_exceptions: type[BaseException] | ExceptionTypes = _ANY_EXCEPTION,
    exclude_exceptions: type[BaseException] | ExceptionTypes = (),
    **kwargs: Any,
) -> T:
    """Call ``await func(*args, **kwargs)``, retrying failures with exponential backoff.

    The n-th retry waits ``min(base_delay * backoff_factor ** (n - 1), max_delay)``,
    jittered (``jitter=True`` is full jitter; ``False`` sleeps exactly that). At most
    ``max_retries`` retries, then the last error is raised. Errors in ``retry_exceptions``
    are retried unless they are in ``exclude_exceptions`` or
    :func:`headway.errors.never_retry` says never (cancellation, authentication,
    not-found, bad-request, quota). A ``retry_after`` on the error (a 429's server delay)
    is waited instead of the schedule, up to 120 s; above that it gives up at once.
    A zero delay retries at once. Keyword arguments not listed here go to ``func``.
    No retry budget: use a
    :class:`RetryPolicy` to share one between calls.

    >>> import asyncio
    >>> from unittest import mock
    >>> tries = []
    >>> async def fetch(url: str, *, timeout: float) -> str:
    ...     tries.append(timeout)
    ...     if len(tries) == 1:
    ...         raise ConnectionError("reset")
    ...     return url
    >>> with mock.patch("asyncio.sleep", mock.AsyncMock()) as sleep:
    ...     asyncio.run(retry_with_backoff(fetch, "u", timeout=5.0, jitter=False))
    ...     sleep.await_args_list
    'u'
    [call(1.0)]
    """
    if max_retries < 0 or base_delay < 0 or max_delay < 0 or backoff_factor < 1:
        raise ConfigurationError(
            "retry_with_backoff needs max_retries >= 0, base_delay >= 0, max_delay >= 0 "
            "and backoff_factor >= 1"
        )
    types = (
        retry_exceptions
        if retry_exceptions is _ANY_EXCEPTION
        else _exception_types(retry_exceptions, "retry_exceptions")
    )
    excluded = exclude_exceptions and _exception_types(exclude_exceptions, "exclude_exceptions")
    mode = _jitter_mode(jitter)
    retry_n = 0
    previous = base_delay
    while True:
        try:
            return await func(*args, **kwargs)
        except Exception as exc:
            if never_retry(exc) or not isinstance(exc, types):
                raise
            if excluded and isinstance(exc, excluded):
                raise
            retry_n += 1
            if retry_n > max_retries:
                _emit_gave_up(exc, retry_n, "retries exhausted")
                raise
            delay = _server_delay(exc)
            if delay is None:
                delay = _schedule_delay(
                    mode, retry_n, previous, base_delay, backoff_factor, max_delay, random.random
                )
                previous = delay if delay > 0 else base_delay
            elif delay > DEFAULT_MAX_SERVER_DELAY:
                _emit_gave_up(exc, retry_n, f"server delay {delay:g}s exceeds the cap")
                raise
            if enabled(logging.INFO):
                emit(
                    RETRY_SCHEDULED,
                    level=logging.INFO,
                    attempt=retry_n,
                    delay=delay,
                    reason=_reason(exc),
                )
        if delay > 0.0:
            await LOOP_CLOCK.sleep(delay)


def _emit_gave_up(
    exc: BaseException,
    retry: int,
    why: str,
    source: str | None = None,
    listeners: tuple[EventListener, ...] = (),
) -> None:
    # INFO, not WARNING: the caller gets the error itself; this is context for the logs.
    if enabled(logging.INFO, listeners):
        emit(
            RETRY_GAVE_UP,
            source=source,
            level=logging.INFO,
            listeners=listeners,
            attempts=retry,
            reason=f"{why}; last error {_reason(exc)}",
        )
