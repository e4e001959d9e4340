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

import builtins
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headway import errors
from headway._idset import IdSet
from headway.batch.ledger import Result
from headway.errors import _CODES, error_code
from headway.http.tokens import usage_split

if TYPE_CHECKING:
    from rich.console import Console

#: Answers looked at for the "every answer is a 404" warning.
FIRST_ANSWERS = 10

#: How close a percentile in the summary is to the true one: within 0.5% of it.
PERCENTILE_ACCURACY = 0.005
# Values fall in buckets (gamma**(k-1), gamma**k]; a bucket's middle, 2 gamma**k / (gamma+1),
# is within PERCENTILE_ACCURACY of any value in it (the DDSketch mapping, Masson et al. 2019).
_GAMMA = (1 + PERCENTILE_ACCURACY) / (1 - PERCENTILE_ACCURACY)
_PER_LOG = 1.0 / math.log(_GAMMA)
_MIDDLE = 2.0 / (_GAMMA + 1.0)
_TINY = 1e-9  # a nanosecond and less counts as 0

__all__ = ["BatchStats", "Distribution", "render_summary", "summary_rows", "summary_text"]


class Distribution:
    """Percentiles of a stream of non-negative values (seconds) in constant memory.

    A run of a hundred million requests keeps a few thousand counters, not a float per
    request: values are counted in logarithmic buckets (as DDSketch does), so that each
    percentile is within :data:`PERCENTILE_ACCURACY` of the true one (or a nanosecond,
    for the smallest values) and never outside the values seen; count, total, min and
    max are exact. Percentiles are nearest-rank (the value at rank ``ceil(q% of n)``: of
    two values, p95 is the larger).

    >>> d = Distribution()
    >>> for v in (0.1, 0.2, 0.3, 4.0):
    ...     d.add(v)
    >>> d.count, round(d.total, 3), d.min, d.max
    (4, 4.6, 0.1, 4.0)
    >>> abs(d.percentile(50) - 0.2) <= 0.2 * PERCENTILE_ACCURACY, d.percentile(99)
    (True, 4.0)
    >>> Distribution().percentile(99) is None
    True
    """

    __slots__ = ("_buckets", "_zeros", "count", "max", "min", "total")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, value: float) -> None:
        """Count one value (a negative or non-finite one counts as 0)."""
        if _TINY < value < math.inf:
            key = math.ceil(math.log(value) * _PER_LOG)
            buckets = self._buckets
            buckets[key] = buckets.get(key, 0) + 1
        else:
            if not 0.0 <= value <= _TINY:  # a clock step back, a NaN or an infinity
                value = 0.0
            self._zeros += 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value
        if value < self.min:
            self.min = value

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100); ``None`` when no value was added."""
        n = self.count
        if n == 0:
            return None
        index = max(1, math.ceil(q / 100.0 * n)) - 1
        if index == n - 1:
            return self.max  # the ends are known exactly
        if index == 0:
            return self.min
        seen = self._zeros
        if index < seen:
            return self.min  # a nanosecond or less: the smallest value is as good
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            if index < seen:
                middle = _MIDDLE * _GAMMA**key
                return min(max(middle, self.min), self.max)
        return self.max  # pragma: no cover - the counts add up to n


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
        tokens: tokens used, from the responses' ``usage``; ``prompt_tokens`` (cached
            included), ``completion_tokens`` and ``cached_tokens`` split it.
        retries_by_cause: retries by the error code that caused them.
        failures_seen / recent_failures: failed results so far, and the last few as
            ``(number, code, custom_id, one-line reason)`` for the live display.
        limit_text / limited_by: the rate in force (``"3,000/min"``) and who sets it
            (``"you"`` for the flags, ``"server"`` once the server's enforced limit is lower).
        limit_rpm: the request rate in force per minute, as a number (``None``: no limit).
        learned: what the server advertised or probing found, per minute, by unit.
        stopped: why the run stopped early (a quota exhausted), if it did.
        answered / answered_404: of the first answers, how many; how many were 404s.
        latency / waiting / server: per sent request, its latency, the part of it spent
            waiting (rate limit and retry backoff) and the rest, the server's time, as
            :class:`Distribution` objects (constant memory however long the run).
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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    interrupted: bool = False
    abandoned: int = 0
    latency: Distribution = field(default_factory=Distribution)
    waiting: Distribution = field(default_factory=Distribution)
    server: Distribution = field(default_factory=Distribution)
    retries_by_cause: Counter[str] = field(default_factory=Counter)
    failures_seen: int = 0
    recent_failures: deque[tuple[int, str, str, str]] = field(
        default_factory=lambda: deque(maxlen=8)
    )
    limit_text: str | None = None
    limited_by: str | None = None
    limit_rpm: float | None = None
    learned: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None
    answered: int = 0
    answered_404: int = 0

    @property
    def written(self) -> int:
        """Results written by this run."""
        return self.succeeded + self.failed

    @property
    def done(self) -> int:
        """Input lines dealt with so far (written, skipped or duplicate)."""
        return self.succeeded + self.failed + self.skipped + self.duplicates

    @property
    def all_404(self) -> bool:
        """True when the first answers (:data:`FIRST_ANSWERS` of them) were all 404s."""
        return self.answered >= FIRST_ANSWERS and self.answered_404 == self.answered

    def repeated(self, seen: IdSet | set[str], custom_id: str, line: int) -> bool:
        """``True`` (and counted) when ``custom_id`` came earlier in the input (in ``seen``);
        else it is added to ``seen``."""
        if custom_id in seen:
            self.duplicates += 1
            if len(self.duplicate_examples) < 10:
                self.duplicate_examples.append((custom_id, line))
            return True
        seen.add(custom_id)
        return False

    def record(self, result: Result, *, waited: float | None = None) -> None:
        """Count one written result (``waited``: its seconds waiting for the limit,
        by default ``result.waited``)."""
        if waited is None:
            waited = result.waited
        status = result.status_code
        if status is not None and self.answered < FIRST_ANSWERS:
            self.answered += 1
            self.answered_404 += status == 404
        if result.error is None:
            self.succeeded += 1
            split = result.usage
            if split is None:
                split = usage_split(result.body)
            if split is not None:
                self.tokens += split.total
                self.prompt_tokens += split.prompt
                self.completion_tokens += split.completion
                self.cached_tokens += split.cached
            self._timed(result.latency, waited)
            return
        self.failed += 1
        error = result.error
        code = error.get("code", "unknown")
        self.errors_by_code[code] += 1
        self.failures_seen += 1
        reason = " ".join(str(error.get("message", "")).split())
        self.recent_failures.append((self.failures_seen, code, result.custom_id, reason))
        if code == "invalid_request":
            self.invalid += 1
            return
        if status == 429:
            self.rate_limited += 1
        self._timed(result.latency, waited)

    def _timed(self, latency: float, waited: float) -> None:
        waited = min(waited, latency)
        self.latency.add(latency)
        self.waiting.add(waited)
        self.server.add(latency - waited)

    def note_retry_cause(self, exc: BaseException | None, reason: str | None) -> None:
        """Count one retry under the error code of its cause."""
        if exc is not None:
            code = error_code(exc)
        elif reason:
            code = _code_of_reason(reason)
        else:
            code = "unknown"
        self.retries_by_cause[code] += 1

    def summary(self, *, elapsed: float) -> dict[str, Any]:
        """The summary as plain JSON-ready data."""
        lat, waits, server = self.latency, self.waiting, self.server
        sent = self.written - self.invalid
        attempts = sent + self.retries
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
            "learned_limits": dict(self.learned),
            "stopped": self.stopped,
            "interrupted": self.interrupted,
            "abandoned": self.abandoned,
            "latency_s": {
                "p50": lat.percentile(50),
                "p95": lat.percentile(95),
                "p99": lat.percentile(99),
                "max": lat.max if lat.count else None,
            },
            "waiting_s": {
                "p50": waits.percentile(50),
                "p95": waits.percentile(95),
                "total": round(waits.total, 3),
            },
            "server_s": {
                "p50": server.percentile(50),
                "p95": server.percentile(95),
                "p99": server.percentile(99),
            },
            "retries_by_cause": dict(self.retries_by_cause.most_common()),
            "rate_limit": {"in_force": self.limit_text, "limited_by": self.limited_by},
            "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(sent / elapsed, 2) if elapsed > 0 else None,
            "sent": self._sent(attempts, elapsed),
            "tokens": self.tokens,
            "tokens_split": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "cached": self.cached_tokens,
            },
            "tokens_per_min": round(self.tokens / elapsed * 60, 1) if elapsed > 0 else None,
        }

    def _sent(self, attempts: int, elapsed: float) -> dict[str, Any]:
        """The requests sent (every attempt) and, with a request limit, its use.

        The limit bounds requests sent, retries included; a 429 is left out of its use
        (the server refused it, and when its bucket still had room the limiter gave the
        turn back).
        """
        out: dict[str, Any] = {
            "requests": attempts,
            "per_s": round(attempts / elapsed, 2) if elapsed > 0 else None,
        }
        limit = self.limit_rpm
        if limit and elapsed > 0:
            counted = max(0, attempts - self.rate_limited)
            out["besides_429_per_s"] = round(counted / elapsed, 2)
            out["limit_per_min"] = limit
            out["limit_share"] = round(counted / elapsed * 60.0 / limit, 4)
        return out


def _code_of_reason(reason: str) -> str:
    """The error code of a retry reason such as ``"ServerError: HTTP 503 ..."``.

    >>> _code_of_reason("RateLimitError: 429 Too Many Requests"), _code_of_reason("Oops")
    ('rate_limit_exceeded', 'oops')
    """
    name = reason.split(":", 1)[0].strip()
    cls = getattr(errors, name, None) or getattr(builtins, name, None)
    if isinstance(cls, type):
        for known, code in _CODES:
            if issubclass(cls, known):
                return str(code)
    return name.lower() or "unknown"


def code_is_sent(result: Result) -> bool:
    """Whether a result came from a request that was actually sent (not an invalid line)."""
    return result.error is None or result.error.get("code") != "invalid_request"


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The summary's rows as ``(label, value, style)``, the order both renderers use."""
    rows: list[tuple[str, str, str]] = [("requests", f"{summary['total']:,}", "")]
    rows.append(("succeeded", f"{summary['succeeded']:,}", "green"))
    failed = summary["failed"]
    rows.append(("failed", f"{failed:,}", "red" if failed else ""))
    rows += [(f"  {code}", f"{n:,}", "") for code, n in summary["errors_by_code"].items()]
    if summary["skipped"]:
        rows.append(("already done (skipped)", f"{summary['skipped']:,}", ""))
    if summary["duplicates"]:
        rows.append(("duplicate custom_id (not sent)", f"{summary['duplicates']:,}", "yellow"))
    rows.append(("retries", f"{summary['retries']:,}", ""))
    for cause, n in summary.get("retries_by_cause", {}).items():
        rows.append((f"  {cause}", f"{n:,}", ""))
    rows.append(("429s seen", f"{summary['rate_limited']:,}", ""))
    lat = summary["latency_s"]
    rows.append(
        (
            "latency p50 / p95 / p99",
            f"{_fmt_s(lat['p50'])} / {_fmt_s(lat['p95'])} / {_fmt_s(lat['p99'])}",
            "",
        )
    )
    wait, server = summary.get("waiting_s"), summary.get("server_s")
    if wait is not None and server is not None:
        rows.append(
            (
                "  waiting for the limit p50 / p95",
                f"{_fmt_s(wait['p50'])} / {_fmt_s(wait['p95'])}",
                "",
            )
        )
        rows.append(
            (
                "  server time p50 / p95 / p99",
                f"{_fmt_s(server['p50'])} / {_fmt_s(server['p95'])} / {_fmt_s(server['p99'])}",
                "",
            )
        )
    rate = summary.get("rate_limit") or {}
    if rate.get("in_force"):
        who = f" (set by {rate['limited_by']})" if rate.get("limited_by") else ""
        learned = ", ".join(
            f"{v:,.0f} {unit}/min" for unit, v in (summary.get("learned_limits") or {}).items()
        )
        learned = f"; learned {learned}" if learned else ""
        rows.append(("rate in force", f"{rate['in_force']}{who}{learned}", ""))
    if summary.get("stopped"):
        rows.append(("stopped", str(summary["stopped"]), "red"))
    rps = summary["requests_per_s"]
    rows.append(("elapsed", f"{summary['elapsed_s']:.1f} s", ""))
    rows.append(("throughput", "-" if rps is None else f"{rps:,.1f} results/s", ""))
    sent = summary.get("sent") or {}
    if sent.get("per_s") is not None:
        rows.append(("requests sent", f"{sent['requests']:,} ({sent['per_s']:,.1f}/s)", ""))
    if sent.get("limit_share") is not None:
        rows.append(
            (
                "  of the request limit",
                f"{sent['limit_share']:.0%} of {sent['limit_per_min']:,.0f}/min "
                f"({sent['besides_429_per_s']:,.1f}/s besides 429s)",
                "",
            )
        )
    rows.append(("tokens", f"{summary['tokens']:,}", ""))
    split = summary.get("tokens_split")
    if split and summary["tokens"]:
        rows.append(
            (
                "  prompt / completion / cached",
                f"{split['prompt']:,} / {split['completion']:,} / {split['cached']:,}",
                "",
            )
        )
    if summary["interrupted"]:
        rows.append(("interrupted", f"yes ({summary['abandoned']} abandoned)", "yellow"))
    return rows


def _commands(summary: dict[str, Any]) -> list[str]:
    out = []
    for key, text in (("resume_command", "to resume"), ("retry_command", "to retry the failures")):
        command = summary.get(key)
        if command:
            out.append(f"{text}: {command}")
    return out


def summary_text(summary: dict[str, Any], *, title: str = "headway run") -> str:
    """The summary as plain aligned text (for logs; no terminal styling, no rich).

    >>> print(summary_text(BatchStats(total=0).summary(elapsed=0.0)).splitlines()[1])
      requests                                 0
    """
    rows = summary_rows(summary)
    width = max(len(label) for label, _, _ in rows)
    vwidth = max(len(value) for _, value, _ in rows)
    lines = [title]
    lines += [f"  {label:<{width}}  {value:>{vwidth}}" for label, value, _ in rows]
    return "\n".join([*lines, *_commands(summary)])


def render_summary(
    summary: dict[str, Any], console: Console, *, title: str = "headway run"
) -> None:
    """Print a summary (from :meth:`BatchStats.summary`) as a table that fits 80 columns.

    Keys a caller adds (``resume_command``, ``retry_command``) are printed under it.
    """
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left", min_width=40)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for label, value, style in summary_rows(summary):
        table.add_row(label, f"[{style}]{value}[/]" if style else value)
    console.print(table)
    for line in _commands(summary):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
