"""Hypothesis strategies for property tests of API-calling code.

* :func:`error_statuses`, :func:`retryable_statuses`, :func:`non_retryable_statuses`
* :func:`retry_after_cases`: ``Retry-After`` headers (seconds, HTTP-date, ``retry-after-ms``,
  garbage) with the wait they mean
* :func:`go_durations` and :func:`rate_limit_header_sets`: OpenAI-style ``x-ratelimit-*``
* :func:`faults` and :func:`fault_scripts`: steps for :meth:`FakeAPI.script`
* :func:`jsonl_request_lines`: batch input lines, valid and malformed

>>> from hypothesis import given
>>> @given(retry_after_cases(styles=("seconds",)))
... def test(case: RetryAfterCase) -> None:
...     assert int(case.headers["retry-after"]) == case.seconds
>>> test()
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st

from headway.testing.faults import Fault, FaultLike, format_go_duration

__all__ = [
    "NON_RETRYABLE_STATUSES",
    "RETRYABLE_STATUSES",
    "JsonlLine",
    "RateLimitHeaderSet",
    "RetryAfterCase",
    "error_statuses",
    "fault_scripts",
    "faults",
    "go_durations",
    "jsonl_request_lines",
    "non_retryable_statuses",
    "rate_limit_header_sets",
    "retry_after_cases",
    "retryable_statuses",
]

#: Statuses worth retrying (as headway and the official SDKs treat them).
RETRYABLE_STATUSES: tuple[int, ...] = (408, 409, 429, 500, 502, 503, 504, 529)
#: Client errors that a retry cannot fix.
NON_RETRYABLE_STATUSES: tuple[int, ...] = (400, 401, 403, 404, 405, 413, 415, 422)

#: A fixed wall-clock "now" for HTTP-dates (2026-01-01T00:00:00Z), so draws replay.
FIXED_NOW = 1_767_225_600.0


def error_statuses(*, only_common: bool = False) -> st.SearchStrategy[int]:
    """HTTP error statuses: the common ones, or (by default) also any 4xx/5xx."""
    common = st.sampled_from(RETRYABLE_STATUSES + NON_RETRYABLE_STATUSES)
    return common if only_common else st.one_of(common, st.integers(400, 599))


def retryable_statuses() -> st.SearchStrategy[int]:
    """Statuses a client should retry: 408, 409, 429, 5xx and 529."""
    return st.one_of(st.sampled_from(RETRYABLE_STATUSES), st.integers(500, 599))


def non_retryable_statuses() -> st.SearchStrategy[int]:
    """4xx statuses a client should not retry (not 408, 409 or 429)."""
    return st.integers(400, 499).filter(lambda s: s not in (408, 409, 429))


RetryAfterStyle = Literal["seconds", "http-date", "ms", "garbage"]


@dataclass(frozen=True, slots=True)
class RetryAfterCase:
    """A ``Retry-After`` header set and what it means.

    Attributes:
        headers: the response headers (``retry-after`` or ``retry-after-ms``).
        seconds: the wait they announce; ``None`` for garbage, which a client must
            ignore (and fall back to its own backoff), never crash on.
        style: how it was written.
        now: the wall-clock time an HTTP-date is relative to (parse against it).
    """

    headers: dict[str, str]
    seconds: float | None
    style: RetryAfterStyle
    now: float = FIXED_NOW


_GARBAGE = st.one_of(
    st.sampled_from(
        ["", " ", "soon", "-1", "-5", "1e9999", "NaN", "inf", "0x10", "1,5", "Tomorrow", "5s"]
    ),
    st.text(
        st.characters(codec="ascii", exclude_categories=["Cc"]), min_size=1, max_size=12
    ).filter(lambda t: not t.strip().isdigit() and email.utils.parsedate_tz(t) is None),
)


@st.composite
def _retry_after(draw: st.DrawFn, style: RetryAfterStyle, max_seconds: int) -> RetryAfterCase:
    if style == "seconds":
        n = draw(st.integers(0, max_seconds))
        return RetryAfterCase({"retry-after": str(n)}, float(n), style)
    if style == "ms":
        ms = draw(st.integers(0, max_seconds * 1000))
        return RetryAfterCase({"retry-after-ms": str(ms)}, ms / 1000, style)
    if style == "http-date":
        n = draw(st.integers(0, max_seconds))
        text = email.utils.formatdate(FIXED_NOW + n, usegmt=True)
        return RetryAfterCase({"retry-after": text}, float(n), style)
    return RetryAfterCase({"retry-after": draw(_GARBAGE)}, None, "garbage")


def retry_after_cases(
    styles: Sequence[RetryAfterStyle] = ("seconds", "http-date", "ms", "garbage"),
    *,
    max_seconds: int = 3600,
) -> st.SearchStrategy[RetryAfterCase]:
    """``Retry-After`` headers in the given styles, with the seconds they mean.

    HTTP-dates are relative to :data:`FIXED_NOW` (``case.now``); parse them against it.
    """
    return st.one_of(*(_retry_after(style, max_seconds) for style in styles))


@st.composite
def go_durations(draw: st.DrawFn, max_seconds: float = 86_400.0) -> tuple[str, float]:
    """``(text, seconds)`` pairs such as ``("6m0s", 360.0)`` or ``("12ms", 0.012)``.

    Seconds are whole milliseconds, so the text round-trips exactly.
    """
    ms = draw(st.integers(0, int(max_seconds * 1000)))
    seconds = ms / 1000
    return format_go_duration(seconds), seconds


@dataclass(frozen=True, slots=True)
class RateLimitHeaderSet:
    """OpenAI-style ``x-ratelimit-*`` headers and the values they carry."""

    headers: dict[str, str]
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests: float | None
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens: float | None


@st.composite
def rate_limit_header_sets(
    draw: st.DrawFn, *, requests: bool | None = None, tokens: bool | None = None
) -> RateLimitHeaderSet:
    """Consistent ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers.

    ``remaining <= limit``; resets are Go durations. Each unit is present or not at
    random unless ``requests`` / ``tokens`` say so; header-name case varies.
    """
    headers: dict[str, str] = {}
    values: dict[str, Any] = {}
    for unit, want, top in (("requests", requests, 100_000), ("tokens", tokens, 10_000_000)):
        present = draw(st.booleans()) if want is None else want
        if not present:
            values.update({f"limit_{unit}": None, f"remaining_{unit}": None, f"reset_{unit}": None})
            continue
        limit = draw(st.integers(1, top))
        remaining = draw(st.integers(0, limit))
        text, reset = draw(go_durations(max_seconds=3600))
        upper = draw(st.booleans())
        for name, value in (("limit", limit), ("remaining", remaining), ("reset", text)):
            key = f"x-ratelimit-{name}-{unit}"
            headers[key.title() if upper else key] = str(value)
        values.update(
            {f"limit_{unit}": limit, f"remaining_{unit}": remaining, f"reset_{unit}": reset}
        )
    return RateLimitHeaderSet(headers, **values)


def faults(*, kinds: Sequence[str] | None = None) -> st.SearchStrategy[Fault]:
    """Single :class:`~headway.testing.faults.Fault` values.

    ``kinds`` restricts them (``"status"``, ``"reset"``, ``"hang"``...); by default
    every kind but ``hang`` (which needs a client timeout to end) and ``lost`` and
    ``late`` (the request takes effect although the client sees a failure: ask for
    them by name).
    """
    seconds = st.floats(0, 5, allow_nan=False)
    options: dict[str, st.SearchStrategy[Fault]] = {
        "ok": st.just(Fault.ok()),
        "status": st.one_of(
            st.builds(Fault.error, error_statuses(only_common=True)),
            st.builds(
                Fault.rate_limit,
                st.one_of(st.none(), seconds),
                style=st.sampled_from(["seconds", "http-date", "ms", "none"]),
            ),
            st.builds(Fault.overloaded, st.one_of(st.none(), seconds)),
        ),
        "insufficient_quota": st.just(Fault.insufficient_quota()),
        "latency": st.builds(Fault.latency, seconds),
        "reset": st.just(Fault.reset()),
        "hang": st.just(Fault.hang()),
        "truncate": st.just(Fault.truncate()),
        "malformed": st.just(Fault.malformed()),
        "dribble": st.builds(Fault.dribble, st.floats(0, 0.5, allow_nan=False)),
        "stream_error": st.builds(Fault.stream_error, st.integers(0, 5)),
        "lost": st.builds(Fault.lost, listed_after=seconds),
        "late": st.builds(Fault.late, st.one_of(st.none(), seconds), listed_after=seconds),
    }
    optional = ("hang", "lost", "late")
    chosen = [k for k in options if k not in optional] if kinds is None else list(kinds)
    unknown = set(chosen) - set(options)
    if unknown:
        raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
    return st.one_of(*(options[k] for k in chosen))


def fault_scripts(
    *, min_size: int = 0, max_size: int = 8, kinds: Sequence[str] | None = None
) -> st.SearchStrategy[list[FaultLike]]:
    """Scripts for :meth:`FakeAPI.script`: lists of faults, statuses and ``"ok"``."""
    step: st.SearchStrategy[FaultLike] = st.one_of(
        faults(kinds=kinds),
        error_statuses(only_common=True),
        st.just("ok"),
        st.none(),
    )
    if kinds is not None:
        step = faults(kinds=kinds)
    return st.lists(step, min_size=min_size, max_size=max_size)


@dataclass(frozen=True, slots=True)
class JsonlLine:
    """One line of a batch input file and whether it is a valid request."""

    text: str
    valid: bool
    shape: Literal["openai", "anthropic", "bare", "malformed"]


_IDS = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=16)
# No line or paragraph separators: a JSONL line must stay one line for any reader.
_ONE_LINE = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"))
_WORDS = st.text(_ONE_LINE, max_size=40)


@st.composite
def _chat_body(draw: st.DrawFn) -> dict[str, Any]:
    messages = draw(
        st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant", "system"]), "content": _WORDS}
            ),
            min_size=1,
            max_size=4,
        )
    )
    body: dict[str, Any] = {
        "model": draw(st.sampled_from(["gpt-4o-mini", "gpt-4o"])),
        "messages": messages,
    }
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 512))
    return body


_SHAPES: tuple[Literal["openai", "anthropic", "bare"], ...] = ("openai", "anthropic", "bare")


@st.composite
def _valid_line(draw: st.DrawFn) -> JsonlLine:
    shape = draw(st.sampled_from(_SHAPES))
    body = draw(_chat_body())
    if shape == "openai":
        obj: dict[str, Any] = {
            "custom_id": draw(_IDS),
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }
    elif shape == "anthropic":
        params = {**body, "max_tokens": body.get("max_tokens", 64)}
        obj = {"custom_id": draw(_IDS), "params": params}
    else:
        obj = body
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    return JsonlLine(text, True, shape)


_MALFORMED = st.one_of(
    st.sampled_from(
        [
            "{",
            '{"custom_id": "a", ',
            "[1, 2, 3]",
            '"just a string"',
            "42",
            "null",
            "{'single': 'quotes'}",
            '{"custom_id": "a", "url": "/v1/chat/completions"}',
            '{"custom_id": 5, "body": {}}',
            '{"custom_id": "a", "method": "POST", "url": "/v1/x", "body": "not an object"}',
            '{"custom_id": "a", "params": 3}',
            "NaN",
        ]
    ),
    st.text(_ONE_LINE, max_size=30).filter(lambda t: t.strip() != "" and not _is_json_object(t)),
)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def jsonl_request_lines(*, valid: bool | None = None) -> st.SearchStrategy[JsonlLine]:
    """Batch input lines: OpenAI Batch, Anthropic batch and bare bodies, or malformed ones.

    ``valid=True`` gives only valid lines, ``False`` only malformed ones (not JSON, not
    an object, or missing what a request needs), ``None`` both.
    """
    good = _valid_line()
    bad = _MALFORMED.map(lambda t: JsonlLine(t, False, "malformed"))
    if valid is True:
        return good
    if valid is False:
        return bad
    return st.one_of(good, bad)
