"""headway.ray's pieces that need no Ray: the UDF's sending and columns, the ledger rows.

The UDF is a plain class: called on a batch it sends the rows under its Policy. Here it
runs in the test's loop against FakeAPI with an in-process limit (``backend="memory"``);
``test_ray.py`` runs it inside Ray Data with the shared backends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from headway.batch.sender import SenderSettings, Target
from headway.errors import ConfigurationError
from headway.ray import RESULT_COLUMNS, Caller, output_file, request_of, result_of_row
from headway.ray._engine import endpoint_config
from headway.ray._run import _fleet
from headway.testing import FakeAPI


def _caller(api: FakeAPI, **options: Any) -> Caller:
    config = {
        "base_url": api.url + "/v1",
        "endpoint": "chat/completions",
        "auth_type": "none",
        "rpm": 6000,
        "max_retries": 2,
    }
    return Caller(config, backend="memory", **options)


def _chat(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


async def test_batch_rows_are_sent_with_their_urls_and_bad_rows_fail_alone() -> None:
    async with FakeAPI() as api:
        caller = _caller(api)
        try:
            batch = {
                "custom_id": ["a", "b", "c", "d", ""],
                "body": [
                    json.dumps(_chat("one")),
                    _chat("two"),
                    {"model": "e", "input": "three"},
                    "[1, 2]",
                    _chat("five"),
                ],
                "url": [None, "/v1/chat/completions", "/v1/embeddings", None, None],
            }
            out = await caller(batch)
        finally:
            await caller.aclose()
            await caller.aclose()
        assert set(RESULT_COLUMNS) <= set(out)
        out = {k: list(v) for k, v in out.items()}  # numpy arrays when numpy is installed
        assert out["custom_id"] == batch["custom_id"]  # input columns kept, in order
        assert out["status_code"][:3] == [200, 200, 200]
        assert json.loads(out["response"][0])["choices"][0]["message"]["content"] == "echo: one"
        assert "data" in json.loads(out["response"][2])  # the embeddings route
        assert out["error_code"][3] == "invalid_request"
        assert "JSON object" in out["error_message"][3]
        assert out["error_code"][4] == "invalid_request"
        assert out["usage_tokens"][0] > 0
        assert out["attempts"][0] == 1
        assert all(x >= 0 for x in out["latency"])
        paths = [r.path for r in api.requests]
        assert sorted(paths) == ["/v1/chat/completions"] * 2 + ["/v1/embeddings"]


async def test_retries_are_counted_and_final_errors_become_rows() -> None:
    async with FakeAPI() as api:
        api.script("POST", "/v1/chat/completions", [503, 400])
        caller = _caller(api)
        try:
            results = await caller.send_rows(
                [{"custom_id": "x", "body": _chat("hi")}, {"custom_id": "y", "body": _chat("yo")}]
            )
            result, exc, limited = await caller.send_detailed("z", _chat("z"))
        finally:
            await caller.aclose()
        by_id = {r.custom_id: r for r in results}
        codes = sorted((r.code or "ok", r.attempts) for r in by_id.values())
        # one got the 503 then succeeded on its second attempt; the other the 400
        assert codes in ([("bad_request", 1), ("ok", 2)], [("bad_request", 2), ("ok", 1)])
        assert result.ok
        assert exc is None
        assert limited == 0


@pytest.mark.virtual_time
async def test_429s_are_retried_and_counted() -> None:
    async with FakeAPI() as api:
        api.script("POST", "/v1/chat/completions", ["429:1"])
        caller = _caller(api)
        try:
            result, exc, limited = await caller.send_detailed("q", _chat("q"))
        finally:
            await caller.aclose()
        assert result.ok
        assert result.attempts == 2
        assert limited == 1
        assert exc is None


@pytest.mark.virtual_time
async def test_adaptive_follows_the_limit_the_server_advertises_below_the_ceiling() -> None:
    async with FakeAPI(rpm=600, profile="openai") as api:
        caller = _caller(api, adaptive=True)  # rpm=6000 is now a ceiling
        try:
            results = await caller.send_rows(
                [{"custom_id": f"a{i}", "body": _chat(str(i))} for i in range(3)]
            )
            limiter = caller._policy.limiter
            assert limiter.rate_in_force() == (600.0, "server")
        finally:
            await caller.aclose()
        assert [r.ok for r in results] == [True] * 3
        assert type(limiter).__name__ == "AdaptiveLimiter"


async def test_bare_bodies_with_an_id_column_a_row_function_and_parsed_fields() -> None:
    async with FakeAPI() as api:
        bare = _caller(
            api, id_column="id", parse=lambda b: {"reply": b["choices"][0]["message"]["content"]}
        )
        shaped = _caller(api, to_request=lambda row: _chat(row["text"].upper()))
        try:
            out = await bare(
                {
                    "id": [1, 2],
                    "model": ["m", "m"],
                    "messages": [
                        [{"role": "user", "content": "p"}],
                        [{"role": "user", "content": "q"}],
                    ],
                }
            )
            rows = await shaped.send_rows([{"custom_id": "t", "text": "loud"}, {"text": "x"}])
        finally:
            await bare.aclose()
            await shaped.aclose()
        assert list(out["reply"]) == ["echo: p", "echo: q"]
        assert "response" not in out
        assert rows[0].ok
        assert rows[0].body["choices"][0]["message"]["content"] == "echo: LOUD"
        assert rows[1].code == "invalid_request"


def test_request_of_and_configuration_errors() -> None:
    assert request_of({"custom_id": "a", "params": {"model": "claude"}}) == (
        "a",
        {"model": "claude"},
        "/v1/messages",
    )
    with pytest.raises(ConfigurationError, match="custom_id"):
        request_of({"body": {}})
    with pytest.raises(ConfigurationError, match="use 'actor'"):
        Caller({"base_url": "http://127.0.0.1:1/v1", "auth_type": "none"}, backend="nope")
    caller = Caller(
        {"base_url": "http://127.0.0.1:1/v1", "auth_type": "none"},
        backend="redis://127.0.0.1:6379/0",
        backend_name="p",
    )
    backend = caller._make_backend()
    assert backend.config.prefix == "p:"
    assert backend.config.local_share == "auto"  # one over the workers seen live
    fleet = Caller(
        {"base_url": "http://127.0.0.1:1/v1", "auth_type": "none"},
        backend="redis://127.0.0.1:6379/0",
        fleet=4,
    )
    # in a Redis outage each of 4 actors keeps a quarter: together within the limit
    assert fleet._make_backend().local_share() == 0.25
    fleet.__del__()
    with pytest.raises(ValueError, match="fleet must be at least 1"):
        Caller({"base_url": "http://127.0.0.1:1/v1", "auth_type": "none"}, fleet=0)
    assert (_fleet(3), _fleet((1, 6))) == (3, 6)  # run() passes its pool's maximum
    assert "Caller" in repr(caller)
    caller.__del__()  # never opened: nothing to close


def test_ledger_rows_and_output_paths(tmp_path: Path) -> None:
    ok = result_of_row(
        {
            "custom_id": "a",
            "status_code": 200,
            "response": '{"usage": {"total_tokens": 3}}',
            "error_code": None,
            "request_id": "req-1",
            "attempts": 2,
            "latency": 0.5,
            "usage_tokens": 3,
        }
    )
    assert ok.ok
    assert ok.tokens == 3
    assert ok.attempts == 2
    assert ok.to_record()["response"] == {
        "status_code": 200,
        "request_id": "req-1",
        "body": {"usage": {"total_tokens": 3}},
    }
    bad = result_of_row(
        {
            "custom_id": 7,
            "status_code": None,
            "response": None,
            "error_code": "timeout",
            "error_message": "slow",
        }
    )
    assert bad.custom_id == "7"
    assert bad.error == {"code": "timeout", "message": "slow"}
    (tmp_path / "existing.d").mkdir()
    assert output_file(tmp_path / "existing.d") == str(tmp_path / "existing.d" / "results.jsonl")
    assert output_file(tmp_path / "r.jsonl") == str(tmp_path / "r.jsonl")


def test_the_cli_engine_endpoint_follows_run_flags() -> None:
    settings = SenderSettings(
        target=Target("https://api.example.com", auth="none"),
        rpm=600,
        tpm=None,
        concurrency=10,
        max_attempts=3,
        timeout=9.0,
    )
    config = endpoint_config(settings, actors=4)
    assert config.concurrency == 3
    assert config.max_retries == 2
    assert config.rpm == 600
    assert config.auth_type == "none"
    assert config.timeout == 9.0
