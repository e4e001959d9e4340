"""The ``headway`` console script: ``run``, ``demo`` and ``serve-fake``.

Settings come from, in order of precedence: command-line flags, ``HEADWAY_*``
environment variables (``HEADWAY_RPM``, ``HEADWAY_BASE_URL``, ... for ``run``), a
``headway.toml`` (``--config PATH``, ``HEADWAY_CONFIG``, or ``./headway.toml`` when it
exists; one table per command: ``[run]``, ``[demo]``, ``[serve-fake]``), then defaults.
See ``docs/cli.md``.

Exit codes: 0 every request succeeded; 1 some failed permanently; 2 usage error (a
one-line message, never a traceback); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console

from headway import __version__
from headway.batch.jobs import DEFAULT_URL
from headway.batch.progress import NullProgress, PlainProgress, ProgressReporter, RichProgress
from headway.batch.runner import BatchRunner, signal_handlers
from headway.batch.sender import PROVIDERS, SenderSettings, open_sender, resolve_target
from headway.batch.summary import render_summary
from headway.errors import ConfigurationError

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "cli", "main"]

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


class _Group(click.Group):
    """A group whose errors are one line on stderr, never a traceback."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        **extra: Any,
    ) -> NoReturn:
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(
                args=args, prog_name=prog_name or "headway", standalone_mode=False, **extra
            )
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("headway: aborted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(EXIT_OK)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            hint = ""
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"headway: error: {message}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except ConfigurationError as exc:
            click.echo(f"headway: error: {' '.join(str(exc).split())}", err=True)
            sys.exit(EXIT_USAGE)
        except OSError as exc:
            click.echo(f"headway: error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("headway: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


# -- configuration file ----------------------------------------------------------------------


def _load_config(path: Path, *, explicit: bool) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if explicit:
            _fail(f"config file {path} does not exist")
        return {}
    except OSError as exc:
        _fail(f"cannot read config file {path}: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        _fail(f"config file {path} is not valid TOML: {exc}")
    commands = dict(cli.commands)
    out: dict[str, dict[str, Any]] = {}
    shared = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for key, value in data.items():
        if isinstance(value, dict) and key not in commands:
            _fail(f"{path}: unknown table [{key}] (expected one of: {', '.join(sorted(commands))})")
    for name, cmd in commands.items():
        params = {p.name: p for p in cmd.params if p.name and isinstance(p, click.Option)}
        table = {**shared, **data.get(name, {})}
        section: dict[str, Any] = {}
        for key, value in table.items():
            pname = key.replace("-", "_")
            if pname not in params:
                if key in data.get(name, {}):
                    _fail(f"{path}: unknown setting '{key}' in [{name}]")
                continue  # a shared key another command uses
            section[pname] = value
        out[name] = section
    unknown = [k for k in shared if not any(k.replace("-", "_") in s for s in out.values())]
    if unknown:
        _fail(f"{path}: unknown setting '{unknown[0]}'")
    return out


@click.group("headway", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="headway")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HEADWAY_CONFIG",
    help="Settings file (TOML; one table per command). Default: ./headway.toml if present.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """headway: call HTTP APIs at the full speed a provider allows, and never faster.

    Start with `headway demo` (no network, no key needed).
    """
    explicit = config_path is not None
    path = config_path if config_path is not None else Path("headway.toml")
    ctx.default_map = _load_config(path, explicit=explicit)


# -- shared helpers --------------------------------------------------------------------------


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
) -> tuple[int, dict[str, Any]]:
    summary = runner.summary()
    summary["failed_before"] = failed_before
    render_summary(summary, console, title=title)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
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


# -- headway run -----------------------------------------------------------------------------


@cli.command()
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
@_progress_options
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
    progress: str,
    quiet: bool,
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
    )
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
    )
    asyncio.run(_run_batch(runner, settings))
    return _report_run(runner, input_path, summary_json)


def _report_run(runner: BatchRunner, input_path: Path, summary_json: Path | None) -> int:
    """Notes, summary and exit code of ``headway run``."""
    _warn_notes(runner)
    code, _ = _finish(
        runner,
        Console(),
        summary_json=summary_json,
        failed_before=runner.ledger.failed_before,
        title=f"headway run: {input_path}",
    )
    if runner.ledger.failed_before:
        click.echo(
            f"headway: {runner.ledger.failed_before} request(s) failed in an earlier run; "
            "add --retry-failed to send them again",
            err=True,
        )
    return code


async def _no_sender(_request: Any) -> Any:  # pragma: no cover - replaced before running
    raise RuntimeError("no sender")


# -- headway demo ----------------------------------------------------------------------------

_TOPICS = (
    "rate limits",
    "exponential backoff",
    "circuit breakers",
    "token buckets",
    "idempotency keys",
    "asyncio cancellation",
    "connection pooling",
    "retry budgets",
)


def write_demo_input(path: Path, n: int) -> None:
    """Write ``n`` OpenAI Batch chat requests to ``path`` (the demo's input)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(1, n + 1):
            topic = _TOPICS[i % len(_TOPICS)]
            line = {
                "custom_id": f"demo-{i:06d}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "You answer in one sentence."},
                        {"role": "user", "content": f"Request {i}: explain {topic} briefly."},
                    ],
                    "max_tokens": 32,
                },
            }
            f.write(json.dumps(line) + "\n")


def check_exactly_once(input_path: Path, output_path: Path) -> tuple[int, list[str], list[str]]:
    """Compare ids: return (results, ids missing from the output, ids written twice)."""
    expected: set[str] = set()
    with open(input_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                expected.add(json.loads(line)["custom_id"])
    seen: set[str] = set()
    twice: list[str] = []
    n = 0
    if output_path.exists():
        with open(output_path, encoding="utf-8") as f:
            for line in f:
                n += 1
                cid = json.loads(line)["custom_id"]
                if cid in seen:
                    twice.append(cid)
                seen.add(cid)
    return n, sorted(expected - seen), twice


@cli.command()
@click.option(
    "--requests",
    "n_requests",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    help="How many chat requests to run.",
)
@click.option(
    "--rpm",
    type=click.FloatRange(min=0, min_open=True),
    default=3000.0,
    show_default=True,
    help="The fake server's limit, which the runner is given too.",
)
@click.option(
    "--tpm",
    type=click.FloatRange(min=0, min_open=True),
    help="Tokens per minute (server limit and runner limit).",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-attempts", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0)
@click.option("--chaos/--no-chaos", default=True, show_default=True, help="Inject faults.")
@click.option("--seed", type=int, default=0, show_default=True, help="Chaos seed.")
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the input and results [default: a new temporary directory].",
)
@click.option("--summary-json", type=click.Path(dir_okay=False, path_type=Path))
@_progress_options
def demo(
    n_requests: int,
    rpm: float,
    tpm: float | None,
    concurrency: int,
    max_attempts: int,
    timeout: float,
    chaos: bool,
    seed: int,
    workdir: Path | None,
    summary_json: Path | None,
    progress: str,
    quiet: bool,
) -> int:
    """Run a batch against a local fake API: no network, no key, under a minute.

    Starts a fake OpenAI-compatible server on 127.0.0.1 with a rate limit and chaos (10%
    429s with Retry-After, 5% 503s, 1% connection resets), writes a JSONL of chat
    requests, runs it with the live progress display, prints the summary and checks that
    every request has exactly one result.
    """
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="headway-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    input_path = workdir / "requests.jsonl"
    output_path = workdir / "results.jsonl"
    if output_path.exists():
        output_path.unlink()
    write_demo_input(input_path, n_requests)
    console = Console()
    console.print(
        f"[bold]headway demo[/]: {n_requests} chat requests to a local fake API at "
        f"{rpm:g} RPM" + (" with chaos (10% 429s, 5% 503s, 1% resets)" if chaos else "")
    )
    runner = BatchRunner(
        _no_sender,
        input_path,
        output_path,
        concurrency=concurrency,
        progress=_make_progress(progress, quiet=quiet),
    )
    asyncio.run(
        _demo_async(
            runner,
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            max_attempts=max_attempts,
            timeout=timeout,
            chaos=chaos,
            seed=seed,
        )
    )
    return _report_demo(runner, console, input_path, output_path, n_requests, summary_json)


def _report_demo(
    runner: BatchRunner,
    console: Console,
    input_path: Path,
    output_path: Path,
    n_requests: int,
    summary_json: Path | None,
) -> int:
    """Summary, file paths, the exactly-once check and the exit code of ``headway demo``."""
    _warn_notes(runner)
    code, _ = _finish(
        runner, console, summary_json=summary_json, failed_before=0, title="headway demo"
    )
    n, missing, twice = check_exactly_once(input_path, output_path)
    console.print(f"input:   {input_path}")
    console.print(f"results: {output_path}")
    if runner.stats.interrupted:
        return EXIT_INTERRUPTED
    if missing or twice:
        console.print(
            f"[red]exactly-once check FAILED[/]: {len(missing)} missing, {len(twice)} twice"
        )
        return EXIT_FAILED
    console.print(f"[green]exactly-once check passed[/]: {n} results for {n_requests} requests")
    return code


async def _demo_async(
    runner: BatchRunner,
    *,
    rpm: float,
    tpm: float | None,
    concurrency: int,
    max_attempts: int,
    timeout: float,
    chaos: bool,
    seed: int,
) -> None:
    from headway.testing.fake_api import FakeAPI  # the testing toolkit, only for the demo

    async with FakeAPI(
        rpm=rpm, tpm=tpm, chaos=demo_chaos() if chaos else None, seed=seed, journal_limit=10_000
    ) as api:
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        settings = SenderSettings(
            target=target,
            rpm=rpm,
            tpm=tpm,
            concurrency=concurrency,
            max_attempts=max_attempts,
            timeout=timeout,
        )
        await _run_batch(runner, settings)


def demo_chaos() -> Any:
    """The demo's fault profile: 10% 429s with Retry-After, 5% 503s, 1% resets."""
    from headway.testing.faults import Chaos

    return Chaos.model_validate(
        {
            "rate_limit": 0.10,
            "server_error": 0.05,
            "server_error_statuses": (503,),
            "reset": 0.01,
            "retry_after": 0.1,
            "retry_after_style": "ms",
        }
    )


# -- headway serve-fake ----------------------------------------------------------------------


@cli.command("serve-fake")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Port [default: a free one]."
)
@click.option("--rpm", type=click.FloatRange(min=0, min_open=True), help="Requests per minute.")
@click.option("--tpm", type=click.FloatRange(min=0, min_open=True), help="Tokens per minute.")
@click.option(
    "--burst",
    type=click.FloatRange(min=1),
    help="Most requests admitted at once [default: --rpm, a minute's worth].",
)
@click.option(
    "--rate-limit", type=click.FloatRange(0, 1), default=0.0, help="Share of random 429s."
)
@click.option("--retry-after", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--server-error", type=click.FloatRange(0, 1), default=0.0, help="Share of 5xx.")
@click.option("--reset", type=click.FloatRange(0, 1), default=0.0, help="Share of resets.")
@click.option("--latency", type=click.FloatRange(min=0), default=0.0, help="Seconds per answer.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--api-key",
    envvar="HEADWAY_FAKE_API_KEY",
    help="Require this key (Authorization: Bearer or x-api-key); 401 otherwise.",
)
def serve_fake(
    host: str,
    port: int,
    rpm: float | None,
    tpm: float | None,
    burst: float | None,
    rate_limit: float,
    retry_after: float,
    server_error: float,
    reset: float,
    latency: float,
    seed: int,
    api_key: str | None,
) -> int:
    """Serve the fake OpenAI-compatible API until interrupted (Ctrl-C).

    Point your own code at the printed URL: /v1/chat/completions, /v1/embeddings,
    /v1/responses, /v1/messages, /v1/models.
    """
    from headway.testing.faults import Chaos

    try:
        chaos = Chaos.model_validate(
            {
                "rate_limit": rate_limit,
                "server_error": server_error,
                "reset": reset,
                "retry_after": retry_after,
                "latency": latency,
            }
        )
    except ValueError as exc:
        _fail(f"invalid fault rates: {' '.join(str(exc).split())}")
    asyncio.run(
        _serve(
            host=host,
            port=port,
            rpm=rpm,
            tpm=tpm,
            burst=burst,
            chaos=chaos,
            seed=seed,
            api_key=api_key,
        )
    )
    return EXIT_OK


async def _serve(**kwargs: Any) -> None:
    from headway.testing.fake_api import FakeAPI

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with FakeAPI(**kwargs, journal_limit=10_000) as api:
            click.echo(f"headway fake API listening on {api.url}  (Ctrl-C to stop)")
            sys.stdout.flush()
            await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    click.echo("headway fake API stopped")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script's entry point."""
    cli.main(args=argv, prog_name="headway")


if __name__ == "__main__":  # pragma: no cover
    main()
