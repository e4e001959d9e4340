"""The retry front doors share one engine: generators, result predicates, signatures."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from headway import ConfigurationError, RetryPolicy, retry, retry_with_backoff
from headway.testing import VirtualClock

pytestmark = pytest.mark.virtual_time


async def test_an_async_generator_stays_one_and_is_retried_before_its_first_item(
    virtual_clock: VirtualClock,
) -> None:
    starts: list[int] = []

    @retry(base_delay=0.5, jitter=False, retry_on=ConnectionError)
    async def numbers(n: int) -> AsyncIterator[int]:
        starts.append(n)
        if len(starts) < 3:
            raise ConnectionError("not yet")
        for i in range(n):
            yield i

    assert inspect.isasyncgenfunction(numbers)
    assert [i async for i in numbers(3)] == [0, 1, 2]
    assert len(starts) == 3
    assert virtual_clock.elapsed == pytest.approx(1.5)


async def test_an_error_after_the_first_item_goes_to_the_caller() -> None:
    starts: list[int] = []

    @retry(base_delay=0, retry_on=ConnectionError)
    async def stream() -> AsyncIterator[str]:
        starts.append(1)
        yield "first"
        raise ConnectionError("mid-stream")

    got: list[str] = []

    async def drain() -> None:
        async for item in stream():
            got.append(item)

    with pytest.raises(ConnectionError):
        await drain()
    assert got == ["first"]
    assert starts == [1]


async def test_an_empty_generator_ends_at_once() -> None:
    @retry
    async def nothing() -> AsyncIterator[int]:
        return
        yield 0  # pragma: no cover

    assert [i async for i in nothing()] == []


async def test_retry_on_result(virtual_clock: VirtualClock) -> None:
    answers = iter([None, None, "ready"])

    @retry(base_delay=1.0, jitter=False, retry_on_result=lambda r: r is None)
    async def poll() -> str | None:
        return next(answers)

    assert await poll() == "ready"
    assert virtual_clock.elapsed == pytest.approx(3.0)

    # when retries run out, the last result is returned
    policy = RetryPolicy(max_retries=2, base_delay=0, retry_on_result=lambda r: r < 10)
    calls: list[int] = []

    async def count() -> int:
        calls.append(1)
        return len(calls)

    assert await policy.call(count) == 3
    assert await retry_with_backoff(count, base_delay=0, retry_on_result=lambda r: r < 5) == 5


def test_async_predicates_are_refused_at_configuration() -> None:
    async def is_transient(exc: BaseException) -> bool:  # pragma: no cover - never called
        return True

    with pytest.raises(ValidationError, match="async"):
        RetryPolicy(retry_on=is_transient)
    with pytest.raises(ValidationError, match="async"):
        RetryPolicy(retry_on_result=is_transient)
    with pytest.raises(ConfigurationError, match="async"):
        asyncio.run(retry_with_backoff(asyncio.sleep, 0, retry_exceptions=is_transient))


def test_plain_functions_are_refused_at_decoration_time() -> None:
    def blocking(x: int) -> int:  # pragma: no cover - never called
        return x

    with pytest.raises(ConfigurationError, match="async function"):
        retry(blocking)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="async function"):
        RetryPolicy().wrap(blocking)  # type: ignore[arg-type]


async def test_the_wrapper_keeps_defaults_and_signature() -> None:
    async def fetch(url: str, retries: int = 2, *, timeout: float = 5.0) -> tuple[Any, ...]:
        return url, retries, timeout

    wrapped = retry(fetch)
    assert wrapped.__wrapped__ is fetch  # type: ignore[attr-defined]
    assert wrapped.__defaults__ == (2,)
    assert wrapped.__kwdefaults__ == {"timeout": 5.0}
    assert inspect.signature(wrapped) == inspect.signature(fetch)
    assert inspect.iscoroutinefunction(wrapped)
    assert await wrapped("u") == ("u", 2, 5.0)


async def test_cancellation_is_never_retried() -> None:
    calls: list[int] = []

    @retry(base_delay=0, retry_on=BaseException)
    async def cancelled() -> None:
        calls.append(1)
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await cancelled()
    assert calls == [1]


async def test_objects_with_an_async_call_are_accepted() -> None:
    class Caller:
        async def __call__(self) -> str:
            return "ok"

    assert await retry(Caller())() == "ok"
