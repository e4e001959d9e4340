"""Planning a provider batch: which lines may go, how they group, where files split.

A line goes into a batch when its provider's Batch API serves it: OpenAI's takes
``POST`` requests to ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/responses``
and ``/v1/completions`` (one endpoint and one model per file); Anthropic's takes
``/v1/messages`` parameters. A line asking to stream, or bound elsewhere, gets a
one-line reason instead (:func:`batch_problem`). Lines are grouped by what one batch
may mix and each group is split into parts within :class:`BatchLimits` (requests,
bytes and, for OpenAI, the model's enqueued-token limit).

>>> from headway.batch.jobs import parse_line
>>> line = '{"custom_id": "a", "url": "/v1/embeddings", "body": {"model": "m", "stream": 1}}'
>>> r = parse_line(line, 1)
>>> batch_problem(r, "openai")
'line 1 (custom_id a): a batch cannot stream; drop "stream": true or use --via online'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from headway.batch.jobs import ANTHROPIC_URL, BatchRequest

__all__ = [
    "OPENAI_ENDPOINTS",
    "BatchLimits",
    "Kind",
    "PartWriter",
    "EMBEDDING_INPUTS",
    "batch_problem",
    "embedding_inputs",
    "group_key",
    "preview",
    "provider_line",
]

Kind = Literal["openai", "anthropic"]

#: The endpoints OpenAI's Batch API serves (its ``POST /v1/batches`` ``endpoint`` values).
OPENAI_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions"}
    | {"/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos"}
)
#: OpenAI caps an ``/v1/embeddings`` batch at this many inputs across its requests.
EMBEDDING_INPUTS = 50_000


def embedding_inputs(request: BatchRequest) -> int:
    """How many inputs an embeddings request carries (a list counts each item).

    >>> from headway.batch.jobs import parse_line
    >>> embedding_inputs(parse_line('{"model": "e", "input": ["a", "b", "c"]}', 1))
    3
    """
    value = request.body.get("input")
    return len(value) if isinstance(value, list) and value else 1


@dataclass(slots=True, frozen=True)
class BatchLimits:
    """How big one provider batch may be.

    Attributes:
        max_requests: requests per batch (OpenAI 50,000; Anthropic 100,000).
        max_bytes: bytes per batch file or request (OpenAI 200 MB; Anthropic 256 MB).
        max_tokens: the model's enqueued-token limit (OpenAI; estimated input tokens
            queued at once across this run's batches of one model), or ``None``.
    """

    max_requests: int
    max_bytes: int
    max_tokens: int | None = None

    @classmethod
    def for_provider(
        cls,
        kind: Kind,
        *,
        max_requests: int | None = None,
        max_bytes: int | None = None,
        max_tokens: int | None = None,
    ) -> BatchLimits:
        """The provider's documented limits, with any of them overridden.

        >>> BatchLimits.for_provider("openai").max_requests
        50000
        >>> BatchLimits.for_provider("anthropic", max_bytes=10).max_bytes
        10
        """
        if kind == "anthropic":
            requests, size = 100_000, 256 * 1024 * 1024
        else:
            requests, size = 50_000, 200 * 1024 * 1024
        return cls(max_requests or requests, max_bytes or size, max_tokens)


def batch_problem(request: BatchRequest, kind: Kind) -> str | None:
    """Why ``request`` cannot go in a ``kind`` batch (one line), or ``None`` if it can."""
    where = f"line {request.line} (custom_id {request.custom_id})"
    body = request.body
    if body.get("stream"):
        return f'{where}: a batch cannot stream; drop "stream": true or use --via online'
    if request.method != "POST":
        return f"{where}: the Batch API only sends POST requests, not {request.method}"
    if kind == "anthropic":
        if request.url != ANTHROPIC_URL:
            return (
                f"{where}: Anthropic's Message Batches serve {ANTHROPIC_URL} only, not "
                f"{request.url}; use --via online"
            )
        return None
    if request.kind == "anthropic":
        return f"{where}: an Anthropic line (params) needs --provider anthropic"
    if request.url not in OPENAI_ENDPOINTS:
        served = ", ".join(sorted(OPENAI_ENDPOINTS))
        return f"{where}: the Batch API does not serve {request.url} (it serves {served})"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return f'{where}: a batch line needs a "model" in its body'
    return None


def group_key(request: BatchRequest, kind: Kind) -> tuple[str, str, str]:
    """(endpoint, model, result shape): what one batch of ``kind`` may not mix.

    Anthropic batches mix models freely; their Anthropic lines (``params``) and bare
    bodies go in separate batches only because their results are written in different
    shapes.
    """
    if kind == "anthropic":
        shape = "anthropic" if request.kind == "anthropic" else "openai"
        return ANTHROPIC_URL, "", shape
    return request.url, str(request.body.get("model")), "openai"


def provider_line(request: BatchRequest, kind: Kind) -> bytes:
    """The request as a line of the provider's batch format (no newline)."""
    if kind == "anthropic":
        record: dict[str, Any] = {"custom_id": request.custom_id, "params": request.body}
    else:
        record = {
            "custom_id": request.custom_id,
            "method": "POST",
            "url": request.url,
            "body": request.body,
        }
    return orjson.dumps(record)


@dataclass(slots=True)
class PartWriter:
    """Writes one group's lines into part files, starting a new one at the limits.

    ``on_full(part)`` is called with each finished part (the last one by :meth:`close`).
    A part is ``{"path", "ids", "bytes", "tokens"}``.
    """

    directory: str | None  # None: count only (a dry run writes nothing)
    prefix: str
    limits: BatchLimits
    overhead: int = 0  # bytes a request adds around its line (Anthropic: the JSON array)
    parts: list[dict[str, Any]] = field(default_factory=list)
    _file: Any = None
    _part: dict[str, Any] | None = None

    def fits_alone(self, size: int, tokens: int) -> bool:
        """Whether one line of ``size`` bytes and ``tokens`` tokens fits in any part."""
        limit_tokens = self.limits.max_tokens
        return size + 1 + self.overhead <= self.limits.max_bytes and (
            limit_tokens is None or tokens <= limit_tokens
        )

    def add(self, custom_id: str, line: bytes, tokens: int, inputs: int = 0) -> None:
        """Append a line (which :meth:`fits_alone`), opening a new part when needed.

        ``inputs``: the embedding inputs it carries (at most :data:`EMBEDDING_INPUTS`
        a part).
        """
        part = self._part
        size = len(line) + 1 + self.overhead
        if part is not None and (
            len(part["ids"]) >= self.limits.max_requests
            or (inputs and part["inputs"] + inputs > EMBEDDING_INPUTS)
            or part["bytes"] + size > self.limits.max_bytes
            or (
                self.limits.max_tokens is not None
                and part["tokens"] + tokens > self.limits.max_tokens
            )
        ):
            self._finish()
            part = None
        if part is None:
            n = len(self.parts) + 1
            path = os.path.join(self.directory or "", f"{self.prefix}-{n:04d}.jsonl")
            part = {"path": path, "ids": [], "bytes": 0, "tokens": 0, "inputs": 0}
            if self.directory is not None:
                self._file = open(path, "wb")  # noqa: SIM115 - closed in _finish
            self._part = part
        if self._file is not None:
            self._file.write(line + b"\n")
        part["ids"].append(custom_id)
        part["bytes"] += size
        part["tokens"] += tokens
        part["inputs"] += inputs

    def _finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._part is not None:
            self.parts.append(self._part)
            self._part = None

    def close(self) -> list[dict[str, Any]]:
        """Finish the last part; return every part written."""
        self._finish()
        return self.parts


def preview(
    input: str | os.PathLike[str],
    kind: Kind,
    limits: BatchLimits,
    *,
    default_url: str,
) -> tuple[list[dict[str, Any]], list[str]]:
    """How ``input`` would be split, without writing or sending anything.

    Returns the batches (``endpoint``, ``model``, ``requests``, ``bytes``, ``tokens``)
    and the one-line reasons of the lines that cannot go in a batch.

    >>> import tempfile, pathlib, json
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "in.jsonl"
    >>> body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    >>> _ = p.write_text("".join(json.dumps(body) + "\\n" for _ in range(5)))
    >>> limits = BatchLimits(max_requests=2, max_bytes=10_000)
    >>> parts, bad = preview(p, "openai", limits, default_url="/v1/chat/completions")
    >>> [b["requests"] for b in parts], bad
    ([2, 2, 1], [])
    """
    from headway.batch.jobs import InvalidLine, read_requests

    count_tokens = limits.max_tokens is not None
    if count_tokens:
        from headway.http.tokens import estimate_tokens
    writers: dict[tuple[str, str, str], PartWriter] = {}
    problems: list[str] = []
    seen: set[str] = set()
    overhead = 1 if kind == "anthropic" else 0
    for item in read_requests(input, default_url=default_url):
        if item.custom_id in seen:
            continue
        seen.add(item.custom_id)
        if isinstance(item, InvalidLine):
            problems.append(item.message)
            continue
        problem = batch_problem(item, kind)
        if problem is not None:
            problems.append(problem)
            continue
        key = group_key(item, kind)
        writer = writers.setdefault(key, PartWriter(None, "dry", limits, overhead))
        line = provider_line(item, kind)
        tokens = estimate_tokens(item.body, method="heuristic") if count_tokens else 0
        if not writer.fits_alone(len(line), tokens):
            problems.append(f"line {item.line} (custom_id {item.custom_id}): too large for a batch")
            continue
        inputs = embedding_inputs(item) if item.url == "/v1/embeddings" else 0
        writer.add(item.custom_id, line, tokens, inputs)
    batches = [
        {
            "endpoint": endpoint,
            "model": model or None,
            "requests": len(raw["ids"]),
            "bytes": raw["bytes"],
            "tokens": raw["tokens"],
        }
        for (endpoint, model, _shape), writer in writers.items()
        for raw in writer.close()
    ]
    return batches, problems
