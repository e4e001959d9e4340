"""``headway run``: send a JSONL of requests and write one result per request."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from headway._cli.batches import (
    batch_dry_run,
    batch_options,
    refuse_live_batches,
    run_via_batch,
)
from headway._cli.common import (
    COUNT,
    EXIT_PIPE,
    FILE,
    POSITIVE,
    _fail,
    _finish,
    _limit_options,
    _make_progress,
    _no_sender,
    _progress_options,
    _run_batch,
    _warn_notes,
    command_line,
    option,
    setup_logging,
    stderr_console,
    teardown_logging,
)
from headway.batch.jobs import DEFAULT_URL, STDIO
from headway.batch.ledger import is_disk_full
from headway.batch.outage import EXIT_DISK_FULL, RunJudge
from headway.batch.progress import NOT_FOUND_HINT, NullProgress
from headway.batch.runner import BatchRunner
from headway.batch.sender import PROVIDERS, SenderSettings, Target, resolve_target

__all__ = ["run"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _config_callback(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    """``headway run --config PATH``: the same file as ``headway --config PATH``."""
    if value is None:
        return
    from headway._cli.config import _load_config

    group = ctx.parent.command if ctx.parent is not None else None
    if isinstance(group, click.Group):
        ctx.default_map = _load_config(value, explicit=True, group=group, ctx=ctx).get(
            ctx.info_name or ""
        )


@click.command()
@click.argument(
    "input_path",
    metavar="INPUT",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
)
@option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    env=True,
    help="Result file (JSONL, appended; re-running resumes); '-' for standard output "
    "(with --no-resume). Required.",
)
@option("--errors", type=FILE, env=True, help="Write failed results here instead of OUTPUT.")
@option(
    "--provider",
    type=click.Choice(sorted(PROVIDERS)),
    env=True,
    help="A known provider (sets the base URL, key variable and auth).",
)
@option(
    "--base-url",
    env=True,
    help="Any OpenAI-compatible server, with or without /v1 (http://host:8000/v1).",
)
@option(
    "--endpoint",
    env=True,
    help="Path for bare request bodies, relative to the base URL (embeddings -> "
    f"/v1/embeddings) [default: the provider's, else {DEFAULT_URL}].",
)
@option(
    "--request-url",
    env=True,
    help="One full URL for every line, whatever its own url (the cookbook's flag).",
)
@option(
    "--api-key-env",
    env=True,
    help="Environment variable holding the API key [default: the provider's, e.g. OPENAI_API_KEY].",
)
@_limit_options
@option("--retry-failed", is_flag=True, help="Send again the requests that failed before.")
@option("--summary-json", type=FILE, env=True, help="Also write the summary as JSON here.")
@option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    help="Seconds in-flight requests get to finish after Ctrl-C.",
)
@option("--fsync", is_flag=True, help="fsync the result file after each write.")
@option(
    "--redis-url",
    env=True,
    help="Share the limits and breaker state with other workers through this Redis.",
)
@option(
    "--shard",
    env=True,
    metavar="K/N",
    help="Send only this worker's share of the lines (worker K of N; use one -o per worker).",
)
@option(
    "--engine",
    choices=["local", "ray"],
    env=True,
    help="Send from this process, or from Ray actors sharing one limit (pip install "
    "'headway[ray]').",
)
@option(
    "--ray-address",
    env="RAY_ADDRESS",
    help="The Ray cluster for --engine ray (default: start a local Ray).",
)
@option("--ray-actors", type=COUNT, default=4, help="Ray actors sending requests (--engine ray).")
@option(
    "--max-outage",
    type=POSITIVE,
    default=600.0,
    env=True,
    help="Seconds the provider may stay unreachable before the run stops (exit 3); "
    "the unsent requests are left for the resume.",
)
@option(
    "--ignore-mismatch",
    is_flag=True,
    help="Resume even when OUTPUT holds results answered for other requests or another server.",
)
@option(
    "--no-resume",
    is_flag=True,
    help="Do not read earlier results: start OUTPUT afresh (needed for -o -).",
)
@option(
    "--dry-run",
    is_flag=True,
    help="Check every line and say what would be sent, and how long it would take; send nothing.",
)
@option(
    "--output-format",
    choices=["auto", "openai", "anthropic"],
    env=True,
    help="Result line shape: auto follows each line (Anthropic lines get Anthropic results).",
)
@option(
    "-v",
    "--verbose",
    count=True,
    help="Log retries, pauses and limit changes to stderr (-vv: every event).",
)
@option(
    "--log-format",
    choices=["text", "json"],
    env=True,
    help="json: one JSON object a line on stderr (implies -v).",
)
@option(
    "--config",
    "config_path",
    type=FILE,
    is_eager=True,
    expose_value=False,
    callback=_config_callback,
    help="Settings file (as 'headway --config'), accepted here too.",
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
    request_url: str | None,
    no_resume: bool,
    dry_run: bool,
    output_format: str,
    verbose: int,
    log_format: str,
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

    \b
    In a pipeline (results on stdout, the display and summary on stderr):
      cat requests.jsonl | headway run - -o - --no-resume --base-url http://localhost:8000/v1

    \b
    Exit codes:
      0    every request has a successful result
      1    some requests failed (or earlier runs left failures, or custom_ids repeat)
      2    usage error: a one-line message says what to fix
      3    the server stayed unreachable for --max-outage: run again to resume
      4    the server rejects the key or the path: nothing more was sent
      5    the disk is full: free space and run again to resume
      130  interrupted (Ctrl-C, SIGTERM): run the same command again to resume
      141  the reader of -o - went away (| head): stopped quietly, as on SIGPIPE
    """
    handler = setup_logging(verbose, log_format)
    try:
        return _run(
            input_path=input_path,
            output=output,
            errors=errors,
            provider=provider,
            base_url=base_url,
            endpoint=endpoint,
            api_key_env=api_key_env,
            request_url=request_url,
            settings_kw={
                "rpm": rpm,
                "tpm": tpm,
                "concurrency": concurrency,
                "max_attempts": max_attempts,
                "timeout": timeout,
                "redis_url": redis_url,
                # the run judgement handles outages: a request waits on an open breaker
                # for about one recovery period (its half-open trial), not for minutes
                "max_breaker_wait": 5.0,
            },
            retry_failed=retry_failed,
            summary_json=summary_json,
            grace=grace,
            fsync=fsync,
            shard=shard,
            no_resume=no_resume,
            dry_run=dry_run,
            output_format=output_format,
            max_outage=max_outage,
            ignore_mismatch=ignore_mismatch,
            batch=batch,
            engine=(engine, ray_address, ray_actors),
            progress=progress,
            quiet=quiet,
        )
    finally:
        teardown_logging(handler)


def _check_input(input_path: Path) -> str:
    name = os.fspath(input_path)
    if name == STDIO:
        return name
    if not input_path.exists():
        _fail(f"input file {input_path} does not exist")
    if input_path.is_dir():
        _fail(f"input {input_path} is a directory; give a JSONL file")
    if not os.access(input_path, os.R_OK):
        _fail(f"input file {input_path} is not readable")
    return name


def _check_redis(url: str | None) -> None:
    if url is None:
        return
    if not url.startswith(_REDIS_SCHEMES):
        _fail(
            f"--redis-url must start with redis://, rediss:// or unix://, got {url!r} "
            "(e.g. redis://localhost:6379/0)"
        )
    if importlib.util.find_spec("redis") is None:
        _fail("--redis-url needs the redis extra: pip install 'headway[redis]'")


def _parse_shard(shard: str | None) -> Any:
    if shard is None:
        return None
    match = _SHARD.match(shard)
    if match is None:
        _fail(f"--shard {shard!r}: write K/N (worker K of N, e.g. 1/4)")
    from headway.backends import Shard

    return Shard.parse(f"{match.group(1)}/{match.group(2)}").owns


def _target(
    provider: str | None,
    base_url: str | None,
    endpoint: str | None,
    api_key_env: str | None,
    request_url: str | None,
    *,
    environ: Any = None,
) -> tuple[Target, str | None]:
    """The target, and a note on how the URL was read (``--request-url`` aware)."""
    from headway.batch.urls import FixedTarget, join_urls

    prefix = ""
    if provider is not None and provider in PROVIDERS:
        prefix = "/v1" if PROVIDERS[provider].default_url.startswith("/v1/") else ""
    plan = join_urls(base_url, endpoint, request_url, provider_prefix=prefix)
    target = resolve_target(
        provider=provider,
        base_url=plan.base_url,
        endpoint=plan.endpoint,
        api_key_env=api_key_env,
        environ=environ,
    )
    if plan.request_path is not None:
        target = FixedTarget(target, plan.request_path)
    return target, plan.note


def _run(
    *,
    input_path: Path,
    output: Path | None,
    errors: Path | None,
    request_url: str | None,
    provider: str | None,
    base_url: str | None,
    endpoint: str | None,
    api_key_env: str | None,
    settings_kw: dict[str, Any],
    retry_failed: bool,
    summary_json: Path | None,
    grace: float,
    fsync: bool,
    shard: str | None,
    no_resume: bool,
    dry_run: bool,
    output_format: str,
    max_outage: float,
    ignore_mismatch: bool,
    batch: dict[str, Any],
    engine: tuple[str, str | None, int],
    progress: str,
    quiet: bool,
) -> int:
    if output is None and not dry_run:
        _fail("missing option '-o' / '--output'")
    source = _check_input(input_path)
    if batch["via"] == "batch" and output_format != "auto":
        _fail(
            "--output-format goes with --via online: a provider's batch results keep the "
            "provider's own shape"
        )
    if batch["via"] == "batch" and dry_run:
        if source == STDIO:
            _fail("--via batch --dry-run reads a file; it does not go with -")
        return batch_dry_run(
            input_path,
            provider=provider,
            base_url=base_url,
            api_key_env=api_key_env,
            opts=batch,
            environ=_AnyKey(),
        )
    if dry_run:
        from headway._cli.dryrun import dry_run_report

        target, note = _target(
            provider, base_url, endpoint, api_key_env, request_url, environ=_AnyKey()
        )
        if note:
            click.echo(f"headway: {note}", err=True)
        return dry_run_report(
            source,
            target,
            rpm=settings_kw["rpm"],
            tpm=settings_kw["tpm"],
            concurrency=settings_kw["concurrency"],
            owns=_parse_shard(shard),
        )
    assert output is not None
    to_stdout = os.fspath(output) == STDIO
    if to_stdout and not no_resume:
        _fail(
            "-o - writes to standard output, which cannot be read back to resume: add "
            "--no-resume (or write to a file to be able to resume)"
        )
    if to_stdout and retry_failed:
        _fail("--retry-failed needs a result file to read; it does not go with -o -")
    _check_redis(settings_kw["redis_url"])
    owns = _parse_shard(shard)
    target, note = _target(provider, base_url, endpoint, api_key_env, request_url)
    if note:
        click.echo(f"headway: {note}", err=True)
    settings = SenderSettings(target=target, **settings_kw)
    if batch["via"] == "batch":
        if to_stdout:
            _fail("--via batch writes a result file it can resume from; it does not go with -o -")
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
            opts={**batch, "shard": shard, "redis_url": settings_kw["redis_url"]},
        )
    if batch["then_online"] or batch["detach"]:
        _fail("--then-online and --detach go with --via batch")
    if not to_stdout:
        refuse_live_batches(output)
    key_env = api_key_env or (PROVIDERS[provider].key_env if provider else None)
    judge = RunJudge(
        max_outage=max_outage,
        key_env=key_env if target.api_key is not None else None,
        notify=lambda message: click.echo(f"headway: {message}", err=True),
    )
    key = target.key()
    secrets = () if key is None else (key,)
    ledger: Any = None
    if to_stdout:
        from headway.batch.ledger import mask_secrets
        from headway.batch.output import StreamLedger

        ledger = StreamLedger(
            getattr(sys.stdout, "buffer", sys.stdout),
            None if errors is None else os.fspath(errors),
            mask=mask_secrets(secrets),
        )
    elif no_resume:
        for path in (output, errors):
            if path is not None and path.is_file():
                path.write_bytes(b"")
    runner = BatchRunner(
        _no_sender,
        source,
        output,
        errors=errors,
        retry_failed=retry_failed,
        concurrency=settings.concurrency,
        default_url=target.default_url,
        progress=_make_progress(progress, quiet=quiet),
        grace=grace,
        fsync=fsync,
        owns=owns,
        output_format=output_format,
        ledger=ledger,
        judge=judge,
        target=target.base_url,
        check_resume=not ignore_mismatch,
        secrets=secrets,
    )
    try:
        kind, ray_address, ray_actors = engine
        if kind == "ray":
            from headway.ray._engine import run_batch_on_ray

            asyncio.run(run_batch_on_ray(runner, settings, address=ray_address, actors=ray_actors))
        else:
            asyncio.run(_run_batch(runner, settings))
    except OSError as exc:
        if getattr(runner.ledger, "broken", False):
            return _pipe_closed()
        if not is_disk_full(exc):
            raise
        return _report_disk_full(runner, source, summary_json, exc, resumable=not to_stdout)
    if getattr(runner.ledger, "broken", False):
        return _pipe_closed()
    return _report_run(runner, source, summary_json, resumable=not to_stdout)


def _pipe_closed() -> int:
    """The reader of ``-o -`` went away (``| head``): stop quietly, as Unix tools do.

    Nothing is printed (the reader wanted no more); standard output is pointed at
    ``/dev/null`` so that nothing fails again on the way out. The exit code is the
    shell's for a process ended by SIGPIPE.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_PIPE


class _AnyKey(dict[str, str]):
    """An environment in which every key variable is set (a dry run sends nothing)."""

    def get(self, key: str, default: Any = None) -> str:
        return os.environ.get(key) or "dry-run"


def _report_disk_full(
    runner: BatchRunner, source: str, summary_json: Path | None, exc: OSError, *, resumable: bool
) -> int:
    """The disk filled up: say so, show what was written, exit with its own code."""
    with contextlib.suppress(OSError):  # the summary file may not fit either
        _report_run(runner, source, summary_json, resumable=resumable)
    written = getattr(runner.ledger, "written", "some")
    where = getattr(runner.ledger, "output", "the output")
    click.echo(
        f"headway: error: the disk is full ({exc.strerror}): {written} result(s) "
        f"were written to {where} this run, none half-written; free some "
        "space and run the same command again to resume",
        err=True,
    )
    return EXIT_DISK_FULL


def _report_run(
    runner: BatchRunner, source: str, summary_json: Path | None, *, resumable: bool
) -> int:
    """Notes, summary (on stderr: a table on a terminal, else plain text) and exit code."""
    _warn_notes(runner)
    verdict = runner.verdict
    stats = runner.stats
    if stats.all_404 and isinstance(runner.progress, NullProgress):
        click.echo(f"headway: warning: {NOT_FOUND_HINT}", err=True)  # the display said it
    commands: dict[str, str] = {}
    if resumable and (stats.interrupted or verdict is not None):
        commands["resume_command"] = command_line(drop=("--retry-failed",))
    if resumable and (stats.failed or runner.ledger.failed_before):
        commands["retry_command"] = command_line(add=("--retry-failed",))
    code, _ = _finish(
        runner,
        stderr_console(),
        summary_json=summary_json,
        failed_before=runner.ledger.failed_before,
        title=f"headway run: {'standard input' if source == STDIO else source}",
        extra={"stopped": verdict.message} if verdict is not None else None,
        mask=runner.ledger.mask,
        commands=commands,
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
