"""Incremental framers for streamed responses: lines, Server-Sent Events and NDJSON.

They take raw chunks as they arrive (any size, split anywhere, even inside a UTF-8
character or between ``\\r`` and ``\\n``) and return whole items. There is no line
length cap: a single 1 MiB event parses, in linear time.

>>> dec = SSEDecoder()
>>> first = dec.feed(b"event: ping\\ndata: {\\"a\\"")
>>> first + dec.feed(b": 1}\\n\\n: comment\\ndata: [DONE]\\n\\n")
[ServerSentEvent(event='ping', data='{"a": 1}', id=None, retry=None), \
ServerSentEvent(event='message', data='[DONE]', id=None, retry=None)]
>>> nd = NDJSONDecoder()
>>> nd.feed(b'{"n": 1}\\n{"n"') + nd.feed(b': 2}\\n')
[{'n': 1}, {'n': 2}]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headway import _json

__all__ = ["DONE", "LineDecoder", "NDJSONDecoder", "SSEDecoder", "ServerSentEvent"]

#: The data of the event that ends an OpenAI-style stream.
DONE = "[DONE]"


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
    """

    __slots__ = ("_data", "_event", "_id", "_lines", "_retry", "_started")

    def __init__(self) -> None:
        self._lines = LineDecoder()
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._started = False

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
        """End of stream: frame a last event the server did not terminate."""
        events: list[ServerSentEvent] = []
        for line in self._lines.flush():
            self._line(line, events)
        self._line(b"", events)
        return events

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
        """End of stream: parse an unterminated last line."""
        return [_json.loads(line) for line in self._lines.flush() if line.strip()]
