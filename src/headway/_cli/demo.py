"""``headway demo``: a batch against a local fake API, then the exactly-once check."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from headway._cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    _finish,
    _make_progress,
    _no_sender,
    _progress_options,
    _run_batch,
    _warn_notes,
)
from headway.batch.runner import BatchRunner
from headway.batch.sender import SenderSettings, resolve_target

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["check_exactly_once", "demo", "demo_chaos", "write_demo_input"]

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


@click.command()
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
def demo(workdir: Path | None, summary_json: Path | None, **options: Any) -> int:
    """Run a batch against a local fake API: no network, no key, under a minute.

    Starts a fake OpenAI-compatible server on 127.0.0.1 with a rate limit and chaos (10%
    429s with Retry-After, 5% 503s, 1% connection resets), writes a JSONL of chat
    requests, runs it with the live progress display, prints the summary and checks that
    every request has exactly one result.
    """
    temporary = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="headway-demo-"))
    try:
        return _demo(workdir, summary_json, temporary=temporary, **options)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)


def _demo(
    workdir: Path,
    summary_json: Path | None,
    *,
    temporary: bool,
    n_requests: int,
    progress: str,
    quiet: bool,
    **limits: Any,
) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    input_path = workdir / "requests.jsonl"
    output_path = workdir / "results.jsonl"
    if output_path.exists():
        output_path.unlink()
    write_demo_input(input_path, n_requests)
    from rich.console import Console

    console = Console()
    console.print(
        f"[bold]headway demo[/]: {n_requests} chat requests to a local fake API at "
        f"{limits['rpm']:g} RPM"
        + (" with chaos (10% 429s, 5% 503s, 1% resets)" if limits["chaos"] else "")
    )
    runner = BatchRunner(
        _no_sender,
        input_path,
        output_path,
        concurrency=limits["concurrency"],
        progress=_make_progress(progress, quiet=quiet),
    )
    asyncio.run(_demo_async(runner, **limits))
    return _report_demo(
        runner, console, input_path, output_path, n_requests, summary_json, temporary=temporary
    )


def _report_demo(
    runner: BatchRunner,
    console: Console,
    input_path: Path,
    output_path: Path,
    n_requests: int,
    summary_json: Path | None,
    *,
    temporary: bool = False,
) -> int:
    """Summary, file paths, the exactly-once check and the exit code of ``headway demo``."""
    _warn_notes(runner)
    code, _ = _finish(
        runner, console, summary_json=summary_json, failed_before=0, title="headway demo"
    )
    n, missing, twice = check_exactly_once(input_path, output_path)
    if temporary:
        console.print(
            "(the input and results were in a temporary folder, now removed; keep them "
            "with --dir PATH)"
        )
    else:
        # a path is never folded (a user copies it whole) nor read as markup
        console.print(f"input:   {input_path}", soft_wrap=True, markup=False, highlight=False)
        console.print(f"results: {output_path}", soft_wrap=True, markup=False, highlight=False)
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
