"""What a streamed response yields: bytes, lines, SSE events or JSON documents."""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from headway import _json as _fastjson
from headway.errors import InvalidResponseError, StreamError
from headway.http.mapping import error_message
from headway.http.streaming import DONE, LineDecoder, NDJSONDecoder, SSEDecoder
from headway.http.transport import StreamResponse

__all__ = ["EventStream", "StreamMode"]

T = TypeVar("T")
StreamMode = Literal["bytes", "lines", "events", "json", "ndjson"]


class EventStream(AsyncIterator[T]):
    """Items of a streamed response; an async iterator and an async context manager.

    Use ``async with`` when you may stop early, so the connection is released at once::

        async with client.stream("POST", "/chat", json=body) as events:
            async for event in events:
                ...
    """

    __slots__ = ("_agen",)

    def __init__(self, agen: AsyncIterator[T]) -> None:
        self._agen = agen

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await self._agen.__anext__()

    async def aclose(self) -> None:
        """Stop the stream and release its connection (idempotent)."""
        aclose = getattr(self._agen, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _stream_error(payload: Any, resp: StreamResponse, default: str) -> StreamError:
    detail = error_message(payload) or default
    return StreamError(
        f"error event in stream: {detail}",
        status_code=resp.status,
        headers=resp.headers,
        body=payload,
        method=resp.method,
        url=resp.url,
    )


def _is_error_payload(payload: Any) -> bool:
    if not isinstance(payload, Mapping):
        return False
    return bool(payload.get("error")) or payload.get("type") == "error"


async def _iterate(resp: StreamResponse, mode: StreamMode) -> AsyncIterator[Any]:
    """Frame a streamed body as ``mode`` says."""
    if mode == "bytes":
        async for chunk in resp.aiter_bytes():
            yield chunk
        return
    if mode == "lines":
        lines = LineDecoder()
        async for chunk in resp.aiter_bytes():
            for line in lines.feed(chunk):
                yield line.decode("utf-8", "replace")
        for line in lines.flush():
            yield line.decode("utf-8", "replace")
        return
    if mode == "ndjson":
        nd = NDJSONDecoder()
        try:
            async for chunk in resp.aiter_bytes():
                for doc in nd.feed(chunk):
                    if _is_error_payload(doc):
                        raise _stream_error(doc, resp, "error")
                    yield doc
            for doc in nd.flush():
                if _is_error_payload(doc):
                    raise _stream_error(doc, resp, "error")
                yield doc
        except _json.JSONDecodeError as exc:
            raise InvalidResponseError(
                f"a streamed line is not JSON ({exc})",
                status_code=resp.status,
                headers=resp.headers,
                method=resp.method,
                url=resp.url,
            ) from None
        return
    sse = SSEDecoder()
    as_json = mode == "json"
    async for chunk in resp.aiter_bytes():
        for event in sse.feed(chunk):
            if event.data == DONE:
                return
            item = _event_item(event, resp, as_json)
            if item is not None:
                yield item
    for event in sse.flush():
        if event.data == DONE:
            return
        item = _event_item(event, resp, as_json)
        if item is not None:
            yield item


def _event_item(event: Any, resp: StreamResponse, as_json: bool) -> Any:
    if event.event == "error":
        try:
            payload: Any = _fastjson.loads(event.data)
        except ValueError:
            payload = event.data
        raise _stream_error(payload, resp, event.data or "error")
    if not as_json:
        return event
    if not event.data:
        return None
    try:
        payload = _fastjson.loads(event.data)
    except ValueError:
        raise InvalidResponseError(
            f"a streamed event is not JSON: {event.data[:200]!r}",
            status_code=resp.status,
            headers=resp.headers,
            method=resp.method,
            url=resp.url,
        ) from None
    if _is_error_payload(payload):
        raise _stream_error(payload, resp, "error")
    return payload
