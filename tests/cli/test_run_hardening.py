"""``headway run`` against bad outputs, disagreeing resumes and full disks (issue 11)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from batch.test_run_judgement import enospc_after
from headway.cli import cli

from .conftest import ThreadedFakeAPI, result_ids, write_chat_input

StartServer = Callable[..., ThreadedFakeAPI]


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def one_line(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert fragment in lines[-1], result.stderr
    assert "Traceback" not in result.output


def test_output_that_is_the_input_is_refused(tmp_path: Path) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 3)
    link = tmp_path / "same.jsonl"
    os.link(inp, link)
    before = inp.read_bytes()
    result = invoke(["run", str(inp), "-o", str(link), "--base-url", "http://127.0.0.1:1"])
    one_line(result, 2, "is the input file itself")
    assert inp.read_bytes() == before


def test_resume_with_another_input_is_refused(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    a = write_chat_input(tmp_path / "a.jsonl", 4)
    b = tmp_path / "b.jsonl"
    lines = a.read_text().splitlines()
    record = json.loads(lines[2])
    record["body"]["model"] = "text-embedding-3-small"
    b.write_text("\n".join([*lines[:2], json.dumps(record), *lines[3:]]) + "\n")
    out = tmp_path / "out.jsonl"
    base = ["-o", str(out), "--base-url", server.url, "-q"]
    assert invoke(["run", str(a), *base]).exit_code == 0
    result = invoke(["run", str(b), *base])
    one_line(result, 2, "line 3 of")
    assert "--ignore-mismatch" in result.stderr
    assert invoke(["run", str(b), *base, "--ignore-mismatch"]).exit_code == 0
    assert sorted(result_ids(out)) == [f"q{i}" for i in range(4)]


def test_disk_full_has_its_own_exit_code_and_says_what_was_written(
    tmp_path: Path, fake_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 10)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    monkeypatch.setattr("headway.batch.ledger.os.write", enospc_after(3))
    args = ["run", str(inp), "-o", str(out), "--base-url", server.url, "--concurrency", "1"]
    result = invoke([*args, "-q", "--summary-json", str(summary)])
    monkeypatch.undo()
    one_line(result, 5, "the disk is full (No space left on device): 3 result(s) were written")
    assert "succeeded" in result.stderr  # the summary of what was written
    assert json.loads(summary.read_text())["succeeded"] == 3
    assert len(result_ids(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl", "summary.json"]
    again = invoke([*args, "-q"])  # space again: the resume finishes the job
    assert again.exit_code == 0
    assert sorted(result_ids(out)) == sorted(f"q{i}" for i in range(10))


def test_dead_server_stops_with_exit_3(tmp_path: Path) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"
    args = ["run", str(inp), "-o", str(out), "--base-url", "http://127.0.0.1:1"]
    result = invoke([*args, "--max-attempts", "1", "--max-outage", "0.2", "-q"])
    assert result.exit_code == 3, result.output
    assert "provider unreachable: connection refused to 127.0.0.1:1" in result.stderr
    assert "stayed unreachable" in result.stderr
    assert result_ids(out) == []
