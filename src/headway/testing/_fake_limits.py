"""FakeAPI's rate limits: token buckets, admission and rate-limit headers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from headway._clock import Clock
from headway.testing.faults import format_go_duration

__all__: list[str] = []  # internal: FakeAPI uses it


@dataclass(slots=True)
class _Bucket:
    limit: float  # per period
    level: float
    stamp: float
    period: float = 60.0
    capacity: float = 0.0  # the most held at once; 0: the limit (a period's worth)

    def __post_init__(self) -> None:
        if not self.capacity:
            self.capacity = self.limit

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(
                self.capacity, self.level + (now - self.stamp) * self.limit / self.period
            )
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (``inf`` if it never fits)."""
        if amount > self.capacity:
            return math.inf
        missing = amount - self.level
        return 0.0 if missing <= 1e-9 else missing * self.period / self.limit

    def reset_after(self) -> float:
        return (self.capacity - self.level) * self.period / self.limit


class _LimitsMixin:
    """FakeAPI's ``rpm`` and ``tpm`` buckets: admission and ``x-ratelimit-*`` headers."""

    _clock: Clock
    _rpm: float | None
    _tpm: float | None
    _burst: float | None
    _requests_bucket: _Bucket | None
    _tokens_bucket: _Bucket | None
    _limits_pending: bool

    # -- configuration --------------------------------------------------------------------
    def set_limits(
        self, *, rpm: float | None = None, tpm: float | None = None, burst: float | None = None
    ) -> None:
        """Replace the request and token limits (buckets start full)."""
        if burst is not None and not burst >= 1:
            raise ValueError(f"burst must be at least 1 or None, got {burst!r}")
        self._rpm, self._tpm, self._burst = rpm, tpm, burst
        self._limits_pending = True

    # -- limits ---------------------------------------------------------------------------
    def _buckets(self) -> tuple[_Bucket | None, _Bucket | None]:
        now = self._clock.now()
        if self._limits_pending:
            self._limits_pending = False
            rpm = self._rpm
            if rpm:
                burst = self._burst or rpm
                self._requests_bucket = _Bucket(rpm, burst, now, capacity=burst)
            else:
                self._requests_bucket = None
            self._tokens_bucket = _Bucket(self._tpm, self._tpm, now) if self._tpm else None
        for bucket in (self._requests_bucket, self._tokens_bucket):
            if bucket is not None:
                bucket.refill(now)
        return self._requests_bucket, self._tokens_bucket

    def _limit_headers(self, anthropic: bool = False) -> dict[str, str]:
        rb, tb = self._buckets()
        out: dict[str, str] = {}
        for unit, bucket in (("requests", rb), ("tokens", tb)):
            if bucket is not None:
                limit, remaining = str(int(bucket.limit)), str(max(0, math.floor(bucket.level)))
                out[f"x-ratelimit-limit-{unit}"] = limit
                out[f"x-ratelimit-remaining-{unit}"] = remaining
                out[f"x-ratelimit-reset-{unit}"] = format_go_duration(bucket.reset_after())
                if anthropic:
                    # Anthropic's form: resets as RFC 3339 wall-clock timestamps.
                    when = datetime.now(UTC) + timedelta(seconds=bucket.reset_after())
                    out[f"anthropic-ratelimit-{unit}-limit"] = limit
                    out[f"anthropic-ratelimit-{unit}-remaining"] = remaining
                    out[f"anthropic-ratelimit-{unit}-reset"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        return out

    def _admit(self, tokens: int) -> tuple[str, float, float] | None:
        """Take one request and ``tokens``; or say which limit refused, and for how long."""
        rb, tb = self._buckets()
        waits = []
        if rb is not None:
            waits.append(("requests", rb.wait_for(1), rb.limit))
        if tb is not None:
            waits.append(("tokens", tb.wait_for(tokens), tb.limit))
        refused = [w for w in waits if w[1] > 0]
        if refused:
            return max(refused, key=lambda w: w[1])
        if rb is not None:
            rb.level -= 1
        if tb is not None:
            tb.level -= tokens
        return None
