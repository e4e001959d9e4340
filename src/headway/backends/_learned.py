"""The learned limit shared by every worker: the client side of a shared adaptive limiter.

Every worker on the same name paces on one shared bucket (a
:class:`~headway.backends._shared.SharedLimiter`) at one rate: the rate the workers
learned together. Each worker runs the control law of
:class:`~headway.limits.AdaptiveLimiter` (advertised limit, probing, the user's ceiling)
on the headers and 429s it sees; what it learns goes to the store, and every worker
adopts the newest state there at most ``sync_every`` seconds later. So a 429 seen by
one worker slows all of them, and a limit one worker reads in a header is the limit for
all. A store supplies the shared bucket and :meth:`SharedRateLearner.sync_learned`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from headway import events
from headway._clock import Clock, resolve_clock
from headway.backends._base import Limit
from headway.backends._shared import SharedBackend, SharedLimiter, SharedReservation
from headway.errors import ConfigurationError, MaxWaitExceededError
from headway.events import EventListener
from headway.limits.adaptive import (
    _START_RPM,
    RATE_CHANGED,
    RateChanged,
    RateControl,
    Source,
    _number,
)

__all__ = ["HORIZON", "MAX_SHARED_PAUSE", "SharedRateLearner", "adopt", "describe"]

#: The longest pause one 429 may impose on every worker (seconds).
MAX_SHARED_PAUSE = 120.0
#: How far ahead (seconds) a call is booked at most while the rate may still change.
HORIZON = 0.5


class SharedRateLearner:
    """An :class:`~headway.limits.AdaptiveLimiter` whose bucket and learned rate are shared.

    Args:
        backend: the shared backend (Redis, a Ray actor).
        name: the limit's name; workers with the same name share bucket and rate.
        rpm, tpm: the user's ceilings (``None``: none). The token limit is shared only
            when ``tpm`` is given (at ``tpm``).
        start_rpm, burst_seconds: as for :class:`~headway.limits.AdaptiveLimiter`.
        sync_every: seconds between reads of the shared state.
        clock: where time is read and slept.
        listeners: called with a :class:`~headway.limits.adaptive.RateChanged` event on
            every change of the shared rate this worker makes or adopts.

    A store's learner implements :meth:`new_shared` (the shared bucket) and
    :meth:`sync_learned` (one round trip: publish or adopt the learned state).
    """

    shared: SharedLimiter

    def __init__(
        self,
        backend: SharedBackend[Any, Any],
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
        for what, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigurationError(f"{what} must be a number > 0 or None, got {value!r}")
        if not (burst_seconds > 0 and math.isfinite(burst_seconds)):
            raise ConfigurationError(f"burst_seconds must be > 0, got {burst_seconds!r}")
        self.backend = backend
        self.name = name
        self.burst_seconds = float(burst_seconds)
        self.sync_every = float(sync_every)
        self._clock = resolve_clock(clock if clock is not None else backend.clock)
        self.requests = RateControl(ceiling=rpm, start=start_rpm)
        limits = [Limit(self.requests.rate, 60.0, burst=self._burst(self.requests.rate))]
        if tpm is not None:
            limits.append(Limit(tpm, 60.0, unit="tokens"))
        self.shared = self.new_shared(limits)
        self._dirty = False
        self._synced_at = -math.inf
        self._seen_limit: str | None = None
        self._reported = self.requests.rate
        self.rate_limited_count = 0
        self.listeners: tuple[EventListener, ...] = tuple(listeners)

    def new_shared(self, limits: list[Limit]) -> SharedLimiter:
        """The shared bucket, with these starting limits (the rate changes as learned)."""
        raise NotImplementedError

    async def sync_learned(self) -> None:
        """Publish what this worker learned, or adopt what the others did (one round trip)."""
        raise NotImplementedError

    def _burst(self, rate: float) -> float:
        if self.requests.advertised is None:
            return 1.0
        return max(1.0, rate / 60.0 * self.burst_seconds)

    # -- what a display needs ----------------------------------------------------------
    def rate_in_force(self, unit: str = "requests") -> tuple[float, Source] | None:
        """The shared rate in force per minute and who sets it (requests only)."""
        if unit != "requests":
            return None
        return self.requests.rate, self.requests.source

    def learned_limits(self) -> dict[str, float]:
        """What the workers learned together, per minute."""
        return learned_of(self.requests)

    # -- the Limiter protocol ----------------------------------------------------------
    def reserve_nowait(self, requests: float = 1.0, tokens: float = 0.0) -> None:
        """Always ``None``: a shared reservation takes a round trip (await :meth:`reserve`)."""
        return

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> SharedReservation:
        """Sync the learned rate (every ``sync_every`` s), then reserve on the shared bucket.

        The rate may change any moment (a header, a 429, a probe, another worker's), so a
        call is booked at most :data:`HORIZON` seconds (or two intervals of the rate)
        ahead, as :class:`~headway.limits.AdaptiveLimiter` does; past that it waits,
        holding nothing, and asks again: a rate learned meanwhile applies to it.
        """
        clock = self._clock
        while True:
            if self._dirty or clock.now() - self._synced_at >= self.sync_every:
                await self.sync_learned()
            horizon = max(HORIZON, 2.0 * 60.0 / self.requests.rate)
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
                await clock.sleep(min(max(ahead, 0.01), self.sync_every))

    def pause_until(self, when: float) -> None:
        """Admit nobody, in any worker, before ``when`` (at most ``MAX_SHARED_PAUSE`` s)."""
        self.shared.pause_until(min(when, self._clock.now() + MAX_SHARED_PAUSE))

    def pause(self, seconds: float) -> None:
        """:meth:`pause_until` ``now + seconds``."""
        self.pause_until(self._clock.now() + seconds)

    def sync(
        self,
        unit: str,
        remaining: float,
        reset_after: float | None = None,
        limit: float | None = None,
    ) -> None:
        """Lower the shared level of ``unit`` to the server's ``remaining`` figure."""
        self.shared.sync(unit, remaining, reset_after, limit)

    def on_success(self) -> None:
        """An attempt was answered: probe upward (shared at the next sync)."""
        c = self.requests
        if c.advertised is not None and c.share >= 1.0:
            return
        if c.succeeded(self._clock.now()):
            self._changed("probe")

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429: when the server's bucket is empty, every worker pauses and slows."""
        self.rate_limited_count += 1
        if not empty:
            return
        now = self._clock.now()
        if self.requests.rate_limited(now):
            self._changed("rate_limited")
        if delay is None or not delay > 0.0:
            delay = 60.0 / self.requests.rate
        self.pause_until(now + delay)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn an advertised request limit; lower the shared level when little is left."""
        get = headers.get
        limit = get("x-ratelimit-limit-requests") or get("anthropic-ratelimit-requests-limit")
        if limit != self._seen_limit:
            self._seen_limit = limit
            value = _number(limit)
            if value is not None and self.requests.advertise(value, self._clock.now()):
                self._changed("advertised")
        left = _number(
            get("x-ratelimit-remaining-requests") or get("anthropic-ratelimit-requests-remaining")
        )
        total = _number(limit)
        if left is not None and (total is None or left < 0.5 * total):
            self.shared.sync("requests", left)

    # -- sharing -------------------------------------------------------------------------
    def _changed(self, reason: str) -> None:
        self._dirty = True
        self._apply(reason)

    def _apply(self, reason: str) -> None:
        c = self.requests
        self.shared.set_limit(0, Limit(c.rate, 60.0, burst=self._burst(c.rate)))
        old, new = self._reported, c.rate
        if reason == "probe" and abs(new - old) < 0.02 * old:
            return
        self._reported = new
        if events.enabled(logging.INFO, self.listeners):
            events.publish(
                RateChanged(
                    RATE_CHANGED,
                    self.name,
                    {
                        "unit": "requests",
                        "old": old,
                        "new": new,
                        "limited_by": c.source,
                        "reason": reason,
                    },
                    self._clock.now(),
                    logging.INFO,
                    unit="requests",
                    old=old,
                    new=new,
                    limited_by=c.source,
                    reason=reason,
                ),
                self.listeners,
            )

    def _state(self) -> dict[str, str]:
        c = self.requests
        return {
            "adv": "" if c.advertised is None else repr(c.advertised),
            "share": repr(c.share),
            "learned": repr(c.learned),
            "peak": repr(c.peak),
            "slow": "1" if c.slow_start else "0",
        }

    def _adopt(self, state: Mapping[str, str]) -> None:
        c = self.requests
        seen = _number(self._seen_limit)
        if adopt(c, state):
            self._apply("shared")
        if c.advertised is None and seen is not None and c.advertise(seen, self._clock.now()):
            # A worker that had not heard the server's figure yet published after one
            # that had: what the server said wins, here and, published again, everywhere.
            self._changed("advertised")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, rpm={self.requests.rate:g} "
            f"limited by {self.requests.source})"
        )


def adopt(c: RateControl, state: Mapping[str, str]) -> bool:
    """Set ``c`` to a shared learned ``state``; ``True`` if its rate moved."""
    adv = state.get("adv", "")
    c.advertised = float(adv) if adv else None
    c.share = float(state.get("share", "1"))
    c.learned = float(state.get("learned", repr(c.learned)))
    if c.ceiling is not None and c.learned > c.ceiling:
        c.learned = c.ceiling
    c.peak = float(state.get("peak", repr(c.peak)))
    c.slow_start = state.get("slow", "1") == "1"
    return c.update()


def describe(
    state: Mapping[str, str], *, rpm: float | None, start_rpm: float = _START_RPM
) -> tuple[float, Source, dict[str, float]]:
    """What a shared learned ``state`` means under the ceiling ``rpm``: the request rate
    in force per minute, who sets it, and what was learned (for a driver's summary).

    >>> describe({"adv": "1200.0", "share": "1.0", "learned": "60.0", "peak": "60.0",
    ...           "slow": "1"}, rpm=6000)
    (1200.0, 'server', {'requests': 1200.0})
    """
    c = RateControl(ceiling=rpm, start=start_rpm)
    adopt(c, state)
    return c.rate, c.source, learned_of(c)


def learned_of(c: RateControl) -> dict[str, float]:
    """What the server advertised (times the share left) or probing found, per minute."""
    if c.advertised is not None:
        return {"requests": c.advertised * c.share}
    return {} if c.slow_start else {"requests": c.learned}
