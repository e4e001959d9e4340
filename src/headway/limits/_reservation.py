"""The :class:`Reservation` every limiter hands out, and the cancel-safe wait behind it.

Kept apart from :mod:`headway.limits.bucket` and :mod:`headway.limits.multi` so that both
can build reservations without importing each other. Users import it from
:mod:`headway.limits` (or :mod:`headway.limits.multi`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from headway._clock import Clock
    from headway.limits.bucket import TokenBucketRateLimiter

__all__ = ["Reservation"]


#: How long a limiter pauses after a rate 429 that says its bucket is empty but gives no
#: delay (``on_rate_limited(None, empty=True)``), in seconds.
RATE_LIMITED_PAUSE = 0.5


async def wait_reserved(
    clock: Clock,
    limiters: Sequence[TokenBucketRateLimiter],
    marks: Sequence[float],
    delay: float,
) -> None:
    """Sleep ``delay``, then as long again as any of ``limiters`` was paused meanwhile.

    A pause shifts every reservation that was still waiting by the pause's length (see
    :meth:`TokenBucketRateLimiter.pause_until`); a waiter notices through each limiter's
    cumulative shift. A waiter woken late tells each limiter, which keeps the callers
    behind it from following too closely. The caller refunds on cancellation.
    """
    seen = list(marks)
    due = clock.now() + delay
    await clock.sleep(delay)
    while True:
        extra = 0.0
        for i, lim in enumerate(limiters):
            moved = lim.shift - seen[i]
            if moved > extra:
                extra = moved
            seen[i] = lim.shift
        if extra <= 0.0:
            break
        due += extra
        left = due - clock.now()
        if left > 0.0:  # a caller woken late already waited part of the shift
            await clock.sleep(left)
    # Woken late: what the server sees is the arrival, so the callers behind must not
    # follow closer than the rate allows (each limiter shifts its queue if need be).
    late = clock.now() - due
    if late > 0.0:
        for lim in limiters:
            lim.arrived_late(late)


class Reservation:
    """Units taken from one or more limiters for one call, reserved at once.

    Returned by :meth:`MultiLimiter.reserve <headway.limits.MultiLimiter.reserve>` and
    :meth:`TokenBucketRateLimiter.reserve <headway.limits.TokenBucketRateLimiter.reserve>`.
    The units are already taken when you get it; ``delay`` says how long the caller must
    wait before sending. :meth:`wait` sleeps that long (and longer if a limiter is paused
    meanwhile) and gives everything back if it is cancelled.

    Attributes:
        delay: seconds the caller must wait before proceeding (``0.0``: go now).
        requests: the requests reserved.
        tokens: the tokens reserved (the estimate, until :meth:`settle` says otherwise).

    >>> import asyncio
    >>> from headway import ManualClock
    >>> from headway.limits import MultiLimiter
    >>> clock = ManualClock()
    >>> limits = MultiLimiter.for_llm(rpm=60, tpm=1000, clock=clock)
    >>> r = asyncio.run(limits.reserve(tokens=400))
    >>> r.delay, r.tokens
    (0.0, 400)
    >>> r.settle(250)  # the response said 250 tokens: 150 go back
    >>> limits.limiters[1].tokens
    750.0
    """

    __slots__ = (
        "_booking",
        "_charged",
        "_clock",
        "_done",
        "_limiters",
        "_units",
        "delay",
        "requests",
        "tokens",
    )

    def __init__(
        self,
        delay: float,
        requests: float,
        tokens: float,
        clock: Clock,
        limiters: tuple[TokenBucketRateLimiter, ...],
        units: tuple[bool, ...],
        charged: list[float],
        booking: tuple[tuple[int, float, float], ...] | None = None,
    ) -> None:
        self.delay = delay
        self.requests = requests
        self.tokens = tokens
        self._clock = clock
        self._limiters = limiters
        self._charged = charged
        self._units = units  # True: the limiter counts requests
        # Per limiter (queue number, previous tail, pause mark) when the call must wait.
        self._booking = booking
        self._done = False

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` gave the reservation back."""
        return self._done

    def settle(self, tokens: float) -> None:
        """Record the actual token use: refund the over-estimate or charge the rest.

        Only limiters counting ``"tokens"`` are touched. A charge may take a limiter
        below zero (debt that later callers wait out); a refund never lifts it above
        ``max_tokens``. Settling again adjusts from the last settled figure. After
        :meth:`cancel` it does nothing.
        """
        if not tokens >= 0.0 or tokens == math.inf:
            raise ValueError(f"settled tokens must be a finite number >= 0, got {tokens!r}")
        if self._done:
            return
        diff = tokens - self.tokens
        if diff:
            units = self._units
            charged = self._charged
            for i, lim in enumerate(self._limiters):
                if not units[i]:
                    if diff > 0.0:
                        lim.charge(diff)
                    else:
                        lim.refund(-diff)
                    charged[i] += diff
        self.tokens = float(tokens)

    def cancel(self) -> None:
        """Give every reserved unit back (idempotent).

        For a call that was never sent: a cancelled wait, a rejected attempt. A waiting
        reservation with callers queued behind it cannot hand its turn to anyone
        without letting two calls go at once: its turn passes unused, and its units
        come back if the callers behind it cancel too.
        """
        if self._done:
            return
        self._done = True
        booking = self._booking
        for i, lim in enumerate(self._limiters):
            amount = self._charged[i]
            if booking is not None:
                lim.cancel_booking(booking[i], amount)
            elif amount > 0.0:
                lim.refund(amount)

    async def wait(self) -> None:
        """Sleep until the reservation may proceed; cancel it if the wait is cancelled.

        Honours pauses that happen while waiting (a 429's Retry-After pauses everyone).
        """
        booking = self._booking
        if booking is None or self._done:
            return
        try:
            await wait_reserved(self._clock, self._limiters, [b[2] for b in booking], self.delay)
        except BaseException:
            self.cancel()
            raise

    def __repr__(self) -> str:
        state = " cancelled" if self._done else ""
        return (
            f"<Reservation delay={self.delay:.6g} requests={self.requests:g} "
            f"tokens={self.tokens:g}{state}>"
        )


class Granted(Reservation):
    """A reservation one :class:`~headway.limits.TokenBucketRateLimiter` admitted at once.

    What :meth:`TokenBucketRateLimiter.reserve_nowait
    <headway.limits.TokenBucketRateLimiter.reserve_nowait>` hands out when the call may
    go now: the same interface as :class:`Reservation` (``delay`` is ``0.0``), built
    with fewer fields, since it has no wait to book.
    """

    __slots__ = ("_amount", "_bucket")

    def __init__(
        self, bucket: TokenBucketRateLimiter, requests: float, tokens: float, amount: float
    ) -> None:
        self.delay = 0.0
        self.requests = requests
        self.tokens = tokens
        self._bucket = bucket
        self._amount = amount
        self._done = False

    def settle(self, tokens: float) -> None:
        if not tokens >= 0.0 or tokens == math.inf:
            raise ValueError(f"settled tokens must be a finite number >= 0, got {tokens!r}")
        if self._done:
            return
        diff = tokens - self.tokens
        bucket = self._bucket
        if diff and bucket.unit == "tokens":
            if diff > 0.0:
                bucket.charge(diff)
            else:
                bucket.refund(-diff)
            self._amount += diff
        self.tokens = float(tokens)

    def cancel(self) -> None:
        if self._done:
            return
        self._done = True
        if self._amount > 0.0:
            self._bucket.refund(self._amount)

    async def wait(self) -> None:
        return None
