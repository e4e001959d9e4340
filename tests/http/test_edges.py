"""Edge cases of the transports, mapping, SDK path, token counting and endpoint calls."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from pydantic import BaseModel

from headway.errors import (
    APIClientError,
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ConfigurationError,
    ResourceNotFoundError,
    ServerError,
    StreamError,
)
from headway.http import (
    AiohttpTransport,
    AsyncAPIClient,
    Endpoint,
    EndpointConfig,
    HttpxTransport,
    Response,
    error_for_status,
    estimate_tokens,
    match_endpoint,
    parse_rate_limit_headers,
    sync_limiter,
)
from headway.http.mapping import error_message, parse_body
from headway.http.ratelimit_headers import SYNC_BELOW, sync_from_headers
from headway.http.sdk import OpenAISDKTransport
from headway.resilience.policy import Policy
from headway.testing import FakeAPI

ServerFactory = Callable[[web.Application], Awaitable[str]]


def test_error_messages_and_bodies() -> None:
    assert error_message({"error": "plain"}) == "plain"
    assert error_message({"detail": "d"}) == "d"
    assert error_message({"error": {"type": "invalid"}}) == "invalid"
    assert error_message({"error": {}}) is None
    assert error_message({"other": 1}) is None
    assert error_message("  ") is None
    assert error_message(42) is None
    assert parse_body(b"") is None
    assert parse_body(b"\xff not json") == "\ufffd not json"
    err = error_for_status(529, {}, b"", "POST", "http://x/y?key=secret")
    assert isinstance(err, ServerError)
    assert "529 Overloaded" in str(err)
    assert "secret" not in str(err)
    err = error_for_status(499, {}, {"message": "client closed"}, None, "http://x")
    assert type(err) is APIClientError
    assert "499 Error: client closed" in str(err)
    err = error_for_status(404, {}, bytearray(b'{"error": {"message": "no model"}}'), "GET", "u")
    assert isinstance(err, ResourceNotFoundError)
    assert "check the URL" in str(err)


def test_response_object() -> None:
    resp = Response(200, CIMultiDict({"Content-Type": "text/plain"}), b"hi", "GET", "http://x")
    assert resp.parsed() == "hi"
    assert resp.body == b"hi"
    utf16 = Response(200, {}, '{"a": 1}'.encode("utf-16"), "GET", "u")
    assert utf16.json() == {"a": 1}
    assert Response(204, {}, b"", "GET", "u").parsed() is None
    assert Response(200, {}, b"", "GET", "u").parsed() is None
    bad = Response(200, CIMultiDict({"content-type": "application/json"}), b"{", "GET", "u")
    with pytest.raises(Exception, match="not valid JSON"):
        bad.parsed()


def test_sync_from_headers_only_when_low() -> None:
    calls: list[tuple[Any, ...]] = []

    class Spy:
        def sync(self, *args: Any) -> None:
            calls.append(args)

    plenty = CIMultiDict(
        {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "99",
            "x-ratelimit-limit-tokens": "1000",
            "x-ratelimit-remaining-tokens": "900",
        }
    )
    sync_from_headers(Spy(), plenty)
    assert calls == []
    low = plenty.copy()
    low["x-ratelimit-remaining-tokens"] = str(int(1000 * SYNC_BELOW) - 1)
    sync_from_headers(Spy(), low)
    assert calls == [("tokens", 499.0, None, 1000.0)]
    calls.clear()
    sync_from_headers(Spy(), CIMultiDict({"x-ratelimit-remaining-requests": "5"}))  # no limit
    assert calls == [("requests", 5.0, None, None)]
    calls.clear()
    sync_from_headers(
        Spy(),
        CIMultiDict({"x-ratelimit-remaining-requests": "x", "x-ratelimit-limit-requests": "9"}),
    )
    sync_from_headers(Spy(), CIMultiDict({"content-type": "json"}))
    assert calls == []
    anthropic = CIMultiDict(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "40",
            "anthropic-ratelimit-tokens-limit": "1000",
            "anthropic-ratelimit-tokens-remaining": "900",
        }
    )
    sync_from_headers(Spy(), anthropic)
    assert calls == []
    anthropic["anthropic-ratelimit-requests-remaining"] = "3"
    sync_from_headers(Spy(), anthropic)
    assert calls == [("requests", 3.0, None, 50.0)]
    calls.clear()
    info = parse_rate_limit_headers({"ratelimit": "limit=10, remaining=1, reset=2"})
    assert info is not None
    sync_limiter(Spy(), info, below=0.5)
    assert calls == [("requests", 1.0, 2.0, 10.0)]


def test_token_estimates_cover_shapes() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "abcd", "name": "bob"},
            "loose text!",
            {"role": "tool", "content": None},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": "bc"}}}],
        "input": ("abcd", "abcd"),
        "system": "abcd",
    }
    assert estimate_tokens(body, method="heuristic") > 10
    assert estimate_tokens({"messages": "just a string"}, method="heuristic") == 4


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
            await transport.send("GET", f"{url}/drop")
        stream = await transport.open_stream("GET", f"{url}/drop", timeout=1.0)
        with pytest.raises(StreamError, match="broke off"):
            async for _ in stream.aiter_bytes():
                pass
        await stream.aclose()
        stream = await transport.open_stream("GET", f"{url}/drop")
        with pytest.raises(APIConnectionError):
            await stream.aread()
        await stream.aclose()
        stream = await transport.open_stream("GET", f"{url}/ok")
        assert await stream.aread() == b"fine"
        await stream.aclose()
        with pytest.raises(APIConnectionError):
            await transport.open_stream("GET", "http://127.0.0.1:1/x")
        resp = await transport.send("GET", f"{url}/ok", timeout=2.0)
        assert resp.text == "fine"
    finally:
        await transport.aclose()
        await transport.aclose()
    assert transport.closed
    with pytest.raises(RuntimeError, match="closed"):
        await transport.send("GET", f"{url}/ok")


@pytest.mark.virtual_time
async def test_stream_timeouts(serve: ServerFactory) -> None:
    never = asyncio.Event()

    async def stall_body(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        await never.wait()
        return resp

    async def stall_head(_: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    async def release(_: web.Application) -> None:
        never.set()

    app = web.Application()
    app.on_shutdown.append(release)
    app.router.add_get("/body", stall_body)
    app.router.add_get("/head", stall_head)
    url = await serve(app)
    for kind in ("aiohttp", "httpx"):
        async with AsyncAPIClient(url, timeout=30.0, transport=kind) as client:  # type: ignore[arg-type]
            with pytest.raises(APITimeoutError):
                async for _ in client.stream("GET", "/body", mode="bytes"):
                    pass
            with pytest.raises(APITimeoutError):
                async for _ in client.stream("GET", "/head"):
                    pass


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
        stream = await transport.open_stream("GET", f"{url}/drop")
        with pytest.raises(StreamError):
            async for _ in stream.aiter_bytes():
                pass
        await stream.aclose()
        stream = await transport.open_stream("GET", f"{url}/drop", timeout=1.0)
        with pytest.raises(APIConnectionError):
            await stream.aread()
        await stream.aclose()
        with pytest.raises(APIConnectionError):
            await transport.open_stream("GET", "http://127.0.0.1:1/x")
        resp = await transport.send("POST", f"{url}/missing", data={"a": "1"})
        assert resp.status == 404
    finally:
        await transport.aclose()
    with pytest.raises(RuntimeError):
        await transport.open_stream("GET", url)


class ChatRequest(BaseModel):
    messages: list[dict[str, str]]
    temperature: float | None = None


@pytest.mark.virtual_time
async def test_sdk_transport_paths(fake_api: FakeAPI) -> None:
    fake_api.route("GET", "/v1/things", json={"things": [1]})
    fake_api.route("DELETE", "/v1/things/1", json={"deleted": True})
    fake_api.route("GET", "/v1/bad", json={"error": {"message": "nope"}}, status=400)
    transport = OpenAISDKTransport(api_key="k", base_url=fake_api.openai_base_url, timeout=5)
    async with AsyncAPIClient(fake_api.openai_base_url, transport=transport) as client:
        assert (await client.get("/things", params={"a": "1"}, timeout=3.0)) == {"things": [1]}
        assert (await client.delete("/things/1")) == {"deleted": True}
        with pytest.raises(BadRequestError):
            await client.get("/bad")
        with pytest.raises(BadRequestError):
            async for _ in client.stream("GET", "/bad"):
                pass
        lines = [line async for line in client.stream("GET", "/things", mode="lines")]
        assert lines == ['{"things": [1]}'] or lines == ['{"things":[1]}']
    assert "OpenAISDKTransport" in repr(transport)
    await transport.aclose()
    await transport.aclose()
    assert transport.closed
    with pytest.raises(RuntimeError):
        await transport.send("GET", fake_api.url)
    hang = OpenAISDKTransport(api_key="k", base_url=fake_api.openai_base_url, timeout=0.5)
    fake_api.script("POST", "/v1/chat/completions", "hang")
    with pytest.raises(APITimeoutError):
        await hang.send("POST", "/chat/completions", json={"messages": []})
    await hang.aclose()


@pytest.mark.virtual_time
async def test_endpoint_accepts_models_and_default_client(fake_api: FakeAPI) -> None:
    ep = match_endpoint(
        "openai",
        "chat",
        base_url=fake_api.openai_base_url,
        api_key="k",
        defaults={"model": "gpt-4o-mini", "temperature": 0},
    )
    reply = await ep.call(ChatRequest(messages=[{"role": "user", "content": "hey"}]))
    assert reply["model"] == "gpt-4o-mini"
    assert fake_api.calls()[0].json["temperature"] == 0
    async with ep:
        again = await ep.__aenter__()  # re-entering an open endpoint keeps its client
        assert again is ep
        assert ep.client is not None
    ep2 = Endpoint(
        {
            "name": "x",
            "base_url": fake_api.openai_base_url,
            "endpoint": "chat/completions",
            "auth_type": "none",
            "transport": "httpx",
        },
        policy=Policy(retry=None),
    )
    assert (await ep2.call({"messages": [{"role": "user", "content": "a"}]}))["object"]
    fake_api.script("POST", "/v1/chat/completions", "500")
    with pytest.raises(ServerError):
        await ep2.call({"messages": []})


async def test_endpoint_enter_failure_closes_sdk_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWAY_NOPE", raising=False)
    cfg = EndpointConfig(
        base_url="http://127.0.0.1:1/v1", api_key_env="HEADWAY_NOPE", transport_type="sdk"
    )
    with pytest.raises(ConfigurationError):
        async with Endpoint(cfg):
            pass


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

    imports = "import headway.http.transport\n"
    faults(imports)  # compiles what is stale: compiling alone can raise the threshold
    # one page fault or more per read (aiohttp < 3.14 raises the threshold on import)
    old_aiohttp = tuple(map(int, aiohttp.__version__.split(".")[:2])) < (3, 14)
    assert old_aiohttp or faults(imports) >= 200
    assert faults(imports + "headway.http.transport.AiohttpTransport()\n") < 20
