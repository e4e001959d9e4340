"""FakeAPI's answers: built-in routes, error bodies and responses with faults applied."""

from __future__ import annotations

import contextlib
import json as jsonlib
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from headway._clock import Clock
from headway.testing import _fake_content as content
from headway.testing._fake_journal import Route
from headway.testing.faults import Fault, retry_after_headers

__all__: list[str] = []  # internal: FakeAPI uses it

_DRIBBLE_PIECE = 32
_DEEP = 1000  # nesting of a deep_json answer: orjson parses it, json.dumps recurses too deep


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    content_type: str = "application/json"


@dataclass(slots=True)
class _Stream:
    frames: list[bytes]
    error_frame: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else jsonlib.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def _json_bytes(data: Any) -> bytes:
    return jsonlib.dumps(data).encode()


class _AnswersMixin:
    """FakeAPI's answers: built-in routes, user routes, errors and faulty responses."""

    models: tuple[str, ...]
    _clock: Clock

    # -- user routes ----------------------------------------------------------------------
    async def _user_answer(
        self, route: Route, request: web.Request
    ) -> _Answer | web.StreamResponse:
        if route.handler is not None:
            result = await route.handler(request)
            if isinstance(result, web.Response) and not result.prepared:
                body = result.body if isinstance(result.body, bytes) else None
                if body is not None:
                    headers = {
                        k: v
                        for k, v in result.headers.items()
                        if k.lower() not in ("content-type", "content-length")
                    }
                    return _Answer(
                        result.status,
                        body,
                        headers,
                        result.content_type or "application/octet-stream",
                    )
                return result
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, str):
                return _Answer(200, result.encode(), {}, "text/plain")
            if result is None:
                return _Answer(204, b"", {}, "application/json")
            return _Answer(200, _json_bytes(result), {})
        if route.text is not None:
            return _Answer(route.status, route.text.encode(), dict(route.headers), "text/plain")
        body = b"" if route.json is None and route.status == 204 else _json_bytes(route.json)
        return _Answer(route.status, body, dict(route.headers))

    # -- built-in routes ------------------------------------------------------------------
    def _chat(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer | _Stream]:
        reply = content.plan_chat(body)
        if body.get("stream"):
            opts = body.get("stream_options")
            include = isinstance(opts, dict) and bool(opts.get("include_usage"))
            frames = [_sse(c) for c in content.chat_stream(reply, rid, include)]
            frames.append(_sse("[DONE]"))
            error = {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            return reply.total_tokens, _Stream(frames, _sse(error))
        return reply.total_tokens, _Answer(
            200, _json_bytes(content.chat_completion(reply, rid)), {}
        )

    def _embeddings(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer | _Stream]:
        data, tokens = content.embeddings(body)
        return tokens, _Answer(200, _json_bytes(data), {})

    def _responses(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer | _Stream]:
        reply = content.plan_responses(body)
        if body.get("stream"):
            frames = [_sse(d, e) for e, d in content.responses_stream(reply, rid)]
            error = {
                "type": "error",
                "code": "server_error",
                "message": "stream interrupted",
                "param": None,
            }
            return reply.total_tokens, _Stream(frames, _sse(error, "error"))
        return reply.total_tokens, _Answer(
            200, _json_bytes(content.response_object(reply, rid)), {}
        )

    def _messages(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer | _Stream]:
        reply = content.plan_messages(body)
        if body.get("stream"):
            frames = [_sse(d, e) for e, d in content.anthropic_stream(reply, rid)]
            error = {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
            }
            return reply.total_tokens, _Stream(frames, _sse(error, "error"))
        return reply.total_tokens, _Answer(200, _json_bytes(content.messages(reply, rid)), {})

    def _count_tokens(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer]:
        # Free of the token budget, as Anthropic's own count_tokens is.
        return 0, _Answer(200, _json_bytes(content.count_message_tokens(body)), {})

    def _models(self, path: str) -> _Answer:
        listing = content.models(self.models)
        if path == "/v1/models":
            return _Answer(200, _json_bytes(listing), {})
        name = path.removeprefix("/v1/models/")
        for model in listing["data"]:
            if model["id"] == name:
                return _Answer(200, _json_bytes(model), {})
        body = {
            "error": {
                "message": f"The model '{name}' does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
        return _Answer(404, _json_bytes(body), {})

    # -- answers --------------------------------------------------------------------------
    @staticmethod
    def _error_body(
        status: int, anthropic: bool, message: str, kind: str, code: str | None, param: str | None
    ) -> dict[str, Any]:
        if anthropic:
            a_kind = {
                400: "invalid_request_error",
                401: "authentication_error",
                403: "permission_error",
                404: "not_found_error",
                429: "rate_limit_error",
                529: "overloaded_error",
            }.get(status, "api_error")
            return {"type": "error", "error": {"type": a_kind, "message": message}}
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def _error_response(
        self,
        status: int,
        anthropic: bool,
        message: str,
        kind: str,
        code: str | None = None,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = self._error_body(status, anthropic, message, kind, code, param)
        return web.Response(
            status=status,
            body=_json_bytes(body),
            content_type="application/json",
            headers=dict(headers or {}),
        )

    def _status_fault(self, fault: Fault, anthropic: bool) -> web.Response:
        status = fault.status
        headers = retry_after_headers(fault.retry_after, fault.retry_after_style)
        if status == 429:
            message = fault.message or "Rate limit reached. Please try again later."
            return self._error_response(
                429, anthropic, message, "requests", "rate_limit_exceeded", headers=headers
            )
        if status == 529:
            message = fault.message or "Overloaded"
            return self._error_response(
                529, anthropic, message, "overloaded_error", "overloaded", headers=headers
            )
        kind = "server_error" if status >= 500 else "invalid_request_error"
        message = fault.message or (
            "The server had an error while processing your request."
            if status >= 500
            else f"fake client error {status}"
        )
        return self._error_response(status, anthropic, message, kind, None, headers=headers)

    @staticmethod
    def _reset(request: web.Request) -> web.Response:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)

    async def _send(
        self,
        request: web.Request,
        answer: _Answer | _Stream | web.StreamResponse,
        fault: Fault | None,
        anthropic: bool,
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else "ok"
        interval = fault.delay if fault is not None and kind == "dribble" else 0.0
        if isinstance(answer, web.StreamResponse):
            return answer
        if isinstance(answer, _Stream):
            return await self._send_stream(request, answer, kind, interval, fault)
        if kind == "stream_error":
            return self._status_fault(Fault.error(500), anthropic)
        if kind == "malformed":
            broken = answer.body[: len(answer.body) // 2] or b"{"
            return web.Response(status=200, body=broken, content_type="application/json")
        if kind == "deep_json":
            deep = b'{"id":"deep","nested":' + b"[" * _DEEP + b"1" + b"]" * _DEEP + b"}"
            return web.Response(status=200, body=deep, content_type="application/json")
        if kind == "error_200":
            assert fault is not None
            message = fault.message or "upstream provider failed"
            error = {"error": {"message": message, "type": "server_error", "code": 502}}
            return web.Response(
                status=200, body=_json_bytes(error), content_type="application/json"
            )
        if kind == "echo_key":
            sent = (
                request.headers.get("Authorization")
                or request.headers.get("x-api-key")
                or request.headers.get("api-key")
                or ""
            )
            return self._error_response(
                401,
                anthropic,
                f"Incorrect API key provided: {sent}. You can find your API key at ...",
                "invalid_request_error",
                "invalid_api_key",
            )
        if kind not in ("truncate", "dribble"):
            return web.Response(
                status=answer.status,
                body=answer.body,
                headers=answer.headers,
                content_type=answer.content_type,
            )
        resp = web.StreamResponse(status=answer.status, headers=answer.headers)
        resp.content_type = answer.content_type
        resp.content_length = len(answer.body)
        await resp.prepare(request)
        if kind == "truncate":
            await resp.write(answer.body[: len(answer.body) // 2])
            if request.transport is not None:
                request.transport.close()
            return resp
        for start in range(0, len(answer.body), _DRIBBLE_PIECE):
            if start:
                await self._clock.sleep(interval)
            await resp.write(answer.body[start : start + _DRIBBLE_PIECE])
        await resp.write_eof()
        return resp

    async def _send_stream(
        self, request: web.Request, stream: _Stream, kind: str, interval: float, fault: Fault | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=stream.headers)
        resp.content_type = "text/event-stream"
        resp.headers["Cache-Control"] = "no-cache"
        await resp.prepare(request)
        frames = stream.frames
        if kind == "truncate":
            for frame in frames[: max(1, len(frames) // 2)]:
                await resp.write(frame)
            if request.transport is not None:
                request.transport.close()
            return resp
        if kind == "stream_error" and fault is not None:
            frames = [*frames[: min(fault.after, len(frames) - 1)], stream.error_frame]
        for i, frame in enumerate(frames):
            if i and interval > 0:
                await self._clock.sleep(interval)
            await resp.write(frame)
        await resp.write_eof()
        return resp
