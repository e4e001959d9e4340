"""Run-level judgement, poison answers and lines, resume checks, disk full (issue 11)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.batch import BatchRequest, BatchRunner, Ledger, Response, Result
from headway.batch.outage import EXIT_OUTAGE, EXIT_REJECTED, RunJudge, describe_failure
from headway.batch.runner import ResumeMismatchError
from headway.batch.sender import SenderSettings, open_sender, resolve_target
from headway.errors import APIConnectionError, AuthenticationError, ConfigurationError
from headway.testing import VirtualClock
from headway.testing.fake_api import FakeAPI

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _skip(ledger: Ledger) -> set[str]:
    """The ids of ``ledger.skip`` (read back from its files, which hold them all)."""
    ids = set(ledger.done_ids())
    assert len(ids) == len(ledger.skip)
    return ids


def write_input(path: Path, n: int, *, body: dict[str, Any] | None = None) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"r{i}", "url": CHAT, "body": body or BODY}) + "\n")
    return path


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ids(path: Path) -> Counter[str]:
    return Counter(r["custom_id"] for r in records(path))


# -- item 1: a dead server ------------------------------------------------------------------


@pytest.mark.virtual_time
async def test_dead_server_stops_after_max_outage_leaving_every_line_unsent(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    inp = write_input(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    messages: list[str] = []
    judge = RunJudge(max_outage=60, notify=messages.append)
    target = resolve_target(
        provider=None, base_url="http://127.0.0.1:1", endpoint=None, api_key_env=None
    )
    settings_ = SenderSettings(
        target=target, concurrency=8, max_attempts=2, base_delay=0.1, max_breaker_wait=5
    )
    async with open_sender(settings_) as send:
        runner = BatchRunner(send, inp, out, concurrency=8, judge=judge, target=target.base_url)
        t0 = virtual_clock.elapsed
        stats = await runner.run()
    assert runner.verdict is not None
    assert runner.verdict.exit_code == EXIT_OUTAGE
    assert records(out) == []  # no failure line per request: every line is left for the resume
    assert stats.failed == 0
    # the cause at the first retry, then the outage with its next probe
    assert messages[0] == "first requests failing: connection refused to 127.0.0.1:1; retrying"
    assert "provider unreachable: connection refused to 127.0.0.1:1" in messages[1]
    assert "next probe in 2 s" in messages[1]
    assert any(m.startswith("still unreachable") for m in messages)  # probes keep testing
    assert "stayed unreachable for 1 min" in messages[-1]
    assert virtual_clock.elapsed - t0 < 60 + 30  # not 600 s on an open breaker


@pytest.mark.virtual_time
async def test_outage_ends_at_the_first_answer_and_failed_lines_are_sent_again(
    tmp_path: Path,
) -> None:
    inp = write_input(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    messages: list[str] = []
    async with FakeAPI() as api:
        api.script("POST", CHAT, ["reset"] * 12)  # a short outage, then normal answers
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        settings_ = SenderSettings(target=target, concurrency=4, max_attempts=1)
        async with open_sender(settings_) as send:
            judge = RunJudge(max_outage=600, notify=messages.append)
            runner = BatchRunner(send, inp, out, concurrency=4, judge=judge)
            stats = await runner.run()
    assert runner.verdict is None
    assert ids(out) == Counter({f"r{i}": 1 for i in range(30)})
    assert stats.succeeded == 30
    assert stats.failed == 0
    assert any("provider answers again" in m for m in messages)


@pytest.mark.virtual_time
async def test_a_poison_line_failing_alone_is_written_not_an_outage(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"

    async def sender(request: BatchRequest) -> Response:
        if request.custom_id == "r3":
            raise APIConnectionError("reset by the server")
        return Response(200, {"ok": True})

    judge = RunJudge(max_outage=60)
    stats = await BatchRunner(sender, inp, out, concurrency=2, judge=judge).run()
    assert judge.verdict is None
    assert judge.outages == 0
    assert stats.failed == 1
    assert stats.succeeded == 19
    assert ids(out) == Counter({f"r{i}": 1 for i in range(20)})


@pytest.mark.virtual_time
async def test_held_failures_are_written_when_the_run_ends_without_a_verdict(
    tmp_path: Path,
) -> None:
    inp = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"

    async def sender(request: BatchRequest) -> Response:
        raise APIConnectionError("refused")

    stats = await BatchRunner(sender, inp, out, concurrency=1, judge=RunJudge()).run()
    assert stats.failed == 2
    assert {r["error"]["code"] for r in records(out)} == {"connection_error"}


def test_describe_failure_and_judge_arguments() -> None:
    assert describe_failure("x" * 500) == "x" * 200
    assert describe_failure(
        "Cannot connect to host api.example.com:443 ssl:default [Name or service not known]"
    ) == ("cannot connect to api.example.com (Name or service not known)")
    with pytest.raises(ValueError, match="max_outage"):
        RunJudge(max_outage=0)


# -- item 2: a wrong key or path ------------------------------------------------------------


@pytest.mark.virtual_time
async def test_wrong_key_stops_the_run_and_names_the_variable(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    messages: list[str] = []
    async with FakeAPI(api_key="sk-right-key-123456") as api:
        target = resolve_target(
            provider=None,
            base_url=api.url,
            endpoint=None,
            api_key_env="WRONG",
            environ={"WRONG": "sk-wrong-key-654321"},
        )
        async with open_sender(SenderSettings(target=target, concurrency=16)) as send:
            judge = RunJudge(key_env="WRONG", notify=messages.append)
            runner = BatchRunner(send, inp, out, concurrency=16, judge=judge)
            await runner.run()
        sent = len(api.requests)
    assert runner.verdict is not None
    assert runner.verdict.exit_code == EXIT_REJECTED
    assert "the server rejects the key in WRONG: 401 invalid_api_key" in runner.verdict.message
    assert records(out) == []
    assert sent < 40  # not all 300


@pytest.mark.virtual_time
async def test_wrong_path_stops_when_every_answer_is_404(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(BODY) + "\n" for _ in range(50)))
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        target = resolve_target(
            provider=None, base_url=api.url, endpoint="/v1/chat/complete", api_key_env=None
        )
        async with open_sender(SenderSettings(target=target, concurrency=4)) as send:
            runner = BatchRunner(
                send, inp, out, concurrency=4, judge=RunJudge(), default_url=target.default_url
            )
            await runner.run()
    assert runner.verdict is not None
    assert "404" in runner.verdict.message
    assert "--endpoint" in runner.verdict.message
    assert records(out) == []


@pytest.mark.virtual_time
async def test_some_401s_among_successes_are_ordinary_results(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"

    async def sender(request: BatchRequest) -> Response:
        if request.custom_id in ("r5", "r6"):
            raise AuthenticationError("401 Unauthorized", status_code=401)
        return Response(200, {"ok": True})

    stats = await BatchRunner(sender, inp, out, concurrency=1, judge=RunJudge()).run()
    assert stats.failed == 2
    assert stats.succeeded == 18


# -- item 4: poison answers and lines ------------------------------------------------------


@pytest.mark.virtual_time
async def test_deep_json_answer_is_that_lines_failure_not_the_runs_end(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.script("POST", CHAT, ["ok", "deep_json"])
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        async with open_sender(SenderSettings(target=target, concurrency=1)) as send:
            stats = await BatchRunner(send, inp, out, concurrency=1).run()
    assert stats.succeeded == 5
    assert stats.failed == 1
    bad = [r for r in records(out) if r["error"]]
    assert bad[0]["custom_id"] == "r1"
    assert bad[0]["error"]["code"] == "invalid_response"
    assert "nests too deeply" in bad[0]["error"]["message"]
    # and the resume does not send it again nor trip on the file
    async with FakeAPI() as api:
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        async with open_sender(SenderSettings(target=target)) as send:
            stats = await BatchRunner(send, inp, out).run()
        assert len(api.requests) == 0
    assert stats.skipped == 6


@pytest.mark.virtual_time
async def test_answer_too_deep_to_parse_is_an_invalid_response(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    deep = b"[" * 5000 + b"]" * 5000

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=deep, content_type="application/json")

    async with FakeAPI() as api:
        api.route("POST", CHAT, handler)
        target = resolve_target(provider=None, base_url=api.url, endpoint=None, api_key_env=None)
        async with open_sender(SenderSettings(target=target)) as send:
            stats = await BatchRunner(send, inp, out).run()
    assert stats.failed == 2
    assert {r["error"]["code"] for r in records(out)} == {"invalid_response"}


async def test_deep_input_line_is_an_invalid_request(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    deep = '{"custom_id": "deep", "body": ' + "[" * 100_000 + "]" * 100_000 + "}"
    inp.write_text(json.dumps({"custom_id": "a", "body": BODY}) + "\n" + deep + "\n")
    out = tmp_path / "out.jsonl"

    async def sender(request: BatchRequest) -> Response:
        return Response(200, {"ok": True})

    stats = await BatchRunner(sender, inp, out).run()
    assert stats.succeeded == 1
    assert stats.invalid == 1
    bad = [r for r in records(out) if r["error"]]
    assert bad[0]["error"]["code"] == "invalid_request"
    # orjson >= 3.10 refuses the depth; older ones parse it, and the line fails its shape
    message = bad[0]["error"]["message"]
    assert "nests too deeply" in message or "body must be a JSON object" in message


def test_ledger_scan_survives_a_deep_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ok = Result.success("a", 200, {"x": 1}).to_line()
    out.write_bytes(ok + b'{"custom_id": "b", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")
    with Ledger(out) as ledger:
        assert _skip(ledger) == {"a"}
    assert any("unreadable" in n for n in ledger.notes)
    with Ledger(out, retry_failed=True) as ledger:
        assert _skip(ledger) == {"a"}
    assert out.read_bytes() == ok


async def test_a_sender_answer_that_breaks_handling_is_that_lines_failure(
    tmp_path: Path,
) -> None:
    inp = write_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"

    class Weird(Response):
        @property  # type: ignore[misc]
        def headers(self) -> Any:
            raise KeyError("no headers today")

        @headers.setter
        def headers(self, value: Any) -> None:
            pass

    async def sender(request: BatchRequest) -> Response:
        if request.custom_id == "r1":
            return Weird(200, {})
        if request.custom_id == "r2":
            raise RecursionError("deep")
        return Response(200, {"ok": True})

    stats = await BatchRunner(sender, inp, out, concurrency=1).run()
    assert stats.succeeded == 1
    assert stats.failed == 2
    by_id = {r["custom_id"]: r for r in records(out)}
    assert by_id["r1"]["error"]["code"] == "invalid_response"
    assert "KeyError" in by_id["r1"]["error"]["message"]
    assert by_id["r2"]["error"]["code"] == "invalid_response"


@settings(max_examples=30, deadline=None)
@given(depth=st.integers(min_value=1, max_value=3000), ok=st.booleans())
def test_any_answer_depth_writes_exactly_one_readable_line(depth: int, ok: bool) -> None:
    body: Any = 1
    for _ in range(depth):
        body = [body]
    result = Result.success("a", 200, body) if ok else Result.failure("a", "x", "m", body=body)
    line = result.safe_line()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    record = json.loads(line)
    assert record["custom_id"] == "a"
    if record["error"] is None:
        assert ok
    else:
        assert record["error"]["code"] in ("x", "invalid_response")
        assert not ok or depth >= 500  # a shallow success is written as it is


# -- item 8: resume checks what each result answered ---------------------------------------


async def echo(request: BatchRequest) -> Response:
    return Response(200, {"echo": request.body})


async def test_resume_with_another_input_is_refused_naming_the_line(tmp_path: Path) -> None:
    a = write_input(tmp_path / "a.jsonl", 3)
    b = write_input(tmp_path / "b.jsonl", 3, body={"model": "embed", "input": "x"})
    out = tmp_path / "out.jsonl"
    await BatchRunner(echo, a, out, target="http://a").run()
    with pytest.raises(ResumeMismatchError, match=r"line 1 of .*b\.jsonl.*--ignore-mismatch"):
        await BatchRunner(echo, b, out, target="http://a").run()
    with pytest.raises(ResumeMismatchError, match="http://b"):  # same lines, another server
        await BatchRunner(echo, a, out, target="http://b").run()
    assert len(records(out)) == 3  # nothing was sent or written
    stats = await BatchRunner(echo, a, out, target="http://a").run()  # the real resume
    assert stats.skipped == 3
    stats = await BatchRunner(echo, b, out, target="http://a", check_resume=False).run()
    assert stats.skipped == 3


async def test_a_resume_past_a_million_digests_checks_them_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headway._idset as idset_module

    monkeypatch.setattr(idset_module, "SPILL_AT", 4)  # a million, for this test: four
    a = write_input(tmp_path / "a.jsonl", 12)
    out = tmp_path / "out.jsonl"
    await BatchRunner(echo, a, out, target="http://a").run()
    lines = a.read_text().splitlines()
    changed = json.loads(lines[9])
    changed["body"]["model"] = "another"
    b = tmp_path / "b.jsonl"
    b.write_text("\n".join([*lines[:9], json.dumps(changed), *lines[10:]]) + "\n")
    with pytest.raises(ResumeMismatchError, match=r"line 10 of .*b\.jsonl"):
        await BatchRunner(echo, b, out, target="http://a").run()
    stats = await BatchRunner(echo, a, out, target="http://a").run()
    assert (stats.skipped, stats.succeeded) == (12, 0)


async def test_old_ledgers_without_digests_resume(tmp_path: Path) -> None:
    a = write_input(tmp_path / "a.jsonl", 2)
    out = tmp_path / "out.jsonl"
    out.write_bytes(Result.success("r0", 200, {}).to_line())
    stats = await BatchRunner(echo, a, out).run()
    assert (stats.skipped, stats.succeeded) == (1, 1)


# -- item 9: -o is the input ------------------------------------------------------------------


async def test_output_that_is_the_input_is_refused_by_inode(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 3)
    link = tmp_path / "link.jsonl"
    os.link(inp, link)
    before = inp.read_bytes()
    for output, errors in ((link, None), (tmp_path / "o.jsonl", link)):
        with pytest.raises(ConfigurationError, match="is the input file itself"):
            await BatchRunner(echo, inp, output, errors=errors).run()
    assert inp.read_bytes() == before


# -- item 10: disk full -----------------------------------------------------------------------


def enospc_after(n: int) -> Any:
    """``os.write`` on a disk that fills up after ``n`` whole lines and half of the next.

    Lines may come one a write or many (the ledger buffers): the disk counts lines.
    """
    real = os.write
    state = {"lines": 0, "full": False}

    def write(fd: int, data: Any) -> int:
        data = bytes(data)
        if state["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        end = 0
        while state["lines"] < n:
            newline = data.find(b"\n", end)
            if newline < 0:
                return real(fd, data)  # all of it fits
            end = newline + 1
            state["lines"] += 1
        state["full"] = True
        rest = data[end:]
        if not rest:
            return real(fd, data)
        return real(fd, data[: end + max(1, (rest.find(b"\n") + 1 or len(rest)) // 2)])

    return write


async def test_disk_full_raises_and_leaves_whole_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr("headway.batch.ledger.os.write", enospc_after(4))
    runner = BatchRunner(echo, inp, out, concurrency=1)
    with pytest.raises(OSError) as info:
        await runner.run()
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert runner.ledger.written == 4
    assert len(records(out)) == 4  # the partial fifth line was taken back
    stats = await BatchRunner(echo, inp, out).run()
    assert (stats.skipped, stats.succeeded) == (4, 6)


def test_retry_failed_skips_the_rewrite_when_nothing_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(Result.success("a", 200, {}).to_line())
    inode = out.stat().st_ino
    with Ledger(out, retry_failed=True):
        pass
    assert out.stat().st_ino == inode  # not rewritten

    out.write_bytes(out.read_bytes() + Result.failure("b", "server_error", "x").to_line())

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("headway.batch.ledger.os.fsync", full)
    with pytest.raises(OSError), Ledger(out, retry_failed=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temp file left


# -- item 13: known keys are masked in every line written -------------------------------------


def test_ledger_masks_known_secrets(tmp_path: Path) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    key = "sk-canary-0123456789"
    with Ledger(out, err, secrets=[key, "short"]) as ledger:
        ledger.write(Result.failure("a", "authentication_error", f"bad key {key}", body={"k": key}))
        ledger.write(Result.success("b", 200, {"echo": f"Bearer {key}", "short": "short"}))
    text = out.read_text() + err.read_text()
    assert key not in text
    assert text.count("***") == 2
    assert '"short":"short"' in text  # values under 8 characters are not masked


@pytest.mark.virtual_time
async def test_ctrl_c_during_an_outage_ends_the_run_at_once(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    inp = write_input(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"

    async def sender(request: BatchRequest) -> Response:
        raise APIConnectionError("refused")

    judge = RunJudge(max_outage=3600)
    runner = BatchRunner(sender, inp, out, concurrency=2, judge=judge, grace=600)
    task = asyncio.ensure_future(runner.run())
    while not judge.in_outage:
        await asyncio.sleep(0.5)
    t0 = virtual_clock.elapsed
    runner.stop()
    stats = await task
    assert virtual_clock.elapsed - t0 < 60  # not the grace period, not the outage limit
    assert stats.interrupted
    assert runner.verdict is None
    assert records(out) == []


@pytest.mark.virtual_time
async def test_a_404_before_the_first_answer_is_written_once_one_comes(tmp_path: Path) -> None:
    inp = write_input(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"

    async def sender(request: BatchRequest) -> Response:
        if request.custom_id == "r0":
            return Response(404, {"error": {"message": "no such model", "code": "not_found"}})
        return Response(200, {"ok": True})

    judge = RunJudge()
    stats = await BatchRunner(sender, inp, out, concurrency=1, judge=judge).run()
    assert judge.verdict is None
    assert (stats.succeeded, stats.failed) == (4, 1)
    assert [r["custom_id"] for r in records(out)][:2] == ["r1", "r0"]  # released at r1


OUTCOMES = st.sampled_from(["ok", "ok", "ok", "refused", "503", "401", "404", "400"])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    pattern=st.lists(OUTCOMES, min_size=1, max_size=40),
    concurrency=st.integers(1, 5),
)
def test_any_failure_pattern_then_a_resume_is_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, n: int, pattern: list[str], concurrency: int
) -> None:
    """Whatever the server does (outages, rejections, odd lines), nothing is written
    twice, a run without a verdict writes every line, and a resume finishes the job."""
    d = tmp_path_factory.mktemp("judge")
    inp = write_input(d / "in.jsonl", n)
    out = d / "out.jsonl"

    async def first_run() -> RunJudge:
        calls = 0

        async def sender(request: BatchRequest) -> Response:
            nonlocal calls
            outcome = pattern[calls % len(pattern)]
            calls += 1
            await asyncio.sleep(0.1)
            if outcome == "refused":
                raise APIConnectionError("Connect call failed")
            if outcome == "401":
                raise AuthenticationError("401 Unauthorized", status_code=401)
            if outcome != "ok":
                return Response(int(outcome), {"error": {"message": outcome}})
            return Response(200, {"ok": True})

        judge = RunJudge(max_outage=30)
        await BatchRunner(sender, inp, out, concurrency=concurrency, judge=judge).run()
        return judge

    async def main() -> RunJudge:
        with VirtualClock():
            judge = await first_run()
            first = ids(out)
            assert all(v == 1 for v in first.values())
            if judge.verdict is None:
                assert set(first) == {f"r{i}" for i in range(n)}
            await BatchRunner(echo, inp, out, concurrency=concurrency).run()
            return judge

    asyncio.run(main())
    assert ids(out) == Counter({f"r{i}": 1 for i in range(n)})
