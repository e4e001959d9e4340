"""The provider-batch engine: plan, upload, create, poll, collect — resumable at every step.

:class:`ProviderBatchRun` does what ``headway run --via batch`` does:

1. **plan**: read the input once; lines already in OUT are skipped, lines that cannot go
   in a batch get an ``invalid_request`` result with a one-line reason, the rest are
   grouped (:func:`~headway.batch.batchapi.plan.group_key`) and written into part files
   within the limits — all before anything is uploaded;
2. **submit**: for each part, upload its file (OpenAI) and create the batch, writing the
   sidecar state (:mod:`~headway.batch.batchapi.state`) before each remote step;
3. **poll** with a backoff (``poll_interval`` growing to ``max_poll_interval``), showing
   each batch's progress;
4. **collect**: write every result through the same :class:`~headway.batch.ledger.Ledger`
   as the online path, each custom_id once; lines a batch left undone (expired,
   cancelled) become failed results with the provider's code, or with ``then_online``
   go through the online path before the run ends.

A run that is stopped (``stop()``, Ctrl-C) or detached leaves its batches running at the
provider; starting it again (or :func:`~headway.batch.batchapi.collect`) picks them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

from headway._clock import Clock, resolve_clock
from headway._idset import IdSet
from headway.batch.batchapi.plan import (
    BatchLimits,
    Kind,
    PartWriter,
    batch_problem,
    embedding_inputs,
    group_key,
    provider_line,
)
from headway.batch.batchapi.remote import UNFINISHED, AnthropicBatches, OpenAIBatches, Remote
from headway.batch.batchapi.state import BatchState, Part, state_path
from headway.batch.jobs import InvalidLine, read_requests
from headway.batch.ledger import Ledger, Result, error_code
from headway.batch.sender import SenderSettings, Target
from headway.batch.summary import BatchStats
from headway.errors import (
    APIClientError,
    ConfigurationError,
    HeadwayError,
    RateLimitError,
    is_retryable,
)

__all__ = [
    "BatchAPISettings",
    "BatchProgress",
    "PlainBatchProgress",
    "ProviderBatchRun",
    "RunOutcome",
    "open_remote",
]

T = TypeVar("T")


@dataclass(slots=True)
class BatchAPISettings:
    """How to reach a provider's Batch API and how to size and watch its batches.

    Attributes:
        target: base URL, key, auth and headers (see :func:`headway.batch.sender.resolve_target`).
        kind: ``"openai"`` (Files + Batches) or ``"anthropic"`` (Message Batches).
        provider: the ``--provider`` name, if any (recorded so a later run can resume).
        api_key_env: the key's environment variable (recorded by name, never the key).
        limits: per-batch limits (default: the provider's).
        poll_interval: seconds between the first polls; grows 1.5x while nothing changes.
        max_poll_interval: the longest wait between polls.
        requeue_delay: seconds before a batch refused for the enqueued-token or queue
            limit is submitted again.
        max_attempts: attempts of each remote step before it counts as failed.
        timeout: seconds per HTTP attempt (uploads and downloads can be large).
        lookup_window: seconds a batch create whose outcome is unknown (no answer, a
            timeout, a 5xx other than 503/529) is looked for at the provider before it
            is sent again: long enough for a create still in progress, or a listing
            that lags, to show the batch the first attempt made.
    """

    target: Target
    kind: Kind = "openai"
    provider: str | None = None
    api_key_env: str | None = None
    limits: BatchLimits | None = None
    poll_interval: float = 5.0
    max_poll_interval: float = 120.0
    requeue_delay: float = 60.0
    max_attempts: int = 8
    timeout: float = 600.0
    lookup_window: float = 120.0

    def resolved_limits(self) -> BatchLimits:
        return self.limits or BatchLimits.for_provider(self.kind)


class BatchProgress(Protocol):
    """Shown the parts after every poll."""

    def update(self, parts: list[Part], etas: dict[str, float | None]) -> None: ...


_STATUS_WORDS = {
    "planned": "waiting to upload",
    "uploading": "uploading",
    "uploaded": "waiting to be created",
    "creating": "creating",
}


def describe(part: Part, eta: float | None = None) -> str:
    """One line about a part: ``batch_x: in_progress 120/500, ETA 3m``."""
    name = part.batch_id or part.key
    if part.status == "collected":
        left = f", {len(part.unfinished)} left unfinished" if part.unfinished else ""
        return f"{name}: collected ({len(part.ids)} requests{left})"
    if part.status != "submitted":
        return f"{name}: {_STATUS_WORDS.get(part.status, part.status)} ({len(part.ids)} requests)"
    done, total = part.counts
    total = total or len(part.ids)
    text = f"{name}: {part.remote}"
    if part.remote in ("in_progress", "finalizing", "cancelling", "canceling"):
        text += f" {done:,}/{total:,}"
    if eta is not None:
        text += f", ETA {_duration(eta)}"
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class PlainBatchProgress:
    """Prints a line for each batch whose status or count changed."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self._last: dict[str, str] = {}

    def update(self, parts: list[Part], etas: dict[str, float | None]) -> None:
        for part in parts:
            line = describe(part, etas.get(part.key))
            key = part.key
            base = line.split(", ETA")[0]
            if self._last.get(key) != base:
                self._last[key] = base
                print(f"headway: {line}", file=self.stream, flush=True)


@dataclass(slots=True)
class RunOutcome:
    """What a run did: counts, the parts, whether it detached, what went online."""

    stats: BatchStats
    state: BatchState
    detached: bool = False
    online: int = 0
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def pending(self) -> int:
        """Batches still running at the provider."""
        return len(self.state.live)


@asynccontextmanager
async def open_remote(
    settings: BatchAPISettings, *, clock: Clock | None = None
) -> AsyncIterator[OpenAIBatches | AnthropicBatches]:
    """Open the provider adapter (two clients on one connection pool)."""
    from headway.http.client import AsyncAPIClient
    from headway.http.transports import AiohttpTransport
    from headway.resilience.policy import Policy
    from headway.resilience.retry import RetryPolicy

    target = settings.target
    retry = RetryPolicy(
        max_retries=settings.max_attempts - 1,
        base_delay=1.0,
        max_delay=60.0,
        budget=None,
        clock=clock,
        name="batchapi",
    )
    transport = AiohttpTransport(max_connections=8, timeout=settings.timeout)
    common: dict[str, Any] = {
        "timeout": settings.timeout,
        "headers": target.headers,
        "auth": target.key(),
        "auth_type": target.auth,
        "transport": transport,
        "token_estimator": None,
    }
    try:
        async with (
            AsyncAPIClient(
                target.base_url,
                policy=Policy(retry=retry, clock=clock, name="batchapi"),
                name="headway-batchapi",
                **common,
            ) as client,
            AsyncAPIClient(target.base_url, name="headway-batchapi-create", **common) as once,
        ):
            if settings.kind == "anthropic":
                yield AnthropicBatches(client, once)
            else:
                yield OpenAIBatches(client, once)
    finally:
        await transport.aclose()


class ProviderBatchRun:
    """One run of the provider-batch engine over a result file (see the module docs).

    Args:
        settings: the provider and the batch limits.
        output: the result file (its sidecar is ``output + ".batches.json"``).
        errors: an optional separate file for failed results.
        retry_failed: send again the requests whose earlier result is a failure.
        fsync: fsync the result files after each write.
        progress: shown the batches after every poll.
        clock: the clock polls sleep on.
    """

    def __init__(
        self,
        settings: BatchAPISettings,
        output: str | os.PathLike[str],
        *,
        errors: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        fsync: bool = False,
        progress: BatchProgress | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.output = os.fspath(output)
        self.errors = None if errors is None else os.fspath(errors)
        self.retry_failed = retry_failed
        self.fsync = fsync
        self.progress = progress
        self.clock = resolve_clock(clock)
        self.stats = BatchStats()
        self.notes: list[str] = []
        self.state: BatchState | None = None
        self._ledger: Ledger | None = None
        self._done = IdSet()  # the ledger's skip while it is open
        self._stop = asyncio.Event()
        self._not_before: dict[str, float] = {}
        self._seen: dict[str, tuple[float, int]] = {}
        self._resumed: set[str] = set()
        self._online: set[str] = set()

    # -- control --------------------------------------------------------------------------
    def stop(self) -> None:
        """Detach: finish the step under way, save the state, leave the batches running."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- state ----------------------------------------------------------------------------
    def _load_state(self, input: str | None) -> BatchState:
        s = self.settings
        if BatchState.exists(self.output):
            state = BatchState.load(self.output)
            if state.kind != s.kind or state.base_url.rstrip("/") != s.target.base_url.rstrip("/"):
                raise ConfigurationError(
                    f"{self.output} has batches at {state.kind} ({state.base_url}); "
                    "use the same provider, or another -o"
                )
            self._resumed = {p.key for p in state.parts if p.live}
            # the latest way to the key wins (`headway batches status` uses it)
            state.api_key_env = s.api_key_env or state.api_key_env
            state.provider = s.provider or state.provider
            if self.errors is None:  # failed results go where the submitting run sent them
                self.errors = state.errors
            else:
                state.errors = self.errors
            if input is not None:
                state.input = os.path.abspath(input)
            return state
        state = BatchState.new(
            self.output,
            kind=s.kind,
            base_url=s.target.base_url,
            api_key_env=s.api_key_env,
            input=None if input is None else os.path.abspath(input),
            errors=self.errors,
        )
        state.provider = s.provider
        return state

    def _write(self, result: Result, shape: str = "openai") -> None:
        if shape != "openai" and hasattr(result, "shape"):
            # the ledger writes the line in the input line's shape (headway.batch.output)
            setattr(result, "shape", shape)  # noqa: B010
        assert self._ledger is not None
        self._ledger.write(result)
        self.stats.record(result)
        self._done.add(result.custom_id)

    # -- the whole run --------------------------------------------------------------------
    async def run(
        self,
        input: str | os.PathLike[str] | None,
        *,
        detach: bool = False,
        wait: bool = True,
        then_online: bool = False,
        online: SenderSettings | None = None,
    ) -> RunOutcome:
        """Plan ``input`` (``None``: only pick up what the state holds), submit, then
        (unless ``detach`` or not ``wait``) poll and collect; with ``then_online`` send
        what the batches left unfinished through the online path (``online`` settings).
        """
        with exclusive(self.output):
            return await self._run(
                input, detach=detach, wait=wait, then_online=then_online, online=online
            )

    async def _run(
        self,
        input: str | os.PathLike[str] | None,
        *,
        detach: bool,
        wait: bool,
        then_online: bool,
        online: SenderSettings | None,
    ) -> RunOutcome:
        t0 = self.clock.now()
        path = None if input is None else os.fspath(input)
        state = self.state = self._load_state(path)
        ledger = self._ledger = Ledger(
            self.output,
            self.errors,
            retry_failed=self.retry_failed,
            fsync=self.fsync,
            digests=False,  # what earlier results answered: not checked here
        )
        ledger.open()
        self.notes.extend(ledger.notes)
        self._done = ledger.skip  # grows as results are written; closed with it
        detached = False
        try:
            if path is not None:
                self._plan(path, then_online=then_online)
            else:
                self._unfinished_from_state(then_online)
            state.save()
            async with open_remote(self.settings, clock=self.clock) as remote:
                await self._submit_all(remote)
                if detach or self.stopping:
                    detached = bool(state.live)
                elif wait:
                    detached = await self._poll(remote, then_online=then_online)
                else:
                    await self._poll_once(remote, then_online=then_online)
        finally:
            ledger.close()
            self._ledger = None
            state.save()
        outcome = RunOutcome(self.stats, state, detached=detached, notes=self.notes)
        if then_online and self._online and not state.live and not detached:
            if online is None:
                raise ConfigurationError("then_online needs the online settings")
            if state.input is None:
                raise ConfigurationError("then_online needs the input file")
            outcome.online = await self._run_online(state.input, online)
        outcome.elapsed = self.clock.now() - t0
        return outcome

    # -- plan -----------------------------------------------------------------------------
    def _unfinished_from_state(self, then_online: bool) -> None:
        state = self.state
        assert state is not None
        for part in state.parts:
            if part.status != "collected":
                continue
            for cid, code in part.unfinished.items():
                if cid in self._done:
                    continue
                if then_online:
                    self._online.add(cid)
                else:
                    self._write(Result.failure(cid, code, _unfinished_message(code)))

    def _plan(self, input: str, *, then_online: bool) -> None:
        state = self.state
        assert state is not None
        kind = self.settings.kind
        limits = self.settings.resolved_limits()
        stats = self.stats
        live_ids: set[str] = set()
        for part in state.live:
            live_ids.update(part.ids)
        unfinished: dict[str, str] = {}
        for part in state.parts:
            if part.status == "collected":
                unfinished.update(part.unfinished)
        directory = self.output + ".batches.d"
        os.makedirs(directory, exist_ok=True)
        writers: dict[tuple[str, str, str], PartWriter] = {}
        overhead = 1 if kind == "anthropic" else 0
        count_tokens = limits.max_tokens is not None
        if count_tokens:
            from headway.http.tokens import estimate_tokens
        seen: set[str] = set()
        rejected: list[str] = []
        default_url = self.settings.target.default_url
        for item in read_requests(input, default_url=default_url):
            cid = item.custom_id
            if stats.repeated(seen, cid, item.line):
                continue
            if cid in self._done:
                stats.skipped += 1
                continue
            if isinstance(item, InvalidLine):
                self._write(Result.failure(cid, "invalid_request", item.message))
                continue
            if cid in live_ids:
                continue
            if cid in unfinished:
                if then_online:
                    self._online.add(cid)
                else:
                    code = unfinished[cid]
                    self._write(Result.failure(cid, code, _unfinished_message(code)))
                continue
            problem = batch_problem(item, kind)
            key = group_key(item, kind)
            line = provider_line(item, kind)
            tokens = estimate_tokens(item.body, method="heuristic") if count_tokens else 0
            writer = writers.get(key)
            if writer is None:
                prefix = f"hw-{state.token}-g{len(writers) + 1:03d}-{len(state.parts):05d}"
                writer = writers[key] = PartWriter(directory, prefix, limits, overhead)
            if problem is None and not writer.fits_alone(len(line), tokens):
                problem = (
                    f"line {item.line} (custom_id {cid}): {len(line):,} bytes / {tokens:,} "
                    f"tokens is more than one batch may hold ({limits.max_bytes:,} bytes, "
                    f"{limits.max_tokens or '-'} tokens); use --via online"
                )
            if problem is not None:
                rejected.append(problem)
                shape = "anthropic" if item.kind == "anthropic" else "openai"
                self._write(Result.failure(cid, "invalid_request", problem), shape)
                continue
            inputs = embedding_inputs(item) if item.url == "/v1/embeddings" else 0
            writer.add(cid, line, tokens, inputs)
        stats.total = len(seen)
        for (endpoint, model, shape), writer in writers.items():
            for raw in writer.close():
                key = os.path.basename(raw["path"]).removesuffix(".jsonl")
                part = Part(key, endpoint, model, raw["ids"], raw["path"], tokens=raw["tokens"])
                part.shape = shape
                state.parts.append(part)
        if rejected:
            more = f" (and {len(rejected) - 3} more)" if len(rejected) > 3 else ""
            self.notes.append(
                f"{len(rejected)} line(s) cannot go in a batch and were written as "
                f"invalid_request{more}: " + "; ".join(rejected[:3])
            )

    # -- submit ---------------------------------------------------------------------------
    async def _submit_all(self, remote: OpenAIBatches | AnthropicBatches) -> None:
        state = self.state
        assert state is not None
        for part in list(state.parts):
            if self.stopping:
                return
            if part.status in ("planned", "uploading", "uploaded", "creating"):
                await self._submit(remote, part)

    def _queued_tokens(self, model: str) -> int:
        assert self.state is not None
        return sum(
            p.tokens
            for p in self.state.parts
            if p.status == "submitted" and p.model == model and p.remote not in _ENDED
        )

    async def _careful(
        self,
        step: Callable[[], Awaitable[T]],
        lookup: Callable[[], Awaitable[T | None]],
        *,
        look_first: bool,
        watch: float = 0.0,
        first_watch: float = 0.0,
    ) -> T:
        """Run a creating step; after an unknown outcome, adopt what it made, else retry.

        ``watch``: seconds to keep looking for what an attempt with no answer made before
        sending it again (a create still in progress, a listing that lags);
        ``first_watch``: the same for the first look of a resumed step (``look_first``).
        """
        delay = 1.0
        attempts = self.settings.max_attempts
        window = first_watch
        for attempt in range(attempts):
            if look_first or attempt:
                found = await self._look(lookup, window)
                if found is not None:
                    return found
            try:
                return await step()
            except (APIClientError, HeadwayError) as exc:
                if isinstance(exc, RateLimitError) or not is_retryable(exc):
                    raise
                if attempt + 1 >= attempts:
                    raise
                # A provider that said it is unavailable or overloaded took nothing in:
                # one look is enough. Any other failure may hide a batch being made.
                refused = isinstance(exc, APIClientError) and exc.status_code in (503, 529)
                window = 0.0 if refused else watch
                wait = max(delay, float(getattr(exc, "retry_after", 0.0) or 0.0))
                await self.clock.sleep(wait)
                delay = min(delay * 2, 60.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _look(self, lookup: Callable[[], Awaitable[T | None]], window: float) -> T | None:
        """Look up what an attempt made, again and again for ``window`` seconds.

        Raises :class:`_StoppedLooking` if the run is stopped meanwhile: the step stays
        unresolved in the state, and the next run looks again before sending it.
        """
        clock = self.clock
        end = clock.now() + window
        pause = 2.0
        while True:
            found = await lookup()
            if found is not None:
                return found
            left = end - clock.now()
            if left <= 0:
                return None
            if await self._nap(min(pause, left)):
                raise _StoppedLooking
            pause = min(pause * 2, 15.0)

    async def _submit(self, remote: OpenAIBatches | AnthropicBatches, part: Part) -> bool:
        """Take ``part`` as far as a created batch; False if it must wait."""
        state = self.state
        assert state is not None
        if self.clock.now() < self._not_before.get(part.key, float("-inf")):
            return False
        resumed = part.key in self._resumed
        self._resumed.discard(part.key)
        try:
            payload = await asyncio.to_thread(_read_bytes, part.payload)
        except FileNotFoundError:
            if part.status != "creating" and part.batch_id is None:
                self._fail_part(part, "internal_error", f"the batch file {part.payload} is gone")
                return True
            payload = b""
        filename = os.path.basename(part.payload)
        try:
            if isinstance(remote, OpenAIBatches):
                if (
                    part.status == "uploaded"
                    and resumed
                    and part.file_id is not None
                    and not await remote.file_exists(part.file_id)
                ):
                    part.status, part.file_id = "uploading", None
                if part.status == "planned":
                    part.status = "uploading"
                    state.save()
                if part.status == "uploading":
                    r = remote

                    async def upload() -> str:
                        return await r.upload(filename, payload)

                    async def find() -> str | None:
                        return await r.find_file(filename, len(payload))

                    part.file_id = await self._careful(upload, find, look_first=resumed)
                    part.status = "uploaded"
                    state.save()
            elif part.status in ("planned", "uploading", "uploaded"):
                part.status = "uploaded"
            limit = self.settings.resolved_limits().max_tokens
            if (
                part.status == "uploaded"
                and limit is not None
                and self._queued_tokens(part.model) + part.tokens > limit
            ):
                return False  # the model's enqueued-token limit: wait for earlier batches
            # Only a create an earlier run (or attempt) sent may have made a batch already.
            look_first = resumed and part.status == "creating"
            if part.status == "uploaded":
                # What the provider lists before the create: what it makes comes after.
                part.create_mark = await remote.mark()
                part.status = "creating"
                part.created_after = time.time()  # wall time: recognises the batch later
                state.save()
            size = len(part.ids)
            after = part.created_after or 0.0

            async def create() -> Remote:
                return await remote.create(part.file_id or "", part.endpoint, part.key, payload)

            async def find_batch() -> Remote | None:
                return await remote.find_batch(
                    part.file_id,
                    size,
                    after,
                    key=part.key,
                    mark=part.create_mark,
                    exclude=self._claimed(part),
                )

            watch = first = self.settings.lookup_window
            if look_first and part.created_after is not None:
                # A run that died while creating: what it sent may still be in the making,
                # for what is left of the window since it was sent.
                first = min(watch, max(0.0, part.created_after + watch - time.time()))
            made = await self._careful(
                create, find_batch, look_first=look_first, watch=watch, first_watch=first
            )
        except _StoppedLooking:
            self._resumed.add(part.key)  # look before creating, whenever it goes on
            return False
        except RateLimitError as exc:
            # A queue limit (Anthropic) or the provider's own pacing: try again later.
            if part.status == "creating":
                part.status = (
                    "uploaded" if part.file_id or remote.kind == "anthropic" else "planned"
                )
            self._not_before[part.key] = self.clock.now() + max(
                self.settings.requeue_delay, exc.retry_after or 0.0
            )
            state.save()
            return False
        except (APIClientError, HeadwayError) as exc:
            if not _refused(exc):
                if part.status == "creating" and _answered_no(exc):
                    # The provider answered the create with a refusal (a key, a path): it
                    # made nothing, so a resume need not look for it before creating.
                    part.status = "uploaded"
                    state.save()
                raise  # not about this part (a key, a server without the API...): stop
            what = "uploaded" if part.status == "uploading" else "created"
            self._fail_part(part, error_code(exc), f"the batch could not be {what}: {exc}")
            return True
        part.batch_id = made.id
        part.status = "submitted"
        self._observe(part, made)
        state.save()
        return True

    def _claimed(self, part: Part) -> set[str]:
        assert self.state is not None
        ids = {p.batch_id for p in self.state.parts if p is not part and p.batch_id}
        for p in self.state.parts:
            ids.update(p.old_batches)
        return {i for i in ids if i}

    def _fail_part(self, part: Part, code: str, message: str) -> None:
        for cid in part.ids:
            if cid not in self._done:
                self._write(Result.failure(cid, code, message), part.shape)
        part.status = "collected"
        assert self.state is not None
        self.state.save()
        self.notes.append(f"{part.key}: {message}")

    # -- poll and collect -----------------------------------------------------------------
    def _observe(self, part: Part, remote: Remote) -> bool:
        changed = (part.remote, part.counts) != (remote.status, [remote.done, remote.total])
        part.remote = remote.status
        part.counts = [remote.done, remote.total]
        if remote.status in ("in_progress", "finalizing") and part.key not in self._seen:
            self._seen[part.key] = (self.clock.now(), remote.done)
        return changed

    def _etas(self) -> dict[str, float | None]:
        assert self.state is not None
        now = self.clock.now()
        etas: dict[str, float | None] = {}
        for part in self.state.parts:
            first = self._seen.get(part.key)
            done, total = part.counts
            if first is None or part.status != "submitted" or done <= first[1]:
                etas[part.key] = None
                continue
            rate = (done - first[1]) / max(now - first[0], 1e-9)
            etas[part.key] = max(0.0, (total - done) / rate)
        return etas

    def _show(self) -> None:
        if self.progress is not None and self.state is not None:
            self.progress.update(self.state.parts, self._etas())

    async def _poll_once(
        self, remote: OpenAIBatches | AnthropicBatches, *, then_online: bool
    ) -> bool:
        state = self.state
        assert state is not None
        changed = False
        for part in list(state.parts):
            if part.status != "submitted" or part.batch_id is None:
                continue
            try:
                got = await remote.retrieve(part.batch_id)
            except (APIClientError, HeadwayError) as exc:
                self.notes.append(f"{part.batch_id}: could not poll ({exc}); will try again")
                continue
            if self._observe(part, got):
                changed = True
                state.save()
            if got.ended:
                try:
                    await self._collect(remote, part, got, then_online=then_online)
                except (APIClientError, HeadwayError) as exc:
                    # A download broken off: what was written stays, the rest comes at
                    # the next poll (the ledger skips what is already there).
                    self.notes.append(f"{part.batch_id}: download interrupted ({exc}); retrying")
                    continue
                changed = True
        for part in list(state.parts):
            if (
                part.status in ("planned", "uploading", "uploaded", "creating")
                and not self.stopping
            ):
                changed = await self._submit(remote, part) or changed
        self._show()
        return changed

    async def _poll(self, remote: OpenAIBatches | AnthropicBatches, *, then_online: bool) -> bool:
        """Poll until every part is collected; True if stopped (detached) first."""
        state = self.state
        assert state is not None
        interval = self.settings.poll_interval
        self._show()
        while state.live:
            if self.stopping:
                return True
            if await self._nap(interval):
                return True
            changed = await self._poll_once(remote, then_online=then_online)
            if changed:
                interval = self.settings.poll_interval
            else:
                interval = min(interval * 1.5, self.settings.max_poll_interval)
        return False

    async def _nap(self, seconds: float) -> bool:
        """Sleep ``seconds`` on the clock; True if stopped meanwhile."""
        loop = asyncio.get_running_loop()
        sleeper = loop.create_task(self.clock.sleep(seconds))
        stopper = loop.create_task(self._stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            for task in (sleeper, stopper):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self.stopping

    async def _collect(
        self,
        remote: OpenAIBatches | AnthropicBatches,
        part: Part,
        got: Remote,
        *,
        then_online: bool,
    ) -> None:
        state = self.state
        assert state is not None
        assert part.batch_id is not None
        ids = set(part.ids)
        if got.status == "failed":
            codes = [str(e.get("code")) for e in got.errors]
            alone = not any(
                p is not part and p.status == "submitted" and p.model == part.model
                for p in state.parts
            )
            if "token_limit_exceeded" in codes and alone and len(part.old_batches) >= 4:
                # Refused again and again with nothing of ours ahead of it: too big for the
                # limit on its own. Say so instead of trying forever.
                part.old_batches.append(part.batch_id)
                self._fail_part(
                    part,
                    "token_limit_exceeded",
                    "the batch is larger than the model's enqueued-token limit; run again "
                    "with --batch-max-tokens below that limit (and --retry-failed)",
                )
                return
            if "token_limit_exceeded" in codes:
                # Refused for the model's enqueued-token limit: submit it again later.
                part.old_batches.append(part.batch_id)
                part.batch_id, part.status, part.remote = None, "uploaded", None
                self._not_before[part.key] = self.clock.now() + self.settings.requeue_delay
                self.notes.append(
                    f"{part.key}: the provider's enqueued-token limit was reached; "
                    "it is submitted again once earlier batches finish"
                )
                state.save()
                return
            by_line = {e.get("line"): e for e in got.errors if isinstance(e.get("line"), int)}
            first = got.errors[0] if got.errors else {}
            for n, cid in enumerate(part.ids, 1):
                if cid in self._done:
                    continue
                err = by_line.get(n, first)
                code = str(err.get("code") or "batch_failed")
                message = str(err.get("message") or "batch failed")
                self._write(Result.failure(cid, code, message), part.shape)
        else:
            written: set[str] = set()
            ours = foreign = 0
            async for result in remote.results(got):
                cid = result.custom_id
                if cid in ids:
                    ours += 1
                else:
                    foreign += 1
                if cid not in ids or cid in self._done or cid in written:
                    continue
                written.add(cid)
                code = result.code or ""
                if then_online and code in UNFINISHED:
                    part.unfinished[cid] = code
                    continue
                self._write(result, part.shape)
            if foreign and not ours:
                # Not this part's batch at all (adopted after an unanswered create, it was
                # someone else's of the same size): submit the part again.
                part.old_batches.append(part.batch_id)
                part.batch_id, part.status, part.remote = None, "uploaded", None
                self.notes.append(
                    f"{got.id}: its results are not {part.key}'s lines (a batch of the "
                    "same size taken for a lost create); the part is submitted again"
                )
                state.save()
                return
            missing_code = _MISSING.get((remote.kind, got.status), "invalid_response")
            for cid in part.ids:
                if cid in self._done or cid in written:
                    continue
                if then_online:
                    part.unfinished[cid] = missing_code
                else:
                    message = _unfinished_message(missing_code)
                    self._write(Result.failure(cid, missing_code, message), part.shape)
        if then_online:
            self._online.update(c for c in part.unfinished if c not in self._done)
        part.status = "collected"
        state.save()
        with contextlib.suppress(FileNotFoundError):
            os.remove(part.payload)
        if isinstance(remote, OpenAIBatches) and part.file_id:
            with contextlib.suppress(APIClientError, HeadwayError):
                await remote.delete_file(part.file_id)

    # -- the online path ------------------------------------------------------------------
    async def _run_online(self, input: str, online: SenderSettings) -> int:
        from headway.batch.runner import BatchRunner
        from headway.batch.sender import open_sender

        ids = self._online
        runner = BatchRunner(
            _unused_sender,
            input,
            self.output,
            errors=self.errors,
            concurrency=online.concurrency,
            default_url=online.target.default_url,
            fsync=self.fsync,
            owns=ids.__contains__,
            clock=self.clock,
        )
        async with open_sender(online, clock=self.clock) as send:
            runner.sender = send
            stats = await runner.run()
        self.notes.extend(runner.notes)
        self.stats.succeeded += stats.succeeded
        self.stats.failed += stats.failed
        self.stats.errors_by_code.update(stats.errors_by_code)
        self.stats.retries += stats.retries
        self.stats.rate_limited += stats.rate_limited
        self.stats.tokens += stats.tokens
        return stats.written

    # -- status and cancel ----------------------------------------------------------------
    async def refresh(self, *, cancel: bool = False) -> BatchState:
        """Poll (or cancel) every batch of the state once and collect those that ended."""
        with exclusive(self.output):
            return await self._refresh(cancel=cancel)

    async def _refresh(self, *, cancel: bool) -> BatchState:
        state = self.state = self._load_state(None)
        ledger = self._ledger = Ledger(self.output, self.errors, fsync=self.fsync, digests=False)
        ledger.open()
        self._done = ledger.skip  # grows as results are written; closed with it
        try:
            async with open_remote(self.settings, clock=self.clock) as remote:
                if cancel:
                    for part in state.live:
                        if part.batch_id is None:
                            continue
                        try:
                            self._observe(part, await remote.cancel(part.batch_id))
                        except APIClientError as exc:
                            self.notes.append(f"{part.batch_id}: {exc.message}")
                    state.save()
                self._stop.set()  # poll and collect, submit nothing new
                await self._poll_once(remote, then_online=False)
        finally:
            ledger.close()
            self._ledger = None
            state.save()
        return state


class _StoppedLooking(Exception):
    """The run was stopped while it looked for what an unanswered create made."""


@contextlib.contextmanager
def exclusive(output: str) -> Iterator[None]:
    """Hold the lock of ``output``'s batches: one run at a time may submit or collect.

    Two runs on one OUT at once could both submit the same lines. The lock is an
    ``flock`` on ``OUT.batches.json.lock``, released when the process ends however it
    ends (so a killed run never leaves it held).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    path = state_path(output) + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigurationError(
                f"another headway process is working on the batches of {output}; "
                "wait for it to end (or stop it) and run again"
            ) from None
        yield
    finally:
        os.close(fd)


#: The code of a line a batch has no result for, by (provider, final status).
_MISSING = {
    ("openai", "cancelled"): "batch_cancelled",
    ("openai", "expired"): "batch_expired",
    ("anthropic", "ended"): "expired",
}

_ENDED = frozenset({"completed", "expired", "cancelled", "failed", "ended"})


def _refused(exc: BaseException) -> bool:
    """Whether the provider refused this part's content (nothing was made; its lines fail).

    Other errors (a bad key, a server without the Batch API, an outage that outlasted the
    retries) end the run instead: the state is saved and the next run resumes.
    """
    return isinstance(exc, APIClientError) and exc.status_code in (400, 413, 422)


def _answered_no(exc: BaseException) -> bool:
    """Whether the provider answered a request with a refusal (4xx): it made nothing."""
    return isinstance(exc, APIClientError) and 400 <= (exc.status_code or 0) < 500


def _unfinished_message(code: str) -> str:
    if code == "invalid_response":
        return "The batch's results have no (readable) line for this request."
    if "cancel" in code:
        return "This request was not executed because the batch was cancelled."
    return "This request could not be executed before the completion window expired."


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def _unused_sender(_request: Any) -> Any:  # pragma: no cover - replaced before running
    raise RuntimeError("no sender")
