"""Provider Batch APIs: the same JSONL through OpenAI's or Anthropic's batch endpoints.

OpenAI's Batch API and Anthropic's Message Batches API run requests at half the price
within 24 hours. This package sends an input file through them with the guarantees of
the online path: each custom_id exactly once in the result file (same ledger, same
shape), resumable at any moment without paying twice (the sidecar
``OUT.batches.json`` records each batch before it is created), and what a batch left
undone written as a failed result with the provider's code (or sent online).

``headway run IN -o OUT --via batch`` is the command line; from Python:

>>> import asyncio, tempfile, pathlib, json
>>> from headway.testing import FakeAPI
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
>>> _ = (d / "in.jsonl").write_text("".join(json.dumps(
...     {"custom_id": str(i), "url": "/v1/chat/completions", "body": body}) + "\\n"
...     for i in range(3)))
>>> async def main():
...     async with FakeAPI() as api:
...         t = api.batches.timing  # how long the fake's batches take (seconds)
...         t.validating = t.processing = t.finalizing = 0.02
...         settings = batch_settings(base_url=api.url, poll_interval=0.05)
...         job = await submit(d / "in.jsonl", d / "out.jsonl", settings)  # returns at once
...         outcome = await collect(d / "out.jsonl", settings)              # waits, writes
...         return len(job.parts), outcome.stats.succeeded
>>> asyncio.run(main())
(1, 3)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from headway._clock import Clock
from headway.batch.batchapi.engine import (
    BatchAPISettings,
    BatchProgress,
    PlainBatchProgress,
    ProviderBatchRun,
    RunOutcome,
    describe,
)
from headway.batch.batchapi.plan import BatchLimits, Kind, batch_problem
from headway.batch.batchapi.state import BatchState, Part, state_path
from headway.batch.sender import SenderSettings, resolve_target

__all__ = [
    "BatchAPISettings",
    "BatchLimits",
    "BatchProgress",
    "BatchState",
    "Part",
    "PlainBatchProgress",
    "ProviderBatchRun",
    "RunOutcome",
    "batch_problem",
    "batch_settings",
    "cancel",
    "collect",
    "describe",
    "run",
    "state_path",
    "status",
    "submit",
]


def batch_settings(
    *,
    provider: str | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    kind: Kind | None = None,
    max_requests: int | None = None,
    max_bytes: int | None = None,
    max_tokens: int | None = None,
    poll_interval: float = 5.0,
    max_poll_interval: float = 120.0,
    lookup_window: float = 120.0,
    environ: Mapping[str, str] | None = None,
) -> BatchAPISettings:
    """Settings for a provider (``"openai"``, ``"anthropic"``) or an OpenAI-compatible URL.

    ``kind`` defaults to ``"anthropic"`` for ``provider="anthropic"``, else ``"openai"``.
    Limits default to the provider's (see :class:`BatchLimits`).
    """
    target = resolve_target(
        provider=provider,
        base_url=base_url,
        endpoint=None,
        api_key_env=api_key_env,
        environ=environ,
    )
    if kind is None:
        kind = "anthropic" if provider == "anthropic" else "openai"
    if kind == "anthropic":
        target.default_url = "/v1/messages"
        target.headers.setdefault("anthropic-version", "2023-06-01")
        if target.api_key is not None:
            target.auth = "x-api-key"
    limits = BatchLimits.for_provider(
        kind, max_requests=max_requests, max_bytes=max_bytes, max_tokens=max_tokens
    )
    return BatchAPISettings(
        target=target,
        kind=kind,
        provider=provider,
        api_key_env=api_key_env,
        limits=limits,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        lookup_window=lookup_window,
    )


async def run(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: BatchAPISettings,
    *,
    then_online: SenderSettings | None = None,
    retry_failed: bool = False,
    progress: BatchProgress | None = None,
    clock: Clock | None = None,
) -> RunOutcome:
    """Submit ``input`` as provider batches, wait for them and write every result.

    With ``then_online`` (the online path's settings), what the batches left undone
    (expired, cancelled) is sent online before returning.
    """
    engine = ProviderBatchRun(
        settings, output, retry_failed=retry_failed, progress=progress, clock=clock
    )
    return await engine.run(input, then_online=then_online is not None, online=then_online)


async def submit(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: BatchAPISettings,
    *,
    clock: Clock | None = None,
) -> BatchState:
    """Upload and create the batches for ``input``; return without waiting.

    Lines already in ``output`` or already submitted are not submitted again, so
    calling it twice submits nothing new. Collect the results later with
    :func:`collect` (in this process or another).
    """
    engine = ProviderBatchRun(settings, output, clock=clock)
    outcome = await engine.run(input, detach=True)
    return outcome.state


async def collect(
    output: str | os.PathLike[str],
    settings: BatchAPISettings,
    *,
    wait: bool = True,
    then_online: SenderSettings | None = None,
    progress: BatchProgress | None = None,
    clock: Clock | None = None,
) -> RunOutcome:
    """Wait for the batches recorded next to ``output`` and write their results.

    ``wait=False`` polls once and writes what has ended. With ``then_online``, what the
    batches left undone is sent online (the input file is the one :func:`submit` saw).
    """
    engine = ProviderBatchRun(settings, output, progress=progress, clock=clock)
    return await engine.run(
        None, wait=wait, then_online=then_online is not None, online=then_online
    )


async def status(
    output: str | os.PathLike[str], settings: BatchAPISettings, *, clock: Clock | None = None
) -> BatchState:
    """Poll each batch of ``output`` once, write the results of those that ended."""
    return await ProviderBatchRun(settings, output, clock=clock).refresh()


async def cancel(
    output: str | os.PathLike[str], settings: BatchAPISettings, *, clock: Clock | None = None
) -> BatchState:
    """Ask the provider to cancel every running batch of ``output``.

    What the batches had finished is kept; the rest ends as cancelled results when
    collected (``headway run`` again, :func:`collect` or :func:`status`).
    """
    return await ProviderBatchRun(settings, output, clock=clock).refresh(cancel=True)


def settings_from_state(
    output: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> BatchAPISettings:
    """The settings recorded in ``output``'s sidecar (provider, URL, key variable)."""
    state = BatchState.load(output)
    kind: Kind = "anthropic" if state.kind == "anthropic" else "openai"
    return batch_settings(
        provider=state.provider,
        base_url=None if state.provider else state.base_url,
        api_key_env=state.api_key_env,
        kind=kind,
        environ=environ,
    )
