"""The learned limit shared through Redis: :class:`SharedAdaptiveLimiter`.

Every worker on the same name paces on one shared bucket (a
:class:`~headway.backends.redis.limiter.RedisLimiter`) at one rate: the rate the
workers learned together. Each worker runs the control law of
:class:`~headway.limits.AdaptiveLimiter` (advertised limit, probing, the user's ceiling)
on the headers and 429s it sees; what it learns is written to a Redis hash, and every
worker adopts the newest state there at most ``sync_every`` seconds later. So a 429 seen
by one worker slows all of them, and a limit one worker reads in a header is the limit
for all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from headway import events
from headway._clock import Clock, resolve_clock
from headway.backends._base import Limit
from headway.backends.redis.limiter import MAX_PAUSE, RedisLimiter
from headway.errors import ConfigurationError
from headway.events import EventListener
from headway.limits.adaptive import (
    _START_RPM,
    RATE_CHANGED,
    RateChanged,
    RateControl,
    Source,
    _number,
)

if TYPE_CHECKING:
    from headway.backends.redis.backend import RedisBackend
    from headway.backends.redis.reservation import RedisReservation

__all__ = ["MAX_SHARED_PAUSE", "SharedAdaptiveLimiter"]

#: The longest pause one 429 may impose on every worker (seconds).
MAX_SHARED_PAUSE = MAX_PAUSE
_FIELDS = ("adv", "share", "learned", "peak", "slow")


class SharedAdaptiveLimiter:
    """An :class:`~headway.limits.AdaptiveLimiter` whose bucket and learned rate live in Redis.

    Args:
        backend: the :class:`~headway.backends.RedisBackend`.
        name: the limit's name; workers with the same name share bucket and rate.
        rpm, tpm: the user's ceilings (``None``: none). The token limit is shared only
            when ``tpm`` is given.
        start_rpm, burst_seconds: as for :class:`~headway.limits.AdaptiveLimiter`.
        sync_every: seconds between reads of the shared state.
        clock: where time is read and slept.
        listeners: called with a :class:`~headway.limits.adaptive.RateChanged` event on
            every change of the shared rate this worker makes or adopts.
    """

    def __init__(
        self,
        backend: RedisBackend,
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
        self.shared = RedisLimiter(backend, name, limits, clock=self._clock)
        self._key = backend.key("learned", "{" + name + "}")
        self._version = -1
        self._dirty = False
        self._synced_at = -math.inf
        self._seen_limit: str | None = None
        self._reported = self.requests.rate
        self.rate_limited_count = 0
        self.listeners: tuple[EventListener, ...] = tuple(listeners)

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
        c = self.requests
        if c.advertised is not None:
            return {"requests": c.advertised * c.share}
        return {} if c.slow_start else {"requests": c.learned}

    # -- the Limiter protocol ----------------------------------------------------------
    def reserve_nowait(self, requests: float = 1.0, tokens: float = 0.0) -> None:
        """Always ``None``: a shared reservation takes a round trip (await :meth:`reserve`)."""
        return

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> RedisReservation:
        """Sync the learned rate (every ``sync_every`` s), then reserve on the shared bucket."""
        if self._clock.now() - self._synced_at >= self.sync_every or self._dirty:
            await self.sync_learned()
        return await self.shared.reserve(requests, tokens, max_wait=max_wait)

    def pause_until(self, when: float) -> None:
        """Admit nobody, in any worker, before ``when`` (at most :data:`MAX_SHARED_PAUSE`)."""
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
            fields = {"unit": "requests", "old": old, "new": new, "limited_by": c.source}
            events.publish(
                RateChanged(
                    RATE_CHANGED,
                    self.name,
                    {**fields, "reason": reason},
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

    def _state(self) -> dict[Any, Any]:
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
        adv = state.get("adv", "")
        c.advertised = float(adv) if adv else None
        c.share = float(state.get("share", "1"))
        c.learned = float(state.get("learned", repr(c.learned)))
        if c.ceiling is not None and c.learned > c.ceiling:
            c.learned = c.ceiling
        c.peak = float(state.get("peak", repr(c.peak)))
        c.slow_start = state.get("slow", "1") == "1"
        if c.update():
            self._apply("shared")

    async def sync_learned(self) -> None:
        """Publish what this worker learned, or adopt what the others did (one round trip)."""
        self._synced_at = self._clock.now()
        client = self.backend.client
        try:
            if self._dirty:
                self._dirty = False
                async with client.pipeline(transaction=True) as pipe:
                    pipe.hset(self._key, mapping=self._state())
                    pipe.hincrby(self._key, "version", 1)
                    pipe.pexpire(self._key, 3_600_000)
                    result = await pipe.execute()
                self._version = int(result[1])
                return
            raw = await client.hgetall(self._key)
        except (RedisError, OSError, TimeoutError):
            return  # Redis away: keep the local view; the shared bucket copes on its own
        state = {_text(k): _text(v) for k, v in raw.items()}
        version = int(state.get("version", "-1") or -1)
        if version > self._version and all(f in state for f in _FIELDS):
            self._version = version
            self._adopt(state)

    def __repr__(self) -> str:
        return (
            f"SharedAdaptiveLimiter({self.name!r}, rpm={self.requests.rate:g} "
            f"limited by {self.requests.source})"
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
