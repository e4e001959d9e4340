"""Streamed responses: incremental framers and what a stream yields.

The framers (:class:`LineDecoder`, :class:`SSEDecoder`, :class:`NDJSONDecoder`) take
raw chunks as they arrive (any size, split anywhere, even inside a UTF-8 character or
between ``\\r`` and ``\\n``) and return whole items. There is no line length cap: a
single 1 MiB event parses, in linear time.

>>> dec = SSEDecoder()
>>> first = dec.feed(b"event: ping\\ndata: {\\"a\\"")
>>> first + dec.feed(b": 1}\\n\\n: comment\\ndata: [DONE]\\n\\n")
[ServerSentEvent(event='ping', data='{"a": 1}', id=None, retry=None), \
ServerSentEvent(event='message', data='[DONE]', id=None, retry=None)]
>>> nd = NDJSONDecoder()
>>> nd.feed(b'{"n": 1}\\n{"n"') + nd.feed(b': 2}\\n')
[{'n': 1}, {'n': 2}]

An event the server did not terminate (the stream was cut in its middle) is discarded,
as the WHATWG rules say; :attr:`SSEDecoder.incomplete` tells it happened:

>>> cut = SSEDecoder()
>>> cut.feed(b'data: {"whole": 1}\\n\\ndata: {"ha'), cut.flush(), cut.incomplete
([ServerSentEvent(event='message', data='{"whole": 1}', id=None, retry=None)], [], True)

:class:`EventStream` is what :meth:`~headway.http.AsyncAPIClient.stream` returns: the
items of one streamed response (``mode``: bytes, lines, events, json or ndjson), an async
iterator and an async context manager that releases the connection when left.
A stream that ends badly raises :class:`~headway.errors.StreamError`:

* the connection broke off, or an ``error`` event (or a payload with an ``error``
  member) arrived;
* the body ended in the middle of an SSE event or an NDJSON line;
* with ``require_end=True`` (what :class:`~headway.http.Endpoint` asks for SSE), the
  body ended without its terminator: OpenAI's ``data: [DONE]`` or Anthropic's
  ``message_stop`` event.

A ``200 application/json`` answer to a stream request (LiteLLM and some gateways answer
so when they cannot stream) is delivered: in ``json``/``ndjson`` mode the parsed body is
the stream's one item (an error object in it raises :class:`~headway.errors.StreamError`),
in ``events`` mode one :class:`ServerSentEvent` carrying the body as its data.
"""

from __future__ import annotations

import json as _stdjson
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar

from headway import _json
from headway._resources import ClosesOnExit
from headway.errors import InvalidResponseError, StreamError
from headway.http.status import error_message
from headway.http.transports.base import StreamResponse

__all__ = [
    "DONE",
    "MESSAGE_STOP",
    "EventStream",
    "LineDecoder",
    "NDJSONDecoder",
    "SSEDecoder",
    "ServerSentEvent",
    "StreamMode",
]

#: The data of the event that ends an OpenAI-style stream.
DONE = "[DONE]"
#: The type of the event that ends an Anthropic stream.
MESSAGE_STOP = "message_stop"

T = TypeVar("T")
StreamMode = Literal["bytes", "lines", "events", "json", "ndjson"]


class LineDecoder:
    """Split a byte stream into lines on CR, LF or CRLF, across chunk boundaries.

    >>> d = LineDecoder()
    >>> d.feed(b"a\\r"), d.feed(b"\\nb\\rc"), d.flush()
    ([b'a'], [b'b'], [b'c'])
    """

    __slots__ = ("_partial", "_skip_lf")

    def __init__(self) -> None:
        self._partial: list[bytes] = []
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Take a chunk; return the lines it completed (without terminators)."""
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
            if not chunk:
                self._skip_lf = False
                return []
        # A CR at the end of a chunk ends a line now; an LF starting the next is its pair.
        self._skip_lf = chunk[-1:] == b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        last = lines.pop()
        if not lines:
            self._partial.append(last)
            return lines
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
            self._partial.clear()
        if last:
            self._partial.append(last)
        return lines

    def flush(self) -> list[bytes]:
        """End of stream: return the unterminated last line, if any."""
        self._skip_lf = False
        if not self._partial:
            return []
        line = b"".join(self._partial)
        self._partial.clear()
        return [line] if line else []


@dataclass(slots=True)
class ServerSentEvent:
    """One Server-Sent Event.

    Attributes:
        event: the event type (``"message"`` when the server gave none).
        data: the data lines joined with ``"\\n"``.
        id: the last event id seen on the stream, if any.
        retry: the reconnection time in milliseconds the server asked for, if any.
    """

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """The data parsed as JSON (``json.JSONDecodeError`` if it is not JSON)."""
        return _json.loads(self.data)


class SSEDecoder:
    """Frame Server-Sent Events (WHATWG rules) from raw chunks.

    Handles CR, LF and CRLF line ends, multi-line ``data``, comments (``:`` lines),
    ``event``, ``id`` and ``retry`` fields, a leading BOM, and lines of any length.
    An event not terminated by a blank line when the stream ends is discarded
    (:attr:`incomplete` is then ``True``).
    """

    __slots__ = ("_data", "_event", "_id", "_lines", "_retry", "_started", "incomplete")

    def __init__(self) -> None:
        self._lines = LineDecoder()
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._started = False
        #: Whether :meth:`flush` discarded an event cut off by the end of the stream.
        self.incomplete = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Take a chunk; return the events it completed."""
        if not self._started and chunk:
            self._started = True
            if chunk.startswith(b"\xef\xbb\xbf"):
                chunk = chunk[3:]
        events: list[ServerSentEvent] = []
        for line in self._lines.feed(chunk):
            self._line(line, events)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: discard an event the server did not terminate (WHATWG).

        Always returns ``[]`` (a list, like :meth:`feed`); sets :attr:`incomplete` when
        an unterminated event (or a partial line of one) was dropped.
        """
        events: list[ServerSentEvent] = []
        for line in self._lines.flush():
            self._line(line, events)
        self.incomplete = bool(self._data or self._event or events)
        self._data = []
        self._event = ""
        return []

    def _line(self, line: bytes, events: list[ServerSentEvent]) -> None:
        if not line:
            if self._data:
                events.append(
                    ServerSentEvent(
                        self._event or "message", "\n".join(self._data), self._id, self._retry
                    )
                )
                self._data = []
            self._event = ""
            return
        if line[0] == 58:  # b":" comment
            return
        name, sep, raw = line.partition(b":")
        if sep and raw[:1] == b" ":
            raw = raw[1:]
        if name == b"data":
            self._data.append(raw.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = raw.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in raw:
                self._id = raw.decode("utf-8", "replace")
        elif name == b"retry" and raw.isdigit():
            self._retry = int(raw)


class NDJSONDecoder:
    """Frame newline-delimited JSON (one document per line; blank lines skipped).

    A line that is not JSON raises :class:`json.JSONDecodeError`.
    """

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines = LineDecoder()

    def feed(self, chunk: bytes) -> list[Any]:
        """Take a chunk; return the documents it completed."""
        return [_json.loads(line) for line in self._lines.feed(chunk) if line.strip()]

    def flush(self) -> list[Any]:
        """End of stream: parse an unterminated last line (a whole document is kept)."""
        return [_json.loads(line) for line in self._lines.flush() if line.strip()]


class EventStream(ClosesOnExit, AsyncIterator[T]):
    """Items of a streamed response; an async iterator and an async context manager.

    Use ``async with`` when you may stop early, so the connection is released at once::

        async with client.stream("POST", "/chat", json=body) as events:
            async for event in events:
                ...
    """

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


def _stream_error(resp: StreamResponse, message: str, payload: Any = None) -> StreamError:
    return StreamError(
        message,
        status_code=resp.status,
        headers=resp.headers,
        body=payload,
        method=resp.method,
        url=resp.url,
    )


def _error_event(payload: Any, resp: StreamResponse, default: str) -> StreamError:
    detail = error_message(payload) or default
    return _stream_error(resp, f"error event in stream: {detail}", payload)


def _is_error_payload(payload: Any) -> bool:
    if not isinstance(payload, Mapping):
        return False
    return bool(payload.get("error")) or payload.get("type") == "error"


def _is_json_answer(resp: StreamResponse) -> bool:
    ctype = (resp.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    return ctype == "application/json"


async def iterate(
    resp: StreamResponse, mode: StreamMode, *, require_end: bool = False
) -> AsyncIterator[Any]:
    """Frame a streamed body as ``mode`` says (see the module's notes on endings)."""
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
    if _is_json_answer(resp):
        yield await _json_answer(resp, mode)
        return
    if mode == "ndjson":
        async for doc in _ndjson(resp):
            yield doc
        return
    sse = SSEDecoder()
    as_json = mode == "json"
    ended = False
    async for chunk in resp.aiter_bytes():
        for event in sse.feed(chunk):
            if event.data == DONE:
                return
            item = _event_item(event, resp, as_json)
            if item is not None:
                yield item
            if event.event == MESSAGE_STOP or (
                isinstance(item, Mapping) and item.get("type") == MESSAGE_STOP
            ):
                ended = True
    sse.flush()
    if sse.incomplete:
        raise _stream_error(resp, "the stream ended in the middle of an event (it was cut off)")
    if require_end and not ended:
        raise _stream_error(
            resp,
            "the stream ended without its end marker (no 'data: [DONE]' or 'message_stop' "
            "event): the answer may be incomplete",
        )


async def _json_answer(resp: StreamResponse, mode: StreamMode) -> Any:
    body = await resp.aread()
    if mode == "events":
        return ServerSentEvent(data=body.decode("utf-8", "replace"))
    message = "the stream request was answered with a JSON body that is not valid JSON"
    return _payload(body, resp, message, body[:2048])


async def _ndjson(resp: StreamResponse) -> AsyncIterator[Any]:
    nd = NDJSONDecoder()
    try:
        async for chunk in resp.aiter_bytes():
            for doc in nd.feed(chunk):
                if _is_error_payload(doc):
                    raise _error_event(doc, resp, "error")
                yield doc
    except _stdjson.JSONDecodeError as exc:
        detail = str(exc)
    else:
        try:
            last = nd.flush()
        except _stdjson.JSONDecodeError:
            raise _stream_error(
                resp, "the stream ended in the middle of a line (it was cut off)"
            ) from None
        for doc in last:
            if _is_error_payload(doc):
                raise _error_event(doc, resp, "error")
            yield doc
        return
    raise InvalidResponseError(
        f"a streamed line is not JSON ({detail})",
        status_code=resp.status,
        headers=resp.headers,
        method=resp.method,
        url=resp.url,
    )


def _event_item(event: ServerSentEvent, resp: StreamResponse, as_json: bool) -> Any:
    if event.event == "error":
        try:
            payload: Any = _json.loads(event.data)
        except ValueError:
            payload = event.data
        raise _error_event(payload, resp, event.data or "error")
    if not as_json:
        return event
    if not event.data:
        return None
    return _payload(event.data, resp, f"a streamed event is not JSON: {event.data[:200]!r}")


def _payload(
    text: str | bytes, resp: StreamResponse, invalid: str, body: bytes | None = None
) -> Any:
    """``text`` parsed as JSON; ``invalid`` is the error's message when it is not JSON, and
    an error payload raises its :class:`~headway.errors.StreamError`."""
    try:
        payload = _json.loads(text)
    except ValueError:
        raise InvalidResponseError(
            invalid,
            status_code=resp.status,
            headers=resp.headers,
            body=body,
            method=resp.method,
            url=resp.url,
        ) from None
    if _is_error_payload(payload):
        raise _error_event(payload, resp, "error")
    return payload
