"""Several limits reserved atomically: requests and tokens, per second, minute and day.

An LLM API enforces several limits at once: requests per minute, tokens per minute,
often requests and tokens per day. A call may go only when every one of them allows it.
:class:`MultiLimiter` reserves on all of them in one step, all or nothing, and returns a
:class:`Reservation` whose ``delay`` is the longest wait among them. Once the response
tells the real token count, :meth:`Reservation.settle` refunds or charges the difference.

>>> import asyncio
>>> from headway import ManualClock
>>> clock = ManualClock()
>>> limits = MultiLimiter.for_llm(rpm=600, tpm=10_000, clock=clock)
>>> async def call() -> float:
...     async with limits.slot(tokens=6_000) as r:   # estimate before sending
...         r.settle(5_000)                          # usage from the response
...     async with limits.slot(tokens=6_000) as r:   # 5,000 left: wait for 1,000 more
...         pass
...     return clock.now()
>>> asyncio.run(call())  # 1,000 tokens at 10,000/min take 6 s
6.0
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import NoReturn

from headway import events
from headway._clock import Clock
from headway.errors import ConfigurationError
from headway.limits._reservation import RATE_LIMITED_PAUSE, Reservation
from headway.limits.bucket import (
    TokenBucketRateLimiter,
    _non_negative,
    refuse_wait,
    reserve_together,
)

__all__ = ["MultiLimiter", "Reservation"]

_MINUTE = 60.0
_DAY = 86_400.0


class MultiLimiter:
    """Reserve on several :class:`TokenBucketRateLimiter` at once: all or nothing.

    Each limiter's ``unit`` says what it is charged: ``"requests"`` limiters take the
    call's ``requests``, ``"tokens"`` limiters its ``tokens``. A reservation that one
    limiter refuses (too large, or a wait beyond ``max_wait``) takes nothing from any.
    The call proceeds when the slowest limiter allows; every limiter books it at that
    moment, so a fast limit cannot be bunched up behind a slow one.

    Args:
        limiters: the limits; they must share one clock.
        clock: defaults to the limiters' clock.
        max_wait: refuse rather than wait longer (per call: ``reserve(max_wait=...)``).
            The limiters' own ``max_wait`` does not apply here.
        name: shown in events and errors.

    Attributes:
        limiters: the limits, in the order given.
    """

    # "__dict__": instances stay mockable (patch.object(limiter, "reserve", ...)).
    __slots__ = ("__dict__", "_clock", "_specs", "_units", "limiters", "max_wait", "name")

    def __init__(
        self,
        limiters: Iterable[TokenBucketRateLimiter],
        *,
        clock: Clock | None = None,
        max_wait: float | None = None,
        name: str | None = None,
    ) -> None:
        self.limiters: tuple[TokenBucketRateLimiter, ...] = tuple(limiters)
        if not self.limiters:
            raise ConfigurationError("MultiLimiter needs at least one limiter")
        for lim in self.limiters:
            if not isinstance(lim, TokenBucketRateLimiter):
                raise ConfigurationError(
                    f"MultiLimiter takes TokenBucketRateLimiter instances, got {lim!r}"
                )
        if len({id(lim) for lim in self.limiters}) != len(self.limiters):
            raise ConfigurationError("the same limiter is listed twice")
        own = self.limiters[0].clock
        self._clock = own if clock is None else clock
        if any(lim.clock is not self._clock for lim in self.limiters):
            raise ConfigurationError(
                "all limiters of a MultiLimiter must share its clock: pass the same "
                "clock= to each TokenBucketRateLimiter"
            )
        self.max_wait = None if max_wait is None else _non_negative("max_wait", max_wait)
        self.name = name
        self._units = tuple(lim.unit == "requests" for lim in self.limiters)
        self._specs = tuple(zip(self.limiters, self._units, strict=True))

    @classmethod
    def for_llm(
        cls,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        rpd: float | None = None,
        tpd: float | None = None,
        rps: float | None = None,
        burst: float | None = None,
        clock: Clock | None = None,
        max_wait: float | None = None,
        name: str | None = None,
    ) -> MultiLimiter:
        """The limits an LLM provider publishes, as one :class:`MultiLimiter`.

        Args:
            rpm, tpm: requests / tokens per minute.
            rpd, tpd: requests / tokens per day.
            rps: requests per second.
            burst: the largest burst of requests (``max_tokens`` of the per-second and
                per-minute request limits); defaults to the limit itself. Daily limits
                keep their full capacity, and token limits theirs (it bounds the
                largest single request).

        Limiters are named ``"rps"``, ``"rpm"``, ``"rpd"``, ``"tpm"``, ``"tpd"`` (handy
        for :meth:`sync`).

        >>> limits = MultiLimiter.for_llm(rpm=500, tpm=30_000, burst=50)
        >>> [(lim.name, lim.rate, lim.period, lim.max_tokens) for lim in limits.limiters]
        [('rpm', 500.0, 60.0, 50.0), ('tpm', 30000.0, 60.0, 30000.0)]
        """
        specs = (
            ("rps", rps, 1.0, "requests", burst),
            ("rpm", rpm, _MINUTE, "requests", burst),
            ("rpd", rpd, _DAY, "requests", None),
            ("tpm", tpm, _MINUTE, "tokens", None),
            ("tpd", tpd, _DAY, "tokens", None),
        )
        limiters = [
            TokenBucketRateLimiter(rate, period, max_tokens=cap, clock=clock, name=label, unit=unit)
            for label, rate, period, unit, cap in specs
            if rate is not None
        ]
        if not limiters:
            raise ConfigurationError(
                "MultiLimiter.for_llm needs at least one of rpm, tpm, rpd, tpd, rps"
            )
        return cls(limiters, clock=clock, max_wait=max_wait, name=name)

    @property
    def clock(self) -> Clock:
        """The clock shared by the limiters."""
        return self._clock

    # -- reserving --------------------------------------------------------------------
    def reserve_nowait(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Reservation:
        """Reserve on every limiter now; the synchronous core of :meth:`reserve`.

        Raises :class:`~headway.errors.RequestTooLargeError` if one limiter can never
        hold the call, :class:`~headway.errors.MaxWaitExceededError` if the wait would
        exceed ``max_wait``; either way nothing is reserved.
        """
        if not (requests >= 0.0 and tokens >= 0.0):
            raise ValueError(f"requests and tokens must be >= 0, got {requests!r}, {tokens!r}")
        limit = self.max_wait if max_wait is None else max_wait
        delay, charged, booking = reserve_together(self._specs, requests, tokens, limit)
        limiters, units = self.limiters, self._units
        if charged is None:
            assert limit is not None  # only a wait beyond max_wait books nothing
            self._reject(requests, tokens, delay, limit)
        if booking is None:
            return Reservation(0.0, requests, tokens, self._clock, limiters, units, charged)
        if events.enabled():
            events.emit(
                events.LIMITER_WAIT,
                source=self.name,
                requests=requests,
                tokens=tokens,
                wait=delay,
            )
        return Reservation(delay, requests, tokens, self._clock, limiters, units, charged, booking)

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Reservation:
        """Reserve ``requests`` and (estimated) ``tokens`` on every limit at once.

        Returns at once: the units are taken and ``reservation.delay`` says how long to
        wait. ``await reservation.wait()`` sleeps it, cancel-safe; or use :meth:`slot`.
        """
        return self.reserve_nowait(requests, tokens, max_wait=max_wait)

    def slot(self, requests: float = 1.0, tokens: float = 0.0) -> _MultiSlot:
        """``async with limits.slot(requests, tokens) as r:`` waits until the call may go.

        Cancelled while waiting, it gives everything back. Inside, ``r.settle(actual)``
        corrects the token estimate.
        """
        return _MultiSlot(self, requests, tokens)

    def _reject(self, requests: float, tokens: float, delay: float, limit: float) -> NoReturn:
        who = f" {self.name!r}" if self.name else ""
        what = f"rate limits{who} would make a call of {requests:g} requests and {tokens:g} tokens"
        refuse_wait(self.name, what, delay, limit, requests=requests, tokens=tokens)

    # -- hooks the HTTP layer drives --------------------------------------------------
    def pause_until(self, when: float) -> None:
        """Admit nobody on any of the limits before clock time ``when``."""
        for lim in self.limiters:
            lim.pause_until(when)

    def pause(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` from now."""
        seconds = _non_negative("seconds", seconds)
        self.pause_until(self._clock.now() + seconds)

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429: pause every limit if the server's bucket is ``empty`` (see
        :meth:`TokenBucketRateLimiter.on_rate_limited`)."""
        if empty:
            self.pause(delay if delay is not None and delay > 0.0 else RATE_LIMITED_PAUSE)

    def on_success(self) -> None:
        """An attempt succeeded: a no-op for fixed limits."""

    def sync(
        self,
        unit: str,
        remaining: float,
        reset_after: float | None = None,
        limit: float | None = None,
        *,
        in_flight: float = 0.0,
    ) -> None:
        """Lower one limit's level to the server's ``remaining`` figure (never raise it).

        ``unit`` is a limiter's name (``"rpm"``) or a unit (``"requests"``,
        ``"tokens"``). For a unit, the limiter whose rate is closest to the server's
        ``limit`` is synced, or without ``limit`` the one with the shortest period
        (lowering a daily limit to a per-minute figure would starve it for hours).
        Unknown units are ignored. See :meth:`TokenBucketRateLimiter.sync`.
        """
        target = self._sync_target(unit, limit)
        if target is not None:
            target.sync(remaining, reset_after, limit, in_flight=in_flight)

    def _sync_target(self, unit: str, limit: float | None) -> TokenBucketRateLimiter | None:
        for lim in self.limiters:
            if lim.name is not None and lim.name == unit:
                return lim
        candidates = [lim for lim in self.limiters if lim.unit == unit]
        if not candidates:
            return None
        if limit is not None:
            return min(candidates, key=lambda lim: (abs(lim.rate - limit), lim.period))
        return min(candidates, key=lambda lim: lim.period)

    def __repr__(self) -> str:
        who = f"{self.name!r}, " if self.name else ""
        inner = ", ".join(
            f"{lim.name or lim.unit}={lim.rate:g}/{lim.period:g}s" for lim in self.limiters
        )
        return f"MultiLimiter({who}{inner})"


class _MultiSlot:
    """``async with limits.slot(...) as reservation:`` — reserve, wait, cancel-safe."""

    __slots__ = ("_limiter", "_requests", "_tokens")

    def __init__(self, limiter: MultiLimiter, requests: float, tokens: float) -> None:
        self._limiter = limiter
        self._requests = requests
        self._tokens = tokens

    async def __aenter__(self) -> Reservation:
        reservation = self._limiter.reserve_nowait(self._requests, self._tokens)
        if reservation.delay > 0.0:
            await reservation.wait()
        return reservation

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
