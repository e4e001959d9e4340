"""Fault, Chaos and the header formatting helpers."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from headway.testing.faults import (
    Chaos,
    Fault,
    coerce_fault,
    format_go_duration,
    parse_script,
    retry_after_headers,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "kind", "status", "retry_after", "style"),
    [
        ("ok", "ok", 200, None, "seconds"),
        ("503", "status", 503, None, "seconds"),
        ("429:2", "status", 429, 2.0, "seconds"),
        ("429:2:http-date", "status", 429, 2.0, "http-date"),
        ("429:1500:ms", "status", 429, 1.5, "ms"),
        ("overloaded", "status", 529, None, "seconds"),
        ("rate_limit:3", "status", 429, 3.0, "seconds"),
        ("reset", "reset", 200, None, "seconds"),
        (" hang ", "hang", 200, None, "seconds"),
        ("insufficient_quota", "insufficient_quota", 200, None, "seconds"),
    ],
)
def test_parse(text: str, kind: str, status: int, retry_after: float | None, style: str) -> None:
    fault = Fault.parse(text)
    assert fault.kind == kind
    if kind == "status":
        assert fault.status == status
        assert fault.retry_after == retry_after
        assert fault.retry_after_style == style


def test_parse_with_arguments() -> None:
    assert Fault.parse("latency:0.5").delay == 0.5
    assert Fault.parse("dribble:0.1").delay == 0.1
    assert Fault.parse("stream_error:3").after == 3


def test_parse_lost_and_late() -> None:
    import math

    assert Fault.parse("lost") == Fault.lost()
    assert Fault.parse("lost:30").listed_after == 30.0
    assert math.isinf(Fault.parse("late").delay)
    assert Fault.parse("late:700") == Fault.late(700.0)
    late = Fault.parse("late:700:30")
    assert (late.kind, late.delay, late.listed_after) == ("late", 700.0, 30.0)
    assert math.isinf(Fault.parse("late::30").delay)
    with pytest.raises(ValueError):
        Fault.late(-1.0)
    with pytest.raises(ValueError):
        Fault.lost(listed_after=-1.0)


@pytest.mark.parametrize(
    "text",
    ["", "teapot", "200", "429:x", "429:1:weird", "reset:1", "status", "lost:1:2", "late:1:2:3"],
)
def test_parse_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        Fault.parse(text)


def test_coerce_and_scripts() -> None:
    assert coerce_fault(None) == Fault.ok()
    assert coerce_fault(502) == Fault.error(502)
    with pytest.raises(TypeError):
        coerce_fault(True)
    with pytest.raises(TypeError):
        coerce_fault(1.5)  # type: ignore[arg-type]
    assert [f.status for f in parse_script("500, 502,,503")] == [500, 502, 503]
    with pytest.raises(ValueError):
        Fault.latency(-1)


def test_chaos_validation() -> None:
    with pytest.raises(ValidationError, match="more than 1"):
        Chaos(rate_limit=0.6, server_error=0.6)
    with pytest.raises(ValidationError):
        Chaos(rate_limit=1.5)
    with pytest.raises(ValidationError):
        Chaos(latency=(2.0, 1.0))
    with pytest.raises(ValidationError):
        Chaos(latency=-1)
    with pytest.raises(ValidationError):
        Chaos(server_error_statuses=(404,))
    with pytest.raises(ValidationError):
        Chaos(unknown=1)  # type: ignore[call-arg]


def test_chaos_draws_follow_the_probabilities() -> None:
    chaos = Chaos(rate_limit=0.25, reset=0.25, retry_after_style="mixed")
    rng = random.Random(1)
    draws = [chaos.pick(rng) for _ in range(4000)]
    limited = [f for f in draws if f is not None and f.status == 429]
    resets = [f for f in draws if f is not None and f.kind == "reset"]
    assert 800 < len(limited) < 1200
    assert 800 < len(resets) < 1200
    assert {f.retry_after_style for f in limited} == {"seconds", "http-date", "ms"}
    assert Chaos().pick(rng) is None
    assert Chaos(latency=0.5).pick_latency(rng) == 0.5
    assert 1 <= Chaos(latency=(1, 2)).pick_latency(rng) <= 2


def test_chaos_every_kind() -> None:
    rng = random.Random(0)
    for name in (
        "server_error",
        "overloaded",
        "insufficient_quota",
        "hang",
        "truncate",
        "malformed",
        "dribble",
        "stream_error",
    ):
        fault = Chaos.model_validate({name: 1.0}).pick(rng)
        assert fault is not None
        assert name.split("_")[0] in fault.kind or fault.status in (500, 502, 503, 529)


def test_header_formats() -> None:
    assert retry_after_headers(None, "seconds") == {}
    assert retry_after_headers(1, "none") == {}
    assert retry_after_headers(0.2, "seconds") == {"retry-after": "1"}
    assert format_go_duration(0.0000005) == "500ns"
    assert format_go_duration(0.0015) == "1.5ms"
    assert format_go_duration(0.000012) == "12µs"
    assert format_go_duration(-1) == "0s"
    assert format_go_duration(7200) == "2h0m0s"
