"""FakeAPI's rate limits: enforcement profiles as objects.

A :class:`Limits` object decides admission (:meth:`Limits.admit`), the limit headers of
every answer (:meth:`Limits.headers`) and the shape of a 429 (:meth:`Limits.refusal`).
FakeAPI holds one; ``FakeAPI(profile=...)`` picks it by name:

==========  ==============================================================================
profile     what the server does
==========  ==============================================================================
``None``    continuous per-minute buckets (capacity ``burst``, default a minute's worth),
            ``x-ratelimit-*`` on every answer (Anthropic's form too on ``/v1/messages``),
            tokens counted as the answer's ``total_tokens``; 429 with ``retry-after(-ms)``
``openai``  continuous per-minute buckets; tokens counted at admission as prompt +
            ``max_tokens``; ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` on
            every answer; 429 with ``retry-after-ms`` and ``retry-after``
``azure``   the same limits in fixed 10-second frames (limit/6 per frame);
            ``x-ratelimit-remaining-*`` only; 429 with ``retry-after``
``anthropic`` per-second continuous refill (capacity limit/60);
            ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (RFC 3339
            resets); 429 with ``retry-after``, Anthropic's error body
``litellm`` fixed calendar-minute windows; 200s carry ``x-ratelimit-remaining-requests``
            and ``x-ratelimit-limit-requests`` only; 429s carry only
            ``llm_provider-retry-after`` and ``{"error": {"code": "429", ...}}``
``silent``  per-second continuous refill (capacity limit/60); no rate headers; 429
            with no Retry-After
``shared``  ``openai``, with an invisible second client draining the same buckets at a
            share of the limit that changes over time (``0% → 50% → 80% → 0%``, each
            for ``shared_phase`` seconds, then again)
==========  ==============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from headway.testing.faults import format_go_duration

__all__ = ["PROFILES", "Limits", "Refusal", "make_limits"]

#: The profile names ``FakeAPI(profile=...)`` and ``serve-fake --profile`` accept.
PROFILES = ("openai", "azure", "anthropic", "litellm", "silent", "shared")


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

    def take(self, amount: float) -> None:
        self.level -= amount


@dataclass(slots=True)
class _Window:
    """A fixed window: ``allowance`` per ``length`` seconds, reset at each boundary."""

    limit: float  # per minute, as advertised
    allowance: float
    length: float
    start: float = -math.inf
    used: float = 0.0

    def refill(self, now: float) -> None:
        start = math.floor(now / self.length) * self.length
        if start != self.start:
            self.start = start
            self.used = 0.0

    @property
    def level(self) -> float:
        return self.allowance - self.used

    @property
    def capacity(self) -> float:
        return self.allowance

    def wait_for(self, amount: float) -> float:
        if amount > self.allowance:
            return math.inf
        if self.used + amount <= self.allowance + 1e-9:
            return 0.0
        return self.start + self.length - self._now_hint

    _now_hint: float = 0.0

    def reset_after(self) -> float:
        return max(0.0, self.start + self.length - self._now_hint)

    def take(self, amount: float) -> None:
        self.used += amount


_Meter = _Bucket | _Window


@dataclass(slots=True, frozen=True)
class Refusal:
    """A request the limits refused: which unit, how long until it fits, the limit."""

    unit: str  # "requests" or "tokens"
    wait: float  # seconds; inf: never fits
    limit: float  # per minute


class Limits:
    """No limits; the base of every profile (subclasses override the hooks).

    A profile holds a requests meter and a tokens meter (either may be absent).
    """

    name: str | None = None
    #: Count a chat request's tokens at admission as prompt + max_tokens (OpenAI does).
    tokens_at_admission = False

    def __init__(
        self, rpm: float | None = None, tpm: float | None = None, burst: float | None = None
    ) -> None:
        if burst is not None and not burst >= 1:
            raise ValueError(f"burst must be at least 1 or None, got {burst!r}")
        self.rpm, self.tpm, self.burst = rpm, tpm, burst
        self._meters: tuple[_Meter | None, _Meter | None] | None = None

    # -- meters ----------------------------------------------------------------------
    def _make(self, now: float) -> tuple[_Meter | None, _Meter | None]:
        rpm, tpm = self.rpm, self.tpm
        requests = None
        if rpm:
            burst = self.burst or rpm
            requests = _Bucket(rpm, burst, now, capacity=burst)
        tokens = _Bucket(tpm, tpm, now) if tpm else None
        return requests, tokens

    def meters(self, now: float) -> tuple[_Meter | None, _Meter | None]:
        """The requests and tokens meters, refilled to ``now``."""
        if self._meters is None:
            self._meters = self._make(now)
        for meter in self._meters:
            if meter is not None:
                meter.refill(now)
                if isinstance(meter, _Window):
                    meter._now_hint = now
        return self._meters

    def restart(self) -> None:
        """Start over with full meters (at the next request)."""
        self._meters = None

    # -- admission -------------------------------------------------------------------
    def admit(self, now: float, tokens: float) -> Refusal | None:
        """Take one request and ``tokens``; or say which limit refused, and for how long."""
        rm, tm = self.meters(now)
        refused: list[Refusal] = []
        if rm is not None:
            wait = rm.wait_for(1)
            if wait > 0:
                refused.append(Refusal("requests", wait, self._advertised(rm)))
        if tm is not None:
            wait = tm.wait_for(tokens)
            if wait > 0:
                refused.append(Refusal("tokens", wait, self._advertised(tm)))
        if refused:
            return max(refused, key=lambda r: r.wait)
        if rm is not None:
            rm.take(1)
        if tm is not None:
            tm.take(tokens)
        return None

    @staticmethod
    def _advertised(meter: _Meter) -> float:
        return meter.limit if isinstance(meter, _Bucket | _Window) else 0.0

    # -- headers and 429s ------------------------------------------------------------
    def headers(self, now: float, status: int, anthropic_route: bool) -> dict[str, str]:
        """Limit headers for an answer with ``status``."""
        return self._openai_headers(now, anthropic_route)

    def _units(self, now: float) -> list[tuple[str, _Meter]]:
        rm, tm = self.meters(now)
        return [(u, m) for u, m in (("requests", rm), ("tokens", tm)) if m is not None]

    def _openai_headers(self, now: float, anthropic: bool) -> dict[str, str]:
        out: dict[str, str] = {}
        for unit, meter in self._units(now):
            limit = str(int(self._advertised(meter)))
            remaining = str(max(0, math.floor(meter.level)))
            out[f"x-ratelimit-limit-{unit}"] = limit
            out[f"x-ratelimit-remaining-{unit}"] = remaining
            out[f"x-ratelimit-reset-{unit}"] = format_go_duration(meter.reset_after())
            if anthropic:
                out.update(_anthropic_unit(unit, limit, remaining, meter.reset_after()))
        return out

    #: How a 429 says when to come back: ``"openai"`` (``retry-after`` and
    #: ``retry-after-ms``), ``"seconds"`` (``retry-after``, whole seconds, at least 1),
    #: ``"litellm"`` (``llm_provider-retry-after``) or ``""`` (not at all).
    retry_style = "openai"
    #: Anthropic's error body: always (``True``), never (``False``), or on Anthropic's
    #: route only (``None``).
    anthropic_body: bool | None = None

    def refusal(
        self, refused: Refusal, tokens: float, anthropic_route: bool
    ) -> tuple[bool, str, str, dict[str, str]]:
        """How to say 429: (Anthropic-shaped body?, message, error type, headers)."""
        message = _message(refused, tokens)
        shaped = anthropic_route if self.anthropic_body is None else self.anthropic_body
        if math.isinf(refused.wait):
            return shaped, message, "tokens", {}
        return shaped, message, refused.unit, _retry_headers(self.retry_style, refused.wait)

    def error_body(self, message: str) -> dict[str, Any] | None:
        """A body replacing the usual error body of a 429 (``None``: the usual one)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rpm={self.rpm!r}, tpm={self.tpm!r})"


def _anthropic_unit(unit: str, limit: str, remaining: str, reset_after: float) -> dict[str, str]:
    when = datetime.now(UTC) + timedelta(seconds=reset_after)
    return {
        f"anthropic-ratelimit-{unit}-limit": limit,
        f"anthropic-ratelimit-{unit}-remaining": remaining,
        f"anthropic-ratelimit-{unit}-reset": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _retry_headers(style: str, wait: float) -> dict[str, str]:
    if style == "openai":
        return {"retry-after": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
    if style == "seconds":
        return {"retry-after": str(max(1, math.ceil(wait)))}
    if style == "litellm":
        return {"llm_provider-retry-after": str(wait)}
    return {}


def _message(refused: Refusal, tokens: float) -> str:
    if math.isinf(refused.wait):
        return (
            f"Request too large: {tokens:g} tokens requested, limit {int(refused.limit)} per min."
        )
    label = "requests per min (RPM)" if refused.unit == "requests" else "tokens per min (TPM)"
    requested = 1 if refused.unit == "requests" else tokens
    return (
        f"Rate limit reached for {label}: Limit {int(refused.limit)}, Requested "
        f"{requested:g}. Please try again in {format_go_duration(refused.wait)}."
    )


class OpenAILimits(Limits):
    """``openai``: continuous per-minute buckets, tokens counted at admission."""

    name = "openai"
    tokens_at_admission = True

    def headers(self, now: float, status: int, anthropic_route: bool) -> dict[str, str]:
        return self._openai_headers(now, False)


class AzureLimits(Limits):
    """``azure``: the per-minute limits enforced in fixed 10-second frames."""

    name = "azure"
    tokens_at_admission = True
    retry_style = "seconds"
    anthropic_body = False
    frame = 10.0

    def _make(self, now: float) -> tuple[_Meter | None, _Meter | None]:
        share = self.frame / 60.0
        rm = _Window(self.rpm, max(1.0, self.rpm * share), self.frame) if self.rpm else None
        tm = _Window(self.tpm, max(1.0, self.tpm * share), self.frame) if self.tpm else None
        return rm, tm

    def headers(self, now: float, status: int, anthropic_route: bool) -> dict[str, str]:
        return {
            f"x-ratelimit-remaining-{unit}": str(max(0, math.floor(meter.level)))
            for unit, meter in self._units(now)
        }


class AnthropicLimits(Limits):
    """``anthropic``: per-second continuous refill (capacity limit/60)."""

    name = "anthropic"
    tokens_at_admission = True
    retry_style = "seconds"
    anthropic_body = True

    def _make(self, now: float) -> tuple[_Meter | None, _Meter | None]:
        rm = tm = None
        if self.rpm:
            cap = self.burst or max(1.0, self.rpm / 60.0)
            rm = _Bucket(self.rpm, cap, now, capacity=cap)
        if self.tpm:
            cap = max(1.0, self.tpm / 60.0)
            tm = _Bucket(self.tpm, cap, now, capacity=cap)
        return rm, tm

    def headers(self, now: float, status: int, anthropic_route: bool) -> dict[str, str]:
        out: dict[str, str] = {}
        for unit, meter in self._units(now):
            out.update(
                _anthropic_unit(
                    unit,
                    str(int(self._advertised(meter))),
                    str(max(0, math.floor(meter.level))),
                    meter.reset_after(),
                )
            )
        return out


class LiteLLMLimits(Limits):
    """``litellm``: fixed calendar-minute windows, LiteLLM's headers and 429 body."""

    name = "litellm"
    retry_style = "litellm"
    anthropic_body = False

    def _make(self, now: float) -> tuple[_Meter | None, _Meter | None]:
        rm = _Window(self.rpm, self.rpm, 60.0) if self.rpm else None
        tm = _Window(self.tpm, self.tpm, 60.0) if self.tpm else None
        return rm, tm

    def headers(self, now: float, status: int, anthropic_route: bool) -> dict[str, str]:
        if status == 429:
            return {}
        rm, _ = self.meters(now)
        if rm is None:
            return {}
        return {
            "x-ratelimit-remaining-requests": str(max(0, math.floor(rm.level))),
            "x-ratelimit-limit-requests": str(int(self._advertised(rm))),
        }

    def error_body(self, message: str) -> dict[str, Any] | None:
        return {
            "error": {
                "message": f"litellm.RateLimitError: {message}",
                "type": "None",
                "param": "None",
                "code": "429",
            }
        }


class SilentLimits(AnthropicLimits):
    """``silent``: per-second continuous refill, no rate headers, 429 without a delay."""

    name = "silent"
    retry_style = ""
    anthropic_body = False

    def headers(self, now: float, status: int, anthropic_route: bool) -> dict[str, str]:
        return {}


class SharedLimits(OpenAILimits):
    """``shared``: ``openai`` with a second client draining the buckets.

    ``phases`` are the other client's shares of the limit, each held ``phase`` seconds,
    then repeated.
    """

    name = "shared"

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        burst: float | None = None,
        *,
        phases: Sequence[float] = (0.0, 0.5, 0.8, 0.0),
        phase: float = 10.0,
    ) -> None:
        super().__init__(rpm, tpm, burst)
        if not phases or any(not 0.0 <= p <= 1.0 for p in phases) or not phase > 0:
            raise ValueError("shared phases must be shares in [0, 1] and phase > 0 seconds")
        self.phases = tuple(phases)
        self.phase = float(phase)
        self._origin: float | None = None
        self._drained_to: float | None = None

    def other_share(self, now: float) -> float:
        """The share of the limit the other client takes at ``now``."""
        origin = self._origin if self._origin is not None else now
        index = int((now - origin) // self.phase) % len(self.phases)
        return self.phases[index]

    def meters(self, now: float) -> tuple[_Meter | None, _Meter | None]:
        """The meters at ``now``: refilled, less what the other client took meanwhile.

        Phase by phase, a bucket fills at the share of the limit the other client
        leaves (up to its capacity), so a quiet spell between two requests is counted
        as it happened, not as one refill followed by one drain.
        """
        if self._meters is None:
            self._meters = self._make(now)
        if self._origin is None:
            self._origin = now
        t = self._drained_to if self._drained_to is not None else now
        self._drained_to = max(t, now)
        while t < now:
            k = math.floor((t - self._origin) / self.phase) + 1
            boundary = self._origin + k * self.phase
            if boundary <= t:  # t sits on a boundary that rounding put one phase early
                boundary = self._origin + (k + 1) * self.phase
            end = min(boundary, now)
            left = 1.0 - self.other_share(t)
            for meter in self._meters:
                if isinstance(meter, _Bucket) and end > meter.stamp:
                    gain = (end - max(t, meter.stamp)) * left * meter.limit / meter.period
                    meter.level = min(meter.capacity, meter.level + gain)
                    meter.stamp = end
            t = end
        return self._meters

    def restart(self) -> None:
        super().restart()
        self._origin = self._drained_to = None


_CLASSES: dict[str, type[Limits]] = {
    "openai": OpenAILimits,
    "azure": AzureLimits,
    "anthropic": AnthropicLimits,
    "litellm": LiteLLMLimits,
    "silent": SilentLimits,
    "shared": SharedLimits,
}


def make_limits(
    profile: str | None,
    rpm: float | None = None,
    tpm: float | None = None,
    burst: float | None = None,
) -> Limits:
    """The limits object for ``profile`` (``None``: FakeAPI's classic limits)."""
    if profile is None:
        return Limits(rpm, tpm, burst)
    cls = _CLASSES.get(profile)
    if cls is None:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return cls(rpm, tpm, burst)
