"""Faults for :class:`~headway.testing.FakeAPI`: scripted steps and seeded random chaos.

A :class:`Fault` is one thing the server does instead of (or before) its normal answer:
an error status, a 429 with ``Retry-After``, a dropped connection, a hang, a truncated
or malformed body, a slow stream, or an answer made (a batch created) but lost or sent
too late. A *script* is a list of faults a route plays in
order, one per request, before it answers normally again. :class:`Chaos` picks faults
at random (seeded, so every run is the same) with the probabilities you give.

>>> fault = Fault.parse("429:2")
>>> fault.status, fault.retry_after, fault.retry_after_style
(429, 2.0, 'seconds')
>>> [f.kind for f in parse_script("503, 503, reset, ok")]
['status', 'status', 'reset', 'ok']
>>> Chaos(rate_limit=0.1, server_error=0.05).total
0.15000000000000002
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Self, TypeAlias, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Chaos",
    "Fault",
    "FaultKind",
    "FaultLike",
    "RetryAfterStyle",
    "coerce_fault",
    "format_go_duration",
    "parse_script",
    "retry_after_headers",
]

FaultKind = Literal[
    "ok",
    "status",
    "insufficient_quota",
    "latency",
    "reset",
    "hang",
    "truncate",
    "malformed",
    "dribble",
    "stream_error",
    "deep_json",
    "error_200",
    "echo_key",
    "lost",
    "late",
]
RetryAfterStyle = Literal["seconds", "http-date", "ms", "none"]

_KINDS: frozenset[str] = frozenset(get_args(FaultKind))


@dataclass(slots=True, frozen=True)
class Fault:
    """One scripted misbehaviour of the fake server.

    Build them with the class methods (``Fault.status(503)``, ``Fault.rate_limit(2)``,
    ``Fault.reset()``...) or :meth:`parse` (``"503"``, ``"429:2"``, ``"hang"``).

    Attributes:
        kind: what happens (see :data:`FaultKind`).
        status: the HTTP status of a ``status`` fault (429, 500, 503, 529...).
        retry_after: seconds to announce in ``Retry-After`` (``None``: no header).
        retry_after_style: ``seconds`` (``Retry-After: 2``), ``http-date``
            (``Retry-After: Sun, 22 Nov 2026 01:02:03 GMT``), ``ms``
            (``retry-after-ms: 2000``) or ``none``.
        delay: seconds of ``latency`` before the normal answer, or between the pieces
            of a ``dribble`` stream.
        after: how many stream chunks a ``stream_error`` sends before the error event.
        message: the error message in the body (a sensible default otherwise).
        listed_after: for ``lost`` and ``late``: seconds before what the request made
            shows in listings (the Batch API routes honour it: ``GET /v1/batches``,
            ``GET /v1/messages/batches``); retrieving it by id works at once.
    """

    kind: FaultKind
    status: int = 200
    retry_after: float | None = None
    retry_after_style: RetryAfterStyle = "seconds"
    delay: float = 0.0
    after: int = 2
    message: str | None = None
    listed_after: float = 0.0

    @classmethod
    def ok(cls) -> Self:
        """Answer normally (a script step that lets one request through)."""
        return cls("ok")

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: float | None = None,
        style: RetryAfterStyle = "seconds",
        message: str | None = None,
    ) -> Self:
        """Answer ``status`` with a provider-shaped error body."""
        if not 400 <= status <= 599:
            raise ValueError(f"an error status is 400-599, not {status}")
        return cls("status", status, retry_after, style, message=message)

    @classmethod
    def rate_limit(
        cls, retry_after: float | None = 1.0, *, style: RetryAfterStyle = "seconds"
    ) -> Self:
        """A 429 ``rate_limit_exceeded`` with ``Retry-After`` in the given style."""
        return cls("status", 429, retry_after, style)

    @classmethod
    def overloaded(cls, retry_after: float | None = None) -> Self:
        """Anthropic's 529 ``overloaded_error``."""
        return cls("status", 529, retry_after)

    @classmethod
    def insufficient_quota(cls) -> Self:
        """A 429 whose body says the quota is used up (not worth retrying)."""
        return cls("insufficient_quota", 429)

    @classmethod
    def latency(cls, seconds: float) -> Self:
        """Wait ``seconds`` (loop clock) and then answer normally."""
        return cls("latency", delay=_non_negative(seconds))

    @classmethod
    def reset(cls) -> Self:
        """Drop the connection without an answer (TCP reset)."""
        return cls("reset")

    @classmethod
    def hang(cls) -> Self:
        """Never answer (until the client gives up or the server closes)."""
        return cls("hang")

    @classmethod
    def truncate(cls) -> Self:
        """Announce the full body length, send half, close the connection."""
        return cls("truncate")

    @classmethod
    def malformed(cls) -> Self:
        """A 200 whose ``application/json`` body is not valid JSON."""
        return cls("malformed")

    @classmethod
    def deep_json(cls) -> Self:
        """A 200 whose JSON body nests 1,000 levels deep (valid JSON, hard to re-encode)."""
        return cls("deep_json")

    @classmethod
    def error_200(cls, message: str | None = None) -> Self:
        """A 200 whose body is an error object (``{"error": {...}}``), as some gateways send."""
        return cls("error_200", message=message)

    @classmethod
    def echo_key(cls) -> Self:
        """A 401 whose error body repeats the key the request sent (a careless server)."""
        return cls("echo_key", 401)

    @classmethod
    def lost(cls, *, listed_after: float = 0.0) -> Self:
        """Do the work (a create creates), then drop the connection without the answer.

        The client sees a connection error although the request took effect: an
        unknown outcome, as when a provider's answer is lost on the way back.
        ``listed_after`` hides what was made from listings for that many seconds.
        """
        return cls("lost", listed_after=_non_negative(listed_after))

    @classmethod
    def late(cls, seconds: float | None = None, *, listed_after: float = 0.0) -> Self:
        """Do the work (a create creates), then hold the answer ``seconds`` (loop clock).

        ``None`` holds it until the server closes: a client gives up at its timeout
        although the request took effect. ``listed_after`` hides what was made from
        listings for that many seconds (a create still in progress, or a listing that
        lags behind).
        """
        delay = math.inf if seconds is None else _non_negative(seconds)
        return cls("late", delay=delay, listed_after=_non_negative(listed_after))

    @classmethod
    def dribble(cls, interval: float = 0.05) -> Self:
        """Answer normally but slowly: ``interval`` seconds between stream pieces."""
        return cls("dribble", delay=_non_negative(interval))

    @classmethod
    def stream_error(cls, after: int = 2) -> Self:
        """Send ``after`` stream chunks, then an error event, then end the stream.

        A request that does not stream gets a 500 instead.
        """
        return cls("stream_error", after=max(0, after))

    @classmethod
    def parse(cls, text: str) -> Fault:
        """Parse the compact form used by scripts and the CLI.

        ``"ok"``, ``"503"``, ``"429:2"`` (Retry-After 2 s), ``"429:2:http-date"``,
        ``"429:1500:ms"``, ``"latency:0.5"``, ``"dribble:0.1"``, ``"stream_error:3"``,
        or a bare kind: ``"reset"``, ``"hang"``, ``"truncate"``, ``"malformed"``,
        ``"insufficient_quota"``, ``"overloaded"``, ``"deep_json"``, ``"error_200"``,
        ``"echo_key"``; ``"lost"``, ``"lost:30"`` (listed 30 s later), ``"late"`` (never
        answered), ``"late:700"`` (answered 700 s later), ``"late:700:30"``.
        """
        head, _, rest = text.strip().partition(":")
        head = head.strip().lower()
        args = [a.strip() for a in rest.split(":")] if rest else []
        try:
            if head.isdigit():
                status = int(head)
                retry_after = float(args[0]) if args else None
                style: str = args[1] if len(args) > 1 else "seconds"
                if style not in get_args(RetryAfterStyle):
                    raise ValueError(f"unknown Retry-After style {style!r}")
                if style == "ms" and retry_after is not None:
                    retry_after /= 1000.0
                return Fault.error(status, retry_after=retry_after, style=style)  # type: ignore[arg-type]
            if head == "overloaded":
                return Fault.overloaded(float(args[0]) if args else None)
            if head == "rate_limit":
                return Fault.rate_limit(float(args[0]) if args else 1.0)
            if head == "latency":
                return Fault.latency(float(args[0]) if args else 1.0)
            if head == "dribble":
                return Fault.dribble(float(args[0]) if args else 0.05)
            if head == "stream_error":
                return Fault.stream_error(int(args[0]) if args else 2)
            if head == "lost" and len(args) <= 1:
                return Fault.lost(listed_after=float(args[0]) if args else 0.0)
            if head == "late" and len(args) <= 2:
                seconds = float(args[0]) if args and args[0] else None
                listed = float(args[1]) if len(args) > 1 else 0.0
                return Fault.late(seconds, listed_after=listed)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"cannot parse fault {text!r}: {exc}") from None
        if head in _KINDS and head != "status" and not args:
            return Fault(head)  # type: ignore[arg-type]
        raise ValueError(
            f"cannot parse fault {text!r}: use a status (503, 429:2), ok, reset, hang, "
            "truncate, malformed, insufficient_quota, overloaded, deep_json, error_200, "
            "echo_key, latency:S, dribble:S, stream_error:N, lost[:LISTED] or "
            "late[:S[:LISTED]]"
        )


#: What a script step may be: a :class:`Fault`, a status code, ``None``/``"ok"``
#: (answer normally) or a string in :meth:`Fault.parse` form.
FaultLike: TypeAlias = Fault | int | str | None


def coerce_fault(step: FaultLike) -> Fault:
    """Turn a script step into a :class:`Fault`.

    >>> coerce_fault(503).status, coerce_fault(None).kind, coerce_fault("hang").kind
    (503, 'ok', 'hang')
    """
    if isinstance(step, Fault):
        return step
    if step is None:
        return Fault.ok()
    if isinstance(step, bool):
        raise TypeError("a script step cannot be a bool")
    if isinstance(step, int):
        return Fault.error(step)
    if isinstance(step, str):
        return Fault.parse(step)
    raise TypeError(f"a script step is a Fault, a status, a string or None, not {step!r}")


def parse_script(steps: str | Iterable[FaultLike]) -> list[Fault]:
    """Parse ``"503,503,429:2,ok"`` (or a list of steps) into faults."""
    if isinstance(steps, str):
        return [Fault.parse(part) for part in steps.split(",") if part.strip()]
    return [coerce_fault(step) for step in steps]


def _non_negative(value: float) -> float:
    if value < 0 or math.isnan(value):
        raise ValueError(f"expected seconds >= 0, got {value}")
    return float(value)


class Chaos(BaseModel):
    """Seeded random faults for every request of a route (or of the whole server).

    Each field names the probability (0-1) that one request gets that fault; they
    are mutually exclusive, so their sum must not pass 1. ``latency`` applies to
    every request: a fixed number of seconds or a ``(low, high)`` uniform range.

    >>> chaos = Chaos(rate_limit=0.2, retry_after=2, retry_after_style="mixed")
    >>> rng = random.Random(7)
    >>> sorted({f.kind for f in (chaos.pick(rng) for _ in range(200)) if f})
    ['status']
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_limit: float = Field(default=0.0, ge=0, le=1, description="429 rate_limit_exceeded")
    server_error: float = Field(default=0.0, ge=0, le=1, description="one of server_error_statuses")
    overloaded: float = Field(default=0.0, ge=0, le=1, description="529 overloaded_error")
    insufficient_quota: float = Field(default=0.0, ge=0, le=1, description="429 insufficient_quota")
    reset: float = Field(default=0.0, ge=0, le=1, description="connection reset")
    hang: float = Field(default=0.0, ge=0, le=1, description="never answer")
    truncate: float = Field(default=0.0, ge=0, le=1, description="truncated body")
    malformed: float = Field(default=0.0, ge=0, le=1, description="200 with invalid JSON")
    dribble: float = Field(default=0.0, ge=0, le=1, description="slow stream")
    stream_error: float = Field(default=0.0, ge=0, le=1, description="error event mid-stream")

    retry_after: float | None = Field(default=1.0, ge=0, description="seconds announced on 429/529")
    retry_after_style: RetryAfterStyle | Literal["mixed"] = "seconds"
    server_error_statuses: tuple[int, ...] = (500, 502, 503)
    latency: float | tuple[float, float] = 0.0
    dribble_interval: float = Field(default=0.05, ge=0)
    stream_error_after: int = Field(default=2, ge=0)

    @field_validator("latency")
    @classmethod
    def _check_latency(cls, value: float | tuple[float, float]) -> float | tuple[float, float]:
        if isinstance(value, tuple):
            low, high = value
            if not 0 <= low <= high:
                raise ValueError("latency range must satisfy 0 <= low <= high")
        elif value < 0:
            raise ValueError("latency must be >= 0")
        return value

    @field_validator("server_error_statuses")
    @classmethod
    def _check_statuses(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(not 500 <= s <= 599 for s in value):
            raise ValueError("server_error_statuses must be non-empty 5xx codes")
        return value

    @model_validator(mode="after")
    def _check_total(self) -> Self:
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities add up to {self.total:.3f}, more than 1")
        return self

    @property
    def total(self) -> float:
        """Probability that a request gets some fault."""
        return (
            self.rate_limit
            + self.server_error
            + self.overloaded
            + self.insufficient_quota
            + self.reset
            + self.hang
            + self.truncate
            + self.malformed
            + self.dribble
            + self.stream_error
        )

    def pick(self, rng: random.Random) -> Fault | None:
        """Draw the fault for one request (``None``: answer normally)."""
        if self.total <= 0:
            return None
        roll = rng.random()
        for name in (
            "rate_limit",
            "server_error",
            "overloaded",
            "insufficient_quota",
            "reset",
            "hang",
            "truncate",
            "malformed",
            "dribble",
            "stream_error",
        ):
            p: float = getattr(self, name)
            if roll < p:
                return self._make(name, rng)
            roll -= p
        return None

    def pick_latency(self, rng: random.Random) -> float:
        """Seconds of latency for one request."""
        if isinstance(self.latency, tuple):
            low, high = self.latency
            return rng.uniform(low, high) if high > low else low
        return self.latency

    def _style(self, rng: random.Random) -> RetryAfterStyle:
        if self.retry_after_style == "mixed":
            return rng.choice(("seconds", "http-date", "ms"))
        return self.retry_after_style

    def _make(self, name: str, rng: random.Random) -> Fault:
        if name == "rate_limit":
            return Fault.rate_limit(self.retry_after, style=self._style(rng))
        if name == "server_error":
            return Fault.error(rng.choice(self.server_error_statuses))
        if name == "overloaded":
            return Fault("status", 529, self.retry_after, self._style(rng))
        if name == "dribble":
            return Fault.dribble(self.dribble_interval)
        if name == "stream_error":
            return Fault.stream_error(self.stream_error_after)
        return Fault(name)  # type: ignore[arg-type]


def retry_after_headers(
    seconds: float | None, style: RetryAfterStyle, *, wall_now: float | None = None
) -> dict[str, str]:
    """Headers that announce a wait of ``seconds`` in ``style``.

    >>> retry_after_headers(1.2, "seconds")
    {'retry-after': '2'}
    >>> retry_after_headers(1.2, "ms")
    {'retry-after-ms': '1200'}
    >>> retry_after_headers(2, "http-date", wall_now=0)
    {'retry-after': 'Thu, 01 Jan 1970 00:00:02 GMT'}
    """
    if seconds is None or style == "none":
        return {}
    if style == "ms":
        return {"retry-after-ms": str(round(seconds * 1000))}
    if style == "http-date":
        import time

        now = time.time() if wall_now is None else wall_now
        # HTTP-dates have whole seconds: round up so a client never comes back early.
        return {"retry-after": email.utils.formatdate(math.ceil(now + seconds), usegmt=True)}
    return {"retry-after": str(math.ceil(seconds))}


def format_go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String`` (OpenAI's ``x-ratelimit-reset-*``).

    >>> [format_go_duration(s) for s in (0, 0.012, 1, 1.5, 360, 3725.5)]
    ['0s', '12ms', '1s', '1.5s', '6m0s', '1h2m5.5s']
    """
    if seconds <= 0:
        return "0s"
    ns = round(seconds * 1e9)
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{_trim(ns / 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{_trim(ns / 1_000_000)}ms"
    hours, rem = divmod(ns, 3_600_000_000_000)
    minutes, rem = divmod(rem, 60_000_000_000)
    secs = _trim(rem / 1e9) + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def _trim(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"
