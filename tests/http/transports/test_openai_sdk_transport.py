"""headway.http.transports.openai_sdk: the transport on the openai SDK."""

from __future__ import annotations

import pytest

from headway.errors import APITimeoutError, BadRequestError
from headway.http import AsyncAPIClient, OpenAISDKTransport, Request
from headway.testing import FakeAPI


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
        await transport.send(Request("GET", fake_api.url, {}))
    hang = OpenAISDKTransport(api_key="k", base_url=fake_api.openai_base_url, timeout=0.5)
    fake_api.script("POST", "/v1/chat/completions", "hang")
    with pytest.raises(APITimeoutError):
        await hang.send(Request("POST", "/chat/completions", {}, json={"messages": []}))
    await hang.aclose()
