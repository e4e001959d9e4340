"""FakeAPI's Batch APIs: OpenAI's Files + Batches and Anthropic's Message Batches.

Every :class:`~headway.testing.FakeAPI` serves them (``api.batches`` is the
:class:`FakeBatches` behind the routes):

* OpenAI: ``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files``,
  ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``,
  ``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``,
  ``POST /v1/batches/{id}/cancel``;
* Anthropic: ``POST /v1/messages/batches``, ``GET /v1/messages/batches``,
  ``GET /v1/messages/batches/{id}``, ``POST /v1/messages/batches/{id}/cancel``,
  ``GET /v1/messages/batches/{id}/results``.

A batch's state is a function of the server's clock, so in virtual time a day-long
batch takes no real time: it is ``validating`` for :attr:`BatchTiming.validating`
seconds, then ``in_progress`` while its lines finish one after the other, evenly spread
over :attr:`BatchTiming.processing` seconds (``request_counts`` grows as they do), then
``finalizing`` for :attr:`BatchTiming.finalizing` seconds, then ``completed`` with an
output file (and an error file when some lines failed). Lines not done at the
completion window's end expire (``batch_expired`` lines in the error file, status
``expired``); a cancelled batch keeps what was done and cancels the rest
(``batch_cancelled``). Each line is answered by the same code as the online routes (a
body the online route rejects gets a 400 line); :attr:`FakeBatches.fail` makes chosen
custom_ids fail with a 500. The enqueued-token limit is answered as OpenAI does: the
batch is created, then fails validation with ``token_limit_exceeded``; Anthropic's
queue limit answers ``429`` at creation. Faults and chaos apply to these routes like to
any other (``api.script("POST", "/v1/files", [503, "reset"])``). A create played a
:meth:`~headway.testing.faults.Fault.lost` or :meth:`~headway.testing.faults.Fault.late`
fault makes its batch and loses (or delays) the answer; with ``listed_after`` the batch
shows in the listings only that many seconds later. :attr:`FakeBatches.clock_skew`
moves every timestamp the server reports (a server clock ahead of or behind the
client's).

>>> FakeBatches.openai_line_error("a", "batch_expired")["error"]["code"]
'batch_expired'
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from headway.testing import _fake_content as content

if TYPE_CHECKING:
    from headway.testing.fake_api import FakeAPI

__all__ = ["BatchTiming", "FakeBatches", "install_batches"]

#: OpenAI's per-file limits and the endpoints its Batch API serves.
OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
BATCH_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)

_EXPIRED_MSG = "This request could not be executed before the completion window expired."
_CANCELLED_MSG = "This request was not executed because the batch was cancelled."


@dataclass(slots=True)
class BatchTiming:
    """How long a fake batch spends in each state, in (loop clock) seconds."""

    validating: float = 1.0
    processing: float = 10.0
    finalizing: float = 1.0
    cancelling: float = 1.0
    completion_window: float = 24 * 3600.0


@dataclass(slots=True)
class _File:
    id: str
    filename: str
    purpose: str
    created: float
    data: bytes = b""
    batch: str | None = None  # generated output: the batch and which kind
    kind: str = ""

    def size(self, fake: FakeBatches) -> int:
        return len(self.data) if self.batch is None else len(fake._file_bytes(self))


@dataclass(slots=True)
class _Batch:
    """A batch of either API (``anthropic`` says which)."""

    id: str
    anthropic: bool
    created: float
    lines: list[bytes]  # the raw request lines (OpenAI) or requests (Anthropic)
    ids: list[str]
    failing: list[bool]  # which lines end as errors
    endpoint: str = ""
    input_file_id: str = ""
    model: str | None = None
    tokens: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    validation_errors: list[dict[str, Any]] = field(default_factory=list)
    cancelled_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    timing: BatchTiming = field(default_factory=BatchTiming)

    @property
    def total(self) -> int:
        return len(self.ids)

    def t_in_progress(self) -> float:
        return self.created + (0.0 if self.anthropic else self.timing.validating)

    def expires(self) -> float:
        return self.created + self.timing.completion_window

    def end_of_processing(self) -> float:
        t = self.t_in_progress() + self.timing.processing
        return min(t, self.expires())

    def done_at(self, now: float) -> int:
        """How many lines are done at ``now`` (lines finish evenly over ``processing``)."""
        stop = now
        if self.cancelled_at is not None:
            stop = min(stop, self.cancelled_at)
        stop = min(stop, self.expires())
        elapsed = stop - self.t_in_progress()
        if elapsed <= 0 or self.validation_errors:
            return 0
        if self.timing.processing <= 0:
            return self.total
        return min(self.total, math.floor(self.total * elapsed / self.timing.processing + 1e-9))

    def status(self, now: float) -> str:
        if self.validation_errors:
            return "validating" if now < self.t_in_progress() else "failed"
        if self.cancelled_at is not None and self.cancelled_at < self.end_of_processing():
            return "cancelling" if now < self.cancelled_at + self.timing.cancelling else "cancelled"
        if now < self.t_in_progress():
            return "validating"
        end = self.end_of_processing()
        if now < end:
            return "in_progress"
        if now < end + self.timing.finalizing:
            return "finalizing"
        return "completed" if self.done_at(end) >= self.total else "expired"

    def active(self, now: float) -> bool:
        return self.status(now) in ("validating", "in_progress", "finalizing", "cancelling")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(data, separators=(",", ":")).encode(),
        content_type="application/json",
    )


def _openai_error(
    status: int, message: str, code: str | None, param: str | None = None
) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _json(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status
    )


def _anthropic_error(status: int, kind: str, message: str) -> web.Response:
    return _json({"type": "error", "error": {"type": kind, "message": message}}, status)


def _parse_multipart(raw: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a ``multipart/form-data`` body: name -> (filename, data)."""
    boundary = ""
    for piece in content_type.split(";"):
        key, _, value = piece.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return {}
    parts: dict[str, tuple[str | None, bytes]] = {}
    for chunk in raw.split(b"--" + boundary.encode()):
        if not chunk or chunk.startswith(b"--"):
            continue
        head, sep, body = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("content-disposition"):
                for item in line.split(";")[1:]:
                    k, _, v = item.strip().partition("=")
                    if k == "name":
                        name = v.strip('"')
                    elif k == "filename":
                        filename = v.strip('"')
        if name is not None:
            parts[name] = (filename, body.removesuffix(b"\r\n"))
    return parts


class FakeBatches:
    """The state and routes of FakeAPI's Batch APIs.

    Attributes:
        timing: how long batches take (change it before creating batches).
        fail: custom_ids whose lines fail with a 500 ``server_error``.
        enqueued_token_limit: OpenAI's per-model enqueued input tokens limit (``None``:
            no limit); a batch over it fails validation with ``token_limit_exceeded``.
        anthropic_queue_limit: Anthropic's limit on requests waiting in batches; a
            create over it is answered ``429``.
        max_requests, max_bytes: OpenAI's per-file limits (50,000 requests, 200 MB).
        anthropic_max_requests, anthropic_max_bytes: Anthropic's (100,000, 256 MB).
        clock_skew: seconds added to every timestamp the server reports (``created_at``
            ...): negative for a server whose clock is behind the client's.
    """

    def __init__(self, api: FakeAPI) -> None:
        self.api = api
        self.timing = BatchTiming()
        self.fail: set[str] = set()
        self.enqueued_token_limit: int | None = None
        self.anthropic_queue_limit: int | None = None
        self.max_requests = OPENAI_MAX_REQUESTS
        self.max_bytes = OPENAI_MAX_BYTES
        self.anthropic_max_requests = ANTHROPIC_MAX_REQUESTS
        self.anthropic_max_bytes = ANTHROPIC_MAX_BYTES
        self.files: dict[str, _File] = {}
        self.batches: dict[str, _Batch] = {}
        self.deleted_files = 0
        self.clock_skew = 0.0
        self._listed_at: dict[str, float] = {}
        self._n = 0
        self._wall0 = time.time()
        self._clock0: float | None = None

    # -- bookkeeping ----------------------------------------------------------------------
    def _now(self) -> float:
        now = self.api.clock.now()
        if self._clock0 is None:
            self._clock0 = now
        return now

    def _unix(self, t: float | None) -> int | None:
        if t is None:
            return None
        if self._clock0 is None:
            self._clock0 = t
        return int(self._wall0 + self.clock_skew + (t - self._clock0))

    def _new_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n:06d}{self.api.journal.rng.getrandbits(48):012x}"

    @property
    def openai_batches(self) -> list[_Batch]:
        """The OpenAI batches created so far (for assertions)."""
        return [b for b in self.batches.values() if not b.anthropic]

    @property
    def anthropic_batches(self) -> list[_Batch]:
        """The Anthropic message batches created so far (for assertions)."""
        return [b for b in self.batches.values() if b.anthropic]

    @property
    def uploads(self) -> list[_File]:
        """The files uploaded (not the generated output files), deleted ones excluded."""
        return [f for f in self.files.values() if f.batch is None]

    def _made(self, batch: _Batch, request: web.Request) -> None:
        """Keep a new batch; out of the listings for a while under a ``listed_after`` fault."""
        self.batches[batch.id] = batch
        fault = self.api.request_fault(request)
        if fault is not None and fault.listed_after > 0:
            self._listed_at[batch.id] = batch.created + fault.listed_after

    def _listed(self, batch: _Batch, now: float) -> bool:
        return now >= self._listed_at.get(batch.id, -math.inf)

    def install(self) -> None:
        """Register the routes on the FakeAPI."""
        route = self.api.route
        route("POST", "/v1/files", self._upload)
        route("GET", "/v1/files", self._list_files)
        route("GET", "/v1/files/{file_id}", self._get_file)
        route("DELETE", "/v1/files/{file_id}", self._delete_file)
        route("GET", "/v1/files/{file_id}/content", self._file_content)
        route("POST", "/v1/batches", self._create)
        route("GET", "/v1/batches", self._list)
        route("GET", "/v1/batches/{batch_id}", self._retrieve)
        route("POST", "/v1/batches/{batch_id}/cancel", self._cancel)
        route("POST", "/v1/messages/batches", self._a_create)
        route("GET", "/v1/messages/batches", self._a_list)
        route("GET", "/v1/messages/batches/{batch_id}", self._a_retrieve)
        route("POST", "/v1/messages/batches/{batch_id}/cancel", self._a_cancel)
        route("GET", "/v1/messages/batches/{batch_id}/results", self._a_results)

    # -- answering one line ---------------------------------------------------------------
    def _answer(self, url: str, body: Any, custom_id: str, rid: str | None) -> tuple[int, Any]:
        """The status and body the online route gives ``body`` (500 for :attr:`fail`).

        ``rid=None`` only checks whether the line succeeds (the body may be ``None``).
        """
        if custom_id in self.fail:
            return 500, {
                "error": {
                    "message": "The server had an error processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": "server_error",
                }
            }
        handler = self.api.builtin_handler("POST", url)
        if handler is None or not isinstance(body, dict):
            return 400, {
                "error": {
                    "message": f"Invalid URL (POST {url})",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        if body.get("stream"):
            return 400, {
                "error": {
                    "message": "Streaming is not supported in the Batch API.",
                    "type": "invalid_request_error",
                    "param": "stream",
                    "code": None,
                }
            }
        try:
            if url == "/v1/chat/completions":  # the common case, without a JSON round trip
                reply = content.plan_chat(body)
                return 200, None if rid is None else content.chat_completion(reply, rid)
            _tokens, answer = handler(body, rid or "probe")
        except content.BadRequest as exc:
            return 400, {
                "error": {
                    "message": str(exc),
                    "type": "invalid_request_error",
                    "param": exc.param,
                    "code": None,
                }
            }
        return 200, None if rid is None else json.loads(answer.body)

    @staticmethod
    def openai_line_error(custom_id: str, code: str) -> dict[str, Any]:
        """An error-file line for a request that never ran (expired or cancelled)."""
        message = _EXPIRED_MSG if code == "batch_expired" else _CANCELLED_MSG
        return {
            "id": f"batch_req_{custom_id}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }

    # -- OpenAI files ---------------------------------------------------------------------
    async def _upload(self, request: web.Request) -> web.Response:
        raw = await request.read()
        parts = _parse_multipart(raw, request.headers.get("Content-Type", ""))
        if "file" not in parts:
            return _openai_error(400, "'file' is a required property", None, "file")
        purpose = parts.get("purpose", (None, b""))[1].decode()
        if purpose not in ("batch", "fine-tune", "assistants", "vision", "user_data"):
            return _openai_error(400, f"Invalid value for 'purpose': {purpose!r}", None, "purpose")
        filename, data = parts["file"]
        if len(data) > self.max_bytes:
            return _openai_error(
                400, f"File is too large: {len(data)} bytes; the limit is {self.max_bytes}.", None
            )
        f = _File(self._new_id("file-"), filename or "upload", purpose, self._now(), data)
        self.files[f.id] = f
        return _json(self._file_object(f))

    def _file_object(self, f: _File) -> dict[str, Any]:
        return {
            "id": f.id,
            "object": "file",
            "bytes": f.size(self),
            "created_at": self._unix(f.created),
            "filename": f.filename,
            "purpose": f.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }

    async def _list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        data = [
            self._file_object(f)
            for f in reversed(self.files.values())
            if purpose is None or f.purpose == purpose
        ]
        return _json({"object": "list", "data": data, "has_more": False})

    def _file(self, request: web.Request) -> _File | None:
        return self.files.get(self.api.path_params(request).get("file_id", ""))

    async def _get_file(self, request: web.Request) -> web.Response:
        f = self._file(request)
        if f is None:
            return _openai_error(404, "No such File object", None, "id")
        return _json(self._file_object(f))

    async def _delete_file(self, request: web.Request) -> web.Response:
        f = self._file(request)
        if f is None:
            return _openai_error(404, "No such File object", None, "id")
        del self.files[f.id]
        self.deleted_files += 1
        return _json({"id": f.id, "object": "file", "deleted": True})

    async def _file_content(self, request: web.Request) -> web.Response:
        f = self._file(request)
        if f is None:
            return _openai_error(404, "No such File object", None, "id")
        return web.Response(body=self._file_bytes(f), content_type="application/octet-stream")

    def _file_bytes(self, f: _File) -> bytes:
        if f.batch is None:
            return f.data
        batch = self.batches[f.batch]
        return b"".join(self._openai_output(batch, errors=f.kind == "errors"))

    # -- OpenAI batches -------------------------------------------------------------------
    def _outcomes(self, batch: _Batch, now: float) -> tuple[int, int, int]:
        """(succeeded, failed among the done, not run) at ``now``."""
        done = batch.done_at(now)
        failed = sum(batch.failing[:done])
        return done - failed, failed, batch.total - done

    def _openai_output(self, batch: _Batch, *, errors: bool) -> Iterator[bytes]:
        now = self._now()
        done = batch.done_at(now)
        status = batch.status(now)
        for i, raw in enumerate(batch.lines):
            cid = batch.ids[i]
            if i >= done:
                if errors:
                    code = "batch_cancelled" if status == "cancelled" else "batch_expired"
                    yield self._dump(self.openai_line_error(cid, code))
                continue
            if batch.failing[i] != errors:
                continue
            line = orjson.loads(raw)
            rid = f"{batch.id}_{i}"
            status_code, body = self._answer(line.get("url", ""), line.get("body"), cid, rid)
            yield self._dump(
                {
                    "id": f"batch_req_{rid}",
                    "custom_id": cid,
                    "response": {"status_code": status_code, "request_id": rid, "body": body},
                    "error": None,
                }
            )

    @staticmethod
    def _dump(record: Any) -> bytes:
        return orjson.dumps(record) + b"\n"

    def _batch_object(self, batch: _Batch) -> dict[str, Any]:
        now = self._now()
        status = batch.status(now)
        ok, failed, _left = self._outcomes(batch, now)
        if status in ("completed", "expired", "cancelled") and batch.output_file_id is None:
            self._finish_files(batch, ok, status)
        ip = batch.t_in_progress()
        end = batch.end_of_processing()
        fin = end if status in ("finalizing", "completed", "expired") else None
        errors = None
        if batch.validation_errors:
            errors = {"object": "list", "data": batch.validation_errors}
        total = 0 if status in ("validating", "failed") else batch.total
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": errors,
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": self._unix(batch.created),
            "in_progress_at": self._unix(ip) if now >= ip and not batch.validation_errors else None,
            "expires_at": self._unix(batch.expires()),
            "finalizing_at": self._unix(fin),
            "completed_at": self._unix(end + batch.timing.finalizing)
            if status == "completed"
            else None,
            "failed_at": self._unix(ip) if status == "failed" else None,
            "expired_at": self._unix(batch.expires()) if status == "expired" else None,
            "cancelling_at": self._unix(batch.cancelled_at),
            "cancelled_at": self._unix((batch.cancelled_at or 0) + batch.timing.cancelling)
            if status == "cancelled"
            else None,
            "request_counts": {"total": total, "completed": ok, "failed": failed},
            "metadata": batch.metadata or None,
        }

    def _finish_files(self, batch: _Batch, ok: int, status: str) -> None:
        now = batch.end_of_processing()
        if ok:
            out = _File(self._new_id("file-"), "batch_output.jsonl", "batch_output", now)
            out.batch, out.kind = batch.id, "output"
            self.files[out.id] = out
            batch.output_file_id = out.id
        else:
            batch.output_file_id = ""
        if ok < batch.total:
            err = _File(self._new_id("file-"), "batch_errors.jsonl", "batch_output", now)
            err.batch, err.kind = batch.id, "errors"
            self.files[err.id] = err
            batch.error_file_id = err.id

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict):
            return _openai_error(400, "the body must be a JSON object", None)
        window = body.get("completion_window")
        if window != "24h":
            return _openai_error(
                400, f"Invalid completion_window {window!r}: only '24h'", None, "completion_window"
            )
        endpoint = body.get("endpoint")
        if endpoint not in BATCH_ENDPOINTS:
            return _openai_error(400, f"Invalid endpoint {endpoint!r}", None, "endpoint")
        f = self.files.get(str(body.get("input_file_id", "")))
        if f is None or f.purpose != "batch":
            return _openai_error(404, "No such File object", None, "input_file_id")
        batch = self._openai_batch(f, endpoint, body.get("metadata") or {})
        self._made(batch, request)
        return _json(self._batch_object(batch))

    def _openai_batch(self, f: _File, endpoint: str, metadata: dict[str, Any]) -> _Batch:
        lines, ids, failing = [], [], []
        errors: list[dict[str, Any]] = []
        models: set[str] = set()
        tokens = 0
        seen: set[str] = set()
        for n, raw in enumerate(f.data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
                cid, url, body = line["custom_id"], line["url"], line["body"]
            except (ValueError, KeyError, TypeError):
                errors.append({"code": "invalid_json_line", "line": n, "message": "bad line"})
                continue
            if url != endpoint:
                errors.append(
                    {
                        "code": "mismatched_endpoint",
                        "line": n,
                        "message": f"The url {url!r} does not match the batch's {endpoint!r}.",
                        "param": "url",
                    }
                )
            if cid in seen:
                errors.append(
                    {"code": "duplicate_custom_id", "line": n, "message": "repeated custom_id"}
                )
            seen.add(cid)
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                models.add(body["model"])
                if self.enqueued_token_limit is not None:
                    tokens += self._input_tokens(url, body)
            status, _ = self._answer(url, body, cid, None)
            lines.append(raw)
            ids.append(cid)
            failing.append(status != 200)
        if len(models) > 1:
            errors.append(
                {"code": "mismatched_model", "line": None, "message": "one model per batch file"}
            )
        if len(ids) > self.max_requests:
            errors.append(
                {
                    "code": "too_many_requests",
                    "line": None,
                    "message": f"{len(ids)} requests; the limit is {self.max_requests} per batch.",
                }
            )
        model = next(iter(models)) if len(models) == 1 else None
        now = self._now()
        limit = self.enqueued_token_limit
        if limit is not None and not errors:
            queued = sum(
                b.tokens
                for b in self.openai_batches
                if b.model == model and b.active(now) and not b.validation_errors
            )
            if queued + tokens > limit:
                errors.append(
                    {
                        "code": "token_limit_exceeded",
                        "line": None,
                        "message": f"Enqueued token limit reached for {model} in organization "
                        f"org-fake. Limit: {limit:,} enqueued tokens. Please try again once "
                        "some in_progress batches have been completed.",
                        "param": None,
                    }
                )
        return _Batch(
            self._new_id("batch_"),
            False,
            now,
            lines,
            ids,
            failing,
            endpoint,
            f.id,
            model,
            tokens,
            dict(metadata),
            errors,
            timing=BatchTiming(**{k: getattr(self.timing, k) for k in BatchTiming.__slots__}),
        )

    @staticmethod
    def _input_tokens(url: str, body: dict[str, Any]) -> int:
        try:
            if url == "/v1/chat/completions":
                return content.plan_chat(body).prompt_tokens
            if url == "/v1/messages":
                return content.plan_messages(body).prompt_tokens
        except content.BadRequest:
            return 0
        return 1

    def _batch(self, request: web.Request, anthropic: bool) -> _Batch | None:
        batch = self.batches.get(self.api.path_params(request).get("batch_id", ""))
        return batch if batch is not None and batch.anthropic == anthropic else None

    async def _retrieve(self, request: web.Request) -> web.Response:
        batch = self._batch(request, False)
        if batch is None:
            return _openai_error(404, "No such batch", None, "batch_id")
        return _json(self._batch_object(batch))

    async def _list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        after = request.query.get("after")
        now = self._now()
        items = [b for b in reversed(self.openai_batches) if self._listed(b, now)]
        if after is not None:
            ids = [b.id for b in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        data = [self._batch_object(b) for b in page]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(items) > limit,
            }
        )

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request, False)
        if batch is None:
            return _openai_error(404, "No such batch", None, "batch_id")
        now = self._now()
        if batch.status(now) not in ("validating", "in_progress", "finalizing"):
            return _openai_error(
                409, f"Cannot cancel a batch with status {batch.status(now)!r}.", None
            )
        if batch.status(now) != "finalizing":
            batch.cancelled_at = now
        return _json(self._batch_object(batch))

    # -- Anthropic message batches --------------------------------------------------------
    async def _a_create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if len(raw) > self.anthropic_max_bytes:
            return _anthropic_error(413, "request_too_large", "Request exceeds 256 MB.")
        try:
            body = orjson.loads(raw)
            requests = body["requests"]
            if not isinstance(requests, list) or not requests:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _anthropic_error(
                400, "invalid_request_error", "requests: a non-empty list is required"
            )
        if len(requests) > self.anthropic_max_requests:
            return _anthropic_error(
                400,
                "invalid_request_error",
                f"requests: at most {self.anthropic_max_requests} requests per batch",
            )
        now = self._now()
        queue = self.anthropic_queue_limit
        if queue is not None:
            waiting = sum(b.total for b in self.anthropic_batches if b.active(now))
            if waiting + len(requests) > queue:
                return _anthropic_error(
                    429,
                    "rate_limit_error",
                    f"Number of batch requests in the processing queue would exceed {queue}.",
                )
        lines, ids, failing = [], [], []
        seen: set[str] = set()
        for item in requests:
            if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
                return _anthropic_error(
                    400, "invalid_request_error", "each request needs a custom_id"
                )
            cid = item["custom_id"]
            if cid in seen:
                return _anthropic_error(
                    400, "invalid_request_error", f"duplicate custom_id {cid!r}"
                )
            seen.add(cid)
            params = item.get("params")
            if isinstance(params, dict) and params.get("stream"):
                return _anthropic_error(
                    400, "invalid_request_error", f"{cid}: streaming is not supported in batches"
                )
            status, _ = self._a_answer(params, cid, "probe")
            lines.append(orjson.dumps(params))
            ids.append(cid)
            failing.append(status != "succeeded")
        timing = BatchTiming(**{k: getattr(self.timing, k) for k in BatchTiming.__slots__})
        batch = _Batch(self._new_id("msgbatch_"), True, now, lines, ids, failing, timing=timing)
        self._made(batch, request)
        return _json(self._a_object(batch, request))

    def _a_answer(self, params: Any, custom_id: str, rid: str) -> tuple[str, Any]:
        if custom_id in self.fail:
            return "errored", {
                "type": "error",
                "error": {"type": "api_error", "message": "Internal server error"},
            }
        if not isinstance(params, dict):
            return "errored", {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "params must be an object"},
            }
        try:
            reply = content.plan_messages(params)
        except content.BadRequest as exc:
            return "errored", {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": str(exc)},
            }
        return "succeeded", content.messages(reply, rid)

    def _a_status(self, batch: _Batch, now: float) -> str:
        status = batch.status(now)
        if status == "cancelling":
            return "canceling"
        if status in ("cancelled", "completed", "expired"):
            return "ended"
        return "in_progress"  # Anthropic has no validating or finalizing phase

    def _a_object(self, batch: _Batch, request: web.Request) -> dict[str, Any]:
        now = self._now()
        status = self._a_status(batch, now)
        counts = {"processing": batch.total, "succeeded": 0, "errored": 0, "canceled": 0}
        counts["expired"] = 0
        ended_at = None
        results_url = None
        if status == "ended":
            ok, failed, left = self._outcomes(batch, now)
            counts["processing"] = 0
            counts["succeeded"], counts["errored"] = ok, failed
            counts["canceled" if batch.status(now) == "cancelled" else "expired"] = left
            end = batch.end_of_processing()
            if batch.cancelled_at is not None and batch.cancelled_at < end:
                end = batch.cancelled_at + batch.timing.cancelling
            ended_at = self._iso(end)
            host = request.host or f"{self.api.host}:{self.api.port}"
            results_url = f"{request.scheme}://{host}/v1/messages/batches/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": ended_at,
            "created_at": self._iso(batch.created),
            "expires_at": self._iso(batch.expires()),
            "archived_at": None,
            "cancel_initiated_at": self._iso(batch.cancelled_at)
            if batch.cancelled_at is not None
            else None,
            "results_url": results_url,
        }

    def _iso(self, t: float) -> str:
        unix = self._unix(t) or 0
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))

    async def _a_retrieve(self, request: web.Request) -> web.Response:
        batch = self._batch(request, True)
        if batch is None:
            return _anthropic_error(404, "not_found_error", "message batch not found")
        return _json(self._a_object(batch, request))

    async def _a_list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        if not 1 <= limit <= 1000:
            return _anthropic_error(400, "invalid_request_error", "limit: from 1 to 1000")
        now = self._now()
        items = [b for b in reversed(self.anthropic_batches) if self._listed(b, now)]
        after = request.query.get("after_id")
        before = request.query.get("before_id")
        for cursor in (after, before):
            if cursor is not None and cursor not in self.batches:
                return _anthropic_error(404, "not_found_error", f"no message batch {cursor!r}")
        ids = [b.id for b in items]
        if after is not None:  # older than the cursor (the list is newest first)
            items = items[ids.index(after) + 1 :] if after in ids else []
            page, more = items[:limit], len(items) > limit
        elif before is not None:  # newer than the cursor: the page right before it
            items = items[: ids.index(before)] if before in ids else []
            page, more = items[-limit:], len(items) > limit
        else:
            page, more = items[:limit], len(items) > limit
        data = [self._a_object(b, request) for b in page]
        return _json(
            {
                "data": data,
                "has_more": more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def _a_cancel(self, request: web.Request) -> web.Response:
        batch = self._batch(request, True)
        if batch is None:
            return _anthropic_error(404, "not_found_error", "message batch not found")
        now = self._now()
        if batch.cancelled_at is None and batch.status(now) in ("validating", "in_progress"):
            batch.cancelled_at = now
        return _json(self._a_object(batch, request))

    async def _a_results(self, request: web.Request) -> web.Response:
        batch = self._batch(request, True)
        if batch is None:
            return _anthropic_error(404, "not_found_error", "message batch not found")
        now = self._now()
        if self._a_status(batch, now) != "ended":
            return _anthropic_error(
                400, "invalid_request_error", "results are available once the batch has ended"
            )
        done = batch.done_at(now)
        left = "canceled" if batch.status(now) == "cancelled" else "expired"
        out = []
        for i, raw in enumerate(batch.lines):
            cid = batch.ids[i]
            if i >= done:
                out.append(self._dump({"custom_id": cid, "result": {"type": left}}))
                continue
            kind, data = self._a_answer(orjson.loads(raw), cid, f"{batch.id}_{i}")
            key = "message" if kind == "succeeded" else "error"
            out.append(self._dump({"custom_id": cid, "result": {"type": kind, key: data}}))
        return web.Response(body=b"".join(out), content_type="application/binary")


def install_batches(api: FakeAPI) -> FakeBatches:
    """Serve the Batch APIs on ``api``; return their state (``api.batches``)."""
    batches = FakeBatches(api)
    batches.install()
    return batches
