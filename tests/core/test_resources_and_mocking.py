"""AsyncResourceManager across the components that own something, and seed-style mocking."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import AsyncMock, patch

import pytest

import headway
from headway import (
    AsyncAPIClient,
    AsyncExecutor,
    AsyncResourceManager,
    CircuitBreaker,
    ConcurrencyLimit,
    Endpoint,
    ManualClock,
    MultiLimiter,
    Policy,
    RateLimitedExecutor,
    RetryBudget,
    TokenBucketRateLimiter,
)
from headway.backends import MemoryBackend, RedisBackend
from headway.testing import FakeAPI

pytestmark = pytest.mark.virtual_time


async def test_every_owner_of_a_session_socket_or_task_is_an_async_resource_manager() -> None:
    async with FakeAPI() as api:
        owners: list[Any] = [
            AsyncAPIClient(api.openai_base_url),
            Endpoint(
                {
                    "base_url": api.openai_base_url,
                    "endpoint": "chat/completions",
                    "auth_type": "none",
                }
            ),
            AsyncExecutor(4),
            RateLimitedExecutor(10, max_concurrency=4),
            MemoryBackend(),
            RedisBackend("redis://127.0.0.1:1/0"),
            FakeAPI(),
        ]
        for owner in owners:
            assert isinstance(owner, AsyncResourceManager), type(owner).__name__
            await owner.aclose()
            await owner.aclose()  # closing twice is harmless
        assert isinstance(api, AsyncResourceManager)
    await api.aclose()  # after the block, too


def test_plain_objects_are_not_resource_managers() -> None:
    assert not isinstance(object(), AsyncResourceManager)
    assert not isinstance(Policy(), AsyncResourceManager)
    assert "AsyncResourceManager" in headway.__all__


async def test_patch_limiter_acquire_as_the_seeds_do() -> None:
    clock = ManualClock()
    limiter = TokenBucketRateLimiter(rate=10, clock=clock)

    async def work() -> str:
        return "done"

    with patch.object(limiter, "acquire", AsyncMock(return_value=0.2)) as acquire:
        assert await limiter.execute(work) == "done"
    acquire.assert_awaited_once()
    assert clock.sleeps == [0.2]  # the mocked wait was slept


async def test_patch_limiter_refill_as_the_seeds_do() -> None:
    limiter = TokenBucketRateLimiter(rate=10, max_tokens=10, initial_tokens=0, clock=ManualClock())
    with patch.object(limiter, "_refill", return_value=10.0):
        assert limiter.tokens == 10.0
    assert limiter.tokens == 0.0


async def test_executor_shutdown_can_be_replaced_as_the_seeds_do() -> None:
    executor = AsyncExecutor(2)
    executor.shutdown = AsyncMock()  # type: ignore[method-assign]
    await executor.aclose()
    executor.shutdown.assert_awaited_once()
    del executor.shutdown  # the real one closes it
    await executor.aclose()
    assert executor.closed


async def test_public_components_allow_patch_object() -> None:
    breaker = CircuitBreaker()
    budget = RetryBudget()
    multi = MultiLimiter.for_llm(rpm=60, tpm=1000)
    pool = ConcurrencyLimit(1)
    with (
        patch.object(breaker, "try_enter", side_effect=RuntimeError("mocked")),
        patch.object(budget, "record_request") as record,
        patch.object(multi, "on_success") as success,
        patch.object(pool, "try_acquire", return_value=True),
        patch.object(pool, "release") as release,
    ):
        policy = Policy(breaker=breaker, limiter=multi, concurrency=pool)
        with pytest.raises(RuntimeError, match="mocked"):
            await policy.execute(asyncio.sleep, 0)
        ok = Policy(limiter=multi, concurrency=pool)
        await ok.execute(asyncio.sleep, 0)
        success.assert_called_once()
        release.assert_called_once()
        budget.record_request()
        record.assert_called_once()
