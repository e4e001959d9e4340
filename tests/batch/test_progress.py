from __future__ import annotations

import io
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from headway.batch import BatchStats, NullProgress, PlainProgress, RichProgress, render_summary
from headway.batch.ledger import Result
from headway.batch.progress import Rates
from headway.batch.summary import PERCENTILE_ACCURACY, Distribution, summary_text


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
    assert out.getvalue().startswith("[headway] 10/? | 2.0 results/s")
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
    close = pytest.approx  # the percentiles are within PERCENTILE_ACCURACY of the values
    assert s["latency_s"] == {
        "p50": close(0.2, rel=PERCENTILE_ACCURACY),
        "p95": 3.0,  # never above the largest value seen
        "p99": 3.0,
        "max": 3.0,
    }
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


def test_summary_reports_requests_sent_against_the_request_limit() -> None:
    stats = BatchStats(total=3, limit_text="60/min", limited_by="you", limit_rpm=60.0)
    for cid in ("a", "b", "c"):
        stats.record(Result.success(cid, 200, {}, latency=0.1))
    stats.retries, stats.rate_limited = 3, 1  # 6 requests sent, one of them answered 429
    s = stats.summary(elapsed=5.0)
    assert s["requests_per_s"] == 0.6  # results
    assert s["sent"] == {
        "requests": 6,
        "per_s": 1.2,
        "besides_429_per_s": 1.0,
        "limit_per_min": 60.0,
        "limit_share": 1.0,
    }
    text = summary_text(s)
    assert "0.6 results/s" in text
    assert "6 (1.2/s)" in text
    assert "100% of 60/min (1.0/s besides 429s)" in text
    unlimited = BatchStats(total=1)
    unlimited.record(Result.success("a", 200, {}, latency=0.1))
    s = unlimited.summary(elapsed=1.0)
    assert s["sent"] == {"requests": 1, "per_s": 1.0}
    assert "of the request limit" not in summary_text(s)


def test_empty_summary() -> None:
    s = BatchStats().summary(elapsed=0.0)
    assert s["latency_s"]["p50"] is None
    assert s["requests_per_s"] is None
    buf = io.StringIO()
    render_summary(s, Console(file=buf, width=100))
    assert "- / - / -" in buf.getvalue()


# -- the live display at 80 and 120 columns ----------------------------------------------------


def _busy_stats() -> BatchStats:
    stats = BatchStats(total=1_000_000)
    stats.succeeded, stats.failed, stats.retrying, stats.rate_limited = 412_345, 1_234, 17, 9_876
    stats.limit_text, stats.limited_by = "1,180/min", "server"
    return stats


def _render(width: int, stats: BatchStats) -> list[str]:
    from headway.batch.progress import StatusLine

    buf = io.StringIO()
    line = StatusLine(stats)
    line.rps, line.tpm = 1234.5, 4_560_000.0
    Console(file=buf, width=width, color_system=None).print(line)
    return buf.getvalue().splitlines()


def test_display_fits_80_columns_with_everything_that_matters() -> None:
    lines = _render(80, _busy_stats())
    assert len(lines) == 2
    assert all(len(line) <= 80 for line in lines)
    first, second = lines
    assert "413,579/1,000,000" in first
    assert "41%" in first
    assert "1,234.5/s" in first
    assert "ETA 7m55s" in first
    assert first.startswith("━")  # the bar is there, not cut
    assert "ok 412,345" in second
    assert "failed 1,234" in second
    assert "429s 9,876" in second
    assert "limited by server: 1,180/min" in second


def test_wider_terminals_get_more() -> None:
    narrow = _render(80, _busy_stats())
    assert "tok/min" not in "".join(narrow)  # no room at 80 with these numbers
    lines = _render(120, _busy_stats())
    assert len(lines) == 2
    assert all(len(line) <= 120 for line in lines)
    assert lines[0].count("━") > narrow[0].count("━")  # a longer bar
    assert "4.56M tok/min" in lines[1]
    (wide,) = _render(170, _busy_stats())
    assert len(wide) <= 170
    for fragment in ("ETA 7m55s", "ok 412,345", "4.56M tok/min", "limited by server"):
        assert fragment in wide
    small = BatchStats(total=10)
    small.succeeded = 4
    assert len(_render(120, small)) == 1


def test_display_with_unknown_total_and_no_limit() -> None:
    stats = BatchStats(total=None)
    stats.succeeded = 5
    (first, second) = _render(80, stats)
    assert "5/? " in first
    assert "ETA ?" in first
    assert "no limit" in second


def test_failures_are_shown_as_they_happen() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80, color_system=None)
    p = RichProgress(console)
    stats = BatchStats(total=100)
    p.start(stats, 0.0)
    stats.record(
        Result.failure("req-17", "server_error", "HTTP 503: upstream\nis down", status_code=503)
    )
    p.update(stats, 0.25)
    for i in range(8):
        stats.record(Result.failure(f"bad-{i}", "bad_request", "HTTP 400", status_code=400))
    p.update(stats, 0.5)
    p.stop(stats, 1.0)
    text = buf.getvalue()
    assert "failed server_error req-17: HTTP 503: upstream is down" in text
    assert "failed bad_request bad-7: HTTP 400" in text
    assert "... and 3 more failure(s)" in text


def test_plain_progress_prints_failures_and_the_404_hint() -> None:
    out = io.StringIO()
    p = PlainProgress(out, every=60.0)
    stats = BatchStats(total=20)
    p.start(stats, 0.0)
    for i in range(10):
        stats.record(Result.failure(f"n{i}", "not_found", "HTTP 404", status_code=404))
    p.update(stats, 1.0)
    text = out.getvalue()
    assert "[headway] failed not_found n9: HTTP 404" in text
    assert "[headway] ... and 5 more failure(s)" in text
    assert "the first answers were all 404 Not Found" in text
    p.update(stats, 2.0)
    assert out.getvalue().count("404 Not Found") == 1  # said once


def test_token_split_across_usage_shapes() -> None:
    stats = BatchStats()
    openai = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "total_tokens": 110,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    anthropic = {
        "input_tokens": 5,
        "output_tokens": 7,
        "cache_read_input_tokens": 50,
        "cache_creation_input_tokens": 20,
    }
    stats.record(Result.success("a", 200, {"usage": openai}), waited=0.0)
    stats.record(Result.success("b", 200, {"usage": anthropic}))
    stats.record(Result.success("c", 200, {"prompt_eval_count": 26, "eval_count": 4}))
    s = stats.summary(elapsed=1.0)
    assert s["tokens_split"] == {"prompt": 100 + 75 + 26, "completion": 10 + 7 + 4, "cached": 114}
    assert s["tokens"] == 110 + 82 + 30


def test_latency_splits_into_waiting_and_server_time() -> None:
    stats = BatchStats()
    stats.record(Result.success("a", 200, {}, latency=3.0), waited=2.9)
    stats.record(Result.success("b", 200, {}, latency=0.05), waited=0.0)
    s = stats.summary(elapsed=3.0)
    assert s["waiting_s"]["p95"] == pytest.approx(2.9, rel=PERCENTILE_ACCURACY)
    assert s["server_s"]["p95"] == pytest.approx(0.1, rel=PERCENTILE_ACCURACY)
    assert s["server_s"]["p50"] == pytest.approx(0.05, rel=PERCENTILE_ACCURACY)
    buf = io.StringIO()
    s["retry_command"] = "headway run in.jsonl -o out.jsonl --retry-failed"
    render_summary(s, Console(file=buf, width=80), title="t")
    text = buf.getvalue()
    assert "waiting for the limit p50 / p95" in text
    assert "to retry the failures: headway run in.jsonl -o out.jsonl --retry-failed" in text
    assert all(len(line) <= 80 for line in text.splitlines())


# -- the latency percentiles in constant memory -------------------------------------------------


@given(
    st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([50, 95, 99]),
)
def test_a_percentile_is_within_its_accuracy_of_a_value_at_its_rank(
    values: list[float], q: int
) -> None:
    d = Distribution()
    for v in values:
        d.add(v)
    got = d.percentile(q)
    assert got is not None
    ranked = sorted(values)
    assert ranked[0] <= got <= ranked[-1]
    # nearest-rank: the value at rank ceil(q% of n), within the sketch's accuracy
    want = ranked[max(1, math.ceil(q / 100.0 * len(ranked))) - 1]
    assert abs(got - want) <= PERCENTILE_ACCURACY * want + 1e-9, (got, want)  # or 1 ns
    assert (d.count, d.min, d.max) == (len(values), ranked[0], ranked[-1])
    assert d.total == pytest.approx(sum(values))


def test_a_long_run_keeps_a_few_thousand_counters_not_a_float_per_request() -> None:
    import pickle
    import random

    rng = random.Random(7)
    short, long = Distribution(), Distribution()
    for _ in range(1_000):
        short.add(rng.lognormvariate(-1.0, 2.0))
    for _ in range(100_000):
        long.add(rng.lognormvariate(-1.0, 2.0))
    # a hundred times the requests, the same size (a float per request would be 800 KB)
    assert len(pickle.dumps(long)) < 2 * len(pickle.dumps(short)) + 4096
    assert len(pickle.dumps(long)) < 64 * 1024
    assert Distribution().percentile(50) is None
    d = Distribution()
    d.add(-0.001)  # a clock step backwards counts as 0, not as a negative time
    d.add(math.nan)  # nor do a NaN or an infinity poison the summary's JSON
    d.add(math.inf)
    assert (d.count, d.percentile(50), d.max, d.total) == (3, 0.0, 0.0, 0.0)
