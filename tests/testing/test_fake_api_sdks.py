"""FakeAPI against the official SDKs, the referees of its fidelity."""

from __future__ import annotations

import anthropic
import openai
import pytest

from headway.testing import FakeAPI


async def test_anthropic_sdk_sees_request_ids_and_counts_tokens(fake_api: FakeAPI) -> None:
    async with anthropic.AsyncAnthropic(
        api_key="sk-ant-test", base_url=fake_api.url, max_retries=0
    ) as client:
        message = await client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=20,
            messages=[{"role": "user", "content": "hello there"}],
        )
        assert message.content[0].type == "text"
        assert message._request_id is not None
        assert message._request_id.startswith("req_")
        counted = await client.messages.count_tokens(
            model="claude-3-5-haiku-latest",
            system="be brief",
            messages=[{"role": "user", "content": "hello there"}],
        )
        assert counted.input_tokens == 4  # "be brief" + "hello there", a token a word
        assert counted._request_id is not None
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.count_tokens(model="claude-3-5-haiku-latest", messages=[])
        assert caught.value.request_id is not None
        assert caught.value.body["type"] == "error"  # type: ignore[index]
    fake_api.assert_called("POST", "/v1/messages/count_tokens", times=2)


async def test_openai_sdk_sees_request_ids(fake_api: FakeAPI) -> None:
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=fake_api.openai_base_url, max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
        assert completion._request_id is not None


async def test_route_with_a_dict_for_a_handler_is_refused_at_the_call(fake_api: FakeAPI) -> None:
    with pytest.raises(TypeError, match=r"json=\.\.\."):
        fake_api.route("POST", "/v1/things", {"id": 1})  # type: ignore[arg-type]
    assert fake_api.calls("POST", "/v1/things") == []


async def test_assert_called_failure_shows_the_bodies_sent(fake_api: FakeAPI) -> None:
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=fake_api.openai_base_url, max_retries=0
    ) as client:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(AssertionError) as caught:
        fake_api.assert_called("POST", "/v1/chat/completions", json={"model": "gpt-4o"})
    message = str(caught.value)
    assert "with json {'model': 'gpt-4o'}" in message
    assert '"model": "gpt-4o-mini"' in message
    assert '"content": "hi"' in message
