"""Fixtures for backend tests: the shared Redis, per-test key prefixes, private servers.

A test that needs Redis skips when none answers at ``HEADWAY_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``) — except in CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlparse

import pytest
import pytest_asyncio

from headway.backends import RedisBackend

REDIS_URL = os.environ.get("HEADWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(url: str) -> str | None:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), 1.0) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                return "it did not answer PING with PONG"
    except OSError as exc:
        return str(exc)
    return None


def _need(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {reason}: CI must provide Redis", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared test Redis (skip outside CI when unreachable, fail in CI)."""
    problem = _reachable(REDIS_URL)
    if problem is not None:
        _need(f"no Redis server reachable at {REDIS_URL} ({problem}); set HEADWAY_REDIS_URL")
    return REDIS_URL


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to this test."""
    return f"headway-test:{uuid.uuid4().hex[:12]}:"


async def _cleanup(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def backend(redis_url: str, prefix: str) -> AsyncIterator[RedisBackend]:
    """A backend on the shared Redis with this test's prefix; keys removed afterwards."""
    # a generous timeout: on a loaded machine a slow answer must not count as an outage
    # (the outage tests run their own server and set their own)
    b = RedisBackend(redis_url, prefix=prefix, timeout=5.0)
    try:
        yield b
    finally:
        await b.aclose()
        await _cleanup(redis_url, prefix)


@pytest_asyncio.fixture
async def make_backend(redis_url: str, prefix: str) -> AsyncIterator[object]:
    """Build more backends (more workers) on the same Redis and prefix."""
    made: list[RedisBackend] = []

    def make(**kw: object) -> RedisBackend:
        kw.setdefault("timeout", 5.0)  # as for `backend`: a slow answer is no outage
        b = RedisBackend(kw.pop("url", redis_url), prefix=prefix, **kw)  # type: ignore[arg-type]
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            await b.aclose()
        await _cleanup(redis_url, prefix)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on (yet)."""
    return _free_port()


class RedisServer:
    """A private ``redis-server`` on a free port that a test may stop and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while _reachable(self.url) is not None:
            if time.monotonic() > deadline:  # pragma: no cover - broken machine
                raise RuntimeError("redis-server did not start within 5 s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the server accepts connections but never answers (a hang)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private Redis the test can stop and restart (needs ``redis-server`` on PATH)."""
    binary = shutil.which("redis-server")
    if binary is None:
        _need("redis-server is not on PATH; outage tests start their own server")
        raise AssertionError  # pragma: no cover
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.thaw()
        server.stop()
