"""headway.http.transports.httpx: the httpx transport."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from headway.errors import APIConnectionError, StreamError
from headway.http import HttpxTransport, Request

ServerFactory = Callable[[web.Application], Awaitable[str]]


async def test_httpx_transport_stream_errors(serve: ServerFactory) -> None:
    async def drop(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = 1000
        await resp.prepare(request)
        await resp.write(b"partial")
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_get("/drop", drop)
    url = await serve(app)
    transport = HttpxTransport(timeout=5.0, max_connections=4)
    try:
        assert "HttpxTransport" in repr(transport)
        stream = await transport.open_stream(Request("GET", f"{url}/drop", {}))
        with pytest.raises(StreamError):
            async for _ in stream.aiter_bytes():
                pass
        await stream.aclose()
        stream = await transport.open_stream(Request("GET", f"{url}/drop", {}, timeout=1.0))
        with pytest.raises(APIConnectionError):
            await stream.aread()
        await stream.aclose()
        with pytest.raises(APIConnectionError):
            await transport.open_stream(Request("GET", "http://127.0.0.1:1/x", {}))
        resp = await transport.send(Request("POST", f"{url}/missing", {}, content={"a": "1"}))
        assert resp.status == 404
    finally:
        await transport.aclose()
    with pytest.raises(RuntimeError):
        await transport.open_stream(Request("GET", url, {}))
