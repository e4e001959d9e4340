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

Every attempt passes the limiter and the breaker again. Outcomes feed an
:class:`~headway.concurrency.AdaptiveConcurrency` (success with latency, overload on
429 / timeout / 503) through its slot, and the limiter (``limiter.on_success()``,
``limiter.on_rate_limited(delay, empty=...)``). Cancellation from outside is never
retried and gives back what it held.

Rate 429s (:class:`~headway.RateLimitError`; a quota 429 is a
:class:`~headway.QuotaExceededError`, never retried) are not failures while the server
keeps answering (``rate_limits="wait"``, the default): the request waits, holding
nothing, for the server's delay (capped by the retry policy's ``max_server_delay``) or
its backoff, and goes again; these waits draw nothing from the retry budget and do not
count towards ``max_retries``. Only ``total_timeout`` ends them. When the server says its
bucket is empty (``RateLimitError.bucket_empty``, true for a 429 without rate-limit
headers) the limiter is told (``on_rate_limited``) and pauses everyone sharing it, for
at most ``max_server_delay``; otherwise only this request backs off.
``rate_limits="retry"`` counts rate 429s as ordinary retries instead, and
``RetryPolicy(max_retries=0)`` (or ``retry=None``) makes one attempt, 429 or not.

Three ways to call:

* ``await policy.execute(func, *args, requests=1, tokens=0, **kwargs)`` for any
  coroutine function;
* ``await policy.run(attempt_fn, requests=1, tokens=estimate)`` where
  ``attempt_fn(ctx)`` receives an :class:`AttemptContext`: the attempt number, the
  limiter :class:`~headway.limits.Reservation` (``ctx.settle(actual_tokens)``) and the
  limiter itself (to ``sync`` it from rate-limit headers). This is what the HTTP layer
  uses.
* ``lease = await policy.open(attempt_fn, requests=1, tokens=estimate)`` for a call
  whose result is used after the attempt returns (a stream): the successful attempt's
  concurrency slot, reservation and breaker verdict stay in the :class:`Lease` until
  ``await lease.aclose(exc)`` (or the end of ``async with lease:``), however the use
  ends.

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

import dis
import functools
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from headway._clock import LOOP_CLOCK, Clock, now_function, resolve_clock
from headway.errors import ConfigurationError, RateLimitError
from headway.events import GLOBAL_LISTENERS, EventListener
from headway.resilience.breaker import BreakerTicket, CircuitBreaker
from headway.resilience.retry.schedule import DEFAULT_MAX_SERVER_DELAY
from headway.resilience.retry.settings import RetrySettings
from headway.resilience.timeouts import DeadlineTimer

if TYPE_CHECKING:
    from headway.concurrency import AdaptiveConcurrency, ConcurrencyLimit
    from headway.limits import Limiter, Reservation
    from headway.resilience.retry.budget import RetryBudget
    from headway.resilience.retry.config import RetryPolicy

    # the retry budget, breaker, plain pool, measured pool, limiter, its try_take,
    # whether try_take serves run()'s attempts too, whether its on_success does
    # anything, timed?, attempt deadlines, clock
    _Plan = tuple[
        RetryBudget | None,
        CircuitBreaker | None,
        ConcurrencyLimit | None,
        ConcurrencyLimit | None,
        Limiter | None,
        Callable[[float, float], bool],
        bool,
        bool,
        bool,
        DeadlineTimer | None,
        Clock,
    ]

    # after failed attempts: (failures, rate waits, the last backoff delay)
    _Counts = tuple[int, int, float]

    # execute()'s own first attempt: retry budget, breaker, plain pool, limiter's try_take
    _Lean = tuple[
        RetryBudget | None,
        CircuitBreaker | None,
        ConcurrencyLimit | None,
        Callable[[float, float], bool] | None,
    ]

__all__ = ["AttemptContext", "Lease", "Policy"]

P = ParamSpec("P")
T = TypeVar("T")

_NO_KWARGS: dict[str, Any] = {}  # never mutated (and never passed on: falsy)
_NO_FAILURES: _Counts = (0, 0, 0.0)
_loop_time = now_function(LOOP_CLOCK)

#: A :class:`Policy` hands the calls it counted to its retry budget every this many
#: calls (and before each retry it asks the budget for), not one by one.
BOOK_EVERY = 16

#: How a :class:`Policy` treats rate 429s: ``"wait"`` (not failures; only the total
#: deadline ends them) or ``"retry"`` (ordinary retries, counted and budgeted).
RateLimits = Literal["wait", "retry"]


class _Default:
    """Marker for "use the default retry policy"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


class AttemptContext:
    """What one attempt of :meth:`Policy.run` gets to know and to steer.

    Attributes:
        attempt: 1 for the first attempt, 2 for the next one, ...
        reservation: the limiter reservation of this attempt (``None`` without a limiter,
            or when the limiter let the call go without one: an adaptive limiter with no
            tokens limit, for a call without a token estimate, has nothing to settle).
        limiter: the policy's limiter, to ``sync`` from rate-limit headers or pause.
        policy: the policy running the call.

    One context object is reused by the attempts of a call.
    """

    __slots__ = ("attempt", "limiter", "policy", "reservation")

    def __init__(self, policy: Policy, limiter: Limiter | None) -> None:
        self.attempt = 0
        self.reservation: Reservation | None = None
        self.limiter = limiter
        self.policy = policy

    def settle(self, tokens: float) -> None:
        """Record the actual token use of this attempt (no-op without a limiter)."""
        if self.reservation is not None:
            self.reservation.settle(tokens)

    def __repr__(self) -> str:
        return f"<AttemptContext attempt={self.attempt} reservation={self.reservation!r}>"


class Lease(Generic[T]):
    """A successful attempt's result with what it still holds, until :meth:`aclose`.

    Returned by :meth:`Policy.open`: the concurrency slot, the limiter reservation (to
    :meth:`settle` when the real token use is known) and the breaker's verdict, which
    :meth:`aclose` records (success for ``exc=None``, else ``exc`` judged as the
    breaker judges errors; cancellation and ``GeneratorExit`` give it back unjudged).
    Whoever opens a lease closes it; ``async with lease:`` does so.

    Attributes:
        value: what the attempt returned (for a stream: the open response).
        attempt: the number of the attempt that succeeded.
        reservation: its limiter reservation, or ``None``.
    """

    def __init__(
        self,
        value: T,
        attempt: int,
        reservation: Reservation | None,
        pool: ConcurrencyLimit | None,
        slot: Any,
        breaker: CircuitBreaker | None,
        ticket: BreakerTicket | None,
    ) -> None:
        # ``slot``: what to release (``pool`` itself, or a measured slot), or None
        self.value = value
        self.attempt = attempt
        self.reservation = reservation
        self._pool = pool
        self._slot = slot
        self._breaker = breaker
        self._ticket = ticket
        self._open = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` ran."""
        return not self._open

    def settle(self, tokens: float) -> None:
        """Record the actual token use (no-op without a reservation)."""
        if self.reservation is not None:
            self.reservation.settle(tokens)

    async def aclose(self, exc: BaseException | None = None) -> None:
        """Give everything back; ``exc`` says how the use ended (idempotent)."""
        if not self._open:
            return
        self._open = False
        _finish(self._slot, self._pool, self._breaker, self._ticket, exc, True, None)

    async def __aenter__(self) -> Lease[T]:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self.aclose(exc)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Lease {state} attempt={self.attempt} value={type(self.value).__name__}>"


async def _acquired(pool: ConcurrencyLimit) -> bool:
    """Wait for a slot of ``pool`` (its ``try_acquire()`` said none is free): True."""
    await pool.acquire()
    return True


async def _slot_of(limit: ConcurrencyLimit) -> Any:
    """Take a measured slot of ``limit``; returned only once taken."""
    taking = limit.slot()
    await taking.__aenter__()
    return taking


def _does_nothing(method: Callable[..., Any]) -> bool:
    """Whether ``method`` is a plain function or method with an empty body (a docstring
    at most), such as a fixed limit's ``on_success``: the pipeline leaves it out. A mock
    or any other callable counts as doing something."""
    func = getattr(method, "__func__", method)
    if not isinstance(func, types.FunctionType):
        return False
    ops = [(i.opname, i.argval) for i in dis.get_instructions(func) if i.opname != "RESUME"]
    return ops in ([("LOAD_CONST", None), ("RETURN_VALUE", None)], [("RETURN_CONST", None)])


def _takes_nothing(requests: float, tokens: float) -> bool:
    """``try_take`` of a limiter without one: never takes (use ``reserve_nowait``)."""
    return False


def _finish(
    slot: Any,
    pool: ConcurrencyLimit | None,
    breaker: CircuitBreaker | None,
    ticket: BreakerTicket | None,
    outcome: BaseException | None,
    judged: bool,
    duration: float | None,
) -> None:
    """Give back what an attempt held: its slot (``pool`` itself, or a measured slot that
    learns the outcome) and its breaker ticket (judged by ``outcome`` if the call was
    made, else given back)."""
    if slot is pool:
        if pool is not None:
            pool.release()
    elif slot is not None:
        slot.release(outcome if outcome is None or isinstance(outcome, Exception) else None)
    if ticket is not None and breaker is not None:
        if judged and (outcome is None or isinstance(outcome, Exception)):
            breaker.record(ticket, outcome, duration)
        else:
            breaker.release(ticket)


class Policy:
    """Limiter, concurrency, breaker, retry (+budget) and deadlines, composed in one order.

    See :mod:`headway.resilience.policy` for the order and why. Every argument is
    optional; a bare ``Policy()`` retries transient errors (:func:`headway.is_retryable`)
    three times with full-jitter backoff under a retry budget, and waits out rate 429s.

    Args:
        retry: a :class:`RetryPolicy`; by default ``RetryPolicy()``; ``None`` never retries.
            (A :class:`~headway.resilience.retry.settings.RetrySettings` is taken too: the
            same fields without pydantic, for code that checked them itself.)
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
        rate_limits: ``"wait"`` (default): rate 429s are waited out, uncounted, until
            ``total_timeout``; ``"retry"``: they are ordinary, counted retries.

    Raises:
        ConfigurationError: for a timeout <= 0 or a concurrency that is not one of the above.
    """

    def __init__(
        self,
        *,
        retry: RetryPolicy | RetrySettings | None = DEFAULT,
        limiter: Limiter | None = None,
        concurrency: ConcurrencyLimit | AdaptiveConcurrency | int | None = None,
        breaker: CircuitBreaker | None = None,
        attempt_timeout: float | None = None,
        total_timeout: float | None = None,
        clock: Clock | None = None,
        name: str | None = None,
        listeners: tuple[EventListener, ...] = (),
        rate_limits: RateLimits = "wait",
    ) -> None:
        if retry is DEFAULT:
            from headway.resilience.retry.config import RetryPolicy

            retry = RetryPolicy(clock=clock, name=name)
        elif retry is not None and not isinstance(retry, RetrySettings):
            # RetryPolicy's module (and pydantic) is loaded already if ``retry`` is one
            from headway.resilience.retry.config import RetryPolicy

            if not isinstance(retry, RetryPolicy):
                raise ConfigurationError(f"retry must be a RetryPolicy or None, got {retry!r}")
        for what, value in (("attempt_timeout", attempt_timeout), ("total_timeout", total_timeout)):
            if value is not None and not value > 0:
                raise ConfigurationError(f"{what} must be > 0 seconds or None, got {value!r}")
        if rate_limits not in ("wait", "retry"):
            raise ConfigurationError(f"rate_limits must be 'wait' or 'retry', got {rate_limits!r}")
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
        self._rate_limits = rate_limits
        measured = conc is not None and conc.measures_calls
        full: Limiter | None = _as_limiter(limiter)
        # What the loop needs, in one tuple (one attribute load per call). A hook that
        # does nothing (a fixed limit's on_success) is left out, not called per attempt.
        engine = self._engine = None if retry is None else retry.engine()
        budget = None if engine is None else engine.budget
        pool = None if measured else conc
        take = _takes_nothing if full is None else getattr(full, "try_take", _takes_nothing)
        learns = full is not None and not _does_nothing(full.on_success)
        timed = breaker is not None and breaker.slow_call_duration is not None
        # One loop timer for every attempt's deadline, not one per attempt.
        timer = (
            None
            if attempt_timeout is None
            else DeadlineTimer(
                attempt_timeout, scope="attempt", source=name, listeners=self._listeners
            )
        )
        self._plan: _Plan = (
            budget,
            breaker,
            pool,
            conc if measured else None,
            full,
            take,
            # try_take() serves run()'s attempts too (they have nothing to settle)
            full is not None and getattr(full, "takes_unsettled", False) is True,
            learns,
            timed,
            timer,
            self._clock,
        )
        # What execute()'s own first attempt needs, or None when the policy has anything
        # it leaves to _call: deadlines, a measured pool, a limiter that learns from
        # successes or cannot take without a reservation, slow-call timing.
        lean = not (measured or learns or timed or timer or total_timeout is not None)
        if full is not None and take is _takes_nothing:
            lean = False
        self._lean: _Lean | None = (
            (budget, breaker, pool, None if full is None else take) if lean else None
        )
        # One loop timer for the total deadlines of all calls (same length, so they fall
        # due in the order the calls started).
        self._total_timer = (
            None
            if total_timeout is None
            else DeadlineTimer(total_timeout, scope="total", source=name, listeners=self._listeners)
        )
        self._unbooked = 0  # calls not yet handed to the retry budget (see _book)
        self._on_rate_limited = None if full is None else full.on_rate_limited
        self._rate_wait = rate_limits == "wait" and retry is not None and retry.max_retries > 0
        self._max_server_delay = (
            DEFAULT_MAX_SERVER_DELAY if retry is None else retry.max_server_delay
        )

    @property
    def retry(self) -> RetryPolicy | RetrySettings | None:
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

    @property
    def rate_limits(self) -> RateLimits:
        """How rate 429s are treated: ``"wait"`` or ``"retry"``."""
        return self._rate_limits

    # -- entry points ----------------------------------------------------------------------
    async def execute(
        self,
        func: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        requests: float = 1.0,
        tokens: float = 0.0,
        **kwargs: Any,
    ) -> T:
        """Call ``await func(*args, **kwargs)`` through the policy.

        ``requests`` and ``tokens`` (an estimate) are what each attempt reserves on the
        limiter; they are not passed to ``func``.

        The first attempt runs here when nothing stands in its way: the breaker is
        closed with nothing to record (``closed_ticket``), a slot is free
        (``try_acquire()``) and the limiter takes at once (``try_take()``; these two
        answer ``False`` rather than raise). Anything else (a busy pool, a limiter that
        would have the call wait, a breaker not closed or mocked, deadlines, a measured
        pool, a limiter that learns from successes, slow-call timing) goes through
        :meth:`_call`, and so do the retries after a failed first attempt.
        """
        lean = self._lean
        if lean is None:
            timer = self._total_timer
            if timer is None:
                plain: T = await self._call(func, args, kwargs, requests, tokens, None, None, False)
                return plain
            when = _loop_time() + timer.seconds  # when the timer's deadline falls due
            call = self._call(func, args, kwargs, requests, tokens, when, None, False)
            return await timer.run(call)
        budget, breaker, pool, take = lean
        ticket = None if breaker is None else breaker.closed_ticket
        taken = False  # whether the first attempt may go now (holding the slot it took)
        if (ticket is not None or breaker is None) and (pool is None or pool.try_acquire()):
            try:
                taken = take is None or take(requests, tokens)
            finally:
                if not taken and pool is not None:
                    pool.release()  # taken just now, nothing ran since: _call takes it again
        if not taken:
            waited: T = await self._call(func, args, kwargs, requests, tokens, None, None, False)
            return waited
        if budget is not None:  # counted, handed over in batches (_book)
            self._unbooked = unbooked = self._unbooked + 1
            if unbooked >= BOOK_EVERY:
                self._book()
        try:
            if kwargs:
                result = await func(*args, **kwargs)
            else:  # no empty dict copied, no empty tuple unpacked
                result = await (func(*args) if args else func())
        except BaseException as exc:
            _finish(pool, pool, breaker, ticket, exc, True, None)
            delay, counts = self._after_failure(exc, _NO_FAILURES, None)
            if delay is None:
                raise
        else:
            if pool is not None:
                pool.release()
            if (
                ticket is not None
                and breaker is not None
                and (GLOBAL_LISTENERS or ticket != breaker.closed_ticket)
            ):  # else nothing to record
                breaker.record(ticket, None, None)
            return result
        if delay > 0.0:
            await self._clock.sleep(delay)
        retried: T = await self._call(
            func, args, kwargs, requests, tokens, None, None, False, 1, counts
        )
        return retried

    def run(
        self,
        attempt_fn: Callable[[AttemptContext], Awaitable[T]],
        /,
        *,
        requests: float = 1.0,
        tokens: float = 0.0,
    ) -> Coroutine[Any, Any, T]:
        """Call ``await attempt_fn(ctx)`` through the policy, with an :class:`AttemptContext`.

        A plain method returning the call's coroutine (one frame cheaper than an
        ``async def``): ``await policy.run(...)``, or make a task of it.

        >>> import asyncio
        >>> async def attempt(ctx: AttemptContext) -> int:
        ...     return ctx.attempt
        >>> asyncio.run(Policy(retry=None).run(attempt))
        1
        """
        ctx = AttemptContext(self, self._limiter)
        if self._total_timeout is None:
            return self._call(attempt_fn, (ctx,), _NO_KWARGS, requests, tokens, None, ctx, False)
        return self._call_total(attempt_fn, (ctx,), _NO_KWARGS, requests, tokens, ctx, False)

    async def open(
        self,
        attempt_fn: Callable[[AttemptContext], Awaitable[T]],
        /,
        *,
        requests: float = 1.0,
        tokens: float = 0.0,
    ) -> Lease[T]:
        """Like :meth:`run`, but the successful attempt keeps what it holds in a :class:`Lease`.

        For a result used after the attempt returns, such as a stream: its concurrency
        slot stays taken and its breaker verdict waits until ``await lease.aclose(exc)``.

        >>> import asyncio
        >>> policy = Policy(concurrency=1)
        >>> async def attempt(ctx: AttemptContext) -> str:
        ...     return "stream"
        >>> async def main() -> tuple[str, int, int]:
        ...     async with await policy.open(attempt) as lease:
        ...         inside = policy.concurrency.in_use
        ...     return lease.value, inside, policy.concurrency.in_use
        >>> asyncio.run(main())
        ('stream', 1, 0)
        """
        ctx = AttemptContext(self, self._limiter)
        args = (ctx,)
        if self._total_timeout is None:
            lease: Lease[T] = await self._call(
                attempt_fn, args, _NO_KWARGS, requests, tokens, None, ctx, True
            )
        else:
            lease = await self._call_total(
                attempt_fn, args, _NO_KWARGS, requests, tokens, ctx, True
            )
        return lease

    async def _call_total(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        requests: float,
        tokens: float,
        ctx: AttemptContext | None,
        keep: bool,
    ) -> Any:
        timer = self._total_timer
        assert timer is not None
        when = _loop_time() + timer.seconds  # when the timer's deadline falls due
        return await timer.run(self._call(fn, args, kwargs, requests, tokens, when, ctx, keep))

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
                result: T = await call(func, args, kwargs, 1.0, 0.0, None, None, False)
            else:
                result = await call_total(func, args, kwargs, 1.0, 0.0, None, False)
            return result

        return wrapper

    # -- the pipeline ----------------------------------------------------------------------
    async def _call(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        requests: float,
        tokens: float,
        total: float | None,
        ctx: AttemptContext | None,
        keep: bool,
        attempt: int = 0,
        counts: _Counts = _NO_FAILURES,
    ) -> Any:
        """The attempts of a call, from attempt ``attempt + 1`` on (``counts``: after the
        failed attempts before it; a call that made none is counted here)."""
        budget, breaker, pool, slots, limiter, take, free, learns, timed, timer, clock = self._plan
        if budget is not None and not attempt:  # counted, handed over in batches (_book)
            self._unbooked = unbooked = self._unbooked + 1
            if unbooked >= BOOK_EVERY:
                self._book()
        started = 0.0
        while True:
            attempt += 1
            slot = reservation = ticket = None  # slot: the pool itself or a measured slot
            called = False
            try:
                if breaker is not None:  # closed_ticket: a closed breaker's fast path
                    ticket = breaker.closed_ticket or breaker.try_enter()
                if pool is not None:
                    slot = pool if pool.try_acquire() or await _acquired(pool) else None
                elif slots is not None:
                    slot = await _slot_of(slots)
                if limiter is not None and (
                    (ctx is not None and not free) or not take(requests, tokens)
                ):
                    reservation = limiter.reserve_nowait(requests, tokens)
                    if reservation is None:
                        reservation = await limiter.reserve(requests, tokens)
                    if reservation.delay > 0.0:
                        await reservation.wait()
                if ctx is not None:
                    ctx.attempt, ctx.reservation = attempt, reservation
                started, called = clock.now() if timed else started, True
                call = fn(*args, **kwargs) if kwargs else fn(*args)  # no empty dict copied
                result = await (call if timer is None else timer.run(call))
            except BaseException as exc:
                spent = clock.now() - started if timed and called else None
                _finish(slot, pool, breaker, ticket, exc, called, spent)
                delay, counts = self._after_failure(exc, counts, total)
                if delay is None:
                    raise
            else:
                if learns and limiter is not None:
                    limiter.on_success()
                if keep:
                    return Lease(result, attempt, reservation, pool, slot, breaker, ticket)
                if slot is not None:
                    slot.release()
                quiet = breaker is None or ticket == breaker.closed_ticket  # nothing to record
                if ticket is not None and breaker is not None and (GLOBAL_LISTENERS or not quiet):
                    breaker.record(ticket, None, clock.now() - started if timed else None)
                return result
            if delay > 0.0:
                await clock.sleep(delay)

    def _after_failure(
        self, exc: BaseException, counts: _Counts, total: float | None
    ) -> tuple[float | None, _Counts]:
        """After a failed attempt: the delay before the next one (``None``: give up) and
        the new ``counts``: (failures, rate waits, the last backoff delay).

        A rate 429 with ``rate_limits="wait"`` is a wait, not a failure: it draws no
        budget and does not count towards ``max_retries``. ``total``: the loop time at
        which the total deadline falls due (``None``: none).
        """
        if not isinstance(exc, Exception):
            return None, counts  # cancellation: never retried
        if self._unbooked:
            self._book()  # the budget sees this policy's calls before any withdrawal
        rt = self._engine
        if isinstance(exc, RateLimitError) and self._on_rate_limited is not None:
            delay = exc.retry_after
            if delay is not None and delay > self._max_server_delay:
                delay = self._max_server_delay
            self._on_rate_limited(delay, empty=exc.bucket_empty)
        if rt is None:
            return None, counts
        failures, waits, previous = counts
        remaining = None if total is None else total - _loop_time()
        if self._rate_wait and isinstance(exc, RateLimitError):
            waits += 1
            wait = rt.rate_delay(exc, waits, remaining, self._name, self._listeners)
            return wait, (failures, waits, previous)
        if not failures:
            previous = rt.base_delay
        failures += 1
        after = rt.next_delay(exc, failures, previous, remaining, self._name, self._listeners)
        if after is not None:
            previous = after if after > 0.0 else rt.base_delay
        return after, (failures, waits, previous)

    def _book(self) -> None:
        """Hand the calls counted since the last time to the retry budget."""
        unbooked, self._unbooked = self._unbooked, 0
        budget = self._plan[0]
        if budget is not None:
            budget.record_requests(unbooked)

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


class _LimiterAdapter:
    """A duck-typed limiter (``reserve`` and ``pause_until`` or ``pause``) seen as a full
    :class:`~headway.limits.Limiter`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reserve = inner.reserve
        self.sync = getattr(inner, "sync", None)

    def reserve_nowait(self, requests: float = 1.0, tokens: float = 0.0) -> None:
        return None

    def pause_until(self, when: float) -> None:
        self.inner.pause_until(when)

    def pause(self, seconds: float) -> None:
        pause = getattr(self.inner, "pause", None)
        if pause is not None:
            pause(seconds)
        else:
            self.inner.pause_until(resolve_clock(None).now() + seconds)

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        if empty and delay is not None and delay > 0.0:
            self.pause(delay)

    def on_success(self) -> None:
        return None


def _as_limiter(limiter: Any) -> Any:
    """``limiter`` itself if it has the whole protocol, else an adapter around it."""
    if limiter is None or all(
        callable(getattr(limiter, name, None))
        for name in ("reserve_nowait", "on_rate_limited", "on_success")
    ):
        return limiter
    return _LimiterAdapter(limiter)


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
