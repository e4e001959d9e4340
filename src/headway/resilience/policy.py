"""Policy: rate limits, concurrency, circuit breaker, retry and deadlines in one order.

A :class:`Policy` runs a call through every protection headway has, always in this order::

    total deadline                       (Policy(total_timeout=...); the whole call)
    └─ retry loop (+ retry budget)       (Policy(retry=RetryPolicy(...)))
       └─ per attempt:
          1. breaker permit              (CircuitBreakerOpenError at once if open)
          2. concurrency slot            (ConcurrencyLimit / AdaptiveConcurrency)
          3. limiter reservation + wait  (requests and estimated tokens, FIFO)
          4. attempt deadline            (Policy(attempt_timeout=...))
          5. the call
          6. record the outcome          (breaker success/failure, adaptive limit)
       └─ backoff sleep                  (holds no permit, no slot, no reservation)

Why this order:

* The breaker comes first: when the service is down, nothing queues for a slot or spends
  rate-limit budget on a call that will be rejected anyway.
* The slot is taken before the limiter wait, so the limiter paces only calls that can
  go at once: a reservation is never held by a call still queueing for a slot.
* The attempt deadline covers the call only, not local queueing; the total deadline
  covers everything, backoff sleeps included. When the next backoff would outlast the
  total deadline, the call gives up at once with its last error.
* Between attempts nothing is held: the slot goes back, the breaker permit is recorded
  or released, the reservation has been used (the call was sent) or refunded (the wait
  was cancelled).

Every attempt passes the limiter and the breaker again. A :class:`~headway.RateLimitError`
with ``retry_after`` pauses the whole shared limiter (``limiter.pause(retry_after)``),
so every caller sharing it backs off, not just the one that got the 429. Outcomes feed an
:class:`~headway.concurrency.AdaptiveConcurrency` (success with latency, overload on
429 / timeout / 503) through its slot. Cancellation from outside is never retried and
gives back what it held.

Two ways to call:

* ``await policy.execute(func, *args, requests=1, tokens=0, **kwargs)`` for any
  coroutine function;
* ``await policy.run(attempt_fn, requests=1, tokens=estimate)`` where
  ``attempt_fn(ctx)`` receives an :class:`AttemptContext`: the attempt number, the
  limiter :class:`~headway.limits.Reservation` (``ctx.settle(actual_tokens)``) and the
  limiter itself (to ``sync`` it from rate-limit headers). This is what the HTTP layer
  uses.

>>> import asyncio
>>> from headway import APIConnectionError
>>> from headway.limits import MultiLimiter
>>> from headway.resilience.retry import RetryBudget, RetryPolicy
>>> policy = Policy(
...     limiter=MultiLimiter.for_llm(rpm=600_000, tpm=10_000_000),
...     concurrency=8,
...     retry=RetryPolicy(max_retries=2, base_delay=0.001),
...     attempt_timeout=5.0,
...     total_timeout=30.0,
... )
>>> failures = [APIConnectionError("reset")]
>>> async def complete(ctx: AttemptContext) -> str:
...     if failures:
...         raise failures.pop()
...     ctx.settle(120)  # the response's usage said 120 tokens, not the 500 estimated
...     return f"done on attempt {ctx.attempt}"
>>> asyncio.run(policy.run(complete, tokens=500))
'done on attempt 2'
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from headway._clock import LOOP_CLOCK, Clock, resolve_clock
from headway.errors import ConfigurationError, RateLimitError
from headway.events import EventListener
from headway.resilience.breaker import _CLOSED, CircuitBreaker
from headway.resilience.retry import RetryBudget, RetryPolicy
from headway.resilience.timeouts import Deadline

if TYPE_CHECKING:
    from headway.concurrency import AdaptiveConcurrency, ConcurrencyLimit
    from headway.limits import Limiter, Reservation, TokenBucketRateLimiter

__all__ = ["AttemptContext", "Policy"]

P = ParamSpec("P")
T = TypeVar("T")


class _Default:
    """Marker for "use the default retry policy"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


class AttemptContext:
    """What one attempt of :meth:`Policy.run` gets to know and to steer.

    Attributes:
        attempt: 1 for the first attempt, 2 for the first retry, ...
        reservation: the limiter reservation of this attempt (``None`` without a limiter).
        limiter: the policy's limiter, to ``sync`` from rate-limit headers or pause.
        policy: the policy running the call.

        keep_slot: set it to ``True`` inside the attempt to keep the attempt's concurrency
            slot when it succeeds (for a stream, whose body is read after the attempt
            returns); the caller must then ``await ctx.release_slot()`` when done.

    One context object is reused by the attempts of a call.
    """

    __slots__ = ("_kept", "attempt", "keep_slot", "limiter", "policy", "reservation")

    def __init__(self, policy: Policy, limiter: Limiter | None) -> None:
        self.attempt = 0
        self.reservation: Reservation | None = None
        self.limiter = limiter
        self.policy = policy
        self.keep_slot = False
        self._kept: Any = None

    def settle(self, tokens: float) -> None:
        """Record the actual token use of this attempt (no-op without a limiter)."""
        if self.reservation is not None:
            self.reservation.settle(tokens)

    async def release_slot(self, exc: BaseException | None = None) -> None:
        """Give back the slot kept by ``keep_slot`` (idempotent; no-op if none was kept).

        ``exc``: how the use of the slot ended, for an adaptive limit's bookkeeping.
        """
        kept, self._kept = self._kept, None
        if kept is None:
            return
        # A ConcurrencyLimit, or an AdaptiveConcurrency slot: both release on __aexit__.
        if exc is None:
            await kept.__aexit__(None, None, None)
        else:
            await kept.__aexit__(type(exc), exc, exc.__traceback__)

    def __repr__(self) -> str:
        return f"<AttemptContext attempt={self.attempt} reservation={self.reservation!r}>"


class Policy:
    """Limiter, concurrency, breaker, retry (+budget) and deadlines, composed in one order.

    See :mod:`headway.resilience.policy` for the order and why. Every argument is
    optional; a bare ``Policy()`` retries transient errors (:func:`headway.is_retryable`)
    three times with full-jitter backoff under a retry budget.

    Args:
        retry: a :class:`RetryPolicy`; by default ``RetryPolicy()``; ``None`` never retries.
        limiter: a :class:`~headway.limits.MultiLimiter`,
            :class:`~headway.limits.TokenBucketRateLimiter` or any
            :class:`~headway.limits.Limiter`; shared by everyone using it.
        concurrency: an ``int`` (a :class:`~headway.concurrency.ConcurrencyLimit` of that
            size), a :class:`~headway.concurrency.ConcurrencyLimit` or an
            :class:`~headway.concurrency.AdaptiveConcurrency`.
        breaker: a :class:`~headway.CircuitBreaker`.
        attempt_timeout: seconds allowed for one attempt's call (not its queueing).
        total_timeout: seconds allowed for the whole call, retries and waits included.
        clock: where backoff sleeps happen (default: the retry policy's, else the loop's).
            Deadlines always run on the event loop's clock.
        name: the ``source`` of this policy's events.
        listeners: extra event listeners for this policy's retry and timeout events.

    Raises:
        ConfigurationError: for a timeout <= 0 or a concurrency that is not one of the above.
    """

    __slots__ = (
        "_attempt_timeout",
        "_breaker",
        "_cfg",
        "_clock",
        "_concurrency",
        "_limiter",
        "_listeners",
        "_name",
        "_retry",
        "_total_timeout",
    )

    def __init__(
        self,
        *,
        retry: RetryPolicy | None = DEFAULT,
        limiter: Limiter | None = None,
        concurrency: ConcurrencyLimit | AdaptiveConcurrency | int | None = None,
        breaker: CircuitBreaker | None = None,
        attempt_timeout: float | None = None,
        total_timeout: float | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> None:
        if retry is DEFAULT:
            retry = RetryPolicy(clock=clock, name=name)
        elif retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy or None, got {retry!r}")
        for what, value in (("attempt_timeout", attempt_timeout), ("total_timeout", total_timeout)):
            if value is not None and not value > 0:
                raise ConfigurationError(f"{what} must be > 0 seconds or None, got {value!r}")
        if clock is None and retry is not None and retry.clock is not None:
            clock = retry.clock
        self._retry = retry
        self._limiter = limiter
        conc = self._concurrency = _concurrency(concurrency)
        self._breaker = breaker
        self._attempt_timeout = attempt_timeout
        self._total_timeout = total_timeout
        self._clock = resolve_clock(clock)
        self._name = name
        self._listeners = tuple(listeners)
        # Everything the hot path needs, in one tuple (one attribute load per call).
        # A plain pool is driven directly (sync fast path); an adaptive limit through its
        # slot(), which measures and reports each call's outcome. MultiLimiter has a
        # synchronous reserve (no coroutine per call); a plain TokenBucketRateLimiter is
        # charged directly when nobody sees the reservation (execute, wrap). A plain
        # closed breaker without a window is asked without a permit object. Durations
        # are measured only for a breaker that judges slow calls.
        pool = conc if conc is not None and _plain_pool(conc) else None
        self._cfg = (
            None if retry is None else retry._engine(),
            breaker,
            _breaker_state(breaker),
            pool,
            conc if conc is not None and pool is None else None,
            limiter,
            getattr(limiter, "reserve_nowait", None),
            _plain_bucket(limiter),
            attempt_timeout,
            breaker is not None and breaker.slow_call_duration is not None,
            self._clock,
        )

    @property
    def retry(self) -> RetryPolicy | None:
        """The retry policy (``None``: no retries)."""
        return self._retry

    @property
    def limiter(self) -> Limiter | None:
        """The limiter every attempt reserves on."""
        return self._limiter

    @property
    def concurrency(self) -> ConcurrencyLimit | None:
        """The concurrency limit (an int given at construction became a ConcurrencyLimit)."""
        return self._concurrency

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The circuit breaker every attempt asks first."""
        return self._breaker

    @property
    def attempt_timeout(self) -> float | None:
        """Seconds allowed for one attempt's call."""
        return self._attempt_timeout

    @property
    def total_timeout(self) -> float | None:
        """Seconds allowed for the whole call."""
        return self._total_timeout

    @property
    def name(self) -> str | None:
        """The ``source`` of this policy's events."""
        return self._name

    @property
    def listeners(self) -> tuple[EventListener, ...]:
        """Extra event listeners for this policy's events."""
        return self._listeners

    @property
    def clock(self) -> Clock:
        """The clock backoff sleeps go through."""
        return self._clock

    # -- entry points ----------------------------------------------------------------------
    def execute(
        self,
        func: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        requests: float = 1.0,
        tokens: float = 0.0,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]:
        """Call ``await func(*args, **kwargs)`` through the policy: ``await policy.execute(...)``.

        ``requests`` and ``tokens`` (an estimate) are what each attempt reserves on the
        limiter; they are not passed to ``func``. (A plain method returning the call's
        coroutine, one frame cheaper than an ``async def``; await it, or make a task.)
        """
        if self._total_timeout is None:
            return self._call(func, args, kwargs, requests, tokens, None)
        return self._call_total(func, args, kwargs, requests, tokens)

    def run(
        self,
        attempt_fn: Callable[[AttemptContext], Awaitable[T]],
        /,
        *,
        requests: float = 1.0,
        tokens: float = 0.0,
    ) -> Coroutine[Any, Any, T]:
        """Call ``await attempt_fn(ctx)`` through the policy, with an :class:`AttemptContext`.

        Like :meth:`execute`, returns the call's coroutine: ``await policy.run(...)``.

        >>> import asyncio
        >>> async def attempt(ctx: AttemptContext) -> int:
        ...     return ctx.attempt
        >>> asyncio.run(Policy(retry=None).run(attempt))
        1
        """
        if self._total_timeout is None:
            return self._call(attempt_fn, None, None, requests, tokens, None)
        return self._call_total(attempt_fn, None, None, requests, tokens)

    async def _call_total(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...] | None,
        kwargs: dict[str, Any] | None,
        requests: float,
        tokens: float,
    ) -> T:
        async with Deadline(
            self._total_timeout, scope="total", source=self._name, listeners=self._listeners
        ) as dl:
            return await self._call(fn, args, kwargs, requests, tokens, dl)

    def wrap(self, func: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate ``func`` so that every call goes through the policy (signature kept).

        >>> import asyncio
        >>> policy = Policy(concurrency=2)
        >>> @policy.wrap
        ... async def double(x: int) -> int:
        ...     return 2 * x
        >>> asyncio.run(double(21))
        42
        """
        call = self._call
        call_total = self._call_total

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            if self._total_timeout is None:
                return await call(func, args, kwargs, 1.0, 0.0, None)
            return await call_total(func, args, kwargs, 1.0, 0.0)

        return wrapper

    # -- the loop ----------------------------------------------------------------------------
    async def _call(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...] | None,
        kwargs: dict[str, Any] | None,
        requests: float,
        tokens: float,
        total: Deadline | None,
    ) -> T:
        (
            rt,
            breaker,
            bstate,
            pool,
            adaptive,
            limiter,
            reserve_now,
            bucket,
            attempt_timeout,
            timed,
            clock,
        ) = self._cfg
        ctx: AttemptContext | None = None
        amount = None  # units charged on a plain bucket directly (no Reservation)
        if args is None:
            ctx = AttemptContext(self, limiter)
        elif bucket is not None and requests >= 0.0 and tokens >= 0.0:
            amount = requests if bucket._is_requests else tokens
        previous = 0.0
        if rt is not None:
            budget = rt.budget
            if budget is not None:
                if (
                    type(budget) is not RetryBudget
                    or budget._epoch is None
                    or budget._pending >= budget.BATCH - 1
                ):
                    budget.record_request()
                else:
                    budget._pending += 1  # record_request(), inlined: no clock reading
            previous = rt.base_delay
        attempt = 0
        while True:
            attempt += 1
            permit = None
            generation = None  # a closed plain breaker's generation: a permit without object
            held = False
            slot = None
            called = False
            started = 0.0
            try:
                if bstate is not None and bstate.state is _CLOSED:
                    generation = bstate.generation
                elif breaker is not None:
                    permit = breaker.acquire()
                if pool is not None:
                    if pool._in_use < pool._limit and not pool._waiters:
                        pool._in_use += 1  # try_acquire() inlined
                    else:
                        await pool.acquire()
                    held = True
                elif adaptive is not None:
                    cm = adaptive.slot()
                    await cm.__aenter__()
                    slot = cm
                reservation = None
                if amount is not None:
                    delay = bucket.try_reserve(amount)  # type: ignore[union-attr]
                    if delay > 0.0:  # the wait gives the units back if cancelled
                        await bucket._sleep_reserved(delay)  # type: ignore[union-attr]
                elif reserve_now is not None:
                    reservation = reserve_now(requests, tokens)
                    if reservation.delay > 0.0:
                        await reservation.wait()
                elif limiter is not None:
                    reservation = await limiter.reserve(requests, tokens)
                    if reservation.delay > 0.0:
                        await reservation.wait()
                if ctx is not None:
                    ctx.attempt = attempt
                    ctx.reservation = reservation
                if timed:
                    started = clock.now()
                called = True
                if attempt_timeout is None:
                    if ctx is None:
                        result = await fn(*args, **kwargs)  # type: ignore[misc,arg-type]
                    else:
                        result = await fn(ctx)
                else:
                    async with Deadline(
                        attempt_timeout,
                        scope="attempt",
                        source=self._name,
                        listeners=self._listeners,
                    ):
                        if ctx is None:
                            result = await fn(*args, **kwargs)  # type: ignore[misc,arg-type]
                        else:
                            result = await fn(ctx)
            except BaseException as exc:
                if held:
                    pool._in_use -= 1  # type: ignore[union-attr]  # release(), inlined
                    if pool._waiters:  # type: ignore[union-attr]
                        pool._wake()  # type: ignore[union-attr]
                elif slot is not None:
                    await slot.__aexit__(type(exc), exc, exc.__traceback__)
                if generation is not None:
                    # Stopped before the call, or cancelled: nothing to record (releasing
                    # a closed breaker's permit changes nothing).
                    if called and isinstance(exc, Exception):
                        breaker._closed_failure(generation, exc)  # type: ignore[union-attr]
                elif permit is not None:
                    if called and isinstance(exc, Exception):
                        permit.record_failure(exc, clock.now() - started if timed else None)
                    else:
                        # Cancelled, or stopped before the call (no slot, limiter refusal).
                        permit.release()
                if not isinstance(exc, Exception):
                    raise
                if limiter is not None and isinstance(exc, RateLimitError):
                    self._pause(limiter, exc)
                if rt is None:
                    raise
                remaining = None
                if total is not None:
                    when = total.when()
                    if when is not None:
                        remaining = when - LOOP_CLOCK.now()
                delay = rt.next_delay(
                    exc, attempt, previous, remaining, self._name, self._listeners
                )
                if delay is None:
                    raise
                previous = delay if delay > 0.0 else rt.base_delay
            else:
                if ctx is not None and ctx.keep_slot and (held or slot is not None):
                    ctx._kept = pool if held else slot  # the caller releases it
                elif held:
                    pool._in_use -= 1  # type: ignore[union-attr]  # release(), inlined
                    if pool._waiters:  # type: ignore[union-attr]
                        pool._wake()  # type: ignore[union-attr]
                elif slot is not None:
                    await slot.__aexit__(None, None, None)
                if generation is not None:
                    # permit.record_success() of a closed breaker without a window.
                    if bstate.generation == generation:
                        bstate.consecutive_failures = 0
                elif permit is not None:
                    permit.record_success(clock.now() - started if timed else None)
                return result
            if delay > 0.0:
                await clock.sleep(delay)

    @staticmethod
    def _pause(limiter: Limiter, exc: RateLimitError) -> None:
        seconds = exc.retry_after
        if seconds is None or seconds <= 0.0:
            return
        pause = getattr(limiter, "pause", None)
        if pause is not None:
            pause(seconds)
        else:
            limiter.pause_until(resolve_clock(None).now() + seconds)

    def __repr__(self) -> str:
        parts = []
        for key in ("retry", "limiter", "concurrency", "breaker"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={type(value).__name__}")
        for key in ("attempt_timeout", "total_timeout", "name"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={value!r}")
        return f"Policy({', '.join(parts)})"


def _plain_pool(conc: Any) -> bool:
    """Whether ``conc`` is a plain ConcurrencyLimit the loop may drive directly."""
    from headway.concurrency import ConcurrencyLimit

    cls = type(conc)
    return (
        cls.slot is ConcurrencyLimit.slot
        and cls.acquire is ConcurrencyLimit.acquire
        and cls.release is ConcurrencyLimit.release
        and cls._wake is ConcurrencyLimit._wake
    )


def _plain_bucket(limiter: Any) -> TokenBucketRateLimiter | None:
    """``limiter`` if it is a plain TokenBucketRateLimiter (charged without a Reservation)."""
    from headway.limits.bucket import TokenBucketRateLimiter

    if limiter is None:
        return None
    cls = type(limiter)
    if (
        isinstance(limiter, TokenBucketRateLimiter)
        and cls.reserve_nowait is TokenBucketRateLimiter.reserve_nowait
        and cls.try_reserve is TokenBucketRateLimiter.try_reserve
        and cls._sleep_reserved is TokenBucketRateLimiter._sleep_reserved
    ):
        return limiter
    return None


def _breaker_state(breaker: CircuitBreaker | None) -> Any:
    """The state of a plain breaker that counts consecutive failures only, else ``None``.

    For such a breaker, a call in the closed state needs no :class:`BreakerPermit`: its
    success only resets the failure count (if no transition happened meanwhile), and
    only a failure needs the permit's judgement.
    """
    if breaker is None:
        return None
    cls = type(breaker)
    if (
        cls.acquire is CircuitBreaker.acquire
        and cls._finish is CircuitBreaker._finish
        and cls._closed_failure is CircuitBreaker._closed_failure
        and cls._classify is CircuitBreaker._classify
        and breaker.slow_call_duration is None
        and breaker._s.window is None
    ):
        return breaker._s
    return None


def _concurrency(value: Any) -> ConcurrencyLimit | None:
    if value is None:
        return None
    from headway.concurrency import ConcurrencyLimit

    if isinstance(value, bool):
        raise ConfigurationError(f"concurrency must be an int >= 1 or a limit, got {value!r}")
    if isinstance(value, int):
        return ConcurrencyLimit(value)
    if isinstance(value, ConcurrencyLimit):
        return value
    raise ConfigurationError(
        "concurrency must be an int, a ConcurrencyLimit or an AdaptiveConcurrency, "
        f"got {type(value).__name__}"
    )
