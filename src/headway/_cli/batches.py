"""``headway run --via batch`` and ``headway batches status|cancel OUT``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from headway._cli.common import (
    COUNT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    POSITIVE,
    _fail,
    option,
    print_summary,
    stderr_console,
    warn_duplicates,
)
from headway.errors import APIClientError

if TYPE_CHECKING:  # the Batch API machinery loads when a command needs it
    from headway.batch.batchapi import BatchState, ProviderBatchRun, RunOutcome
    from headway.batch.batchapi.engine import BatchAPISettings
    from headway.batch.batchapi.plan import BatchLimits, Kind
    from headway.batch.sender import SenderSettings

__all__ = ["batch_dry_run", "batch_options", "batches", "refuse_live_batches", "run_via_batch"]

F = TypeVar("F", bound=Callable[..., Any])


def batch_options(func: F) -> F:
    """``--via``, ``--then-online``, ``--detach`` and the batch limits of ``headway run``."""
    options = [
        option(
            "--via",
            choices=["online", "batch"],
            env=True,
            help="online: call the API now, at its rate limits. batch: the provider's Batch "
            "API (half the price, results within 24 h).",
        ),
        option(
            "--then-online",
            is_flag=True,
            help="With --via batch: send what the batches left undone (expired, cancelled) "
            "through the online path before the run ends.",
        ),
        option(
            "--detach",
            is_flag=True,
            help="With --via batch: submit the batches and exit; run the same command again "
            "(or `headway batches status OUT`) to collect.",
        ),
        option(
            "--batch-max-requests",
            type=COUNT,
            help="Requests per batch [default: OpenAI 50,000; Anthropic 100,000].",
        ),
        option(
            "--batch-max-bytes",
            type=COUNT,
            help="Bytes per batch file [default: OpenAI 200 MB; Anthropic 256 MB].",
        ),
        option(
            "--batch-max-tokens",
            type=COUNT,
            help="The model's enqueued-token limit: estimated input tokens queued at once.",
        ),
        option(
            "--poll-interval",
            type=POSITIVE,
            default=5.0,
            help="Seconds between the first polls (grows to --max-poll-interval).",
        ),
        option(
            "--max-poll-interval",
            type=POSITIVE,
            default=120.0,
            help="Longest wait between polls, in seconds.",
        ),
        option(
            "--batch-lookup-window",
            type=click.FloatRange(min=0),
            default=120.0,
            help="Seconds a batch create that got no answer is looked for at the provider "
            "before it is sent again (a batch is never paid for twice).",
        ),
    ]
    for decorate in reversed(options):
        func = decorate(func)
    return func


def _settings(
    provider: str | None,
    base_url: str | None,
    api_key_env: str | None,
    opts: dict[str, Any],
    environ: Mapping[str, str] | None = None,
) -> BatchAPISettings:
    from headway.batch.batchapi import batch_settings

    return batch_settings(
        provider=provider,
        base_url=base_url,
        api_key_env=api_key_env,
        max_requests=opts.get("batch_max_requests"),
        max_bytes=opts.get("batch_max_bytes"),
        max_tokens=opts.get("batch_max_tokens"),
        poll_interval=opts.get("poll_interval") or 5.0,
        max_poll_interval=opts.get("max_poll_interval") or 120.0,
        lookup_window=_or(opts.get("batch_lookup_window"), 120.0),
        environ=environ,
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def refuse_live_batches(output: Path) -> None:
    """Stop ``--via online`` on an OUT whose batches still run (it would pay twice)."""
    if not os.path.exists(f"{os.fspath(output)}.batches.json"):  # batchapi.state.state_path
        return  # no state file: the Batch API machinery need not be imported
    from headway.batch.batchapi.state import BatchState

    if BatchState.exists(output) and BatchState.load(output).live:
        _fail(
            f"{output} has batches running at the provider: collect them first (the same "
            f"command with --via batch, or `headway batches status {output}`), or cancel "
            f"them with `headway batches cancel {output}`"
        )


def run_via_batch(
    *,
    input_path: Path,
    output: Path,
    errors: Path | None,
    provider: str | None,
    base_url: str | None,
    api_key_env: str | None,
    retry_failed: bool,
    summary_json: Path | None,
    fsync: bool,
    quiet: bool,
    progress: str,
    online: SenderSettings,
    opts: dict[str, Any],
) -> int:
    """``headway run --via batch``: plan, submit, wait, collect (see docs/batch.md)."""
    if opts.get("shard") or opts.get("redis_url"):
        _fail("--shard and --redis-url are for --via online; a batch runs at the provider")
    from headway.batch.batchapi import PlainBatchProgress, ProviderBatchRun

    settings = _settings(provider, base_url, api_key_env, opts)
    show = None if quiet or progress == "none" else PlainBatchProgress()
    engine = ProviderBatchRun(
        settings, output, errors=errors, retry_failed=retry_failed, fsync=fsync, progress=show
    )
    then_online = bool(opts.get("then_online"))
    try:
        outcome = asyncio.run(
            _run(
                engine,
                input_path,
                detach=bool(opts.get("detach")),
                then_online=then_online,
                online=online,
            )
        )
    except APIClientError as exc:
        return _provider_failed(exc, output)
    except asyncio.CancelledError:
        click.echo(
            "headway: interrupted; the batches already created keep running at the provider. "
            f"Run the same command again to resume (`headway batches cancel {output}` "
            "cancels them).",
            err=True,
        )
        return EXIT_INTERRUPTED
    return _report(outcome, output, input_path, summary_json, engine.stopping)


async def _run(
    engine: ProviderBatchRun,
    input_path: Path,
    *,
    detach: bool,
    then_online: bool,
    online: SenderSettings,
) -> RunOutcome:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal() -> None:
        # The first signal detaches once the step under way is done; a second one stops
        # at once (the state was written before the step, so the next run resumes it).
        if engine.stopping and task is not None:
            task.cancel()
        engine.stop()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
            continue
        installed.append(sig)
    try:
        return await engine.run(input_path, detach=detach, then_online=then_online, online=online)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _report(
    outcome: RunOutcome,
    output: Path,
    input_path: Path,
    summary_json: Path | None,
    stopped: bool,
) -> int:
    for note in outcome.notes:
        click.echo(f"headway: {note}", err=True)
    stats = outcome.stats
    warn_duplicates(stats)
    summary = stats.summary(elapsed=outcome.elapsed)
    summary["batches"] = len(outcome.state.parts)
    summary["batches_running"] = outcome.pending
    summary["online"] = outcome.online
    title = f"headway run --via batch: {input_path}"
    print_summary(summary, title, summary_json, console=stderr_console())
    if outcome.detached:
        why = "interrupted" if stopped else "detached"
        click.echo(
            f"headway: {why}: {outcome.pending} batch(es) keep running at the provider. Run the "
            f"same command again, or `headway batches status {output}`, to collect; "
            f"`headway batches cancel {output}` cancels them.",
            err=True,
        )
        return EXIT_INTERRUPTED if stopped else EXIT_OK
    if stats.failed or stats.duplicates:
        return EXIT_FAILED
    return EXIT_OK


def _provider_failed(exc: APIClientError, output: Path) -> int:
    """One line on stderr for a provider error that ended the command; exit code 1."""
    where = f" ({exc.method} {exc.url})" if exc.url else ""
    click.echo(
        f"headway: error: the provider's Batch API failed: {' '.join(exc.message.split())}"
        f"{where}. Nothing is lost: what was submitted is recorded in {output}.batches.json; "
        "fix the cause and run the same command again to resume",
        err=True,
    )
    return EXIT_FAILED


@click.group("batches")
def batches() -> None:
    """Provider batches submitted by `headway run --via batch`."""


def _load(output: Path) -> ProviderBatchRun:
    from headway.batch.batchapi import BatchState, ProviderBatchRun, settings_from_state

    if not BatchState.exists(output):
        _fail(f"{output} has no batches (no {output}.batches.json); submit with --via batch")
    return ProviderBatchRun(settings_from_state(output), output)


@batches.command("plan")
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@option("--provider", choices=["openai", "anthropic"])
@option("--batch-max-requests", type=COUNT)
@option("--batch-max-bytes", type=COUNT)
@option("--batch-max-tokens", type=COUNT)
def plan(
    input_path: Path,
    provider: str,
    batch_max_requests: int | None,
    batch_max_bytes: int | None,
    batch_max_tokens: int | None,
) -> int:
    """Show how `run --via batch` would split INPUT into batches (sends nothing)."""
    from headway.batch.batchapi.plan import BatchLimits

    if not input_path.exists():
        _fail(f"input file {input_path} does not exist")
    kind: Kind = "anthropic" if provider == "anthropic" else "openai"
    limits = BatchLimits.for_provider(
        kind,
        max_requests=batch_max_requests,
        max_bytes=batch_max_bytes,
        max_tokens=batch_max_tokens,
    )
    default_url = "/v1/messages" if kind == "anthropic" else "/v1/chat/completions"
    _show_plan(input_path, kind, limits, default_url)
    return EXIT_OK


def _show_plan(input_path: Path, kind: Kind, limits: BatchLimits, default_url: str) -> int:
    """Print the batches INPUT would make and the lines that cannot go; return how many."""
    from headway.batch.batchapi.plan import preview

    parts, problems = preview(input_path, kind, limits, default_url=default_url)
    for n, part in enumerate(parts, 1):
        model = f" {part['model']}" if part["model"] else ""
        tokens = f", ~{part['tokens']:,} tokens" if limits.max_tokens else ""
        click.echo(
            f"batch {n}: {part['endpoint']}{model}: {part['requests']:,} requests, "
            f"{part['bytes'] / 1e6:.1f} MB{tokens}"
        )
    for problem in problems[:10]:
        click.echo(f"not in a batch: {problem}")
    if len(problems) > 10:
        click.echo(f"not in a batch: ... and {len(problems) - 10} more")
    total = sum(p["requests"] for p in parts)
    click.echo(f"{len(parts)} batch(es), {total:,} requests; {len(problems)} line(s) cannot go")
    return len(problems)


def batch_dry_run(
    input_path: Path,
    *,
    provider: str | None,
    base_url: str | None,
    api_key_env: str | None,
    opts: dict[str, Any],
    environ: Mapping[str, str],
) -> int:
    """``headway run --via batch --dry-run``: the batches INPUT would make; sends nothing.

    Exit code 1 when a line cannot go in a batch, else 0.
    """
    settings = _settings(provider, base_url, api_key_env, opts, environ)
    limits = settings.resolved_limits()
    problems = _show_plan(input_path, settings.kind, limits, settings.target.default_url)
    click.echo("dry run: nothing was sent")
    return EXIT_FAILED if problems else EXIT_OK


@batches.command("status")
@click.argument("output", metavar="OUT", type=click.Path(dir_okay=False, path_type=Path))
def status(output: Path) -> int:
    """Poll the batches of OUT once, write the results of those that ended, show the rest."""
    engine = _load(output)
    try:
        state = asyncio.run(engine.refresh())
    except APIClientError as exc:
        return _provider_failed(exc, output)
    return _show(engine, state)


@batches.command("cancel")
@click.argument("output", metavar="OUT", type=click.Path(dir_okay=False, path_type=Path))
def cancel(output: Path) -> int:
    """Cancel the running batches of OUT (what they finished is kept)."""
    engine = _load(output)
    try:
        state = asyncio.run(engine.refresh(cancel=True))
    except APIClientError as exc:
        return _provider_failed(exc, output)
    return _show(engine, state)


def _show(engine: ProviderBatchRun, state: BatchState) -> int:
    from headway.batch.batchapi import describe

    for note in engine.notes:
        click.echo(f"headway: {note}", err=True)
    for part in state.parts:
        click.echo(describe(part))
    live = len(state.live)
    written = engine.stats.written
    click.echo(
        f"{len(state.parts)} batch(es): {live} running, {len(state.parts) - live} collected; "
        f"{written} result(s) written now"
    )
    sys.stdout.flush()
    return EXIT_OK
