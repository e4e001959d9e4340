"""``headway run``'s engine against servers that enforce differently: FakeAPI profiles.

Virtual time: the runner, the sender (Policy + AdaptiveLimiter) and the fake server run a
minute of rate limiting in about a second.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from headway.batch import BatchRunner
from headway.batch.progress import limit_slot
from headway.batch.sender import SenderSettings, open_sender, resolve_target
from headway.testing._fake_limits import PROFILES
from headway.testing.fake_api import FakeAPI

CHAT = "/v1/chat/completions"
LIMIT = 240.0  # the server's real limit per minute


def lines(path: Path, n: int) -> Path:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    path.write_text(
        "".join(
            json.dumps({"custom_id": f"c{i}", "url": CHAT, "body": body}) + "\n" for i in range(n)
        )
    )
    return path


async def run(api: FakeAPI, tmp_path: Path, n: int, **settings: object) -> tuple[object, Path]:
    target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
    out = tmp_path / "out.jsonl"
    async with open_sender(SenderSettings(target=target, concurrency=16, **settings)) as send:  # type: ignore[arg-type]
        runner = BatchRunner(send, lines(tmp_path / "in.jsonl", n), out, concurrency=16)
        stats = await runner.run()
    return stats, out


@pytest.mark.virtual_time
@pytest.mark.parametrize("profile", PROFILES)
async def test_no_rpm_every_profile_no_failed_line(profile: str, tmp_path: Path) -> None:
    async with FakeAPI(profile=profile, rpm=LIMIT) as api:
        stats, _ = await run(api, tmp_path, 120)
    assert stats.failed == 0  # type: ignore[attr-defined]
    assert stats.succeeded == 120  # type: ignore[attr-defined]
    assert limit_slot(stats).startswith("limited by server: ")  # type: ignore[arg-type]


@pytest.mark.virtual_time
@pytest.mark.parametrize("profile", ["openai", "litellm", "silent"])
async def test_rpm_ten_times_the_real_limit_no_failed_line(profile: str, tmp_path: Path) -> None:
    async with FakeAPI(profile=profile, rpm=LIMIT) as api:
        stats, _ = await run(api, tmp_path, 100, rpm=10 * LIMIT)
    assert stats.failed == 0  # type: ignore[attr-defined]


@pytest.mark.virtual_time
@pytest.mark.parametrize("profile", ["openai", "anthropic", "azure"])
async def test_rpm_half_the_real_limit_is_never_exceeded(profile: str, tmp_path: Path) -> None:
    ceiling = LIMIT / 2
    async with FakeAPI(profile=profile, rpm=LIMIT) as api:
        t0 = asyncio.get_running_loop().time()
        stats, _ = await run(api, tmp_path, 80, rpm=ceiling)
        most = api.max_in_window(30.0, "POST", CHAT, after=t0 + 5.0)
    assert stats.failed == 0  # type: ignore[attr-defined]
    assert stats.rate_limited == 0  # type: ignore[attr-defined]
    assert most <= ceiling / 2 + 2  # the burst: a second's worth
    assert limit_slot(stats) == "limited by you: 120/min"  # type: ignore[arg-type]


@pytest.mark.virtual_time
async def test_quota_error_stops_the_run_resumably(tmp_path: Path) -> None:
    async with FakeAPI(profile="openai", rpm=LIMIT) as api:
        api.script("POST", CHAT, ["ok", "insufficient_quota"])
        stats, out = await run(api, tmp_path, 40, max_attempts=6)
        sent = len(api.calls("POST", CHAT))
    assert stats.stopped is not None  # type: ignore[attr-defined]
    assert stats.stopped.startswith("quota exhausted: ")  # type: ignore[attr-defined]
    assert stats.failed == 0  # type: ignore[attr-defined]
    written = out.read_text().splitlines() if out.exists() else []
    assert all("error" not in json.loads(line) or not json.loads(line)["error"] for line in written)
    assert len(written) < 40  # stopped early: the rest is left for the next run
    assert sent < 40
    # the next run (quota raised) sends what is left, and only that
    async with FakeAPI(profile="openai", rpm=LIMIT) as api:
        stats2, _ = await run(api, tmp_path, 40)
        assert len(api.calls("POST", CHAT)) == 40 - len(written)
    assert stats2.succeeded == 40 - len(written)  # type: ignore[attr-defined]
