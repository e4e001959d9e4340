"""Talking to a provider's Batch API: OpenAI (Files + Batches) and Anthropic (Message Batches).

Each adapter turns the provider's objects into a :class:`Remote` (status, counts, where
the results are) and its result lines into :class:`~headway.batch.ledger.Result`s in
the shape the online path writes. Reads (polls, downloads, look-ups) go through a
client whose :class:`~headway.resilience.policy.Policy` retries what is transient
(429 with ``Retry-After``, 5xx, resets). Steps that create something (an upload, a
batch) are never retried blindly: after a failure whose outcome is unknown, the
adapter first looks for what the failed attempt may have created (:meth:`find_file`,
:meth:`find_batch`) and adopts it.

How a batch is recognised: an OpenAI batch by its input file (and the ``headway_part``
metadata headway gives it). An Anthropic message batch has no metadata, and its results
(which carry the custom_ids) only exist once it has ended, so it is recognised by its
request count among the batches created *after a mark*: just before the first create,
:meth:`AnthropicBatches.mark` notes the newest batch in the listing, and the look-up
lists what came after it (``before_id``: the listing is newest first). Both sides of
that comparison are the provider's, so no clock skew between the client and the
provider can hide the batch or date it out of a time window.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from headway.batch.ledger import Result
from headway.batch.runner import status_error_code

__all__ = [
    "UNFINISHED",
    "AnthropicBatches",
    "OpenAIBatches",
    "Remote",
    "line_result",
]

#: Codes of lines a batch left undone (they never ran): ``--then-online`` sends them.
UNFINISHED = frozenset({"batch_expired", "batch_cancelled", "expired", "canceled"})

_ANTHROPIC_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


@dataclass(slots=True)
class Remote:
    """A provider batch as last retrieved.

    Attributes:
        id: the batch id.
        status: the provider's word (OpenAI: ``validating`` ... ``completed``;
            Anthropic: ``in_progress``, ``canceling``, ``ended``).
        done, total: requests finished and in the batch (Anthropic reports done
            only at the end).
        ended: whether processing ended (results can be fetched).
        errors: batch-level errors (OpenAI ``errors.data``: code, line, message).
        raw: the whole object.
    """

    id: str
    status: str
    done: int
    total: int
    ended: bool
    errors: list[dict[str, Any]]
    raw: dict[str, Any]


def _message(body: Any, default: str) -> str:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            inner = err.get("error")
            if isinstance(inner, dict) and isinstance(inner.get("message"), str):
                return str(inner["message"])
            if isinstance(err.get("message"), str):
                return str(err["message"])
    return default


def line_result(record: dict[str, Any]) -> Result:
    """A ledger :class:`Result` for one line of an OpenAI batch output or error file.

    >>> line_result({"id": "batch_req_1", "custom_id": "a", "error": None,
    ...   "response": {"status_code": 200, "request_id": "r", "body": {"x": 1}}}).ok
    True
    >>> line_result({"id": "batch_req_2", "custom_id": "b", "response": None,
    ...   "error": {"code": "batch_expired", "message": "expired"}}).code
    'batch_expired'
    """
    cid = str(record["custom_id"])
    error = record.get("error")
    response = record.get("response")
    if isinstance(error, dict) and error:
        result = Result.failure(
            cid, str(error.get("code") or "batch_error"), str(error.get("message") or "")
        )
    elif isinstance(response, dict):
        status = int(response.get("status_code") or 0)
        body = response.get("body")
        rid = response.get("request_id")
        rid = rid if isinstance(rid, str) else None
        if 200 <= status < 300:
            result = Result.success(cid, status, body, request_id=rid)
        else:
            code = None
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                code = body["error"].get("code")
            result = Result.failure(
                cid,
                code if isinstance(code, str) and code else status_error_code(status),
                _message(body, f"HTTP {status}"),
                status_code=status,
                request_id=rid,
                body=body,
            )
    else:
        result = Result.failure(cid, "invalid_response", "a result line with no response")
    if isinstance(record.get("id"), str):
        result.id = record["id"]
    return result


def _anthropic_result(record: dict[str, Any]) -> Result:
    cid = str(record["custom_id"])
    result = record.get("result") or {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message")
        rid = message.get("id") if isinstance(message, dict) else None
        return Result.success(cid, 200, message, request_id=rid if isinstance(rid, str) else None)
    if kind == "errored":
        error = result.get("error") or {}
        inner = error.get("error") if isinstance(error, dict) else None
        etype = inner.get("type") if isinstance(inner, dict) else None
        code = etype if isinstance(etype, str) else "api_error"
        return Result.failure(
            cid,
            code,
            _message(error, code),
            status_code=_ANTHROPIC_STATUS.get(code, 500),
            body=error,
        )
    if kind in ("canceled", "expired"):
        what = "was canceled" if kind == "canceled" else "expired before it ran"
        return Result.failure(cid, kind, f"the request {what} (batch)")
    return Result.failure(cid, "invalid_response", f"unknown batch result type {kind!r}")


class OpenAIBatches:
    """OpenAI's Files + Batches API (and servers implementing it).

    Args:
        client: a client with a retrying policy (reads).
        once: a client sharing its transport without retries (creates).
        completion_window: the batches' window (``"24h"``).
    """

    kind = "openai"

    def __init__(self, client: Any, once: Any, *, completion_window: str = "24h") -> None:
        self.client = client
        self.once = once
        self.completion_window = completion_window

    async def upload(self, filename: str, data: bytes) -> str:
        """``POST /v1/files`` (``purpose=batch``); the file id. One attempt."""
        boundary = "headway" + os.urandom(12).hex()
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                "batch\r\n".encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{filename}"\r\nContent-Type: application/jsonl\r\n\r\n'.encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        resp = await self.once.request_raw(
            "POST", "/v1/files", data=io.BytesIO(body), headers=headers
        )
        return str(resp.parsed()["id"])

    async def find_file(self, filename: str, size: int) -> str | None:
        """An uploaded batch file named ``filename`` of ``size`` bytes, if any."""
        listing = await self.client.request("GET", "/v1/files", params={"purpose": "batch"})
        for f in listing.get("data", []):
            if f.get("filename") == filename and f.get("bytes") in (size, None):
                return str(f["id"])
        return None

    async def file_exists(self, file_id: str) -> bool:
        """Whether the uploaded file is still there."""
        from headway.errors import ResourceNotFoundError

        try:
            await self.client.request("GET", f"/v1/files/{file_id}")
        except ResourceNotFoundError:
            return False
        return True

    async def delete_file(self, file_id: str) -> None:
        """``DELETE /v1/files/{id}`` (a missing file is fine)."""
        from headway.errors import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            await self.client.request("DELETE", f"/v1/files/{file_id}")

    async def create(self, file_id: str, endpoint: str, key: str, payload: bytes) -> Remote:
        """``POST /v1/batches``. One attempt."""
        del payload
        body = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": self.completion_window,
            "metadata": {"headway_part": key},
        }
        return self._remote(await self.once.request("POST", "/v1/batches", json=body))

    async def mark(self) -> dict[str, Any] | None:
        """Nothing to note before a create: the batch is recognised by its input file."""
        return None

    async def find_batch(
        self,
        file_id: str | None,
        size: int,
        after: float,
        *,
        key: str | None = None,
        mark: dict[str, Any] | None = None,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> Remote | None:
        """The batch created from ``file_id`` (for part ``key``), if a create reached the
        provider; batches in ``exclude`` are someone else's.

        Pages back through the listing (newest first) to an hour before ``after``
        (wall time), at most :data:`_MAX_PAGES` pages.
        """
        del size, mark
        if file_id is None:
            return None
        params: dict[str, Any] = {"limit": 100}
        found: Remote | None = None
        for _ in range(_MAX_PAGES):
            listing = await self.client.request("GET", "/v1/batches", params=params)
            data = listing.get("data") or []
            for b in data:
                meta = b.get("metadata") or {}
                theirs = key is not None and meta.get("headway_part") not in (None, key)
                if b.get("input_file_id") == file_id and not theirs and b["id"] not in exclude:
                    found = self._remote(b)  # keep going: the oldest one is the first create
            oldest = data[-1].get("created_at") if data else None
            old = isinstance(oldest, (int, float)) and oldest < after - 3600.0
            if found is not None or not data or not listing.get("has_more") or old:
                return found
            params = {"limit": 100, "after": data[-1]["id"]}
        return found

    async def retrieve(self, batch_id: str) -> Remote:
        """``GET /v1/batches/{id}``."""
        return self._remote(await self.client.request("GET", f"/v1/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> Remote:
        """``POST /v1/batches/{id}/cancel``."""
        return self._remote(await self.client.request("POST", f"/v1/batches/{batch_id}/cancel"))

    @staticmethod
    def _remote(b: dict[str, Any]) -> Remote:
        counts = b.get("request_counts") or {}
        done = int(counts.get("completed") or 0) + int(counts.get("failed") or 0)
        status = str(b.get("status"))
        errors = (b.get("errors") or {}).get("data") or []
        ended = status in ("completed", "expired", "cancelled", "failed")
        return Remote(str(b["id"]), status, done, int(counts.get("total") or 0), ended, errors, b)

    async def results(self, remote: Remote) -> AsyncIterator[Result]:
        """The results in the batch's output file, then its error file."""
        for key in ("output_file_id", "error_file_id"):
            file_id = remote.raw.get(key)
            if not file_id:
                continue
            path = f"/v1/files/{file_id}/content"
            async with self.client.stream("GET", path, mode="lines") as lines:
                async for raw in lines:  # streamed: a file of any size in little memory
                    record = _record(raw)
                    if record is not None:
                        yield line_result(record)


def _record(raw: str) -> dict[str, Any] | None:
    """One result line as a dict; ``None`` for a blank or unreadable line (skipped: its
    request then counts as having no result)."""
    if not raw.strip():
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
        return None
    return record


#: Pages a look-up for a lost create reads at most.
_MAX_PAGES = 10


def _anthropic_total(b: dict[str, Any]) -> int:
    """The requests in an Anthropic batch (its counts always add up to them)."""
    counts = b.get("request_counts") or {}
    return sum(int(v or 0) for v in counts.values())


def _iso_seconds(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class AnthropicBatches:
    """Anthropic's Message Batches API."""

    kind = "anthropic"

    def __init__(self, client: Any, once: Any) -> None:
        self.client = client
        self.once = once

    async def create(self, file_id: str | None, endpoint: str, key: str, payload: bytes) -> Remote:
        """``POST /v1/messages/batches`` with the part's requests. One attempt."""
        del file_id, endpoint, key
        body = b'{"requests":[' + b",".join(payload.splitlines()) + b"]}"
        headers = {"Content-Type": "application/json"}
        resp = await self.once.request_raw(
            "POST", "/v1/messages/batches", data=io.BytesIO(body), headers=headers
        )
        return self._remote(resp.parsed())

    async def mark(self) -> dict[str, Any]:
        """Note the newest batch before a create (``{"id": None}``: there is none yet).

        A batch the create makes is listed after it: :meth:`find_batch` looks there.
        """
        path = "/v1/messages/batches"
        listing = await self.client.request("GET", path, params={"limit": 1})
        data = listing.get("data") or []
        if not data:
            return {"id": None, "created_at": None}
        return {"id": str(data[0]["id"]), "created_at": data[0].get("created_at")}

    async def find_batch(
        self,
        file_id: str | None,
        size: int,
        after: float,
        *,
        key: str | None = None,
        mark: dict[str, Any] | None = None,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> Remote | None:
        """The first batch of ``size`` requests created after ``mark`` (see :meth:`mark`)
        and not in ``exclude``, if any.

        Anthropic's batches carry no metadata: a create whose answer was lost is
        recognised by its request count and its place in the listing. Without a mark
        (a state written by an older headway) the creation time is compared with
        ``after`` (our wall time before the first create), with a minute's slack.
        """
        del file_id, key
        candidates = [
            b
            async for b in self._created_since(mark, after)
            if _anthropic_total(b) == size and str(b.get("id")) not in exclude
        ]
        # The listing is newest first: the oldest candidate is the first create's batch.
        return self._remote(candidates[-1]) if candidates else None

    async def _created_since(
        self, mark: dict[str, Any] | None, after: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The batches listed after ``mark``, newest first (at most :data:`_MAX_PAGES`)."""
        from headway.errors import BadRequestError, ResourceNotFoundError

        path = "/v1/messages/batches"
        marked = mark.get("id") if mark is not None else None
        if isinstance(marked, str):
            pages: list[list[dict[str, Any]]] = []
            cursor, deleted = marked, False
            try:
                for _ in range(_MAX_PAGES):  # before_id: the page of newer batches
                    query = {"limit": 1000, "before_id": cursor}
                    listing = await self.client.request("GET", path, params=query)
                    data = listing.get("data") or []
                    pages.append(data)
                    if not data or not listing.get("has_more"):
                        break
                    cursor = str(data[0]["id"])
            except (ResourceNotFoundError, BadRequestError):
                deleted = True  # the marked batch is gone: compare creation times instead
            if not deleted:
                for data in reversed(pages):
                    for b in data:
                        yield b
                return
        if mark is None:
            since: float | None = after - 60.0  # our clock against the provider's
        elif isinstance(marked, str):
            since = _iso_seconds(mark.get("created_at"))
        else:
            since = None  # there were no batches at all: every one is newer
        params: dict[str, Any] = {"limit": 1000}
        for _ in range(_MAX_PAGES):
            listing = await self.client.request("GET", path, params=params)
            data = listing.get("data") or []
            for b in data:
                created = _iso_seconds(b.get("created_at"))
                if b.get("id") == marked:
                    return
                if since is not None and (created is None or created < since):
                    return
                yield b
            if not data or not listing.get("has_more"):
                return
            params = {"limit": 1000, "after_id": str(data[-1]["id"])}

    async def retrieve(self, batch_id: str) -> Remote:
        """``GET /v1/messages/batches/{id}``."""
        return self._remote(await self.client.request("GET", f"/v1/messages/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> Remote:
        """``POST /v1/messages/batches/{id}/cancel``."""
        path = f"/v1/messages/batches/{batch_id}/cancel"
        return self._remote(await self.client.request("POST", path))

    @staticmethod
    def _remote(b: dict[str, Any]) -> Remote:
        counts = b.get("request_counts") or {}
        total = _anthropic_total(b)
        done = total - int(counts.get("processing") or 0)
        status = str(b.get("processing_status"))
        return Remote(str(b["id"]), status, done, total, status == "ended", [], b)

    async def results(self, remote: Remote) -> AsyncIterator[Result]:
        """The batch's results, from its ``results_url``."""
        url = remote.raw.get("results_url")
        if not url:
            remote = await self.retrieve(remote.id)
            url = remote.raw.get("results_url") or f"/v1/messages/batches/{remote.id}/results"
        async with self.client.stream("GET", url, mode="lines") as lines:
            async for raw in lines:
                record = _record(raw)
                if record is not None:
                    yield _anthropic_result(record)
