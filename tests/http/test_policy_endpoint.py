"""AsyncAPIClient with a Policy, Endpoint and the SDK path, against FakeAPI."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from headway.errors import (
    APIConnectionError,
    AuthenticationError,
    ConfigurationError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    StreamError,
)
from headway.http import AsyncAPIClient, Endpoint, EndpointConfig, match_endpoint
from headway.limits import MultiLimiter
from headway.resilience.policy import Policy
from headway.resilience.retry import RetryPolicy
from headway.testing import FakeAPI

ServerFactory = Callable[[web.Application], Awaitable[str]]
CHAT = "/v1/chat/completions"
KEY = "sk-endpoint-secret-9"
MSG = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def fast_retry(n: int = 3) -> RetryPolicy:
    return RetryPolicy(max_retries=n, base_delay=0.01, max_delay=0.05, jitter=False, budget=None)


@pytest.mark.virtual_time
async def test_policy_retries_transient_failures(fake_api: FakeAPI) -> None:
    fake_api.script("POST", CHAT, "503, reset, malformed, ok")
    policy = Policy(retry=fast_retry(), concurrency=4)
    async with AsyncAPIClient(fake_api.openai_base_url, policy=policy) as client:
        assert client.max_connections == 4
        reply = await client.post("/chat/completions", json=MSG)
    assert "hello there" in reply["choices"][0]["message"]["content"]
    fake_api.assert_called("POST", CHAT, times=4)


@pytest.mark.virtual_time
async def test_request_raw_parse_retries_garbled_bodies(fake_api: FakeAPI) -> None:
    fake_api.script("POST", CHAT, "malformed")
    policy = Policy(retry=fast_retry())
    async with AsyncAPIClient(fake_api.openai_base_url, policy=policy) as client:
        resp = await client.request_raw("POST", "/chat/completions", json=MSG, parse=True)
    assert resp.status == 200
    assert resp.parsed()["object"] == "chat.completion"
    fake_api.assert_called("POST", CHAT, times=2)


@pytest.mark.virtual_time
async def test_policy_gives_up_and_never_retries_auth_or_quota() -> None:
    async with FakeAPI(api_key=KEY) as api:
        policy = Policy(retry=fast_retry())
        async with AsyncAPIClient(api.openai_base_url, auth="wrong", policy=policy) as client:
            with pytest.raises(AuthenticationError):
                await client.post("/chat/completions", json=MSG)
            api.assert_called("POST", CHAT, times=1)
        async with AsyncAPIClient(api.openai_base_url, auth=KEY, policy=policy) as client:
            api.script("POST", CHAT, "insufficient_quota")
            with pytest.raises(QuotaExceededError):
                await client.post("/chat/completions", json=MSG)
            api.script("POST", CHAT, "500, 500, 500, 500")
            with pytest.raises(ServerError):
                await client.post("/chat/completions", json=MSG)
        assert len(api.calls("POST", CHAT)) == 1 + 1 + 4


@pytest.mark.virtual_time
async def test_429_pauses_every_caller_sharing_the_limiter(fake_api: FakeAPI) -> None:
    loop = asyncio.get_running_loop()
    limiter = MultiLimiter.for_llm(rpm=60_000)
    policy = Policy(retry=fast_retry(), limiter=limiter)
    fake_api.script("POST", CHAT, "429:5")
    async with AsyncAPIClient(fake_api.openai_base_url, policy=policy) as client:
        t0 = loop.time()
        first = asyncio.create_task(client.post("/chat/completions", json=MSG))
        while not fake_api.calls("POST", CHAT):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        second_started = loop.time()
        await client.post("/chat/completions", json=MSG)
        second_done = loop.time()
        await first
    assert second_done - t0 >= 5.0
    assert second_done - second_started >= 4.9


@pytest.mark.virtual_time
async def test_limit_headers_sync_the_limiter_and_usage_settles(serve: ServerFactory) -> None:
    async def chat(request: web.Request) -> web.Response:
        return web.json_response(
            {"usage": {"total_tokens": 30}},
            headers={
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-limit-requests": "60",
            },
        )

    app = web.Application()
    app.router.add_post("/chat", chat)
    url = await serve(app)
    loop = asyncio.get_running_loop()
    limiter = MultiLimiter.for_llm(rpm=60, tpm=100_000)
    policy = Policy(retry=None, limiter=limiter)
    tpm = next(lim for lim in limiter.limiters if lim.unit == "tokens")
    async with AsyncAPIClient(url, policy=policy) as client:
        body = {**MSG, "max_tokens": 5000}
        t0 = loop.time()
        await client.post("/chat", json=body)
        assert loop.time() - t0 < 0.5  # the burst allowed the first at once
        assert tpm.tokens == pytest.approx(100_000 - 30, abs=5)  # settled to the usage
        await client.post("/chat", json=body)
        # the server said 0 requests remain: the local bucket was lowered and waited
        assert loop.time() - t0 >= 0.9
        await client.post("/chat", json=body, tokens=0)


@pytest.mark.virtual_time
async def test_stream_through_policy_settles_usage(fake_api: FakeAPI) -> None:
    limiter = MultiLimiter.for_llm(tpm=100_000)
    tpm = limiter.limiters[0]
    policy = Policy(retry=fast_retry(), limiter=limiter)
    fake_api.script("POST", CHAT, "503")
    body = {**MSG, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 900}
    async with AsyncAPIClient(fake_api.openai_base_url, policy=policy) as client:
        chunks = [
            c async for c in client.stream("POST", "/chat/completions", mode="json", json=body)
        ]
    assert chunks[-1]["usage"]["total_tokens"] > 0
    assert tpm.tokens > 100_000 - 100
    fake_api.assert_called("POST", CHAT, times=2)


def chat_config(api: FakeAPI, **kw: Any) -> EndpointConfig:
    values: dict[str, Any] = {
        "name": "chat",
        "provider": "openai",
        "base_url": api.openai_base_url,
        "endpoint": "chat/completions",
        "api_key": KEY,
        "max_retries": 2,
        "defaults": {"model": "gpt-4o-mini"},
    }
    values.update(kw)
    return EndpointConfig(**values)


@pytest.mark.virtual_time
async def test_endpoint_lifecycle_and_calls(fake_api: FakeAPI) -> None:
    ep = Endpoint(chat_config(fake_api, rpm=600, tpm=1_000_000, concurrency=8))
    assert ep.client is None
    assert KEY not in repr(ep)
    reply = await ep.call({"messages": MSG["messages"]})  # outside a context: temp client
    assert reply["object"] == "chat.completion"
    assert ep.client is None
    async with ep:
        assert ep.client is not None
        client = ep.client
        fake_api.script("POST", CHAT, "503")
        results = await asyncio.gather(*(ep.call({"messages": MSG["messages"]}) for _ in range(20)))
        assert ep.client is client
        assert all(r["model"] == "gpt-4o-mini" for r in results)
        chunks = [c async for c in ep.stream({"messages": MSG["messages"]})]
        assert chunks[0]["object"] == "chat.completion.chunk"
        async with ep.stream({"messages": MSG["messages"]}) as early:
            async for _ in early:
                break
    assert ep.client is None
    await ep.aclose()
    await ep.aclose()
    chunks = [c async for c in ep.stream({"messages": MSG["messages"]})]  # temp client
    assert chunks
    raw = await ep.call_raw({"messages": MSG["messages"]})  # temp client
    assert (raw.status, raw.json()["object"]) == (200, "chat.completion")
    async with ep:
        raw = await ep.call_raw({"messages": MSG["messages"]})
        assert raw.headers["x-request-id"]
        assert raw.parsed()["model"] == "gpt-4o-mini"
    sent = fake_api.calls("POST", CHAT)[0]
    assert sent.json["model"] == "gpt-4o-mini"
    assert KEY not in json.dumps(sent.headers)


@pytest.mark.virtual_time
async def test_endpoint_stream_error_event(fake_api: FakeAPI) -> None:
    fake_api.script("POST", CHAT, "stream_error")
    async with Endpoint(chat_config(fake_api)) as ep:
        with pytest.raises(StreamError):
            async for _ in ep.stream({"messages": MSG["messages"]}):
                pass


async def test_endpoint_pools_one_connection(serve: ServerFactory) -> None:
    async def peer(request: web.Request) -> web.Response:
        assert request.transport is not None
        return web.json_response({"peer": request.transport.get_extra_info("peername")[1]})

    app = web.Application()
    app.router.add_post("/v1/items/{id}", peer)
    app.router.add_get("/v1/items/{id}", peer)
    url = await serve(app)
    cfg = EndpointConfig(base_url=f"{url}/v1", endpoint="items/{id}", auth_type="none")
    ep = Endpoint(cfg, policy=Policy(retry=None))
    async with ep:
        peers = {(await ep.call({}, endpoint_params={"id": "1"}))["peer"] for _ in range(4)}
    assert len(peers) == 1
    peers = {(await ep.call({}, endpoint_params={"id": "1"}))["peer"] for _ in range(3)}
    assert len(peers) == 3
    get = Endpoint(cfg.model_copy(update={"method": "GET"}), policy=Policy(retry=None))
    assert "peer" in await get.call({"q": "x"}, endpoint_params={"id": "2"})


async def test_endpoint_aclose_logs_a_failing_close(
    fake_api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    ep = Endpoint(chat_config(fake_api))
    await ep.__aenter__()
    client = ep.client
    assert client is not None
    real_close = client.aclose

    async def broken() -> None:
        raise OSError("socket went away")

    client.aclose = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="headway"):
        await ep.aclose()
    assert ep.client is None
    assert "closing endpoint" in caplog.text
    await real_close()


async def test_endpoint_missing_env_key_is_a_clear_error(
    fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HEADWAY_MISSING_KEY", raising=False)
    ep = Endpoint(chat_config(fake_api, api_key=None, api_key_env="HEADWAY_MISSING_KEY"))
    with pytest.raises(ConfigurationError, match="HEADWAY_MISSING_KEY"):
        await ep.call(MSG)
    with pytest.raises(ConfigurationError):
        async with ep:
            pass
    assert ep.client is None
    fake_api.assert_not_called()


@pytest.mark.virtual_time
async def test_sdk_transport(fake_api: FakeAPI) -> None:
    async with FakeAPI(api_key=KEY) as api:
        ep = Endpoint(chat_config(api, transport_type="sdk", max_retries=3))
        async with ep:
            api.script("POST", CHAT, "503")
            reply = await ep.call({"messages": MSG["messages"]})
            assert reply["choices"][0]["message"]["role"] == "assistant"
            chunks = [c async for c in ep.stream({"messages": MSG["messages"]})]
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
            api.script("POST", CHAT, "429:1")
            assert (await ep.call(MSG))["object"] == "chat.completion"
        # SDK retries are off: the 503 and the 429 were retried by headway once each
        assert len(api.calls("POST", CHAT)) == 2 + 1 + 2
        bad = Endpoint(chat_config(api, transport_type="sdk", api_key="wrong"))
        with pytest.raises(AuthenticationError) as info:
            await bad.call(MSG)
        assert "wrong" not in str(info.value)
        assert len(api.calls("POST", CHAT)) == 6  # a 401 is tried once, not per layer
        none = Endpoint(chat_config(api, transport_type="sdk", base_url="http://127.0.0.1:1/v1"))
        none.policy = None
        with pytest.raises(APIConnectionError):
            await none.call(MSG)


@pytest.mark.virtual_time
async def test_providers_against_fake_api(fake_api: FakeAPI) -> None:
    ant = match_endpoint(
        "anthropic", "messages", base_url=fake_api.openai_base_url, api_key=KEY, max_retries=0
    )
    async with ant:
        body = {"model": "claude-x", "max_tokens": 50, "messages": MSG["messages"]}
        reply = await ant.call(body)
        assert reply["type"] == "message"
        events = [e async for e in ant.stream(body)]
        assert events[-1]["type"] == "message_stop"
    sent = fake_api.calls("POST", "/v1/messages")[0]
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["x-api-key"] != KEY  # masked in the journal; sent for real
    oai = match_endpoint("openai", "embeddings", base_url=fake_api.openai_base_url, api_key=KEY)
    reply = await oai.call({"model": "text-embedding-3-small", "input": "hi"})
    assert reply["data"][0]["embedding"]


@pytest.mark.virtual_time
async def test_ollama_native_ndjson(fake_api: FakeAPI) -> None:
    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"message": {"content": "hi"}, "done": false}\n')
        await resp.write(b'{"done": true, "prompt_eval_count": 3, "eval_count": 1}\n')
        return resp

    fake_api.route("POST", "/api/chat", chat)
    ep = match_endpoint("ollama", "api/chat", base_url=fake_api.url, max_retries=0, tpm=10_000)
    docs = [d async for d in ep.stream({"model": "llama3", "messages": MSG["messages"]})]
    assert [d["done"] for d in docs] == [False, True]
    assert fake_api.calls("POST", "/api/chat")[0].json["stream"] is True


async def test_rate_limit_error_without_policy(fake_api: FakeAPI) -> None:
    fake_api.script("POST", CHAT, "429:2")
    ep = Endpoint(chat_config(fake_api), policy=None)
    ep.policy = None
    with pytest.raises(RateLimitError) as info:
        await ep.call(MSG)
    assert info.value.retry_after == 2.0
