"""FakeAPI: every behaviour through a real aiohttp client over loopback."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import random
import re
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from headway.testing import Chaos, FakeAPI, Fault, VirtualClock

CHAT = "/v1/chat/completions"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there, world!"}]}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession, api: FakeAPI, path: str, body: Any, **kw: Any
) -> tuple[int, Any, Any]:
    async with asyncio.timeout(300), session.post(api.url + path, json=body, **kw) as resp:
        text = await resp.text()
        try:
            data = json.loads(text)
        except ValueError:
            data = text
        return resp.status, resp.headers, data


def sse_data(text: str) -> list[Any]:
    out = []
    for block in text.strip().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[6:]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def sse_events(text: str) -> list[str]:
    return [line[7:] for line in text.splitlines() if line.startswith("event: ")]


def is_running(api: FakeAPI) -> bool:
    return api.running  # a call, so that mypy does not narrow it across awaits


# -- lifecycle -------------------------------------------------------------------------------
async def test_serves_on_a_free_loopback_port_and_closes() -> None:
    api = FakeAPI()
    with pytest.raises(RuntimeError):
        _ = api.url
    async with api:
        assert api.url.startswith("http://127.0.0.1:")
        assert api.port > 0
        assert api.openai_base_url == api.url + "/v1"
        assert api.running
        with pytest.raises(RuntimeError):
            await api.start()
    assert not is_running(api)
    await api.aclose()  # idempotent
    assert "not running" in repr(api)


async def test_two_servers_get_different_ports() -> None:
    async with FakeAPI() as a, FakeAPI() as b:
        assert a.port != b.port


async def test_fixture_is_running(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    async with session.get(fake_api.url + "/v1/models") as resp:
        assert resp.status == 200


# -- built-in routes ---------------------------------------------------------------------------
async def test_chat_completion_is_deterministic_with_usage(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    status, headers, data = await post(session, fake_api, CHAT, HELLO)
    assert status == 200
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == "echo: Hello there, world!"
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert headers["x-request-id"] == "req_fake000000"
    _, _, again = await post(session, fake_api, CHAT, HELLO)
    assert again["choices"] == data["choices"]
    assert again["usage"] == data["usage"]


async def test_chat_max_tokens_truncates(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    _, _, data = await post(session, fake_api, CHAT, {**HELLO, "max_tokens": 2})
    assert data["choices"][0]["message"]["content"] == "echo:"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 2


async def test_chat_stream_with_final_usage_chunk(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    body = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, text = await post(session, fake_api, CHAT, body)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    chunks = sse_data(text)
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["total_tokens"] == 12
    deltas = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2])
    assert deltas == "echo: Hello there, world!"
    assert all(c["usage"] is None for c in chunks[:-2])


async def test_chat_stream_without_usage(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    _, _, text = await post(session, fake_api, CHAT, {**HELLO, "stream": True})
    chunks = sse_data(text)
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_embeddings_float_and_base64(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    body = {"model": "text-embedding-3-small", "input": ["a b", "c"], "dimensions": 4}
    _, _, data = await post(session, fake_api, "/v1/embeddings", body)
    assert [d["index"] for d in data["data"]] == [0, 1]
    vec = data["data"][0]["embedding"]
    assert len(vec) == 4
    assert sum(v * v for v in vec) == pytest.approx(1.0, abs=1e-4)
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    _, _, b64 = await post(
        session, fake_api, "/v1/embeddings", {**body, "encoding_format": "base64"}
    )
    decoded = struct.unpack("<4f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(vec, abs=1e-5)


async def test_responses_plain_and_stream(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    body = {"model": "gpt-4o-mini", "input": "Say hi", "instructions": "Be brief."}
    _, _, data = await post(session, fake_api, "/v1/responses", body)
    assert data["status"] == "completed"
    assert data["output"][0]["content"][0]["text"] == "echo: Say hi"
    assert data["usage"]["input_tokens"] == 5
    _, _, text = await post(session, fake_api, "/v1/responses", {**body, "stream": True})
    events = sse_events(text)
    assert events[0] == "response.created"
    assert events[-1] == "response.completed"
    assert "response.output_text.delta" in events


async def test_anthropic_messages_plain_and_stream(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    body = {
        "model": "claude",
        "max_tokens": 50,
        "system": "Be kind.",
        "messages": HELLO["messages"],
    }
    _, _, data = await post(session, fake_api, "/v1/messages", body)
    assert data["type"] == "message"
    assert data["content"][0]["text"] == "echo: Hello there, world!"
    assert data["usage"] == {"input_tokens": 8, "output_tokens": 7}
    assert data["stop_reason"] == "end_turn"
    _, _, text = await post(session, fake_api, "/v1/messages", {**body, "stream": True})
    events = sse_events(text)
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert events.count("content_block_delta") == 7


async def test_anthropic_requires_max_tokens(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    status, _, data = await post(session, fake_api, "/v1/messages", {"messages": []})
    assert status == 400
    assert data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error"


async def test_models_list_and_lookup(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    async with session.get(fake_api.url + "/v1/models") as resp:
        ids = [m["id"] for m in (await resp.json())["data"]]
    assert "gpt-4o-mini" in ids
    async with session.get(fake_api.url + "/v1/models/gpt-4o") as resp:
        assert (await resp.json())["id"] == "gpt-4o"
    async with session.get(fake_api.url + "/v1/models/nope") as resp:
        assert resp.status == 404


async def test_bad_requests_get_400(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    status, _, data = await post(session, fake_api, CHAT, {"model": "m"})
    assert status == 400
    assert data["error"]["param"] == "messages"
    async with session.post(fake_api.url + CHAT, data=b"not json") as resp:
        assert resp.status == 400
    status, _, _ = await post(session, fake_api, "/v1/embeddings", {"input": 5})
    assert status == 400


async def test_unknown_path_is_404(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    async with session.get(fake_api.url + "/nope") as resp:
        assert resp.status == 404
    assert fake_api.requests[0].route is None


# -- user routes -------------------------------------------------------------------------------
async def test_route_with_canned_json_status_headers(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.route("GET", "/users/{id}", json={"name": "ada"}, status=201, headers={"X-A": "1"})
    async with session.get(fake_api.url + "/users/7") as resp:
        assert resp.status == 201
        assert resp.headers["X-A"] == "1"
        assert await resp.json() == {"name": "ada"}
    fake_api.route("GET", "/users/{id}", text="replaced")
    async with session.get(fake_api.url + "/users/7") as resp:
        assert await resp.text() == "replaced"


async def test_route_with_handler_and_path_params(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> dict[str, Any]:
        return {"id": FakeAPI.path_params(request)["id"], "q": request.query.get("q")}

    async def raw(request: web.Request) -> web.StreamResponse:
        return web.Response(text="raw", status=202)

    fake_api.route("GET", "/items/{id}", handler)
    fake_api.route("POST", "/raw", raw)
    async with session.get(fake_api.url + "/items/x1?q=z") as resp:
        assert await resp.json() == {"id": "x1", "q": "z"}
    async with session.post(fake_api.url + "/raw") as resp:
        assert resp.status == 202
        assert await resp.text() == "raw"
    with pytest.raises(ValueError):
        fake_api.route("GET", "no-slash")


async def test_user_route_overrides_builtin(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.route("POST", CHAT, json={"custom": True})
    _, _, data = await post(session, fake_api, CHAT, HELLO)
    assert data == {"custom": True}


# -- scripts -------------------------------------------------------------------------------
async def test_script_fail_twice_then_429_then_succeed(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.script("POST", CHAT, [503, 503, Fault.rate_limit(2)])
    with pytest.raises(AssertionError, match="3 step"):
        fake_api.assert_scripts_consumed()
    results = [await post(session, fake_api, CHAT, HELLO) for _ in range(4)]
    assert [r[0] for r in results] == [503, 503, 429, 200]
    assert results[2][1]["Retry-After"] == "2"
    assert results[0][2]["error"]["type"] == "server_error"
    assert results[2][2]["error"]["code"] == "rate_limit_exceeded"
    fake_api.assert_scripts_consumed()
    assert [r.fault for r in fake_api.requests] == ["503", "503", "429", None]


async def test_script_string_form_and_other_route_untouched(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.script("POST", "/v1/embeddings", "500, ok, 502")
    emb = {"input": "x"}
    statuses = [(await post(session, fake_api, "/v1/embeddings", emb))[0] for _ in range(3)]
    assert statuses == [500, 200, 502]
    assert (await post(session, fake_api, CHAT, HELLO))[0] == 200


@pytest.mark.parametrize(
    ("style", "header"),
    [("seconds", "Retry-After"), ("http-date", "Retry-After"), ("ms", "retry-after-ms")],
)
async def test_retry_after_styles(
    fake_api: FakeAPI, session: aiohttp.ClientSession, style: Any, header: str
) -> None:
    fake_api.script("POST", CHAT, [Fault.rate_limit(3, style=style)])
    status, headers, _ = await post(session, fake_api, CHAT, HELLO)
    assert status == 429
    value = headers[header]
    if style == "seconds":
        assert value == "3"
    elif style == "ms":
        assert value == "3000"
    else:
        when = email.utils.parsedate_to_datetime(value).timestamp()
        assert 2 <= when - time.time() <= 4.5


async def test_529_and_anthropic_error_shape(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.script("POST", "/v1/messages", [Fault.overloaded(), 429])
    body = {"max_tokens": 5, "messages": HELLO["messages"]}
    status, _, data = await post(session, fake_api, "/v1/messages", body)
    assert status == 529
    assert data["error"]["type"] == "overloaded_error"
    status, _, data = await post(session, fake_api, "/v1/messages", body)
    assert data["error"]["type"] == "rate_limit_error"


async def test_insufficient_quota(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    fake_api.script("POST", CHAT, [Fault.insufficient_quota()])
    status, headers, data = await post(session, fake_api, CHAT, HELLO)
    assert status == 429
    assert data["error"]["code"] == "insufficient_quota"
    assert "Retry-After" not in headers


async def test_connection_reset(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    fake_api.script("POST", CHAT, ["reset"])
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, fake_api, CHAT, HELLO)
    assert (await post(session, fake_api, CHAT, HELLO))[0] == 200
    assert fake_api.requests[0].status is None
    assert fake_api.requests[0].fault == "reset"


async def test_hang_never_answers_until_timeout(
    virtual_clock: VirtualClock, fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.script("POST", CHAT, [Fault.hang()])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(20):
            await post(session, fake_api, CHAT, HELLO)
    assert virtual_clock.elapsed >= 20 - 1e-6  # float rounding of virtual jumps


async def test_hang_is_released_when_the_server_closes(session: aiohttp.ClientSession) -> None:
    async with FakeAPI() as api:
        api.script("POST", CHAT, [Fault.hang()])
        task = asyncio.create_task(post(session, api, CHAT, HELLO))
        while not api.requests:
            await asyncio.sleep(0.001)
    with pytest.raises(aiohttp.ClientConnectionError):
        await task


async def test_truncated_body(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    fake_api.script("POST", CHAT, [Fault.truncate(), Fault.truncate()])
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(session, fake_api, CHAT, HELLO)
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(session, fake_api, CHAT, {**HELLO, "stream": True})


async def test_malformed_json(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    fake_api.script("POST", CHAT, [Fault.malformed()])
    async with session.post(fake_api.url + CHAT, json=HELLO) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        with pytest.raises(json.JSONDecodeError):
            json.loads(await resp.text())


async def test_dribbled_stream_takes_virtual_time(
    virtual_clock: VirtualClock, fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.script("POST", CHAT, [Fault.dribble(0.5), Fault.dribble(0.5)])
    t0 = virtual_clock.now()
    _, _, text = await post(session, fake_api, CHAT, {**HELLO, "stream": True})
    chunks = sse_data(text)
    assert virtual_clock.now() - t0 >= 0.5 * (len(chunks) - 1) - 1e-6
    t1 = virtual_clock.now()
    _, _, data = await post(session, fake_api, CHAT, HELLO)
    assert data["usage"]["total_tokens"] == 12
    assert virtual_clock.now() - t1 >= 0.5 - 1e-6


async def test_error_event_mid_stream(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    fake_api.script("POST", CHAT, [Fault.stream_error(after=3), Fault.stream_error()])
    _, _, text = await post(session, fake_api, CHAT, {**HELLO, "stream": True})
    chunks = sse_data(text)
    assert len(chunks) == 4
    assert "error" in chunks[-1]
    assert "[DONE]" not in text
    status, _, _ = await post(session, fake_api, CHAT, HELLO)  # not streaming: a 500
    assert status == 500


async def test_anthropic_error_event_mid_stream(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.script("POST", "/v1/messages", [Fault.stream_error(after=1)])
    body = {"max_tokens": 5, "messages": HELLO["messages"], "stream": True}
    _, _, text = await post(session, fake_api, "/v1/messages", body)
    assert sse_events(text) == ["message_start", "error"]


async def test_latency_fault_follows_the_loop_clock(
    virtual_clock: VirtualClock, fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.script("POST", CHAT, [Fault.latency(30)])
    t0 = virtual_clock.now()
    assert (await post(session, fake_api, CHAT, HELLO))[0] == 200
    assert virtual_clock.now() - t0 >= 30 - 1e-6


# -- chaos -------------------------------------------------------------------------------------
async def test_global_chaos_is_seeded_and_reproducible(session: aiohttp.ClientSession) -> None:
    async def run(seed: int) -> list[int]:
        chaos = Chaos(rate_limit=0.3, server_error=0.3)
        async with FakeAPI(chaos=chaos, seed=seed) as api:
            return [(await post(session, api, CHAT, HELLO))[0] for _ in range(30)]

    first, second = await run(5), await run(5)
    assert first == second
    assert {429, 200} <= set(first)
    assert set(first) <= {200, 429, 500, 502, 503}


async def test_route_chaos_only_hits_that_route(
    fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.set_chaos(Chaos(server_error=1.0, server_error_statuses=(502,)), path="/v1/embeddings")
    assert (await post(session, fake_api, "/v1/embeddings", {"input": "x"}))[0] == 502
    assert (await post(session, fake_api, CHAT, HELLO))[0] == 200
    fake_api.set_chaos(None, path="/v1/embeddings")
    assert (await post(session, fake_api, "/v1/embeddings", {"input": "x"}))[0] == 200
    fake_api.set_chaos(Chaos(overloaded=1.0, retry_after=None))
    assert (await post(session, fake_api, CHAT, HELLO))[0] == 529


async def test_chaos_on_a_user_route(fake_api: FakeAPI, session: aiohttp.ClientSession) -> None:
    fake_api.route("GET", "/x", json={}, chaos=Chaos(malformed=1.0))
    async with session.get(fake_api.url + "/x") as resp:
        assert resp.status == 200
        assert await resp.read() == b"{"


async def test_chaos_uniform_latency(
    virtual_clock: VirtualClock, session: aiohttp.ClientSession
) -> None:
    async with FakeAPI(chaos=Chaos(latency=(1.0, 2.0))) as api:
        t0 = virtual_clock.now()
        for _ in range(5):
            await post(session, api, CHAT, HELLO)
        assert 5.0 <= virtual_clock.now() - t0 <= 10.5


# -- limits ------------------------------------------------------------------------------------
@pytest.mark.virtual_time
async def test_rpm_bucket_answers_429_with_openai_headers(session: aiohttp.ClientSession) -> None:
    async with FakeAPI(rpm=3) as api:
        results = [await post(session, api, CHAT, HELLO) for _ in range(4)]
        assert [r[0] for r in results] == [200, 200, 200, 429]
        assert [r[1]["x-ratelimit-remaining-requests"] for r in results] == ["2", "1", "0", "0"]
        assert results[0][1]["x-ratelimit-limit-requests"] == "3"
        assert results[0][1]["x-ratelimit-reset-requests"] == "20s"
        limited = results[3]
        assert limited[2]["error"]["code"] == "rate_limit_exceeded"
        assert limited[1]["retry-after-ms"] == "20000"
        await asyncio.sleep(20)  # one request refills
        assert (await post(session, api, CHAT, HELLO))[0] == 200


@pytest.mark.virtual_time
async def test_burst_bounds_what_the_rpm_bucket_admits_at_once(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeAPI(rpm=600, burst=2) as api:  # 10/s, at most 2 at once
        results = [await post(session, api, CHAT, HELLO) for _ in range(3)]
        assert [r[0] for r in results] == [200, 200, 429]
        assert results[0][1]["x-ratelimit-limit-requests"] == "600"
        assert results[0][1]["x-ratelimit-remaining-requests"] == "1"
        assert results[2][1]["retry-after-ms"] == "100"
        await asyncio.sleep(0.1)  # virtual time: one request refills
        assert (await post(session, api, CHAT, HELLO))[0] == 200
        await asyncio.sleep(60)  # refills to the burst, not to a minute's worth
        statuses = [(await post(session, api, CHAT, HELLO))[0] for _ in range(3)]
        assert statuses == [200, 200, 429]
        api.set_limits(rpm=600)  # default burst: a minute's worth
        assert [(await post(session, api, CHAT, HELLO))[0] for _ in range(5)] == [200] * 5
    with pytest.raises(ValueError, match="burst"):
        FakeAPI(rpm=60, burst=0.5)
    with pytest.raises(ValueError, match="burst"):
        api.set_limits(rpm=60, burst=0)


@pytest.mark.virtual_time
async def test_tpm_bucket_charges_usage_tokens(session: aiohttp.ClientSession) -> None:
    async with FakeAPI(tpm=30) as api:
        first = await post(session, api, CHAT, HELLO)  # 12 tokens
        assert first[1]["x-ratelimit-remaining-tokens"] == "18"
        assert "x-ratelimit-limit-requests" not in first[1]
        assert (await post(session, api, CHAT, HELLO))[0] == 200
        status, _, data = await post(session, api, CHAT, HELLO)
        assert status == 429
        assert data["error"]["type"] == "tokens"
        too_big = {**HELLO, "messages": [{"role": "user", "content": "word " * 40}]}
        status, _, data = await post(session, api, CHAT, too_big)
        assert "too large" in data["error"]["message"]
        api.set_limits(rpm=100)
        assert (await post(session, api, CHAT, HELLO))[0] == 200


@pytest.mark.virtual_time
async def test_an_hour_of_rate_limiting_in_virtual_time(session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    async with FakeAPI(rpm=6) as api:
        t0 = loop.time()
        ok = 0
        while loop.time() - t0 < 3600:
            status, headers, _ = await post(session, api, CHAT, HELLO)
            if status == 200:
                ok += 1
            else:
                await asyncio.sleep(float(headers["retry-after-ms"]) / 1000)
        # a full bucket of 6, then one every 10 seconds
        assert 360 <= ok <= 366


# -- auth and journal --------------------------------------------------------------------------
async def test_api_key_check(session: aiohttp.ClientSession) -> None:
    async with FakeAPI(api_key="sk-secret") as api:
        assert (await post(session, api, CHAT, HELLO))[0] == 401
        ok = {"Authorization": "Bearer sk-secret"}
        assert (await post(session, api, CHAT, HELLO, headers=ok))[0] == 200
        assert (await post(session, api, CHAT, HELLO, headers={"x-api-key": "sk-secret"}))[0] == 200
        assert (await post(session, api, CHAT, HELLO, headers={"x-api-key": "bad"}))[0] == 401
        recorded = api.requests[1]
        assert recorded.headers["Authorization"] == "Bearer ***"
        assert "sk-secret" not in repr(api.requests)


async def test_journal_and_assert_called(
    virtual_clock: VirtualClock, fake_api: FakeAPI, session: aiohttp.ClientSession
) -> None:
    fake_api.route("GET", "/users/{id}", json={})
    await post(session, fake_api, CHAT, HELLO)
    await asyncio.sleep(5)
    async with session.get(fake_api.url + "/users/3?full=1") as resp:
        await resp.read()
    first, second = fake_api.requests
    assert (first.method, first.path, first.json["model"]) == ("POST", CHAT, "gpt-4o-mini")
    assert second.query == {"full": "1"}
    assert second.route == "/users/{id}"
    assert second.time - first.time == pytest.approx(5, abs=0.01)
    assert fake_api.assert_called("POST", CHAT, times=1, json={"model": "gpt-4o-mini"})
    fake_api.assert_called("GET", "/users/{id}")
    fake_api.assert_called(headers={"content-type": "application/json"})
    fake_api.assert_not_called("DELETE")
    with pytest.raises(AssertionError, match="exactly 2"):
        fake_api.assert_called("POST", CHAT, times=2)
    with pytest.raises(AssertionError, match="journal"):
        fake_api.assert_called("POST", CHAT, json={"model": "other"})
    fake_api.reset()
    assert fake_api.requests == []


async def test_anthropic_rate_limit_headers(session: aiohttp.ClientSession) -> None:
    body = {"max_tokens": 5, "messages": HELLO["messages"]}
    async with FakeAPI(rpm=10, tpm=1000) as api:
        _, headers, _ = await post(session, api, "/v1/messages", body)
    assert headers["anthropic-ratelimit-requests-limit"] == "10"
    assert headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "990"  # 5 in, 5 out
    reset = headers["anthropic-ratelimit-requests-reset"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", reset)
    assert headers["x-ratelimit-remaining-requests"] == "9"


@pytest.mark.virtual_time
async def test_limits_hold_in_every_window(session: aiohttp.ClientSession) -> None:
    # Requests at irregular times: in any 60 s, at most rpm (plus the initial burst).
    loop = asyncio.get_running_loop()
    rng = random.Random(3)
    async with FakeAPI(rpm=20) as api:
        for _ in range(300):
            await post(session, api, "/v1/models", None)
            await asyncio.sleep(rng.choice([0.0, 0.5, 1.0, 4.0]))
        admitted = [r.time for r in api.requests if r.status == 200]
    assert len(admitted) < len(api.requests)
    for i, start in enumerate(admitted):
        in_window = [t for t in admitted[i:] if t < start + 60]
        assert len(in_window) <= 20 + 20  # a full bucket plus one minute of refill
    assert loop.time() > 300


async def test_the_journal_can_be_bounded() -> None:
    with pytest.raises(ValueError, match="journal_limit"):
        FakeAPI(journal_limit=0)
    async with FakeAPI(journal_limit=5) as api, aiohttp.ClientSession() as session:
        for _ in range(23):
            async with session.get(f"{api.url}/v1/models") as resp:
                assert resp.status == 200
        assert 5 <= len(api.requests) < 10
        assert api.requests[-1].index == 22  # indexes keep counting
        api.reset()
        assert api.requests == []
