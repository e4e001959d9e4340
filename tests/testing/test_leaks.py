"""LeakGuard in-process: each kind of leak is found, named and cleaned up."""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

import aiohttp
import pytest

from headway import _resources
from headway.testing.leaks import Leak, LeakError, LeakGuard, leak_guard


async def forever() -> None:
    await asyncio.sleep(3600)


async def boom() -> None:
    raise ValueError("boom")


class Resource:
    def __init__(self) -> None:
        self.closed = False
        _resources.track(self)

    async def aclose(self) -> None:
        self.closed = True
        _resources.untrack(self)

    def __repr__(self) -> str:
        return "<Resource demo>"


async def test_clean_code_has_no_leaks() -> None:
    guard = LeakGuard()
    guard.start()
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    async with aiohttp.ClientSession():
        pass
    res = Resource()
    await res.aclose()
    assert await guard.stop() == []


async def test_pending_task_is_named_with_its_creation_site_and_cancelled() -> None:
    guard = LeakGuard(grace=0.01)
    guard.start()
    task = asyncio.create_task(forever(), name="worker")
    leaks = await guard.stop()
    assert [leak.kind for leak in leaks] == ["task"]
    text = str(leaks[0])
    assert "'worker'" in text
    assert "forever()" in text
    assert "test_leaks.py" in text  # where it was created
    assert "in forever" in text  # where it is suspended
    assert task.cancelled()


async def test_a_task_that_finishes_within_the_grace_is_not_a_leak() -> None:
    guard = LeakGuard(grace=1.0)
    guard.start()
    asyncio.get_running_loop().create_task(asyncio.sleep(0.01))
    assert await guard.stop() == []


async def test_tasks_from_before_the_guard_are_not_counted() -> None:
    early = asyncio.create_task(forever())
    try:
        guard = LeakGuard(grace=0)
        guard.start()
        assert await guard.stop() == []
        assert not early.done()
    finally:
        early.cancel()


async def test_unclosed_session_is_found_and_closed() -> None:
    guard = LeakGuard(grace=0)
    guard.start()
    session = aiohttp.ClientSession()
    leaks = await guard.stop()
    assert [leak.kind for leak in leaks] == ["session"]
    assert "test_leaks.py" in leaks[0].description
    assert session.closed


async def test_unclosed_connector_is_found_and_closed() -> None:
    guard = LeakGuard(grace=0)
    guard.start()
    connector = aiohttp.TCPConnector()
    leaks = await guard.stop()
    assert [leak.kind for leak in leaks] == ["connector"]
    assert "TCPConnector" in leaks[0].description
    assert connector.closed


async def test_open_headway_resource_is_found_and_closed() -> None:
    guard = LeakGuard(grace=0)
    guard.start()
    res = Resource()
    leaks = await guard.stop()
    assert leaks == [Leak("resource", leaks[0].description)]
    assert "<Resource demo>" in leaks[0].description
    assert res.closed
    assert res not in _resources.open_resources()


async def test_never_awaited_coroutine_is_found() -> None:
    guard = LeakGuard(grace=0)
    guard.start()
    boom()  # type: ignore[unused-coroutine]  # never awaited: the leak under test
    gc.collect()
    leaks = await guard.stop()
    assert [leak.kind for leak in leaks] == ["coroutine"]
    assert "'boom' was never awaited" in leaks[0].description


async def test_unretrieved_task_exception_is_found() -> None:
    guard = LeakGuard(grace=0)
    guard.start()
    task: Any = asyncio.create_task(boom(), name="failing")
    await asyncio.sleep(0)
    assert task.done()
    del task
    leaks = await guard.stop()
    assert [leak.kind for leak in leaks] == ["exception"]
    assert "ValueError('boom')" in leaks[0].description
    assert "'failing'" in leaks[0].description


async def test_other_loop_errors_go_to_the_previous_handler() -> None:
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["message"]))
    try:
        guard = LeakGuard(grace=0)
        guard.start()
        loop.call_exception_handler({"message": "something else"})
        assert await guard.stop() == []
        assert seen == ["something else"]
    finally:
        loop.set_exception_handler(None)


async def test_hooks_are_restored() -> None:
    loop = asyncio.get_running_loop()
    factory, handler = loop.get_task_factory(), loop.get_exception_handler()
    init = aiohttp.ClientSession.__init__
    guard = LeakGuard()
    guard.start()
    assert aiohttp.ClientSession.__init__ is not init
    await guard.stop()
    assert loop.get_task_factory() is factory
    assert loop.get_exception_handler() is handler
    assert aiohttp.ClientSession.__init__ is init


async def test_nested_guards_report_once() -> None:
    outer = LeakGuard(grace=0)
    outer.start()
    inner = LeakGuard(grace=0)
    inner.start()
    asyncio.create_task(forever())  # noqa: RUF006 - the leak under test
    aiohttp.ClientSession()
    assert sorted(leak.kind for leak in await inner.stop()) == ["session", "task"]
    assert await outer.stop() == []


async def test_leak_guard_context_manager_raises() -> None:
    with pytest.raises(LeakError) as info:
        async with leak_guard(grace=0):
            asyncio.create_task(forever(), name="left-behind")  # noqa: RUF006
    assert "'left-behind'" in str(info.value)
    assert info.value.leaks[0].kind == "task"
    async with leak_guard():
        await asyncio.sleep(0)


async def test_leak_guard_lets_the_block_error_through() -> None:
    async def leaky_and_failing() -> None:
        async with leak_guard(grace=0):
            asyncio.create_task(forever())  # noqa: RUF006
            raise KeyError("x")

    with pytest.raises(KeyError):
        await leaky_and_failing()


def test_sync_guard_finds_unawaited_coroutines_and_resources() -> None:
    guard = LeakGuard()
    guard.start()
    boom()  # type: ignore[unused-coroutine]
    res = Resource()
    leaks = guard.stop_sync()
    assert sorted(leak.kind for leak in leaks) == ["coroutine", "resource"]
    _resources.untrack(res)


async def test_unclosed_httpx_client_with_a_keep_alive_connection(fake_api: Any) -> None:
    import httpx

    guard = LeakGuard()
    guard.start()
    client = httpx.AsyncClient()
    response = await client.get(f"{fake_api.url}/v1/models")  # the connection stays pooled
    assert response.status_code == 200
    leaks = await guard.stop()
    assert [leak.kind for leak in leaks] == ["client"]
    text = str(leaks[0])
    assert "httpx.AsyncClient created at" in text
    assert "test_leaks.py" in text
    assert "holding 1 keep-alive connection(s)" in text
    assert client.is_closed  # the guard closed it


async def test_closed_httpx_client_is_not_a_leak(fake_api: Any) -> None:
    import httpx

    guard = LeakGuard()
    guard.start()
    async with httpx.AsyncClient() as client:
        await client.get(f"{fake_api.url}/v1/models")
    assert await guard.stop() == []


async def test_never_awaited_coroutine_carries_file_and_line() -> None:
    guard = LeakGuard()
    guard.start()
    boom()  # type: ignore[unused-coroutine]
    line = sys._getframe().f_lineno - 1
    leaks = await guard.stop()
    assert [leak.kind for leak in leaks] == ["coroutine"]
    assert f"test_leaks.py:{line}" in str(leaks[0])
