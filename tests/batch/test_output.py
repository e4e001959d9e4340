from __future__ import annotations

import gzip
import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from headway.batch.jobs import count_lines, parse_line, read_requests
from headway.batch.ledger import Result
from headway.batch.output import StreamLedger, is_success, result_record, shape_for


def test_stream_ledger_to_a_stream_without_fd_and_an_errors_file(tmp_path: Path) -> None:
    out = io.BytesIO()
    errors = tmp_path / "errors.jsonl"
    ledger = StreamLedger(out, str(errors)).open()
    assert len(ledger.skip) == 0
    ledger.write(Result.success("a", 200, {"ok": True}))
    ledger.write(Result.failure("b", "timeout", "slow"))
    ledger.close()
    ledger.close()
    assert [json.loads(x)["custom_id"] for x in out.getvalue().splitlines()] == ["a"]
    assert json.loads(errors.read_text())["error"]["code"] == "timeout"


def test_stream_ledger_writes_whole_lines_to_a_file_descriptor() -> None:
    read, write = os.pipe()
    with os.fdopen(write, "wb") as stream:
        ledger = StreamLedger(stream).open()
        for i in range(3):
            ledger.write(Result.success(f"c{i}", 200, {"i": i}))
        ledger.close()
    with os.fdopen(read, "rb") as f:
        assert [json.loads(x)["custom_id"] for x in f.read().splitlines()] == ["c0", "c1", "c2"]


@pytest.mark.parametrize(
    ("record", "ok"),
    [
        ({"custom_id": "a", "response": {"status_code": 200}, "error": None}, True),
        ({"custom_id": "a", "response": {"status_code": 500}, "error": None}, False),
        ({"custom_id": "a", "response": None, "error": {"code": "timeout"}}, False),
        ({"custom_id": "a", "response": {"status_code": 400}, "error": {"code": "x"}}, False),
        ({"custom_id": "a", "response": None, "error": None}, True),
        ({"custom_id": "a", "result": {"type": "succeeded"}}, True),
        ({"custom_id": "a", "result": {"type": "expired"}}, False),
        ("not a record", False),
    ],
)
def test_is_success_reads_every_shape(record: object, ok: bool) -> None:
    assert is_success(record) is ok


def test_anthropic_errors_map_to_anthropic_types() -> None:
    r = Result.failure("a", "server_error", "overloaded", status_code=529, request_id="req_1")
    r.shape = shape_for("anthropic", "auto")
    rec = result_record(r)
    assert rec["result"]["error"] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "overloaded"},
        "request_id": "req_1",
    }
    r = Result.failure("b", "connection_error", "reset")
    r.shape = shape_for("openai", "anthropic")
    assert result_record(r)["result"]["error"]["error"]["type"] == "api_error"
    assert shape_for("anthropic", "openai") == "openai"


def test_json_errors_read_plainly() -> None:
    bad = parse_line(b'{"a": "\x01"}', 4)
    assert "at at" not in bad.message  # type: ignore[union-attr]
    assert bad.message == "line 4: not valid JSON (Invalid control character at column 8)"  # type: ignore[union-attr]
    nul = parse_line(b"\x00\x00\x00\x00\n", 2)
    assert nul.message == "line 2: only NUL bytes (a file padded by a crash or a broken copy?)"  # type: ignore[union-attr]


@pytest.mark.parametrize("compress", [False, True])
def test_standard_input(monkeypatch: pytest.MonkeyPatch, compress: bool) -> None:
    data = b'{"model": "m"}\n{"custom_id": "x", "body": {}, "metadata": {"k": 1}}\n'
    raw = io.BytesIO(gzip.compress(data) if compress else data)
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=raw))
    items = list(read_requests("-"))
    assert [i.custom_id for i in items] == ["1", "x"]
    assert items[1].metadata == {"k": 1}  # type: ignore[union-attr]
    assert not raw.closed  # standard input is not closed
    assert count_lines("-") is None
