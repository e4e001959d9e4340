"""The runner counts its input's lines (the display's total) while the first requests go out."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from headway.batch import BatchRequest, BatchRunner, Response
from headway.batch.jobs import count_lines, line_counts, open_input


def _write(path: Path, n: int, *, blank: int = 0) -> Path:
    lines = [json.dumps({"custom_id": f"r{i}", "body": {"pad": "x" * 200}}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n" + "\n" * blank)
    return path


@pytest.mark.virtual_time
async def test_the_first_request_does_not_wait_for_the_count(tmp_path: Path) -> None:
    # ~1.3 MB: more than one chunk of the count
    inp = _write(tmp_path / "in.jsonl", 6000)
    runner: BatchRunner
    totals: list[int | None] = []

    async def sender(request: BatchRequest) -> Response:
        totals.append(runner.stats.total)
        await asyncio.sleep(0.01)
        return Response(200, {})

    runner = BatchRunner(sender, inp, tmp_path / "out.jsonl", concurrency=4)
    stats = await runner.run()
    assert totals[0] is None  # sent before the file was counted
    assert 6000 in totals  # the count arrived while the run went on
    assert stats.total == stats.succeeded == 6000


@pytest.mark.virtual_time
async def test_an_interrupted_run_keeps_the_counted_total(tmp_path: Path) -> None:
    inp = _write(tmp_path / "in.jsonl", 50, blank=3)
    runner: BatchRunner

    async def sender(request: BatchRequest) -> Response:
        runner.stop()  # at the very first request, before the count ends
        return Response(200, {})

    runner = BatchRunner(sender, inp, tmp_path / "out.jsonl", concurrency=2)
    stats = await runner.run()
    assert stats.interrupted
    assert stats.total == count_lines(inp) == 53  # blank lines count, as before


@pytest.mark.virtual_time
async def test_a_finished_run_corrects_the_total(tmp_path: Path) -> None:
    inp = _write(tmp_path / "in.jsonl", 20, blank=2)

    async def sender(request: BatchRequest) -> Response:
        return Response(200, {})

    stats = await BatchRunner(sender, inp, tmp_path / "out.jsonl").run()
    assert stats.total == stats.done == 20


async def test_a_missing_input_fails_before_the_output_is_created(tmp_path: Path) -> None:
    async def sender(request: BatchRequest) -> Response:  # pragma: no cover - never sent
        return Response(200, {})

    out = tmp_path / "out.jsonl"
    with pytest.raises(FileNotFoundError):
        await BatchRunner(sender, tmp_path / "nothing.jsonl", out).run()
    assert not out.exists()


def test_line_counts_sum_to_count_lines(tmp_path: Path) -> None:
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b"x\n" * 700_000 + b"last")  # two chunks and an unterminated line
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        with open_input(path) as f:
            parts = list(line_counts(f))
        assert len(parts) == 3
        assert sum(parts) == count_lines(path) == 700_001
