"""Provider Batch APIs (headway.batch.batchapi) against FakeAPI's batch routes."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from headway.batch import batchapi
from headway.batch.batchapi import BatchState, ProviderBatchRun, batch_settings
from headway.batch.batchapi.remote import AnthropicBatches, OpenAIBatches
from headway.batch.sender import SenderSettings, resolve_target
from headway.testing import FakeAPI

pytestmark = pytest.mark.virtual_time


def write_input(
    path: Path, n: int, *, kind: str = "openai", models: int = 1, start: int = 0
) -> Path:
    with open(path, "w") as f:
        for i in range(start, start + n):
            model = f"gpt-4o-mini-{i % models}" if models > 1 else "gpt-4o-mini"
            msgs = [{"role": "user", "content": f"q{i}"}]
            if kind == "anthropic":
                line: dict[str, Any] = {
                    "custom_id": f"q{i}",
                    "params": {"model": "claude-x", "max_tokens": 5, "messages": msgs},
                }
            else:
                line = {
                    "custom_id": f"q{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": msgs},
                }
            f.write(orjson.dumps(line).decode() + "\n")
    return path


def records(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [orjson.loads(x) for x in out.read_bytes().splitlines() if x.strip()]


def assert_exactly_once(out: Path, n: int) -> list[dict[str, Any]]:
    recs = records(out)
    counts = Counter(r["custom_id"] for r in recs)
    assert counts == Counter({f"q{i}": 1 for i in range(n)})
    return recs


def settings(api: FakeAPI, kind: str = "openai", **kw: Any) -> batchapi.BatchAPISettings:
    return batch_settings(base_url=api.url, kind=kind, poll_interval=1.0, **kw)  # type: ignore[arg-type]


def created(api: FakeAPI, kind: str = "openai") -> tuple[int, int]:
    """(files uploaded, batches created) as the server's journal saw them."""
    if kind == "anthropic":
        ok = [r for r in api.calls("POST", "/v1/messages/batches") if r.status == 200]
        return 0, len(ok)
    files = [r for r in api.calls("POST", "/v1/files") if r.status == 200]
    batches = [r for r in api.calls("POST", "/v1/batches") if r.status == 200]
    return len(files), len(batches)


async def test_openai_groups_by_model_and_collects_each_line_once(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 30, models=3)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.fail.add("q4")
        outcome = await batchapi.run(inp, out, settings(api))
        assert created(api) == (3, 3)
        assert {b.model for b in api.batches.openai_batches} == {
            f"gpt-4o-mini-{i}" for i in range(3)
        }
        assert api.batches.deleted_files == 3  # inputs cleaned up after collection
    recs = assert_exactly_once(out, 30)
    by_id = {r["custom_id"]: r for r in recs}
    ok = by_id["q1"]
    assert ok["error"] is None
    assert ok["response"]["status_code"] == 200
    assert ok["response"]["body"]["choices"][0]["message"]["content"] == "echo: q1"
    assert ok["id"].startswith("batch_req_")
    bad = by_id["q4"]  # an HTTP error answer: in `response`, `error: null` (OpenAI's rule)
    assert bad["error"] is None
    assert bad["response"]["status_code"] == 500
    assert outcome.stats.succeeded == 29
    assert outcome.stats.failed == 1
    assert not outcome.detached
    assert outcome.pending == 0
    state = BatchState.load(out)
    assert all(p.status == "collected" for p in state.parts)
    assert not any(Path(p.payload).exists() for p in state.parts)


async def test_anthropic_lines_go_through_message_batches(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 12, kind="anthropic")
    with open(inp, "a") as f:  # a line the API rejects: errored, with its type as code
        f.write(json.dumps({"custom_id": "q12", "params": {"model": "m", "messages": []}}) + "\n")
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.fail.add("q3")
        outcome = await batchapi.run(inp, out, settings(api, "anthropic", max_requests=5))
        assert created(api, "anthropic") == (0, 3)
        assert [b.total for b in api.batches.anthropic_batches] == [5, 5, 3]
        sent = api.calls("POST", "/v1/messages/batches")[0]
        assert sent.headers.get("anthropic-version") == "2023-06-01"
    recs = assert_exactly_once(out, 13)
    by_id = {r["custom_id"]: r for r in recs}
    # Anthropic lines get Anthropic-shaped results, as the Message Batches API returns them
    assert by_id["q0"]["result"]["type"] == "succeeded"
    assert by_id["q0"]["result"]["message"]["content"][0]["text"] == "echo: q0"
    assert by_id["q3"]["result"]["type"] == "errored"
    assert by_id["q3"]["result"]["error"]["error"]["type"] == "api_error"
    assert by_id["q12"]["result"]["type"] == "errored"
    assert by_id["q12"]["result"]["error"]["error"]["type"] == "invalid_request_error"
    assert outcome.stats.failed == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_120k_lines_split_and_collected_exactly_once(tmp_path: Path, kind: str) -> None:
    n = 120_000
    inp = write_input(tmp_path / "in.jsonl", n, kind=kind)
    out = tmp_path / "out.jsonl"
    # The journal is bounded (the uploads are large), with room for every poll of a slow
    # run: at 100 a loaded machine's polls trimmed the creates `created()` counts.
    async with FakeAPI(journal_limit=5_000) as api:
        outcome = await batchapi.run(inp, out, settings(api, kind))
        assert len(api.requests) < 2 * 5_000  # nothing was trimmed
        expected = [50_000, 50_000, 20_000] if kind == "openai" else [100_000, 20_000]
        assert [b.total for b in api.batches.batches.values()] == expected
        files, made = created(api, kind)
        assert made == len(expected)
        assert files == (len(expected) if kind == "openai" else 0)
    assert outcome.stats.succeeded == n
    assert_exactly_once(out, n)


async def test_bad_lines_get_a_reason_before_anything_is_uploaded(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    lines = [
        {"custom_id": "s", "url": "/v1/chat/completions", "body": {"model": "m", "stream": True}},
        {"custom_id": "u", "url": "/v1/audio/speech", "body": {"model": "m"}},
        {"custom_id": "a", "params": {"model": "claude", "max_tokens": 3}},
        {"custom_id": "n", "url": "/v1/chat/completions", "body": {"messages": []}},
        {"custom_id": "g", "method": "GET", "url": "/v1/chat/completions", "body": {}},
    ]
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        outcome = await batchapi.run(inp, out, settings(api))
        assert created(api) == (0, 0)
    every = {r["custom_id"]: r for r in records(out)}
    assert set(every) == {"s", "u", "a", "n", "g", "6"}
    anthropic = every.pop("a")["result"]  # the Anthropic line's result is Anthropic-shaped
    assert anthropic["type"] == "errored"
    assert anthropic["error"]["error"]["type"] == "invalid_request_error"
    assert "--provider anthropic" in anthropic["error"]["error"]["message"]
    recs = {cid: r["error"] for cid, r in every.items()}
    assert all(e["code"] == "invalid_request" for e in recs.values())
    assert "cannot stream" in recs["s"]["message"]
    assert "does not serve /v1/audio/speech" in recs["u"]["message"]
    assert '"model"' in recs["n"]["message"]
    assert "only sends POST" in recs["g"]["message"]
    assert any("cannot go in a batch" in n for n in outcome.notes)


async def test_line_over_the_byte_limit_is_rejected_alone(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 3)
    with open(inp, "a") as f:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 500}]}
        f.write(json.dumps({"custom_id": "big", "url": "/v1/chat/completions", "body": body}))
        f.write("\n")
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        await batchapi.run(inp, out, settings(api, max_bytes=300, max_requests=2))
        assert created(api) == (2, 2)
    recs = {r["custom_id"]: r for r in records(out)}
    assert recs["big"]["error"]["code"] == "invalid_request"
    assert "more than one batch may hold" in recs["big"]["error"]["message"]
    assert sum(r["error"] is None for r in recs.values()) == 3


def online_settings(api: FakeAPI) -> SenderSettings:
    target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
    return SenderSettings(target=target, concurrency=4)


async def test_partial_expiry_then_online_and_retry_failed(tmp_path: Path) -> None:
    n = 20
    inp = write_input(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        api.batches.timing.completion_window = 51.0  # half the lines finish in time
        outcome = await batchapi.run(inp, out, settings(api), then_online=online_settings(api))
        assert outcome.online == 10
        assert len(api.calls("POST", "/v1/chat/completions")) == 10
        assert created(api) == (1, 1)
    recs = assert_exactly_once(out, n)
    assert all(r["error"] is None for r in recs)

    out2 = tmp_path / "out2.jsonl"
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        api.batches.timing.completion_window = 51.0
        outcome = await batchapi.run(inp, out2, settings(api))
        codes = Counter(r["error"]["code"] for r in records(out2) if r["error"])
        assert codes == {"batch_expired": 10}
        assert outcome.stats.failed == 10
        # --retry-failed: the expired lines go in a new batch, the rest are not sent again
        api.batches.timing.completion_window = 24 * 3600.0
        engine = ProviderBatchRun(settings(api), out2, retry_failed=True)
        outcome = await engine.run(inp)
        assert outcome.stats.succeeded == 10
        assert [b.total for b in api.batches.openai_batches] == [20, 10]
    recs = assert_exactly_once(out2, n)
    assert all(r["error"] is None for r in recs)


async def test_then_online_after_a_detached_expiry(tmp_path: Path) -> None:
    """Unfinished lines recorded in the state go online on a later run."""
    inp = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        api.batches.timing.completion_window = 51.0
        engine = ProviderBatchRun(settings(api), out)
        await engine.run(inp, then_online=True, online=None, detach=True)
        outcome = await batchapi.collect(out, settings(api), then_online=online_settings(api))
        assert outcome.online == 5
    assert all(r["error"] is None for r in assert_exactly_once(out, 10))


async def test_detach_then_collect_later(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10, models=2)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        state = await batchapi.submit(inp, out, settings(api))
        assert [p.status for p in state.parts] == ["submitted", "submitted"]
        assert not out.exists() or records(out) == []
        # submitting again submits nothing new
        await batchapi.submit(inp, out, settings(api))
        assert created(api) == (2, 2)
        state = await batchapi.status(out, settings(api))
        assert [p.remote for p in state.parts] == ["validating", "validating"]
        outcome = await batchapi.collect(out, settings(api))
        assert outcome.stats.succeeded == 10
        assert created(api) == (2, 2)
    assert_exactly_once(out, 10)


async def test_cancel_keeps_what_was_done(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        await batchapi.submit(inp, out, settings(api))
        import asyncio

        await asyncio.sleep(41)  # 4 of 10 done
        state = await batchapi.cancel(out, settings(api))
        assert state.parts[0].remote == "cancelling"
        outcome = await batchapi.collect(out, settings(api))
        assert outcome.stats.succeeded == 4
    codes = Counter(r["error"]["code"] for r in assert_exactly_once(out, 10) if r["error"])
    assert codes == {"batch_cancelled": 6}


async def test_anthropic_cancel(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10, kind="anthropic")
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        await batchapi.submit(inp, out, settings(api, "anthropic"))
        import asyncio

        await asyncio.sleep(30)
        await batchapi.cancel(out, settings(api, "anthropic"))
        outcome = await batchapi.collect(out, settings(api, "anthropic"))
        assert outcome.stats.succeeded == 3
    kinds = Counter(r["result"]["type"] for r in assert_exactly_once(out, 10))
    assert kinds == {"succeeded": 3, "canceled": 7}


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs (no finally-block cleanup matters)."""


# Anthropic batches carry their requests: there is no upload step to die after.
STEPS = [
    *((kind, step) for kind in ("openai", "anthropic") for step in ("create", "poll", "download")),
    ("openai", "upload"),
]


@pytest.mark.parametrize(("kind", "step"), STEPS)
async def test_killed_at_each_step_resumes_without_paying_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, step: str
) -> None:
    n = 12
    inp = write_input(tmp_path / "in.jsonl", n, kind=kind)
    out = tmp_path / "out.jsonl"
    cls: Any = OpenAIBatches if kind == "openai" else AnthropicBatches
    async with FakeAPI() as api:
        real = {name: getattr(cls, name) for name in ("create", "retrieve", "results")}
        if kind == "openai":
            real["upload"] = cls.upload

        async def after_upload(self: Any, *a: Any) -> str:
            await real["upload"](self, *a)
            raise Crash

        async def after_create(self: Any, *a: Any) -> Any:
            await real["create"](self, *a)
            raise Crash

        async def mid_poll(self: Any, *a: Any) -> Any:
            raise Crash

        async def mid_download(self: Any, remote: Any) -> AsyncIterator[Any]:
            i = 0
            async for result in real["results"](self, remote):
                yield result
                i += 1
                if i == 5:
                    raise Crash

        patch = {
            "upload": after_upload,
            "create": after_create,
            "poll": mid_poll,
            "download": mid_download,
        }[step]
        name = {"poll": "retrieve", "download": "results"}.get(step, step)
        s = settings(api, kind, max_requests=6)
        monkeypatch.setattr(cls, name, patch)
        with pytest.raises(Crash):
            await batchapi.run(inp, out, s)
        monkeypatch.setattr(cls, name, real[name])
        outcome = await batchapi.run(inp, out, s)
        files, made = created(api, kind)
        assert made == 2  # two parts of 6: never a second batch for either
        if kind == "openai":
            assert files == 2
            assert len(api.batches.uploads) == 0  # all inputs deleted after collection
        if step == "download":
            assert outcome.stats.skipped == 5
    assert_exactly_once(out, n)


async def test_upload_made_but_batch_never_created_is_reused(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        s = settings(api)
        api.script("POST", "/v1/batches", ["400"])  # the create is refused, once
        outcome = await batchapi.run(inp, out, s)
        assert outcome.stats.failed == 4  # the provider said no: one failed result per line
        assert api.batches.deleted_files == 0
        out.unlink()
        outcome = await batchapi.run(inp, out, s)
        assert outcome.stats.succeeded == 4


async def test_faults_on_batch_endpoints(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 8)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.script("POST", "/v1/files", ["503", "reset", "429:1"])
        api.script("POST", "/v1/batches", ["reset", "502"])
        api.script("GET", "/v1/batches/{batch_id}", ["503", "reset", "429:2", "500"])
        api.script("GET", "/v1/files/{file_id}/content", ["reset", "503"])
        outcome = await batchapi.run(inp, out, settings(api))
        api.assert_scripts_consumed()
        assert outcome.stats.succeeded == 8
        # a reset create may have been made: it is looked up before trying again
        assert len(api.batches.openai_batches) == 1
        assert len(api.batches.files) >= 1
    assert_exactly_once(out, 8)


async def test_anthropic_faults_and_queue_limit(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10, kind="anthropic")
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.anthropic_queue_limit = 6
        api.script("POST", "/v1/messages/batches", ["reset", "529"])
        api.script("GET", "/v1/messages/batches/{batch_id}/results", ["503"])
        s = settings(api, "anthropic", max_requests=5)
        s.requeue_delay = 5.0
        outcome = await batchapi.run(inp, out, s)
        assert outcome.stats.succeeded == 10
        assert len(api.batches.anthropic_batches) == 2
    assert_exactly_once(out, 10)


async def test_enqueued_token_limit_refusal_is_submitted_again(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.enqueued_token_limit = 15  # room for one part of 10 lines at a time
        s = settings(api, max_requests=10)
        s.requeue_delay = 5.0
        outcome = await batchapi.run(inp, out, s)
        assert outcome.stats.succeeded == 20
        statuses = [b.status(api.batches._now()) for b in api.batches.openai_batches]
        assert statuses.count("failed") >= 1
        assert statuses.count("completed") == 2
        assert len(api.batches.uploads) == 0
        assert any("enqueued-token limit" in note for note in outcome.notes)
    assert_exactly_once(out, 20)


async def test_client_side_token_limit_staggers_submissions(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.enqueued_token_limit = 150
        s = settings(api, max_tokens=100)  # ~7 tokens a line: parts of ~14 lines
        outcome = await batchapi.run(inp, out, s)
        batches = api.batches.openai_batches
        assert len(batches) == 2
        assert all(b.validation_errors == [] for b in batches)
        assert batches[1].created >= batches[0].end_of_processing()  # waited for the first
        assert outcome.stats.succeeded == 20


async def test_stop_detaches_and_a_rerun_picks_up(tmp_path: Path) -> None:
    import asyncio

    inp = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.timing.processing = 1000.0
        engine = ProviderBatchRun(settings(api), out)
        task = asyncio.create_task(engine.run(inp))
        await asyncio.sleep(100)
        engine.stop()
        outcome = await task
        assert outcome.detached
        assert outcome.pending == 1
        outcome = await batchapi.run(inp, out, settings(api))
        assert not outcome.detached
        assert outcome.stats.succeeded == 10
        assert created(api) == (1, 1)
    assert_exactly_once(out, 10)


async def test_progress_shows_each_batch_with_an_eta(tmp_path: Path) -> None:
    import io

    inp = write_input(tmp_path / "in.jsonl", 100)
    out = tmp_path / "out.jsonl"
    buf = io.StringIO()
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        await batchapi.run(inp, out, settings(api), progress=batchapi.PlainBatchProgress(buf))
    text = buf.getvalue()
    assert "validating" in text
    assert "in_progress" in text
    assert "finalizing" in text
    assert "ETA" in text
    assert "collected (100 requests)" in text


async def test_polls_back_off(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.timing.validating = 3000.0
        s = settings(api)
        s.max_poll_interval = 600.0
        await batchapi.run(inp, out, s)
        polls = [r.time for r in api.calls("GET", "/v1/batches/{batch_id}")]
        gaps = [b - a for a, b in itertools.pairwise(polls)]
        assert gaps[0] < 3
        assert max(gaps) >= 300


async def test_state_from_another_provider_is_refused(tmp_path: Path) -> None:
    from headway.errors import ConfigurationError

    inp = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        await batchapi.submit(inp, out, settings(api))
        with pytest.raises(ConfigurationError, match="use the same provider"):
            await batchapi.submit(inp, out, settings(api, "anthropic"))


async def test_server_with_smaller_limits_fails_the_batch_with_its_code(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 6)
    with open(inp, "a") as f:  # a repeated custom_id is not sent twice
        f.write(json.dumps({"custom_id": "q0", "url": "/v1/chat/completions", "body": {}}) + "\n")
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.max_requests = 4  # this server takes fewer than we were told
        outcome = await batchapi.run(inp, out, settings(api))
    recs = assert_exactly_once(out, 6)
    assert {r["error"]["code"] for r in recs} == {"too_many_requests"}
    assert outcome.stats.duplicates == 1


async def test_unfinished_lines_without_then_online_are_written_as_failures(
    tmp_path: Path,
) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        api.batches.timing.completion_window = 51.0
        engine = ProviderBatchRun(settings(api), out)
        with pytest.raises(Exception, match="online settings"):
            await engine.run(inp, then_online=True)  # collected, but nothing to go online with
        outcome = await batchapi.collect(out, settings(api))  # no then_online: failures
        assert outcome.stats.failed == 5
        again = await batchapi.run(inp, out, settings(api))  # nothing left to do
        assert again.stats.skipped == 10
    codes = Counter(r["error"]["code"] for r in assert_exactly_once(out, 10) if r["error"])
    assert codes == {"batch_expired": 5}


async def test_lost_payload_and_lost_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp = write_input(tmp_path / "in.jsonl", 8)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:

        async def crash(self: Any, *a: Any) -> Any:
            raise Crash

        s = settings(api, max_requests=4)
        monkeypatch.setattr(OpenAIBatches, "create", crash)
        with pytest.raises(Crash):
            await batchapi.run(inp, out, s)
        monkeypatch.undo()
        state = BatchState.load(out)
        first, second = state.parts
        assert (first.status, second.status) == ("creating", "planned")
        # the provider lost the first upload; the second part's local file is gone
        first.status = "uploaded"
        state.save()
        api.batches.files.pop(first.file_id or "")
        Path(second.payload).unlink()
        outcome = await batchapi.run(inp, out, s)
        assert created(api) == (2, 1)  # the first part uploaded again, then created once
    recs = {r["custom_id"]: r for r in records(out)}
    assert sum(r["error"] is None for r in recs.values()) == 4
    assert {r["error"]["code"] for r in recs.values() if r["error"]} == {"internal_error"}
    assert any("is gone" in n for n in outcome.notes)


async def test_cancel_of_an_ended_batch_is_a_note(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        await batchapi.submit(inp, out, settings(api))
        import asyncio

        await asyncio.sleep(30)
        engine = ProviderBatchRun(settings(api), out)
        state = await engine.refresh(cancel=True)
        assert any("Cannot cancel" in n for n in engine.notes)
        assert state.parts[0].status == "collected"
    assert_exactly_once(out, 3)


@hsettings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 25),
    per_batch=st.integers(1, 12),
    step=st.sampled_from(["upload", "create", "poll", "download"]),
    after=st.integers(0, 3),
)
def test_property_a_crash_anywhere_never_pays_twice(
    tmp_path_factory: pytest.TempPathFactory, n: int, per_batch: int, step: str, after: int
) -> None:
    """Crash at the after-th call of a step, resume: each line once, each part created once."""
    from headway.testing import VirtualClock

    d = tmp_path_factory.mktemp("prop")
    inp = write_input(d / "in.jsonl", n)
    out = d / "out.jsonl"
    name = {"poll": "retrieve", "download": "results"}.get(step, step)
    real = getattr(OpenAIBatches, name)
    calls = {"n": 0}

    def crashing(self: Any, *a: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > after:
            if step == "download":

                async def broken() -> AsyncIterator[Any]:
                    async for r in real(self, *a):
                        yield r
                        raise Crash

                return broken()
            raise Crash
        return real(self, *a)

    async def scenario() -> tuple[int, int, int]:
        with VirtualClock():
            async with FakeAPI() as api:
                s = settings(api, max_requests=per_batch)
                setattr(OpenAIBatches, name, crashing)
                try:
                    await batchapi.run(inp, out, s)
                except Crash:
                    pass
                finally:
                    setattr(OpenAIBatches, name, real)
                await batchapi.run(inp, out, s)
                files, made = created(api)
                return files, made, -(-n // per_batch)

    files, made, parts = asyncio.run(scenario())
    assert made == parts
    assert files == parts
    assert_exactly_once(out, n)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_download_cut_short_is_finished_at_the_next_poll(tmp_path: Path, kind: str) -> None:
    inp = write_input(tmp_path / "in.jsonl", 30, kind=kind)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        path = (
            "/v1/files/{file_id}/content"
            if kind == "openai"
            else "/v1/messages/batches/{batch_id}/results"
        )
        api.script("GET", path, ["truncate"])
        outcome = await batchapi.run(inp, out, settings(api, kind))
        api.assert_scripts_consumed()
        assert outcome.stats.succeeded == 30
        assert any("download interrupted" in n for n in outcome.notes)
    assert_exactly_once(out, 30)


async def test_an_unreadable_result_line_costs_one_result(tmp_path: Path) -> None:
    from aiohttp import web

    inp = write_input(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        batches = api.batches

        async def garbled(request: web.Request) -> web.Response:
            f = batches.files[api.path_params(request)["file_id"]]
            lines = batches._file_bytes(f).splitlines()
            body = b"\n".join([b"not json", b'{"no": "custom_id"}', *lines[1:]]) + b"\n"
            return web.Response(body=body, content_type="application/octet-stream")

        api.route("GET", "/v1/files/{file_id}/content", garbled)
        outcome = await batchapi.run(inp, out, settings(api))
        assert outcome.stats.succeeded == 4
    recs = {r["custom_id"]: r for r in assert_exactly_once(out, 5)}
    assert recs["q0"]["error"]["code"] == "invalid_response"


async def test_failures_go_to_the_errors_file_of_the_submitting_run(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 4)
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    async with FakeAPI() as api:
        api.batches.fail.add("q2")
        await ProviderBatchRun(settings(api), out, errors=errors).run(inp, detach=True)
        await batchapi.collect(out, settings(api))  # no errors= here: the state knows
    assert [r["custom_id"] for r in records(errors)] == ["q2"]
    assert sorted(r["custom_id"] for r in records(out)) == ["q0", "q1", "q3"]


def test_embedding_batches_hold_at_most_50000_inputs(tmp_path: Path) -> None:
    from headway.batch.batchapi.plan import BatchLimits, preview

    inp = tmp_path / "in.jsonl"
    with open(inp, "w") as f:
        for i in range(3):
            body = {"model": "text-embedding-3-small", "input": ["w"] * 20_000}
            f.write(json.dumps({"custom_id": f"e{i}", "url": "/v1/embeddings", "body": body}))
            f.write("\n")
    parts, problems = preview(
        inp, "openai", BatchLimits.for_provider("openai"), default_url="/v1/chat/completions"
    )
    assert [p["requests"] for p in parts] == [2, 1]
    assert problems == []


async def test_a_part_too_big_for_the_token_limit_fails_after_a_few_tries(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.enqueued_token_limit = 3  # less than the whole file, with nothing queued
        s = settings(api)
        s.requeue_delay = 5.0
        outcome = await batchapi.run(inp, out, s)
        assert len(api.batches.openai_batches) == 5  # tried, then gave up: no endless loop
    codes = {r["error"]["code"] for r in assert_exactly_once(out, 5)}
    assert codes == {"token_limit_exceeded"}
    assert any("--batch-max-tokens" in n for n in outcome.notes)


async def test_one_run_at_a_time_per_output(tmp_path: Path) -> None:
    from headway.batch.batchapi.engine import exclusive
    from headway.errors import ConfigurationError

    inp = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        with exclusive(str(out)):  # as if another process were running on OUT
            with pytest.raises(ConfigurationError, match="another headway process"):
                await batchapi.run(inp, out, settings(api))
            assert created(api) == (0, 0)
        await batchapi.run(inp, out, settings(api))
    assert_exactly_once(out, 2)
