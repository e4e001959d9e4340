"""A token bucket that reserves at once: FIFO by construction, no lock, no task.

A caller takes its tokens the moment it asks. When the bucket holds too few, the level
goes negative (debt) and the caller is told how long to wait: the time the bucket needs
to refill back to zero. A later caller finds a deeper debt and so always waits at least
as long as an earlier one, whatever the weights: a request for 50 units is never starved
by a stream of 1-unit requests (aiolimiter serves the smallest request first and starves
it). The whole reservation is a few float operations on one event loop, so no lock is
needed and nothing runs in the background.

Guarantee: in any window of length ``t`` the bucket schedules at most
``max_tokens + rate * t / period`` tokens, and callers that wait arrive no closer: the
event loop may wake a sleeper late (never early), and a caller woken more than half an
interval late moves everyone behind it back by the excess, so what the server sees in a
window stays within the bound (rounded down). The limiter also remembers when the last
queued caller goes (the *tail*), so a newcomer never goes before someone already
waiting, even after tokens were given back.

Giving back:

* A waiter cancelled in :meth:`~TokenBucketRateLimiter.wait`, ``slot`` or ``execute``
  gives its tokens back exactly when nobody queued behind it. With callers behind it,
  its turn passes unused (handing it to a newcomer could send two calls at the same
  instant); its tokens come back if the callers behind it are cancelled too.
* :meth:`~TokenBucketRateLimiter.refund` (a settled over-estimate) adds to the level at
  once; callers already waiting keep their turns and newcomers queue behind them.
* A pause (a 429's Retry-After) pushes every waiting caller back by its length, admits
  nobody before it ends, and restarts the bucket empty; no refund can shorten it.

>>> import asyncio
>>> from headway import ManualClock
>>> clock = ManualClock()
>>> limiter = TokenBucketRateLimiter(rate=2, period=1.0, max_tokens=2, clock=clock)
>>> async def waits() -> list[float]:
...     return [await limiter.acquire() for _ in range(4)]
>>> asyncio.run(waits())  # two at once (the burst), then one every 0.5 s
[0.0, 0.0, 0.5, 1.0]
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Final, NoReturn, ParamSpec, TypeVar

from headway import events
from headway._clock import Clock, now_function, resolve_clock
from headway.errors import ConfigurationError, MaxWaitExceededError, RequestTooLargeError
from headway.limits._reservation import (
    RATE_LIMITED_PAUSE,
    Granted,
    Reservation,
    wait_reserved,
)

__all__ = ["UNITS", "Booking", "TokenBucketRateLimiter", "reserve_together"]

P = ParamSpec("P")
T = TypeVar("T")

#: Cancelled waiters remembered while callers behind them still wait; past this many,
#: the oldest half is forgotten (their units do not come back: safe, a little slower).
_MAX_HOLES = 65_536

#: A pause that only extends the one in force by less than this (seconds) is not
#: announced again (the ``limiter.paused`` event): each 429 of a burst pauses a little later.
PAUSE_NEWS: Final = 1.0

#: What a limiter can count: each call is charged its requests or its (LLM) tokens.
UNITS: Final = ("requests", "tokens")

_events_enabled = events.enabled


def _positive(name: str, value: float) -> float:
    value = _finite(name, value)
    if value <= 0.0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")
    return value


def _finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    return value


def _non_negative(name: str, value: float) -> float:
    value = _finite(name, value)
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


class TokenBucketRateLimiter:
    """Admit ``rate`` units per ``period`` seconds, with bursts of up to ``max_tokens``.

    Args:
        rate: units refilled per ``period``.
        period: seconds over which ``rate`` units refill (``rate=600, period=60`` is 600
            per minute, refilled continuously at 10 per second).
        max_tokens: bucket capacity, the largest burst and the largest single request;
            defaults to ``rate``.
        initial_tokens: level at creation; defaults to ``max_tokens`` (start full).
        clock: where time is read and slept (default: the running loop's clock).
        max_wait: refuse (:class:`~headway.errors.MaxWaitExceededError`) rather than
            wait longer than this many seconds; ``None`` waits as long as needed.
        name: shown in events and errors.
        unit: ``"requests"`` or ``"tokens"``: what :meth:`reserve` charges.

    Waiting callers are served first come, first served. ``acquire`` and ``try_reserve``
    only tell the caller how long to wait; :meth:`wait`, :meth:`slot` and :meth:`execute`
    do the waiting, give the tokens back if cancelled and honour :meth:`pause_until`.

    >>> import asyncio
    >>> from headway import ManualClock
    >>> clock = ManualClock()
    >>> limiter = TokenBucketRateLimiter(10, max_tokens=1, clock=clock)
    >>> async def main() -> float:
    ...     for _ in range(5):
    ...         async with limiter.slot():
    ...             pass  # call the API here
    ...     return clock.now()
    >>> round(asyncio.run(main()), 6)  # one at once, then every 0.1 s
    0.4
    """

    __slots__ = (
        "__dict__",  # instances stay mockable: patch.object(obj, "method", ...)
        "_charge",
        "_clock",
        "_holes",
        "_is_requests",
        "_last",
        "_level",
        "_now",
        "_paused_until",
        "_period",
        "_prev_tail",
        "_rate",
        "_rps",
        "_self",
        "_seq",
        "_shift",
        "_tail",
        "_units",
        "max_tokens",
        "max_wait",
        "name",
        "unit",
    )

    def __init__(
        self,
        rate: float,
        period: float = 1.0,
        max_tokens: float | None = None,
        initial_tokens: float | None = None,
        *,
        clock: Clock | None = None,
        max_wait: float | None = None,
        name: str | None = None,
        unit: str = "requests",
    ) -> None:
        self._rate = _positive("rate", rate)
        self._period = _positive("period", period)
        self.max_tokens = self._rate if max_tokens is None else _positive("max_tokens", max_tokens)
        if initial_tokens is None:
            level = self.max_tokens
        else:
            level = _non_negative("initial_tokens", initial_tokens)
            if level > self.max_tokens:
                raise ConfigurationError(
                    f"initial_tokens ({level:g}) cannot exceed max_tokens ({self.max_tokens:g})"
                )
        self.max_wait = None if max_wait is None else _non_negative("max_wait", max_wait)
        if unit not in UNITS:
            raise ConfigurationError(f"unit must be one of {UNITS}, got {unit!r}")
        self.unit = unit
        self.name = name
        self._is_requests = unit == "requests"
        self._rps = self._rate / self._period
        self._clock = resolve_clock(clock)
        self._now = now_function(self._clock)
        self._self = (self,)
        self._units = (self._is_requests,)
        self._level = level
        self._last = self._now()
        self._paused_until = -math.inf
        self._shift = 0.0  # total seconds waiting callers were pushed back by pauses
        self._tail = -math.inf  # when the last caller queued may go
        self._prev_tail = -math.inf  # the tail before the latest waiting reservation
        self._seq = 0  # number of the latest waiting reservation
        self._charge = 0.0  # what the latest waiting reservation took
        self._holes: dict[int, tuple[float, float, float]] | None = None

    # -- state ------------------------------------------------------------------------
    @property
    def rate(self) -> float:
        """Units refilled per :attr:`period`; settable (from now on)."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._retime(_positive("rate", value), self._period)

    @property
    def period(self) -> float:
        """Seconds over which :attr:`rate` units refill; settable (from now on)."""
        return self._period

    @period.setter
    def period(self, value: float) -> None:
        self._retime(self._rate, _positive("period", value))

    def _retime(self, rate: float, period: float) -> None:
        # Bank the refill so far at the old rate, then refill at the new one.
        now = self._now()
        self._level = self._refill(now)
        self._last = now
        self._rate = rate
        self._period = period
        self._rps = rate / period

    @property
    def clock(self) -> Clock:
        """The clock this limiter reads and sleeps through."""
        return self._clock

    @property
    def tokens(self) -> float:
        """The level now, after refill; negative while callers wait (their debt).

        Settable: ``limiter.tokens = 0`` empties the bucket (a value above
        ``max_tokens`` is clamped to it).
        """
        return self._refill(self._now())

    @tokens.setter
    def tokens(self, value: float) -> None:
        value = _finite("tokens", value)
        self._level = value if value < self.max_tokens else self.max_tokens
        self._last = self._now()

    @property
    def paused_until(self) -> float | None:
        """Clock time before which nobody is admitted, or ``None`` if not paused now."""
        when = self._paused_until
        return when if when > self._now() else None

    def _refill(self, now: float) -> float:
        level = self._level + (now - self._last) * self._rps
        return level if level < self.max_tokens else self.max_tokens

    # -- reserving --------------------------------------------------------------------
    def try_reserve(self, tokens: float = 1.0, *, max_wait: float | None = None) -> float:
        """Reserve ``tokens`` now and return the seconds to wait before using them.

        The synchronous core of every other method: no await, no lock. Raises
        :class:`~headway.errors.RequestTooLargeError` when ``tokens`` exceeds
        ``max_tokens`` and :class:`~headway.errors.MaxWaitExceededError` when the wait
        would exceed ``max_wait`` (this call's, else the limiter's); both reserve nothing.
        """
        if not 0.0 <= tokens <= self.max_tokens:
            self._refuse(tokens)
        if self._take_at_once(tokens):
            return 0.0
        now = self._now()
        return self._reserve_late(tokens, self._refill(now) - tokens, now, max_wait)

    def _take_at_once(self, amount: float) -> bool:
        # Take `amount` (0 <= amount <= max_tokens) if it may go now: the bucket holds
        # it and nobody is queued.
        now = self._now()
        level = self._level + (now - self._last) * self._rps
        if level > self.max_tokens:
            level = self.max_tokens
        level -= amount
        if level >= 0.0 and now >= self._tail:
            self._level = level
            self._last = now
            return True
        return False

    def _reserve_late(
        self, tokens: float, level: float, now: float, max_wait: float | None
    ) -> float:
        # The caller must wait: for the level to climb back to zero, and in any case
        # until the last caller already queued (FIFO even after refunds).
        wait = -level / self._rps if level < 0.0 else 0.0
        behind = self._tail - now
        if behind > wait:
            wait = behind
            level = self._book_at(level, tokens, wait)
        limit = self.max_wait if max_wait is None else max_wait
        if limit is not None and wait > limit:
            self._reject(tokens, wait, limit)
        self._charge = self._refill(now) - level
        self._commit(now, level, wait)
        if _events_enabled():
            events.emit(events.LIMITER_WAIT, source=self.name, tokens=tokens, wait=wait)
        return wait

    def _book_at(self, level: float, tokens: float, wait: float) -> float:
        # Book a call that goes `wait` seconds from now: whatever this bucket would
        # refill above max_tokens meanwhile is lost, as it would be if the call came then.
        latest = self.max_tokens - tokens - wait * self._rps
        return latest if latest < level else level

    def _commit(self, now: float, level: float, wait: float) -> None:
        # Record a reservation that waits `wait` > 0 seconds: it becomes the queue's tail.
        self._level = level
        self._last = now
        self._prev_tail = self._tail
        self._tail = now + wait
        self._seq += 1

    def _release(self, seq: int, prev_tail: float, amount: float, mark: float) -> None:
        """Give back a waiting reservation that was cancelled.

        Only the queue's tail can be given back exactly: callers queued behind it have
        their turns fixed, and handing its tokens to a newcomer could send two calls at
        once. So a cancelled waiter in the middle leaves a hole (its turn passes unused),
        and when the tail is given back, the holes right below it go back too.
        """
        holes = self._holes
        if seq != self._seq:
            if holes is None:
                holes = self._holes = {}
            elif len(holes) >= _MAX_HOLES:
                for key in sorted(holes)[: _MAX_HOLES // 2]:
                    del holes[key]
            holes[seq] = (prev_tail, amount, mark)
            return
        now = self._now()
        level = self._refill(now)
        while True:
            level += amount
            self._tail = prev_tail + (self._shift - mark)
            seq -= 1
            hole = holes.pop(seq, None) if holes else None
            if hole is None:
                break
            prev_tail, amount, mark = hole
        self._seq = seq
        self._level = self._ceiling(level, now)
        self._last = now

    def _ceiling(self, level: float, now: float) -> float:
        # What a refund may lift the level to: max_tokens, and while a pause is in
        # force, no higher than lets the next caller go when the pause ends.
        if level > self.max_tokens:
            level = self.max_tokens
        left = self._paused_until - now
        if left > 0.0 and level > -left * self._rps:
            level = -left * self._rps
        return level

    def _refuse(self, tokens: float) -> NoReturn:
        if tokens > self.max_tokens:
            who = f" {self.name!r}" if self.name else ""
            raise RequestTooLargeError(
                f"asked for {tokens:g} {self.unit} but limiter{who} holds at most "
                f"{self.max_tokens:g} (max_tokens): split the request or raise max_tokens",
                requested=tokens,
                capacity=self.max_tokens,
            )
        raise ValueError(f"tokens must be a number >= 0, got {tokens!r}")

    def _reject(self, tokens: float, wait: float, limit: float) -> NoReturn:
        who = f" {self.name!r}" if self.name else ""
        what = f"rate limiter{who} would make {tokens:g} {self.unit}"
        refuse_wait(self.name, what, wait, limit, tokens=tokens)

    async def acquire(self, tokens: float = 1.0) -> float:
        """Reserve ``tokens`` at once; return how long to wait before proceeding.

        ``0.0`` means go now. The tokens are taken even when the caller must wait, so
        the caller must sleep the returned time (or :meth:`refund` if it gives up).
        Prefer :meth:`wait` or :meth:`slot`, which sleep and refund for you.
        """
        return self.try_reserve(tokens)

    async def wait(self, tokens: float = 1.0, *, max_wait: float | None = None) -> None:
        """Reserve ``tokens`` and sleep until they may be used.

        Cancellation-safe: a cancelled wait gives its tokens back (see "Giving back" in
        :mod:`headway.limits.bucket`). Pauses that happen meanwhile push the wait back.
        """
        delay = self.try_reserve(tokens, max_wait=max_wait)
        if delay > 0.0:
            await self._sleep_reserved(delay)

    async def _sleep_reserved(self, delay: float) -> None:
        # Called right after a reservation that must wait (nothing ran in between), so
        # the booking fields describe that reservation.
        seq, prev, amount, mark = self._seq, self._prev_tail, self._charge, self._shift
        try:
            await wait_reserved(self._clock, self._self, (mark,), delay)
        except BaseException:
            self._release(seq, prev, amount, mark)
            raise

    def slot(self, tokens: float = 1.0) -> _Slot:
        """``async with limiter.slot(n):`` waits for ``n`` tokens, refunding if cancelled."""
        return _Slot(self, tokens)

    async def execute(
        self, func: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Take one token (``self.acquire()``), sleep the wait, then ``await func(...)``.

        Cancellation while waiting gives the token back.
        """
        seq = self._seq
        delay = await self.acquire()
        if delay > 0.0:
            if self._seq == seq + 1:
                await self._sleep_reserved(delay)
            else:  # acquire() was replaced (a test double): just sleep
                await self._clock.sleep(delay)
        return await func(*args, **kwargs)

    @property
    def shift(self) -> float:
        """Total seconds waiting reservations were pushed back by pauses (only grows).

        A waiter compares it with the value when it booked to sleep the extra time.
        """
        return self._shift

    def cancel_booking(self, booking: Booking, amount: float) -> None:
        """Give back a waiting reservation's ``amount``, booked as ``booking``.

        Only the queue's tail is given back at once; a waiter cancelled in the middle
        leaves a hole that goes back with the tail (see the reservation's ``cancel``).
        """
        seq, prev_tail, mark = booking
        self._release(seq, prev_tail, amount, mark)

    def try_take(self, requests: float = 1.0, tokens: float = 0.0) -> bool:
        """Take one call's ``requests`` or ``tokens`` (by :attr:`unit`) if it may go now.

        The allocation-free form of :meth:`reserve_nowait` for a caller that needs no
        :class:`Reservation` (nothing to settle later): ``True`` took the units,
        ``False`` took nothing (the call would wait, or the amount is not valid) and the
        caller falls back to :meth:`reserve_nowait`.

        >>> bucket = TokenBucketRateLimiter(rate=1, max_tokens=1)
        >>> bucket.try_take(), bucket.try_take()
        (True, False)
        """
        # _take_at_once() inlined (one call less on the pipeline's fast path). The level
        # never exceeds max_tokens, so a level left >= 0 means 0 <= amount <= max_tokens
        # when both counts are >= 0 (NaN fails every comparison: nothing taken).
        now = self._now()
        level = self._level + (now - self._last) * self._rps
        if level > self.max_tokens:
            level = self.max_tokens
        level -= requests if self._is_requests else tokens
        if level >= 0.0 and now >= self._tail and requests >= 0.0 and tokens >= 0.0:
            self._level = level
            self._last = now
            return True
        return False

    def reserve_nowait(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Reservation:
        """Reserve for one call now, charging ``requests`` or ``tokens`` by :attr:`unit`.

        The synchronous core of :meth:`reserve` (as :meth:`MultiLimiter.reserve_nowait
        <headway.limits.MultiLimiter.reserve_nowait>`). The :class:`Reservation` is taken
        at once; ``await reservation.wait()`` sleeps its ``delay`` and cancels it if
        interrupted.
        """
        if not (requests >= 0.0 and tokens >= 0.0):
            raise ValueError(f"requests and tokens must be >= 0, got {requests!r}, {tokens!r}")
        amount = requests if self._is_requests else tokens
        if amount <= self.max_tokens and self._take_at_once(amount):
            return Granted(self, requests, tokens, amount)
        delay = self.try_reserve(amount, max_wait=max_wait)
        if delay == 0.0:
            return Granted(self, requests, tokens, amount)
        if delay > 0.0:
            booking: tuple[tuple[int, float, float], ...] | None = (
                (self._seq, self._prev_tail, self._shift),
            )
            charged = [self._charge]
        else:
            booking = None
            charged = [amount]
        return Reservation(
            delay, requests, tokens, self._clock, self._self, self._units, charged, booking
        )

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Reservation:
        """Reserve for one call (the :class:`~headway.limits.Limiter` protocol).

        See :meth:`reserve_nowait`.
        """
        return self.reserve_nowait(requests, tokens, max_wait=max_wait)

    # -- settling up ------------------------------------------------------------------
    def refund(self, tokens: float) -> None:
        """Give ``tokens`` back (an over-estimate settled); capped at ``max_tokens``.

        Never lifts the level so far that someone could go before a pause ends. Callers
        already waiting keep their turns; the refund goes to those who come after them.
        """
        tokens = _non_negative("tokens", tokens)
        now = self._now()
        self._level = self._ceiling(self._refill(now) + tokens, now)
        self._last = now

    def charge(self, tokens: float) -> None:
        """Take ``tokens`` more (an under-estimate); the level may go negative."""
        tokens = _non_negative("tokens", tokens)
        now = self._now()
        self._level = self._refill(now) - tokens
        self._last = now

    # -- hooks the HTTP layer drives --------------------------------------------------
    def pause_until(self, when: float) -> None:
        """Admit nobody before clock time ``when`` (a 429's Retry-After).

        Everyone sharing the limiter is held back: callers already waiting in
        :meth:`wait`, :meth:`slot` or :meth:`execute` are pushed back by the pause's
        length (keeping their order and spacing), new callers queue behind them, and
        the bucket restarts empty at ``when`` (no burst right after a 429). A pause that
        ends earlier than one in force changes nothing.
        """
        when = _finite("when", when)
        now = self._now()
        start = self._paused_until if self._paused_until > now else now
        delta = when - start
        if delta <= 0.0:
            return
        level = self._refill(now)
        if level > 0.0:
            level = 0.0
        self._level = level - delta * self._rps
        self._last = now
        self._paused_until = when
        self._shift += delta
        if self._tail > now:
            self._tail += delta
        # A burst of 429s each pauses a little later than the last: said once, not each
        if (start == now or delta >= PAUSE_NEWS) and events.enabled(logging.INFO):
            events.emit(
                events.LIMITER_PAUSED,
                source=self.name,
                level=logging.INFO,
                until=when,
                seconds=when - now,
            )

    def arrived_late(self, late: float) -> None:
        """A waiter went ``late`` seconds after its turn: keep the arrivals honest.

        :meth:`Reservation.wait <headway.limits.Reservation.wait>` and :meth:`wait` call
        it; a custom waiter that sleeps its own delay may too.

        The server counts arrivals, not turns. Lateness up to half a request's interval
        costs nothing (a window then holds at most ``max_tokens + rate * t`` arrivals,
        rounded down); beyond it, everyone queued behind and every newcomer moves back
        by the excess, so nobody follows the late caller closer than the rate allows.
        """
        excess = late - 0.5 / self._rps
        if excess <= 0.0 or not self._is_requests:
            return  # token limits: a call's tokens span far more than the lateness
        now = self._now()
        self._level = self._refill(now) - excess * self._rps
        self._last = now
        self._shift += excess
        if self._tail > now:
            self._tail += excess

    def pause(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` from now: ``pause_until(now + seconds)``."""
        seconds = _non_negative("seconds", seconds)
        self.pause_until(self._now() + seconds)

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429 came back (the :class:`~headway.limits.Limiter` hook a Policy calls).

        ``delay`` is the server's delay, already capped by the policy's
        ``max_server_delay``. Only when the server said its bucket is ``empty`` is
        everyone sharing this limiter paused: for ``delay``, or
        :data:`~headway.limits.RATE_LIMITED_PAUSE` seconds without one.
        """
        if empty:
            self.pause(delay if delay is not None and delay > 0.0 else RATE_LIMITED_PAUSE)

    def on_success(self) -> None:
        """An attempt succeeded: nothing to learn for a fixed limit (a no-op)."""

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Lower the level to what the server says is left; never raise it.

        ``sync(remaining, reset_after=None, limit=None)``: the server has ``remaining``
        units left (its ``x-ratelimit-remaining-*`` header). The level drops to
        ``remaining`` minus what waits here (reserved, not yet admitted) minus
        ``in_flight`` (sent but not yet counted by the server, if the caller knows), when
        that is lower than the local view. ``reset_after`` and ``limit`` are reported in
        the event; the refill keeps the configured rate.

        ``sync(unit, remaining, ...)`` (the :class:`~headway.limits.Limiter` protocol
        form) applies only when ``unit`` is this limiter's :attr:`unit` or :attr:`name`.
        """
        if (args and isinstance(args[0], str)) or "unit" in kwargs:
            unit, remaining, reset_after, limit, in_flight = _unit_form(*args, **kwargs)
            if unit != self.unit and unit != self.name:
                return
        else:
            remaining, reset_after, limit, in_flight = _plain_form(*args, **kwargs)
        self._sync(remaining, reset_after, limit, in_flight)

    def _sync(
        self, remaining: float, reset_after: float | None, limit: float | None, in_flight: float
    ) -> None:
        remaining = _finite("remaining", remaining)
        in_flight = _non_negative("in_flight", in_flight)
        if reset_after is not None:
            reset_after = _non_negative("reset_after", reset_after)
        if limit is not None:
            limit = _non_negative("limit", limit)
        now = self._now()
        level = self._refill(now)
        waiting = -level if level < 0.0 else 0.0
        target = max(remaining, 0.0) - in_flight - waiting
        before = level
        if target < level:
            self._level = target
            self._last = now
        if events.enabled():
            events.emit(
                events.LIMITER_SYNCED,
                source=self.name,
                remaining=remaining,
                reset=reset_after,
                limit=limit,
                before=before,
                after=min(target, level),
            )

    def __repr__(self) -> str:
        who = f"{self.name!r}, " if self.name else ""
        return (
            f"TokenBucketRateLimiter({who}rate={self.rate:g}, period={self.period:g}, "
            f"max_tokens={self.max_tokens:g}, unit={self.unit!r}, tokens={self.tokens:.6g})"
        )


def _unit_form(
    unit: str,
    remaining: float,
    reset_after: float | None = None,
    limit: float | None = None,
    *,
    in_flight: float = 0.0,
) -> tuple[str, float, float | None, float | None, float]:
    return unit, remaining, reset_after, limit, in_flight


def _plain_form(
    remaining: float,
    reset_after: float | None = None,
    limit: float | None = None,
    *,
    in_flight: float = 0.0,
) -> tuple[float, float | None, float | None, float]:
    return remaining, reset_after, limit, in_flight


def refuse_wait(name: str | None, what: str, wait: float, limit: float, **data: Any) -> NoReturn:
    """Refuse a reservation whose ``wait`` exceeds ``limit`` (its ``max_wait``).

    Emits ``LIMITER_REJECTED`` (INFO, with ``data``) and raises
    :class:`~headway.errors.MaxWaitExceededError`: "``what`` wait ... s, more than
    max_wait=...".
    """
    if events.enabled(logging.INFO):
        events.emit(
            events.LIMITER_REJECTED,
            source=name,
            level=logging.INFO,
            wait=wait,
            max_wait=limit,
            **data,
        )
    raise MaxWaitExceededError(
        f"{what} wait {wait:.3f}s, more than max_wait={limit:g}s; retry later or raise max_wait",
        retry_after=wait,
    )


#: How one bucket booked a waiting call: (its sequence number, the queue's tail before
#: it, the bucket's pause shift then); what cancelling the call needs.
Booking = tuple[int, float, float]


def reserve_together(
    specs: tuple[tuple[TokenBucketRateLimiter, bool], ...],
    requests: float,
    tokens: float,
    max_wait: float | None,
) -> tuple[float, list[float] | None, tuple[Booking, ...] | None]:
    """Reserve one call on every bucket at once, all or nothing: ``MultiLimiter``'s core.

    ``specs``: ``(bucket, charged_requests)`` pairs; a bucket is charged ``requests``
    when its flag is true, else ``tokens``. Returns ``(delay, charged, booking)``: the
    seconds to wait (every bucket books the call for then), the amounts each bucket was
    charged, and the bookings a cancelled wait gives back (``None`` when the call goes
    at once). When the delay exceeds ``max_wait`` nothing is reserved and ``charged``
    is ``None``. Raises :class:`~headway.errors.RequestTooLargeError` when a bucket can
    never hold its amount.
    """
    now = specs[0][0]._now()
    befores = []
    delay = 0.0
    for lim, is_requests in specs:
        amount = requests if is_requests else tokens
        rps = lim._rps
        cap = lim.max_tokens
        if amount > cap:
            lim._refuse(amount)
        before = lim._level + (now - lim._last) * rps
        if before > cap:
            before = cap
        befores.append(before)
        if before < amount:
            wait = (amount - before) / rps
            if wait > delay:
                delay = wait
        if lim._tail > now:
            wait = lim._tail - now
            if wait > delay:
                delay = wait
    charged = []
    if delay <= 0.0:
        for i, (lim, is_requests) in enumerate(specs):
            amount = requests if is_requests else tokens
            lim._level = befores[i] - amount
            lim._last = now
            charged.append(amount)
        return 0.0, charged, None
    if max_wait is not None and delay > max_wait:
        return delay, None, None
    booking = []
    for i, (lim, is_requests) in enumerate(specs):
        amount = requests if is_requests else tokens
        # Every bucket books the call for when it really goes (after the longest wait).
        level = lim._book_at(befores[i] - amount, amount, delay)
        charged.append(befores[i] - level)
        lim._commit(now, level, delay)
        booking.append((lim._seq, lim._prev_tail, lim._shift))
    return delay, charged, tuple(booking)


class _Slot:
    """``async with limiter.slot(n):`` — waits on enter; nothing to give back on exit."""

    __slots__ = ("_limiter", "_tokens")

    def __init__(self, limiter: TokenBucketRateLimiter, tokens: float) -> None:
        self._limiter = limiter
        self._tokens = tokens

    async def __aenter__(self) -> None:
        limiter = self._limiter
        delay = limiter.try_reserve(self._tokens)
        if delay > 0.0:
            await limiter._sleep_reserved(delay)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
