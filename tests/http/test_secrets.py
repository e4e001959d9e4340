"""Keys stay out of the HTTP layer's reprs, logs, errors and exception chains."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr

from headway.errors import AuthenticationError, RateLimitError
from headway.http import AsyncAPIClient, Endpoint, EndpointConfig
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
