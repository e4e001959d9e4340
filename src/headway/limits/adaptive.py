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
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from headway import events
from headway._clock import Clock, resolve_clock
from headway.errors import ConfigurationError, MaxWaitExceededError
from headway.events import Event, EventListener
from headway.limits._reservation import Reservation
from headway.limits.bucket import TokenBucketRateLimiter
from headway.limits.multi import MultiLimiter

__all__ = [
    "RATE_CHANGED",
    "STATE_FIELDS",
    "AdaptiveLimiter",
    "LearningLimiter",
    "RateChanged",
    "RateControl",
    "SharedLearningLimiter",
    "check_ceilings",
    "describe_learned",
    "limit_headers",
]

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
#: Additive increase: this share of the rate at the last decrease, per second; below
#: _RECOVER of that rate (where the server surely has room) _ALPHA_FAST. Slow start
#: overshoots by more before its first 429: the quick return goes to _RECOVER_SLOW_START.
_ALPHA = 0.015
_ALPHA_FAST = 0.1
_RECOVER = 0.9
_RECOVER_SLOW_START = 0.6
#: How much an advertised limit is lowered per rate 429 that says the bucket is empty,
#: and how fast it comes back (share of the advertised limit per second).
_SHARE_CUT = 0.85
_SHARE_BACK = 0.02
#: Decreases closer together than this count as one (a burst of 429s is one signal).
_HOLD = 1.0
#: The least rate probing goes down to, per minute; with a user ceiling, never below this
#: share of it either (a user who allows 60,000/min is not served by 1/min: random 429s
#: that carry no rate headers must slow a run, not stall it).
_FLOOR_RPM = 1.0
_FLOOR_SHARE = 0.01
#: Calls are booked at most this many seconds ahead (or two calls' worth, if longer).
_HORIZON = 0.5
#: Relative change of the rate in force worth an event.
_REPORT = 0.02
#: Following a bucket the server reports (remaining counts): seconds between two
#: estimates of what others draw, the weight of a new estimate, the level aimed at (a
#: share of the most the bucket was seen to hold), and how many seconds a gap between
#: that level and the one reported takes to close.
_TRACK_STEP = 1.0
_TRACK_WEIGHT = 0.5
_TRACK_LEVEL = 0.5
_TRACK_CLOSE = 5.0
#: The rate delivered lately (what a probe falls back to after a 429 from a server that
#: enforces in frames): answers counted about once a second, over up to this many
#: samples, and over at least this many seconds.
_DELIVERED_SAMPLES = 12
_DELIVERED_SPAN = 5.0
#: A server that reports remaining counts but no limit and no reset time (Azure) may
#: count in fixed frames: a count that jumps back up by at least this many, to at least
#: this share of the most seen, marks a new frame; two such marks give its length.
_FRAME_JUMP = 3.0
_FRAME_FULL = 0.8
#: How many frame starts are kept to measure the frame length.
_FRAME_STARTS = 16
#: A frame's allowance is paced over the time the frame surely has left, but over no less
#: than this share of the longest frame length (a late-seen start must not burst).
_FRAME_PACE_SHARE = 0.5
#: Where in the frame ends the range allows (0: the earliest, 1: the latest) the pace aims
#: to have used the allowance: an end sooner loses a little of it, but the calls still
#: going then see the next start closely (the range narrows); an end later pauses.
_FRAME_AIM = 0.5
#: The least share of an advertised limit the limiter keeps.
_SHARE_MIN = 0.05
#: A remaining count this recent (seconds), and at least this share of the most seen,
#: says the server's bucket has room: a 429 without rate headers then concerns that one
#: request (it backs off alone), not the bucket.
_FRESH = 2.0
_ROOM = 0.25


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
        "_frame_hint",
        "_frame_range",
        "_frame_starts",
        "_mark",
        "_probe_at",
        "_recover",
        "advertised",
        "capacity",
        "ceiling",
        "floor",
        "frame",
        "learned",
        "left",
        "left_at",
        "others",
        "peak",
        "rate",
        "share",
        "slow_start",
    )

    def __init__(self, *, ceiling: float | None, start: float) -> None:
        self.ceiling = None if ceiling is None else float(ceiling)
        self.floor = _FLOOR_RPM if ceiling is None else max(_FLOOR_RPM, ceiling * _FLOOR_SHARE)
        self.advertised: float | None = None
        self.learned = start if ceiling is None else min(start, ceiling)
        self.peak = self.learned  # the rate at the last decrease (probing's yardstick)
        self.share = 1.0  # of the advertised limit, lowered by 429s of a shared key
        self.slow_start = True
        self._recover = 0.0  # probing comes back fast up to this rate after a decrease
        self._cut_at = -math.inf
        self._probe_at: float | None = None
        self._back_at: float | None = None
        self.capacity = 0.0  # the most the server's bucket was seen to hold
        self.left = 0.0  # its latest remaining count, read at clock time left_at
        self.left_at = -math.inf
        self.others = 0.0  # what others draw from it, per minute (estimated)
        self._mark: tuple[float, float, float] | None = None
        self.frame: float | None = None  # the length of the server's fixed frames, if learned
        # frame starts seen: (number, clock time of the count before, of the jump)
        self._frame_starts: list[tuple[int, float, float]] = []
        self._frame_range = (0.0, math.inf)  # the frame lengths they allow
        self._frame_hint: tuple[float, float] | None = None  # where a 429 said one ends
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
        elif self.learned < self._recover:
            self.learned = min(self.learned + _ALPHA_FAST * self.peak * dt, self._recover)
        else:
            self.learned += _ALPHA * self.peak * dt
        if ceiling is not None and self.learned > ceiling:
            self.learned = ceiling
        return self.update()

    def rate_limited(self, now: float, delivered: float | None = None) -> bool:
        """A rate 429 said the server's bucket is empty: decrease (once per hold).

        ``delivered`` is what the server let through over the last several seconds,
        per minute, if known. Past slow start, probing drops to it when that is lower
        than the multiplicative decrease: a server that enforces in frames (Azure's
        10 s) admits a burst at the start of each frame, so a probe can climb far above
        the enforced rate between two 429s; what got through is that rate.
        """
        if now - self._cut_at < _HOLD or self.frame is not None:
            # A server counting in fixed frames refuses the rest of a frame once its
            # allowance is used, whoever used it: the pause until the frame ends is the
            # answer; the rate learned from the frames holds.
            return False
        self._cut_at = now
        if self.advertised is not None:
            self.share = max(_SHARE_MIN, self.share * _SHARE_CUT)
            self._back_at = now
            return self.update()
        current = min(self.learned, self.rate)
        cut = current * (_BETA_SLOW_START if self.slow_start else _BETA)
        self._recover = current * (_RECOVER_SLOW_START if self.slow_start else _RECOVER)
        if delivered is not None and not self.slow_start and delivered < cut:
            current = cut = self._recover = delivered
        self.slow_start = False
        self.peak = current
        self.learned = max(self.floor, cut)
        self._probe_at = now
        return self.update()

    def has_room(self, now: float) -> bool:
        """Whether a recent remaining count says the server's bucket has room."""
        return (
            now - self.left_at <= _FRESH and self.left >= 2.0 and self.left >= _ROOM * self.capacity
        )

    def track(self, remaining: float, now: float, sent: float | None) -> bool:
        """Follow the server's bucket: it holds ``remaining`` at ``now``.

        ``sent`` counts every call of ours the server admitted so far (``None``: the
        bucket does not refill continuously; only its level is noted). Once a second,
        what others draw from the same bucket is estimated from the refill the
        advertised limit gives, our admissions and the change of the level; the share
        of the limit in force becomes what they leave, corrected to keep the bucket
        about half full (so neither a 429 nor an overflow wastes the limit). ``True``
        if the rate moved.
        """
        if remaining > self.capacity:
            self.capacity = remaining
        before_left, before_at = self.left, self.left_at
        self.left, self.left_at = remaining, now
        limit = self.advertised
        if sent is None:
            if limit is None or self.frame is not None:
                return self._frame_jump(before_left, before_at, remaining, now)
            return False
        mark = self._mark
        if limit is None or mark is None:
            self._mark = (now, remaining, sent)
            return False
        start, before, sent_before = mark
        elapsed = now - start
        if elapsed < _TRACK_STEP:
            return False
        self._mark = (now, remaining, sent)
        seen = (limit * elapsed / 60.0 - (sent - sent_before) - (remaining - before)) / elapsed
        seen = max(0.0, seen * 60.0)
        full = self.capacity - 1.0
        if before >= full or remaining >= full:
            seen = min(seen, self.others)  # the refill overflowed: only an upper bound
        self.others += _TRACK_WEIGHT * (seen - self.others)
        aim = _TRACK_LEVEL * self.capacity
        rate = limit - self.others + (remaining - aim) * 60.0 / _TRACK_CLOSE
        self.share = min(1.0, max(_SHARE_MIN, rate / limit))
        self._back_at = now
        return self.update()

    def follow_frames(self, remaining: float, now: float) -> bool:
        """Note ``remaining`` at ``now`` from a server that gives no limit and no reset
        time, and learn its fixed frames from the count jumping back up, whatever rate is
        in force (a worker sharing a limit may have taken another worker's pace).
        ``True`` if the rate moved.
        """
        if remaining > self.capacity:
            self.capacity = remaining
        before_left, before_at = self.left, self.left_at
        self.left, self.left_at = remaining, now
        return self._frame_jump(before_left, before_at, remaining, now)

    def _frame_jump(self, before: float, before_at: float, remaining: float, now: float) -> bool:
        if (
            before_at > -math.inf
            and remaining >= before + _FRAME_JUMP
            and remaining >= _FRAME_FULL * self.capacity
        ):
            return self._new_frame(before_at, now)
        return False

    def frame_ends(self, now: float, delay: float) -> None:
        """A rate 429 at ``now`` said to come back in ``delay`` seconds.

        For a server counting in fixed frames that is when the frame ends: the next frame
        start is then known within the delay's precision (a whole number of seconds is
        taken as rounded up), not only within the pause it causes.
        """
        if not (delay > 0.0 and math.isfinite(delay)):
            return
        if self.advertised is not None and self.frame is None:
            return  # a limit the server advertises: no frames to learn
        end = now + delay
        self._frame_hint = (end - 1.0 if delay == math.floor(delay) else end - 0.001, end)

    @property
    def counts_frames(self) -> bool:
        """Whether the server seems to count in fixed frames (a 429 said when one ends)."""
        return self.frame is not None or self._frame_hint is not None

    def frame_wait(self, now: float, delay: float | None) -> float | None:
        """How long a rate 429 at ``now`` should pause everyone, at most ``delay``.

        With the server's frames learned, the pause ends when the next frame starts at
        the latest (the frame length and the latest start are known to a few hundredths
        of a second once measured; a server's whole-second Retry-After may be up to a
        second longer). ``None`` if no better than ``delay``.
        """
        starts, high = self._frame_starts, self._frame_range[1]
        if self.frame is None or not starts or not math.isfinite(high):
            return None
        hi = starts[-1][2]
        k = max(1, math.floor((now - hi) / high) + 1)
        wait = hi + k * high - now
        return wait if delay is None or wait < delay else None

    def _new_frame(self, after: float, now: float) -> bool:
        """The remaining count jumped back up: a fixed frame started between clock times
        ``after`` (the count before) and ``now``.

        Calls go all the time, so each jump is the next frame: any two starts, ``n``
        frames apart, bound the frame length between the nearest and the farthest ends
        of their spans, divided by ``n``. Every start narrows the range. The pace for
        the frame just started is the most a frame was seen to hold (less the call that
        reported it) over the time between now and an end this frame may have, halfway
        between the earliest and the latest the range allows: while the range is wide,
        the allowance is then about all used before the frame ends (at the longest
        length a part of it would be lost every frame); calls past it are not sent, the
        count reaching zero pauses everyone until the next frame. :attr:`frame` is the
        longest length the range allows.
        """
        hint, self._frame_hint = self._frame_hint, None
        if hint is not None and hint[0] < now and hint[1] > after:
            after, now = max(after, hint[0]), min(now, hint[1])
        starts = self._frame_starts
        index = starts[-1][0] + 1 if starts else 0
        low, high = self._frame_range
        for i, lo_i, hi_i in starts:
            n = index - i
            low = max(low, (after - hi_i) / n)
            high = min(high, (now - lo_i) / n)
        if low > high:  # not frames of one length after all: measure again from here
            starts.clear()
            starts.append((0, after, now))
            self._frame_range = (0.0, math.inf)
            return False
        # The earliest this frame can have started, from every start before it.
        first = max([after] + [lo_i + (index - i) * low for i, lo_i, _ in starts])
        starts.append((index, after, now))
        if len(starts) > _FRAME_STARTS:
            del starts[0]
        self._frame_range = (low, high)
        if not math.isfinite(high) or high <= 0.0:
            return False
        self.frame = high
        # This frame's allowance, paced to be used by an end halfway between the
        # earliest and the latest this frame may have (never faster than over half the
        # longest length: a start seen late must not become a burst).
        early = first + low - now
        left = max(early + _FRAME_AIM * (high - early), _FRAME_PACE_SHARE * high)
        self.advertised = max(self.capacity, 1.0) * 60.0 / min(left, high)
        return self.update()


def limit_headers(headers: Mapping[str, str]) -> tuple[str | None, ...]:
    """The request and token figures of a response, as the server wrote them.

    Returns ``(requests_limit, tokens_limit, requests_left, tokens_left,
    requests_reset)`` from OpenAI's ``x-ratelimit-*`` or Anthropic's
    ``anthropic-ratelimit-*`` headers, ``None`` where absent (a reset figure marks a
    continuously refilled bucket). ``headers`` must be case-insensitive, or a ``dict``
    with lower-case names.
    """
    get = headers.get
    return (
        get("x-ratelimit-limit-requests") or get("anthropic-ratelimit-requests-limit"),
        get("x-ratelimit-limit-tokens") or get("anthropic-ratelimit-tokens-limit"),
        get("x-ratelimit-remaining-requests") or get("anthropic-ratelimit-requests-remaining"),
        get("x-ratelimit-remaining-tokens") or get("anthropic-ratelimit-tokens-remaining"),
        get("x-ratelimit-reset-requests") or get("anthropic-ratelimit-requests-reset"),
    )


def check_ceilings(rpm: float | None, tpm: float | None, burst_seconds: float) -> None:
    """Refuse ceilings that are not numbers > 0 (or ``None``) and a burst that is not > 0."""
    for what, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigurationError(f"{what} must be a number > 0 or None, got {value!r}")
    if not (burst_seconds > 0 and math.isfinite(burst_seconds)):
        raise ConfigurationError(f"burst_seconds must be > 0, got {burst_seconds!r}")


class LearningLimiter:
    """What every limiter that learns the server's limit shares (local, Redis, Ray).

    Holds a :class:`RateControl` per unit, the display methods, the burst rule and the
    :class:`RateChanged` events. A subclass says how its buckets take a new rate
    (:meth:`_apply`) and where pauses go (:meth:`pause_until`).
    """

    name: str | None
    burst_seconds: float
    listeners: tuple[EventListener, ...]
    requests: RateControl
    tokens: RateControl | None
    rate_limited_count: int
    _clock: Clock
    _reported: dict[str, float]

    def _learn(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        start_rpm: float,
        burst_seconds: float,
        clock: Clock | None,
        name: str | None,
        listeners: tuple[EventListener, ...],
    ) -> None:
        check_ceilings(rpm, tpm, burst_seconds)
        if not (start_rpm > 0 and math.isfinite(start_rpm)):
            raise ConfigurationError(f"start_rpm must be a number > 0, got {start_rpm!r}")
        self.name = name
        self.burst_seconds = float(burst_seconds)
        self._clock = resolve_clock(clock)
        self.listeners = tuple(listeners)
        self.requests = RateControl(ceiling=rpm, start=start_rpm)
        self.tokens = None
        if tpm is not None:  # tokens are not probed: the ceiling holds until advertised
            self.tokens = RateControl(ceiling=tpm, start=tpm)
            self._reported = {"tokens": self.tokens.rate}
        else:
            self._reported = {}
        self._reported["requests"] = self.requests.rate
        self.rate_limited_count = 0

    def _burst(self, rate: float) -> float:
        if self.requests.advertised is None:
            return 1.0  # probing: the rate is a guess, so no burst on top of it
        return max(1.0, rate / 60.0 * self.burst_seconds)

    @property
    def clock(self) -> Clock:
        """The clock this limiter reads and sleeps through."""
        return self._clock

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

    # -- pausing -------------------------------------------------------------------------
    def pause_until(self, when: float) -> None:  # pragma: no cover - every subclass has it
        """Admit nobody before clock time ``when``."""
        raise NotImplementedError

    def pause(self, seconds: float) -> None:
        """Admit nobody for ``seconds`` from now: :meth:`pause_until` ``now + seconds``."""
        self.pause_until(self._clock.now() + seconds)

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """``sync(unit, remaining, reset_after=None, limit=None)``: lower ``unit``'s level.

        The level drops to the server's ``remaining`` figure (never rises): the
        :class:`~headway.limits.Limiter` protocol's ``sync``, on the bucket in force.
        """
        self._pacer().sync(*args, **kwargs)

    def _pacer(self) -> Any:  # pragma: no cover - every subclass has it
        """The bucket (or buckets) the calls are paced on."""
        raise NotImplementedError

    def _wait_next_frame(self, now: float) -> None:
        """The learned frame's allowance is used: nobody goes before the next frame."""
        wait = self.requests.frame_wait(now, None)
        if wait is not None:
            self.pause_until(now + wait)

    def _rate_limited_pause(
        self, delay: float | None, booked: float = 0.0, old: float = 0.0
    ) -> None:
        """After a rate 429 that emptied the bucket: slow down, then pause everyone.

        Without a ``delay`` from the server the pause lets one call's worth refill.
        ``booked`` calls already booked at the ``old`` rate keep their spacing, so the
        pause grows for them to go at the new rate on average.
        """
        now = self._clock.now()
        if self.requests.rate_limited(now, self._delivered(now)):
            self._apply("requests", "rate_limited")
        rate = self.requests.rate
        if delay is None or not delay > 0.0:
            delay = 60.0 / rate
        if booked > 0.0 and 0.0 < rate < old:
            delay += booked * 60.0 * (1.0 / rate - 1.0 / old)
        self.pause_until(now + delay)

    def _delivered(self, now: float) -> float | None:
        """Calls the server answered per minute lately, if this limiter counts them."""
        return None

    def _apply(self, unit: str, reason: str) -> None:  # pragma: no cover - subclasses
        """Put the rate of ``unit``'s control in force; then :meth:`_report` it."""
        raise NotImplementedError

    def _report(self, unit: str, reason: str) -> None:
        """Publish a :class:`RateChanged` for ``unit`` when worth it (small probes are not)."""
        control = self.requests if unit == "requests" else self.tokens
        assert control is not None
        new = control.rate
        old = self._reported.get(unit, new)
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
        return f"{type(self).__name__}({who}rpm={rate:g} limited by {source})"


class AdaptiveLimiter(LearningLimiter):
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

    When the server reports what is left in its bucket (``x-ratelimit-remaining-*``)
    and advertises its limit, the limiter follows that bucket: it estimates what other
    clients of the same key draw and runs at what they leave, keeping the bucket about
    half full, before any 429 comes. A 429 without rate headers right after the server
    reported room is taken for that one request (it backs off alone).

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
        self._learn(
            rpm=rpm,
            tpm=tpm,
            start_rpm=start_rpm,
            burst_seconds=burst_seconds,
            clock=clock,
            name=name,
            listeners=listeners,
        )
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
        # A subclass that reserves its own way is not bypassed by try_take().
        self._subclassed = type(self).reserve_nowait is not AdaptiveLimiter.reserve_nowait
        self._seen_limits: tuple[str | None, str | None] = (None, None)
        self._admitted = 0.0  # calls the server answered (it admitted them)
        # (clock time, _admitted) about once a second, for the rate delivered lately
        self._counts: deque[tuple[float, float]] = deque(maxlen=_DELIVERED_SAMPLES)

    # -- construction helpers -------------------------------------------------------
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
    def limiters(self) -> tuple[TokenBucketRateLimiter, ...]:
        """The buckets in force (requests, and tokens once a token limit is known)."""
        return self._multi.limiters

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

    #: :meth:`try_take` never takes what a reservation would have to settle later, so a
    #: :class:`~headway.Policy` may use it for the attempts of ``run`` too.
    takes_unsettled = True

    def try_take(self, requests: float = 1.0, tokens: float = 0.0) -> bool:
        """Take one call's requests if it may go at once and there is nothing to settle.

        The allocation-free form of :meth:`reserve_nowait`: ``True`` took the call's
        turn on the requests bucket; ``False`` took nothing (a tokens limit is in force
        or the call brings a token estimate, so a :class:`Reservation` must record it;
        or the call would wait), and the caller reserves as usual.

        >>> limiter = AdaptiveLimiter(rpm=60, burst_seconds=1.0)
        >>> limiter.try_take(), limiter.try_take()
        (True, False)
        """
        if tokens or self._tpm_bucket is not None or self._subclassed:
            return False
        return self._rpm_bucket.try_take(requests, 0.0)

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

    def _pacer(self) -> MultiLimiter:
        return self._multi

    # -- feedback ------------------------------------------------------------------------
    def on_success(self) -> None:
        """An attempt was answered: probe upward while callers are held back by the rate."""
        self._admitted += 1.0
        counts = self._counts
        now = self._clock.now()
        if not counts or now - counts[-1][0] >= 1.0:
            counts.append((now, self._admitted))
        control = self.requests
        if control.advertised is not None and control.share >= 1.0:
            return
        bucket = self._rpm_bucket
        # Probe only while the rate binds: the bucket is (nearly) empty.
        if bucket.tokens >= bucket.max_tokens * 0.5:
            return
        if control.succeeded(now):
            self._apply("requests", "probe")

    def _delivered(self, now: float) -> float | None:
        # Only for a server that reports remaining counts (frames do: Azure); after a
        # silent server's 429 everyone paused, so what got through understates its rate.
        counts = self._counts
        if not counts or now - counts[0][0] < _DELIVERED_SPAN or not self.requests.capacity:
            return None
        start, before = counts[0]
        return (self._admitted - before) / (now - start) * 60.0

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429: with ``empty`` the server's bucket is empty, so pause and slow down.

        ``delay`` is the server's wait (already capped by the caller), or ``None``. When
        the bucket is not empty (``empty=False``, or a 429 with no remaining count just
        after the server reported room) only that request backs off; the turn it took is
        given back (the server did not count it).
        """
        self.rate_limited_count += 1
        bucket = self._rpm_bucket
        now = self._clock.now()
        if delay is not None and self.requests.capacity:
            self.requests.frame_ends(now, delay)
        if not empty or self.requests.has_room(now):
            # The server refused this one call without counting it: its turn comes back.
            bucket.refund(1.0)
            return
        control = self.requests
        wait = control.frame_wait(now, delay)
        if wait is not None:  # the frame is used up: everyone waits for the next one
            self.pause_until(now + wait)
            return
        # Calls booked at the old rate are spread out after the pause, unless the server
        # counts in frames: there the next frame's allowance is what bounds them.
        booked = 0.0 if control.counts_frames else -bucket.tokens
        self._rate_limited_pause(delay, booked, bucket.rate)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Read a response's limit headers: learn advertised limits, sync the levels.

        ``headers`` should be case-insensitive (aiohttp's and httpx's are); a plain
        ``dict`` must use lower-case names. Cheap when nothing changed.
        """
        req_limit, tok_limit, req_left, tok_left, req_reset = limit_headers(headers)
        if (req_limit, tok_limit) != self._seen_limits:
            self._seen_limits = (req_limit, tok_limit)
            self._advertised(req_limit, tok_limit)
        if req_left is not None:
            self._remaining("requests", req_left, req_limit, req_reset is not None)
            if self.requests.frame is not None and self.requests.left < 1.0:
                self._wait_next_frame(self._clock.now())
        if tok_left is not None and self._tpm_bucket is not None:
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

    def _remaining(self, unit: str, left: str, limit: str | None, refills: bool = False) -> None:
        remaining = _count(left)
        if remaining is None:
            return
        control = self.requests if unit == "requests" else self.tokens
        now = self._clock.now()
        # Only a bucket that refills continuously (it says when it is full again) can be
        # followed; a fixed window's count falls until the window ends.
        sent = self._admitted if refills else None
        if unit == "requests" and self.requests.track(remaining, now, sent):
            self._apply(unit, "tracked")
        total = _number(limit)
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
            and control.rate_limited(now)
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
        self._report(unit, reason)


class SharedLearningLimiter(LearningLimiter):
    """A :class:`LearningLimiter` whose bucket and learned rate many workers share.

    The base of the shared adaptive limiters of every store (Redis, the Ray actor): every
    worker on the same name paces on one shared bucket at one rate, the rate the workers
    learned together. Each worker runs the requests control law on the headers and 429s
    it sees; what it learns is published, and every worker adopts the newest state at
    most :attr:`sync_every` seconds later. So a 429 seen by one worker slows all of
    them, and a limit one worker reads in a header is the limit for all.

    Args:
        backend: the store's backend (its ``clock`` is the default clock).
        name: the limit's name; workers with the same name share bucket and rate.
        rpm, tpm: the user's ceilings (``None``: none). The token limit is shared only
            when ``tpm`` is given (at ``tpm``: it is the shared bucket's own limit).
        start_rpm, burst_seconds: as for :class:`AdaptiveLimiter`.
        sync_every: seconds between reads of the shared state.
        clock: where time is read and slept.
        listeners: called with a :class:`RateChanged` event on every change of the
            shared rate this worker makes or adopts.

    A store's subclass builds the shared bucket (:meth:`_new_shared`: ``reserve``,
    ``pause_until``, ``sync``) and implements :meth:`_set_rate` and :meth:`sync_learned`.
    """

    #: The longest pause one 429 may impose on every worker (seconds).
    max_shared_pause: float = 300.0
    backend: Any
    sync_every: float
    shared: Any
    _dirty: bool
    _synced_at: float
    _seen_limit: str | None

    def __init__(
        self,
        backend: Any,
        name: str,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        start_rpm: float = _START_RPM,
        burst_seconds: float = 1.0,
        sync_every: float = 0.5,
        clock: Clock | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> None:
        check_ceilings(rpm, tpm, burst_seconds)
        self._learn(
            rpm=rpm,
            tpm=None,  # the token ceiling is the shared bucket's own limit
            start_rpm=start_rpm,
            burst_seconds=burst_seconds,
            clock=clock if clock is not None else backend.clock,
            name=name,
            listeners=listeners,
        )
        self.backend = backend
        self.sync_every = float(sync_every)
        self._dirty = False
        self._synced_at = -math.inf
        self._seen_limit = None
        rate = self.requests.rate
        self.shared = self._new_shared(rate, self._burst(rate), tpm)

    def _new_shared(
        self, rate: float, burst: float, tpm: float | None
    ) -> Any:  # pragma: no cover - subclasses
        """The shared bucket: ``rate`` per minute with ``burst``, and ``tpm`` if given."""
        raise NotImplementedError

    def rate_in_force(self, unit: str = "requests") -> tuple[float, Source] | None:
        """The shared rate in force per minute and who sets it (requests only)."""
        return super().rate_in_force() if unit == "requests" else None

    def learned_limits(self) -> dict[str, float]:
        """What the workers learned together, per minute (requests)."""
        out = super().learned_limits()
        out.pop("tokens", None)
        return out

    # -- the Limiter protocol ----------------------------------------------------------
    def reserve_nowait(self, requests: float = 1.0, tokens: float = 0.0) -> None:
        """Always ``None``: a shared reservation takes a round trip (await :meth:`reserve`)."""
        return

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Any:
        """Sync the learned rate (every ``sync_every`` s), then reserve on the shared bucket.

        The rate may change any moment (a header, a 429, a probe, another worker's), so a
        call is booked at most half a second (or two intervals of the rate) ahead, as
        :class:`AdaptiveLimiter` does; past that it waits, holding nothing, and asks
        again: a rate learned meanwhile applies to it. So 40 calls at the 60/min start
        rate do not take waits of up to 39 s that outlive a higher learned rate.
        """
        clock = self._clock
        while True:
            if self._dirty or clock.now() - self._synced_at >= self.sync_every:
                await self.sync_learned()
            horizon = max(_HORIZON, 2.0 * 60.0 / self.requests.rate)
            try:
                return await self.shared.reserve(
                    requests,
                    tokens,
                    max_wait=horizon if max_wait is None else min(horizon, max_wait),
                )
            except MaxWaitExceededError as exc:
                if max_wait is not None and max_wait <= horizon:
                    raise
                ahead = (exc.retry_after or 0.0) - horizon
                if max_wait is not None:
                    max_wait = max(0.0, max_wait - ahead)
                await clock.sleep(min(max(ahead, 0.01), max(self.sync_every, 0.01)))

    def pause_until(self, when: float) -> None:
        """Admit nobody, in any worker, before ``when`` (at most :attr:`max_shared_pause`)."""
        self.shared.pause_until(min(when, self._clock.now() + self.max_shared_pause))

    def _pacer(self) -> Any:
        return self.shared

    def on_success(self) -> None:
        """An attempt was answered: probe upward (shared at the next sync)."""
        c = self.requests
        if c.advertised is not None and c.share >= 1.0:
            return
        if c.succeeded(self._clock.now()):
            self._apply("requests", "probe")

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429: when the server's bucket is empty, every worker pauses and slows."""
        self.rate_limited_count += 1
        c = self.requests
        now = self._clock.now()
        if delay is not None and c.capacity:
            c.frame_ends(now, delay)
        if empty and not c.has_room(now):
            wait = c.frame_wait(now, delay)
            if wait is not None:  # the frame is used up: every worker waits for the next
                self.pause_until(now + wait)
                return
            self._rate_limited_pause(delay)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn an advertised request limit; lower the shared level when little is left.

        A server that reports remaining counts but no limit and no reset time (Azure's
        fixed frames) has its frames learned as :class:`AdaptiveLimiter` does; the pace
        they give is shared, and a frame used up pauses every worker until the next.
        """
        limit, _, left_text, _, reset = limit_headers(headers)
        now = self._clock.now()
        if limit != self._seen_limit:
            self._seen_limit = limit
            value = _number(limit)
            if value is not None and self.requests.advertise(value, now):
                self._apply("requests", "advertised")
        left = None if left_text is None else _count(left_text)
        if left is None:
            return
        c = self.requests
        if limit is None and reset is None:
            if c.follow_frames(left, now):
                self._apply("requests", "tracked")
            if c.frame is not None and left < 1.0:
                self._wait_next_frame(now)
        else:
            if left > c.capacity:
                c.capacity = left
            c.left, c.left_at = left, now
        total = _number(limit)
        if total is None or left < 0.5 * total:
            self.shared.sync("requests", left)

    # -- sharing -------------------------------------------------------------------------
    def _apply(self, unit: str, reason: str) -> None:
        if reason != "shared":
            self._dirty = True
        c = self.requests
        self._set_rate(c.rate, self._burst(c.rate))
        self._report("requests", reason)

    def _set_rate(self, rate: float, burst: float) -> None:  # pragma: no cover - subclasses
        """Put ``rate`` per minute with ``burst`` in force on the shared bucket."""
        raise NotImplementedError

    async def sync_learned(self) -> None:  # pragma: no cover - subclasses
        """Publish what this worker learned, or adopt what the others did (one round trip)."""
        raise NotImplementedError

    def learned_state(self) -> dict[str, str]:
        """The requests control law's state, as text (what a worker publishes)."""
        c = self.requests
        return {
            "adv": "" if c.advertised is None else repr(c.advertised),
            "share": repr(c.share),
            "learned": repr(c.learned),
            "peak": repr(c.peak),
            "slow": "1" if c.slow_start else "0",
        }

    def adopt(self, state: Mapping[str, str]) -> None:
        """Take another worker's published state (from :meth:`learned_state`).

        An advertised limit wins: when the state has none (a worker that has not heard
        the server yet published after one that had) but this worker read one in a
        header, it keeps that limit and publishes it again, so every worker ends up at it.
        """
        c = self.requests
        if _adopt_state(c, state):
            self._apply("requests", "shared")
        seen = _number(self._seen_limit)
        if c.advertised is None and seen is not None and c.advertise(seen, self._clock.now()):
            self._apply("requests", "advertised")


def _adopt_state(c: RateControl, state: Mapping[str, str]) -> bool:
    """Set ``c`` to a published learned ``state``; ``True`` if its rate moved."""
    adv = state.get("adv", "")
    c.advertised = float(adv) if adv else None
    c.share = float(state.get("share", "1"))
    c.learned = float(state.get("learned", repr(c.learned)))
    if c.ceiling is not None and c.learned > c.ceiling:
        c.learned = c.ceiling
    c.peak = float(state.get("peak", repr(c.peak)))
    c.slow_start = state.get("slow", "1") == "1"
    return c.update()


def describe_learned(
    state: Mapping[str, str], *, rpm: float | None, start_rpm: float = _START_RPM
) -> tuple[float, Source, dict[str, float]]:
    """What a published learned ``state`` means under the ceiling ``rpm``: the request
    rate in force per minute, who sets it, and what was learned (for a summary).

    >>> describe_learned({"adv": "1200.0", "share": "1.0", "learned": "60.0",
    ...                   "peak": "60.0", "slow": "1"}, rpm=6000)
    (1200.0, 'server', {'requests': 1200.0})
    """
    c = RateControl(ceiling=rpm, start=start_rpm)
    _adopt_state(c, state)
    if c.advertised is not None:
        learned = {"requests": c.advertised * c.share}
    else:
        learned = {} if c.slow_start else {"requests": c.learned}
    return c.rate, c.source, learned


#: The fields of :meth:`SharedLearningLimiter.learned_state`.
STATE_FIELDS = ("adv", "share", "learned", "peak", "slow")


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
