"""A distinctive key goes through every failure we can stage; it must appear nowhere.

The CLI and the Python API run with a canary key against 401 (wrong key, and a server
that echoes the key back), 403, 500, connection resets, a malformed status line and bad
URLs, at DEBUG logging. Every artifact is collected — stdout, stderr, log records with
their tracebacks, output, errors and summary files, reprs and messages of errors,
clients and responses — and searched for the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from headway.cli import cli
from headway.http.client import AsyncAPIClient
from headway.testing.fake_api import FakeAPI, Fault

from .conftest import ThreadedFakeAPI, write_chat_input

CANARY = "sk-canary-7f3e9b21c4d8a6e5f0b3"
CHAT = "/v1/chat/completions"
StartServer = Callable[..., ThreadedFakeAPI]


def script(server: ThreadedFakeAPI, steps: list[Any]) -> None:
    async def apply() -> None:
        assert server._api is not None
        server._api.script("POST", CHAT, steps)

    assert server._loop is not None
    asyncio.run_coroutine_threadsafe(apply(), server._loop).result(5)


@pytest.fixture
def bad_status_server() -> Iterator[str]:
    """A TCP server answering every connection with a malformed HTTP status line."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 abc nope\r\nContent-Length: 2\r\n\r\n{}")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(5)
    sock.close()


def all_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(record.exc_info[1])))
    return "\n".join(parts)


def test_the_cli_never_writes_or_prints_the_key(
    tmp_path: Path,
    fake_server: StartServer,
    bad_status_server: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CANARY_KEY", CANARY)
    inp = write_chat_input(tmp_path / "in.jsonl", 12)
    wrong_key = fake_server(api_key="sk-the-right-key-0000")
    echo = fake_server()
    script(echo, ["ok", Fault.echo_key(), "ok", 403, "ok", 500, "reset", "malformed"] * 3)
    runs: list[list[str]] = []
    for n, url in enumerate(
        [wrong_key.url, echo.url, bad_status_server, "http://127.0.0.1:1", "http://[::1"]
    ):
        runs.append(
            [
                "run",
                str(inp),
                "-o",
                str(tmp_path / f"out{n}.jsonl"),
                "--errors",
                str(tmp_path / f"err{n}.jsonl"),
                "--summary-json",
                str(tmp_path / f"summary{n}.json"),
                "--base-url",
                url,
                "--api-key-env",
                "CANARY_KEY",
                "--max-attempts",
                "2",
                "--max-outage",
                "0.5",
                "--concurrency",
                "4",
                "--progress",
                "plain",
            ]
        )
    runs.append(["run", str(inp), "-o", str(tmp_path / "x.jsonl"), "--base-url", echo.url,
                 "--api-key-env", CANARY])  # fmt: skip
    seen: list[str] = []
    codes = []
    for args in runs:
        result = CliRunner().invoke(cli, args, catch_exceptions=True)
        codes.append(result.exit_code)
        seen += [result.stdout, result.stderr, repr(result.exception)]
        if result.exc_info is not None and result.exception is not None:
            seen.append("".join(traceback.format_exception(result.exception)))
    monkeypatch.setenv("HEADWAY_API_KEY_ENV", CANARY)
    result = CliRunner().invoke(cli, runs[1][:-12], catch_exceptions=True)
    seen += [result.stdout, result.stderr]
    codes.append(result.exit_code)
    for path in tmp_path.iterdir():
        seen.append(path.read_text(errors="replace"))
    seen.append(all_text(caplog))
    everything = "\n".join(seen)
    assert CANARY not in everything
    assert codes[0] == 4  # the server rejects the key: stopped, nothing written
    assert "***" in (tmp_path / "err1.jsonl").read_text()  # the echoed key, masked
    assert codes[3] == 3  # unreachable: stopped after --max-outage
    assert codes[-2:] == [2, 2]
    assert "looks like a key, not a variable name" in everything
    summary = json.loads((tmp_path / "summary3.json").read_text())
    assert "unreachable" in summary["stopped"]


async def collect_api(url: str, fault: Any, seen: list[str]) -> list[BaseException]:
    errors: list[BaseException] = []
    async with AsyncAPIClient(url, auth=CANARY, timeout=0.5) as client:
        seen += [repr(client), str(client)]
        try:
            resp = await client.request_raw("POST", CHAT, json={"model": "m", "messages": []})
            seen += [repr(resp), resp.text]
        except Exception as exc:
            errors.append(exc)
            seen += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
            seen += [repr(getattr(exc, "headers", None)), repr(getattr(exc, "body", None))]
    return errors


@pytest.mark.virtual_time
async def test_the_python_api_never_shows_the_key(
    bad_status_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with FakeAPI(api_key="sk-the-right-key-0000") as api:
        await collect_api(api.url, None, seen)
    async with FakeAPI() as api:
        api.script("POST", CHAT, [403, 500, "reset", "malformed"])
        for _ in range(4):
            await collect_api(api.url, None, seen)
    await collect_api(bad_status_server, None, seen)
    await collect_api("http://127.0.0.1:1", None, seen)
    seen.append(all_text(caplog))
    assert CANARY not in "\n".join(seen)


async def test_exception_causes_do_not_carry_the_key(bad_status_server: str) -> None:
    seen: list[str] = []
    errors = await collect_api(bad_status_server, None, seen)
    chain: list[str] = []
    for exc in errors:
        cause: BaseException | None = exc
        while cause is not None:
            chain.append(repr(cause))
            cause = cause.__cause__ or cause.__context__
    assert CANARY not in "\n".join(chain)
