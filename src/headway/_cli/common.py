"""What the ``headway`` commands share: exit codes, usage errors, options, progress, summary."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from headway.batch.progress import NullProgress, PlainProgress, ProgressReporter, RichProgress
from headway.batch.runner import BatchRunner, signal_handlers
from headway.batch.sender import SenderSettings, open_sender
from headway.batch.summary import render_summary

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "UsageError"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


class UsageError(click.ClickException):
    """A usage problem reported as one line, exit code 2."""

    exit_code = EXIT_USAGE


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


def _make_progress(mode: str, *, quiet: bool) -> ProgressReporter:
    if quiet or mode == "none":
        return NullProgress()
    if mode == "rich" or (mode == "auto" and sys.stderr.isatty()):
        return RichProgress(Console(stderr=True))
    return PlainProgress(sys.stderr, every=5.0)


def _limit_options(func: F) -> F:
    """--rpm, --tpm, --concurrency, --max-attempts, --timeout (shared by run and demo)."""
    options = [
        click.option(
            "--rpm",
            type=click.FloatRange(min=0, min_open=True),
            envvar="HEADWAY_RPM",
            help="Requests per minute to stay under.",
        ),
        click.option(
            "--tpm",
            type=click.FloatRange(min=0, min_open=True),
            envvar="HEADWAY_TPM",
            help="Tokens per minute to stay under (estimated, settled from usage).",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(min=1),
            envvar="HEADWAY_CONCURRENCY",
            default=64,
            show_default=True,
            help="Requests in flight at most.",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(min=1),
            envvar="HEADWAY_MAX_ATTEMPTS",
            default=6,
            show_default=True,
            help="Attempts per request, the first included.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            envvar="HEADWAY_TIMEOUT",
            default=120.0,
            show_default=True,
            help="Seconds per attempt.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _progress_options(func: F) -> F:
    func = click.option(
        "--quiet", "-q", is_flag=True, help="No progress display (the summary is still printed)."
    )(func)
    return click.option(
        "--progress",
        type=click.Choice(["auto", "rich", "plain", "none"]),
        default="auto",
        show_default=True,
        envvar="HEADWAY_PROGRESS",
        help="Progress display: a live bar on a terminal, else a status line every 5 s.",
    )(func)


def _finish(
    runner: BatchRunner,
    console: Console,
    *,
    summary_json: Path | None,
    failed_before: int,
    title: str,
    extra: dict[str, Any] | None = None,
    mask: Callable[[bytes], bytes] | None = None,
) -> tuple[int, dict[str, Any]]:
    summary = runner.summary()
    summary["failed_before"] = failed_before
    summary.update(extra or {})
    render_summary(summary, console, title=title)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(summary, indent=2) + "\n").encode()
        summary_json.write_bytes(data if mask is None else mask(data))
    stats = runner.stats
    if stats.interrupted:
        return EXIT_INTERRUPTED, summary
    if stats.failed or stats.duplicates or failed_before:
        return EXIT_FAILED, summary
    return EXIT_OK, summary


def _warn_notes(runner: BatchRunner) -> None:
    for note in runner.notes:
        click.echo(f"headway: {note}", err=True)
    stats = runner.stats
    if stats.duplicates:
        cid, line = stats.duplicate_examples[0]
        click.echo(
            f"headway: warning: {stats.duplicates} line(s) repeat an earlier custom_id and were "
            f"not sent (first: {cid!r} on line {line})",
            err=True,
        )
    if stats.interrupted:
        click.echo(
            "headway: interrupted; run the same command again to resume "
            f"({stats.abandoned} request(s) in flight were abandoned and will be resent)",
            err=True,
        )


async def _run_batch(runner: BatchRunner, settings: SenderSettings) -> None:
    async with open_sender(settings) as send:
        runner.sender = send
        with signal_handlers(runner):
            await runner.run()


async def _no_sender(_request: Any) -> Any:  # pragma: no cover - replaced before running
    raise RuntimeError("no sender")
