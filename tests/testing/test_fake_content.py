"""FakeAPI's deterministic payloads, as pure functions of the request body."""

from __future__ import annotations

from typing import Any

import pytest

from headway.testing import _fake_content as content

pytestmark = pytest.mark.unit


def test_content_parts_and_odd_content_are_read_as_text() -> None:
    body = {
        "messages": [
            {"role": "system", "content": None},
            {"role": "user", "content": ["a", {"type": "text", "text": "b c"}, {"image": 1}]},
            {"role": "assistant", "content": 42},
        ]
    }
    reply = content.plan_chat(body)
    assert reply.prompt_tokens == 4  # a, b, c, 42
    assert reply.text == "echo: a b c"


def test_a_reply_without_a_user_message() -> None:
    reply = content.plan_chat({"messages": [{"role": "system", "content": "rules"}]})
    assert reply.text == "echo."


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [1]},
        {"model": "", "messages": [{"role": "user", "content": "x"}]},
        {"messages": "x"},
    ],
)
def test_chat_bad_requests(body: dict[str, Any]) -> None:
    with pytest.raises(content.BadRequest):
        content.plan_chat(body)


def test_embeddings_of_token_ids() -> None:
    data, tokens = content.embeddings({"input": [1, 2, 3]})
    assert tokens == 3
    assert len(data["data"]) == 1
    data, tokens = content.embeddings({"input": [[1, 2], [3]]})
    assert tokens == 3
    assert len(data["data"]) == 2
    assert content.plan_embeddings({"input": "a b"}) == 2


@pytest.mark.parametrize(
    "body",
    [{"input": [1.5]}, {"input": "x", "dimensions": 0}, {"input": "x", "dimensions": True}],
)
def test_embeddings_bad_requests(body: dict[str, Any]) -> None:
    with pytest.raises(content.BadRequest):
        content.embeddings(body)


def test_responses_with_items_and_a_limit() -> None:
    body = {
        "input": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Say hi"}]},
        ],
        "max_output_tokens": 2,
    }
    reply = content.plan_responses(body)
    assert reply.prompt_tokens == 5
    assert reply.truncated
    obj = content.response_object(reply, "x")
    assert obj["status"] == "incomplete"
    assert obj["incomplete_details"] == {"reason": "max_output_tokens"}
    with pytest.raises(content.BadRequest):
        content.plan_responses({"input": [1]})
    with pytest.raises(content.BadRequest):
        content.plan_responses({"input": 5})


def test_messages_bad_requests() -> None:
    with pytest.raises(content.BadRequest):
        content.plan_messages({"max_tokens": 5, "messages": [1]})
    with pytest.raises(content.BadRequest):
        content.plan_messages({"max_tokens": 5})
    reply = content.plan_messages(
        {
            "max_tokens": 1,
            "system": [{"type": "text", "text": "sys"}],
            "messages": [{"role": "user", "content": "one two"}],
        }
    )
    assert (reply.prompt_tokens, reply.completion_tokens, reply.truncated) == (3, 1, True)
    events = [e for e, _ in content.anthropic_stream(reply, "x")]
    assert events.count("content_block_delta") == 1


def test_pieces_join_back_to_the_text() -> None:
    reply = content.plan_chat({"messages": [{"role": "user", "content": "  spaced   out!  "}]})
    assert "".join(reply.pieces) == reply.text
