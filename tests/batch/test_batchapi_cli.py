"""``headway run --via batch`` and ``headway batches``: in-process and as real processes.

The server runs in a thread in real time; its batches are made to take a fraction of a
second so the whole file stays within a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from headway.batch.batchapi import BatchState
from headway.cli import cli
from headway.testing import FakeAPI

from .test_batchapi import records, write_input

pytestmark = pytest.mark.integration
HEADWAY = [sys.executable, "-m", "headway.cli"]


class Server:
    """A FakeAPI on its own loop in a thread, with fast batches."""

    def __init__(self, processing: float = 0.05, **kwargs: Any) -> None:
        self.processing = processing
        self.kwargs = kwargs
        self.api: FakeAPI | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        async with FakeAPI(**self.kwargs) as api:
            t = api.batches.timing
            t.validating, t.processing, t.finalizing, t.cancelling = (
                0.02,
                self.processing,
                0.02,
                0.02,
            )
            self.api = api
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()

    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.url

    def created(self) -> tuple[int, int]:
        assert self.api is not None
        files = [r for r in self.api.calls("POST", "/v1/files") if r.status == 200]
        batches = [r for r in self.api.calls("POST", "/v1/batches") if r.status == 200]
        return len(files), len(batches)

    def start(self) -> Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server().start()
    yield s
    s.stop()


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def once(out: Path, n: int) -> None:
    assert Counter(r["custom_id"] for r in records(out)) == Counter({f"q{i}": 1 for i in range(n)})


def run_args(inp: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [
        "run", str(inp), "-o", str(out), "--base-url", url, "--via", "batch",
        "--poll-interval", "0.02", "--max-poll-interval", "0.05", *extra,
    ]  # fmt: skip


def test_run_via_batch_writes_every_result_once(tmp_path: Path, server: Server) -> None:
    inp = write_input(tmp_path / "in.jsonl", 30, models=2)
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "s.json"
    result = invoke(
        run_args(inp, out, server.url, "--batch-max-requests", "10", "--summary-json", str(summary))
    )
    assert result.exit_code == 0, result.output
    once(out, 30)
    assert server.created() == (4, 4)  # 2 models x 15 lines, 10 a batch
    data = json.loads(summary.read_text())
    assert data["succeeded"] == 30
    assert data["batches"] == 4
    assert data["batches_running"] == 0
    assert "collected (10 requests)" in result.stderr
    # again: nothing is sent, nothing is written twice
    result = invoke(run_args(inp, out, server.url))
    assert result.exit_code == 0
    assert server.created() == (4, 4)
    once(out, 30)


def test_detach_then_status_collects(tmp_path: Path, server: Server) -> None:
    inp = write_input(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    result = invoke(run_args(inp, out, server.url, "--detach"))
    assert result.exit_code == 0, result.output
    assert "keep running at the provider" in result.stderr
    assert f"headway batches status {out}" in result.stderr
    assert records(out) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        result = invoke(["batches", "status", str(out)])
        assert result.exit_code == 0, result.output
        if "0 running" in result.stdout:
            break
        time.sleep(0.05)
    assert "1 collected" in result.stdout
    once(out, 5)
    assert server.created() == (1, 1)


def test_cancel_command(tmp_path: Path) -> None:
    slow = Server(processing=60.0).start()
    try:
        inp = write_input(tmp_path / "in.jsonl", 5)
        out = tmp_path / "out.jsonl"
        assert invoke(run_args(inp, out, slow.url, "--detach")).exit_code == 0
        result = invoke(["batches", "cancel", str(out)])
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 10
        while "0 running" not in result.stdout and time.monotonic() < deadline:
            time.sleep(0.02)
            result = invoke(["batches", "status", str(out)])
        assert "0 running" in result.stdout
        codes = Counter(r["error"]["code"] for r in records(out))
        assert codes == {"batch_cancelled": 5}
    finally:
        slow.stop()


def test_batches_without_state_is_a_one_line_error(tmp_path: Path) -> None:
    result = invoke(["batches", "status", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2
    assert "has no batches" in result.stderr


def test_batch_flags_need_via_batch(tmp_path: Path, server: Server) -> None:
    inp = write_input(tmp_path / "in.jsonl", 1)
    result = invoke(
        ["run", str(inp), "-o", str(tmp_path / "o"), "--base-url", server.url, "--detach"]
    )
    assert result.exit_code == 2
    assert "go with --via batch" in result.stderr
    result = invoke(run_args(inp, tmp_path / "o", server.url, "--shard", "1/2"))
    assert result.exit_code == 2
    assert "--via online" in result.stderr


def start(inp: Path, out: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*HEADWAY, *run_args(inp, out, url, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_state(out: Path, proc: subprocess.Popen[str], want: str) -> BatchState:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if BatchState.exists(out):
            try:
                state = BatchState.load(out)
            except ValueError:  # pragma: no cover - never half-written (atomic rename)
                raise
            if any(p.status == want for p in state.parts):
                return state
        if proc.poll() is not None:
            pytest.fail(f"run ended early: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run never got there")


def test_kill_9_mid_poll_then_resume_submits_nothing_again(tmp_path: Path) -> None:
    slow = Server(processing=1.5).start()
    try:
        n = 40
        inp = write_input(tmp_path / "in.jsonl", n)
        out = tmp_path / "out.jsonl"
        proc = start(inp, out, slow.url, "--batch-max-requests", "20")
        wait_for_state(out, proc, "submitted")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        # The second part may have died while creating: the resume looks for its batch
        # (this server lists it at once) for a short window before creating it.
        window = ("--batch-lookup-window", "2")
        resume = start(inp, out, slow.url, "--batch-max-requests", "20", *window)
        _, stderr = resume.communicate(timeout=60)
        assert resume.returncode == 0, stderr
        once(out, n)
        assert slow.created() == (2, 2)
    finally:
        slow.stop()


def test_ctrl_c_detaches_with_a_message_and_resumes(tmp_path: Path) -> None:
    slow = Server(processing=1.0).start()
    try:
        inp = write_input(tmp_path / "in.jsonl", 10)
        out = tmp_path / "out.jsonl"
        proc = start(inp, out, slow.url)
        wait_for_state(out, proc, "submitted")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 130, stderr
        assert "interrupted: 1 batch(es) keep running at the provider" in stderr
        assert "Traceback" not in stderr
        resume = start(inp, out, slow.url)
        _, stderr = resume.communicate(timeout=60)
        assert resume.returncode == 0, stderr
        once(out, 10)
        assert slow.created() == (1, 1)
    finally:
        slow.stop()


def test_then_online_flag(tmp_path: Path, server: Server) -> None:
    assert server.api is not None
    server.api.batches.timing.processing = 0.5
    server.api.batches.timing.completion_window = 0.02 + 0.25  # about half expire
    inp = write_input(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"
    result = invoke(run_args(inp, out, server.url, "--then-online"))
    assert result.exit_code == 0, result.output
    once(out, 20)
    online = len(server.api.calls("POST", "/v1/chat/completions"))
    assert 0 < online < 20
    assert all(r["error"] is None for r in records(out))


async def test_a_second_signal_stops_at_once() -> None:
    from headway._cli.batches import _run

    class Stuck:
        stopping = False

        def stop(self) -> None:
            self.stopping = True

        async def run(self, *args: object, **kwargs: object) -> None:
            await asyncio.Event().wait()  # a step that never ends (a hung upload)

    engine = Stuck()
    task = asyncio.ensure_future(
        _run(engine, Path("in"), detach=False, then_online=False, online=None)
    )  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0.01)
    assert engine.stopping
    assert not task.done()
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(asyncio.CancelledError):
        await task


def test_plan_shows_the_split_and_the_lines_that_cannot_go(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 25, models=2)
    with open(inp, "a") as f:
        body = {"model": "m", "stream": True}
        f.write(json.dumps({"custom_id": "s", "url": "/v1/chat/completions", "body": body}) + "\n")
    result = invoke(["batches", "plan", str(inp), "--batch-max-requests", "10"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("batch 1: /v1/chat/completions gpt-4o-mini-0: 10 requests")
    assert "cannot stream" in result.stdout
    assert lines[-1] == "4 batch(es), 25 requests; 1 line(s) cannot go"
    result = invoke(["batches", "plan", str(inp), "--provider", "anthropic"])
    assert "needs --provider anthropic" not in result.stdout
    assert "serve /v1/messages only" in result.stdout
    assert invoke(["batches", "plan", str(tmp_path / "nope")]).exit_code == 2


def test_a_provider_error_is_one_line_and_resumable(tmp_path: Path) -> None:
    locked = Server(api_key="sk-right").start()
    try:
        inp = write_input(tmp_path / "in.jsonl", 3)
        out = tmp_path / "out.jsonl"
        result = invoke(run_args(inp, out, locked.url))  # no key sent: 401 on the upload
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("headway: error: the provider's Batch API failed:")
        assert "run the same command again to resume" in lines[0]
        assert records(out) == []  # nothing written: the lines are not failed, they wait
        os.environ["HW_TEST_KEY"] = "sk-right"
        try:
            result = invoke([*run_args(inp, out, locked.url), "--api-key-env", "HW_TEST_KEY"])
            assert result.exit_code == 0, result.output
            result = invoke(["batches", "status", str(out)])
            assert result.exit_code == 0
        finally:
            del os.environ["HW_TEST_KEY"]
        once(out, 3)
    finally:
        locked.stop()


def test_provider_anthropic_via_batch(tmp_path: Path, server: Server) -> None:
    inp = write_input(tmp_path / "in.jsonl", 7, kind="anthropic")
    out = tmp_path / "out.jsonl"
    os.environ["HW_TEST_ANTHROPIC"] = "sk-ant-test"
    try:
        args = [*run_args(inp, out, server.url), "--provider", "anthropic"]
        result = invoke([*args, "--api-key-env", "HW_TEST_ANTHROPIC"])
    finally:
        del os.environ["HW_TEST_ANTHROPIC"]
    assert result.exit_code == 0, result.output
    once(out, 7)
    assert server.api is not None
    (create,) = server.api.calls("POST", "/v1/messages/batches")
    assert create.headers["anthropic-version"] == "2023-06-01"
    assert "x-api-key" in {k.lower() for k in create.headers}
    assert BatchState.load(out).kind == "anthropic"


def test_online_refuses_an_output_whose_batches_still_run(tmp_path: Path) -> None:
    slow = Server(processing=60.0).start()
    try:
        inp = write_input(tmp_path / "in.jsonl", 3)
        out = tmp_path / "out.jsonl"
        assert invoke(run_args(inp, out, slow.url, "--detach")).exit_code == 0
        result = invoke(["run", str(inp), "-o", str(out), "--base-url", slow.url])
        assert result.exit_code == 2
        assert "has batches running at the provider" in result.stderr
    finally:
        slow.stop()


def test_dry_run_via_batch_shows_the_batches_and_sends_nothing(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a dry run needs no key
    inp = write_input(tmp_path / "in.jsonl", 30, models=2)
    with open(inp, "a") as f:
        f.write('{"custom_id": "s", "body": {"model": "m", "stream": true}}\n')
    out = tmp_path / "out.jsonl"
    result = invoke(run_args(inp, out, server.url, "--dry-run", "--batch-max-requests", "10"))
    assert result.exit_code == 1, result.output  # a line cannot go in a batch
    assert "4 batch(es), 30 requests; 1 line(s) cannot go" in result.stdout
    assert "dry run: nothing was sent" in result.stdout
    assert server.created() == (0, 0)
    assert not out.exists()
    ok = write_input(tmp_path / "ok.jsonl", 3)
    result = invoke(["run", str(ok), "--dry-run", "--via", "batch", "--provider", "openai"])
    assert result.exit_code == 0, result.output
    assert "1 batch(es), 3 requests; 0 line(s) cannot go" in result.stdout


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
def test_output_format_is_refused_via_batch(tmp_path: Path, shape: str) -> None:
    inp = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    args = run_args(inp, out, "http://127.0.0.1:1", "--output-format", shape)
    result = invoke(args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--output-format goes with --via online" in lines[0]
    assert not out.exists()
