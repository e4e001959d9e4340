"""Read a server's rate-limit and retry headers.

Three families of limit headers are understood:

* OpenAI (and Groq, OpenRouter, most OpenAI-compatible servers):
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as Go durations
  (``6m0s``, ``1.5s``, ``12ms``).
* Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
  remaining,reset}``, resets as RFC 3339 timestamps.
* IETF (draft-ietf-httpapi-ratelimit-headers): ``RateLimit: "p";r=50;t=30`` with
  ``RateLimit-Policy: "p";q=100;w=60``, the older ``RateLimit: limit=100, remaining=50,
  reset=30`` and the separate ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` fields.

Retry delays come from ``retry-after-ms`` (milliseconds), ``Retry-After`` in seconds or
as an HTTP-date, LiteLLM's ``llm_provider-retry-after``, else the reset time of an
exhausted limit; header names are case-insensitive. :func:`bucket_empty` says whether a
429 means the server's bucket is empty (pause everyone) or not (back off one request).

>>> parse_go_duration("6m0s"), parse_go_duration("12ms"), parse_go_duration("1h2m3.5s")
(360.0, 0.012, 3723.5)
>>> parse_retry_after({"Retry-After-Ms": "250"})
0.25
>>> info = parse_rate_limit_headers({
...     "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
...     "x-ratelimit-reset-requests": "120ms"})
>>> info.requests
LimitState(limit=500.0, remaining=499.0, reset_after=0.12)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from headway.errors import APIClientError, QuotaExceededError, RateLimitError

E = TypeVar("E", bound=APIClientError)

__all__ = [
    "LimitState",
    "RateLimitInfo",
    "bucket_empty",
    "parse_go_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "rate_limit_error",
    "server_delay",
    "sync_from_headers",
    "sync_limiter",
]

#: Limit headers are applied to the local limiter once the server reports less than this
#: share of a limit left. Above it the server has room to spare, the local limiter is the
#: binding constraint, and syncing on every response would only cost time.
SYNC_BELOW = 0.5

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)")


@functools.lru_cache(maxsize=512)
def parse_go_duration(text: str) -> float | None:
    """Parse a Go duration (``"6m0s"``, ``"1.5s"``, ``"20ms"``) or bare seconds into seconds.

    Returns ``None`` when ``text`` is not a duration.

    >>> parse_go_duration("2m30s"), parse_go_duration("0.5"), parse_go_duration("soon")
    (150.0, 0.5, None)
    """
    s = text.strip()
    if not s:
        return None
    try:
        return max(0.0, float(s))
    except ValueError:
        pass
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    total = 0.0
    pos = 0
    for match in _GO_PART.finditer(s):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s) or pos == 0:
        return None
    return max(0.0, sign * total)


def _wall_now(headers: Mapping[str, str] | None) -> datetime:
    """The server's idea of now (its ``Date`` header) or, failing that, ours."""
    if headers is not None:
        date = headers.get("date") or headers.get("Date")
        if date:
            try:
                parsed = parsedate_to_datetime(date)
            except (TypeError, ValueError):
                parsed = None
            if parsed is not None:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _seconds_until(when: datetime, headers: Mapping[str, str] | None) -> float:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - _wall_now(headers)).total_seconds())


def _parse_rfc3339(text: str) -> datetime | None:
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        return None


def _get(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts too."""
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def _delay_value(text: str, headers: Mapping[str, str], scale: float, dates: bool) -> float | None:
    """A usable delay from one header value: finite and > 0 seconds, else ``None``."""
    value = text.strip()
    try:
        seconds = float(value) * scale
    except ValueError:
        if not dates:
            return None
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - _wall_now(headers)).total_seconds()
    return seconds if math.isfinite(seconds) and seconds > 0.0 else None


#: Headers that carry a retry delay, in the order they are trusted:
#: (name, seconds per unit, may be an HTTP-date).
_RETRY_HEADERS = (
    ("retry-after-ms", 0.001, False),
    ("retry-after", 1.0, True),
    ("llm_provider-retry-after", 1.0, True),
)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asks to wait, or ``None`` (then back off as usual).

    Reads ``retry-after-ms`` (milliseconds), ``Retry-After`` (seconds or an HTTP-date,
    measured against the response's ``Date`` header when present, so clock skew does
    not matter) and LiteLLM's ``llm_provider-retry-after``, in that order. As
    openai-python does, a value that is zero, negative, in the past, NaN or infinite
    is no instruction: it is skipped (the next header is tried). Names are
    case-insensitive.

    >>> parse_retry_after({"retry-after": "3"})
    3.0
    >>> parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:05 GMT",
    ...                    "Date": "Wed, 21 Oct 2015 07:28:00 GMT"})
    5.0
    >>> parse_retry_after({"retry-after-ms": "0", "llm_provider-retry-after": "2"})
    2.0
    >>> [parse_retry_after({"retry-after": v}) for v in ("0", "-1", "nan", "inf", "soon")]
    [None, None, None, None, None]
    """
    if not headers:
        return None
    for name, scale, dates in _RETRY_HEADERS:
        text = _get(headers, name)
        if text is not None:
            delay = _delay_value(text, headers, scale, dates)
            if delay is not None:
                return delay
    return None


#: Remaining-count headers that say whether the server's bucket is empty.
_REMAINING_HEADERS = (
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-remaining",
    "ratelimit-remaining",
    "x-ratelimit-remaining",
)


def bucket_empty(headers: Mapping[str, str] | None) -> bool:
    """Whether a rate 429 says the server's bucket is empty (so pause everyone).

    ``True`` when a remaining count is 0, or when the answer carries no remaining
    count at all (nothing says there is room); ``False`` when every remaining count
    the server gives is above 0: the bucket has room, only this request backs off.

    >>> bucket_empty({"x-ratelimit-remaining-requests": "0"}), bucket_empty({})
    (True, True)
    >>> bucket_empty({"x-ratelimit-remaining-requests": "12"})
    False
    """
    if not headers:
        return True
    seen = False
    for name in _REMAINING_HEADERS:
        text = _get(headers, name)
        if text is None:
            continue
        value = _num(text)
        if value is None:
            continue
        if value <= 0.0:
            return True
        seen = True
    return not seen


def server_delay(headers: Mapping[str, str] | None) -> float | None:
    """The wait a rate 429 asks for: :func:`parse_retry_after`, else a reset header.

    Without a retry header, the reset time of a limit whose remaining count is 0
    (``x-ratelimit-reset-requests: 1.5s``, Anthropic's RFC 3339 reset) is the wait.

    >>> server_delay({"x-ratelimit-remaining-requests": "0",
    ...               "x-ratelimit-reset-requests": "1.5s"})
    1.5
    """
    delay = parse_retry_after(headers)
    if delay is not None or not headers:
        return delay
    info = parse_rate_limit_headers(headers)
    if info is None:
        return None
    best: float | None = None
    for state in info.units().values():
        if state.remaining is not None and state.remaining <= 0.0:
            reset = state.reset_after
            if reset is not None and math.isfinite(reset) and reset > 0.0:
                best = reset if best is None or reset > best else best
    return best


def rate_limit_error(cls: type[E], message: str, **kw: Any) -> E:
    """``cls(message, retry_after=..., bucket_empty=..., **kw)``: the error for a 429.

    ``kw`` holds the error's fields, ``headers`` among them. ``retry_after`` is
    :func:`server_delay`; ``bucket_empty`` is :func:`bucket_empty` (a quota error takes
    no ``bucket_empty``: it is never retried).
    """
    headers = kw.get("headers")
    kw["retry_after"] = server_delay(headers)
    if issubclass(cls, RateLimitError) and not issubclass(cls, QuotaExceededError):
        kw["bucket_empty"] = bucket_empty(headers)
    return cls(message, **kw)


@dataclass(slots=True, frozen=True)
class LimitState:
    """One limit as the server reports it.

    Attributes:
        limit: the window's capacity, if given.
        remaining: what is left in the current window, if given.
        reset_after: seconds until the window is refilled, if given.
    """

    limit: float | None = None
    remaining: float | None = None
    reset_after: float | None = None


@dataclass(slots=True, frozen=True)
class RateLimitInfo:
    """The server's view of the caller's limits, by unit (``requests`` and ``tokens``).

    Anthropic's separate input/output token limits are kept in ``extra``; its combined
    ``tokens`` limit (or, failing that, the input-token limit) fills ``tokens``.
    """

    requests: LimitState | None = None
    tokens: LimitState | None = None
    extra: Mapping[str, LimitState] | None = None

    def units(self) -> dict[str, LimitState]:
        """The known limits as ``{unit: state}``."""
        out: dict[str, LimitState] = {}
        if self.requests is not None:
            out["requests"] = self.requests
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out


def _num(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


def _state(limit: float | None, remaining: float | None, reset: float | None) -> LimitState | None:
    if limit is None and remaining is None and reset is None:
        return None
    return LimitState(limit, remaining, reset)


def _openai(headers: Mapping[str, str], unit: str) -> LimitState | None:
    reset = headers.get(f"x-ratelimit-reset-{unit}")
    return _state(
        _num(headers.get(f"x-ratelimit-limit-{unit}")),
        _num(headers.get(f"x-ratelimit-remaining-{unit}")),
        None if reset is None else parse_go_duration(reset),
    )


def _anthropic(headers: Mapping[str, str], unit: str) -> LimitState | None:
    reset_text = headers.get(f"anthropic-ratelimit-{unit}-reset")
    reset: float | None = None
    if reset_text is not None:
        when = _parse_rfc3339(reset_text)
        reset = _seconds_until(when, headers) if when is not None else _num(reset_text)
    return _state(
        _num(headers.get(f"anthropic-ratelimit-{unit}-limit")),
        _num(headers.get(f"anthropic-ratelimit-{unit}-remaining")),
        reset,
    )


def _sf_params(member: str) -> tuple[str, dict[str, str]]:
    """Split one structured-field list member ``"name";k=v;k2=v2`` into name and params."""
    parts = [p.strip() for p in member.split(";")]
    name = parts[0].strip('"')
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, _, val = part.partition("=")
        params[key.strip().lower()] = val.strip().strip('"')
    return name, params


def _ietf(headers: Mapping[str, str]) -> dict[str, LimitState]:
    out: dict[str, LimitState] = {}
    field = headers.get("ratelimit")
    policy = headers.get("ratelimit-policy")
    if field is not None and ("remaining=" in field or "limit=" in field):
        # draft 03-06: RateLimit: limit=100, remaining=50, reset=30
        kv: dict[str, str] = {}
        for part in re.split(r"[,;]", field):
            key, _, val = part.partition("=")
            kv[key.strip().lower()] = val.strip()
        state = _state(_num(kv.get("limit")), _num(kv.get("remaining")), _num(kv.get("reset")))
        if state is not None:
            out["requests"] = state
        return out
    if field is not None:
        # draft 07+: RateLimit: "name";r=50;t=30  RateLimit-Policy: "name";q=100;w=60
        policies: dict[str, dict[str, str]] = {}
        if policy:
            for member in policy.split(","):
                name, params = _sf_params(member)
                policies[name] = params
        for member in field.split(","):
            name, params = _sf_params(member)
            pol = policies.get(name, {})
            unit = (pol.get("qu") or params.get("qu") or "requests").lower()
            unit = "tokens" if "token" in unit else "requests"
            if unit in out:
                continue
            state = _state(_num(pol.get("q")), _num(params.get("r")), _num(params.get("t")))
            if state is not None:
                out[unit] = state
        return out
    limit = headers.get("ratelimit-limit") or headers.get("x-ratelimit-limit")
    remaining = headers.get("ratelimit-remaining") or headers.get("x-ratelimit-remaining")
    reset = headers.get("ratelimit-reset") or headers.get("x-ratelimit-reset")
    if limit is not None:
        limit = limit.split(",")[0].split(";")[0]
    reset_s = _num(reset)
    if reset_s is not None and reset_s > 1e9:  # an epoch timestamp (GitHub style)
        reset_s = _seconds_until(datetime.fromtimestamp(reset_s, UTC), headers)
    state = _state(_num(limit), _num(remaining), reset_s)
    if state is not None:
        out["requests"] = state
    return out


def parse_rate_limit_headers(headers: Mapping[str, str] | None) -> RateLimitInfo | None:
    """The limits a response reports, or ``None`` when it reports none.

    ``headers`` should be case-insensitive (aiohttp's and httpx's are); a plain ``dict``
    must use lower-case names.

    >>> info = parse_rate_limit_headers({"ratelimit": '"default";r=7;t=30',
    ...                                  "ratelimit-policy": '"default";q=10;w=60'})
    >>> info.requests
    LimitState(limit=10.0, remaining=7.0, reset_after=30.0)
    """
    if not headers:
        return None
    if (
        headers.get("x-ratelimit-remaining-requests") is not None
        or headers.get("x-ratelimit-remaining-tokens") is not None
    ):
        return RateLimitInfo(_openai(headers, "requests"), _openai(headers, "tokens"))
    if (
        headers.get("anthropic-ratelimit-requests-remaining") is not None
        or headers.get("anthropic-ratelimit-tokens-remaining") is not None
        or headers.get("anthropic-ratelimit-input-tokens-remaining") is not None
    ):
        extra: dict[str, LimitState] = {}
        for unit in ("input-tokens", "output-tokens"):
            state = _anthropic(headers, unit)
            if state is not None:
                extra[unit] = state
        tokens = _anthropic(headers, "tokens") or extra.get("input-tokens")
        return RateLimitInfo(_anthropic(headers, "requests"), tokens, extra or None)
    if (
        headers.get("ratelimit") is not None
        or headers.get("ratelimit-remaining") is not None
        or headers.get("x-ratelimit-remaining") is not None
    ):
        units = _ietf(headers)
        if units:
            return RateLimitInfo(units.get("requests"), units.get("tokens"))
    return None


def sync_limiter(limiter: Any, info: RateLimitInfo, *, below: float | None = None) -> None:
    """Bring ``limiter`` in step with what the server reported.

    ``limiter`` is a :class:`~headway.limits.MultiLimiter`-like object
    (``sync(unit, remaining, reset_after, limit)``) or a single bucket with a ``unit``
    attribute (``sync(remaining, reset_after, limit)``); units it does not hold are
    skipped. With ``below`` (a share such as ``0.5``), a unit is synced only when the
    server reports less than that share of its limit left (or does not give its limit).
    """
    sync = getattr(limiter, "sync", None)
    if sync is None:
        return
    unit_of = getattr(limiter, "unit", None)
    for unit, state in info.units().items():
        if state.remaining is None:
            continue
        if below is not None and state.limit and state.remaining >= below * state.limit:
            continue
        if isinstance(unit_of, str):
            if unit_of == unit:
                sync(state.remaining, state.reset_after, state.limit)
        else:
            sync(unit, state.remaining, state.reset_after, state.limit)


_ANTHROPIC_UNITS = ("requests", "tokens", "input-tokens", "output-tokens")


def _plenty(remaining: str | None, limit: str | None) -> bool:
    """Whether the server has at least :data:`SYNC_BELOW` of a limit left (or no figure)."""
    if remaining is None:
        return True
    if limit is None:
        return False
    try:
        return float(remaining) >= SYNC_BELOW * float(limit)
    except ValueError:
        return True


def sync_from_headers(limiter: Any, headers: Mapping[str, str]) -> None:
    """Sync ``limiter`` from a response's limit headers, cheaply (the HTTP hot path).

    Limits the server reports as less than :data:`SYNC_BELOW` full are synced; when
    every reported limit has more left than that, nothing is parsed beyond the
    remaining/limit figures. ``headers`` must be case-insensitive.

    A limiter that learns from headers (``observe_headers``, as
    :class:`~headway.limits.AdaptiveLimiter` has) is handed every response's headers.
    """
    observe = getattr(limiter, "observe_headers", None)
    if observe is not None:
        observe(headers)
        return
    get = headers.get
    req = get("x-ratelimit-remaining-requests")
    tok = get("x-ratelimit-remaining-tokens")
    if req is not None or tok is not None:
        if _plenty(req, get("x-ratelimit-limit-requests")) and _plenty(
            tok, get("x-ratelimit-limit-tokens")
        ):
            return
    elif get("anthropic-ratelimit-requests-remaining") is not None and all(
        _plenty(
            get(f"anthropic-ratelimit-{unit}-remaining"), get(f"anthropic-ratelimit-{unit}-limit")
        )
        for unit in _ANTHROPIC_UNITS
    ):
        return
    info = parse_rate_limit_headers(headers)
    if info is not None:
        sync_limiter(limiter, info, below=SYNC_BELOW)
