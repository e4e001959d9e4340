"""Keys stay out of the HTTP layer's reprs, logs, errors and exception chains (redaction)."""

from __future__ import annotations

import asyncio
import logging
import traceback

import pytest
from pydantic import SecretStr, ValidationError

from headway._secrets import mask_headers
from headway.errors import AuthenticationError, ConfigurationError, HeadwayError, RateLimitError
from headway.http import AsyncAPIClient, Endpoint, EndpointConfig, Request
from headway.resilience.policy import Policy
from headway.resilience.retry import RetryPolicy
from headway.testing import FakeAPI

KEY = "sk-never-in-logs-7f3a"


@pytest.mark.virtual_time
async def test_keys_stay_out_of_logs_errors_and_reprs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeAPI(api_key=KEY) as api:
        api.script("POST", "/v1/chat/completions", "429:1, 503")
        config = EndpointConfig(
            name="chat",
            base_url=api.openai_base_url,
            endpoint="chat/completions",
            api_key=KEY,
            default_headers={"x-api-key": KEY},
            max_retries=3,
        )
        policy = Policy(retry=RetryPolicy(max_retries=3, base_delay=0.01, jitter=False))
        with caplog.at_level(logging.DEBUG):
            async with Endpoint(config, policy=policy) as ep:
                assert ep.client is not None
                texts = [repr(ep), repr(ep.config), repr(ep.client), str(ep.config)]
                await ep.call({"model": "m", "messages": [{"role": "user", "content": "x"}]})
            bad = Endpoint(
                config.model_copy(
                    update={"api_key": SecretStr("sk-wrong-key-123"), "default_headers": {}}
                ),
                policy=policy,
            )
            with pytest.raises(AuthenticationError) as info:
                await bad.call({"model": "m", "messages": [{"role": "user", "content": "x"}]})
        texts += [str(info.value), repr(info.value), caplog.text, config.model_dump_json()]
        texts += [str(r.headers) for r in api.requests]
        for text in texts:
            assert KEY not in text
            assert "sk-wrong-key-123" not in text


@pytest.mark.virtual_time
async def test_rate_limit_error_carries_context(fake_api: FakeAPI) -> None:
    fake_api.script("POST", "/v1/chat/completions", "429:3")
    async with AsyncAPIClient(fake_api.openai_base_url, auth=KEY) as client:
        with pytest.raises(RateLimitError) as info:
            await client.post("/chat/completions", json={"messages": []})
    err = info.value
    assert err.retry_after == 3.0
    assert err.request_id
    assert err.method == "POST"
    assert err.url == f"{fake_api.openai_base_url}/chat/completions"
    assert KEY not in repr(err)


CANARY = "sk-canary-5d1e9b7f3a0c"
TOKEN = "tok-canary-8e2f4a6c1b"
USERINFO = "pw-canary-3c7a9e1d5f"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _assert_no_canary(exc: BaseException) -> None:
    texts = ["".join(traceback.format_exception(exc))]
    for e in _chain(exc):
        texts += [str(e), repr(e), repr(getattr(e, "__dict__", {})), repr(e.args)]
        texts += [repr(getattr(e, name, None)) for name in ("request_info", "request")]
    for text in texts:
        for secret in (CANARY, TOKEN, USERINFO):
            assert secret not in text, text


async def _raw(
    answer: bytes | None, never: asyncio.Event, handlers: list[asyncio.Task[object]]
) -> tuple[str, asyncio.Server]:
    """A raw server answering ``answer`` (``None``: not before ``never`` is set)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            if answer is None:
                await never.wait()
            writer.write(answer or b"")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return f"127.0.0.1:{server.sockets[0].getsockname()[1]}", server


_ANSWERS = {
    "401": b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    "500": b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    "malformed status": b"HTTP/1.1 abc Broken\r\n\r\n",
    "reset": b"",
    "timeout": None,
}


@pytest.mark.virtual_time
@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_no_key_survives_in_any_error_or_its_chain(kind: str) -> None:
    """Library exceptions (whose reprs carry the request's headers) are never chained to
    headway's errors; user info in the base URL and custom key headers are masked."""
    cases: list[tuple[str, str, asyncio.Server | None]] = [("refused", "127.0.0.1:1", None)]
    never = asyncio.Event()
    handlers: list[asyncio.Task[object]] = []
    for name, answer in _ANSWERS.items():
        host, server = await _raw(answer, never, handlers)
        cases.append((name, host, server))
    errors: list[BaseException] = []
    try:
        for _, host, _server in cases:
            userinfo = f"http://user:{USERINFO}@{host}/v1"
            for base, auth in (
                (f"http://{host}/v1", {"auth": CANARY}),
                (userinfo, {"auth": TOKEN, "auth_header": "X-Custom-Token"}),
            ):
                client = AsyncAPIClient(base, timeout=5.0, transport=kind, **auth)  # type: ignore[arg-type]
                async with client:
                    with pytest.raises(HeadwayError) as info:
                        await client.post("/chat", json={"q": 1})
                    errors.append(info.value)
                    with pytest.raises(HeadwayError) as info:
                        async for _ in client.stream("POST", "/chat", json={"q": 1}):
                            pass
                    errors.append(info.value)
                    _assert_no_canary_in(repr(client))
                    _assert_no_canary_in(repr(client.build_request("GET", "/x")))
    finally:
        never.set()
        await asyncio.gather(*handlers, return_exceptions=True)
        for _, _, server in cases:
            if server is not None:
                server.close()
                await server.wait_closed()
    kinds = {type(e).__name__ for e in errors}
    assert {"APIConnectionError", "APITimeoutError", "AuthenticationError", "ServerError"} <= kinds
    for exc in errors:
        _assert_no_canary(exc)
        assert exc.__cause__ is None or isinstance(exc.__cause__, HeadwayError)


def test_user_info_and_an_authorization_header_conflict() -> None:
    with pytest.raises(ConfigurationError, match="user info") as info:
        AsyncAPIClient(f"https://u:{USERINFO}@h/v1", auth=CANARY)
    _assert_no_canary(info.value)


def _assert_no_canary_in(text: str) -> None:
    for secret in (CANARY, TOKEN, USERINFO):
        assert secret not in text, text


def test_headers_named_like_credentials_are_masked() -> None:
    headers = {
        "X-Api-Token": TOKEN,
        "X-Secret-Thing": TOKEN,
        "Custom-Auth": TOKEN,
        "X-My-Header": TOKEN,
        "x-ratelimit-remaining-tokens": "99",
        "Accept": "application/json",
    }
    masked = mask_headers(headers, {"x-my-header"})
    assert masked["x-ratelimit-remaining-tokens"] == "99"
    assert masked["Accept"] == "application/json"
    _assert_no_canary_in(repr(masked))
    client = AsyncAPIClient("https://h/v1", headers=headers, secret_headers=["X-My-Header"])
    _assert_no_canary_in(repr(client))
    config = EndpointConfig(
        base_url=f"https://user:{USERINFO}@h/v1",
        api_key=TOKEN,
        auth_header="X-Key-For-Us",
        default_headers={"X-Org-Token": TOKEN},
    )
    assert config.headers()["X-Key-For-Us"] == TOKEN
    assert config.secret_header_names() == {"x-key-for-us"}
    for text in (repr(config), str(config), config.model_dump_json(), repr(Endpoint(config))):
        _assert_no_canary_in(text)
    assert config.model_dump()["base_url"] == f"https://user:{USERINFO}@h/v1"  # Python dump
    request = Request("GET", f"https://u:{USERINFO}@h", {"X-Odd": TOKEN}, secret_headers={"x-odd"})
    _assert_no_canary_in(repr(request))


def test_a_rejected_base_url_with_user_info_is_not_echoed() -> None:
    with pytest.raises(ValidationError, match="must start with http") as info:
        EndpointConfig(base_url=f"ftp://user:{USERINFO}@h/v1", auth_type="none")
    _assert_no_canary_in(str(info.value))
    _assert_no_canary_in(repr(info.value))
