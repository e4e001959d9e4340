"""AsyncAPIClient against a loopback aiohttp server (policy=None: one attempt per call)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from headway.errors import (
    APIClientError,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    QuotaExceededError,
    RateLimitError,
    ResourceNotFoundError,
    ServerError,
    StreamError,
)
from headway.http import AsyncAPIClient, HttpxTransport, Request, ServerSentEvent

ServerFactory = Callable[[web.Application], Awaitable[str]]

SECRET = "sk-client-secret-42"


def make_app(seen: list[web.Request] | None = None) -> web.Application:
    stall = asyncio.Event()

    async def echo(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "json": json.loads(body) if body else None,
                "auth": request.headers.get("Authorization"),
                "xkey": request.headers.get("x-api-key"),
                "extra": request.headers.get("X-Extra"),
                "peer": request.transport.get_extra_info("peername")[1]
                if request.transport
                else None,
            }
        )

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {k[2:]: v for k, v in request.query.items() if k.startswith("h_")}
        body = request.query.get(
            "body",
            json.dumps({"error": {"message": f"failed {code}", "code": request.query.get("code")}}),
        )
        return web.Response(
            status=code, text=body, headers=headers, content_type="application/json"
        )

    async def no_content(_: web.Request) -> web.Response:
        return web.Response(status=204)

    async def text(_: web.Request) -> web.Response:
        return web.Response(text="plain words")

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(body=b"{not json", content_type="application/json")

    async def slow(_: web.Request) -> web.Response:
        await stall.wait()
        return web.Response(text="never")

    async def sse(request: web.Request) -> web.StreamResponse:
        kind = request.query.get("kind", "ok")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if kind == "big":
            await resp.write(b"data: " + json.dumps({"t": "x" * (1 << 20)}).encode() + b"\n\n")
        elif kind == "error":
            await resp.write(
                b'data: {"n": 1}\n\nevent: error\ndata: {"error": {"message": "overloaded"}}\n\n'
            )
        elif kind == "errpayload":
            await resp.write(
                b'data: {"n": 1}\n\ndata: {"type": "error", "error": {"message": "bad"}}\n\n'
            )
        elif kind == "notjson":
            await resp.write(b"data: hello\n\n")
        elif kind == "usage":
            await resp.write(
                b'data: {"n": 1}\n\ndata: {"usage": {"total_tokens": 5}}\n\ndata: [DONE]\n\n'
            )
        else:
            for i in range(3):
                await resp.write(f'id: {i}\r\ndata: {{"n": {i}}}\r\n\r\n'.encode())
            await resp.write(b': comment\n\ndata: [DONE]\n\ndata: {"after": true}\n\n')
        return resp

    async def ndjson(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"n": 0}\n{"n"')
        await resp.write(b': 1}\n\n{"n": 2}')
        if request.query.get("kind") == "error":
            await resp.write(b'\n{"error": "model not found"}\n')
        if request.query.get("kind") == "bad":
            await resp.write(b"\nnope\n")
        return resp

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(10_000):
            await resp.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0)
        return resp

    async def release(_: web.Application) -> None:
        stall.set()  # let stalled handlers finish before the server shuts down

    app = web.Application()
    app.on_shutdown.append(release)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/204", no_content)
    app.router.add_get("/text", text)
    app.router.add_get("/garbage", garbage)
    app.router.add_get("/slow", slow)
    app.router.add_post("/sse", sse)
    app.router.add_post("/ndjson", ndjson)
    app.router.add_get("/endless", endless)
    return app


async def test_verbs_params_json_headers(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url, headers={"X-Extra": "1"}, auth=SecretStr(SECRET)) as client:
        got = await client.get("/echo", params={"key": "value"})
        assert got["query"] == {"key": "value"}
        assert got["auth"] == f"Bearer {SECRET}"
        assert got["extra"] == "1"
        for verb in ("post", "put", "patch", "delete"):
            got = await getattr(client, verb)("echo", json={"a": verb})
            assert (got["method"], got["json"]) == (verb.upper(), {"a": verb})
        got = await client.request(
            "POST", f"{url}/echo", data=b'{"raw": 1}', headers={"X-Extra": "2"}
        )
        assert got["json"] == {"raw": 1}
        assert got["extra"] == "2"
        assert await client.get("/204") is None
        assert await client.get("/text") == "plain words"
        raw = await client.request_raw("GET", "/echo")
        assert raw.status == 200
        assert raw.json()["path"] == "/echo"
        assert "echo" in repr(raw)
        assert raw.headers["content-type"].startswith("application/json")
        assert "plain" in (await client.request_raw("GET", "/text")).text


async def test_json_bodies_round_trip_exactly(serve: ServerFactory) -> None:
    """Request bodies go out as UTF-8 JSON with the JSON content type; values orjson
    refuses (big integers, int keys) still encode as the standard library would."""
    seen: list[web.Request] = []
    url = await serve(make_app(seen))
    payload = {"text": "héllo ✓", "big": 2**70, "nested": {"f": 1.5, "none": None}}
    async with AsyncAPIClient(url) as client:
        got = await client.post("/echo", json=payload)
        assert got["json"] == payload
        assert seen[-1].headers["Content-Type"] == "application/json"
        got = await client.post("/echo", json={1: "int key"})
        assert got["json"] == {"1": "int key"}
        stream = client.stream("POST", "/echo", json={"q": "ü"}, mode="bytes")
        echoed = json.loads(b"".join([chunk async for chunk in stream]))
        assert echoed["json"] == {"q": "ü"}
        with pytest.raises(TypeError, match="not JSON serializable"):
            await client.post("/echo", json={"bad": object()})


async def test_request_methods_are_coroutine_functions(serve: ServerFactory) -> None:
    """The verbs return their coroutine directly (one layer less per call), and still
    count as coroutine functions, so ``create_autospec`` mocks them as async."""
    from unittest.mock import create_autospec

    url = await serve(make_app())
    async with AsyncAPIClient(url) as client:
        for name in ("request", "request_raw", "get", "post", "put", "patch", "delete"):
            assert asyncio.iscoroutinefunction(getattr(client, name)), name
        coro = client.get("/echo")
        assert asyncio.iscoroutine(coro)
        assert (await coro)["path"] == "/echo"
    mock = create_autospec(AsyncAPIClient, instance=True)
    mock.post.return_value = {"ok": True}
    assert await mock.post("/x", json={}) == {"ok": True}


async def test_x_api_key_auth_and_repr_masks(serve: ServerFactory) -> None:
    url = await serve(make_app())
    client = AsyncAPIClient(
        url, auth=SECRET, auth_type="x-api-key", headers={"Authorization": f"Bearer {SECRET}"}
    )
    assert SECRET not in repr(client)
    async with client:
        assert (await client.get("/echo"))["xkey"] == SECRET


@pytest.mark.parametrize(
    ("code", "query", "cls"),
    [
        (400, {}, BadRequestError),
        (422, {}, BadRequestError),
        (401, {}, AuthenticationError),
        (403, {}, AuthenticationError),
        (404, {}, ResourceNotFoundError),
        (429, {}, RateLimitError),
        (429, {"code": "insufficient_quota"}, QuotaExceededError),
        (500, {}, ServerError),
        (503, {}, ServerError),
        (529, {}, ServerError),
        (418, {}, APIClientError),
        (409, {}, APIClientError),
    ],
)
async def test_status_mapping(
    serve: ServerFactory, code: int, query: dict[str, str], cls: type[Exception]
) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url, auth=SECRET) as client:
        with pytest.raises(cls) as info:
            await client.post(
                f"/status/{code}?api_key={SECRET}",
                params={**query, "h_x-request-id": "req-1"},
                json={},
            )
    err = info.value
    assert type(err) is cls
    assert isinstance(err, APIClientError)
    assert err.status_code == code
    assert err.request_id == "req-1"
    assert err.method == "POST"
    assert err.url is not None
    assert "/status/" in err.url
    assert SECRET not in str(err)
    assert SECRET not in repr(err)
    assert SECRET not in (err.url or "")
    assert f"failed {code}" in str(err)
    assert err.body["error"]["message"] == f"failed {code}"
    assert err.headers["X-Request-Id"] == "req-1"


async def test_retry_after_and_should_retry(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url) as client:
        with pytest.raises(RateLimitError) as info:
            await client.get("/status/429", params={"h_Retry-After-Ms": "1500"})
        assert info.value.retry_after == 1.5
        assert info.value.retryable
        with pytest.raises(RateLimitError) as info:
            await client.get("/status/429", params={"h_retry-after": "3"})
        assert info.value.retry_after == 3.0
        with pytest.raises(QuotaExceededError) as qinfo:
            await client.get(
                "/status/429", params={"body": "You exceeded your quota: insufficient_quota"}
            )
        assert not qinfo.value.retryable
        with pytest.raises(ServerError) as sinfo:
            await client.get("/status/500", params={"h_x-should-retry": "false"})
        assert not sinfo.value.retryable
        assert sinfo.value.retry_after is None
        with pytest.raises(ServerError) as sinfo:
            await client.get("/status/503", params={"h_Retry-After": "4"})
        assert sinfo.value.retry_after == 4.0
        with pytest.raises(BadRequestError) as binfo:
            await client.get("/status/400", params={"body": "x" * 20_000})
        assert len(binfo.value.body) < 9000


async def test_garbage_json_is_invalid_response(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url) as client:
        with pytest.raises(InvalidResponseError) as info:
            await client.get("/garbage")
        assert info.value.retryable
        assert info.value.status_code == 200


async def test_connection_refused_is_api_connection_error(serve: ServerFactory) -> None:
    url = await serve(web.Application())
    port = int(url.rsplit(":", 1)[1])
    # Find a closed port: bind, close, use it.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    assert closed_port != port
    async with AsyncAPIClient(f"http://127.0.0.1:{closed_port}") as client:
        with pytest.raises(APIConnectionError, match=r"^Connection error: ") as info:
            await client.get("/x")
        assert isinstance(info.value, ConnectionError)
        assert info.value.retryable


@pytest.mark.virtual_time
async def test_read_timeout_is_api_timeout_error(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url, timeout=30.0) as client:
        with pytest.raises(APITimeoutError) as info:
            await client.get("/slow")
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(APITimeoutError):
            await client.get("/slow", timeout=5.0)


async def test_lifecycle_close_idempotent_and_use_after_close(serve: ServerFactory) -> None:
    url = await serve(make_app())
    client = AsyncAPIClient(url)
    async with client:
        await client.get("/echo")
    assert client.closed
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get("/echo")
    with pytest.raises(RuntimeError, match="closed"):
        async with client:
            pass
    with pytest.raises(RuntimeError, match="closed"):
        async for _ in client.stream("POST", "/sse"):
            pass


async def test_exception_inside_context_closes(serve: ServerFactory) -> None:
    url = await serve(make_app())
    client = AsyncAPIClient(url)

    async def fail_inside() -> None:
        async with client:
            await client.get("/echo")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_inside()
    assert client.closed


async def test_one_pooled_connection_inside_context_temp_outside(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url) as client:
        peers = {(await client.get("/echo"))["peer"] for _ in range(5)}
    assert len(peers) == 1
    loose = AsyncAPIClient(url)
    peers = {(await loose.get("/echo"))["peer"] for _ in range(3)}
    assert len(peers) == 3  # each call opened (and closed) its own session
    events = [e async for e in loose.stream("POST", "/sse")]
    assert len(events) == 3
    await loose.aclose()


async def test_session_passed_in_is_never_closed(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with aiohttp.ClientSession() as session:
        client = AsyncAPIClient(url, session=session)
        assert (await client.get("/echo"))["path"] == "/echo"
        async with client:
            await client.get("/echo")
        assert not session.closed
        async with session.get(f"{url}/echo") as resp:
            assert resp.status == 200


async def test_cancelled_request_releases_its_connection(serve: ServerFactory) -> None:
    url = await serve(make_app())
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = AsyncAPIClient(url, session=session, timeout=None)
        task = asyncio.create_task(client.get("/slow"))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(2):
            assert (await client.get("/echo"))["path"] == "/echo"


async def test_sse_stream_modes(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url) as client:
        events = [e async for e in client.stream("POST", "/sse")]
        assert events == [ServerSentEvent("message", f'{{"n": {i}}}', str(i)) for i in range(3)]
        docs = [d async for d in client.stream("POST", "/sse", mode="json", json={"q": 1})]
        assert docs == [{"n": 0}, {"n": 1}, {"n": 2}]
        lines = [line async for line in client.stream("POST", "/sse", mode="lines")]
        assert lines[:3] == ["id: 0", 'data: {"n": 0}', ""]
        raw = b"".join([c async for c in client.stream("POST", "/sse", mode="bytes")])
        assert raw.endswith(b'data: {"after": true}\n\n')
        [big] = [
            d async for d in client.stream("POST", "/sse", mode="json", params={"kind": "big"})
        ]
        assert len(big["t"]) == 1 << 20


@pytest.mark.parametrize("kind", ["error", "errpayload"])
async def test_sse_error_event_raises_stream_error(serve: ServerFactory, kind: str) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url) as client:
        got: list[Any] = []

        async def collect() -> None:
            async for d in client.stream("POST", "/sse", mode="json", params={"kind": kind}):
                got.append(d)

        with pytest.raises(StreamError, match=r"overloaded|bad") as info:
            await collect()
        assert got == [{"n": 1}]
        assert info.value.status_code == 200
        if kind == "error":
            with pytest.raises(StreamError):
                async for _ in client.stream("POST", "/sse", params={"kind": kind}):
                    pass


async def test_sse_not_json_is_invalid_response(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url) as client:
        with pytest.raises(InvalidResponseError):
            async for _ in client.stream("POST", "/sse", mode="json", params={"kind": "notjson"}):
                pass


async def test_ndjson_stream(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url) as client:
        docs = [d async for d in client.stream("POST", "/ndjson", mode="ndjson")]
        assert docs == [{"n": 0}, {"n": 1}, {"n": 2}]
        with pytest.raises(StreamError, match="model not found"):
            async for _ in client.stream(
                "POST", "/ndjson", mode="ndjson", params={"kind": "error"}
            ):
                pass
        with pytest.raises(InvalidResponseError):
            async for _ in client.stream("POST", "/ndjson", mode="ndjson", params={"kind": "bad"}):
                pass


async def test_stream_error_status_and_early_exit(serve: ServerFactory) -> None:
    url = await serve(make_app())
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = AsyncAPIClient(url, session=session)
        with pytest.raises(AuthenticationError):
            async for _ in client.stream("POST", "/status/401"):
                pass
        async with client.stream("GET", "/endless") as events:
            async for event in events:
                if event.data == "3":
                    break
        await events.aclose()
        async with asyncio.timeout(2):  # the single connection was released
            assert (await client.get("/echo"))["path"] == "/echo"


async def test_httpx_transport(serve: ServerFactory) -> None:
    url = await serve(make_app())
    async with AsyncAPIClient(url, transport="httpx", auth=SECRET) as client:
        got = await client.post("/echo", json={"a": 1}, params={"k": "v"})
        assert (got["json"], got["query"], got["auth"]) == (
            {"a": 1},
            {"k": "v"},
            f"Bearer {SECRET}",
        )
        got = await client.post("/echo", data=b"[1]", timeout=5.0)
        assert got["json"] == [1]
        with pytest.raises(RateLimitError):
            await client.get("/status/429")
        docs = [d async for d in client.stream("POST", "/sse", mode="json")]
        assert len(docs) == 3
        with pytest.raises(ResourceNotFoundError):
            async for _ in client.stream("POST", "/status/404"):
                pass
    transport = HttpxTransport(timeout=0.05)
    async with AsyncAPIClient(url, transport=transport) as client:
        with pytest.raises(APITimeoutError):
            await client.get("/slow")
        with pytest.raises(APIConnectionError):  # refused at once: not a timeout, even
            await client.get("http://127.0.0.1:1/x", timeout=5.0)  # on a loaded machine
    assert not transport.closed  # a transport passed in is the caller's
    await transport.aclose()
    await transport.aclose()
    with pytest.raises(RuntimeError):
        await transport.send(Request("GET", url, {}))


async def test_unknown_transport_name() -> None:
    with pytest.raises(ValueError, match="unknown transport"):
        AsyncAPIClient("http://x", transport="curl")  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


@pytest.mark.parametrize("adaptive", [False, True])
async def test_stream_holds_its_concurrency_slot_until_closed(
    serve: ServerFactory, adaptive: bool
) -> None:
    """A stream counts against the policy's concurrency limit while it is open, and
    gives its slot back when exhausted, closed early or broken."""
    from headway import Policy
    from headway.concurrency import AdaptiveConcurrency, ConcurrencyLimit

    pool: ConcurrencyLimit = (
        AdaptiveConcurrency(1, min_limit=1, max_limit=1) if adaptive else ConcurrencyLimit(1)
    )
    url = await serve(make_app())
    async with AsyncAPIClient(url, policy=Policy(retry=None, concurrency=pool)) as client:
        async with client.stream("POST", "/sse", mode="json") as items:
            assert await items.__anext__() == {"n": 0}
            assert pool.in_use == 1
            waiting = asyncio.create_task(client.get("/echo"))
            await _until(lambda: pool.waiting == 1)
            assert not waiting.done()
        # left early through ``async with``: the slot goes to the waiting call
        assert (await waiting)["path"] == "/echo"
        assert pool.in_use == 0

        assert [i async for i in client.stream("POST", "/sse", mode="json")] == [
            {"n": 0},
            {"n": 1},
            {"n": 2},
        ]
        assert pool.in_use == 0

        with pytest.raises(StreamError):
            async for _ in client.stream("POST", "/sse", mode="json", params={"kind": "error"}):
                pass
        assert pool.in_use == 0

        with pytest.raises(ServerError):  # refused when opening: nothing kept
            async for _ in client.stream("POST", "/status/503"):
                pass
        assert pool.in_use == 0


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


async def test_public_http_classes_can_be_patched_on_instances() -> None:
    """As users (and the seed test plans) mock them: patch.object on an instance."""
    from unittest.mock import AsyncMock, patch

    from headway.http import AiohttpTransport, Endpoint, EndpointConfig, OpenAISDKTransport
    from headway.http import Response as HttpResponse

    transport = AiohttpTransport()
    answer = HttpResponse(200, {"Content-Type": "application/json"}, b'{"ok": 1}', "GET", "u")
    with patch.object(transport, "send", AsyncMock(return_value=answer)) as send:
        async with AsyncAPIClient("http://h", transport=transport) as client:
            assert await client.get("/x") == {"ok": 1}
            [request] = send.await_args.args
            assert (request.method, request.url) == ("GET", "http://h/x")
            with patch.object(client, "request", AsyncMock(return_value="mocked")):
                assert await client.request("GET", "/y") == "mocked"
    transport.aclose = AsyncMock()  # type: ignore[method-assign]
    await transport.aclose()
    transport.aclose.assert_awaited_once()
    httpx_transport = HttpxTransport()
    with patch.object(httpx_transport, "send", AsyncMock(return_value=answer)):
        assert (await httpx_transport.send(Request("GET", "u", {}))) is answer
    await httpx_transport.aclose()
    sdk = OpenAISDKTransport(api_key="k", base_url="http://h/v1")
    with patch.object(sdk, "open_stream", AsyncMock()):
        await sdk.open_stream(Request("GET", "u", {}))
    await sdk.aclose()
    ep = Endpoint(EndpointConfig(base_url="http://h/v1", auth_type="none"))
    with patch.object(ep, "call", AsyncMock(return_value={"id": "x"})):
        assert await ep.call({"q": 1}) == {"id": "x"}
    events = AsyncAPIClient("http://h").stream("GET", "/")
    events.aclose = AsyncMock()  # type: ignore[method-assign]
    await events.aclose()
