"""The result ledger: the output file is the batch's memory.

Each result is appended as one JSON line, in the OpenAI Batch output shape, and written
with a single ``write`` to a file opened in append mode the moment its request completes::

    {"id": "batch_req_...", "custom_id": "a",
     "response": {"status_code": 200, "request_id": "req_...", "body": {...}},
     "error": null}

A failed request has an ``error`` object (``code`` and ``message``); when the API answered,
``response`` holds its status and error body too, otherwise it is ``null``.

Opening a ledger reads what earlier runs wrote: the custom_ids found there are not sent
again (failed ones are, with ``retry_failed=True``; their old lines are then removed by an
atomic rewrite of the file). A torn last line, left by a crash in the middle of a write,
is detected and cut off. So whatever moment a run dies at, running it again leaves each
custom_id in the output exactly once.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
>>> with Ledger(out) as ledger:
...     ledger.write(Result.success("a", 200, {"ok": True}))
>>> with Ledger(out) as ledger:
...     ledger.skip
{'a'}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from headway.errors import APIClientError, error_code

__all__ = ["Ledger", "Result", "error_code", "result_from_error", "tokens_used"]


def tokens_used(body: Any) -> int:
    """Total tokens from a response body's ``usage`` (OpenAI or Anthropic shape), else 0.

    >>> tokens_used({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
    7
    >>> tokens_used({"usage": {"input_tokens": 3, "output_tokens": 4}})
    7
    """
    if not isinstance(body, dict):
        return 0
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    n = 0
    for key in ("input_tokens", "output_tokens", "prompt_tokens", "completion_tokens"):
        v = usage.get(key)
        if isinstance(v, int):
            n += v
    return n


def _new_id() -> str:
    return "batch_req_" + os.urandom(12).hex()


@dataclass(slots=True)
class Result:
    """The outcome of one request: what goes into the ledger, plus numbers for the summary.

    Only ``custom_id``, ``status_code``, ``request_id``, ``body`` and ``error`` are written;
    ``latency``, ``attempts`` and ``tokens`` feed the summary.
    """

    custom_id: str
    status_code: int | None = None
    request_id: str | None = None
    body: Any = None
    error: dict[str, str] | None = None
    latency: float = 0.0
    attempts: int = 1
    tokens: int = 0
    id: str = field(default_factory=_new_id)

    @property
    def ok(self) -> bool:
        """True for a success (no error)."""
        return self.error is None

    @property
    def code(self) -> str | None:
        """The error code, or ``None`` for a success."""
        return None if self.error is None else self.error.get("code")

    @classmethod
    def success(
        cls,
        custom_id: str,
        status_code: int,
        body: Any,
        *,
        request_id: str | None = None,
        latency: float = 0.0,
        attempts: int = 1,
    ) -> Result:
        """A successful result; its tokens are read from the body's ``usage``."""
        return cls(
            custom_id,
            status_code,
            request_id,
            body,
            None,
            latency,
            attempts,
            tokens_used(body),
        )

    @classmethod
    def failure(
        cls,
        custom_id: str,
        code: str,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        body: Any = None,
        latency: float = 0.0,
        attempts: int = 1,
    ) -> Result:
        """A failed result with an error ``code`` and a ``message``."""
        return cls(
            custom_id,
            status_code,
            request_id,
            body,
            {"code": code, "message": message},
            latency,
            attempts,
        )

    def to_record(self) -> dict[str, Any]:
        """The ledger line as a dict (OpenAI Batch output shape)."""
        response = (
            None
            if self.status_code is None
            else {"status_code": self.status_code, "request_id": self.request_id, "body": self.body}
        )
        return {
            "id": self.id,
            "custom_id": self.custom_id,
            "response": response,
            "error": self.error,
        }

    def to_line(self) -> bytes:
        """The ledger line, newline included."""
        text = json.dumps(self.to_record(), ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8") + b"\n"


def result_from_error(
    custom_id: str, exc: BaseException, *, latency: float = 0.0, attempts: int = 1
) -> Result:
    """A failed result for an exception raised while sending ``custom_id``."""
    if isinstance(exc, APIClientError):
        return Result.failure(
            custom_id,
            error_code(exc),
            exc.message,
            status_code=exc.status_code,
            request_id=exc.request_id,
            body=exc.body,
            latency=latency,
            attempts=attempts,
        )
    message = str(exc) or type(exc).__name__
    if error_code(exc) == "internal_error":
        message = f"{type(exc).__name__}: {message}"
    return Result.failure(custom_id, error_code(exc), message, latency=latency, attempts=attempts)


def _is_success(record: Any) -> bool:
    return isinstance(record, dict) and record.get("error") is None


@dataclass(slots=True)
class _Scan:
    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _scan(path: str, scan: _Scan) -> None:
    """Read one ledger file: collect ids; cut a torn last line; note corrupt lines."""
    try:
        f = open(path, "rb+")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    with f:
        offset = 0
        last_start = 0
        last_raw = b""
        bad_lines: list[int] = []
        n = 0
        for raw in f:
            n += 1
            last_start, last_raw = offset, raw
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                cid = record["custom_id"]
                if not isinstance(cid, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                bad_lines.append(n)
                continue
            if _is_success(record):
                scan.succeeded.add(cid)
                scan.failed.discard(cid)
            elif cid not in scan.succeeded:
                scan.failed.add(cid)
        if last_raw and not last_raw.endswith(b"\n"):
            # A crash in the middle of a write: the last line is cut short (or whole but
            # without its newline). Cut it off; that request is sent again.
            if bad_lines and bad_lines[-1] == n:
                bad_lines.pop()
                f.truncate(last_start)
                scan.notes.append(
                    f"{path}: repaired a torn last line (line {n}, {len(last_raw)} bytes cut)"
                )
            else:  # a whole record that lost only its newline: give it back
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
                scan.notes.append(f"{path}: added the missing newline after line {n}")
        if bad_lines:
            shown = ", ".join(map(str, bad_lines[:5]))
            more = f" and {len(bad_lines) - 5} more" if len(bad_lines) > 5 else ""
            scan.notes.append(f"{path}: ignored unreadable line(s) {shown}{more}")


def _rewrite_without_failures(path: str) -> int:
    """Atomically rewrite ``path`` keeping only success lines; return lines removed."""
    if not os.path.exists(path):
        return 0
    tmp = f"{path}.headway-tmp"
    removed = 0
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        for raw in src:
            try:
                record = json.loads(raw)
            except ValueError:
                removed += 1
                continue
            if _is_success(record):
                dst.write(raw)
            else:
                removed += 1
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, path)
    return removed


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Ledger:
    """Append-only result files with resume.

    Args:
        output: the results file (all results, or only successes when ``errors`` is given).
        errors: an optional separate file for failed results.
        retry_failed: send again the requests whose earlier result is a failure.
        fsync: also ``fsync`` after each write (survives power loss, not only a crash).

    After :meth:`open` (or entering the context), :attr:`skip` holds the custom_ids that
    must not be sent again, :attr:`succeeded_before` / :attr:`failed_before` count them,
    and :attr:`notes` says what was repaired.
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        errors: str | os.PathLike[str] | None = None,
        *,
        retry_failed: bool = False,
        fsync: bool = False,
    ) -> None:
        self.output = os.fspath(output)
        self.errors = None if errors is None else os.fspath(errors)
        if self.errors is not None and os.path.abspath(self.errors) == os.path.abspath(self.output):
            self.errors = None
        self.retry_failed = retry_failed
        self.fsync = fsync
        self.skip: set[str] = set()
        self.succeeded_before = 0
        self.failed_before = 0
        self.notes: list[str] = []
        self._out_fd: int | None = None
        self._err_fd: int | None = None

    def open(self) -> Self:
        """Read earlier results, repair, and open the files for appending."""
        scan = _Scan()
        paths = [self.output] if self.errors is None else [self.output, self.errors]
        for path in paths:
            _scan(path, scan)
        self.notes = scan.notes
        self.succeeded_before = len(scan.succeeded)
        if self.retry_failed:
            removed = sum(_rewrite_without_failures(p) for p in paths)
            if removed:
                self.notes.append(f"removed {removed} failed result(s) to retry them")
            self.failed_before = 0
            self.skip = scan.succeeded
        else:
            self.failed_before = len(scan.failed)
            self.skip = scan.succeeded | scan.failed
        for path in paths:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
        self._out_fd = _open_append(self.output)
        if self.errors is not None:
            self._err_fd = _open_append(self.errors)
        return self

    def write(self, result: Result) -> None:
        """Append ``result`` as one line with one write (and fsync if asked)."""
        fd = self._out_fd if result.ok or self._err_fd is None else self._err_fd
        if fd is None:
            raise RuntimeError("the ledger is not open")
        _write_all(fd, result.to_line())
        if self.fsync:
            os.fsync(fd)

    def close(self) -> None:
        """Close the files (idempotent)."""
        for name in ("_out_fd", "_err_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
