"""What the ``headway`` commands share: exit codes, usage errors, options, progress, summary."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from headway.batch.progress import NullProgress, PlainProgress, ProgressReporter, RichProgress
from headway.batch.runner import BatchRunner, note_wait, signal_handlers
from headway.batch.sender import SenderSettings, open_sender
from headway.batch.summary import render_summary, summary_text

if TYPE_CHECKING:
    from rich.console import Console

    from headway.batch.summary import BatchStats

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "UsageError",
    "option",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: ``-o -`` and the reader closed the pipe (the shell's code for a process ended by SIGPIPE).
EXIT_PIPE = 141

F = TypeVar("F", bound=Callable[..., Any])


#: Option types: a number above zero, a count from one, a file path.
POSITIVE = click.FloatRange(min=0, min_open=True)
COUNT = click.IntRange(min=1)
FILE = click.Path(dir_okay=False, path_type=Path)


def option(*decls: str, env: str | bool | None = None, **kw: Any) -> Callable[[F], F]:
    """``click.option`` whose default ``--help`` shows.

    ``env``: its environment variable; ``True`` for ``HEADWAY_`` and the flag's name
    (``--max-outage``: ``HEADWAY_MAX_OUTAGE``). ``choices``: the words it takes, the first
    by default.
    """
    choices = kw.pop("choices", None)
    if choices is not None:  # one of these words, the first by default
        kw["type"] = click.Choice(choices)
        kw.setdefault("default", choices[0])
    if "default" in kw and not kw.get("is_flag"):
        kw.setdefault("show_default", True)
    if env is True:
        env = "HEADWAY_" + decls[-1].lstrip("-").upper().replace("-", "_")
    decorator: Callable[[F], F] = click.option(*decls, envvar=env or None, **kw)
    return decorator


class UsageError(click.ClickException):
    """A usage problem reported as one line, exit code 2."""

    exit_code = EXIT_USAGE


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


#: The arguments the console script was given (after ``headway``), for resume commands.
ARGV: list[str] = []


def command_line(*, add: Sequence[str] = (), drop: Sequence[str] = ()) -> str:
    """The command as typed (``headway run ...``), with flags added or dropped."""
    args = [a for a in (ARGV or sys.argv[1:]) if a not in drop]
    args += [a for a in add if a not in args]
    return shlex.join(["headway", *args])


class _JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, the event's kind, source and fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": round(record.created, 6), "level": record.levelname}
        event = getattr(record, "headway_event", None)
        if event is not None:
            out["event"] = event.kind
            if event.source is not None:
                out["source"] = event.source
            out.update(event.data)
        else:
            out["message"] = record.getMessage()
        return json.dumps(out, default=str, separators=(",", ":"))


def setup_logging(verbose: int, log_format: str) -> logging.Handler | None:
    """``-v`` (retries, pauses, breaker changes) / ``-vv`` (every event) on stderr.

    ``log_format="json"`` writes one JSON object a line; it alone means ``-v``. Returns
    the handler added (``None`` when logging stays off, the default).
    """
    if verbose <= 0 and log_format != "json":
        return None
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("headway: %(levelname)s %(message)s"))
    logger = logging.getLogger("headway")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    return handler


def teardown_logging(handler: logging.Handler | None) -> None:
    """Undo :func:`setup_logging`."""
    if handler is not None:
        logger = logging.getLogger("headway")
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def _make_progress(mode: str, *, quiet: bool) -> ProgressReporter:
    if quiet or mode == "none":
        return NullProgress()
    if mode == "rich" or (mode == "auto" and sys.stderr.isatty()):
        from rich.console import Console

        return RichProgress(Console(stderr=True))
    return PlainProgress(sys.stderr, every=5.0)


def _limit_options(func: F) -> F:
    """--rpm, --tpm, --concurrency, --max-attempts, --timeout (shared by run and demo)."""
    options = [
        option("--rpm", type=POSITIVE, env=True, help="Requests per minute to stay under."),
        option(
            "--tpm",
            type=POSITIVE,
            env=True,
            help="Tokens per minute to stay under (estimated, settled from usage).",
        ),
        option(
            "--concurrency", type=COUNT, env=True, default=64, help="Requests in flight at most."
        ),
        option(
            "--max-attempts",
            type=COUNT,
            env=True,
            default=6,
            help="Attempts per request, the first included.",
        ),
        option("--timeout", type=POSITIVE, env=True, default=120.0, help="Seconds per attempt."),
    ]
    for decorate in reversed(options):
        func = decorate(func)
    return func


def _progress_options(func: F) -> F:
    func = option(
        "--quiet", "-q", is_flag=True, help="No progress display (the summary is still printed)."
    )(func)
    return option(
        "--progress",
        choices=["auto", "rich", "plain", "none"],
        env=True,
        help="Progress display: a live bar on a terminal, else a status line every 5 s "
        "(plain: for log files).",
    )(func)


def _finish(
    runner: BatchRunner,
    console: Console | None,
    *,
    summary_json: Path | None,
    failed_before: int,
    title: str,
    extra: dict[str, Any] | None = None,
    mask: Callable[[bytes], bytes] | None = None,
    commands: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    summary = runner.summary()
    summary["failed_before"] = failed_before
    summary.update(extra or {})
    summary.update(commands or {})
    print_summary(summary, title, summary_json, console=console, mask=mask)
    stats = runner.stats
    if stats.stopped is not None:
        return EXIT_FAILED, summary
    if stats.interrupted:
        return EXIT_INTERRUPTED, summary
    if stats.failed or stats.duplicates or failed_before:
        return EXIT_FAILED, summary
    return EXIT_OK, summary


def print_summary(
    summary: dict[str, Any],
    title: str,
    summary_json: Path | None,
    *,
    console: Console | None = None,
    mask: Callable[[bytes], bytes] | None = None,
) -> None:
    """The summary on stderr (a table on ``console``, else plain text), and ``--summary-json``."""
    if console is None:  # not a terminal: plain text, and no rich to import
        click.echo(summary_text(summary, title=title), err=True)
    else:
        render_summary(summary, console, title=title)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(summary, indent=2) + "\n").encode()
        summary_json.write_bytes(data if mask is None else mask(data))


def stderr_console() -> Console | None:
    """A rich console on stderr when it is a terminal; ``None`` (plain text) otherwise."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(stderr=True)


def warn_duplicates(stats: BatchStats) -> None:
    """One warning line when input lines repeated an earlier custom_id."""
    if stats.duplicates:
        cid, line = stats.duplicate_examples[0]
        click.echo(
            f"headway: warning: {stats.duplicates} line(s) repeat an earlier custom_id and were "
            f"not sent (first: {cid!r} on line {line})",
            err=True,
        )


def _warn_notes(runner: BatchRunner) -> None:
    for note in runner.notes:
        click.echo(f"headway: {note}", err=True)
    stats = runner.stats
    warn_duplicates(stats)
    if stats.stopped is not None:
        click.echo(
            f"headway: stopped: {' '.join(stats.stopped.split())}; raise the quota, then run "
            "the same command again to resume",
            err=True,
        )
    elif stats.interrupted and hasattr(runner.ledger, "output"):
        click.echo(
            "headway: interrupted; run the same command again to resume "
            f"({stats.abandoned} request(s) in flight were abandoned and will be resent)",
            err=True,
        )
    elif stats.interrupted:  # results went to a stream: nothing to resume from
        click.echo(
            f"headway: interrupted; {stats.written} result(s) were written "
            f"({stats.abandoned} request(s) in flight were abandoned)",
            err=True,
        )


def _on_limit_wait(event: Any) -> None:
    if event.kind == "limiter.wait":
        note_wait(float(event.data.get("wait") or 0.0))


class _TooLargeHint:
    """Says which flag to raise when a request is larger than ``--tpm`` ever admits."""

    __slots__ = ("send", "tpm")

    def __init__(self, send: Any, tpm: float) -> None:
        self.send = send
        self.tpm = tpm

    async def __call__(self, request: Any) -> Any:
        from headway.errors import RequestTooLargeError

        try:
            return await self.send(request)
        except RequestTooLargeError as exc:
            raise RequestTooLargeError(
                f"this request needs about {exc.requested:,.0f} tokens but --tpm {self.tpm:,.0f} "
                "admits fewer at once: raise --tpm (or lower the request's max_tokens)",
                requested=exc.requested,
                capacity=exc.capacity,
            ) from None


def _limit_text(rpm: float | None, tpm: float | None) -> str | None:
    parts = []
    if rpm is not None:
        parts.append(f"{rpm:,.0f}/min")
    if tpm is not None:
        parts.append(f"{tpm:,.0f} tok/min")
    return ", ".join(parts) or None


async def _run_batch(runner: BatchRunner, settings: SenderSettings) -> None:
    from headway import events

    stats = runner.stats
    if stats.limit_text is None:  # the rate in force: the flags' until the server says less
        stats.limit_text = _limit_text(settings.rpm, settings.tpm)
        stats.limited_by = "you" if stats.limit_text else None
        stats.limit_rpm = settings.rpm

    limited = settings.rpm is not None or settings.tpm is not None
    if limited:
        events.add_listener(_on_limit_wait)
    try:
        async with open_sender(settings) as send:
            runner.sender = send if settings.tpm is None else _TooLargeHint(send, settings.tpm)
            with signal_handlers(runner):
                await runner.run()
    finally:
        if limited:
            events.remove_listener(_on_limit_wait)


async def _no_sender(_request: Any) -> Any:  # pragma: no cover - replaced before running
    raise RuntimeError("no sender")
