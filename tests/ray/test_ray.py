"""headway on a local Ray against FakeAPI: one global limit, exactly-once results.

One Ray for the whole session (a start costs seconds); every test runs real Ray Data
actors against a FakeAPI served from a thread, and checks what the server received.
Inputs are as small as still tells right from wrong (e.g. 80 rows against a limit of
20/s with a server burst of 24: unpaced, they would all go in the first second).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner

import headway.ray as hr
from headway.cli import cli as cli_main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_URL = os.environ.get("HEADWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _rows(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i:04d}",
            "body": json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": f"{prefix} {i}"}]}
            ),
        }
        for i in range(n)
    ]


def _config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": url + "/v1",
        "endpoint": "chat/completions",
        "auth_type": "none",
        "max_retries": 4,
        **extra,
    }


def _output_ids(path: Path) -> list[str]:
    with path.open("rb") as f:
        return [json.loads(line)["custom_id"] for line in f if line.strip()]


def _sent_contents(requests: list[Any]) -> list[str]:
    return [r.json["messages"][-1]["content"] for r in requests if isinstance(r.json, dict)]


def _worst_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _redis_or_skip() -> str:
    u = urlparse(REDIS_URL)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), 1.0):
            pass
    except OSError as exc:
        if IN_CI:
            pytest.fail(f"CI=true and no Redis at {REDIS_URL} ({exc})", pytrace=False)
        pytest.skip(f"no Redis at {REDIS_URL} ({exc})")
    return REDIS_URL


def _drop_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.mark.parametrize("backend", ["actor", "redis"])
def test_four_actors_hold_one_global_limit_and_write_each_result_once(
    ray_session: Any, served: Any, tmp_path: Path, backend: str
) -> None:
    # 1200 RPM = 20/s shared by 4 actors (their burst: 2, a tenth of a second's worth);
    # the server enforces the same rate with a burst of 24 and answers 429 beyond it.
    api = served(rpm=1200, burst=24)
    rows = _rows(120)
    name = "headway-limits"
    if backend == "redis":
        spec = _redis_or_skip()
        name = f"headway-test:{uuid.uuid4().hex[:12]}"
    else:
        spec = "actor"
    try:
        stats = hr.run(
            ray_session.data.from_items(rows),
            _config(api.url, rpm=1200),
            output=tmp_path / "out",
            actors=4,
            batch_size=10,
            backend=spec,
            backend_name=name,
        )
    finally:
        if backend == "redis":
            _drop_redis_keys(name + ":")
    out = tmp_path / "out" / "results.jsonl"
    ids = _output_ids(out)
    assert sorted(ids) == sorted(r["custom_id"] for r in rows)  # each exactly once
    assert stats.succeeded == 120
    assert stats.failed == 0
    assert stats.duplicates == 0
    reqs = api.requests()
    assert Counter(r.status for r in reqs) == {200: 120}  # not one 429: never over
    assert sorted(_sent_contents(reqs)) == sorted(f"r {i}" for i in range(120))
    times = [r.time for r in reqs]
    assert _worst_window(times, 1.0) <= 24 + 20  # the server's burst + one second's rate
    assert _worst_window(times, 3.0) <= 24 + 60
    assert _worst_window(times, 1.0) >= 15  # and it was busy: near the limit
    for line in out.read_text().splitlines():
        record = json.loads(line)
        assert record["response"]["status_code"] == 200
        assert record["error"] is None
        assert record["response"]["body"]["usage"]["total_tokens"] > 0


def test_the_cluster_learns_the_advertised_limit_through_the_actor(
    ray_session: Any, served: Any, tmp_path: Path
) -> None:
    # The user allows 6000 RPM; the server advertises and enforces 1200 (20/s, burst 24).
    # adaptive=True: the actors learn 1200 from the headers and share it via the actor.
    api = served(rpm=1200, burst=24, profile="openai")
    rows = _rows(80, prefix="a")
    name = f"headway-adaptive-{uuid.uuid4().hex[:8]}"
    from headway.backends.ray import RayBackend

    keeper = RayBackend(name)  # holds the named actor after run() drops its handle
    stats = hr.run(
        ray_session.data.from_items(rows),
        _config(api.url, rpm=6000),
        output=tmp_path / "out",
        actors=4,
        batch_size=10,
        backend_name=name,
        adaptive=True,
    )
    assert sorted(_output_ids(tmp_path / "out" / "results.jsonl")) == sorted(
        r["custom_id"] for r in rows
    )
    assert stats.succeeded == 80
    assert stats.duplicates == 0
    reqs = api.requests()
    assert Counter(r.status for r in reqs) == {200: 80}  # paced at 1200, not at 6000
    times = [r.time for r in reqs]
    assert _worst_window(times, 1.0) <= 24 + 20
    # the driver shows what the actors learned, as the local engine's summary does
    assert (stats.limit_text, stats.limited_by) == ("1,200/min", "server")
    assert stats.learned == {"requests": 1200.0}
    version, learned = ray_session.get(keeper.actor.learned.remote(f"ray:{api.url}/v1", None))
    keeper.kill()
    assert version  # published by the actors, through the actor
    assert float(learned["adv"]) == 1200.0


def _kill_myself_once(row: dict[str, Any], *, marker: str) -> dict[str, Any]:
    """A row->request function that kills its own actor once, mid-batch."""
    import ray

    if row["custom_id"] == "k-0025" and not os.path.exists(marker):
        Path(marker).write_text("killed")
        ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
    body: dict[str, Any] = json.loads(row["body"])
    return body


def test_an_actor_killed_mid_batch_ends_exactly_once(
    ray_session: Any, served: Any, tmp_path: Path
) -> None:
    api = served()
    marker = tmp_path / "killed"
    rows = _rows(60, "k")
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        stats = hr.run(
            ray_session.data.from_items(rows).repartition(6),
            _config(api.url, rpm=6000),
            output=tmp_path / "results.jsonl",
            actors=2,
            batch_size=10,
            to_request=functools.partial(_kill_myself_once, marker=str(marker)),
        )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert marker.exists()  # the actor was killed in the middle of a batch
    ids = _output_ids(tmp_path / "results.jsonl")
    assert sorted(ids) == sorted(r["custom_id"] for r in rows)
    assert stats.failed == 0
    sent = Counter(_sent_contents(api.requests()))
    assert set(sent) == {f"k {i}" for i in range(60)}  # some twice: the killed batch


_DRIVER = textwrap.dedent(
    """
    import json, sys
    import ray
    import headway.ray as hr

    address, url, rows_path, out = sys.argv[1:5]
    ray.init(address=address, namespace="headway-tests", log_to_driver=False,
             configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = json.loads(open(rows_path).read())
    config = {"base_url": url + "/v1", "endpoint": "chat/completions", "auth_type": "none",
              "max_retries": 4, "rpm": 1200}
    hr.run(ray.data.from_items(rows), config, output=out, actors=2, batch_size=4)
    """
)


def test_a_killed_driver_run_again_ends_exactly_once_without_resending(
    ray_session: Any, served: Any, tmp_path: Path
) -> None:
    api = served()
    rows = _rows(50, "d")
    rows_path = tmp_path / "rows.json"
    rows_path.write_text(json.dumps(rows))
    out = tmp_path / "results.jsonl"
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, str(script), address, api.url, str(rows_path), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 12:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    before = _output_ids(out)
    assert 12 <= len(before) < 50, "the first driver should die part-way"
    sent_before = len(api.requests())
    config = _config(api.url, rpm=1200)
    stats = hr.run(ray_session.data.from_items(rows), config, output=out, actors=2, batch_size=4)
    ids = _output_ids(out)
    assert sorted(ids) == sorted(r["custom_id"] for r in rows)
    assert stats.skipped == len(before)
    assert stats.succeeded == 50 - len(before)
    done_contents = {f"d {cid.split('-')[1].lstrip('0') or '0'}" for cid in before}
    resent = set(_sent_contents(api.requests()[sent_before:])) & done_contents
    assert not resent  # done ids are not sent again
    # a third run has nothing left to send
    again = hr.run(ray_session.data.from_items(rows), config, output=out, actors=1)
    assert again.skipped == 50
    assert again.succeeded == 0
    assert sorted(_output_ids(out)) == sorted(ids)


def test_the_udf_on_its_own_with_bare_bodies_parse_and_errors(
    ray_session: Any, served: Any
) -> None:
    from ray.data import ActorPoolStrategy

    api = served()
    api.api.script("POST", "/v1/chat/completions", [400])
    items = [
        {"id": i, "model": "m", "messages": [{"role": "user", "content": f"b {i}"}]}
        for i in range(6)
    ]
    ds = ray_session.data.from_items(items)
    out = ds.map_batches(
        hr.Caller,
        fn_constructor_kwargs={
            "endpoint": _config(api.url, rpm=6000, max_retries=0),
            "id_column": "id",
            "parse": lambda body: {"reply": body["choices"][0]["message"]["content"]},
        },
        batch_format="pandas",
        batch_size=3,
        compute=ActorPoolStrategy(size=1),
        num_cpus=0.25,
    ).take_all()
    by_id = {row["id"]: row for row in out}
    assert sorted(by_id) == list(range(6))
    failed = [r for r in out if r["error_code"] is not None]
    assert len(failed) == 1
    assert failed[0]["error_code"] == "bad_request"
    assert failed[0]["status_code"] == 400
    assert failed[0]["reply"] is None
    ok = [r for r in out if r["error_code"] is None]
    assert all(r["reply"] == f"echo: b {r['id']}" for r in ok)
    assert all(r["attempts"] == 1 and r["usage_tokens"] > 0 for r in ok)
    assert "response" not in out[0]


def test_cli_engine_ray_resumes_and_reports_like_the_local_engine(
    ray_session: Any, served: Any, tmp_path: Path
) -> None:
    api = served(rpm=3000, profile="openai")  # it advertises its limit: learned, shown
    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps(
            {
                "custom_id": f"c-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": f"c {i}"}]},
            }
        )
        for i in range(30)
    ]
    lines.insert(7, "not json")
    lines.append(lines[3])  # a repeated custom_id: not sent twice
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    args = [
        "run",
        str(src),
        "-o",
        str(out),
        "--base-url",
        api.url,
        "--rpm",
        "3000",
        "--engine",
        "ray",
        "--ray-actors",
        "2",
        "--summary-json",
        str(summary),
        "--progress",
        "plain",
    ]
    result = CliRunner().invoke(cli_main, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output  # the invalid line and the duplicate
    ids = _output_ids(out)
    assert sorted(ids) == sorted([f"c-{i}" for i in range(30)] + ["8"])
    data = json.loads(summary.read_text())
    assert data["succeeded"] == 30
    assert data["invalid"] == 1
    assert data["duplicates"] == 1
    assert data["learned_limits"] == {"requests": 3000.0}  # read from the named actor
    assert data["rate_limit"]["in_force"] == "3,000/min"
    assert len(api.requests()) == 30
    again = CliRunner().invoke(cli_main, args, catch_exceptions=False)
    assert len(api.requests()) == 30, again.output  # resumed: nothing sent again
    assert sorted(_output_ids(out)) == sorted(ids)


# -- the UDF in this process, on the batch formats Ray Data hands it --------------------


async def test_arrow_and_pandas_batches_keep_their_columns_and_get_typed_results() -> None:
    import pyarrow as pa

    from headway.testing import FakeAPI

    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hey"}]})
    async with FakeAPI() as api:
        caller = hr.Caller(
            _config(api.url, rpm=6000),
            backend="memory",
            parse=lambda b: {"reply": b["choices"][0]["message"]["content"]},
        )
        plain = hr.Caller(_config(api.url, rpm=6000), backend="memory")
        try:
            table = pa.table(
                {"custom_id": ["a", "b"], "body": [chat, "[]"], "n": [1, 2], "latency": [0, 0]}
            )
            out = await caller(table)
            frame = await plain(table.to_pandas())
        finally:
            await caller.aclose()
            await plain.aclose()
    assert out.column_names[:3] == ["custom_id", "body", "n"]
    assert out.schema.field("status_code").type == pa.int64()
    assert out.schema.field("latency").type == pa.float64()  # replaced, not duplicated
    assert out.column("reply").to_pylist() == ["echo: hey", None]
    assert "response" not in out.column_names
    assert out.column("error_code").to_pylist() == [None, "invalid_request"]
    assert list(frame["n"]) == [1, 2]
    assert json.loads(frame["response"][0])["choices"][0]["message"]["content"] == "echo: hey"


def test_a_dropped_udf_closes_its_pool_on_its_own_loop(served: Any) -> None:
    import asyncio

    server = served()
    caller = hr.Caller(_config(server.url, rpm=6000), backend="memory")
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    got = asyncio.run_coroutine_threadsafe(caller.send("a", chat), server.loop).result(30)
    assert got.ok
    caller.__del__()  # what Ray Data's actor shutdown does, from another thread
    assert caller.backend is None
    assert not caller._endpoints


async def test_a_lost_state_actor_is_found_again_or_created_anew(ray_session: Any) -> None:
    import asyncio

    from headway.backends.ray import RayBackend

    name = f"headway-test-{uuid.uuid4().hex[:8]}"
    backend = RayBackend(name, retry_interval=0.05, timeout=5.0)
    # a slow refill (one every 10 s): an empty limit still reads empty however long the
    # re-created actor's process takes to start on a loaded machine
    lim = backend.limiter("api", rps=0.1, burst=1000)
    # the actor is up first: starting its process may take longer than the backend's
    # timeout on a loaded machine, and this test is about losing it, not starting it
    ray_session.get(backend.actor.stats.remote(), timeout=120)
    assert (await lim.reserve()).shared
    ray_session.kill(backend.actor, no_restart=True)  # gone for good
    deadline = time.monotonic() + 60  # ray.kill returns before the actor is gone
    with contextlib.suppress(ray_session.exceptions.RayError):
        while time.monotonic() < deadline:
            ray_session.get(backend.actor.stats.remote())
            await asyncio.sleep(0.05)
    assert not (await lim.reserve()).shared  # a local share meanwhile
    # Probes shorter than the new actor's start: they time out while it starts, and the
    # handle that created it must be kept (dropped, Ray collects the actor it created).
    backend.timeout = 0.05
    async with asyncio.timeout(120):  # a bound: the new actor's process has to start
        while True:
            await asyncio.sleep(0.06)
            res = await lim.reserve()
            if res.shared:  # the probe created the actor again
                break
    backend.timeout = 5.0
    assert res.delay > 0.0  # with the limit empty: the lost state may have used it all
    assert backend.outages == 1
    ray_session.kill(backend.actor, no_restart=False)  # Ray restarts it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if ray_session.get(backend.actor.stats.remote())["restarted"]:
                break
        except ray_session.exceptions.RayError:
            pass  # dying or restarting
        await asyncio.sleep(0.05)
    else:
        pytest.fail("Ray did not restart the killed actor within 60 s")
    other = backend.limiter("other", rps=0.1, burst=1000)  # never reserved before
    res = await other.reserve()
    assert res.shared
    assert res.delay > 0.0  # a restarted actor starts every limit empty
    backend.kill()
    await backend.aclose()


def test_the_docs_example_from_a_jsonl_file_to_a_results_file(
    ray_session: Any, served: Any, tmp_path: Path
) -> None:
    api = served()
    lines = [
        json.dumps({"custom_id": f"j-{i}", "url": "/v1/chat/completions", "body": body})
        for i, body in enumerate(json.loads(r["body"]) for r in _rows(10, "j"))
    ]
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n")
    ds = ray_session.data.read_json(str(tmp_path / "requests.jsonl"))  # body: a struct column
    out = tmp_path / "results.parquet"
    stats = hr.run(ds, _config(api.url, rpm=6000), output=out, actors=(1, 2))
    assert stats.succeeded == 10
    ids = sorted(f"j-{i}" for i in range(10))
    assert sorted(_output_ids(tmp_path / "results.parquet.ledger.jsonl")) == ids
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert sorted(table.column("custom_id").to_pylist()) == ids
    assert set(table.column("status_code").to_pylist()) == {200}
    assert sorted(_sent_contents(api.requests())) == sorted(f"j {i}" for i in range(10))


def test_to_parquet_streams_a_ledger_in_chunks_and_skips_a_cut_line(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    ledger = tmp_path / "r.jsonl"
    ok = {"status_code": 200, "request_id": "q", "body": {"choices": [1]}}
    lines = [
        json.dumps({"id": "a", "custom_id": "a", "response": ok, "error": None}),
        json.dumps(
            {"id": "b", "custom_id": "b", "response": None, "error": {"code": "x", "message": "m"}}
        ),
        json.dumps({"id": "c", "custom_id": "c", "response": ok, "error": None}),
    ]
    ledger.write_text("\n".join(lines) + '\n{"id": "d", "cus')  # cut by a crash
    assert hr.to_parquet(ledger, tmp_path / "r.parquet", rows=2) == 3
    rows = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [r["custom_id"] for r in rows] == ["a", "b", "c"]
    assert json.loads(rows[0]["body"]) == {"choices": [1]}
    assert (rows[1]["status_code"], rows[1]["error_code"], rows[1]["error_message"]) == (
        None,
        "x",
        "m",
    )
    (tmp_path / "empty.jsonl").write_text("")
    assert hr.to_parquet(tmp_path / "empty.jsonl", tmp_path / "e.parquet") == 0
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


def test_done_rows_are_dropped_with_one_lookup_per_worker_and_run() -> None:
    import pyarrow as pa

    from headway.ray import _run

    done = _run._id_array(iter(["a", "b", "b", "7"]), chunk=2)  # "b" twice: in two files
    batch = pa.table({"custom_id": ["a", "c", None, "b"], "n": [1, 2, 3, 4]})
    kept = _run._drop_done(batch, done, "custom_id", "run-1")
    assert kept.column("n").to_pylist() == [2, 3]  # a null id is not done
    first = _run._DONE_INDEX["run-1"]
    numbers = pa.table({"custom_id": [7, 8]})  # ids that are not strings are compared as text
    assert _run._drop_done(numbers, done, "custom_id", "run-1").column(0).to_pylist() == [8]
    assert _run._DONE_INDEX["run-1"] is first  # built once for the run
    other = _run._id_array(iter(["c"]))
    kept = _run._drop_done(batch, other, "custom_id", "run-2")
    assert kept.column("n").to_pylist() == [1, 3, 4]
    assert list(_run._DONE_INDEX) == ["run-2"]  # the last run's only
    assert _run._drop_done(batch, other, "custom_id").num_rows == 3  # no run: nothing kept
    assert list(_run._DONE_INDEX) == []


def test_a_large_resume_drops_the_done_rows_with_a_join(
    ray_session: Any, served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from headway.ray import _run

    api = served()
    rows = _rows(50, "j")
    out = tmp_path / "results.jsonl"
    config = _config(api.url, rpm=6000)
    first = hr.run(ray_session.data.from_items(rows[:30]), config, output=out, actors=1)
    assert first.succeeded == 30
    # past JOIN_AT done ids (here: past 0), Ray Data's anti-join, in partitions of 8 ids
    monkeypatch.setattr(_run, "JOIN_AT", 0)
    monkeypatch.setattr(_run, "JOIN_PARTITION", 8)

    def no_lookup(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the lookup path was taken")

    monkeypatch.setattr(_run, "_drop_done", no_lookup)
    stats = hr.run(ray_session.data.from_items(rows), config, output=out, actors=1)
    assert (stats.skipped, stats.succeeded, stats.duplicates) == (30, 20, 0)
    assert sorted(_output_ids(out)) == sorted(r["custom_id"] for r in rows)
    sent = Counter(_sent_contents(api.requests()))
    assert sent == Counter(f"j {i}" for i in range(50))  # each sent once, none again
