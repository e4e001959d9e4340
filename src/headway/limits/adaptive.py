"""A limiter that follows the server's real limit: :class:`AdaptiveLimiter`.

The user's ``rpm`` / ``tpm`` are *ceilings*; the rate in force is the lower of the
ceiling and what the server enforces, learned while the calls go:

* **Advertised.** A server that sends ``x-ratelimit-limit-requests`` (OpenAI, Azure,
  LiteLLM, most compatible servers) or ``anthropic-ratelimit-requests-limit`` says its
  limit: the limiter runs at it (and at the token limit it advertises), lowered for a
  while after a rate 429 that says the bucket is empty (another client shares the key)
  and raised back as answers succeed or the server reports room to spare.
* **Probed.** A server that advertises nothing is probed: the limiter starts low, grows
  by half every second while answers succeed (slow start), and on the first rate 429
  settles into additive increase / multiplicative decrease around the enforced rate.

The burst is small (``burst_seconds`` of the rate, one second by default): providers
enforce per second or per few seconds, whatever their limits say per minute.

The engine drives it through the :class:`~headway.limits.Limiter` protocol: it reserves
with :meth:`~AdaptiveLimiter.reserve_nowait`, calls :meth:`~AdaptiveLimiter.on_success`
after every answer and :meth:`~AdaptiveLimiter.on_rate_limited` after every rate 429;
the HTTP layer feeds it every response's headers (:meth:`~AdaptiveLimiter.observe_headers`).
:meth:`~AdaptiveLimiter.rate_in_force` says what a display needs.

>>> import asyncio
>>> from headway import ManualClock
>>> clock = ManualClock()
>>> limiter = AdaptiveLimiter(rpm=600, clock=clock)
>>> limiter.rate_in_force()  # nothing heard from the server yet: start low
(60.0, 'server')
>>> limiter.observe_headers({"x-ratelimit-limit-requests": "300",
...                          "x-ratelimit-remaining-requests": "299"})
>>> limiter.rate_in_force()  # the server says 300/min: below the ceiling of 600
(300.0, 'server')
>>> limiter.observe_headers({"x-ratelimit-limit-requests": "5000",
...                          "x-ratelimit-remaining-requests": "4999"})
>>> limiter.rate_in_force()  # the server allows more than the user: the ceiling holds
(600.0, 'user')
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from headway import events
from headway._clock import Clock, resolve_clock
from headway.errors import ConfigurationError
from headway.events import Event, EventListener
from headway.limits._reservation import Reservation
from headway.limits.bucket import TokenBucketRateLimiter
from headway.limits.multi import MultiLimiter

__all__ = ["RATE_CHANGED", "AdaptiveLimiter", "RateChanged", "RateControl"]

#: Event kind of :class:`RateChanged`, published on every change of the rate in force.
RATE_CHANGED = "limiter.rate_changed"

Source = Literal["server", "user"]

#: Where probing starts, per minute, when nothing is known about the server.
_START_RPM = 60.0
#: Slow start: the probed rate grows by this factor per second of answers.
_GROWTH = 1.5
#: Multiplicative decrease: after slow start, and while slow-starting.
_BETA = 0.85
_BETA_SLOW_START = 0.5
#: Additive increase: this share of the rate at the last decrease, per second.
_ALPHA = 0.015
#: How much an advertised limit is lowered per rate 429 that says the bucket is empty,
#: and how fast it comes back (share of the advertised limit per second).
_SHARE_CUT = 0.85
_SHARE_BACK = 0.02
#: Decreases closer together than this count as one (a burst of 429s is one signal).
_HOLD = 1.0
#: The least rate probing goes down to, per minute.
_FLOOR_RPM = 1.0
#: Calls are booked at most this many seconds ahead (or two calls' worth, if longer).
_HORIZON = 0.5
#: Relative change of the rate in force worth an event.
_REPORT = 0.02


@dataclass(frozen=True, slots=True)
class RateChanged(Event):
    """The rate in force changed (a typed :class:`~headway.events.Event`).

    Attributes:
        unit: ``"requests"`` or ``"tokens"``.
        old, new: the rate in force before and after, per minute.
        limited_by: ``"server"`` (the server's limit binds) or ``"user"`` (the ceiling).
        reason: what changed it (``"advertised"``, ``"rate_limited"``, ``"probe"``).
    """

    unit: str = "requests"
    old: float = 0.0
    new: float = 0.0
    limited_by: Source = "server"
    reason: str = ""


class RateControl:
    """The control law for one unit: a ceiling, an advertised limit and a probe.

    Rates are per minute. :attr:`rate` is what is in force. Pure arithmetic on a clock
    reading: :class:`AdaptiveLimiter` and its Redis-shared variant drive it.

    >>> c = RateControl(ceiling=None, start=60.0)
    >>> c.rate, c.advertise(1200.0, now=0.0), c.rate
    (60.0, True, 1200.0)
    """

    __slots__ = (
        "_back_at",
        "_cut_at",
        "_probe_at",
        "advertised",
        "ceiling",
        "learned",
        "peak",
        "rate",
        "share",
        "slow_start",
    )

    def __init__(self, *, ceiling: float | None, start: float) -> None:
        self.ceiling = None if ceiling is None else float(ceiling)
        self.advertised: float | None = None
        self.learned = start if ceiling is None else min(start, ceiling)
        self.peak = self.learned  # the rate at the last decrease (probing's yardstick)
        self.share = 1.0  # of the advertised limit, lowered by 429s of a shared key
        self.slow_start = True
        self._cut_at = -math.inf
        self._probe_at: float | None = None
        self._back_at: float | None = None
        self.rate = self._target()

    def _target(self) -> float:
        target = self.advertised * self.share if self.advertised is not None else self.learned
        ceiling = self.ceiling
        return target if ceiling is None or target < ceiling else ceiling

    @property
    def source(self) -> Source:
        """``"user"`` when the ceiling binds, else ``"server"``."""
        ceiling = self.ceiling
        return "user" if ceiling is not None and self.rate >= ceiling else "server"

    def update(self) -> bool:
        """Recompute :attr:`rate` from the fields; ``True`` if it moved."""
        new = self._target()
        changed = new != self.rate
        self.rate = new
        return changed

    def advertise(self, limit: float, now: float) -> bool:
        """The server says its limit is ``limit`` per minute; ``True`` if the rate moved."""
        if not limit > 0.0 or limit == self.advertised:
            return False
        self.advertised = limit
        return self.update()

    def room(self) -> bool:
        """The server reports plenty left: a lowered share goes back to the full limit."""
        if self.share >= 1.0:
            return False
        self.share = 1.0
        return self.update()

    def succeeded(self, now: float) -> bool:
        """One call answered while the limiter was busy: probe upward."""
        if self.advertised is not None:
            if self.share >= 1.0:
                return False
            last = self._back_at
            self._back_at = now
            if last is None or now <= last:
                return False
            self.share = min(1.0, self.share + _SHARE_BACK * min(now - last, 1.0))
            return self.update()
        ceiling = self.ceiling
        if ceiling is not None and self.learned >= ceiling:
            self._probe_at = now
            return False
        last = self._probe_at
        self._probe_at = now
        if last is None or now <= last:
            return False
        dt = min(now - last, 1.0)
        if self.slow_start:
            self.learned *= _GROWTH**dt
        else:
            self.learned += _ALPHA * self.peak * dt
        if ceiling is not None and self.learned > ceiling:
            self.learned = ceiling
        return self.update()

    def rate_limited(self, now: float) -> bool:
        """A rate 429 said the server's bucket is empty: decrease (once per hold)."""
        if now - self._cut_at < _HOLD:
            return False
        self._cut_at = now
        if self.advertised is not None:
            self.share = max(0.1, self.share * _SHARE_CUT)
            self._back_at = now
            return self.update()
        current = min(self.learned, self.rate)
        beta = _BETA_SLOW_START if self.slow_start else _BETA
        self.slow_start = False
        self.peak = current
        self.learned = max(_FLOOR_RPM, current * beta)
        self._probe_at = now
        return self.update()


class AdaptiveLimiter:
    """Pace calls at the server's real limit, never above the user's ceiling.

    Args:
        rpm: requests per minute the user allows at most (a ceiling), or ``None``.
        tpm: tokens per minute the user allows at most (a ceiling), or ``None``. Without
            it, tokens are limited only once the server advertises a token limit.
        start_rpm: where probing starts when the server advertises nothing (default 60,
            or the ceiling if lower).
        burst_seconds: the burst allowed, in seconds of the rate in force (at least one
            request), once the server's limit is known (while probing: one request).
            Providers enforce per second or per few seconds; keep it small.
        clock: where time is read and slept (default: the running loop's clock).
        name: shown in events.
        listeners: called with a :class:`RateChanged` event on every change of the rate
            in force (which also goes to the global listeners and the ``headway`` logger).

    Satisfies :class:`~headway.limits.Limiter`: a :class:`~headway.Policy` or an
    :class:`~headway.http.Endpoint` takes it where a :class:`MultiLimiter` would go.
    """

    def __init__(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        start_rpm: float = _START_RPM,
        burst_seconds: float = 1.0,
        clock: Clock | None = None,
        name: str | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> None:
        for what, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigurationError(f"{what} must be a number > 0 or None, got {value!r}")
        if not (start_rpm > 0 and math.isfinite(start_rpm)):
            raise ConfigurationError(f"start_rpm must be a number > 0, got {start_rpm!r}")
        if not (burst_seconds > 0 and math.isfinite(burst_seconds)):
            raise ConfigurationError(f"burst_seconds must be > 0, got {burst_seconds!r}")
        self.name = name
        self.burst_seconds = float(burst_seconds)
        self._clock = resolve_clock(clock)
        self.listeners: tuple[EventListener, ...] = tuple(listeners)
        self.requests = RateControl(ceiling=rpm, start=start_rpm)
        self.tokens: RateControl | None = (
            None if tpm is None else RateControl(ceiling=tpm, start=tpm)
        )
        if self.tokens is not None:
            self.tokens.learned = tpm  # type: ignore[assignment]  # tokens are not probed
            self.tokens.rate = self.tokens._target()
        self._rpm_bucket = TokenBucketRateLimiter(
            self.requests.rate,
            60.0,
            max_tokens=self._burst(self.requests.rate),
            clock=self._clock,
            name="rpm",
            unit="requests",
        )
        self._tpm_bucket: TokenBucketRateLimiter | None = None
        if self.tokens is not None:
            self._tpm_bucket = self._token_bucket(self.tokens.rate)
        self._multi = self._build()
        self._reported = {"requests": self.requests.rate}
        if self.tokens is not None:
            self._reported["tokens"] = self.tokens.rate
        self._seen_limits: tuple[str | None, str | None] = (None, None)
        self.rate_limited_count = 0

    # -- construction helpers -------------------------------------------------------
    def _burst(self, rate: float) -> float:
        if self.requests.advertised is None:
            return 1.0  # probing: the rate is a guess, so no burst on top of it
        return max(1.0, rate / 60.0 * self.burst_seconds)

    def _token_bucket(self, rate: float) -> TokenBucketRateLimiter:
        # A token limit's capacity bounds the largest single call: a minute's worth.
        return TokenBucketRateLimiter(
            rate,
            60.0,
            max_tokens=rate,
            initial_tokens=min(rate, max(rate / 60.0 * self.burst_seconds, 1.0)),
            clock=self._clock,
            name="tpm",
            unit="tokens",
        )

    def _build(self) -> MultiLimiter:
        limiters = [self._rpm_bucket]
        if self._tpm_bucket is not None:
            limiters.append(self._tpm_bucket)
        return MultiLimiter(limiters, clock=self._clock, name=self.name)

    @property
    def clock(self) -> Clock:
        """The clock this limiter reads and sleeps through."""
        return self._clock

    @property
    def limiters(self) -> tuple[TokenBucketRateLimiter, ...]:
        """The buckets in force (requests, and tokens once a token limit is known)."""
        return self._multi.limiters

    # -- what a display needs ----------------------------------------------------------
    def rate_in_force(self, unit: str = "requests") -> tuple[float, Source] | None:
        """The rate in force per minute and who sets it: ``"server"`` or ``"user"``.

        ``None`` for ``unit="tokens"`` while no token limit is known.
        """
        control = self.requests if unit == "requests" else self.tokens
        if control is None:
            return None
        return control.rate, control.source

    def learned_limits(self) -> dict[str, float]:
        """What the server advertised or probing found, per minute, by unit."""
        out: dict[str, float] = {}
        for unit, control in (("requests", self.requests), ("tokens", self.tokens)):
            if control is None:
                continue
            if control.advertised is not None:
                out[unit] = control.advertised * control.share
            elif unit == "requests" and not control.slow_start:
                out[unit] = control.learned
        return out

    # -- reserving (the Limiter protocol) ----------------------------------------------
    def _queued(self) -> float:
        """Seconds of calls already booked ahead on the requests bucket."""
        bucket = self._rpm_bucket
        debt = -bucket.tokens
        return debt * 60.0 / bucket.rate if debt > 0.0 else 0.0

    def _horizon(self) -> float:
        # Book at most this far ahead: a rate learned later applies to the calls after.
        return max(_HORIZON, 2.0 * 60.0 / self._rpm_bucket.rate)

    def reserve_nowait(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Reservation | None:
        """Reserve for one call now, or ``None`` when calls are booked too far ahead.

        The rate may change any moment (a header, a 429, a probe), so calls are booked
        at most about half a second ahead; past that, ``None`` says: await
        :meth:`reserve`, which waits (holding nothing) until the queue is short.
        """
        if self._queued() > self._horizon():
            return None
        return self._multi.reserve_nowait(requests, tokens, max_wait=max_wait)

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Reservation:
        """Reserve for one call, first waiting (holding nothing) while the queue is long."""
        sleep = self._clock.sleep
        while True:
            ahead = self._queued() - self._horizon()
            if ahead <= 0.0:
                return self._multi.reserve_nowait(requests, tokens, max_wait=max_wait)
            # In short steps: a rate learned meanwhile shortens the queue at once.
            await sleep(min(max(ahead, 0.001), 0.1))

    def slot(self, requests: float = 1.0, tokens: float = 0.0) -> Any:
        """``async with limiter.slot(requests, tokens) as r:`` waits until the call may go."""
        return self._multi.slot(requests, tokens)

    def pause_until(self, when: float) -> None:
        """Admit nobody before clock time ``when``."""
        self._multi.pause_until(when)

    def pause(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` from now."""
        self._multi.pause(seconds)

    def sync(
        self,
        unit: str,
        remaining: float,
        reset_after: float | None = None,
        limit: float | None = None,
    ) -> None:
        """Lower the ``unit`` level to the server's ``remaining`` figure (never raise it)."""
        self._multi.sync(unit, remaining, reset_after, limit)

    # -- feedback ------------------------------------------------------------------------
    def on_success(self) -> None:
        """An attempt was answered: probe upward while callers are held back by the rate."""
        control = self.requests
        if control.advertised is not None and control.share >= 1.0:
            return
        bucket = self._rpm_bucket
        # Probe only while the rate binds: the bucket is (nearly) empty.
        if bucket.tokens >= bucket.max_tokens * 0.5:
            return
        if control.succeeded(self._clock.now()):
            self._apply("requests", "probe")

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429: with ``empty`` the server's bucket is empty, so pause and slow down.

        ``delay`` is the server's wait (already capped by the caller), or ``None``. When
        the bucket is not empty (``empty=False``) only that request backs off; the turn
        it took is given back (the server did not count it).
        """
        self.rate_limited_count += 1
        bucket = self._rpm_bucket
        if not empty:
            # The server refused this one call without counting it: its turn comes back.
            bucket.refund(1.0)
            return
        now = self._clock.now()
        old = bucket.rate
        booked = -bucket.tokens  # calls already booked at the old rate
        if self.requests.rate_limited(now):
            self._apply("requests", "rate_limited")
        if delay is None or not delay > 0.0:
            # No word from the server: let the bucket refill one call's worth.
            delay = 60.0 / self.requests.rate
        if booked > 0.0 and bucket.rate < old:
            # The calls booked keep their old spacing: pause longer, so that on average
            # they go at the new rate.
            delay += booked * 60.0 * (1.0 / bucket.rate - 1.0 / old)
        self._multi.pause_until(now + delay)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Read a response's limit headers: learn advertised limits, sync the levels.

        ``headers`` should be case-insensitive (aiohttp's and httpx's are); a plain
        ``dict`` must use lower-case names. Cheap when nothing changed.
        """
        get = headers.get
        req_limit = get("x-ratelimit-limit-requests") or get("anthropic-ratelimit-requests-limit")
        tok_limit = get("x-ratelimit-limit-tokens") or get("anthropic-ratelimit-tokens-limit")
        if (req_limit, tok_limit) != self._seen_limits:
            self._seen_limits = (req_limit, tok_limit)
            self._advertised(req_limit, tok_limit)
        req_left = get("x-ratelimit-remaining-requests") or get(
            "anthropic-ratelimit-requests-remaining"
        )
        if req_left is not None:
            self._remaining("requests", req_left, req_limit)
        if self._tpm_bucket is not None:
            tok_left = get("x-ratelimit-remaining-tokens") or get(
                "anthropic-ratelimit-tokens-remaining"
            )
            if tok_left is not None:
                self._remaining("tokens", tok_left, tok_limit)

    def _advertised(self, req_limit: str | None, tok_limit: str | None) -> None:
        now = self._clock.now()
        value = _number(req_limit)
        if value is not None and self.requests.advertise(value, now):
            self._apply("requests", "advertised")
        value = _number(tok_limit)
        if value is not None:
            if self.tokens is None:
                self.tokens = RateControl(ceiling=None, start=value)
                self._reported["tokens"] = value
            if self.tokens.advertise(value, now) or self._tpm_bucket is None:
                self._apply("tokens", "advertised")

    def _remaining(self, unit: str, left: str, limit: str | None) -> None:
        remaining = _count(left)
        if remaining is None:
            return
        total = _number(limit)
        control = self.requests if unit == "requests" else self.tokens
        if total is not None and remaining >= 0.5 * total:
            if control is not None and control.room():
                self._apply(unit, "advertised")
            return
        bucket = self._rpm_bucket if unit == "requests" else self._tpm_bucket
        if bucket is not None:
            bucket.sync(remaining)
        # The server's bucket is empty although we pace at its advertised limit: someone
        # else draws on it. Slow down before the 429s come.
        if (
            remaining < 1.0
            and control is not None
            and control.advertised is not None
            and control.rate_limited(self._clock.now())
        ):
            self._apply(unit, "rate_limited")

    def _apply(self, unit: str, reason: str) -> None:
        if unit == "requests":
            control = self.requests
            bucket = self._rpm_bucket
            if bucket.rate != control.rate:
                bucket.rate = control.rate
                bucket.max_tokens = self._burst(control.rate)
        else:
            assert self.tokens is not None
            control = self.tokens
            if self._tpm_bucket is None:
                self._tpm_bucket = self._token_bucket(control.rate)
                self._multi = self._build()
            elif self._tpm_bucket.rate != control.rate:
                self._tpm_bucket.rate = control.rate
                self._tpm_bucket.max_tokens = control.rate
        old = self._reported.get(unit, control.rate)
        new = control.rate
        if reason == "probe" and abs(new - old) < _REPORT * old:
            return
        self._reported[unit] = new
        if not events.enabled(logging.INFO, self.listeners):
            return
        limited_by = control.source
        change = RateChanged(
            RATE_CHANGED,
            self.name,
            {"unit": unit, "old": old, "new": new, "limited_by": limited_by, "reason": reason},
            self._clock.now(),
            logging.INFO,
            unit=unit,
            old=old,
            new=new,
            limited_by=limited_by,
            reason=reason,
        )
        events.publish(change, self.listeners)

    def __repr__(self) -> str:
        rate, source = self.requests.rate, self.requests.source
        who = f"{self.name!r}, " if self.name else ""
        return f"AdaptiveLimiter({who}rpm={rate:g} limited by {source})"


def _count(text: str) -> float | None:
    """A remaining count: a finite number >= 0, else ``None``."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 and math.isfinite(value) else None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None
