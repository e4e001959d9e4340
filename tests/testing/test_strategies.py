"""headway.testing.strategies: what each strategy promises holds for every draw."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headway.batch.jobs import BatchRequest, InvalidLine, parse_line
from headway.testing import FakeAPI, Fault, parse_script
from headway.testing.faults import FaultLike, coerce_fault
from headway.testing.strategies import (
    NON_RETRYABLE_STATUSES,
    JsonlLine,
    RateLimitHeaderSet,
    RetryAfterCase,
    error_statuses,
    fault_scripts,
    faults,
    go_durations,
    jsonl_request_lines,
    non_retryable_statuses,
    rate_limit_header_sets,
    retry_after_cases,
    retryable_statuses,
)

_GO = re.compile(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:([\d.]+)ms)?(?:([\d.]+)µs)?$")


def parse_go(text: str) -> float:
    m = _GO.fullmatch(text)
    assert m is not None, text
    h, mi, s, ms, us = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1e3 + us / 1e6


@given(error_statuses())
def test_error_statuses_are_errors(status: int) -> None:
    assert 400 <= status <= 599


@given(retryable_statuses(), non_retryable_statuses())
def test_retryable_and_not_are_disjoint(yes: int, no: int) -> None:
    assert yes in (408, 409, 429) or 500 <= yes <= 599
    assert 400 <= no <= 499
    assert no not in (408, 409, 429)
    assert set(NON_RETRYABLE_STATUSES).isdisjoint({408, 409, 429})


@given(retry_after_cases())
def test_retry_after_cases_mean_what_they_say(case: RetryAfterCase) -> None:
    if case.style == "seconds":
        assert float(case.headers["retry-after"]) == case.seconds
    elif case.style == "ms":
        assert int(case.headers["retry-after-ms"]) / 1000 == case.seconds
    elif case.style == "http-date":
        when = email.utils.parsedate_to_datetime(case.headers["retry-after"]).timestamp()
        assert when - case.now == case.seconds
    else:
        value = case.headers["retry-after"]
        assert case.seconds is None
        assert not value.strip().isdigit()
        assert email.utils.parsedate_tz(value) is None


@given(go_durations())
def test_go_durations_round_trip(pair: tuple[str, float]) -> None:
    text, seconds = pair
    assert parse_go(text) == pytest.approx(seconds, abs=1e-6)


@given(rate_limit_header_sets())
def test_rate_limit_header_sets_are_consistent(hs: RateLimitHeaderSet) -> None:
    lower = {k.lower(): v for k, v in hs.headers.items()}
    for unit, limit, remaining, reset in (
        ("requests", hs.limit_requests, hs.remaining_requests, hs.reset_requests),
        ("tokens", hs.limit_tokens, hs.remaining_tokens, hs.reset_tokens),
    ):
        if limit is None:
            assert f"x-ratelimit-limit-{unit}" not in lower
            continue
        assert remaining is not None
        assert reset is not None
        assert 0 <= remaining <= limit
        assert int(lower[f"x-ratelimit-limit-{unit}"]) == limit
        assert int(lower[f"x-ratelimit-remaining-{unit}"]) == remaining
        assert parse_go(lower[f"x-ratelimit-reset-{unit}"]) == pytest.approx(reset, abs=1e-6)


@given(faults())
def test_faults_round_trip_through_coerce(fault: Fault) -> None:
    assert coerce_fault(fault) is fault
    assert fault.kind != "hang"


@given(fault_scripts())
def test_fault_scripts_parse(script: list[FaultLike]) -> None:
    assert len(parse_script(script)) == len(script)


def test_faults_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError):
        faults(kinds=["nope"])


@given(jsonl_request_lines())
def test_jsonl_lines_match_the_batch_parser(line: JsonlLine) -> None:
    assert "\n" not in line.text
    parsed = parse_line(line.text, 1)
    if line.valid:
        assert isinstance(parsed, BatchRequest), parsed
        assert isinstance(json.loads(line.text), dict)
        assert parsed.kind == line.shape
    else:
        assert isinstance(parsed, InvalidLine), line.text


@given(jsonl_request_lines(valid=False))
def test_malformed_lines_are_never_valid(line: JsonlLine) -> None:
    assert not line.valid
    assert line.shape == "malformed"


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(error_statuses(only_common=True), max_size=5))
async def test_fake_api_plays_any_status_script_in_order(statuses: list[int]) -> None:
    async with FakeAPI() as api, aiohttp.ClientSession() as session:
        api.script("GET", "/v1/models", statuses)
        seen = []
        for _ in range(len(statuses) + 1):
            async with asyncio.timeout(30), session.get(api.url + "/v1/models") as resp:
                seen.append(resp.status)
        assert seen == [*statuses, 200]
        api.assert_scripts_consumed()
