"""Rate-limit and Retry-After header parsing, and syncing a limiter from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from headway.http import (
    LimitState,
    RateLimitInfo,
    parse_go_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    sync_limiter,
)
from headway.http.ratelimit_headers import SYNC_BELOW, sync_from_headers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1.5s", 1.5),
        ("1h2m3.5s", 3723.5),
        ("20us", 20e-6),
        ("20µs", 20e-6),
        ("100ns", 1e-7),
        ("2", 2.0),
        ("-1s", 0.0),
        ("+3s", 3.0),
        ("1d", 86400.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "s", "1s2", "m5s"])
def test_not_go_durations(text: str) -> None:
    assert parse_go_duration(text) is None


@given(h=st.integers(0, 99), m=st.integers(0, 59), ms=st.integers(0, 59_999))
def test_go_duration_roundtrip(h: int, m: int, ms: int) -> None:
    text = f"{h}h{m}m{ms / 1000}s"
    assert parse_go_duration(text) == pytest.approx(h * 3600 + m * 60 + ms / 1000)


def test_retry_after_forms_case_insensitive() -> None:
    assert parse_retry_after(CIMultiDict({"Retry-After-Ms": "1500"})) == 1.5
    assert parse_retry_after({"RETRY-AFTER": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "bad", "retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "-5"}) is None  # no instruction: back off
    assert parse_retry_after({"retry-after": "not a date"}) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after({"x": "1"}) is None


def test_retry_after_http_date_against_date_header_and_wall_clock() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    headers = {
        "retry-after": format_datetime(now + timedelta(seconds=30), usegmt=True),
        "date": format_datetime(now, usegmt=True),
    }
    assert parse_retry_after(headers) == 30.0
    future = datetime.now(UTC) + timedelta(seconds=100)
    got = parse_retry_after({"retry-after": format_datetime(future, usegmt=True)})
    assert got is not None
    assert 95 < got <= 100
    got = parse_retry_after({"retry-after": format_datetime(future, usegmt=True), "date": "junk"})
    assert got is not None
    assert 95 < got <= 100


def test_openai_headers() -> None:
    info = parse_rate_limit_headers(
        CIMultiDict(
            {
                "X-RateLimit-Limit-Requests": "60",
                "X-RateLimit-Remaining-Requests": "59",
                "X-RateLimit-Reset-Requests": "1s",
                "X-RateLimit-Limit-Tokens": "150000",
                "X-RateLimit-Remaining-Tokens": "149984",
                "X-RateLimit-Reset-Tokens": "6m0s",
            }
        )
    )
    assert info == RateLimitInfo(LimitState(60, 59, 1.0), LimitState(150000, 149984, 360.0))
    assert set(info.units()) == {"requests", "tokens"}


def test_anthropic_headers() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    reset = (now + timedelta(seconds=12)).isoformat().replace("+00:00", "Z")
    info = parse_rate_limit_headers(
        CIMultiDict(
            {
                "date": format_datetime(now, usegmt=True),
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": reset,
                "anthropic-ratelimit-input-tokens-limit": "40000",
                "anthropic-ratelimit-input-tokens-remaining": "39000",
                "anthropic-ratelimit-input-tokens-reset": "3",
                "anthropic-ratelimit-output-tokens-remaining": "8000",
            }
        )
    )
    assert info is not None
    assert info.requests == LimitState(50, 49, 12.0)
    assert info.tokens == LimitState(40000, 39000, 3.0)
    assert info.extra is not None
    assert info.extra["output-tokens"].remaining == 8000


def test_ietf_structured_fields() -> None:
    info = parse_rate_limit_headers(
        CIMultiDict(
            {
                "RateLimit": '"burst";r=5;t=2, "daily";r=900;t=3600, "tok";r=1000;t=60',
                "RateLimit-Policy": (
                    '"burst";q=10;w=1, "daily";q=1000;w=86400, "tok";q=5000;w=60;qu="tokens"'
                ),
            }
        )
    )
    assert info is not None
    assert info.requests == LimitState(10, 5, 2)
    assert info.tokens == LimitState(5000, 1000, 60)


def test_ietf_older_drafts() -> None:
    info = parse_rate_limit_headers({"ratelimit": "limit=100, remaining=50, reset=30"})
    assert info is not None
    assert info.requests == LimitState(100, 50, 30)
    info = parse_rate_limit_headers(
        {"ratelimit-limit": "100, 100;w=60", "ratelimit-remaining": "3", "ratelimit-reset": "9"}
    )
    assert info is not None
    assert info.requests == LimitState(100, 3, 9)
    epoch = (datetime.now(UTC) + timedelta(seconds=50)).timestamp()
    info = parse_rate_limit_headers(
        {
            "x-ratelimit-limit": "60",
            "x-ratelimit-remaining": "1",
            "x-ratelimit-reset": str(int(epoch)),
        }
    )
    assert info is not None
    assert info.requests is not None
    assert info.requests.reset_after is not None
    assert 45 < info.requests.reset_after <= 50


def test_no_limit_headers() -> None:
    assert parse_rate_limit_headers({}) is None
    assert parse_rate_limit_headers({"content-type": "json"}) is None
    assert parse_rate_limit_headers(None) is None
    assert parse_rate_limit_headers({"ratelimit": '"p";x=1'}) is None


class MultiSpy:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def sync(
        self, unit: str, remaining: float, reset_after: float | None, limit: float | None = None
    ) -> None:
        self.calls.append((unit, remaining, reset_after, limit))


class BucketSpy:
    unit = "tokens"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def sync(
        self, remaining: float, reset_after: float | None = None, limit: float | None = None
    ) -> None:
        self.calls.append((remaining, reset_after, limit))


def test_sync_limiter_multi_and_single_bucket() -> None:
    info = RateLimitInfo(LimitState(60, 59, 1.0), LimitState(None, None, 2.0))
    multi = MultiSpy()
    sync_limiter(multi, info)
    assert multi.calls == [("requests", 59, 1.0, 60)]
    info = RateLimitInfo(LimitState(60, 59, 1.0), LimitState(100, 10, 2.0))
    bucket = BucketSpy()
    sync_limiter(bucket, info)
    assert bucket.calls == [(10, 2.0, 100)]
    sync_limiter(object(), info)  # no sync method: ignored


def test_sync_from_headers_only_when_low() -> None:
    calls: list[tuple[Any, ...]] = []

    class Spy:
        def sync(self, *args: Any) -> None:
            calls.append(args)

    plenty = CIMultiDict(
        {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "900",
        }
    )
    sync_from_headers(Spy(), plenty)
    assert calls == []
    low = plenty.copy()
    low["x-ratelimit-remaining-tokens"] = str(int(1000 * SYNC_BELOW) - 1)
    sync_from_headers(Spy(), low)
    assert calls == [("tokens", 499.0, None, 1000.0)]
    calls.clear()
    sync_from_headers(Spy(), CIMultiDict({"x-ratelimit-remaining-requests": "5"}))  # no limit
    assert calls == [("requests", 5.0, None, None)]
    calls.clear()
    sync_from_headers(
        Spy(),
        CIMultiDict({"x-ratelimit-remaining-requests": "x", "x-ratelimit-limit-requests": "9"}),
    )
    sync_from_headers(Spy(), CIMultiDict({"content-type": "json"}))
    assert calls == []
    anthropic = CIMultiDict(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "40",
            "anthropic-ratelimit-tokens-limit": "1000",
            "anthropic-ratelimit-tokens-remaining": "900",
        }
    )
    sync_from_headers(Spy(), anthropic)
    assert calls == []
    anthropic["anthropic-ratelimit-requests-remaining"] = "3"
    sync_from_headers(Spy(), anthropic)
    assert calls == [("requests", 3.0, None, 50.0)]
    calls.clear()
    info = parse_rate_limit_headers({"ratelimit": "limit=10, remaining=1, reset=2"})
    assert info is not None
    sync_limiter(Spy(), info, below=0.5)
    assert calls == [("requests", 1.0, 2.0, 10.0)]
