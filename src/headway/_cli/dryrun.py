"""``headway run --dry-run``: check every line, say what would be sent, send nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import click

from headway._cli.common import EXIT_FAILED, EXIT_OK
from headway.batch.jobs import InvalidLine, read_requests
from headway.batch.sender import Target
from headway.http.tokens import estimate_tokens

__all__ = ["dry_run_report"]

#: Endpoint paths headway knows the body of (others are sent as they are, with a note).
KNOWN_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/v1/moderations",
        "/chat/completions",
        "/embeddings",
        "/api/chat",
        "/api/generate",
        "/api/embed",
    }
)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run_report(
    source: str,
    target: Target,
    *,
    rpm: float | None,
    tpm: float | None,
    concurrency: int,
    owns: Callable[[str], bool] | None = None,
) -> int:
    """Read every line of ``source``; print counts, tokens and time; exit 1 on bad lines."""
    by_endpoint: Counter[tuple[str, str]] = Counter()
    tokens_by: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    n_problems = 0
    seen: set[str] = set()
    duplicates = 0
    too_large = 0
    unknown_paths: Counter[str] = Counter()
    total_tokens = 0
    for item in read_requests(source, default_url=target.default_url):
        if owns is not None and not owns(item.custom_id):
            continue
        if item.custom_id in seen:
            duplicates += 1
            n_problems += 1
            if len(problems) < 10:
                problems.append(f"line {item.line}: custom_id {item.custom_id!r} repeats")
            continue
        seen.add(item.custom_id)
        if isinstance(item, InvalidLine):
            n_problems += 1
            if len(problems) < 10:
                problems.append(item.message)
            continue
        path = target.path(item.url)
        if path.split("?", 1)[0] not in KNOWN_PATHS:
            unknown_paths[path] += 1
        model = item.body.get("model")
        key = (f"{item.method} {path}", model if isinstance(model, str) else "-")
        estimate = estimate_tokens(item.body, method="heuristic")
        if tpm is not None and estimate > tpm:
            too_large += 1
            n_problems += 1
            if len(problems) < 10:
                problems.append(
                    f"line {item.line}: about {estimate:,} tokens, more than --tpm {tpm:,.0f} "
                    "admits at once (raise --tpm)"
                )
        by_endpoint[key] += 1
        tokens_by[key] += estimate
        total_tokens += estimate
    sendable = sum(by_endpoint.values())
    _print_report(by_endpoint, tokens_by, target)
    out: list[str] = []
    out.append(
        f"{sendable:,} request(s) to send, about {total_tokens:,} tokens (estimated: prompt "
        "+ max_tokens)"
    )
    out.append(_time_line(sendable, total_tokens, rpm, tpm, concurrency))
    for path, n in unknown_paths.most_common(3):
        out.append(f"note: {n:,} line(s) go to {path}, which is not an endpoint headway knows")
    if n_problems:
        out.append(
            f"{n_problems:,} problem(s): {duplicates:,} duplicate custom_id, {too_large:,} too "
            f"large, {n_problems - duplicates - too_large:,} invalid line(s)"
        )
        out.extend(f"  {p}" for p in problems)
    out.append("dry run: nothing was sent")
    for line in out:
        click.echo(line)
    return EXIT_FAILED if n_problems else EXIT_OK


def _print_report(
    by_endpoint: Counter[tuple[str, str]], tokens_by: Counter[tuple[str, str]], target: Target
) -> None:
    click.echo(f"headway run --dry-run: to {target.base_url}")
    if not by_endpoint:
        return
    width = max(len(k[0]) for k in by_endpoint)
    mwidth = max(len(k[1]) for k in by_endpoint)
    for (endpoint, model), n in sorted(by_endpoint.items()):
        click.echo(
            f"  {endpoint:<{width}}  {model:<{mwidth}}  {n:>9,} requests  "
            f"{tokens_by[(endpoint, model)]:>12,} tokens"
        )


def _time_line(n: int, tokens: int, rpm: float | None, tpm: float | None, concurrency: int) -> str:
    bounds: list[tuple[float, str]] = []
    if rpm is not None:
        bounds.append((n / rpm * 60.0, f"--rpm {rpm:,.0f}"))
    if tpm is not None:
        bounds.append((tokens / tpm * 60.0, f"--tpm {tpm:,.0f}"))
    if not bounds:
        return (
            f"time: no --rpm/--tpm given, so the server's speed decides "
            f"({concurrency} in flight at most)"
        )
    seconds, which = max(bounds)
    return f"time at the given limits: about {_duration(seconds)} (set by {which})"
