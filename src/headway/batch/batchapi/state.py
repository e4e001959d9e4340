"""The sidecar state file: what was submitted where, written before each remote step.

``OUT.batches.json`` sits next to the result file. It holds how to reach the provider
(kind, base URL, the *name* of the key's environment variable — never the key) and one
record per batch part: the custom_ids it carries, the local payload file, the uploaded
file's id, the batch's id and its last known status. Every change is written
atomically (a temporary file, fsync, rename) *before* the step it announces is taken
remotely, so a run killed at any moment knows, when started again, what may already
exist at the provider and looks for it instead of paying for it twice.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
>>> s = BatchState.new(out, kind="openai", base_url="http://x", api_key_env=None)
>>> s.parts.append(Part("p1", "/v1/chat/completions", "m", ["a", "b"], "p1.jsonl"))
>>> s.save()
>>> BatchState.load(out).parts[0].ids
['a', 'b']
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["LIVE", "Part", "PartStatus", "BatchState", "state_path"]

PartStatus = Literal[
    "planned",  # payload written locally; nothing at the provider yet
    "uploading",  # an upload may have reached the provider (look it up by filename)
    "uploaded",  # file_id known; no batch created from it yet
    "creating",  # a create may have reached the provider (look it up before creating)
    "submitted",  # batch_id known: poll it
    "collected",  # results written to OUT (what it left unfinished is in `unfinished`)
]

#: Statuses of a part whose lines are still the provider's business.
LIVE: frozenset[str] = frozenset({"planned", "uploading", "uploaded", "creating", "submitted"})


def state_path(output: str | os.PathLike[str]) -> str:
    """The sidecar state file of result file ``output``."""
    return os.fspath(output) + ".batches.json"


@dataclass(slots=True)
class Part:
    """One provider batch (a part of a group of lines).

    Attributes:
        key: unique within the run (also in the uploaded file's name).
        endpoint, model: what the part's lines share.
        ids: the custom_ids it carries, in file order.
        payload: the local file of its lines in the provider's format.
        tokens: estimated input tokens (for the enqueued-token limit).
        status: see :data:`PartStatus`.
        file_id: the uploaded input file (OpenAI).
        batch_id: the provider's batch id.
        remote: the provider's last reported status (``in_progress``, ``ended``...).
        counts: (done, total) the provider last reported.
        since: when this run saw the batch start (its clock), for the ETA.
        created_after: wall time just before a create was attempted (to find it again).
        create_mark: what the provider listed just before the create (Anthropic: its
            newest batch), so a batch whose create went unanswered is found after it.
        retry_at: wall time before which a requeued create waits.
        old_batches: batches of this part the provider failed (e.g. token limit).
        unfinished: custom_id -> code of lines the batch left undone (expired,
            cancelled), kept for ``--then-online``.
        shape: the shape its result lines are written in (``openai``, ``anthropic``).
    """

    key: str
    endpoint: str
    model: str
    ids: list[str]
    payload: str
    tokens: int = 0
    status: str = "planned"
    file_id: str | None = None
    batch_id: str | None = None
    remote: str | None = None
    counts: list[int] = field(default_factory=lambda: [0, 0])
    since: list[float] | None = None
    created_after: float | None = None
    create_mark: dict[str, Any] | None = None
    retry_at: float | None = None
    old_batches: list[str] = field(default_factory=list)
    unfinished: dict[str, str] = field(default_factory=dict)
    shape: str = "openai"

    @property
    def live(self) -> bool:
        """Whether the part's results are still to be collected."""
        return self.status in LIVE


@dataclass(slots=True)
class BatchState:
    """The sidecar of one result file (see the module docs)."""

    path: str
    kind: str
    base_url: str
    api_key_env: str | None
    input: str | None = None
    errors: str | None = None
    token: str = ""
    parts: list[Part] = field(default_factory=list)
    provider: str | None = None

    @classmethod
    def new(
        cls,
        output: str | os.PathLike[str],
        *,
        kind: str,
        base_url: str,
        api_key_env: str | None,
        input: str | None = None,
        errors: str | None = None,
    ) -> BatchState:
        """A fresh state for ``output`` (not yet saved)."""
        return cls(
            state_path(output), kind, base_url, api_key_env, input, errors, os.urandom(6).hex()
        )

    @classmethod
    def load(cls, output: str | os.PathLike[str]) -> BatchState:
        """Read the state of ``output``; :class:`FileNotFoundError` if there is none."""
        path = state_path(output)
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
        parts = [Part(**p) for p in data.pop("parts", [])]
        data.pop("version", None)
        return cls(path=path, parts=parts, **data)

    @classmethod
    def exists(cls, output: str | os.PathLike[str]) -> bool:
        """Whether ``output`` has a state file."""
        return os.path.exists(state_path(output))

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in ("kind", "base_url", "api_key_env", "input")}
        data.update(errors=self.errors, token=self.token, provider=self.provider, version=1)
        data["parts"] = self.parts  # orjson writes dataclasses as they are (no copies)
        return data

    def save(self) -> None:
        """Write the state atomically (temporary file, fsync, rename)."""
        tmp = self.path + ".tmp"
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self.to_dict()))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @property
    def live(self) -> list[Part]:
        """The parts still at the provider (or on their way)."""
        return [p for p in self.parts if p.live]

    def remove(self) -> None:
        """Delete the state file (when every part was collected)."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
