"""Loopback aiohttp.web servers for the HTTP layer's tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from aiohttp import web

ServerFactory = Callable[[web.Application], Awaitable[str]]


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Start an aiohttp app on 127.0.0.1, a free port; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
def hits() -> dict[str, int]:
    """A counter the test apps fill: path -> number of requests."""
    return {}


RawServerFactory = Callable[[bytes], Awaitable[str]]


@pytest_asyncio.fixture
async def serve_raw() -> AsyncIterator[RawServerFactory]:
    """A loopback server that answers each request with exactly ``answer`` (status line,
    headers and body as given), then closes the connection: for close-delimited bodies
    and answers aiohttp.web would not send."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        await reader.readexactly(int(value))  # read it all: no RST on close
                writer.write(answer)
                await writer.drain()
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
