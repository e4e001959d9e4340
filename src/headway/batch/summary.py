"""Counting a batch as it runs, and the summary printed at its end.

:class:`BatchStats` is the runner's live tally (the progress display reads it);
:meth:`BatchStats.summary` freezes it into a plain dict (what ``--summary-json`` writes)
and :func:`render_summary` draws it as a table.

>>> stats = BatchStats(total=3)
>>> stats.record(Result.success("a", 200, {"usage": {"total_tokens": 10}}, latency=0.5))
>>> stats.record(Result.failure("b", "server_error", "boom", status_code=503, latency=1.5))
>>> s = stats.summary(elapsed=2.0)
>>> s["succeeded"], s["failed"], s["errors_by_code"], s["tokens"]
(1, 1, {'server_error': 1}, 10)
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from headway.batch.ledger import Result

__all__ = ["BatchStats", "percentile", "render_summary"]


def percentile(sorted_values: array[float] | list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of already sorted values, nearest-rank; None if empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.0
    >>> percentile([], 99) is None
    True
    """
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, math.ceil(q / 100.0 * n))
    return float(sorted_values[min(rank, n) - 1])


@dataclass(slots=True)
class BatchStats:
    """Live counts of a batch run.

    Attributes:
        total: input lines (an estimate until the input is fully read), or None.
        skipped: requests already in the output from an earlier run (not sent).
        succeeded / failed: results written by this run (``invalid`` lines count as failed).
        invalid: lines that could not be parsed (an ``invalid_request`` result each).
        duplicates: lines whose custom_id was seen before (not sent, not written).
        errors_by_code: failed results by error code.
        retries: retries made (attempts beyond the first).
        rate_limited: 429 answers seen, retried or final.
        in_flight: requests being sent now; retrying: of those, how many have retried.
        tokens: tokens used, from the responses' ``usage``.
        limited_by: the request rate in force and who sets it
            (``"limited by server: 1,180/min"``), once known.
        learned: what the server advertised or probing found, per minute, by unit.
        stopped: why the run stopped early (a quota exhausted), if it did.
    """

    total: int | None = None
    skipped: int = 0
    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    duplicates: int = 0
    duplicate_examples: list[tuple[str, int]] = field(default_factory=list)
    errors_by_code: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    retrying: int = 0
    tokens: int = 0
    interrupted: bool = False
    abandoned: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    limited_by: str | None = None
    learned: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None

    @property
    def written(self) -> int:
        """Results written by this run."""
        return self.succeeded + self.failed

    @property
    def done(self) -> int:
        """Input lines dealt with so far (written, skipped or duplicate)."""
        return self.succeeded + self.failed + self.skipped + self.duplicates

    def record(self, result: Result) -> None:
        """Count one written result."""
        if result.error is None:
            self.succeeded += 1
        else:
            self.failed += 1
            code = result.error.get("code", "unknown")
            self.errors_by_code[code] += 1
            if code == "invalid_request":
                self.invalid += 1
            if result.status_code == 429:
                self.rate_limited += 1
        self.tokens += result.tokens
        if code_is_sent(result):
            self.latencies.append(result.latency)

    def summary(self, *, elapsed: float) -> dict[str, Any]:
        """The summary as plain JSON-ready data."""
        lat = array("d", sorted(self.latencies))
        sent = self.written - self.invalid
        return {
            "total": self.done if self.total is None else max(self.total, self.done),
            "succeeded": self.succeeded,
            "failed": self.failed,
            "invalid": self.invalid,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "limited_by": self.limited_by,
            "learned_limits": dict(self.learned),
            "stopped": self.stopped,
            "interrupted": self.interrupted,
            "abandoned": self.abandoned,
            "latency_s": {
                "p50": percentile(lat, 50),
                "p95": percentile(lat, 95),
                "p99": percentile(lat, 99),
                "max": lat[-1] if lat else None,
            },
            "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(sent / elapsed, 2) if elapsed > 0 else None,
            "tokens": self.tokens,
            "tokens_per_min": round(self.tokens / elapsed * 60, 1) if elapsed > 0 else None,
        }


def code_is_sent(result: Result) -> bool:
    """Whether a result came from a request that was actually sent (not an invalid line)."""
    return result.error is None or result.error.get("code") != "invalid_request"


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def render_summary(
    summary: dict[str, Any], console: Console, *, title: str = "headway run"
) -> None:
    """Print a summary (from :meth:`BatchStats.summary`) as a table."""
    table = Table(title=title, show_header=False, title_justify="left", min_width=40)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("requests", str(summary["total"]))
    table.add_row("succeeded", f"[green]{summary['succeeded']}[/]")
    failed = summary["failed"]
    table.add_row("failed", f"[red]{failed}[/]" if failed else "0")
    for code, n in summary["errors_by_code"].items():
        table.add_row(f"  {code}", str(n))
    if summary["skipped"]:
        table.add_row("already done (skipped)", str(summary["skipped"]))
    if summary["duplicates"]:
        table.add_row("duplicate custom_id (not sent)", f"[yellow]{summary['duplicates']}[/]")
    table.add_row("retries", str(summary["retries"]))
    table.add_row("429s seen", str(summary["rate_limited"]))
    if summary.get("limited_by"):
        learned = ", ".join(
            f"{v:,.0f} {unit}/min" for unit, v in summary.get("learned_limits", {}).items()
        )
        table.add_row("rate", summary["limited_by"] + (f" (learned {learned})" if learned else ""))
    lat = summary["latency_s"]
    table.add_row(
        "latency p50 / p95 / p99",
        f"{_fmt_s(lat['p50'])} / {_fmt_s(lat['p95'])} / {_fmt_s(lat['p99'])}",
    )
    rps = summary["requests_per_s"]
    table.add_row("elapsed", f"{summary['elapsed_s']:.1f} s")
    table.add_row("throughput", "-" if rps is None else f"{rps:.1f} req/s")
    table.add_row("tokens", f"{summary['tokens']:,}")
    if summary["interrupted"]:
        table.add_row("interrupted", f"[yellow]yes[/] ({summary['abandoned']} abandoned)")
    console.print(table)
