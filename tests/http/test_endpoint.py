"""headway.http.endpoint: Endpoint calls, lifecycle and the default policy."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from headway.errors import ConfigurationError, ServerError
from headway.http import Endpoint, EndpointConfig, match_endpoint
from headway.resilience.policy import Policy
from headway.testing import FakeAPI


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
