"""The result ledger: the output file is the batch's memory.

Each result is appended as one JSON line, in the OpenAI Batch output shape, to a file
opened in append mode: with one ``write`` the moment its request completes, or (``buffered``,
as :class:`~headway.batch.BatchRunner` does) with the other lines of the last few
milliseconds in one ``write`` of whole lines::

    {"id": "batch_req_...", "custom_id": "a",
     "response": {"status_code": 200, "request_id": "req_...", "body": {...}},
     "error": null}

A failed request has an ``error`` object (``code`` and ``message``); when the API answered,
``response`` holds its status and error body too, otherwise it is ``null``.

Opening a ledger reads what earlier runs wrote: the custom_ids found there are not sent
again (failed ones are, with ``retry_failed=True``; their old lines are then removed by an
atomic rewrite of the file). A torn last line, left by a crash in the middle of a write,
is detected and cut off. So whatever moment a run dies at, running it again leaves each
custom_id in the output exactly once. (A buffered line not yet written when the process is
killed is not in the file: its request is sent again, like one still in flight.)

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
>>> with Ledger(out) as ledger:
...     _ = ledger.write(Result.success("a", 200, {"ok": True}))
>>> with Ledger(out) as ledger:
...     "a" in ledger.skip, len(ledger.skip)
(True, 1)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from random import getrandbits as _getrandbits
from typing import Any, Self

import orjson

from headway._idset import Digests, IdSet
from headway._json import dumps
from headway.batch.output import is_success, result_record
from headway.errors import APIClientError, error_code
from headway.http.tokens import TokenUsage, usage_split, usage_tokens

__all__ = [
    "FLUSH_BYTES",
    "Ledger",
    "LineBuffer",
    "Result",
    "error_code",
    "is_disk_full",
    "mask_error",
    "mask_secrets",
    "request_digest",
    "result_from_error",
    "tokens_used",
]


def tokens_used(body: Any) -> int:
    """Total tokens from a response body's ``usage`` (OpenAI or Anthropic shape), else 0.

    >>> tokens_used({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
    7
    >>> tokens_used({"usage": {"input_tokens": 3, "output_tokens": 4}})
    7
    """
    return usage_tokens(body) or 0  # the limiter's own counter


def _new_id() -> str:
    # 96 random bits, as before, from the process's generator (seeded from os.urandom)
    # rather than a system call per result.
    return f"batch_req_{_getrandbits(96):024x}"


def request_digest(method: str, url: str, body: Any, target: str = "") -> str | None:
    """A short digest of what a request asks (``target``: the server it goes to).

    A result line records it, so that a resume can tell whether the input line with the
    same custom_id still asks the same thing of the same server. ``None`` when the body
    cannot be encoded.

    >>> request_digest("POST", "/v1/x", {"b": 1, "a": 2}) == request_digest(
    ...     "POST", "/v1/x", {"a": 2, "b": 1})
    True
    >>> request_digest("POST", "/v1/x", {}, "http://a") == request_digest("POST", "/v1/x", {})
    False
    """
    h = hashlib.blake2b(f"{target}\n{method} {url}\n".encode(), digest_size=12)
    try:
        h.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    except (orjson.JSONEncodeError, TypeError):  # beyond orjson: big ints, deep nesting
        try:
            text = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            h.update(text.encode("utf-8", "surrogatepass"))
        except (RecursionError, ValueError, TypeError):
            return None
    return h.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` that means no space is left (ENOSPC, EDQUOT, EFBIG).

    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    True
    """
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(slots=True)
class Result:
    """The outcome of one request: what goes into the ledger, plus numbers for the summary.

    Only ``custom_id``, ``status_code``, ``request_id``, ``body`` and ``error`` are written;
    ``latency``, ``attempts``, ``tokens`` and ``waited`` (seconds waiting for the limit)
    feed the summary. ``digest`` (see
    :func:`request_digest`) is written as ``request_digest`` when set; a resume checks it.
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
    digest: str | None = None
    shape: str = "openai"  # the line's shape: "openai" or "anthropic" (headway.batch.output)
    metadata: Any = None  # the input line's metadata, copied to the result line
    waited: float = 0.0
    usage: TokenUsage | None = None  # the body's usage, split (read once, for the summary)

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
        usage = usage_split(body)  # once: the summary reads it from the result
        total = 0 if usage is None else usage.total
        return cls(
            custom_id, status_code, request_id, body, None, latency, attempts, total, usage=usage
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
        error = {"code": code, "message": message}
        return cls(custom_id, status_code, request_id, body, error, latency, attempts)

    def to_record(self) -> dict[str, Any]:
        """The ledger line as a dict (see :mod:`headway.batch.output` for its shapes)."""
        record = result_record(self)
        if self.digest is not None:
            record["request_digest"] = self.digest
        return record

    def to_line(self) -> bytes:
        """The ledger line, newline included.

        Raises:
            RecursionError: the body nests too deeply to encode.
            ValueError: the body holds what JSON cannot encode (a lone surrogate...).
        """
        return dumps(self.to_record()) + b"\n"

    def safe_line(self) -> bytes:
        """:meth:`to_line`, or when the answer cannot be encoded, the :meth:`unwritable` one.

        >>> deep: Any = []
        >>> for _ in range(100_000):
        ...     deep = [deep]
        >>> b"invalid_response" in Result.success("a", 200, deep).safe_line()
        True
        """
        return self.encoded()[1]

    def encoded(self) -> tuple[Result, bytes]:
        """The result as written and its line: itself, or its :meth:`unwritable` form."""
        try:
            return self, self.to_line()
        except (RecursionError, ValueError, TypeError) as exc:
            written = self.unwritable(exc)
            return written, written.to_line()

    def unwritable(self, exc: BaseException) -> Result:
        """The failed result recorded for an answer that cannot be written as JSON.

        A 200 whose body nests a thousand levels parses but cannot be written back: its
        request gets an ``invalid_response`` result instead of ending the run.
        """
        why = "nests too deeply" if isinstance(exc, RecursionError) else f"is not JSON ({exc})"
        return Result(
            self.custom_id,
            self.status_code,
            self.request_id,
            None,
            {"code": "invalid_response", "message": f"the answer cannot be recorded: it {why}"},
            self.latency,
            self.attempts,
            id=self.id,
            digest=self.digest,
            waited=self.waited,
        )


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
    return is_success(record)


class _Scan:
    __slots__ = ("bad", "digests", "failed", "ids", "notes", "read_digests", "succeeded")

    def __init__(self, dir: str | None, *, digests: bool = True) -> None:
        self.ids = IdSet(dir=dir)  # every custom_id with a result
        self.failed = IdSet(dir=dir)  # those with no success line (so far)
        self.succeeded = 0  # ids with a success line
        self.notes: list[str] = []
        self.digests = Digests(dir)
        self.read_digests = digests
        self.bad = 0

    def close(self) -> None:
        self.ids.close()
        self.failed.close()
        self.digests.close()


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
            except (ValueError, KeyError, TypeError, RecursionError):
                bad_lines.append(n)
                continue
            if scan.read_digests:
                digest = record.get("request_digest")
                scan.digests.add(cid, digest if isinstance(digest, str) else None)
            if cid not in scan.ids:
                scan.ids.add(cid)
                if _is_success(record):
                    scan.succeeded += 1
                else:
                    scan.failed.add(cid)
            elif cid in scan.failed and _is_success(record):  # a repeat: success wins
                scan.failed.discard(cid)
                scan.succeeded += 1
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
        scan.bad += len(bad_lines)
        if bad_lines:
            shown = ", ".join(map(str, bad_lines[:5]))
            more = f" and {len(bad_lines) - 5} more" if len(bad_lines) > 5 else ""
            scan.notes.append(f"{path}: ignored unreadable line(s) {shown}{more}")


def _rewrite_without_failures(path: str, on_removed: Callable[[Any], None]) -> int:
    """Atomically rewrite ``path`` keeping only success lines; return lines removed.

    ``on_removed`` is called with each removed record that could be read. The temporary
    file is removed whatever happens (a full disk included).
    """
    if not os.path.exists(path):
        return 0
    tmp = f"{path}.headway-tmp"
    removed = 0
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            for raw in src:
                try:
                    record = json.loads(raw)
                except (ValueError, RecursionError):
                    removed += 1
                    continue
                if _is_success(record):
                    dst.write(raw)
                else:
                    removed += 1
                    on_removed(record)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return removed


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _write_all(fd: int, data: bytes, lines: list[bytes] | None = None) -> None:
    """Write ``data`` (one line, or the ``lines`` joined) whole, or leave no part of a line.

    With ``lines``, a failure part way raises :class:`_PartialWrite` saying how many
    whole lines were written (they stay); without, the ``OSError`` itself.
    """
    view = memoryview(data)
    written = 0
    try:
        while view:
            n = os.write(fd, view)
            written += n
            view = view[n:]
    except OSError as exc:
        kept = kept_bytes = 0
        for line in lines or ():
            if kept_bytes + len(line) > written:
                break
            kept_bytes += len(line)
            kept += 1
        if written > kept_bytes:  # part of a line (disk full): take it back
            with contextlib.suppress(OSError):  # else the next open cuts the torn line
                os.ftruncate(fd, os.fstat(fd).st_size - (written - kept_bytes))
        if lines is not None:
            raise _PartialWrite(exc, kept) from exc
        raise


#: A buffer this large is written at once, without waiting for the next flush.
FLUSH_BYTES = 256 * 1024


class LineBuffer:
    """Whole result lines waiting to be written, by file descriptor.

    :meth:`flush` writes each file's lines with one ``write`` (and ``fsync`` if asked).
    When that fails part way (a full disk), the whole lines that made it stay and the
    part of a line after them is taken back, so a file never holds part of a line; the
    lines not written are dropped (their requests have no result, so a resume sends them
    again) and the ``OSError`` propagates. :attr:`written` counts the lines written;
    :attr:`on_written`, when set, is called with each line's result once it is written
    (what a summary counts).
    """

    __slots__ = ("fsync", "lines", "on_written", "results", "size", "written")

    def __init__(self, fsync: bool = False) -> None:
        self.fsync = fsync
        self.lines: dict[int, list[bytes]] = {}
        self.results: dict[int, list[Result]] = {}
        self.size = 0
        self.written = 0
        self.on_written: Callable[[Result], None] | None = None

    def add(self, fd: int, line: bytes, result: Result) -> bool:
        """Keep ``line`` for ``fd``; ``True`` when the buffer is full (flush it now)."""
        lines = self.lines.get(fd)
        if lines is None:
            self.lines[fd] = [line]
            self.results[fd] = [result]
        else:
            lines.append(line)
            self.results[fd].append(result)
        self.size += len(line)
        return self.size >= FLUSH_BYTES

    def drop(self, fd: int) -> None:
        """Forget the lines kept for ``fd`` (its reader is gone)."""
        if self.lines.pop(fd, None) is not None:
            self.size = sum(map(len, (line for lines in self.lines.values() for line in lines)))
            self.results.pop(fd, None)

    def flush(self) -> None:
        """Write every buffered line."""
        pending, results = self.lines, self.results
        if not pending:
            return
        self.lines, self.results = {}, {}
        self.size = 0
        failure: OSError | None = None
        on_written = self.on_written
        for fd, lines in pending.items():
            kept = len(lines)
            try:
                _write_all(fd, lines[0] if kept == 1 else b"".join(lines), lines)
                if self.fsync:
                    os.fsync(fd)
            except _PartialWrite as exc:  # the other file's lines are still written
                kept = exc.kept
                failure = failure or exc.error
            self.written += kept
            if on_written is not None:
                for result in results[fd][:kept]:
                    on_written(result)
        if failure is not None:
            raise failure


class _PartialWrite(Exception):
    """A write of several lines failed after ``kept`` of them were written whole."""

    def __init__(self, error: OSError, kept: int) -> None:
        super().__init__(error)
        self.error = error
        self.kept = kept


def mask_error(result: Result, mask: Callable[[bytes], bytes]) -> None:
    """Mask known secrets in ``result``'s error message (what displays and summaries show)."""
    error = result.error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = mask(error["message"].encode()).decode("utf-8", "replace")
        result.error = {**error, "message": message}


def mask_secrets(secrets: Iterable[str]) -> Callable[[bytes], bytes]:
    """A function that replaces the known ``secrets`` (8+ characters) in bytes with ``***``."""
    return _Masker(secrets)


class _Masker:
    """Replaces known secret values in bytes with ``***`` (values of 8+ characters)."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = [s.encode() for s in dict.fromkeys(secrets) if s and len(s) >= 8]

    def __call__(self, data: bytes) -> bytes:
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, b"***")
        return data


class Ledger:
    """Append-only result files with resume.

    Args:
        output: the results file (all results, or only successes when ``errors`` is given).
        errors: an optional separate file for failed results.
        retry_failed: send again the requests whose earlier result is a failure.
        fsync: also ``fsync`` after each write (survives power loss, not only a crash).
        secrets: values (API keys) masked as ``***`` wherever they appear in a line
            written, e.g. a server that echoes the key in its 401 body.
        buffered: keep lines in memory until :meth:`flush` (or :data:`FLUSH_BYTES` of
            them, or :meth:`close`), then write them with one ``write`` per file. The
            owner flushes every few milliseconds; a line is only ever written whole.
        digests: read back what each earlier result answered into :attr:`digests`, for
            a resume's check (``False``: an owner that does not check leaves it empty).

    After :meth:`open` (or entering the context), :attr:`skip` holds the custom_ids that
    must not be sent again, :attr:`succeeded_before` / :attr:`failed_before` count them,
    and :attr:`notes` says what was repaired. :attr:`skip` is an
    :class:`~headway._idset.IdSet`: past a million ids it moves to a temporary SQLite
    file beside the output, so memory stays bounded; :meth:`close` drops it.
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        errors: str | os.PathLike[str] | None = None,
        *,
        retry_failed: bool = False,
        fsync: bool = False,
        secrets: Iterable[str] = (),
        buffered: bool = False,
        digests: bool = True,
    ) -> None:
        self.output = os.fspath(output)
        self.errors = None if errors is None else os.fspath(errors)
        if self.errors is not None and os.path.abspath(self.errors) == os.path.abspath(self.output):
            self.errors = None
        self.retry_failed = retry_failed
        self.fsync = fsync
        self.skip = IdSet()
        self.succeeded_before = 0
        self.failed_before = 0
        self.notes: list[str] = []
        #: what the earlier results answered, checked by a resume (then closed)
        self.digests = Digests()
        self.read_digests = digests
        self.written = 0
        self.mask = _Masker(secrets)
        self.buffer = LineBuffer(fsync) if buffered else None
        self._out_fd: int | None = None
        self._err_fd: int | None = None

    def open(self) -> Self:
        """Read earlier results, repair, and open the files for appending."""
        scan = _Scan(self.scratch_dir, digests=self.read_digests)
        paths = [self.output] if self.errors is None else [self.output, self.errors]
        try:
            for path in paths:
                _scan(path, scan)
        except BaseException:
            scan.close()
            raise
        self.notes = scan.notes
        self.digests.close()
        self.digests = scan.digests
        self.succeeded_before = scan.succeeded
        failed = scan.failed
        self.skip.close()
        self.skip = scan.ids
        self.failed_before = 0 if self.retry_failed else len(failed)
        try:
            if self.retry_failed:
                removed = 0
                if failed or scan.bad:  # nothing to remove: no rewrite
                    skip = self.skip

                    def forget(record: Any) -> None:  # a failed id is sent again
                        cid = record.get("custom_id") if isinstance(record, dict) else None
                        if isinstance(cid, str) and cid in failed:
                            skip.discard(cid)

                    removed = sum(_rewrite_without_failures(p, forget) for p in paths)
                if removed:
                    self.notes.append(f"removed {removed} failed result(s) to retry them")
            for path in paths:
                parent = os.path.dirname(os.path.abspath(path))
                os.makedirs(parent, exist_ok=True)
            self._out_fd = _open_append(self.output)
            if self.errors is not None:
                self._err_fd = _open_append(self.errors)
        except BaseException:
            self.close()  # the files opened so far and the ids
            raise
        finally:
            failed.close()
        return self

    @property
    def scratch_dir(self) -> str:
        """Where sets of custom_ids too large for memory go: beside the output."""
        return os.path.dirname(os.path.abspath(self.output))

    def done_ids(self) -> Iterator[str]:
        """The custom_ids in :attr:`skip`, read back from the result files (after :meth:`open`).

        An id may come more than once when a file holds it more than once.
        """
        paths = [self.output] if self.errors is None else [self.output, self.errors]
        skip = self.skip
        for path in paths:
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                for raw in f:
                    try:
                        cid = orjson.loads(raw)["custom_id"]
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue
                    if isinstance(cid, str) and cid in skip:
                        yield cid

    def write(self, result: Result) -> Result:
        """Append ``result`` as one line with one write (and fsync if asked).

        An answer that cannot be encoded is written as an ``invalid_response`` failure
        (see :meth:`Result.safe_line`); known secrets are masked. An ``OSError`` (a full
        disk) leaves no partial line behind and propagates. Returns the result as written.
        Buffered, the line goes to the buffer (an ``OSError`` comes from the write of
        the buffer this line fills up, or from :meth:`flush`).
        """
        result, line = result.encoded()
        fd = self._out_fd if result.ok or self._err_fd is None else self._err_fd
        if fd is None:
            raise RuntimeError("the ledger is not open")
        if self.mask.secrets:
            masked = self.mask(line)
            if masked != line:  # the answer echoed a key: the result shown must not carry it
                mask_error(result, self.mask)
            line = masked
        buffer = self.buffer
        if buffer is not None:
            if buffer.add(fd, line, result):
                self.flush()
            return result
        _write_all(fd, line)
        self.written += 1
        if self.fsync:
            os.fsync(fd)
        return result

    def flush(self) -> None:
        """Write the buffered lines (nothing to do unbuffered); see :class:`LineBuffer`."""
        buffer = self.buffer
        if buffer is not None:
            before = buffer.written
            try:
                buffer.flush()
            finally:
                self.written += buffer.written - before

    def close(self) -> None:
        """Write what is buffered, then close the files and :attr:`skip` (idempotent)."""
        try:
            self.flush()
        finally:
            self.skip.close()
            self.digests.close()
            for name in ("_out_fd", "_err_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    setattr(self, name, None)
                    os.close(fd)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
