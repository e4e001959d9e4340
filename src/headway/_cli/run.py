"""``headway run``: send a JSONL of requests and write one result per request."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from headway._cli.batches import batch_options, refuse_live_batches, run_via_batch
from headway._cli.common import (
    _fail,
    _finish,
    _limit_options,
    _make_progress,
    _no_sender,
    _progress_options,
    _run_batch,
    _warn_notes,
)
from headway.batch.jobs import DEFAULT_URL
from headway.batch.ledger import is_disk_full
from headway.batch.outage import EXIT_DISK_FULL, RunJudge
from headway.batch.runner import BatchRunner
from headway.batch.sender import PROVIDERS, SenderSettings, resolve_target

__all__ = ["run"]


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HEADWAY_OUTPUT",
    help="Result file (JSONL, appended; re-running resumes). Required.",
)
@click.option(
    "--errors",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HEADWAY_ERRORS",
    help="Write failed results here instead of OUTPUT.",
)
@click.option(
    "--provider",
    type=click.Choice(sorted(PROVIDERS)),
    envvar="HEADWAY_PROVIDER",
    help="A known provider (sets the base URL, key variable and auth).",
)
@click.option("--base-url", envvar="HEADWAY_BASE_URL", help="Any OpenAI-compatible server.")
@click.option(
    "--endpoint",
    envvar="HEADWAY_ENDPOINT",
    help=f"Path for bare request bodies [default: the provider's, else {DEFAULT_URL}].",
)
@click.option(
    "--api-key-env",
    envvar="HEADWAY_API_KEY_ENV",
    help="Environment variable holding the API key [default: the provider's, e.g. OPENAI_API_KEY].",
)
@_limit_options
@click.option("--retry-failed", is_flag=True, help="Send again the requests that failed before.")
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HEADWAY_SUMMARY_JSON",
    help="Also write the summary as JSON here.",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight requests get to finish after Ctrl-C.",
)
@click.option("--fsync", is_flag=True, help="fsync the result file after each write.")
@click.option(
    "--redis-url",
    envvar="HEADWAY_REDIS_URL",
    help="Share the limits and breaker state with other workers through this Redis.",
)
@click.option(
    "--shard",
    envvar="HEADWAY_SHARD",
    metavar="K/N",
    help="Send only this worker's share of the lines (worker K of N; use one -o per worker).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    envvar="HEADWAY_ENGINE",
    help="Send from this process, or from Ray actors sharing one limit (pip install "
    "'headway[ray]').",
)
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    help="The Ray cluster for --engine ray (default: start a local Ray).",
)
@click.option(
    "--ray-actors",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Ray actors sending requests (--engine ray).",
)
@click.option(
    "--max-outage",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    envvar="HEADWAY_MAX_OUTAGE",
    help="Seconds the provider may stay unreachable before the run stops (exit 3); "
    "the unsent requests are left for the resume.",
)
@click.option(
    "--ignore-mismatch",
    is_flag=True,
    help="Resume even when OUTPUT holds results answered for other requests or another server.",
)
@_progress_options
@batch_options
def run(
    input_path: Path,
    output: Path | None,
    errors: Path | None,
    provider: str | None,
    base_url: str | None,
    endpoint: str | None,
    api_key_env: str | None,
    rpm: float | None,
    tpm: float | None,
    concurrency: int,
    max_attempts: int,
    timeout: float,
    retry_failed: bool,
    summary_json: Path | None,
    grace: float,
    fsync: bool,
    redis_url: str | None,
    shard: str | None,
    engine: str,
    ray_address: str | None,
    ray_actors: int,
    max_outage: float,
    ignore_mismatch: bool,
    progress: str,
    quiet: bool,
    **batch: Any,
) -> int:
    """Send every request of INPUT (JSONL, .gz ok) and write one result per request.

    Lines may be OpenAI Batch lines ({"custom_id", "method", "url", "body"}), Anthropic
    batch lines ({"custom_id", "params"}) or bare request bodies (custom_id = line
    number). Results are appended to OUTPUT as they complete; run the same command again
    to resume after a crash or Ctrl-C: nothing is sent twice, nothing is lost.

    \b
    Example:
      export OPENAI_API_KEY=...
      headway run requests.jsonl -o results.jsonl --provider openai --rpm 500 --tpm 200000

    \b
    On a Ray cluster (one global limit for all its actors):
      headway run requests.jsonl -o results.jsonl --provider openai --rpm 500 \\
        --engine ray --ray-address ray://head:10001

    \b
    Several workers, one global limit (worker 2 of 4, on any machine):
      headway run requests.jsonl -o results.2.jsonl --provider openai --rpm 500 \\
        --redis-url redis://redis.internal:6379/0 --shard 2/4
    """
    if output is None:
        _fail("missing option '-o' / '--output'")
    if not input_path.exists():
        _fail(f"input file {input_path} does not exist")
    if not os.access(input_path, os.R_OK):
        _fail(f"input file {input_path} is not readable")
    target = resolve_target(
        provider=provider, base_url=base_url, endpoint=endpoint, api_key_env=api_key_env
    )
    owns = None
    if shard is not None:
        from headway.backends import Shard

        owns = Shard.parse(shard).owns
    settings = SenderSettings(
        target=target,
        rpm=rpm,
        tpm=tpm,
        concurrency=concurrency,
        max_attempts=max_attempts,
        timeout=timeout,
        redis_url=redis_url,
        # the run judgement handles outages: a request waits on an open breaker for
        # about one recovery period (its half-open trial), not for minutes
        max_breaker_wait=5.0,
    )
    if batch["via"] == "batch":
        return run_via_batch(
            input_path=input_path,
            output=output,
            errors=errors,
            provider=provider,
            base_url=base_url,
            api_key_env=api_key_env,
            retry_failed=retry_failed,
            summary_json=summary_json,
            fsync=fsync,
            quiet=quiet,
            progress=progress,
            online=settings,
            opts={**batch, "shard": shard, "redis_url": redis_url},
        )
    if batch["then_online"] or batch["detach"]:
        _fail("--then-online and --detach go with --via batch")
    refuse_live_batches(output)
    key_env = api_key_env or (PROVIDERS[provider].key_env if provider else None)
    judge = RunJudge(
        max_outage=max_outage,
        key_env=key_env if target.api_key is not None else None,
        notify=lambda message: click.echo(f"headway: {message}", err=True),
    )
    secrets = () if target.api_key is None else (target.api_key.get_secret_value(),)
    runner = BatchRunner(
        _no_sender,
        input_path,
        output,
        errors=errors,
        retry_failed=retry_failed,
        concurrency=concurrency,
        default_url=target.default_url,
        progress=_make_progress(progress, quiet=quiet),
        grace=grace,
        fsync=fsync,
        owns=owns,
        judge=judge,
        target=target.base_url,
        check_resume=not ignore_mismatch,
        secrets=secrets,
    )
    try:
        if engine == "ray":
            from headway.ray._engine import run_batch_on_ray

            asyncio.run(run_batch_on_ray(runner, settings, address=ray_address, actors=ray_actors))
        else:
            asyncio.run(_run_batch(runner, settings))
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        return _report_disk_full(runner, input_path, summary_json, exc)
    return _report_run(runner, input_path, summary_json)


def _report_disk_full(
    runner: BatchRunner, input_path: Path, summary_json: Path | None, exc: OSError
) -> int:
    """The disk filled up: say so, show what was written, exit with its own code."""
    with contextlib.suppress(OSError):  # the summary file may not fit either
        _report_run(runner, input_path, summary_json)
    click.echo(
        f"headway: error: the disk is full ({exc.strerror}): {runner.ledger.written} result(s) "
        f"were written to {runner.ledger.output} this run, none half-written; free some "
        "space and run the same command again to resume",
        err=True,
    )
    return EXIT_DISK_FULL


def _report_run(runner: BatchRunner, input_path: Path, summary_json: Path | None) -> int:
    """Notes, summary and exit code of ``headway run``."""
    _warn_notes(runner)
    verdict = runner.verdict
    code, _ = _finish(
        runner,
        Console(),
        summary_json=summary_json,
        failed_before=runner.ledger.failed_before,
        title=f"headway run: {input_path}",
        extra={"stopped": verdict.message} if verdict is not None else None,
        mask=runner.ledger.mask,
    )
    if verdict is not None:  # its message was printed when it came
        return verdict.exit_code
    if runner.ledger.failed_before:
        click.echo(
            f"headway: {runner.ledger.failed_before} request(s) failed in an earlier run; "
            "add --retry-failed to send them again",
            err=True,
        )
    return code
