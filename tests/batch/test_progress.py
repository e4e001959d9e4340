from __future__ import annotations

import io

from rich.console import Console

from headway.batch import BatchStats, NullProgress, PlainProgress, RichProgress, render_summary
from headway.batch.ledger import Result
from headway.batch.progress import Rates
from headway.batch.summary import percentile


def test_rates_over_a_sliding_window() -> None:
    rates = Rates(window=10)
    assert rates.add(0.0, 0, 0) == (0.0, 0.0)
    assert rates.add(5.0, 50, 500) == (10.0, 6000.0)
    for t in range(6, 30):
        rps, _ = rates.add(float(t), 50 + (t - 5) * 2, 0)
    assert rps == 2.0  # the early burst has left the window


def test_plain_progress_eta_and_unknown_total() -> None:
    out = io.StringIO()
    p = PlainProgress(out, every=5.0)
    stats = BatchStats(total=None)
    p.start(stats, 0.0)
    stats.succeeded = 10
    p.update(stats, 1.0)  # too soon: nothing printed
    assert out.getvalue() == ""
    p.update(stats, 5.0)
    assert out.getvalue().startswith("[headway] 10/? | 2.0 req/s")
    assert "ETA ?" in out.getvalue()
    stats.total = 100_000
    stats.succeeded = 100
    p.update(stats, 10.0)
    assert "ETA 2h" in out.getvalue().splitlines()[-1]
    stats.total = 1000
    p.update(stats, 15.0)
    assert "ETA 1m" in out.getvalue().splitlines()[-1]
    p.stop(stats, 15.5)
    assert len(out.getvalue().splitlines()) == 4


def test_rich_progress_draws_a_bar() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    p = RichProgress(console)
    stats = BatchStats(total=10)
    p.update(stats, 0.0)  # before start: ignored
    p.start(stats, 0.0)
    stats.succeeded, stats.failed, stats.rate_limited = 6, 1, 2
    p.update(stats, 1.0)
    p.stop(stats, 2.0)
    p.stop(stats, 2.0)
    text = buf.getvalue()
    assert "7/10" in text
    assert "ok 6" in text
    assert "failed 1" in text
    assert "429s 2" in text


def test_null_progress_is_silent() -> None:
    p = NullProgress()
    stats = BatchStats()
    p.start(stats, 0)
    p.update(stats, 1)
    p.stop(stats, 2)


def test_summary_counts_and_table() -> None:
    stats = BatchStats(total=6, skipped=1, duplicates=1)
    stats.duplicate_examples.append(("x", 6))
    stats.record(Result.success("a", 200, {"usage": {"total_tokens": 4}}, latency=0.2))
    stats.record(Result.failure("b", "rate_limit_exceeded", "slow", status_code=429, latency=3.0))
    stats.record(Result.failure("c", "invalid_request", "line 3: bad"))
    stats.interrupted = True
    stats.abandoned = 2
    s = stats.summary(elapsed=2.0)
    assert s["total"] == 6
    assert (s["succeeded"], s["failed"], s["invalid"], s["rate_limited"]) == (1, 2, 1, 1)
    assert s["latency_s"] == {"p50": 0.2, "p95": 3.0, "p99": 3.0, "max": 3.0}
    assert s["requests_per_s"] == 1.0
    assert s["tokens_per_min"] == 120.0
    buf = io.StringIO()
    render_summary(s, Console(file=buf, width=100), title="t")
    text = buf.getvalue()
    for fragment in (
        "rate_limit_exceeded",
        "invalid_request",
        "already done (skipped)",
        "duplicate custom_id",
        "interrupted",
        "200 ms / 3.00 s / 3.00 s",
    ):
        assert fragment in text


def test_empty_summary() -> None:
    s = BatchStats().summary(elapsed=0.0)
    assert s["latency_s"]["p50"] is None
    assert s["requests_per_s"] is None
    buf = io.StringIO()
    render_summary(s, Console(file=buf, width=100))
    assert "- / - / -" in buf.getvalue()
    assert percentile([5.0], 99) == 5.0
