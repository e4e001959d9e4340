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
