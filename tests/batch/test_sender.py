from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from headway._secrets import Secret
from headway.batch import BatchRequest, BatchRunner
from headway.batch.sender import (
    PROVIDERS,
    SenderSettings,
    error_in_body,
    open_sender,
    resolve_target,
)
from headway.errors import CircuitBreakerOpenError, ConfigurationError, ServerError
from headway.testing import VirtualClock
from headway.testing.fake_api import FakeAPI, Fault

CHAT = "/v1/chat/completions"


def chat(cid: str, content: str = "hello") -> BatchRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return BatchRequest(cid, 1, "POST", CHAT, body, "openai")


# -- targets -----------------------------------------------------------------------------------


def test_provider_target_reads_the_key_from_its_variable() -> None:
    t = resolve_target(
        provider="anthropic",
        base_url=None,
        endpoint=None,
        api_key_env=None,
        environ={"ANTHROPIC_API_KEY": "sk-ant"},
    )
    assert t.base_url == "https://api.anthropic.com"
    assert t.auth == "x-api-key"
    assert isinstance(t.api_key, Secret)
    assert t.api_key.get_secret_value() == t.key() == "sk-ant"
    assert "sk-ant" not in repr(t)
    assert "sk-ant" not in str(t.api_key)
    assert "sk-ant" not in f"{t.api_key!r} {t.api_key}"
    assert t.headers == {"anthropic-version": "2023-06-01"}
    assert t.default_url == "/v1/messages"


def test_keyless_provider_and_custom_endpoint() -> None:
    t = resolve_target(
        provider="ollama", base_url=None, endpoint="api/chat", api_key_env=None, environ={}
    )
    assert (t.auth, t.api_key, t.default_url) == ("none", None, "/api/chat")


def test_base_url_overrides_provider_and_strips_v1() -> None:
    t = resolve_target(
        provider="openai",
        base_url="http://localhost:8000/v1/",
        endpoint=None,
        api_key_env=None,
        environ={"OPENAI_API_KEY": "k"},
    )
    assert t.base_url == "http://localhost:8000"
    assert t.auth == "bearer"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"provider": "nope"}, "unknown provider 'nope'"),
        ({}, "--provider NAME or --base-url URL"),
        ({"base_url": "localhost:80"}, "http(s) URL"),
        ({"provider": "groq"}, "GROQ_API_KEY is not set"),
        ({"base_url": "http://x", "api_key_env": "K"}, "K is empty"),  # set, but empty
    ],
)
def test_target_errors(kwargs: dict[str, str], message: str) -> None:
    args = {"provider": None, "base_url": None, "endpoint": None, "api_key_env": None}
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_target(**{**args, **kwargs}, environ={"K": ""})  # type: ignore[arg-type]


def test_perplexity_lines_lose_the_v1_of_the_openai_batch_format() -> None:
    """Perplexity serves /chat/completions: an OpenAI Batch line's /v1/... goes there;
    providers whose paths start with /v1 (and --base-url servers) get the url as given."""
    env = {"PERPLEXITY_API_KEY": "k", "OPENAI_API_KEY": "k"}
    args = {"base_url": None, "endpoint": None, "api_key_env": None, "environ": env}
    pplx = resolve_target(provider="perplexity", **args)  # type: ignore[arg-type]
    assert (pplx.v1_paths, pplx.default_url) == (False, "/chat/completions")
    assert pplx.path("/v1/chat/completions") == "/chat/completions"
    assert pplx.path("/chat/completions") == "/chat/completions"
    for name in ("openai", "ollama"):
        t = resolve_target(provider=name, **args)  # type: ignore[arg-type]
        assert t.v1_paths
        assert t.path(CHAT) == CHAT
    custom = resolve_target(
        provider=None, base_url="http://127.0.0.1:9/", endpoint=None, api_key_env=None
    )
    assert custom.path(CHAT) == CHAT


@pytest.mark.virtual_time
async def test_sender_sends_to_the_targets_path() -> None:
    async with FakeAPI() as api:
        api.route("POST", "/chat/completions", json={"id": "pplx", "object": "chat.completion"})
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        target.v1_paths = False
        async with open_sender(SenderSettings(target=target)) as send:
            resp = await send(chat("a"))
    assert (resp.status_code, resp.body["id"]) == (200, "pplx")


def test_every_provider_has_an_https_or_local_base() -> None:
    for info in PROVIDERS.values():
        assert info.base_url.startswith(("https://", "http://localhost"))
        assert not info.base_url.endswith("/v1")


# -- sending through FakeAPI -------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_sender_returns_status_body_headers() -> None:
    async with FakeAPI(rpm=600) as api:
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        async with open_sender(SenderSettings(target=target, rpm=600, tpm=100_000)) as send:
            resp = await send(chat("a"))
    assert resp.status_code == 200
    assert resp.body["object"] == "chat.completion"
    assert resp.headers["x-ratelimit-limit-requests"] == "600"


@pytest.mark.virtual_time
async def test_retries_and_429s_are_counted_by_the_runner(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(
            json.dumps({"custom_id": f"c{i}", "url": CHAT, "body": chat("x").body}) + "\n"
            for i in range(3)
        )
    )
    async with FakeAPI() as api:
        api.script("POST", CHAT, ["429:1", 503, "ok"])
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        settings = SenderSettings(target=target, concurrency=1, base_delay=0.1)
        async with open_sender(settings) as send:
            runner = BatchRunner(send, inp, tmp_path / "out.jsonl", concurrency=1)
            stats = await runner.run()
    assert (stats.succeeded, stats.retries, stats.rate_limited) == (3, 2, 1)


@pytest.mark.virtual_time
async def test_permanent_errors_raise_typed_errors() -> None:
    async with FakeAPI() as api:
        api.script("POST", CHAT, [500])
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        async with open_sender(SenderSettings(target=target, max_attempts=1)) as send:
            with pytest.raises(ServerError):
                await send(chat("a"))


@pytest.mark.virtual_time
async def test_open_breaker_is_waited_for_not_failed(virtual_clock: VirtualClock) -> None:
    async with FakeAPI() as api:
        api.script("POST", CHAT, [503] * 20)
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        settings = SenderSettings(target=target, concurrency=1, max_attempts=1)
        async with open_sender(settings) as send:
            for i in range(20):
                with pytest.raises(ServerError):
                    await send(chat(f"f{i}"))
            t0 = virtual_clock.elapsed
            async with asyncio.timeout(600):
                resp = await send(chat("after"))
            assert resp.status_code == 200
            assert virtual_clock.elapsed - t0 >= settings.breaker_recovery - 0.5


@pytest.mark.virtual_time
async def test_breaker_wait_is_bounded() -> None:
    async with FakeAPI() as api:
        api.script("POST", CHAT, [503] * 20)
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        settings = SenderSettings(target=target, concurrency=1, max_attempts=1, max_breaker_wait=0)
        async with open_sender(settings) as send:
            for i in range(20):
                with pytest.raises(ServerError):
                    await send(chat(f"f{i}"))
            with pytest.raises(CircuitBreakerOpenError):
                await send(chat("after"))


# -- issue 11: garbled and error-object 200s, key-shaped variable names ------------------------


@pytest.mark.virtual_time
async def test_a_200_with_invalid_json_is_retried() -> None:
    async with FakeAPI() as api:
        api.script("POST", CHAT, ["malformed", "malformed"])
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        async with open_sender(SenderSettings(target=target, max_attempts=3)) as send:
            resp = await send(chat("a"))
        assert len(api.requests) == 3
    assert resp.status_code == 200
    assert resp.body["object"] == "chat.completion"


@pytest.mark.virtual_time
async def test_invalid_json_within_the_attempt_limit_fails_as_invalid_response(
    tmp_path: Path,
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"custom_id": "a", "url": CHAT, "body": chat("a").body}) + "\n")
    async with FakeAPI() as api:
        api.script("POST", CHAT, ["malformed"] * 2)
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        async with open_sender(SenderSettings(target=target, max_attempts=2)) as send:
            stats = await BatchRunner(send, inp, tmp_path / "out.jsonl").run()
    assert stats.errors_by_code == {"invalid_response": 1}


@pytest.mark.virtual_time
async def test_a_200_carrying_an_error_object_is_that_error(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"custom_id": "a", "url": CHAT, "body": chat("a").body}) + "\n")
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.script("POST", CHAT, [Fault.error_200("upstream exploded")] * 2)
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        async with open_sender(SenderSettings(target=target, max_attempts=1)) as send:
            with pytest.raises(ServerError, match="upstream exploded"):
                await send(chat("x"))
            stats = await BatchRunner(send, inp, out).run()
            assert stats.errors_by_code == {"server_error": 1}
            # --retry-failed picks it up
            stats = await BatchRunner(send, inp, out, retry_failed=True).run()
    assert stats.succeeded == 1
    assert [json.loads(line)["error"] for line in out.read_text().splitlines()] == [None]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"error": {"code": "429", "message": "slow down"}}, 429),
        ({"error": {"type": "authentication_error"}}, 401),
        ({"error": "boom"}, 502),
        ({"error": {}}, None),
        ({"error": None, "id": "resp_1"}, None),
        ([{"error": {"code": 500}}], None),
    ],
)
def test_error_in_body(body: object, status: int | None) -> None:
    assert error_in_body(body) == status


@pytest.mark.parametrize(
    "value", ["sk-canary-0123456789abcdef", "sk-ant-api03-xyz", "3f9a1c0e7b2d4a6f8e0c1b3d5f7a9c2e"]
)
def test_a_key_given_as_the_variable_name_is_not_echoed(value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_target(
            provider=None, base_url="http://x", endpoint=None, api_key_env=value, environ={}
        )
    assert "looks like a key, not a variable name" in str(info.value)
    assert value not in str(info.value)


def test_a_key_given_to_endpoint_config_is_not_echoed() -> None:
    from pydantic import ValidationError

    from headway.http.config import EndpointConfig

    key = "sk-canary-0123456789abcdef"
    with pytest.raises(ValidationError) as info:
        EndpointConfig(base_url="http://x", api_key_env=key)
    assert "looks like a key, not a variable name" in str(info.value)
    assert key not in str(info.value)
    assert key not in repr(info.value)
    assert key not in repr(info.value.errors())
    config = EndpointConfig(base_url="http://x", api_key_env="GOOD_NAME")
    with pytest.raises(ValidationError) as info:
        config.api_key_env = key
    assert key not in str(info.value)
