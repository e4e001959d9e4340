"""The batch runner: input file in, result ledger out, exactly once.

The runner streams the input (nothing but the set of custom_ids grows with its size, and
that moves to disk past a million ids: see :mod:`headway._idset`),
skips what an earlier run already wrote, hands each request to a *sender* from a fixed
pool of ``concurrency`` workers, and writes each result the moment it completes.

A sender is any async callable that takes a :class:`~headway.batch.jobs.BatchRequest`
and returns a :class:`Response` (or raises a :mod:`headway.errors` error). Pacing,
retries and the breaker live in the sender (:func:`headway.batch.sender.endpoint_sender`
builds one on headway's HTTP layer); the runner only counts what it is told through
:func:`note_retry`.

Stopping: :meth:`BatchRunner.stop` (wired to SIGINT/SIGTERM by :func:`signal_handlers`)
stops dispatching and lets requests in flight finish within ``grace`` seconds; a second
call abandons them. Abandoned requests are not written, so the next run sends them.

>>> import asyncio, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "in.jsonl").write_text('{"custom_id": "a", "body": {"x": 1}}\\n')
>>> async def echo(request):
...     return Response(200, {"echo": request.body})
>>> stats = asyncio.run(BatchRunner(echo, d / "in.jsonl", d / "out.jsonl").run())
>>> stats.succeeded, (d / "out.jsonl").read_text().count("\\n")
(1, 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from headway._clock import LOOP_CLOCK, Clock, resolve_clock
from headway._idset import IdSet
from headway.batch.jobs import (
    DEFAULT_URL,
    STDIO,
    BatchRequest,
    InvalidLine,
    line_counts,
    open_input,
    read_requests,
)
from headway.batch.ledger import Ledger, Result, request_digest, result_from_error
from headway.batch.outage import RunJudge, Verdict
from headway.batch.output import shape_for
from headway.batch.progress import NullProgress, ProgressReporter
from headway.batch.summary import BatchStats
from headway.errors import (
    ConfigurationError,
    QuotaExceededError,
    RateLimitError,
    status_error_code,
)

__all__ = [
    "BatchRunner",
    "Response",
    "ResumeMismatchError",
    "Sender",
    "note_rate",
    "note_retry",
    "note_wait",
    "signal_handlers",
    "status_error_code",
]


#: Seconds a result line waits in memory at most before it is written (see
#: :class:`~headway.batch.ledger.LineBuffer`): what a killed run may have to send again.
FLUSH_EVERY = 0.05


class ResumeMismatchError(ConfigurationError):
    """The output holds results for other requests than the input's (see ``check_resume``)."""


@dataclass(slots=True)
class Response:
    """What a sender returns: the final answer to one request.

    ``request_id`` defaults to the ``x-request-id`` (or ``request-id``) header.
    """

    status_code: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    request_id: str | None = None


class Sender(Protocol):
    """Sends one request; returns its :class:`Response` or raises a headway error."""

    async def __call__(self, request: BatchRequest, /) -> Response: ...


class _Job:
    __slots__ = ("judge", "reason", "retries", "stats", "waited")

    def __init__(self, stats: BatchStats, judge: RunJudge | None = None) -> None:
        self.stats = stats
        self.retries = 0
        self.reason: str | None = None
        self.judge = judge
        self.waited = 0.0  # seconds spent waiting for the rate limit (and backoff)


_CURRENT: ContextVar[_Job | None] = ContextVar("headway_batch_job", default=None)


def note_wait(seconds: float) -> None:
    """Tell the runner that the request being sent in this task waited ``seconds``.

    The limiter's waits (and retry backoff) are added up per request, so that the summary
    splits its latency into time waiting and server time. Outside a runner it does nothing.
    """
    job = _CURRENT.get()
    if job is not None and seconds > 0:
        job.waited += seconds


def note_retry(
    exc: BaseException | None = None,
    *,
    rate_limited: bool | None = None,
    reason: str | None = None,
) -> None:
    """Tell the runner that the request being sent in this task is being retried.

    Senders call it before each retry (the HTTP sender does it for you); ``exc`` is the
    error that caused it, so 429s are counted (or say so with ``rate_limited``);
    ``reason`` (default: ``exc``'s text) is what an outage message names as its cause
    when the request ends on an open breaker, and the retry's cause in the summary when
    there is no exception. Outside a runner it does nothing.
    """
    job = _CURRENT.get()
    if job is None:
        return
    cause = reason
    if reason is None and exc is not None:
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        job.reason = reason
        if job.judge is not None:
            job.judge.retrying(reason)
    stats = job.stats
    if job.retries == 0:
        stats.retrying += 1
    job.retries += 1
    stats.retries += 1
    if rate_limited is None:
        rate_limited = isinstance(exc, RateLimitError) or getattr(exc, "status_code", None) == 429
    if rate_limited:
        stats.rate_limited += 1
    stats.note_retry_cause(exc, cause)


def note_rate(rate: float, limited_by: str, learned: Mapping[str, float]) -> None:
    """Tell the runner the request rate in force changed (progress line and summary).

    ``rate`` is per minute; ``limited_by`` says who sets it (``"server"`` or ``"user"``);
    ``learned`` is what the server advertised or probing found, per minute, by unit.
    Outside a runner it does nothing.
    """
    job = _CURRENT.get()
    if job is None:
        return
    job.stats.limit_text = f"{rate:,.0f}/min"
    job.stats.limit_rpm = rate
    job.stats.limited_by = "you" if limited_by == "user" else limited_by
    job.stats.learned = dict(learned)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None and not isinstance(headers, CIMultiDictProxy | CIMultiDict):
        lower = name.lower()
        for k, v in headers.items():
            if k.lower() == lower:
                return v
    return value


class BatchRunner:
    """Run every request of an input file through a sender, writing each result once.

    Args:
        sender: sends one request (see :class:`Sender`).
        input: the JSONL input (``.gz`` accepted).
        output: the result file; results already in it are not sent again.
        errors: optional separate file for failed results.
        retry_failed: send again the requests whose earlier result is a failure.
        concurrency: requests in flight at most (the number of workers).
        default_url: where bare request bodies go.
        progress: a progress reporter (default: none).
        grace: seconds in-flight requests get to finish after :meth:`stop`.
        fsync: fsync the result files after each write.
        owns: a filter on custom_ids: lines it rejects belong to another worker and are
            ignored (``headway run --shard K/N`` passes ``Shard(K, N).owns``).
        clock: the clock for elapsed time, ticks and the grace period.
        judge: the run-level judgement (outages, rejected keys; see
            :mod:`headway.batch.outage`); when it gives a :attr:`verdict`, the run stops and
            the unsent requests are left for the resume. ``None``: every failure is a result.
        target: where the requests go (e.g. the base URL); recorded with each result's
            request digest, so a resume against another server is refused.
        check_resume: refuse to resume when a result already in the output was answered
            for a different request (another input line, path, model or ``target``):
            :class:`ResumeMismatchError`, raised before anything is sent.
        secrets: values (API keys) masked in every line written.
        output_format: the result lines' shape: ``auto`` (each input line's own),
            ``openai`` or ``anthropic`` (see :mod:`headway.batch.output`).
        ledger: write results through this ledger instead of one on ``output``.
    """

    def __init__(
        self,
        sender: Sender,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        errors: str | os.PathLike[str] | None = None,
        retry_failed: bool = False,
        concurrency: int = 64,
        default_url: str = DEFAULT_URL,
        progress: ProgressReporter | None = None,
        grace: float = 30.0,
        fsync: bool = False,
        owns: Callable[[str], bool] | None = None,
        clock: Clock | None = None,
        judge: RunJudge | None = None,
        target: str = "",
        check_resume: bool = True,
        secrets: tuple[str, ...] = (),
        output_format: str = "auto",
        ledger: Ledger | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.sender = sender
        self.input = os.fspath(input)
        self.ledger = ledger or Ledger(
            output,
            errors,
            retry_failed=retry_failed,
            fsync=fsync,
            secrets=secrets,
            buffered=True,
            digests=check_resume,
        )
        self.judge = judge
        self.target = target
        self.check_resume = check_resume
        self.output_format = output_format
        self.concurrency = concurrency
        self.default_url = default_url
        self.owns = owns
        self.progress: ProgressReporter = progress or NullProgress()
        self.grace = grace
        self.clock = resolve_clock(clock)
        self.stats = BatchStats()
        self.elapsed = 0.0
        self._stopping = False
        self._abandon = asyncio.Event()
        self._queue: asyncio.Queue[BatchRequest | None] = asyncio.Queue(concurrency)
        self._grace_task: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._released = False
        self._started = False
        self._write_error: OSError | None = None
        self._record: Callable[[Result], None] | None = self.stats.record

    @property
    def notes(self) -> list[str]:
        """What opening the ledger repaired or removed."""
        return self.ledger.notes

    @property
    def verdict(self) -> Verdict | None:
        """Why the run judgement stopped the run (``None``: it did not)."""
        return None if self.judge is None else self.judge.verdict

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    def stop(self) -> None:
        """Stop dispatching; a second call abandons the requests in flight."""
        if self._stopping:
            self._abandon.set()
            return
        self._stopping = True
        self.stats.interrupted = True
        if self.judge is not None:
            self.judge.stop()  # requests waiting out an outage are left for the resume
        if self._reader is not None:
            self._reader.cancel()
            self._grace_task = asyncio.get_running_loop().create_task(self._grace_timer())

    def _halt(self) -> None:
        """The judgement stopped the run: stop dispatching, abandon what is in flight."""
        self._stopping = True
        if self._reader is not None:
            self._reader.cancel()
        self._abandon.set()

    async def _grace_timer(self) -> None:
        await self.clock.sleep(self.grace)
        self._abandon.set()

    def summary(self) -> dict[str, Any]:
        """The run's summary (see :meth:`BatchStats.summary`)."""
        return self.stats.summary(elapsed=self.elapsed)

    async def run(self) -> BatchStats:
        """Run the batch to its end (or until stopped) and return the counts."""
        if self._started:
            raise RuntimeError("a BatchRunner runs once; make a new one")
        self._started = True
        clock = self.clock
        stats = self.stats
        self._refuse_same_file()
        # The total (for the display's ETA) is counted while the first requests go out.
        # Only this worker's share of the lines with `owns`: known at the end.
        counted: BinaryIO | None = None
        if self.owns is None and self.input != STDIO:
            counted = open_input(self.input)  # a missing input fails here, as before
        try:
            self.ledger.open()
        except BaseException:
            if counted is not None:
                counted.close()
            raise
        buffer = getattr(self.ledger, "buffer", None)
        if buffer is not None:  # a result counts once its line is written
            buffer.on_written = stats.record
            self._record = None
        t0 = clock.now()
        tasks: list[asyncio.Task[None]] = []
        counter: asyncio.Task[None] | None = None
        ticker: asyncio.Task[None] | None = None
        watcher: asyncio.Task[None] | None = None
        flusher: asyncio.Task[None] | None = None
        judge = self.judge
        try:
            if self.check_resume and self.ledger.digests:
                self._check_resume()
            self.ledger.digests.close()  # checked: not needed any more
            self.progress.start(stats, t0)
            loop = asyncio.get_running_loop()
            ticker = loop.create_task(self._tick())
            if judge is not None:
                judge.on_verdict = self._halt
                watcher = loop.create_task(judge.watch())
            flush = getattr(self.ledger, "flush", None)
            if flush is not None:
                flusher = loop.create_task(self._flush(flush))
            reader = self._reader = loop.create_task(self._read())
            workers = [loop.create_task(self._worker()) for _ in range(self.concurrency)]
            tasks = [reader, *workers]
            if counted is not None:
                counter = loop.create_task(self._count(counted))
            if self._stopping:  # stopped before it started
                reader.cancel()
            await self._wait(reader, workers)
            if self._write_error is not None:
                raise self._write_error
            if judge is not None:
                for result in judge.held():  # streaks that never completed: ordinary results
                    self._write(result)
            if flusher is not None:
                self.ledger.flush()  # every result counted before the total is set
            if counter is not None:
                await counter
            if not self._stopping:
                stats.total = stats.done
        finally:
            if counter is not None:
                # not cancelled: an interrupted run's summary shows the input's total
                await asyncio.gather(counter, return_exceptions=True)
            if counted is not None:
                counted.close()
            for task in tasks:
                task.cancel()
            for extra in (ticker, self._grace_task, watcher, flusher):
                if extra is not None:
                    extra.cancel()
                    tasks.append(extra)
            await asyncio.gather(*tasks, return_exceptions=True)
            self.elapsed = clock.now() - t0
            try:
                self.ledger.close()  # writes what is buffered
            finally:
                self.progress.stop(stats, clock.now())
        return stats

    async def _count(self, f: BinaryIO) -> None:
        """Count the input's lines for the total, a chunk at a time between the requests."""
        n = 0
        for part in line_counts(f):
            n += part
            await asyncio.sleep(0)
        self.stats.total = n

    def _write(self, result: Result) -> None:
        written = self.ledger.write(result)
        if self._record is not None:
            self._record(written)

    async def _flush(self, flush: Callable[[], None]) -> None:
        """Write the buffered result lines every :data:`FLUSH_EVERY` seconds.

        A write that fails (a full disk, a closed pipe) ends the run: :meth:`run` raises
        its error once the workers have stopped.
        """
        sleep = self.clock.sleep
        while True:
            await sleep(FLUSH_EVERY)
            try:
                flush()
            except OSError as exc:
                self._write_error = exc
                self._halt()
                return

    def _refuse_same_file(self) -> None:
        """Refuse an output (or errors) file that is the input file itself (same inode)."""
        ledger = self.ledger
        for flag, path in (("-o/--output", ledger.output), ("--errors", ledger.errors)):
            if path is None or not os.path.exists(path):
                continue
            try:
                same = os.path.samefile(path, self.input)
            except OSError:  # pragma: no cover - vanished in between
                continue
            if same:
                raise ConfigurationError(
                    f"{flag} {path} is the input file itself; results would be appended to "
                    "the requests: write them to another file"
                )

    def _check_resume(self) -> None:
        """Before sending anything: the output's results must answer this input's lines."""
        digests, done = self.ledger.digests, self.ledger.skip
        target = self.target
        for item in read_requests(self.input, default_url=self.default_url):
            if isinstance(item, InvalidLine) or item.custom_id not in done:
                continue
            if not digests.answers(
                item.custom_id, request_digest(item.method, item.url, item.body, target)
            ):
                raise ResumeMismatchError(
                    f"{self.ledger.output} already holds a result for custom_id "
                    f"{item.custom_id!r} that answered a different request: line {item.line} "
                    f"of {self.input} differs (its body, path or model, or the server "
                    f"{target or '(unknown)'}). Write to another -o file, or add "
                    "--ignore-mismatch to resume anyway"
                )

    async def _wait(self, reader: asyncio.Task[None], workers: list[asyncio.Task[None]]) -> None:
        abandon = asyncio.get_running_loop().create_task(self._abandon.wait())
        pending: set[asyncio.Task[Any]] = {reader, *workers}
        failure: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending | {abandon}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(abandon)
                for task in done:
                    cancelled = task is abandon or task.cancelled()
                    exc = None if cancelled else task.exception()
                    if exc is not None and task is reader:
                        # The input broke off: finish what is in flight, then report it.
                        failure = exc
                        self._stopping = True
                    elif exc is not None:
                        raise exc
                    if task is reader and self._stopping:
                        self._release_workers()
                if abandon in done:
                    self.stats.abandoned = self.stats.in_flight
                    break
            if failure is not None:
                raise failure
        finally:
            abandon.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await abandon

    def _release_workers(self) -> None:
        """Drop what is queued and tell every worker to finish (when stopping)."""
        if self._released:
            return
        self._released = True
        queue = self._queue
        while not queue.empty():
            queue.get_nowait()
        for _ in range(self.concurrency):
            queue.put_nowait(None)

    async def _tick(self) -> None:
        progress, clock, stats = self.progress, self.clock, self.stats
        while True:
            await clock.sleep(progress.interval)
            progress.update(stats, clock.now())

    async def _read(self) -> None:
        stats, ledger, queue = self.stats, self.ledger, self._queue
        skip = ledger.skip
        owns = self.owns
        # Every custom_id read so far, for repeats: on disk beside the output past a
        # million of them (see headway._idset), so memory stays bounded.
        seen = IdSet(dir=getattr(ledger, "scratch_dir", None))
        n = 0
        try:
            for item in read_requests(self.input, default_url=self.default_url):
                if self._stopping:
                    break
                n += 1
                if n & 1023 == 0:
                    await self.clock.sleep(0)  # let the workers and the ticker breathe
                cid = item.custom_id
                if owns is not None and not owns(cid):
                    continue  # another worker's line (repeats hash alike, so they stay here)
                if stats.repeated(seen, cid, item.line):
                    continue
                if cid in skip:  # kept there: `seen` catches the id from now on
                    stats.skipped += 1
                    continue
                if isinstance(item, InvalidLine):
                    self._write(Result.failure(cid, "invalid_request", item.message))
                    continue
                await queue.put(item)
        finally:
            seen.close()
        if self._stopping:
            self._release_workers()
            return
        for _ in range(self.concurrency):
            await queue.put(None)
        self._released = True

    async def _worker(self) -> None:
        queue, stats, write = self._queue, self.stats, self._write
        # The loop clock read without looking the loop up each time (a worker lives in one).
        now = asyncio.get_running_loop().time if self.clock is LOOP_CLOCK else self.clock.now
        send, output_format = self.sender, self.output_format
        judge = self.judge
        target = self.target
        reading = True
        while True:
            if judge is not None and judge.resend:
                request = judge.resend.pop()
            elif not reading:
                return
            else:
                item = await queue.get()
                if item is None:
                    reading = False
                    continue
                request = item
            probe = False
            if judge is not None:
                gate = judge.gate_nowait() or await judge.gate()
                if gate == "stop":
                    return  # the run is over: this request is left for the resume
                probe = gate == "probe"
            job = _Job(stats, judge=judge)
            token = _CURRENT.set(job)
            stats.in_flight += 1
            t0 = now()
            try:
                response = await send(request)
            except QuotaExceededError as exc:
                # Waiting won't help and every line would fail alike: stop, write nothing
                # for this line (the next run sends it), say why once.
                if stats.stopped is None:
                    stats.stopped = f"quota exhausted: {exc.message}"
                    self.stop()
                stats.abandoned += 1
                return
            except RecursionError:
                result = Result.failure(
                    request.custom_id,
                    "invalid_response",
                    "the answer (or the request) nests too deeply to handle (RecursionError)",
                    latency=now() - t0,
                    attempts=job.retries + 1,
                )
            except Exception as exc:
                result = result_from_error(
                    request.custom_id, exc, latency=now() - t0, attempts=job.retries + 1
                )
            else:
                try:
                    result = self._result(request, response, now() - t0, job.retries + 1)
                except Exception as exc:  # a sender's odd answer costs its line, not the run
                    result = Result.failure(
                        request.custom_id,
                        "invalid_response",
                        f"the answer cannot be handled: {type(exc).__name__}: {exc}"[:500],
                    )
            finally:
                stats.in_flight -= 1
                if job.retries:
                    stats.retrying -= 1
                _CURRENT.reset(token)
                if probe and judge is not None:
                    judge.probe_done()
            result.digest = request_digest(request.method, request.url, request.body, target)
            if request.kind == "anthropic" or output_format != "auto":
                result.shape = shape_for(request.kind, output_format)
            result.metadata = request.metadata
            if judge is None:
                result.waited = job.waited
                write(result)
            else:
                for decided in judge.judge(request, result, hint=job.reason):
                    decided.waited = job.waited
                    write(decided)
            if self._stopping:
                return

    @staticmethod
    def _result(request: BatchRequest, response: Response, latency: float, attempts: int) -> Result:
        headers = response.headers
        rid = response.request_id
        if rid is None and headers:
            rid = _header(headers, "x-request-id") or _header(headers, "request-id")
        status = response.status_code
        if 200 <= status < 300:
            return Result.success(
                request.custom_id,
                status,
                response.body,
                request_id=rid,
                latency=latency,
                attempts=attempts,
            )
        return Result.failure(
            request.custom_id,
            status_error_code(status),
            f"HTTP {status}",
            status_code=status,
            request_id=rid,
            body=response.body,
            latency=latency,
            attempts=attempts,
        )


@contextlib.contextmanager
def signal_handlers(runner: BatchRunner) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``runner.stop()`` while the block runs.

    The first signal stops dispatching and lets in-flight requests finish; the second
    abandons them. Where the loop cannot take signal handlers, nothing is installed.
    """
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, runner.stop)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
