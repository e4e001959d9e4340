"""Reading a batch input file: one API request per line, streamed.

Three line shapes are recognised, line by line (a file may mix them):

* OpenAI Batch: ``{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
  "body": {...}}``
* Anthropic Message Batches: ``{"custom_id": "a", "params": {...}}`` (sent to
  ``/v1/messages``)
* a bare request body: ``{"model": ..., "messages": [...]}``; its ``custom_id`` is its line
  number (``"1"`` for the first line) and it goes to the default endpoint path.

A line that is not JSON, not an object, or lacks what it needs becomes an
:class:`InvalidLine` naming its line number; it never stops the batch. Blank lines are
skipped. Files ending in ``.gz`` (or starting with the gzip magic bytes) are decompressed
on the fly. Nothing is held in memory but the current line.

>>> r = parse_line('{"custom_id": "a", "params": {"model": "m", "max_tokens": 5}}', 1)
>>> r.custom_id, r.url, r.body, r.kind
('a', '/v1/messages', {'model': 'm', 'max_tokens': 5}, 'anthropic')
>>> parse_line('{"model": "m"}', 7, default_url="/v1/chat/completions").custom_id
'7'
>>> parse_line('{oops', 3).message
'line 3: not valid JSON (Expecting property name enclosed in double quotes at column 2)'
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from headway._json import loads

__all__ = [
    "ANTHROPIC_URL",
    "DEFAULT_URL",
    "STDIO",
    "BatchRequest",
    "InvalidLine",
    "count_lines",
    "line_counts",
    "open_input",
    "parse_line",
    "read_requests",
]

#: Where a bare body goes when no endpoint path is configured.
DEFAULT_URL = "/v1/chat/completions"
#: Where an Anthropic batch line (``params``) goes.
ANTHROPIC_URL = "/v1/messages"

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

Kind = Literal["openai", "anthropic", "bare"]


@dataclass(slots=True)
class BatchRequest:
    """One request of a batch.

    Attributes:
        custom_id: the caller's id for the request (unique within a batch).
        line: its 1-based line number in the input file.
        method: the HTTP method (``POST`` unless the line says otherwise).
        url: the request path, e.g. ``/v1/chat/completions``.
        body: the JSON body to send.
        kind: which line shape it came from: ``openai``, ``anthropic`` or ``bare``.
        metadata: the line's own ``metadata`` (OpenAI Batch and Anthropic shapes), copied to
            its result line and never sent.
    """

    custom_id: str
    line: int
    method: str
    url: str
    body: dict[str, Any]
    kind: Kind
    metadata: Any = None


@dataclass(slots=True)
class InvalidLine:
    """A line that cannot be sent; it yields an ``invalid_request`` result.

    ``custom_id`` is the line's own id when it has a usable one, else its line number.
    """

    custom_id: str
    line: int
    message: str


def _invalid(custom_id: Any, line: int, why: str) -> InvalidLine:
    cid = custom_id if isinstance(custom_id, str) and custom_id else str(line)
    return InvalidLine(cid, line, f"line {line}: {why}")


def parse_line(
    text: str | bytes, line: int, *, default_url: str = DEFAULT_URL
) -> BatchRequest | InvalidLine:
    """Parse one input line (already known not to be blank) into a request.

    Args:
        text: the line, with or without its newline.
        line: its 1-based line number, used for the bare shape's id and in messages.
        default_url: the path a bare body is sent to.
    """
    try:
        obj = loads(text)
    except RecursionError:
        return _invalid(None, line, "not usable JSON (it nests too deeply)")
    except (ValueError, UnicodeDecodeError) as exc:
        return _invalid(None, line, _json_problem(text, exc))
    if not isinstance(obj, dict):
        return _invalid(None, line, f"expected a JSON object, got {type(obj).__name__}")
    if "custom_id" not in obj:
        return BatchRequest(str(line), line, "POST", default_url, obj, "bare")
    cid = obj["custom_id"]
    if not isinstance(cid, str) or not cid:
        return _invalid(None, line, "custom_id must be a non-empty string")
    if "params" in obj:
        params = obj["params"]
        if not isinstance(params, dict):
            return _invalid(cid, line, "params must be a JSON object")
        return BatchRequest(
            cid, line, "POST", ANTHROPIC_URL, params, "anthropic", obj.get("metadata")
        )
    if "body" not in obj:
        return _invalid(cid, line, 'has a custom_id but neither "body" nor "params"')
    body = obj["body"]
    if not isinstance(body, dict):
        return _invalid(cid, line, "body must be a JSON object")
    method = obj.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        return _invalid(cid, line, f"unsupported method {method!r}")
    url = obj.get("url", default_url)
    if not isinstance(url, str) or not url.startswith("/"):
        return _invalid(cid, line, f"url must be a path starting with '/', got {url!r}")
    return BatchRequest(cid, line, method.upper(), url, body, "openai", obj.get("metadata"))


def _json_problem(text: str | bytes, exc: ValueError) -> str:
    """Why a line is not JSON, in one plain phrase."""
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
    stripped = raw.strip(b"\x00\r\n\t ")
    if not stripped and b"\x00" in raw:
        return "only NUL bytes (a file padded by a crash or a broken copy?)"
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"not valid JSON (not UTF-8: byte 0x{raw[exc.start]:02x} at position {exc.start + 1})"
        )
    if isinstance(exc, json.JSONDecodeError):
        # Some messages already end in " at" ("Invalid control character at").
        why = exc.msg.removesuffix(" at")
        return f"not valid JSON ({why} at column {exc.colno})"
    return f"not valid JSON ({exc})"


#: The input or output name that means standard input or output.
STDIO = "-"


def open_input(path: str | os.PathLike[str]) -> BinaryIO:
    """Open an input file for reading, decompressing gzip (by magic bytes) on the fly.

    ``"-"`` is standard input (gzip is detected there too).
    """
    if os.fspath(path) == STDIO:
        stream = io.BufferedReader(_Unclosed(sys.stdin.buffer))
        if stream.peek(2)[:2] == b"\x1f\x8b":
            import gzip  # only for a compressed input (start-up)

            return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
        return stream
    with open(path, "rb") as probe:
        head = probe.read(2)
    if head == b"\x1f\x8b":
        import gzip

        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_requests(
    path: str | os.PathLike[str], *, default_url: str = DEFAULT_URL
) -> Iterator[BatchRequest | InvalidLine]:
    """Yield the requests of an input file in order, one line at a time.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "in.jsonl"
    >>> _ = p.write_text('{"model": "m"}\\n\\nnot json\\n')
    >>> [(r.custom_id, type(r).__name__) for r in read_requests(p)]
    [('1', 'BatchRequest'), ('3', 'InvalidLine')]
    """
    f = open_input(path)
    try:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            yield parse_line(raw, n, default_url=default_url)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        # A truncated or corrupt .gz: report it where the file stops making sense.
        raise OSError(f"cannot read {os.fspath(path)}: {exc}") from exc
    finally:
        f.close()


class _Unclosed(io.RawIOBase):
    """Standard input seen through a reader that does not close it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        read = getattr(self._raw, "read1", self._raw.read)
        data = read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def count_lines(path: str | os.PathLike[str]) -> int | None:
    """Count the lines of an input file quickly (for progress and ETA).

    Blank lines count too; the runner corrects its total at the end. Standard input
    (``"-"``) cannot be counted ahead: ``None``.
    """
    if os.fspath(path) == STDIO:
        return None
    with open_input(path) as f:
        return sum(line_counts(f))


def line_counts(f: BinaryIO) -> Iterator[int]:
    """The line count of an opened input (:func:`open_input`) in parts, one a chunk of
    1 MiB read; their sum is :func:`count_lines`. A caller can count between other work."""
    last = b"\n"
    try:
        while chunk := f.read(1 << 20):
            last = chunk[-1:]
            yield chunk.count(b"\n")
    except (OSError, EOFError):
        pass  # a corrupt .gz: the reader reports it where it breaks
    if last != b"\n":
        yield 1
