from __future__ import annotations

import asyncio
import gzip
import io
import json
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headway._idset as idset_module
from headway.batch import (
    BatchRequest,
    BatchRunner,
    PlainProgress,
    Response,
    note_retry,
)
from headway.batch.runner import status_error_code
from headway.errors import RateLimitError, ServerError
from headway.testing import VirtualClock


def write_input(path: Path, n: int, *, extra: str = "") -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"r{i}", "body": {"i": i}}) + "\n")
        f.write(extra)
    return path


def read_ids(path: Path) -> Counter[str]:
    if not path.exists():
        return Counter()
    return Counter(json.loads(line)["custom_id"] for line in path.read_text().splitlines())


async def ok_sender(request: BatchRequest) -> Response:
    await asyncio.sleep(0.01)
    return Response(
        200,
        {"echo": request.body, "usage": {"total_tokens": 5}},
        {"X-Request-Id": f"req-{request.custom_id}"},
    )


@pytest.mark.virtual_time
async def test_runs_every_request_once(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 50)
    out = tmp_path / "out.jsonl"
    runner = BatchRunner(ok_sender, inp, out, concurrency=8)
    stats = await runner.run()
    assert (stats.succeeded, stats.failed, stats.total) == (50, 0, 50)
    assert read_ids(out) == Counter({f"r{i}": 1 for i in range(50)})
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["response"]["request_id"].startswith("req-r")
    summary = runner.summary()
    assert summary["tokens"] == 250
    assert summary["latency_s"]["p50"] == pytest.approx(0.01, rel=0.01)
    assert summary["requests_per_s"] > 0
    with pytest.raises(RuntimeError, match="runs once"):
        await runner.run()


@pytest.mark.virtual_time
async def test_concurrency_is_capped(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 40)
    active = peak = 0

    async def sender(request: BatchRequest) -> Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(1)
        finally:
            active -= 1
        return Response(200, {})

    await BatchRunner(sender, inp, tmp_path / "out.jsonl", concurrency=5).run()
    assert peak == 5


def test_concurrency_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BatchRunner(ok_sender, tmp_path / "in", tmp_path / "out", concurrency=0)


@pytest.mark.virtual_time
async def test_errors_invalid_lines_and_duplicates(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        '{"custom_id": "a", "body": {}}\n'
        '{"custom_id": "boom", "body": {}}\n'
        '{"custom_id": "teapot", "body": {}}\n'
        "not json\n"
        '{"custom_id": "a", "body": {"again": 1}}\n'
    )

    async def sender(request: BatchRequest) -> Response:
        if request.custom_id == "boom":
            raise ServerError("upstream down", status_code=503, headers={"x-request-id": "r9"})
        if request.custom_id == "teapot":
            return Response(418, {"error": "short and stout"}, request_id="rt")
        return Response(200, {})

    out = tmp_path / "out.jsonl"
    runner = BatchRunner(sender, inp, out)
    stats = await runner.run()
    assert (stats.succeeded, stats.failed, stats.invalid, stats.duplicates) == (1, 3, 1, 1)
    assert stats.duplicate_examples == [("a", 5)]
    assert stats.errors_by_code == {"server_error": 1, "http_418": 1, "invalid_request": 1}
    recs = {json.loads(x)["custom_id"]: json.loads(x) for x in out.read_text().splitlines()}
    assert set(recs) == {"a", "boom", "teapot", "4"}
    assert recs["4"]["error"]["code"] == "invalid_request"
    assert "line 4" in recs["4"]["error"]["message"]
    assert recs["boom"]["response"]["request_id"] == "r9"
    assert recs["teapot"]["response"] == {
        "status_code": 418,
        "request_id": "rt",
        "body": {"error": "short and stout"},
    }
    assert runner.summary()["total"] == 5


def test_status_codes() -> None:
    assert [status_error_code(s) for s in (400, 422, 401, 403, 404, 429, 500, 302)] == [
        "bad_request",
        "bad_request",
        "authentication_error",
        "authentication_error",
        "not_found",
        "rate_limit_exceeded",
        "server_error",
        "http_302",
    ]


@pytest.mark.virtual_time
async def test_resume_skips_done_and_retry_failed_resends(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    calls: list[str] = []

    async def flaky(request: BatchRequest) -> Response:
        calls.append(request.custom_id)
        if request.custom_id in {"r3", "r7"} and calls.count(request.custom_id) == 1:
            raise ServerError("boom", status_code=500)
        return Response(200, {})

    first = await BatchRunner(flaky, inp, out).run()
    assert (first.succeeded, first.failed) == (8, 2)
    second = BatchRunner(flaky, inp, out)
    await second.run()
    assert second.stats.skipped == 10
    assert second.ledger.failed_before == 2
    assert len(calls) == 10
    third = await BatchRunner(flaky, inp, out, retry_failed=True).run()
    assert (third.skipped, third.succeeded) == (8, 2)
    assert sorted(calls[10:]) == ["r3", "r7"]
    assert read_ids(out) == Counter({f"r{i}": 1 for i in range(10)})


@pytest.mark.virtual_time
async def test_note_retry_counts_retries_and_429s(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 3)
    seen_retrying: list[int] = []
    runner: BatchRunner

    async def sender(request: BatchRequest) -> Response:
        note_retry(RateLimitError("slow", status_code=429))
        note_retry(ServerError("x", status_code=503))
        seen_retrying.append(runner.stats.retrying)
        await asyncio.sleep(1)
        return Response(200, {})

    runner = BatchRunner(sender, inp, tmp_path / "out.jsonl", concurrency=3)
    stats = await runner.run()
    assert (stats.retries, stats.rate_limited, stats.retrying) == (6, 3, 0)
    assert max(seen_retrying) == 3
    note_retry(None)  # outside a runner: nothing happens


@pytest.mark.virtual_time
async def test_stop_lets_in_flight_finish_and_leaves_the_rest(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 100)
    out = tmp_path / "out.jsonl"
    runner: BatchRunner
    started = 0

    async def sender(request: BatchRequest) -> Response:
        nonlocal started
        started += 1
        if started == 12:
            runner.stop()
        await asyncio.sleep(5)
        return Response(200, {})

    runner = BatchRunner(sender, inp, out, concurrency=4, grace=60)
    stats = await runner.run()
    assert stats.interrupted
    assert stats.abandoned == 0
    written = read_ids(out)
    assert stats.succeeded == len(written) == started
    assert all(n == 1 for n in written.values())
    again = await BatchRunner(ok_sender, inp, out).run()
    assert again.skipped == started
    assert read_ids(out) == Counter({f"r{i}": 1 for i in range(100)})


@pytest.mark.virtual_time
async def test_second_stop_abandons_in_flight(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    runner: BatchRunner

    async def sender(request: BatchRequest) -> Response:
        if request.custom_id == "r2":
            runner.stop()
            runner.stop()
        await asyncio.sleep(100)
        return Response(200, {})

    runner = BatchRunner(sender, inp, out, concurrency=3)
    stats = await runner.run()
    assert stats.interrupted
    assert stats.abandoned == 3
    assert stats.written == 0
    assert read_ids(out) == Counter()


@pytest.mark.virtual_time
async def test_grace_period_expiry_abandons(tmp_path: Path, virtual_clock: VirtualClock) -> None:
    inp = write_input(tmp_path / "in.jsonl", 4)
    runner: BatchRunner

    async def sender(request: BatchRequest) -> Response:
        if request.custom_id == "r0":
            runner.stop()
            await asyncio.sleep(1)
            return Response(200, {})
        await asyncio.sleep(1000)
        return Response(200, {})

    runner = BatchRunner(sender, inp, tmp_path / "out.jsonl", concurrency=4, grace=7)
    t0 = virtual_clock.elapsed
    stats = await runner.run()
    assert virtual_clock.elapsed - t0 == pytest.approx(7, abs=0.1)
    assert (stats.succeeded, stats.abandoned) == (1, 3)


@pytest.mark.virtual_time
async def test_stop_before_run(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 4)
    runner = BatchRunner(ok_sender, inp, tmp_path / "out.jsonl")
    runner.stop()
    assert runner.stopping
    stats = await runner.run()
    assert stats.interrupted
    assert stats.written == 0


@pytest.mark.virtual_time
async def test_cancelled_run_writes_nothing_in_flight(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"

    async def slow(request: BatchRequest) -> Response:
        await asyncio.sleep(100)
        return Response(200, {})

    task = asyncio.ensure_future(BatchRunner(slow, inp, out).run())
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert read_ids(out) == Counter()


@pytest.mark.virtual_time
async def test_corrupt_gzip_input_finishes_in_flight_then_raises(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl.gz"
    data = gzip.compress(
        b"".join(
            b'{"custom_id": "c%d", "body": {"pad": "%s"}}\n' % (i, b"x" * i) for i in range(3000)
        )
    )
    inp.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.jsonl"
    runner = BatchRunner(ok_sender, inp, out, concurrency=4)
    with pytest.raises(OSError, match="cannot read"):
        await runner.run()
    ids = read_ids(out)
    assert ids
    assert all(n == 1 for n in ids.values())


@pytest.mark.virtual_time
async def test_sender_bug_is_an_internal_error_result(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 2)

    async def buggy(request: BatchRequest) -> Response:
        raise KeyError("oops")

    stats = await BatchRunner(buggy, inp, tmp_path / "out.jsonl").run()
    assert stats.errors_by_code == {"internal_error": 2}


@pytest.mark.virtual_time
async def test_progress_is_ticked(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 20)
    buf = io.StringIO()

    async def sender(request: BatchRequest) -> Response:
        await asyncio.sleep(1)
        return Response(200, {"usage": {"total_tokens": 3}})

    progress = PlainProgress(buf, every=2.0)
    await BatchRunner(sender, inp, tmp_path / "out.jsonl", concurrency=2, progress=progress).run()
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 4
    assert lines[-1].startswith("[headway] 20/20 100%")
    assert "results/s" in lines[1]
    assert "tok/min" in lines[1]
    assert "ETA" in lines[1]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    stops=st.lists(st.integers(0, 45), max_size=3),
    concurrency=st.integers(1, 6),
    fail_every=st.integers(0, 5),
)
def test_stops_at_random_points_then_resume_is_exactly_once(
    tmp_path_factory: pytest.TempPathFactory,
    n: int,
    stops: list[int],
    concurrency: int,
    fail_every: int,
) -> None:
    d = tmp_path_factory.mktemp("resume")
    inp = write_input(d / "in.jsonl", n)
    out = d / "out.jsonl"

    async def one_run(stop_at: int | None, abandon: bool) -> None:
        runner: BatchRunner
        calls = 0

        async def sender(request: BatchRequest) -> Response:
            nonlocal calls
            calls += 1
            if stop_at is not None and calls == stop_at:
                runner.stop()
                if abandon:
                    runner.stop()
            await asyncio.sleep(0.5 + (calls % 3))
            if fail_every and calls % fail_every == 0:
                raise ServerError("boom", status_code=502)
            return Response(200, {})

        runner = BatchRunner(sender, inp, out, concurrency=concurrency, grace=2)
        await runner.run()

    async def main() -> None:
        with VirtualClock():
            for i, stop_at in enumerate(stops):
                await one_run(stop_at, abandon=i % 2 == 1)
            await one_run(None, abandon=False)

    asyncio.run(main())
    assert read_ids(out) == Counter({f"r{i}": 1 for i in range(n)})


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 30),
    stops=st.lists(st.integers(0, 35), max_size=3),
    repeats=st.lists(st.integers(0, 29), max_size=5),
    fail_every=st.integers(0, 4),
    threshold=st.integers(0, 4),
)
def test_resume_is_exactly_once_with_the_ids_on_disk(
    tmp_path_factory: pytest.TempPathFactory,
    n: int,
    stops: list[int],
    repeats: list[int],
    fail_every: int,
    threshold: int,
) -> None:
    """Past the (tiny) spill threshold the runner's and the ledger's sets of custom_ids
    live in SQLite files: stopped runs, repeated lines and a retry of the failures still
    leave each custom_id in the output exactly once, and no file behind."""
    d = tmp_path_factory.mktemp("spill")
    lines = ({"custom_id": f"r{i % n}", "body": {"i": i % n}} for i in repeats)
    extra = "".join(json.dumps(line) + "\n" for line in lines)
    inp = write_input(d / "in.jsonl", n, extra=extra)
    out = d / "out.jsonl"
    spills = 0
    spill = idset_module.IdSet._spill

    def counting_spill(self: idset_module.IdSet, ids: set[str]) -> None:
        nonlocal spills
        spills += 1
        spill(self, ids)

    async def one_run(stop_at: int | None, retry_failed: bool) -> BatchRunner:
        runner: BatchRunner
        calls = 0

        async def sender(request: BatchRequest) -> Response:
            nonlocal calls
            calls += 1
            if stop_at is not None and calls == stop_at:
                runner.stop()
            await asyncio.sleep(0.5 + (calls % 3))
            if fail_every and calls % fail_every == 0 and not retry_failed:
                raise ServerError("boom", status_code=502)
            return Response(200, {})

        runner = BatchRunner(sender, inp, out, concurrency=3, grace=2, retry_failed=retry_failed)
        await runner.run()
        return runner

    async def main() -> BatchRunner:
        with VirtualClock():
            for stop_at in stops:
                await one_run(stop_at, retry_failed=False)
            await one_run(None, retry_failed=False)
            return await one_run(None, retry_failed=True)

    with (
        mock.patch.object(idset_module, "SPILL_AT", threshold),
        mock.patch.object(idset_module.IdSet, "_spill", counting_spill),
    ):
        last = asyncio.run(main())
    assert read_ids(out) == Counter({f"r{i}": 1 for i in range(n)})
    assert all(json.loads(line)["error"] is None for line in out.read_text().splitlines())
    assert last.stats.duplicates == len(repeats)
    assert spills > 0 or n <= threshold
    assert sorted(p.name for p in d.iterdir()) == ["in.jsonl", "out.jsonl"]
