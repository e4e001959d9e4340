"""Deterministic OpenAI- and Anthropic-shaped payloads for FakeAPI.

Everything here is a pure function of the request body, so the same request always
gets the same answer and the same ``usage``. A "token" is a word or a punctuation
mark (:func:`count_tokens`); the reply echoes the last user message.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CREATED",
    "DEFAULT_MODELS",
    "BadRequest",
    "Reply",
    "anthropic_stream",
    "chat_completion",
    "chat_stream",
    "count_tokens",
    "embeddings",
    "messages",
    "models",
    "response_object",
    "responses_stream",
]

_TOKEN = re.compile(r"\w+|[^\w\s]")

#: ``created`` timestamp of every fake object (deterministic).
CREATED = 1_700_000_000
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-3-5-haiku-latest")
EMBEDDING_DIMENSIONS = 8


class BadRequest(ValueError):
    """The request body is not what the route expects (answered with 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def count_tokens(text: str) -> int:
    """FakeAPI's tokenizer: one token per word or punctuation mark.

    >>> count_tokens("Hello, world!")
    4
    """
    return len(_TOKEN.findall(text))


def _pieces(text: str) -> list[str]:
    """Split ``text`` into one piece per token; the pieces join back to ``text``."""
    pieces: list[str] = []
    start = 0
    for match in _TOKEN.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    if start < len(text) and pieces:
        pieces[-1] += text[start:]
    return pieces


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return " ".join(parts)
    return str(content)


@dataclass(slots=True, frozen=True)
class Reply:
    """The deterministic answer to a prompt."""

    model: str
    prompt_tokens: int
    text: str
    completion_tokens: int
    truncated: bool

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def pieces(self) -> list[str]:
        return _pieces(self.text)


def _reply(model: str, prompt_tokens: int, last_user: str, max_tokens: Any) -> Reply:
    text = f"echo: {last_user}" if last_user else "echo."
    pieces = _pieces(text)
    truncated = False
    limited = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 0
    if limited and len(pieces) > max_tokens:
        pieces, truncated = pieces[:max_tokens], True
        text = "".join(pieces)
    return Reply(model, prompt_tokens, text, len(pieces), truncated)


def _model(body: dict[str, Any], default: str = "gpt-4o-mini") -> str:
    model = body.get("model", default)
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string", "model")
    return model


def plan_chat(body: dict[str, Any]) -> Reply:
    """The reply to a ``/v1/chat/completions`` body."""
    model = _model(body)
    messages_ = body.get("messages")
    if not isinstance(messages_, list) or not messages_:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    prompt, last_user = 0, ""
    for msg in messages_:
        if not isinstance(msg, dict):
            raise BadRequest("each message must be an object", "messages")
        text = _text_of(msg.get("content"))
        prompt += count_tokens(text)
        if msg.get("role") == "user":
            last_user = text
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return _reply(model, prompt, last_user, max_tokens)


def _chat_usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.total_tokens,
    }


def chat_completion(reply: Reply, request_id: str) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": CREATED,
        "model": reply.model,
        "system_fingerprint": "fp_headway",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": "length" if reply.truncated else "stop",
            }
        ],
        "usage": _chat_usage(reply),
    }


def chat_stream(reply: Reply, request_id: str, include_usage: bool) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer (without ``[DONE]``)."""
    base = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": reply.model,
        "system_fingerprint": "fp_headway",
    }
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    yield chunk({"role": "assistant", "content": ""})
    for piece in reply.pieces:
        yield chunk({"content": piece})
    yield chunk({}, "length" if reply.truncated else "stop")
    if include_usage:
        yield {**base, "choices": [], "usage": _chat_usage(reply)}


def embeddings(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """An embeddings list and its token count."""
    model = _model(body, "text-embedding-3-small")
    raw = body.get("input")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw:
        # a list of strings, a list of token ids, or a list of token-id lists
        inputs = [raw] if all(isinstance(x, int) for x in raw) else raw
    else:
        raise BadRequest("'input' must be a string or a non-empty array", "input")
    dims = body.get("dimensions", EMBEDDING_DIMENSIONS)
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 4096:
        raise BadRequest("'dimensions' must be an integer from 1 to 4096", "dimensions")
    b64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            tokens += count_tokens(item)
            key = item
        elif isinstance(item, list) and all(isinstance(x, int) for x in item):
            tokens += len(item)
            key = " ".join(map(str, item))
        else:
            raise BadRequest("each input must be a string or an array of token ids", "input")
        vector = _vector(key, dims)
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if b64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    result = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return result, tokens


def plan_embeddings(body: dict[str, Any]) -> int:
    """Token count of an embeddings request (raises :class:`BadRequest`)."""
    return embeddings(body)[1]


def _vector(text: str, dims: int) -> list[float]:
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    vec = out[:dims]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vec]


def plan_responses(body: dict[str, Any]) -> Reply:
    """The reply to a ``/v1/responses`` body."""
    model = _model(body)
    raw = body.get("input")
    prompt, last_user = 0, ""
    if isinstance(raw, str):
        prompt, last_user = count_tokens(raw), raw
    elif isinstance(raw, list) and raw:
        for item in raw:
            if not isinstance(item, dict):
                raise BadRequest("each input item must be an object", "input")
            text = _text_of(item.get("content"))
            prompt += count_tokens(text)
            if item.get("role", "user") == "user":
                last_user = text
    else:
        raise BadRequest("'input' must be a string or a non-empty array", "input")
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        prompt += count_tokens(instructions)
    return _reply(model, prompt, last_user, body.get("max_output_tokens"))


def response_object(reply: Reply, request_id: str, status: str | None = None) -> dict[str, Any]:
    """A ``response`` object of the Responses API."""
    final = status or ("incomplete" if reply.truncated else "completed")
    return {
        "id": f"resp_{request_id}",
        "object": "response",
        "created_at": CREATED,
        "status": final,
        "model": reply.model,
        "incomplete_details": {"reason": "max_output_tokens"} if reply.truncated else None,
        "output": [
            {
                "type": "message",
                "id": f"msg_{request_id}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
            }
        ],
        "output_text": reply.text,
        "usage": {
            "input_tokens": reply.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": reply.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": reply.total_tokens,
        },
    }


def responses_stream(reply: Reply, request_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs of a streamed Responses answer."""
    seq = 0

    def event(kind: str, **data: Any) -> tuple[str, dict[str, Any]]:
        nonlocal seq
        seq += 1
        return kind, {"type": kind, "sequence_number": seq, **data}

    yield event("response.created", response=response_object(reply, request_id, "in_progress"))
    for piece in reply.pieces:
        yield event(
            "response.output_text.delta",
            item_id=f"msg_{request_id}",
            output_index=0,
            content_index=0,
            delta=piece,
        )
    yield event("response.completed", response=response_object(reply, request_id))


def plan_messages(body: dict[str, Any]) -> Reply:
    """The reply to an Anthropic ``/v1/messages`` body."""
    model = _model(body, "claude-3-5-haiku-latest")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("max_tokens: field required (a positive integer)", "max_tokens")
    messages_ = body.get("messages")
    if not isinstance(messages_, list) or not messages_:
        raise BadRequest("messages: field required (a non-empty array)", "messages")
    prompt = count_tokens(_text_of(body.get("system")))
    last_user = ""
    for msg in messages_:
        if not isinstance(msg, dict):
            raise BadRequest("each message must be an object", "messages")
        text = _text_of(msg.get("content"))
        prompt += count_tokens(text)
        if msg.get("role") == "user":
            last_user = text
    return _reply(model, prompt, last_user, max_tokens)


def count_message_tokens(body: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's ``/v1/messages/count_tokens`` answer: the prompt's ``input_tokens``."""
    reply = plan_messages({**body, "max_tokens": 1})  # the endpoint takes no max_tokens
    return {"input_tokens": reply.prompt_tokens}


def messages(reply: Reply, request_id: str) -> dict[str, Any]:
    """An Anthropic ``message`` object."""
    return {
        "id": f"msg_{request_id}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "max_tokens" if reply.truncated else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
    }


def anthropic_stream(reply: Reply, request_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs of a streamed Anthropic answer."""
    start = messages(reply, request_id)
    start.update(content=[], stop_reason=None)
    start["usage"] = {"input_tokens": reply.prompt_tokens, "output_tokens": 0}
    yield "message_start", {"type": "message_start", "message": start}
    block = {"type": "text", "text": ""}
    yield "content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}
    yield "ping", {"type": "ping"}
    for piece in reply.pieces:
        delta = {"type": "text_delta", "text": piece}
        yield "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    stop = "max_tokens" if reply.truncated else "end_turn"
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": reply.completion_tokens},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def models(names: tuple[str, ...]) -> dict[str, Any]:
    """The ``GET /v1/models`` list."""
    data = [{"id": n, "object": "model", "created": CREATED, "owned_by": "headway"} for n in names]
    return {"object": "list", "data": data}
