"""Result lines in the shape the provider's own Batch API returns them.

Two shapes, chosen per line (``headway run --output-format``):

* **OpenAI Batch** (``{"id", "custom_id", "response", "error"}``), for OpenAI Batch and bare
  input lines. As in OpenAI's output and error files, ``error`` is only for requests that
  failed *without* an HTTP answer (a timeout, a reset, an invalid input line); when the
  server answered, even with a 4xx or 5xx, ``error`` is ``null`` and ``response`` holds the
  status code and the body.
* **Anthropic Message Batches** (``{"custom_id", "result": {"type": "succeeded", "message":
  {...}}}`` or ``{"type": "errored", "error": {"type": "error", "error": {"type", "message"}}}``),
  for Anthropic batch input lines (``params``).

A line's top-level ``metadata`` (never sent) is copied to its result line.

>>> from headway.batch.ledger import Result
>>> r = Result.failure("a", "bad_request", "HTTP 400", status_code=400, body={"error": {}})
>>> rec = result_record(r)
>>> rec["error"], rec["response"]["status_code"], is_success(rec)
(None, 400, False)
>>> r.shape = "anthropic"
>>> rec = result_record(r)
>>> rec["result"]["type"], rec["result"]["error"]["error"]["type"], is_success(rec)
('errored', 'invalid_request_error', False)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from headway._idset import Digests, IdSet

if TYPE_CHECKING:
    from headway.batch.ledger import Result

__all__ = ["OutputFormat", "Shape", "StreamLedger", "is_success", "result_record", "shape_for"]

#: The shape of one result line.
Shape = Literal["openai", "anthropic"]
#: ``--output-format``: ``auto`` follows each input line's shape.
OutputFormat = Literal["auto", "openai", "anthropic"]

#: Anthropic's error ``type`` for headway's error codes (and statuses).
_ANTHROPIC_TYPES = {
    "bad_request": "invalid_request_error",
    "invalid_request": "invalid_request_error",
    "authentication_error": "authentication_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit_exceeded": "rate_limit_error",
    "insufficient_quota": "billing_error",
    "timeout": "timeout_error",
    "server_error": "api_error",
}
_STATUS_TYPES = {403: "permission_error", 413: "request_too_large", 529: "overloaded_error"}


def shape_for(kind: str, output_format: str) -> Shape:
    """The result shape for an input line of ``kind`` under ``--output-format``.

    >>> shape_for("anthropic", "auto"), shape_for("anthropic", "openai"), shape_for("bare", "auto")
    ('anthropic', 'openai', 'openai')
    """
    if output_format == "auto":
        return "anthropic" if kind == "anthropic" else "openai"
    return "anthropic" if output_format == "anthropic" else "openai"


def _openai(result: Result) -> dict[str, Any]:
    if result.status_code is None:
        response = None
        error = result.error
    else:
        response = {
            "status_code": result.status_code,
            "request_id": result.request_id,
            "body": result.body,
        }
        # OpenAI's rule: an HTTP error answer is in `response`, with `error: null`. A 2xx
        # that still failed (its body could not be used or recorded) keeps its error, so
        # that it never reads back as a success.
        error = result.error if 200 <= result.status_code < 300 else None
    return {"id": result.id, "custom_id": result.custom_id, "response": response, "error": error}


def _anthropic_error(result: Result) -> dict[str, Any]:
    body = result.body
    if (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
    ):
        return body  # the server's own Anthropic error
    error = result.error or {}
    code = error.get("code", "api_error")
    kind = _STATUS_TYPES.get(result.status_code or 0) or _ANTHROPIC_TYPES.get(code, "api_error")
    out: dict[str, Any] = {
        "type": "error",
        "error": {"type": kind, "message": error.get("message", code)},
    }
    if result.request_id is not None:
        out["request_id"] = result.request_id
    return out


#: Error codes that the Message Batches API reports as result types of their own.
_ANTHROPIC_RESULT_TYPES = {"canceled": "canceled", "expired": "expired"}


def _anthropic(result: Result) -> dict[str, Any]:
    error = result.error
    if error is None:
        inner: dict[str, Any] = {"type": "succeeded", "message": result.body}
    elif error.get("code") in _ANTHROPIC_RESULT_TYPES:  # as the API writes them: no error
        inner = {"type": _ANTHROPIC_RESULT_TYPES[error["code"]]}
    else:
        inner = {"type": "errored", "error": _anthropic_error(result)}
    return {"custom_id": result.custom_id, "result": inner}


def result_record(result: Result) -> dict[str, Any]:
    """The result line of ``result`` as a dict, in its :attr:`~Result.shape`."""
    record = _anthropic(result) if result.shape == "anthropic" else _openai(result)
    if result.metadata is not None:
        record["metadata"] = result.metadata
    return record


def is_success(record: Any) -> bool:
    """Whether a result line read back from a file records a success (either shape).

    Lines written by earlier headway versions (an ``error`` object next to a 4xx
    ``response``) read the same way.

    >>> is_success({"custom_id": "a", "response": {"status_code": 200}, "error": None})
    True
    >>> is_success({"custom_id": "a", "response": {"status_code": 404}, "error": None})
    False
    >>> is_success({"custom_id": "a", "result": {"type": "errored"}})
    False
    """
    if not isinstance(record, dict):
        return False
    result = record.get("result")
    if isinstance(result, dict):
        return result.get("type") == "succeeded"
    if record.get("error") is not None:
        return False
    response = record.get("response")
    if isinstance(response, dict):
        status = response.get("status_code")
        return not isinstance(status, int) or 200 <= status < 300
    return True


class StreamLedger:
    """Results written to a stream (``headway run -o -``): no resume.

    A pipe cannot be read back, so nothing is skipped: every line of the input is sent.
    With ``errors``, failed results go to that file instead (appended). Lines are
    buffered (see :class:`~headway.batch.ledger.LineBuffer`) and written whole by
    :meth:`flush`, which the runner calls every few milliseconds.

    When the reader goes away (``headway run -o - | head``), the write fails with
    ``BrokenPipeError``: :attr:`broken` is set, the error propagates once (the runner
    stops sending), and every later line is dropped: nobody is left to read it.
    """

    def __init__(
        self,
        stream: Any,
        errors: str | None = None,
        mask: Callable[[bytes], bytes] | None = None,
    ) -> None:
        from headway.batch.ledger import LineBuffer

        # Straight to the file descriptor when there is one.
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None
        self.stream = stream
        self.errors = errors
        self.mask = mask  # replaces known secret values in each line written
        self.output: str | None = None  # nothing to read back: no resume, no same-file check
        self.digests = Digests()  # none: a stream is not read back
        self.written = 0
        self.skip = IdSet()  # nothing to skip: a stream is not read back
        self.notes: list[str] = []
        self.succeeded_before = 0
        self.failed_before = 0
        self.broken = False
        self.buffer = LineBuffer()
        self._err_fd: int | None = None

    def open(self) -> StreamLedger:
        """Open the errors file, if any."""
        if self.errors is not None:
            self._err_fd = os.open(self.errors, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def write(self, result: Result) -> Result:
        """Write ``result`` as one line; returns it as written (see :meth:`Ledger.write`)."""
        result, line = result.encoded()
        if self.mask is not None:
            masked = self.mask(line)
            if masked != line:
                from headway.batch.ledger import mask_error

                mask_error(result, self.mask)
            line = masked
        fd = self.fd if result.ok or self._err_fd is None else self._err_fd
        if fd is None:
            if not self.broken:
                try:
                    self.stream.write(line)
                    self.stream.flush()
                except BrokenPipeError:
                    self.broken = True
                    raise
                self.written += 1
            return result
        if fd == self.fd and self.broken:
            return result  # the reader is gone
        if self.buffer.add(fd, line, result):
            self.flush()
        return result

    def flush(self) -> None:
        """Write the buffered lines; a closed pipe raises ``BrokenPipeError`` once."""
        buffer = self.buffer
        if self.broken and self.fd is not None:
            buffer.drop(self.fd)
        before = buffer.written
        try:
            buffer.flush()
        except BrokenPipeError:
            self.broken = True
            raise
        finally:
            self.written += buffer.written - before

    def close(self) -> None:
        """Write what is buffered, close the errors file (idempotent); the stream stays open.

        A pipe closed by now only sets :attr:`broken`: the run is over anyway.
        """
        try:
            self.flush()
        except BrokenPipeError:
            pass
        finally:
            self._close_errors()

    def _close_errors(self) -> None:
        if self._err_fd is not None:
            fd, self._err_fd = self._err_fd, None
            os.close(fd)
