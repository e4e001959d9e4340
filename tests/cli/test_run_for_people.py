"""``headway run`` for people: dry run, URLs, logs, result shapes, summary, papercuts."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from headway.batch.urls import join_urls
from headway.cli import cli
from headway.errors import ConfigurationError
from headway.testing.faults import Chaos

from .conftest import ThreadedFakeAPI, result_ids, write_chat_input

StartServer = Callable[..., ThreadedFakeAPI]

#: 429s that ask for a 10 ms pause: retries without real backoff sleeps.
QUICK_429S = Chaos.model_validate(
    {"rate_limit": 0.4, "retry_after": 0.01, "retry_after_style": "ms"}
)


def invoke(args: list[str], **kwargs: Any) -> Result:
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kwargs)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat(i: int, **extra: Any) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
    return {"custom_id": f"c{i}", "url": "/v1/chat/completions", "body": body, **extra}


# -- 4. dry run --------------------------------------------------------------------------------


def test_dry_run_sends_nothing_and_counts(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    rows: list[Any] = [chat(i) for i in range(6)]
    rows.append(
        {"custom_id": "e1", "url": "/v1/embeddings", "body": {"model": "emb", "input": "x"}}
    )
    rows.append(chat(0))  # a duplicate
    inp = write_lines(tmp_path / "in.jsonl", rows)
    with open(inp, "a") as f:
        f.write("{oops\n")
    result = invoke(
        ["run", str(inp), "--dry-run", "--base-url", server.url, "--rpm", "60", "--tpm", "1000"]
    )
    assert server.journal() == []  # nothing was sent
    assert result.exit_code == 1  # a duplicate and an invalid line
    out = result.stdout
    assert "POST /v1/chat/completions  gpt-4o-mini" in out
    assert "POST /v1/embeddings" in out
    assert "7 request(s) to send" in out
    assert "time at the given limits: about 7.0 s (set by --rpm 60)" in out
    assert "2 problem(s): 1 duplicate custom_id, 0 too large, 1 invalid line(s)" in out
    assert "line 8: custom_id 'c0' repeats" in out
    assert "dry run: nothing was sent" in out


def test_dry_run_needs_no_key_and_no_output(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    inp = write_lines(tmp_path / "in.jsonl", [chat(0)])
    result = invoke(["run", str(inp), "--dry-run", "--provider", "openai", "--tpm", "5"])
    assert result.exit_code == 1
    assert "too large" in result.stdout
    assert "raise --tpm" in result.stdout
    clean = invoke(["run", str(inp), "--dry-run", "--provider", "openai"])
    assert clean.exit_code == 0
    assert "no --rpm/--tpm given" in clean.stdout


# -- 5. URLs -------------------------------------------------------------------------------------

URL_TABLE = [
    # (base_url, endpoint, request_url) -> (base, endpoint path, fixed path)
    (("http://h:8000", None, None), ("http://h:8000", None, None)),
    (("http://h:8000/v1", None, None), ("http://h:8000", None, None)),
    (("http://h:8000/v1/", None, None), ("http://h:8000", None, None)),
    (("http://h/v1", "embeddings", None), ("http://h", "/v1/embeddings", None)),
    (("http://h/v1", "/embeddings", None), ("http://h", "/v1/embeddings", None)),
    (("http://h/v1", "/v1/embeddings", None), ("http://h", "/v1/embeddings", None)),
    (("http://h", "embeddings", None), ("http://h", "/embeddings", None)),
    (
        ("http://h/openai/v1", "chat/completions", None),
        ("http://h/openai", "/v1/chat/completions", None),
    ),
    (("http://h/v1/embeddings", None, None), ("http://h", "/v1/embeddings", None)),
    (("http://h/v1/chat/completions", None, None), ("http://h", "/v1/chat/completions", None)),
    (("http://h/api/chat", None, None), ("http://h", "/api/chat", None)),
    (
        (None, None, "https://x.io/v1/embeddings"),
        ("https://x.io", "/v1/embeddings", "/v1/embeddings"),
    ),
    (
        (None, None, "https://x.io/e?api-version=2"),
        ("https://x.io", "/e?api-version=2", "/e?api-version=2"),
    ),
    ((None, "embeddings", None), (None, "/embeddings", None)),
]


@pytest.mark.parametrize(("flags", "expected"), URL_TABLE)
def test_url_joining_table(flags: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    plan = join_urls(*flags)
    assert (plan.base_url, plan.endpoint, plan.request_path) == expected


def test_url_joining_for_a_provider_and_errors() -> None:
    assert join_urls(None, "embeddings", None, provider_prefix="/v1").endpoint == "/v1/embeddings"
    assert join_urls("http://h/v1/embeddings", None, None).note is not None
    for flags in [
        ("http://h", None, "http://h/v1/x"),
        (None, None, "ftp://h/x"),
        ("http://h", "http://h/v1/embeddings", None),
    ]:
        with pytest.raises(ConfigurationError):
            join_urls(*flags)


def test_base_url_with_v1_and_bare_endpoint_posts_where_meant(
    tmp_path: Path, fake_server: StartServer
) -> None:
    server = fake_server()
    inp = write_lines(tmp_path / "in.jsonl", [{"model": "emb", "input": f"t{i}"} for i in range(3)])
    out = tmp_path / "out.jsonl"
    args = ["run", str(inp), "-o", str(out), "--base-url", server.url + "/v1"]
    result = invoke([*args, "--endpoint", "embeddings", "-q"])
    assert result.exit_code == 0, result.stderr
    assert {r.path for r in server.journal()} == {"/v1/embeddings"}


def test_request_url_sends_every_line_there(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 3)  # lines say /v1/chat/completions
    out = tmp_path / "out.jsonl"
    rows = [{"custom_id": f"e{i}", "body": {"model": "emb", "input": "x"}} for i in range(2)]
    inp = write_lines(tmp_path / "in.jsonl", rows)
    result = invoke(
        ["run", str(inp), "-o", str(out), "--request-url", server.url + "/v1/embeddings", "-q"]
    )
    assert result.exit_code == 0, result.stderr
    assert [r.path for r in server.journal()] == ["/v1/embeddings"] * 2


def test_all_404_answers_warn(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out.jsonl"
    result = invoke(
        ["run", str(inp), "-o", str(out), "--base-url", server.url + "/nope", "--progress", "plain"]
    )
    # the run judgement stops when every answer is a 404, and says what to check
    assert result.exit_code == 4, result.stderr
    assert "every request so far answered 404" in result.stderr
    assert "check --base-url and --endpoint" in result.stderr
    quiet = invoke(
        ["run", str(inp), "-o", str(tmp_path / "q"), "--base-url", server.url + "/x", "-q"]
    )
    assert quiet.stderr.count("every request so far answered 404") == 1


# -- 3. logs -------------------------------------------------------------------------------------


def test_json_logs_carry_the_events(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server(chaos=QUICK_429S, seed=3)
    inp = write_chat_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    result = invoke(
        [
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            server.url,
            "--log-format",
            "json",
            "-q",
            "--max-attempts",
            "10",
        ],
    )
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert records, result.stderr
    kinds = {r.get("event") for r in records}
    assert "retry.scheduled" in kinds
    retry = next(r for r in records if r.get("event") == "retry.scheduled")
    assert {"time", "level", "attempt", "delay", "reason"} <= retry.keys()
    assert "RateLimitError" in retry["reason"]


def test_logs_are_off_by_default(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server(chaos=QUICK_429S, seed=2)
    inp = write_chat_input(tmp_path / "in.jsonl", 2)
    result = invoke(["run", str(inp), "-o", str(tmp_path / "o"), "--base-url", server.url, "-q"])
    assert not any(line.startswith("{") for line in result.stderr.splitlines())
    verbose = invoke(
        [
            "run",
            str(inp),
            "-o",
            str(tmp_path / "o2"),
            "--base-url",
            server.url,
            "-q",
            "-vv",
            "--rpm",
            "60000",
        ]
    )
    assert verbose.exit_code == 0
    assert "headway: INFO [batch] retry.scheduled" in verbose.stderr


# -- 7 and 8. summary and result shapes ----------------------------------------------------


def test_summary_json_tells_the_whole_story(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server(chaos=QUICK_429S, seed=1)
    inp = write_chat_input(tmp_path / "in.jsonl", 20)
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    result = invoke(
        [
            "run",
            str(inp),
            "-o",
            str(out),
            "--base-url",
            server.url,
            "--rpm",
            "60000",
            "--max-attempts",
            "10",
            "--summary-json",
            str(summary),
            "-q",
        ]
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(summary.read_text())
    split = data["tokens_split"]
    assert split["prompt"] + split["completion"] == data["tokens"] > 0
    assert data["retries"] > 0
    assert data["retries_by_cause"] == {"rate_limit_exceeded": data["retries"]}
    assert data["rate_limit"] == {"in_force": "60,000/min", "limited_by": "you"}
    assert set(data["waiting_s"]) == {"p50", "p95", "total"}
    assert data["server_s"]["p50"] <= data["latency_s"]["p50"]
    assert "server time p50 / p95 / p99" in result.stderr
    assert "rate in force" in result.stderr


def test_anthropic_lines_get_anthropic_results(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    params = {
        "model": "claude-x",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    }
    rows = [
        {"custom_id": "a1", "params": params, "metadata": {"row": 1}},
        {"custom_id": "bad", "params": {"model": "claude-x"}},  # FakeAPI: 400 (no messages)
    ]
    inp = write_lines(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    invoke(["run", str(inp), "-o", str(out), "--base-url", server.url, "-q"])
    got = {r["custom_id"]: r for r in lines_of(out)}
    ok = got["a1"]
    assert ok["result"]["type"] == "succeeded"
    assert ok["result"]["message"]["type"] == "message"
    assert ok["metadata"] == {"row": 1}
    assert "metadata" not in server.journal()[0].json  # never sent
    bad = got["bad"]
    assert bad["result"]["type"] == "errored"
    assert bad["result"]["error"]["type"] == "error"
    assert bad["result"]["error"]["error"]["type"] == "invalid_request_error"
    anthropic = pytest.importorskip("anthropic")
    model = anthropic.types.messages.MessageBatchIndividualResponse
    for record in (ok, bad):
        parsed = model.model_validate({k: v for k, v in record.items() if k != "metadata"})
        assert parsed.custom_id == record["custom_id"]
    # Resume reads both shapes: the succeeded line is skipped, the errored one counts as failed.
    again = invoke(["run", str(inp), "-o", str(out), "--base-url", server.url, "-q"])
    assert "1 request(s) failed in an earlier run" in again.stderr
    forced = tmp_path / "forced.jsonl"
    invoke(
        [
            "run",
            str(inp),
            "-o",
            str(forced),
            "--base-url",
            server.url,
            "-q",
            "--output-format",
            "openai",
        ]
    )
    assert {r["custom_id"]: r["response"]["status_code"] for r in lines_of(forced)} == {
        "a1": 200,
        "bad": 400,
    }


def test_openai_http_errors_have_error_null(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server(api_key="sk-right")
    inp = write_lines(tmp_path / "in.jsonl", [chat(0, metadata={"k": "v"})])
    out = tmp_path / "out.jsonl"
    result = invoke(
        ["run", str(inp), "-o", str(out), "--base-url", server.url, "--api-key-env", "K", "-q"],
        env={"K": "sk-wrong"},
    )
    assert result.exit_code == 1
    (rec,) = lines_of(out)
    assert rec["error"] is None
    assert rec["response"]["status_code"] == 401
    assert rec["metadata"] == {"k": "v"}
    assert set(rec) == {"id", "custom_id", "response", "error", "metadata", "request_digest"}


# -- 9. papercuts --------------------------------------------------------------------------------


def test_exit_codes_in_run_help() -> None:
    text = invoke(["run", "--help"]).stdout
    for line in ("0    every request", "1    some requests failed", "2    usage error", "130"):
        assert line in text


def test_config_after_the_subcommand(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    cfg = tmp_path / "h.toml"
    cfg.write_text(f'[run]\nbase-url = "{server.url}"\nconcurrency = 3\n')
    inp = write_chat_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    result = invoke(["run", str(inp), "-o", str(out), "--config", str(cfg), "-q"])
    assert result.exit_code == 0, result.stderr
    assert len(result_ids(out)) == 2


def test_request_too_large_names_the_flag(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_lines(tmp_path / "in.jsonl", [chat(0)])
    out = tmp_path / "out.jsonl"
    invoke(["run", str(inp), "-o", str(out), "--base-url", server.url, "--tpm", "5", "-q"])
    (rec,) = lines_of(out)
    assert rec["error"]["code"] == "request_too_large"
    assert "raise --tpm" in rec["error"]["message"]
    assert "max_tokens)" not in rec["error"]["message"].split("(")[0]


def test_demo_removes_its_temporary_folder(tmp_path: Path, monkeypatch: Any) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = invoke(["demo", "--requests", "5", "--no-chaos", "-q"])
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []
    assert "temporary folder, now removed" in result.stdout


def test_serve_fake_on_a_busy_port_names_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve-fake", "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.output
