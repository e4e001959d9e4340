"""A batch create whose answer is lost or late is never sent twice (FakeAPI's lost/late faults).

Each create below reaches the provider and makes its batch, but the client never reads
the answer (a reset, or an answer held past the client's timeout), and the batch may
show in the listing only later, or with a server clock behind the client's. The run
must adopt that batch instead of paying for a second one, and still create again when
nothing was made.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from headway.batch import batchapi
from headway.batch.batchapi import BatchState
from headway.errors import APIConnectionError, AuthenticationError
from headway.testing import FakeAPI, Fault

from .test_batchapi import assert_exactly_once, records, settings, write_input

pytestmark = pytest.mark.virtual_time

KINDS = ["openai", "anthropic"]


def create_path(kind: str) -> str:
    return "/v1/messages/batches" if kind == "anthropic" else "/v1/batches"


def made(api: FakeAPI, kind: str) -> list[Any]:
    """Every batch the server made (whether or not its create was answered)."""
    return api.batches.anthropic_batches if kind == "anthropic" else api.batches.openai_batches


async def run_once(
    tmp_path: Path, kind: str, steps: list[Any], *, n: int = 10, skew: float = 0.0, **kw: Any
) -> tuple[FakeAPI, Any, list[Any]]:
    tmp_path.mkdir(exist_ok=True)
    inp = write_input(tmp_path / "in.jsonl", n, kind=kind)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.batches.clock_skew = skew
        api.script("POST", create_path(kind), steps)
        outcome = await batchapi.run(inp, out, settings(api, kind, **kw))
        api.assert_scripts_consumed()
        batches = made(api, kind)
    assert_exactly_once(out, n)
    return api, outcome, batches


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "fault",
    [
        Fault.late(),  # answered never: the client gives up at its timeout
        Fault.late(900.0),  # answered after the client's timeout (600 s)
        Fault.lost(),  # the connection dropped right after the batch was made
        Fault.late(listed_after=700.0),  # a create still in progress when first looked up
        Fault.lost(listed_after=100.0),  # a listing that lags behind the create
    ],
    ids=["late", "late-900", "lost", "late-listed-700", "lost-listed-100"],
)
async def test_a_create_made_but_unanswered_is_adopted_not_sent_again(
    tmp_path: Path, kind: str, fault: Fault
) -> None:
    _api, outcome, batches = await run_once(tmp_path, kind, [fault])
    assert len(batches) == 1  # paid once
    assert outcome.stats.succeeded == 10


@pytest.mark.parametrize("kind", KINDS)
async def test_the_lookup_window_bounds_the_wait(tmp_path: Path, kind: str) -> None:
    # The batch shows only 400 s after its create: a window of 500 s still finds it...
    steps = [Fault.lost(listed_after=400.0)]
    _api, _outcome, batches = await run_once(tmp_path / "a", kind, steps, lookup_window=500.0)
    assert len(batches) == 1
    # ...while the default window (120 s) gives up on it and creates again: the bound.
    _api, outcome, batches = await run_once(tmp_path / "b", kind, steps)
    assert len(batches) == 2
    assert outcome.stats.succeeded == 10


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("skew", [-600.0, 600.0])
async def test_a_server_clock_off_by_minutes_does_not_hide_the_batch(
    tmp_path: Path, kind: str, skew: float
) -> None:
    # The server's created_at is ten minutes behind (or ahead of) the client's clock:
    # matching by "created since I sent it" on the client's clock would miss it.
    _api, _outcome, batches = await run_once(tmp_path, kind, [Fault.late()], skew=skew)
    assert len(batches) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_each_part_adopts_its_own_batch(tmp_path: Path, kind: str) -> None:
    # Three parts of 4 requests; the first two creates are lost (one listed late):
    # the same size everywhere, so only the order and the claimed ids tell them apart.
    steps = [Fault.lost(listed_after=30.0), Fault.late(), "ok"]
    _api, _outcome, batches = await run_once(tmp_path, kind, steps, n=12, max_requests=4)
    assert len(batches) == 3
    state = BatchState.load(tmp_path / "out.jsonl")
    assert sorted(p.batch_id or "" for p in state.parts) == sorted(b.id for b in batches)


async def test_an_older_batch_of_the_same_size_is_not_adopted(tmp_path: Path) -> None:
    # A batch of the same size made just before the run (by someone else, or an earlier
    # job) must not be taken for the lost create: its results are not this run's.
    inp = write_input(tmp_path / "in.jsonl", 5, kind="anthropic")
    other = write_input(tmp_path / "other.jsonl", 5, kind="anthropic", start=100)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        await batchapi.run(other, tmp_path / "other-out.jsonl", settings(api, "anthropic"))
        api.script("POST", "/v1/messages/batches", [Fault.late(listed_after=700.0)])
        outcome = await batchapi.run(inp, out, settings(api, "anthropic"))
        _older, ours = api.batches.anthropic_batches
        assert BatchState.load(out).parts[0].batch_id == ours.id
    assert outcome.stats.succeeded == 5
    assert_exactly_once(out, 5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [["reset"], ["503", "reset"], ["hang"]])
async def test_a_create_that_made_nothing_is_sent_again(
    tmp_path: Path, kind: str, steps: list[str]
) -> None:
    # reset and hang fail before the route runs: nothing was made, so after looking
    # for it for a while the run creates the batch and finishes.
    _api, outcome, batches = await run_once(tmp_path, kind, steps)
    assert len(batches) == 1
    assert outcome.stats.succeeded == 10


@pytest.mark.parametrize("kind", KINDS)
async def test_a_run_killed_while_creating_finds_the_late_batch(tmp_path: Path, kind: str) -> None:
    # The first run gives up (one attempt) while the create is unanswered; the batch
    # shows in the listing only later. The next run looks for it before creating.
    inp = write_input(tmp_path / "in.jsonl", 6, kind=kind)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.script("POST", create_path(kind), [Fault.lost(listed_after=100.0)])
        s = settings(api, kind)
        s.max_attempts = 1
        with pytest.raises(APIConnectionError):
            await batchapi.run(inp, out, s)
        assert BatchState.load(out).parts[0].status == "creating"
        outcome = await batchapi.run(inp, out, settings(api, kind))
        assert len(made(api, kind)) == 1
        assert outcome.stats.succeeded == 6
    assert len(records(out)) == 6


@pytest.mark.parametrize("kind", KINDS)
async def test_a_create_refused_outright_is_not_looked_for_on_resume(
    tmp_path: Path, kind: str
) -> None:
    # A 401 on the create: the provider made nothing, the run stops (check the key). The
    # next run creates at once: no listing, no lookup window waited out (it was 120 s).
    inp = write_input(tmp_path / "in.jsonl", 4, kind=kind)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.script("POST", create_path(kind), ["401"])
        with pytest.raises(AuthenticationError):
            await batchapi.run(inp, out, settings(api, kind))
        assert BatchState.load(out).parts[0].status == "uploaded"
        listed = len(api.calls("GET", create_path(kind)))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        outcome = await batchapi.run(inp, out, settings(api, kind))
        assert loop.time() - t0 < 60.0  # virtual seconds: polls, not a lookup window
        assert outcome.stats.succeeded == 4
        assert len(made(api, kind)) == 1
        # the resumed run lists once for its mark (Anthropic) and never looks for a batch
        assert len(api.calls("GET", create_path(kind))) - listed <= 1
    assert len(records(out)) == 4


@pytest.mark.parametrize("kind", KINDS)
async def test_an_overloaded_refusal_is_looked_up_once(tmp_path: Path, kind: str) -> None:
    # 503 and 529 say the provider took nothing in: one look, then the create again.
    # A reset may hide a batch being made: the run keeps looking for the window.
    lists = {}
    for step in ("529" if kind == "anthropic" else "503", "reset"):
        api, _outcome, batches = await run_once(tmp_path / step, kind, [step])
        assert len(batches) == 1
        lists[step] = len(api.calls("GET", create_path(kind)))
    assert lists["reset"] > lists.get("503", lists.get("529", 0)) + 3
    assert lists.get("503", lists.get("529")) == (2 if kind == "anthropic" else 1)


@pytest.mark.parametrize("kind", KINDS)
async def test_stop_while_looking_detaches_and_the_next_run_adopts(
    tmp_path: Path, kind: str
) -> None:
    import asyncio

    inp = write_input(tmp_path / "in.jsonl", 6, kind=kind)
    out = tmp_path / "out.jsonl"
    async with FakeAPI() as api:
        api.script("POST", create_path(kind), [Fault.late(listed_after=700.0)])
        engine = batchapi.ProviderBatchRun(settings(api, kind), out)
        task = asyncio.create_task(engine.run(inp))
        await asyncio.sleep(620)  # the create timed out at 600 s: the run is looking
        engine.stop()
        outcome = await task
        assert outcome.detached
        assert BatchState.load(out).parts[0].status == "creating"
        outcome = await batchapi.run(inp, out, settings(api, kind))
        assert len(made(api, kind)) == 1
        assert outcome.stats.succeeded == 6
    assert_exactly_once(out, 6)


async def test_a_stranger_batch_taken_for_a_lost_create_is_given_back(tmp_path: Path) -> None:
    # The create made nothing (reset before the route), and meanwhile someone else made
    # a batch of the same size: the look-up cannot tell them apart, so it adopts that
    # batch; its results carry none of the part's custom_ids, so the part goes again.
    import asyncio

    import aiohttp

    inp = write_input(tmp_path / "in.jsonl", 5, kind="anthropic")
    out = tmp_path / "out.jsonl"
    msgs = [{"role": "user", "content": "x"}]
    params = {"model": "claude-x", "max_tokens": 5, "messages": msgs}
    theirs = {"requests": [{"custom_id": f"t{i}", "params": params} for i in range(5)]}
    async with FakeAPI() as api, aiohttp.ClientSession() as session:
        api.script("POST", "/v1/messages/batches", ["reset"])
        task = asyncio.create_task(batchapi.run(inp, out, settings(api, "anthropic")))
        await asyncio.sleep(0.5)
        assert len(api.calls("POST", "/v1/messages/batches")) == 1  # ours, reset
        async with session.post(f"{api.url}/v1/messages/batches", json=theirs) as resp:
            assert resp.status == 200
        outcome = await task
        stranger, ours = api.batches.anthropic_batches
        assert stranger.ids[0] == "t0"
        assert BatchState.load(out).parts[0].batch_id == ours.id
        assert any("not" in note and "submitted again" in note for note in outcome.notes)
    assert outcome.stats.succeeded == 5
    assert_exactly_once(out, 5)
