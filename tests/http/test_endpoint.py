"""headway.http.endpoint: Endpoint calls, lifecycle and the default policy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from pydantic import BaseModel

from headway.errors import APITimeoutError, ConfigurationError, ServerError
from headway.http import (
    ClientClosedError,
    Endpoint,
    EndpointConfig,
    default_policy,
    match_endpoint,
)
from headway.resilience.policy import Policy
from headway.testing import FakeAPI

ServerFactory = Callable[[web.Application], Awaitable[str]]


class ChatRequest(BaseModel):
    messages: list[dict[str, str]]
    temperature: float | None = None


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


def _drip_app(first_byte: asyncio.Event | None = None) -> web.Application:
    """A server that sends its headers, then a byte a second of a body that never ends."""

    stop = asyncio.Event()

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1 << 30
        await resp.prepare(request)
        while not stop.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the client went away
            await resp.write(b" ")
            if first_byte is not None:
                first_byte.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return resp

    async def release(_: web.Application) -> None:
        stop.set()

    app = web.Application()
    app.on_shutdown.append(release)
    app.router.add_post("/v1/chat", drip)
    return app


def test_default_policy_has_an_attempt_deadline() -> None:
    cfg = EndpointConfig(base_url="http://h/v1", auth_type="none")
    assert cfg.attempt_timeout == 900.0
    assert default_policy(cfg).attempt_timeout == 900.0
    assert default_policy(cfg.model_copy(update={"attempt_timeout": None})).attempt_timeout is None
    assert Endpoint(cfg.model_copy(update={"attempt_timeout": 5.0})).policy.attempt_timeout == 5.0


@pytest.mark.virtual_time
async def test_a_trickling_body_cannot_hold_a_call_forever(serve: ServerFactory) -> None:
    url = await serve(_drip_app())
    config = EndpointConfig(
        base_url=url,
        endpoint="v1/chat",
        auth_type="none",
        timeout=30.0,  # per read: a byte a second keeps it alive
        attempt_timeout=120.0,
        max_retries=1,
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with Endpoint(config) as ep:
        with pytest.raises(APITimeoutError, match="attempt deadline"):
            await ep.call({"messages": []})
    assert 240.0 <= loop.time() - start < 300.0  # two attempts of 120 s, plus a backoff


@pytest.mark.virtual_time
async def test_aclose_ends_a_call_mid_body_with_a_clear_error(serve: ServerFactory) -> None:
    for kind in ("aiohttp", "httpx"):
        first_byte = asyncio.Event()
        url = await serve(_drip_app(first_byte))
        config = EndpointConfig(base_url=url, endpoint="v1/chat", auth_type="none", transport=kind)
        ep = Endpoint(config)
        await ep.__aenter__()
        call = asyncio.create_task(ep.call({"messages": []}))
        await first_byte.wait()
        await ep.aclose()
        async with asyncio.timeout(5):
            with pytest.raises(ClientClosedError, match="closed while the request was in flight"):
                await call
        assert not ClientClosedError("x").retryable
