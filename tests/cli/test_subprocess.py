"""Real processes: kill -9 mid-run then resume, Ctrl-C, and serve-fake.

These run in real time, so they are kept small (a few seconds in all).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from headway.testing.faults import Chaos

from .conftest import ThreadedFakeAPI, result_ids, write_chat_input

pytestmark = pytest.mark.integration

StartServer = Callable[..., ThreadedFakeAPI]
HEADWAY = [sys.executable, "-m", "headway.cli"]


def start_run(inp: Path, out: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *HEADWAY,
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            url,
            "--progress",
            "plain",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lines(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended early: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the run wrote too little")


@pytest.mark.parametrize("kill_at", [20])
def test_kill_9_mid_run_then_resume_is_exactly_once(
    tmp_path: Path, fake_server: StartServer, kill_at: int
) -> None:
    server = fake_server()
    n = 120
    inp = write_chat_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    proc = start_run(inp, out, server.url, "--rpm", "1500", "--concurrency", "8")
    wait_for_lines(out, kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    partial = result_ids(out)
    assert kill_at <= len(partial) < n
    assert len(set(partial)) == len(partial)

    resume = start_run(inp, out, server.url, "--rpm", "60000")
    _stdout, stderr = resume.communicate(timeout=60)
    assert resume.returncode == 0, stderr
    assert "already done (skipped)" in stderr
    assert Counter(result_ids(out)) == Counter({f"q{i}": 1 for i in range(n)})


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_finishes_in_flight_exits_130_and_resumes(
    tmp_path: Path, fake_server: StartServer, sig: signal.Signals
) -> None:
    server = fake_server()
    n = 100
    inp = write_chat_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "s.json"
    proc = start_run(
        inp, out, server.url, "--rpm", "900", "--concurrency", "4", "--summary-json", str(summary)
    )
    wait_for_lines(out, 10, proc)
    proc.send_signal(sig)
    _stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    data = json.loads(summary.read_text())
    assert data["interrupted"] is True
    assert data["abandoned"] == 0
    written = result_ids(out)
    assert len(written) == len(set(written)) == data["succeeded"] < n

    resume = start_run(inp, out, server.url, "--rpm", "60000")
    _, stderr = resume.communicate(timeout=60)
    assert resume.returncode == 0, stderr
    assert Counter(result_ids(out)) == Counter({f"q{i}": 1 for i in range(n)})


def test_second_ctrl_c_abandons_in_flight(tmp_path: Path, fake_server: StartServer) -> None:
    slow = Chaos.model_validate({"latency": 30.0})
    server = fake_server(chaos=slow)
    inp = write_chat_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    proc = start_run(inp, out, server.url, "--concurrency", "3")
    deadline = time.monotonic() + 20
    while server.arrived() < 3 and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until three requests are in flight
    assert server.arrived() == 3
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - t0 < 10
    assert "3 request(s) in flight were abandoned" in stderr
    assert result_ids(out) == []


def test_serve_fake_prints_url_serves_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [*HEADWAY, "serve-fake", "--rpm", "600", "--seed", "3", "--api-key", "sk-test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("headway fake API listening on http://127.0.0.1:")
        url = line.split()[5]
        req = urllib.request.Request(
            url + "/v1/chat/completions",
            data=json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            ).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["x-ratelimit-limit-requests"] == "600"
            assert json.loads(resp.read())["object"] == "chat.completion"
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "stopped" in stdout


def test_headway_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "headway"
    if not exe.exists():
        pytest.skip("console script not installed next to this interpreter")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert os.path.basename(str(exe)) in result.stdout


def test_pipes_stdin_to_stdout(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 25)
    proc = subprocess.run(
        [*HEADWAY, "run", "-", "-o", "-", "--no-resume", "--base-url", server.url],
        input=inp.read_bytes(),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    records = [json.loads(line) for line in lines]  # stdout holds only result lines
    assert Counter(r["custom_id"] for r in records) == Counter({f"q{i}": 1 for i in range(25)})
    stderr = proc.stderr.decode()
    assert "headway run: standard input" in stderr  # the summary went to stderr
    assert "succeeded" in stderr


def test_gzip_from_stdin_and_refusing_to_resume_a_pipe(
    tmp_path: Path, fake_server: StartServer
) -> None:
    import gzip

    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    proc = subprocess.run(
        [*HEADWAY, "run", "-", "-o", str(out), "--base-url", server.url, "-q"],
        input=gzip.compress(inp.read_bytes()),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(result_ids(out)) == ["q0", "q1", "q2"]
    refused = subprocess.run(
        [*HEADWAY, "run", "-", "-o", "-", "--base-url", server.url],
        input=b"",
        capture_output=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert refused.stdout == b""
    assert b"add --no-resume" in refused.stderr
    assert b"Traceback" not in refused.stderr


def test_reader_closing_the_pipe_stops_the_run_quietly(
    tmp_path: Path, fake_server: StartServer
) -> None:
    """``headway run ... -o - | head``: exit 141 as on SIGPIPE, nothing on stderr, no more sent."""
    server = fake_server()
    n = 300
    inp = write_chat_input(tmp_path / "in.jsonl", n)
    proc = subprocess.Popen(
        [*HEADWAY, "run", str(inp), "-o", "-", "--no-resume", "--base-url", server.url, "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # a pace that leaves most lines unsent when the reader goes
        env={**os.environ, "HEADWAY_RPM": "1200"},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert json.loads(first)["custom_id"].startswith("q")
    proc.stdout.close()  # what `head -1` does once it has its line
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 141, stderr
    assert stderr == b""  # no traceback, no "Exception ignored", no summary
    assert server.arrived() < n  # it stopped sending
