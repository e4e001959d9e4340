"""``headway serve-fake``: serve the fake OpenAI-compatible API until interrupted."""

from __future__ import annotations

import asyncio
import errno
import signal
import sys
from typing import Any

import click

from headway._cli.common import EXIT_OK, POSITIVE, _fail, option

__all__ = ["serve_fake"]


@click.command("serve-fake")
@option("--host", default="127.0.0.1", help="Interface to listen on.")
@option("--port", type=click.IntRange(0, 65535), default=0, help="Port [default: a free one].")
@option("--rpm", type=POSITIVE, help="Requests per minute.")
@option("--tpm", type=POSITIVE, help="Tokens per minute.")
@option(
    "--burst",
    type=click.FloatRange(min=1),
    help="Most requests admitted at once [default: --rpm, a minute's worth].",
)
@option(
    "--profile",
    type=click.Choice(["openai", "azure", "anthropic", "litellm", "silent", "shared"]),
    help="Enforce --rpm/--tpm as this provider does (windows, headers, 429 shapes) "
    "[default: continuous per-minute buckets with OpenAI's headers].",
)
@option("--rate-limit", type=click.FloatRange(0, 1), default=0.0, help="Share of random 429s.")
@option("--retry-after", type=click.FloatRange(min=0), default=1.0)
@option("--server-error", type=click.FloatRange(0, 1), default=0.0, help="Share of 5xx.")
@option("--reset", type=click.FloatRange(0, 1), default=0.0, help="Share of resets.")
@option("--latency", type=click.FloatRange(min=0), default=0.0, help="Seconds per answer.")
@option("--seed", type=int, default=0)
@option(
    "--batch-seconds",
    type=click.FloatRange(min=0),
    default=10.0,
    help="Seconds a Batch API batch spends in_progress (its lines finish evenly over it).",
)
@option(
    "--api-key",
    env="HEADWAY_FAKE_API_KEY",
    help="Require this key (Authorization: Bearer or x-api-key); 401 otherwise.",
)
def serve_fake(
    host: str,
    port: int,
    rpm: float | None,
    tpm: float | None,
    burst: float | None,
    profile: str | None,
    rate_limit: float,
    retry_after: float,
    server_error: float,
    reset: float,
    latency: float,
    seed: int,
    batch_seconds: float,
    api_key: str | None,
) -> int:
    """Serve the fake OpenAI-compatible API until interrupted (Ctrl-C).

    Point your own code at the printed URL: /v1/chat/completions, /v1/embeddings,
    /v1/responses, /v1/messages, /v1/models, and the Batch APIs (/v1/files,
    /v1/batches, /v1/messages/batches).

    \b
    Example: a LiteLLM-style proxy at 1,200 requests per minute, with 5% random 503s
      headway serve-fake --profile litellm --rpm 1200 --server-error 0.05
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
            profile=profile,
            chaos=chaos,
            seed=seed,
            api_key=api_key,
            batch_seconds=batch_seconds,
        )
    )
    return EXIT_OK


async def _serve(*, batch_seconds: float = 10.0, **kwargs: Any) -> None:
    from headway.testing.fake_api import FakeAPI

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            api = await FakeAPI(**kwargs, journal_limit=10_000).__aenter__()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            _fail(
                f"port {kwargs['port']} on {kwargs['host']} is already in use: pick another "
                "with --port, or leave --port out for a free one"
            )
        try:
            api.batches.timing.processing = batch_seconds
            click.echo(f"headway fake API listening on {api.url}  (Ctrl-C to stop)")
            sys.stdout.flush()
            await stop.wait()
        finally:
            await api.__aexit__(None, None, None)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    click.echo("headway fake API stopped")
