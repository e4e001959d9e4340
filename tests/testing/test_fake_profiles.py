"""FakeAPI's enforcement profiles: windows, headers and 429 shapes, as each provider does."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from headway.http.ratelimit_headers import bucket_empty, parse_retry_after, server_delay
from headway.testing import FakeAPI
from headway.testing._fake_limits import PROFILES, SharedLimits, make_limits
from headway.testing.faults import Chaos

CHAT = "/v1/chat/completions"
MSGS = "/v1/messages"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def post(
    session: aiohttp.ClientSession, api: FakeAPI, path: str = CHAT, body: Any = None
) -> tuple[int, CIMultiDict[str], Any]:
    async with session.post(api.url + path, json=body or BODY) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.json()


async def exhaust(
    session: aiohttp.ClientSession, api: FakeAPI, path: str = CHAT
) -> tuple[list[CIMultiDict[str]], tuple[int, CIMultiDict[str], Any]]:
    """Send until refused: the 200s' headers and the first 429."""
    oks = []
    for _ in range(1000):
        status, headers, body = await post(session, api, path)
        if status == 429:
            return oks, (status, headers, body)
        oks.append(headers)
    raise AssertionError("never refused")


@pytest.mark.virtual_time
async def test_openai_profile_headers_and_429() -> None:
    async with FakeAPI(profile="openai", rpm=60, tpm=10_000) as api, aiohttp.ClientSession() as s:
        oks, (_, headers, body) = await exhaust(s, api)
    assert len(oks) == 60  # a minute's worth, continuous per-minute bucket
    first = oks[0]
    for unit in ("requests", "tokens"):
        for what in ("limit", "remaining", "reset"):
            assert f"x-ratelimit-{what}-{unit}" in first
    assert first["x-ratelimit-limit-requests"] == "60"
    assert headers["retry-after-ms"] == "1000"
    assert headers["retry-after"] == "1"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert bucket_empty(headers)
    assert parse_retry_after(headers) == 1.0


@pytest.mark.virtual_time
async def test_openai_profile_counts_max_tokens_at_admission() -> None:
    async with FakeAPI(profile="openai", tpm=1000) as api, aiohttp.ClientSession() as s:
        status, headers, _ = await post(s, api, body={**BODY, "max_tokens": 400})
        assert status == 200
        # prompt (1 token) + max_tokens (400), not the short answer actually produced
        assert headers["x-ratelimit-remaining-tokens"] == str(1000 - 401)
        status, _, body = await post(s, api, body={**BODY, "max_tokens": 5000})
    assert status == 429
    assert "Request too large" in body["error"]["message"]


@pytest.mark.virtual_time
async def test_azure_profile_ten_second_frames() -> None:
    loop = asyncio.get_running_loop()
    async with FakeAPI(profile="azure", rpm=60) as api, aiohttp.ClientSession() as s:
        oks, (_, headers, _) = await exhaust(s, api)
        assert len(oks) == 10  # limit / 6 per 10-second frame
        assert set(oks[0]) >= {"x-ratelimit-remaining-requests"}
        assert "x-ratelimit-limit-requests" not in oks[0]
        assert "retry-after-ms" not in headers
        wait = float(headers["retry-after"])
        assert 1 <= wait <= 10
        frame_end = math.floor(loop.time() / 10.0) * 10.0 + 10.0
        await asyncio.sleep(frame_end - loop.time() + 0.001)
        oks, _ = await exhaust(s, api)
    assert len(oks) == 10  # a fresh frame, full again


@pytest.mark.virtual_time
async def test_anthropic_profile_per_second_capacity_and_headers() -> None:
    async with FakeAPI(profile="anthropic", rpm=600) as api, aiohttp.ClientSession() as s:
        oks, (_, headers, body) = await exhaust(s, api, MSGS)
    assert len(oks) == 10  # limit / 60
    assert oks[0]["anthropic-ratelimit-requests-limit"] == "600"
    assert oks[0]["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert "x-ratelimit-limit-requests" not in oks[0]
    assert headers["retry-after"] == "1"
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"


@pytest.mark.virtual_time
async def test_litellm_profile_calendar_minute_and_bare_429() -> None:
    loop = asyncio.get_running_loop()
    async with FakeAPI(profile="litellm", rpm=20) as api, aiohttp.ClientSession() as s:
        oks, (_, headers, body) = await exhaust(s, api)
        left = math.floor(loop.time() / 60.0) * 60.0 + 60.0 - loop.time()
    assert len(oks) == 20
    assert {k for k in oks[0] if "ratelimit" in k} == {
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-requests",
    }
    assert not [k for k in headers if "ratelimit" in k or k.lower() == "retry-after"]
    assert body["error"]["code"] == "429"
    assert server_delay(headers) == pytest.approx(left, abs=0.01)
    assert bucket_empty(headers)  # no rate headers: say empty


@pytest.mark.virtual_time
async def test_silent_profile_has_no_rate_headers() -> None:
    async with FakeAPI(profile="silent", rpm=120) as api, aiohttp.ClientSession() as s:
        oks, (_, headers, _) = await exhaust(s, api)
    assert len(oks) == 2
    assert not [k for k in oks[0] if "ratelimit" in k]
    assert parse_retry_after(headers) is None
    assert server_delay(headers) is None


@pytest.mark.virtual_time
async def test_shared_profile_other_client_drains_by_phase() -> None:
    limits = SharedLimits(rpm=600, burst=20, phases=(0.0, 0.5), phase=10.0)
    assert limits.other_share(0.0) == 0.0
    async with FakeAPI(profile=limits) as api, aiohttp.ClientSession() as s:
        await post(s, api)  # starts the schedule
        for _ in range(10):
            await post(s, api)  # phase 0: only we draw
        _, h0, _ = await post(s, api)
        await asyncio.sleep(1.0)  # phase 0: the bucket refills at the whole 10/s
        _, h1, _ = await post(s, api)
        await asyncio.sleep(9.0)  # phase 1 begins: full again
        for _ in range(10):
            await post(s, api)
        _, h2, _ = await post(s, api)
        await asyncio.sleep(1.0)  # the other client takes half the refill
        _, h3, _ = await post(s, api)
        await asyncio.sleep(30.0)  # a quiet spell: refill and draw as they happened
        _, h4, _ = await post(s, api)

    def left(h: Any) -> int:
        return int(h["x-ratelimit-remaining-requests"])

    assert left(h1) == pytest.approx(left(h0) + 10 - 1, abs=1)
    assert left(h3) == pytest.approx(left(h2) + 5 - 1, abs=1)
    assert left(h4) == 19  # full (20) less the request itself: a share < 1 never empties it
    assert limits.other_share(limits._origin + 15.0) == 0.5  # type: ignore[operator]


@pytest.mark.virtual_time
async def test_profiles_combine_with_chaos_and_count_admissions() -> None:
    chaos = Chaos(server_error=1.0)
    async with (
        FakeAPI(profile="openai", rpm=600, chaos=chaos) as api,
        aiohttp.ClientSession() as s,
    ):
        status, headers, _ = await post(s, api)
        assert status >= 500
        assert "x-ratelimit-limit-requests" in headers  # the profile's headers still
        api.set_chaos(None)
        for _ in range(5):
            await post(s, api)
    assert api.max_in_window(1.0, "POST", CHAT) == 5
    assert len(api.journal.admissions()) == 5


def test_profile_names_and_validation() -> None:
    for name in PROFILES:
        assert make_limits(name, rpm=60).name == name
    assert make_limits(None).name is None
    with pytest.raises(ValueError, match="unknown profile"):
        make_limits("nope")
    with pytest.raises(ValueError, match="burst"):
        FakeAPI(profile="openai", rpm=60, burst=0.5)
    with pytest.raises(ValueError, match="phases"):
        SharedLimits(rpm=60, phases=(2.0,))
    assert "rpm=60" in repr(make_limits("openai", rpm=60))


def test_shared_profile_drain_always_moves_on_past_a_phase_boundary() -> None:
    """A time that sits on a phase boundary, but rounds one phase early, once looped forever."""
    from headway.testing._fake_limits import SharedLimits

    limits = SharedLimits(rpm=600, phases=(0.0, 0.5), phase=0.1)
    limits.meters(939167.0189485865)  # the origin
    limits.meters(943698.2189485865)  # (t - origin) / phase rounds to just under 45312
    limits.meters(943732.061375579)  # before the fix: never returned
    assert limits.other_share(943732.061375579) in (0.0, 0.5)
