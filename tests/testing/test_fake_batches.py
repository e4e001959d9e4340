"""FakeAPI's Batch APIs, driven by the official openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from headway.testing import FakeAPI

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")


def _chat_line(cid: str, text: str = "hi", model: str = "gpt-4o-mini") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode() + b"\n"


@pytest.mark.virtual_time
async def test_openai_sdk_upload_create_poll_download() -> None:
    async with FakeAPI() as api:
        api.batches.fail.add("c")
        client = openai.AsyncOpenAI(base_url=api.openai_base_url, api_key="sk-test")
        data = b"".join(_chat_line(c, f"say {c}") for c in "abcd")
        f = await client.files.create(file=("in.jsonl", data), purpose="batch")
        assert f.purpose == "batch"
        assert f.bytes == len(data)
        batch = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.status == "validating"
        await asyncio.sleep(1.5)
        batch = await client.batches.retrieve(batch.id)
        assert batch.status == "in_progress"
        await asyncio.sleep(5.0)
        batch = await client.batches.retrieve(batch.id)
        assert batch.request_counts is not None
        assert 0 < batch.request_counts.completed + batch.request_counts.failed < 4
        await asyncio.sleep(10.0)
        batch = await client.batches.retrieve(batch.id)
        assert batch.status == "completed"
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
        assert batch.output_file_id
        assert batch.error_file_id
        out = (await client.files.content(batch.output_file_id)).content
        lines = [json.loads(x) for x in out.splitlines()]
        assert sorted(x["custom_id"] for x in lines) == ["a", "b", "d"]
        assert lines[0]["response"]["status_code"] == 200
        assert lines[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: say a"
        err = (await client.files.content(batch.error_file_id)).content
        (bad,) = [json.loads(x) for x in err.splitlines()]
        assert bad["custom_id"] == "c"
        assert bad["response"]["status_code"] == 500
        listed = await client.batches.list()
        assert [b.id for b in listed.data] == [batch.id]
        await client.files.delete(f.id)
        assert api.batches.deleted_files == 1
        await client.close()


@pytest.mark.virtual_time
async def test_openai_partial_expiry_and_cancel() -> None:
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        api.batches.timing.completion_window = 51.0  # half the lines make it
        client = openai.AsyncOpenAI(base_url=api.openai_base_url, api_key="sk-test")
        data = b"".join(_chat_line(str(i)) for i in range(10))
        f = await client.files.create(file=("in.jsonl", data), purpose="batch")
        expiring = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        cancelled = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await asyncio.sleep(31.0)  # 3 lines done
        c = await client.batches.cancel(cancelled.id)
        assert c.status == "cancelling"
        await asyncio.sleep(30.0)
        e = await client.batches.retrieve(expiring.id)
        c = await client.batches.retrieve(cancelled.id)
        assert e.status == "expired"
        assert c.status == "cancelled"
        assert e.request_counts is not None
        assert e.request_counts.completed == 5
        assert c.request_counts is not None
        assert c.request_counts.completed == 3
        assert c.error_file_id is not None
        err = (await client.files.content(c.error_file_id)).content.splitlines()
        codes = {json.loads(x)["error"]["code"] for x in err}
        assert codes == {"batch_cancelled"}
        assert len(err) == 7
        assert e.error_file_id is not None
        err = (await client.files.content(e.error_file_id)).content.splitlines()
        assert {json.loads(x)["error"]["code"] for x in err} == {"batch_expired"}
        with pytest.raises(openai.ConflictError):
            await client.batches.cancel(c.id)
        await client.close()


@pytest.mark.virtual_time
async def test_openai_enqueued_token_limit_fails_validation() -> None:
    async with FakeAPI() as api:
        api.batches.enqueued_token_limit = 5
        client = openai.AsyncOpenAI(base_url=api.openai_base_url, api_key="sk-test")
        data = b"".join(_chat_line(str(i), "one two three") for i in range(3))
        f = await client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await asyncio.sleep(2)
        batch = await client.batches.retrieve(batch.id)
        assert batch.status == "failed"
        assert batch.errors is not None
        assert batch.errors.data
        assert batch.errors.data[0].code == "token_limit_exceeded"
        await client.close()


@pytest.mark.virtual_time
async def test_openai_bad_requests() -> None:
    async with FakeAPI() as api:
        client = openai.AsyncOpenAI(base_url=api.openai_base_url, api_key="sk-test", max_retries=0)
        with pytest.raises(openai.BadRequestError):
            await client.files.create(file=("x.jsonl", b"{}"), purpose="nonsense")  # type: ignore[arg-type]
        f = await client.files.create(file=("x.jsonl", _chat_line("a") * 2), purpose="batch")
        with pytest.raises(openai.BadRequestError):
            await client.batches.create(
                input_file_id=f.id,
                endpoint="/v1/nope",
                completion_window="24h",  # type: ignore[arg-type]
            )
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_missing")
        with pytest.raises(openai.NotFoundError):
            await client.files.content("file-missing")
        batch = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        await asyncio.sleep(2)
        batch = await client.batches.retrieve(batch.id)
        assert batch.status == "failed"
        assert batch.errors is not None
        assert batch.errors.data
        assert batch.errors.data[0].code == "duplicate_custom_id"
        await client.close()


@pytest.mark.virtual_time
async def test_anthropic_sdk_create_poll_results() -> None:
    async with FakeAPI() as api:
        api.batches.fail.add("b")
        client = anthropic.AsyncAnthropic(base_url=api.url, api_key="sk-ant-test")
        params = {
            "model": "claude-x",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "yo"}],
        }
        requests = [{"custom_id": c, "params": params} for c in "abc"]
        requests.append({"custom_id": "d", "params": {"model": "m", "messages": []}})
        batch = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert batch.processing_status == "in_progress"
        assert batch.request_counts.processing == 4
        await asyncio.sleep(20)
        batch = await client.messages.batches.retrieve(batch.id)
        assert batch.processing_status == "ended"
        assert batch.results_url
        assert batch.request_counts.succeeded == 2
        assert batch.request_counts.errored == 2
        results = {
            r.custom_id: r.result async for r in await client.messages.batches.results(batch.id)
        }
        assert results["a"].type == "succeeded"
        assert results["a"].message.content[0].text == "echo: yo"  # type: ignore[union-attr]
        assert results["b"].type == "errored"
        assert results["d"].type == "errored"
        await client.close()


@pytest.mark.virtual_time
async def test_anthropic_cancel_expiry_and_queue_limit() -> None:
    async with FakeAPI() as api:
        api.batches.timing.processing = 100.0
        api.batches.anthropic_queue_limit = 15
        client = anthropic.AsyncAnthropic(base_url=api.url, api_key="k", max_retries=0)
        params = {
            "model": "claude-x",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "yo"}],
        }
        requests = [{"custom_id": str(i), "params": params} for i in range(10)]
        batch = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        await asyncio.sleep(50)
        batch = await client.messages.batches.cancel(batch.id)
        assert batch.processing_status == "canceling"
        await asyncio.sleep(5)
        batch = await client.messages.batches.retrieve(batch.id)
        assert batch.processing_status == "ended"
        assert (batch.request_counts.succeeded, batch.request_counts.canceled) == (5, 5)
        kinds = [r.result.type async for r in await client.messages.batches.results(batch.id)]
        assert kinds.count("canceled") == 5
        page = await client.messages.batches.list()
        assert [b.id for b in page.data] == [batch.id]
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve("msgbatch_missing")
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.create(requests=[])
        await client.close()


@pytest.mark.virtual_time
async def test_faults_apply_to_batch_routes() -> None:
    connector = aiohttp.TCPConnector(force_close=True)
    async with FakeAPI() as api, aiohttp.ClientSession(connector=connector) as session:
        api.script("GET", "/v1/batches/{batch_id}", [503, "reset"])
        async with session.get(f"{api.url}/v1/batches/x") as resp:
            assert resp.status == 503
        statuses = []
        for _ in range(2):  # aiohttp may retry the reset GET on its own
            try:
                async with session.get(f"{api.url}/v1/batches/x") as resp:
                    statuses.append(resp.status)
            except aiohttp.ClientError:
                statuses.append(None)
        assert 404 in statuses
        async with session.get(f"{api.url}/v1/messages/batches/x/results") as resp:
            assert resp.status == 404
        faults = [r.fault for r in api.calls("GET", "/v1/batches/{batch_id}")]
        assert faults[:3] == ["503", "reset", None]


@pytest.mark.virtual_time
async def test_lost_and_late_creates_make_the_batch() -> None:
    from headway.testing import Fault

    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    body = {"requests": [{"custom_id": "a", "params": {"model": "m", "max_tokens": 3}}]}
    body["requests"][0]["params"]["messages"] = [{"role": "user", "content": "hi"}]
    url_list = "/v1/messages/batches"
    async with (
        FakeAPI() as api,
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
    ):
        api.script("POST", url_list, [Fault.lost(listed_after=30), Fault.late(), "late:100"])
        with pytest.raises(aiohttp.ClientError):  # reset after the batch was made
            await session.post(f"{api.url}{url_list}", json=body)
        async with session.get(f"{api.url}{url_list}") as resp:
            assert (await resp.json())["data"] == []  # not listed yet
        first = api.batches.anthropic_batches[0].id
        async with session.get(f"{api.url}{url_list}/{first}") as resp:
            assert resp.status == 200  # but there, by its id
        await asyncio.sleep(30)
        async with session.get(f"{api.url}{url_list}") as resp:
            assert [b["id"] for b in (await resp.json())["data"]] == [first]
        with pytest.raises(asyncio.TimeoutError):  # held past the client's timeout
            await session.post(f"{api.url}{url_list}", json=body)
        patient = aiohttp.ClientTimeout(total=200)
        async with session.post(f"{api.url}{url_list}", json=body, timeout=patient) as resp:
            assert resp.status == 200  # answered, 100 s late
            third = (await resp.json())["id"]
        assert len(api.batches.anthropic_batches) == 3
        calls = api.calls("POST", url_list)
        assert [(c.fault, c.status) for c in calls] == [
            ("lost", None),
            ("late", None),  # held until the server closes
            ("late", 200),
        ]
        # before_id pages towards newer batches, after_id towards older ones
        async with session.get(f"{api.url}{url_list}", params={"before_id": first}) as resp:
            newer = [b["id"] for b in (await resp.json())["data"]]
        second = api.batches.anthropic_batches[1].id
        assert newer == [third, second]
        async with session.get(f"{api.url}{url_list}", params={"after_id": third}) as resp:
            assert first in [b["id"] for b in (await resp.json())["data"]]
        async with session.get(f"{api.url}{url_list}", params={"before_id": "nope"}) as resp:
            assert resp.status == 404


@pytest.mark.virtual_time
async def test_clock_skew_moves_the_timestamps() -> None:
    import datetime

    async with FakeAPI() as api, aiohttp.ClientSession() as session:
        api.batches.clock_skew = -3600.0
        body = {"requests": [{"custom_id": "a", "params": {"model": "m", "max_tokens": 3}}]}
        async with session.post(f"{api.url}/v1/messages/batches", json=body) as resp:
            created = (await resp.json())["created_at"]
        when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        import time

        assert time.time() - 3700 < when < time.time() - 3500
