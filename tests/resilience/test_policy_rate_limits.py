"""Rate 429s in a Policy: waited out (not counted, not budgeted), capped, shared pauses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headway import (
    APIConnectionError,
    ConfigurationError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    is_retryable,
)
from headway.concurrency import ConcurrencyLimit
from headway.errors import BadRequestError, never_retry
from headway.limits import RATE_LIMITED_PAUSE, MultiLimiter, TokenBucketRateLimiter
from headway.resilience import CircuitBreaker, Policy
from headway.resilience.retry import RetryBudget, RetryPolicy
from headway.testing import VirtualClock

pytestmark = pytest.mark.virtual_time


class Script:
    """Fails with the given errors in turn, then returns ``"ok"``; records call times."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.times: list[float] = []

    async def __call__(self) -> str:
        self.times.append(asyncio.get_running_loop().time())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def rate(retry_after: float | None = None, *, empty: bool = True) -> RateLimitError:
    return RateLimitError("slow down", status_code=429, retry_after=retry_after, bucket_empty=empty)


async def test_rate_429s_do_not_count_towards_max_retries(virtual_clock: VirtualClock) -> None:
    func = Script(*(rate(1.0) for _ in range(10)), APIConnectionError("reset"))
    policy = Policy(retry=RetryPolicy(max_retries=1, jitter=False, base_delay=0.5))
    assert await policy.execute(func) == "ok"
    assert len(func.times) == 12  # ten 429s waited out, one counted retry


async def test_rate_429s_do_not_draw_on_the_retry_budget(virtual_clock: VirtualClock) -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0)  # no retries at all
    func = Script(rate(1.0), rate(1.0), rate(1.0))
    assert await Policy(retry=RetryPolicy(budget=budget)).execute(func) == "ok"
    with pytest.raises(APIConnectionError):
        await Policy(retry=RetryPolicy(budget=budget)).execute(Script(APIConnectionError("x")))


async def test_rate_429s_fail_only_past_the_total_deadline(virtual_clock: VirtualClock) -> None:
    func = Script(*(rate(2.0) for _ in range(1000)))
    policy = Policy(total_timeout=15.0)
    with pytest.raises(RateLimitError):
        await policy.execute(func)
    # one attempt every 2 s until the next wait would pass the deadline
    assert len(func.times) == 8
    assert virtual_clock.elapsed < 15.0


async def test_rate_limits_retry_counts_them_as_retries(virtual_clock: VirtualClock) -> None:
    func = Script(rate(1.0), rate(1.0), rate(1.0))
    policy = Policy(retry=RetryPolicy(max_retries=2), rate_limits="retry")
    assert policy.rate_limits == "retry"
    with pytest.raises(RateLimitError):
        await policy.execute(func)
    assert len(func.times) == 3
    with pytest.raises(ConfigurationError, match="rate_limits"):
        Policy(rate_limits="forever")  # type: ignore[arg-type]


async def test_no_retries_means_one_attempt_even_for_rate(virtual_clock: VirtualClock) -> None:
    func = Script(rate(1.0))
    with pytest.raises(RateLimitError):
        await Policy(retry=RetryPolicy(max_retries=0)).execute(func)
    with pytest.raises(RateLimitError):
        await Policy(retry=None).execute(Script(rate(1.0)))


async def test_server_delay_is_capped_by_max_server_delay(virtual_clock: VirtualClock) -> None:
    limiter = TokenBucketRateLimiter(rate=100)
    func = Script(rate(86_400.0))
    policy = Policy(limiter=limiter, retry=RetryPolicy(max_server_delay=30.0))
    assert await policy.execute(func) == "ok"
    # the wait and the shared pause were capped by the same number
    assert func.times[1] - func.times[0] == pytest.approx(30.0, abs=0.05)


class PauseRecorder(TokenBucketRateLimiter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pauses: list[float] = []

    def pause_until(self, when: float) -> None:
        self.pauses.append(when)
        super().pause_until(when)


async def test_only_an_empty_bucket_pauses_everyone(virtual_clock: VirtualClock) -> None:
    limiter = PauseRecorder(rate=100)
    policy = Policy(limiter=limiter, retry=RetryPolicy(jitter=False))
    func = Script(rate(5.0, empty=False))
    assert await policy.execute(func) == "ok"
    assert func.times[1] - func.times[0] == pytest.approx(5.0)  # this request backed off
    assert limiter.pauses == []  # nobody else was held back

    func = Script(rate(5.0, empty=True))
    assert await policy.execute(func) == "ok"
    assert limiter.pauses == [pytest.approx(func.times[0] + 5.0)]

    capped = PauseRecorder(rate=100)
    policy = Policy(limiter=capped, retry=RetryPolicy(max_server_delay=30.0))
    func = Script(rate(86_400.0))
    assert await policy.execute(func) == "ok"
    assert capped.pauses == [pytest.approx(func.times[0] + 30.0)]  # a day's pause capped


async def test_an_empty_bucket_without_delay_pauses_briefly(virtual_clock: VirtualClock) -> None:
    limiter = MultiLimiter.for_llm(rpm=6000, tpm=1_000_000)
    policy = Policy(limiter=limiter, retry=RetryPolicy(jitter=False, base_delay=0.1))
    func = Script(rate(None))
    assert await policy.execute(func) == "ok"
    assert func.times[1] - func.times[0] >= RATE_LIMITED_PAUSE - 1e-6


async def test_a_rate_wait_holds_no_slot(virtual_clock: VirtualClock) -> None:
    pool = ConcurrencyLimit(1)
    policy = Policy(concurrency=pool)
    seen: list[int] = []

    async def other() -> str:
        seen.append(pool.in_use)
        return "other"

    async def later() -> str:
        await asyncio.sleep(1.0)
        return await policy.execute(other)

    results = await asyncio.gather(policy.execute(Script(rate(10.0, empty=False))), later())
    assert results == ["ok", "other"]
    assert seen == [1]  # the other call went during the 10 s wait


async def test_quota_is_not_rate_and_never_retried(virtual_clock: VirtualClock) -> None:
    quota = QuotaExceededError(
        "insufficient_quota", status_code=429, headers={"x-should-retry": "true"}
    )
    assert not isinstance(quota, RateLimitError)
    func = Script(quota)
    with pytest.raises(QuotaExceededError):
        await Policy().execute(func)
    assert len(func.times) == 1


def test_x_should_retry_true_wins_everywhere() -> None:
    forced = BadRequestError("b", status_code=400, headers={"x-should-retry": "true"})
    refused = ServerError("s", status_code=503, headers={"x-should-retry": "false"})
    typed = RetryPolicy(retry_on=(ServerError,))
    for exc, expected in ((forced, True), (refused, False)):
        assert is_retryable(exc) is expected
        assert never_retry(exc) is not expected
        assert RetryPolicy().should_retry(exc) is expected
        assert typed.should_retry(exc) is expected


async def test_breaker_and_limiter_hear_of_each_attempt(virtual_clock: VirtualClock) -> None:
    calls: list[tuple[str, Any]] = []

    class Recording(TokenBucketRateLimiter):
        def on_success(self) -> None:
            calls.append(("success", None))

        def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
            calls.append(("rate", (delay, empty)))
            super().on_rate_limited(delay, empty=empty)

    policy = Policy(limiter=Recording(rate=100), breaker=CircuitBreaker(failure_threshold=1))
    assert await policy.execute(Script(rate(2.0, empty=False))) == "ok"
    assert calls == [("rate", (2.0, False)), ("success", None)]
    assert policy.breaker is not None
    assert policy.breaker.failure_count == 0
