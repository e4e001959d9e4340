"""headway.http.transports.aiohttp: the default transport."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from headway.errors import APIConnectionError, StreamError
from headway.http import AiohttpTransport, AsyncAPIClient, Request
from headway.resilience.policy import Policy

ServerFactory = Callable[[web.Application], Awaitable[str]]


async def test_more_than_100_requests_in_flight_at_once(serve: ServerFactory) -> None:
    wanted = 150
    arrived = 0
    everyone = asyncio.Event()

    async def barrier(_: web.Request) -> web.Response:
        nonlocal arrived
        arrived += 1
        if arrived >= wanted:
            everyone.set()
        await everyone.wait()  # answers only once all 150 are in flight together
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/barrier", barrier)
    url = await serve(app)
    async with AsyncAPIClient(url, policy=Policy(retry=None)) as client:
        async with asyncio.timeout(20):
            results = await asyncio.gather(*(client.get("/barrier") for _ in range(wanted)))
    assert len(results) == wanted


async def test_aiohttp_transport_direct(serve: ServerFactory) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"partial")
        assert request.transport is not None
        request.transport.close()
        return resp

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="fine")

    app = web.Application()
    app.router.add_get("/drop", drop)
    app.router.add_get("/ok", ok)
    url = await serve(app)
    transport = AiohttpTransport(timeout=5.0, connect_timeout=1.0, max_connections=2)
    try:
        assert "AiohttpTransport" in repr(transport)
        with pytest.raises(APIConnectionError):
            await transport.send(Request("GET", f"{url}/drop", {}))
        stream = await transport.open_stream(Request("GET", f"{url}/drop", {}, timeout=1.0))
        with pytest.raises(StreamError, match="broke off"):
            async for _ in stream.aiter_bytes():
                pass
        await stream.aclose()
        stream = await transport.open_stream(Request("GET", f"{url}/drop", {}))
        with pytest.raises(APIConnectionError):
            await stream.aread()
        await stream.aclose()
        stream = await transport.open_stream(Request("GET", f"{url}/ok", {}))
        assert await stream.aread() == b"fine"
        await stream.aclose()
        with pytest.raises(APIConnectionError):
            await transport.open_stream(Request("GET", "http://127.0.0.1:1/x", {}))
        resp = await transport.send(Request("GET", f"{url}/ok", {}, timeout=2.0))
        assert resp.text == "fine"
    finally:
        await transport.aclose()
        await transport.aclose()
    assert transport.closed
    with pytest.raises(RuntimeError, match="closed"):
        await transport.send(Request("GET", f"{url}/ok", {}))


_READ_FAULTS = """
import resource, socket
a, b = socket.socketpair()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):  # what asyncio does per response: a 256 KiB recv of a small answer
    a.send(b"x" * 100)
    b.recv(256 * 1024)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
a.close()
b.close()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mmap threshold")
def test_transport_stops_socket_reads_from_faulting_pages() -> None:
    """Until glibc raises its mmap threshold, a process maps (and faults) memory on every
    256 KiB socket read; creating a transport raises it once."""

    def faults(setup: str) -> int:
        out = subprocess.check_output([sys.executable, "-c", setup + _READ_FAULTS])
        return int(out)

    imports = "import headway.http.transports.aiohttp\n"
    faults(imports)  # compiles what is stale: compiling alone can raise the threshold
    # one page fault or more per read (aiohttp < 3.14 raises the threshold on import)
    old_aiohttp = tuple(map(int, aiohttp.__version__.split(".")[:2])) < (3, 14)
    assert old_aiohttp or faults(imports) >= 200
    assert faults(imports + "headway.http.transports.aiohttp.AiohttpTransport()\n") < 20
