"""Async mocks, fixtures capture_logs and mock_api_responses."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from headway import events
from headway.testing.mocks import (
    AsyncIterator,
    CapturedLogs,
    MockAPIResponses,
    async_cm_mock,
    get_incomplete_future,
    mock_aiohttp_session,
    mock_endpoint,
    mock_response,
    raise_exception,
)
from headway.testing.plugin import pitfall_hint

pytestmark = pytest.mark.unit


async def test_async_cm_mock_awaits_and_enters() -> None:
    m = async_cm_mock("conn")
    assert await m("a") == "conn"
    async with m("b") as conn:
        assert conn == "conn"
    assert m.call_count == 2
    m.assert_called_with("b")
    m.aenter.assert_awaited_once()
    m.aexit.assert_awaited_once()


async def test_async_cm_mock_side_effect_raises_on_await_and_enter() -> None:
    m = async_cm_mock(side_effect=ConnectionError("down"))
    with pytest.raises(ConnectionError):
        await m()
    with pytest.raises(ConnectionError):
        async with m():
            pass
    m.aexit.assert_not_awaited()


async def test_async_cm_mock_sees_the_exception_of_the_block() -> None:
    m = async_cm_mock(1)
    with pytest.raises(KeyError):
        async with m():
            raise KeyError("x")
    exc_type = m.aexit.await_args.args[0]
    assert exc_type is KeyError


async def test_mock_response_behaves_like_aiohttp() -> None:
    resp = mock_response(200, json={"a": 1}, headers={"X-Request-Id": "r1"})
    async with resp as r:
        assert await r.json() == {"a": 1}
        assert await r.text() == '{"a": 1}'
        assert await r.read() == b'{"a": 1}'
    assert resp.closed
    assert resp.ok
    assert resp.content_type == "application/json"
    assert resp.headers["x-request-id"] == "r1"
    resp.json.assert_awaited_once()
    resp.raise_for_status()


async def test_mock_response_errors_and_streams() -> None:
    resp = mock_response(503, text="line1\nline2\n")
    assert not resp.ok
    assert resp.reason == "Service Unavailable"
    with pytest.raises(aiohttp.ClientResponseError) as info:
        resp.raise_for_status()
    assert info.value.status == 503
    assert [line async for line in resp.content] == [b"line1\n", b"line2\n"]
    chunked = mock_response(body=b"abcdef")
    assert [c async for c in chunked.content.iter_chunked(4)] == [b"abcd", b"ef"]
    assert [c async for c in mock_response(body=b"xy").content.iter_any()] == [b"xy"]


async def test_mock_session_request_is_awaitable_and_a_context_manager() -> None:
    session = mock_aiohttp_session(
        {
            "GET https://api.test/users": {"users": []},
            "https://api.test/fail": ConnectionResetError("reset"),
            "POST https://api.test/items": [mock_response(429), mock_response(201, json={})],
        }
    )
    async with session.get("https://api.test/users") as resp:
        assert await resp.json() == {"users": []}
    resp = await session.get("https://api.test/users")
    assert resp.status == 200
    with pytest.raises(ConnectionResetError):
        await session.get("https://api.test/fail")
    statuses = []
    for _ in range(3):
        async with session.post("https://api.test/items", json={"n": 1}) as r:
            statuses.append(r.status)
    assert statuses == [429, 201, 201]  # the last one repeats
    session.post.assert_called_with("https://api.test/items", json={"n": 1})
    assert session.calls[0] == ("GET", "https://api.test/users", {})
    with pytest.raises(AssertionError, match="no response"):
        await session.delete("https://api.test/other")
    async with session:
        pass
    assert session.closed
    with pytest.raises(RuntimeError):
        session.get("https://api.test/users")


async def test_mock_session_default_and_callable_responses() -> None:
    def answer(method: str, url: str, **kwargs: Any) -> Any:
        return mock_response(200, json={"echo": kwargs.get("json")})

    session = mock_aiohttp_session(answer)
    async with session.request("PUT", "https://x.test/", json=[1]) as resp:
        assert await resp.json() == {"echo": [1]}
        assert resp.method == "PUT"
    always = mock_aiohttp_session(mock_response(json={"ok": True}))
    assert await (await always.get("https://x.test/a")).json() == {"ok": True}


async def test_mock_endpoint_patches_call_only_inside_the_block() -> None:
    class Endpoint:
        async def call(self, request: Any) -> Any:
            return "real"

    ep = Endpoint()
    with mock_endpoint(ep, return_value={"ok": 1}) as call:
        assert await ep.call({"q": 1}) == {"ok": 1}
    call.assert_awaited_once_with({"q": 1})
    assert await ep.call({}) == "real"
    with mock_endpoint(ep, side_effect=[TimeoutError(), "second"]):
        with pytest.raises(TimeoutError):
            await ep.call({})
        assert await ep.call({}) == "second"
    with pytest.raises(TypeError), mock_endpoint(object()):
        pass


async def test_mock_endpoint_on_a_headway_endpoint() -> None:
    from headway.http.endpoint import Endpoint

    ep = Endpoint({"base_url": "http://127.0.0.1:9", "auth_type": "none"})
    with mock_endpoint(ep, return_value={"choices": []}) as call:
        assert await ep.call({"messages": []}) == {"choices": []}
    call.assert_awaited_once()


async def test_incomplete_future_never_completes(virtual_clock: Any) -> None:
    fut = get_incomplete_future()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(3600):
            await asyncio.shield(fut)
    assert not fut.done()
    fut.cancel()


async def test_async_iterator_and_raise_exception() -> None:
    assert [x async for x in AsyncIterator("abc")] == ["a", "b", "c"]
    it = AsyncIterator([1, ValueError("bad"), 3])
    assert await it.__anext__() == 1
    with pytest.raises(ValueError):
        await it.__anext__()
    assert await it.__anext__() == 3
    fail = raise_exception(ConnectionError)
    with pytest.raises(ConnectionError):
        await fail("anything", x=1)


def test_capture_logs_fixture(capture_logs: CapturedLogs) -> None:
    events.emit(events.RETRY_SCHEDULED, source="demo", attempt=1, delay=0.5)
    events.emit(events.LIMITER_WAIT, level=logging.INFO, tokens=1, wait=2.0)
    assert capture_logs.kinds() == ["retry.scheduled", "limiter.wait"]
    assert capture_logs.of_kind("retry.scheduled")[0].data["delay"] == 0.5
    assert capture_logs.records[0].headway_event.source == "demo"  # type: ignore[attr-defined]
    capture_logs.clear()
    assert capture_logs.events == []


def test_capture_logs_restores_the_logger_level() -> None:
    logger = logging.getLogger("headway")
    before = logger.level
    from headway.testing.mocks import capture_headway_logs

    with capture_headway_logs():
        assert logger.isEnabledFor(logging.DEBUG)
    assert logger.level == before


async def test_mock_api_responses_fixture(mock_api_responses: MockAPIResponses) -> None:
    assert mock_api_responses.success.status == 200
    assert mock_api_responses.rate_limit.headers["Retry-After"] == "1"
    assert mock_api_responses.auth_error.status == 401
    assert mock_api_responses.server_error.status == 500
    assert mock_api_responses.overloaded.status == 529
    resp = mock_api_responses.quota_exceeded.mock()
    assert (await resp.json())["error"]["code"] == "insufficient_quota"
    session = mock_aiohttp_session(
        [mock_api_responses.rate_limit.mock(), mock_api_responses.success.mock()]
    )
    first = await session.post("https://api.test/v1/chat/completions")
    second = await session.post("https://api.test/v1/chat/completions")
    assert (first.status, second.status) == (429, 200)


async def test_a_list_is_served_in_order_and_json_arrays_are_wrapped() -> None:
    session = mock_aiohttp_session([{"n": 1}, {"n": 2}])
    got = [await (await session.get("https://x.test/")).json() for _ in range(3)]
    assert got == [{"n": 1}, {"n": 2}, {"n": 2}]
    array = mock_aiohttp_session(mock_response(json=[1, 2]))
    assert await (await array.get("https://x.test/")).json() == [1, 2]
    with pytest.raises(ValueError, match=r"mock_response\(json=\[\]\)"):
        mock_aiohttp_session([])


def test_a_dict_with_a_key_that_is_not_a_route_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'ok' is neither.*mock_response\(json="):
        mock_aiohttp_session({"ok": True})
    with pytest.raises(ValueError, match="'users' is neither"):
        mock_aiohttp_session({"GET https://x.test/a": {}, "users": []})


async def test_a_reused_response_is_served_whole_every_time() -> None:
    sse = mock_response(
        body=b"data: one\n\ndata: two\n\n", headers={"Content-Type": "text/event-stream"}
    )
    session = mock_aiohttp_session(sse)
    for _ in range(2):
        async with session.get("https://x.test/stream") as resp:
            lines = [line async for line in resp.content if line.strip()]
        assert lines == [b"data: one\n", b"data: two\n"]


async def test_json_checks_the_content_type_like_aiohttp() -> None:
    html = mock_response(500, text="<html>oops</html>")
    with pytest.raises(aiohttp.ContentTypeError, match="unexpected mimetype: text/plain"):
        await html.json()
    assert await mock_response(body=b'{"a": 1}').json(content_type=None) == {"a": 1}
    vendor = mock_response(body=b"{}", headers={"Content-Type": "application/problem+json"})
    assert await vendor.json() == {}
    assert await mock_response(body=b"").json() is None


async def test_misspelt_keywords_are_refused_and_the_session_looks_real() -> None:
    session = mock_aiohttp_session(mock_response(json={}), headers={"Authorization": "Bearer x"})
    with pytest.raises(TypeError, match="'jsno'"):
        session.post("https://x.test/", jsno={"a": 1})
    await session.post("https://x.test/", json={"a": 1}, timeout=aiohttp.ClientTimeout(5))
    assert session.headers["authorization"] == "Bearer x"
    assert isinstance(session.timeout, aiohttp.ClientTimeout)
    assert session.connector.limit == 100
    await session.close()
    assert session.connector.closed


@pytest.mark.parametrize(
    ("error", "needle"),
    [
        (TypeError("'coroutine' object has no attribute '__aenter__'"), "mock_aiohttp_session"),
        (
            TypeError(
                "'coroutine' object does not support the asynchronous context manager protocol"
            ),
            "async_cm_mock",
        ),
        (TypeError("object MagicMock can't be used in 'await' expression"), "AsyncMock"),
        (AttributeError("'coroutine' object has no attribute 'status'"), "without `await`"),
        (ValueError("something else"), None),
    ],
)
def test_pitfall_hints_name_the_fix(error: BaseException, needle: str | None) -> None:
    hint = pitfall_hint(error)
    if needle is None:
        assert hint is None
    else:
        assert hint is not None
        assert needle in hint
