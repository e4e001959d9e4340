from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest

from headway.cli import _serve


async def test_serve_fake_runs_until_sigterm(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.ensure_future(
        _serve(
            host="127.0.0.1",
            port=0,
            rpm=60,
            tpm=None,
            burst=30,
            profile=None,
            chaos=None,
            seed=1,
            api_key=None,
        )
    )
    url = ""
    async with asyncio.timeout(10):
        while not url:
            await asyncio.sleep(0.01)
            out = capsys.readouterr().out
            if "listening on" in out:
                url = out.split()[5]
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/v1/models") as resp:
            assert resp.status == 200
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            # --burst 30, less the two requests so far
            assert resp.headers["x-ratelimit-remaining-requests"] == "28"
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(10):
        await task
    assert "stopped" in capsys.readouterr().out


async def test_serve_fake_profile_litellm(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.ensure_future(
        _serve(
            host="127.0.0.1",
            port=0,
            rpm=1,
            tpm=None,
            burst=None,
            profile="litellm",
            chaos=None,
            seed=1,
            api_key=None,
        )
    )
    url = ""
    async with asyncio.timeout(10):
        while not url:
            await asyncio.sleep(0.01)
            out = capsys.readouterr().out
            if "listening on" in out:
                url = out.split()[5]
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["x-ratelimit-limit-requests"] == "1"
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 429
            assert "llm_provider-retry-after" in resp.headers
            assert (await resp.json())["error"]["code"] == "429"
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(10):
        await task


def test_serve_fake_rejects_unknown_profile() -> None:
    from click.testing import CliRunner

    from headway.cli import cli

    result = CliRunner().invoke(cli, ["serve-fake", "--profile", "nope"])
    assert result.exit_code == 2
    assert "nope" in result.output
