"""Policy: the documented order, nothing held during backoff, pauses, deadlines, outcomes."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest.mock import patch

import pytest

from headway import (
    APIConnectionError,
    APITimeoutError,
    CircuitBreakerOpenError,
    ConfigurationError,
    Event,
    MaxWaitExceededError,
    RateLimitError,
    ServerError,
)
from headway.concurrency import AdaptiveConcurrency, ConcurrencyLimit
from headway.errors import AuthenticationError
from headway.events import RETRY_BUDGET_EXHAUSTED, RETRY_GAVE_UP, RETRY_SCHEDULED, TIMEOUT
from headway.limits import MultiLimiter, TokenBucketRateLimiter
from headway.resilience import AttemptContext, CircuitBreaker, CircuitState, Policy
from headway.resilience.policy import BOOK_EVERY
from headway.resilience.retry import RetryBudget, RetryPolicy
from headway.testing import VirtualClock

pytestmark = pytest.mark.virtual_time


def state(breaker: CircuitBreaker) -> CircuitState:
    """The breaker's state, read through a call (so that mypy does not narrow it)."""
    return breaker.state


def fast_retry(**kw: Any) -> RetryPolicy:
    kw.setdefault("jitter", False)
    kw.setdefault("base_delay", 1.0)
    return RetryPolicy(**kw)


class Script:
    """An async callable failing with the given errors in turn, then returning ``"ok"``."""

    def __init__(self, *errors: BaseException, sleep: float = 0.0) -> None:
        self.errors = list(errors)
        self.sleep = sleep
        self.calls = 0
        self.args: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        self.args.append((args, kwargs))
        if self.sleep:
            await asyncio.sleep(self.sleep)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_execute_passes_arguments_but_not_requests_or_tokens() -> None:
    func = Script()
    policy = Policy(limiter=TokenBucketRateLimiter(100))
    assert await policy.execute(func, 1, x=2, requests=1, tokens=5) == "ok"
    assert func.args == [((1,), {"x": 2})]


async def test_bare_policy_retries_transient_errors(virtual_clock: VirtualClock) -> None:
    func = Script(APIConnectionError(), ServerError("boom", status_code=502))
    assert await Policy(retry=fast_retry()).execute(func) == "ok"
    assert func.calls == 3
    assert virtual_clock.elapsed == pytest.approx(3.0)
    func = Script(ValueError("bug"))
    with pytest.raises(ValueError):
        await Policy().execute(func)
    assert func.calls == 1


async def test_retry_none_never_retries() -> None:
    func = Script(APIConnectionError())
    with pytest.raises(APIConnectionError):
        await Policy(retry=None).execute(func)
    assert func.calls == 1


async def test_run_gives_attempt_context_and_settles_tokens() -> None:
    limiter = MultiLimiter.for_llm(rpm=60, tpm=10_000)
    seen: list[tuple[int, float]] = []

    async def attempt(ctx: AttemptContext) -> int:
        assert ctx.limiter is limiter
        assert ctx.policy is policy
        assert ctx.reservation is not None
        seen.append((ctx.attempt, ctx.reservation.tokens))
        if ctx.attempt == 1:
            ctx.settle(0)
            raise APIConnectionError("reset")
        ctx.settle(300)
        return ctx.attempt

    policy = Policy(limiter=limiter, retry=fast_retry())
    assert await policy.run(attempt, tokens=1000) == 2
    assert seen == [(1, 1000.0), (2, 1000.0)]
    # the first attempt used 0 tokens, the second 300: 300 gone from the token bucket
    assert limiter.limiters[1].tokens == pytest.approx(10_000 - 300, abs=5)
    assert "AttemptContext" in repr(AttemptContext(policy, None))


async def test_run_without_limiter_settle_is_noop() -> None:
    async def attempt(ctx: AttemptContext) -> str:
        assert ctx.reservation is None
        ctx.settle(42)
        return "fine"

    assert await Policy().run(attempt) == "fine"


async def test_every_attempt_passes_the_limiter(virtual_clock: VirtualClock) -> None:
    limiter = TokenBucketRateLimiter(rate=10, max_tokens=10)
    func = Script(APIConnectionError(), APIConnectionError())
    await Policy(limiter=limiter, retry=fast_retry(base_delay=0.0)).execute(func)
    assert func.calls == 3
    assert limiter.tokens == pytest.approx(7, abs=1e-6)


async def test_open_breaker_rejects_before_slot_and_limiter() -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_time=30)
    breaker.force_open()
    limiter = TokenBucketRateLimiter(rate=10)
    conc = ConcurrencyLimit(1)
    func = Script()
    policy = Policy(breaker=breaker, limiter=limiter, concurrency=conc)
    with pytest.raises(CircuitBreakerOpenError):
        await policy.execute(func)
    assert func.calls == 0
    assert limiter.tokens == pytest.approx(10)
    assert conc.in_use == 0


async def test_breaker_counts_server_errors_not_client_errors() -> None:
    breaker = CircuitBreaker(failure_threshold=2, recovery_time=30)
    policy = Policy(breaker=breaker, retry=None)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await policy.execute(Script(AuthenticationError("k", status_code=401)))
    assert state(breaker) is CircuitState.CLOSED
    for _ in range(2):
        with pytest.raises(ServerError):
            await policy.execute(Script(ServerError("x", status_code=500)))
    assert state(breaker) is CircuitState.OPEN
    with pytest.raises(CircuitBreakerOpenError):
        await policy.execute(Script())


async def test_breaker_half_open_trial_success_closes(virtual_clock: VirtualClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, recovery_time=5, slow_call_duration=10)
    policy = Policy(breaker=breaker, retry=None)
    with pytest.raises(ServerError):
        await policy.execute(Script(ServerError("x", status_code=503)))
    assert state(breaker) is CircuitState.OPEN
    await asyncio.sleep(5)
    assert await policy.execute(Script(sleep=1)) == "ok"
    assert state(breaker) is CircuitState.CLOSED


async def test_slow_call_is_measured_without_queueing(virtual_clock: VirtualClock) -> None:
    # A 3 s limiter wait must not make a 1 s call "slow" (slow_call_duration=2).
    breaker = CircuitBreaker(
        failure_threshold=1,
        recovery_time=30,
        slow_call_duration=2,
        failure_rate_threshold=0.5,
        slow_call_rate_threshold=0.5,
        minimum_calls=1,
    )
    limiter = TokenBucketRateLimiter(rate=1, period=3, max_tokens=1)
    policy = Policy(breaker=breaker, limiter=limiter, retry=None)
    await policy.execute(Script(sleep=1))
    await policy.execute(Script(sleep=1))  # waits 3 s for the limiter, then 1 s call
    assert state(breaker) is CircuitState.CLOSED


async def test_no_slot_is_held_during_backoff(virtual_clock: VirtualClock) -> None:
    conc = ConcurrencyLimit(1)
    policy = Policy(concurrency=conc, retry=fast_retry(base_delay=10))
    order: list[str] = []

    async def first() -> str:
        if "first-failed" not in order:
            order.append("first-failed")
            raise APIConnectionError("reset")
        order.append("first-ok")
        return "first"

    async def second() -> str:
        order.append("second")
        return "second"

    async def later() -> str:
        await asyncio.sleep(1)  # first is in its 10 s backoff now
        assert conc.in_use == 0
        return await policy.execute(second)

    async with asyncio.timeout(60):
        results = await asyncio.gather(policy.execute(first), later())
    assert list(results) == ["first", "second"]
    assert order == ["first-failed", "second", "first-ok"]
    assert conc.in_use == 0


async def test_concurrency_int_and_limit_and_validation() -> None:
    assert isinstance(Policy(concurrency=3).concurrency, ConcurrencyLimit)
    assert Policy(concurrency=3).concurrency.limit == 3  # type: ignore[union-attr]
    conc = AdaptiveConcurrency(4)
    assert Policy(concurrency=conc).concurrency is conc
    with pytest.raises(ConfigurationError):
        Policy(concurrency=True)
    with pytest.raises(ConfigurationError):
        Policy(concurrency="4")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Policy(attempt_timeout=0)
    with pytest.raises(ConfigurationError):
        Policy(total_timeout=-1)
    with pytest.raises(ConfigurationError):
        Policy(retry=3)  # type: ignore[arg-type]


async def test_concurrency_limit_holds(virtual_clock: VirtualClock) -> None:
    conc = ConcurrencyLimit(3)
    peak = 0

    async def work() -> None:
        nonlocal peak
        peak = max(peak, conc.in_use)
        await asyncio.sleep(1)

    policy = Policy(concurrency=conc)
    async with asyncio.timeout(60):
        await asyncio.gather(*(policy.execute(work) for _ in range(10)))
    assert peak == 3
    assert virtual_clock.elapsed == pytest.approx(4)


async def test_rate_limit_retry_after_pauses_shared_limiter(virtual_clock: VirtualClock) -> None:
    limiter = TokenBucketRateLimiter(rate=100, max_tokens=100)
    policy = Policy(limiter=limiter, retry=fast_retry())
    loop = asyncio.get_running_loop()
    other_started: list[float] = []

    async def other() -> None:
        other_started.append(loop.time())

    async def bystander() -> None:
        await asyncio.sleep(0.5)
        await policy.execute(other)

    t0 = loop.time()
    func = Script(RateLimitError("slow down", status_code=429, retry_after=5))
    async with asyncio.timeout(60):
        await asyncio.gather(policy.execute(func), bystander())
    # the bystander's call waited for the pause to end
    assert other_started[0] - t0 >= 5 - 1e-6
    assert func.calls == 2


async def test_rate_limit_without_retry_after_does_not_pause(virtual_clock: VirtualClock) -> None:
    limiter = TokenBucketRateLimiter(rate=100, max_tokens=100)
    func = Script(RateLimitError("slow down", status_code=429))
    await Policy(limiter=limiter, retry=fast_retry(base_delay=0.1)).execute(func)
    assert limiter.paused_until is None or limiter.paused_until <= 0.0
    assert virtual_clock.elapsed < 1


async def test_pause_uses_pause_until_when_no_pause_method(virtual_clock: VirtualClock) -> None:
    inner = TokenBucketRateLimiter(rate=100)

    class MinimalLimiter:
        def __init__(self) -> None:
            self.paused: list[float] = []

        async def reserve(self, requests: float = 1.0, tokens: float = 0.0, **kw: Any) -> Any:
            return await inner.reserve(requests, tokens)

        def pause_until(self, when: float) -> None:
            self.paused.append(when)

        def sync(self, *args: Any, **kwargs: Any) -> None:
            pass

    lim = MinimalLimiter()
    func = Script(RateLimitError("x", retry_after=2))
    now = asyncio.get_running_loop().time()
    await Policy(limiter=lim, retry=fast_retry()).execute(func)  # type: ignore[arg-type]
    assert lim.paused == [pytest.approx(now + 2)]


async def test_local_limiter_refusal_is_retried_after_its_delay(
    virtual_clock: VirtualClock,
) -> None:
    limiter = MultiLimiter([TokenBucketRateLimiter(rate=1, max_tokens=1)], max_wait=0.5)
    policy = Policy(limiter=limiter, retry=fast_retry())
    await policy.execute(Script())
    # the bucket is empty: the wait (1 s) exceeds max_wait, so the attempt is refused,
    # then retried after the refused wait
    assert await policy.execute(Script()) == "ok"
    assert virtual_clock.elapsed == pytest.approx(1.0)
    with pytest.raises(MaxWaitExceededError):
        await Policy(limiter=limiter, retry=None).execute(Script())


async def test_attempt_timeout_is_retried(virtual_clock: VirtualClock) -> None:
    calls = 0

    async def slow_then_fast() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(100)
        return "ok"

    seen: list[Event] = []
    policy = Policy(attempt_timeout=2, retry=fast_retry(), listeners=(seen.append,), name="p")
    assert await policy.execute(slow_then_fast) == "ok"
    assert calls == 2
    assert virtual_clock.elapsed == pytest.approx(3)
    assert [e.kind for e in seen] == [TIMEOUT, RETRY_SCHEDULED]
    assert all(e.source == "p" for e in seen)


async def test_attempt_timeout_in_run(virtual_clock: VirtualClock) -> None:
    async def attempt(ctx: AttemptContext) -> int:
        if ctx.attempt == 1:
            await asyncio.sleep(100)
        return ctx.attempt

    assert await Policy(attempt_timeout=1, retry=fast_retry()).run(attempt) == 2


async def test_total_timeout_cuts_the_whole_call(virtual_clock: VirtualClock) -> None:
    func = Script(sleep=100)
    with pytest.raises(APITimeoutError, match="total deadline"):
        await Policy(total_timeout=5, attempt_timeout=50).execute(func)
    assert func.calls == 1
    assert virtual_clock.elapsed == pytest.approx(5)

    async def attempt(ctx: AttemptContext) -> None:
        await asyncio.sleep(100)

    with pytest.raises(APITimeoutError, match="total deadline"):
        await Policy(total_timeout=5).run(attempt)


async def test_gives_up_when_backoff_would_outlast_total(virtual_clock: VirtualClock) -> None:
    seen: list[Event] = []
    func = Script(*(APIConnectionError(str(i)) for i in range(5)))
    policy = Policy(total_timeout=4, retry=fast_retry(max_retries=5), listeners=(seen.append,))
    with pytest.raises(APIConnectionError, match="2"):
        await policy.execute(func)
    # attempts at t=0 and t=1; the next backoff (2 s, to t=3) fits, then 4 s would not
    assert func.calls == 3
    assert virtual_clock.elapsed == pytest.approx(3)
    assert seen[-1].kind == RETRY_GAVE_UP
    assert "deadline" in seen[-1].data["reason"]


async def test_wrap_keeps_name_and_honours_total_timeout(virtual_clock: VirtualClock) -> None:
    policy = Policy(total_timeout=1)

    @policy.wrap
    async def nap(seconds: float) -> float:
        """Sleep."""
        await asyncio.sleep(seconds)
        return seconds

    assert nap.__name__ == "nap"
    assert await nap(0.5) == 0.5
    with pytest.raises(APITimeoutError):
        await nap(5)


async def test_adaptive_concurrency_shrinks_on_overload(virtual_clock: VirtualClock) -> None:
    conc = AdaptiveConcurrency(8, min_limit=1, max_limit=16)
    policy = Policy(concurrency=conc, retry=fast_retry(base_delay=0.1))
    await policy.execute(Script(RateLimitError("x", status_code=429)))
    assert conc.limit == 4
    assert conc.in_use == 0


async def test_budget_shared_by_all_calls_of_a_policy(virtual_clock: VirtualClock) -> None:
    seen: list[Event] = []
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0.0)
    policy = Policy(retry=fast_retry(base_delay=0, budget=budget), listeners=(seen.append,))
    attempts = 0

    async def down() -> None:
        nonlocal attempts
        attempts += 1
        raise ServerError("down", status_code=503)

    for _ in range(50):
        with pytest.raises(ServerError):
            await policy.execute(down)
    assert attempts <= 55
    assert RETRY_BUDGET_EXHAUSTED in {e.kind for e in seen}


async def test_policy_clock_defaults_to_retry_clock() -> None:
    from headway import ManualClock

    clock = ManualClock()
    policy = Policy(retry=fast_retry(clock=clock))
    assert policy.clock is clock
    await policy.execute(Script(APIConnectionError()))
    assert clock.sleeps == [1.0]


def test_repr() -> None:
    text = repr(
        Policy(concurrency=2, attempt_timeout=1.5, name="ep", limiter=TokenBucketRateLimiter(5))
    )
    assert text.startswith("Policy(retry=RetryPolicy")
    assert "concurrency=ConcurrencyLimit" in text
    assert "attempt_timeout=1.5" in text
    assert "name='ep'" in text


def test_properties_expose_configuration() -> None:
    limiter = TokenBucketRateLimiter(5)
    breaker = CircuitBreaker()
    retry = RetryPolicy(budget=None)
    seen: list[Event] = []
    policy = Policy(
        retry=retry,
        limiter=limiter,
        breaker=breaker,
        attempt_timeout=2,
        total_timeout=9,
        name="ep",
        listeners=(seen.append,),
    )
    assert policy.retry is retry
    assert policy.limiter is limiter
    assert policy.breaker is breaker
    assert (policy.attempt_timeout, policy.total_timeout) == (2, 9)
    assert policy.name == "ep"
    assert policy.listeners == (seen.append,)
    assert Policy(retry=None).retry is None


async def test_retry_without_budget(virtual_clock: VirtualClock) -> None:
    func = Script(APIConnectionError())
    assert await Policy(retry=fast_retry(budget=None)).execute(func) == "ok"
    assert func.calls == 2


@pytest.mark.parametrize("adaptive", [False, True])
async def test_open_keeps_the_successful_attempts_slot_in_a_lease(adaptive: bool) -> None:
    """``policy.open`` hands a successful attempt's slot to the caller in a lease; a
    failed attempt's slot is released as usual; ``lease.aclose`` is idempotent."""
    pool: ConcurrencyLimit = (
        AdaptiveConcurrency(2, min_limit=1) if adaptive else ConcurrencyLimit(2)
    )
    policy = Policy(
        retry=RetryPolicy(max_retries=2, base_delay=0.0, jitter=False), concurrency=pool
    )

    async def attempt(ctx: AttemptContext) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        assert pool.in_use == 1  # the failed attempt gave its slot back
        return ctx.attempt

    lease = await policy.open(attempt)
    assert lease.value == 2
    assert lease.attempt == 2
    assert pool.in_use == 1  # kept for the caller
    assert not lease.closed
    await lease.aclose(ValueError("how the use of the slot ended"))
    await lease.aclose()
    assert pool.in_use == 0
    assert lease.closed

    async def plain(ctx: AttemptContext) -> None:
        return None

    await policy.run(plain)  # run() keeps nothing
    assert pool.in_use == 0
    async with await policy.open(plain) as held:
        assert pool.in_use == 1
        assert held.value is None
    assert pool.in_use == 0


async def test_a_lease_carries_the_breaker_verdict_until_it_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    policy = Policy(retry=None, breaker=breaker, concurrency=1)

    async def stream(ctx: AttemptContext) -> str:
        return "open stream"

    lease = await policy.open(stream)
    assert breaker.failure_count == 0  # no verdict while the stream is open
    await lease.aclose(ConnectionError("broken mid-stream"))
    assert state(breaker) is CircuitState.OPEN  # judged at close, as a failure
    breaker.reset()

    for how in (None, asyncio.CancelledError(), GeneratorExit()):
        lease = await policy.open(stream)
        await lease.aclose(how)  # success, or given back unjudged
        assert state(breaker) is CircuitState.CLOSED
        assert policy.concurrency is not None
        assert policy.concurrency.in_use == 0
    assert "closed" in repr(lease)
    lease.settle(10)  # no limiter: nothing to settle


# -- execute()'s own first attempt, and what it leaves to the general pipeline ----------


def full_policy(**kw: Any) -> Policy:
    kw.setdefault("limiter", TokenBucketRateLimiter(rate=1e9, max_tokens=1e9))
    kw.setdefault("concurrency", ConcurrencyLimit(2))
    kw.setdefault("breaker", CircuitBreaker(failure_threshold=1))
    return Policy(**kw)


async def test_execute_hands_its_calls_to_the_budget_in_batches() -> None:
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0)
    policy = full_policy(retry=fast_retry(base_delay=0.0, budget=budget), breaker=CircuitBreaker())
    func = Script()
    for _ in range(BOOK_EVERY + 1):
        assert await policy.execute(func) == "ok"
    assert budget.requests == BOOK_EVERY  # the last one is handed over with the next batch
    flaky = Script(APIConnectionError())
    assert await policy.execute(flaky) == "ok"  # asks the budget: everything counted first
    assert flaky.calls == 2
    assert budget.requests == BOOK_EVERY + 2
    assert budget.retries == 1


async def test_execute_waits_for_the_limiter_holding_one_slot(
    virtual_clock: VirtualClock,
) -> None:
    pool = ConcurrencyLimit(1)
    policy = full_policy(limiter=TokenBucketRateLimiter(rate=10, max_tokens=1), concurrency=pool)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    seen: list[tuple[float, int]] = []

    async def call() -> None:
        seen.append((round(loop.time() - t0, 6), pool.in_use))

    for _ in range(3):
        await policy.execute(call)
    assert seen == [(0.0, 1), (0.1, 1), (0.2, 1)]
    assert pool.in_use == 0


async def test_execute_first_attempt_failure_goes_on_to_retries() -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    pool = ConcurrencyLimit(1)
    policy = full_policy(retry=fast_retry(base_delay=0.0), breaker=breaker, concurrency=pool)
    func = Script(ServerError("down", status_code=503))
    assert await policy.execute(func, 1, key="v") == "ok"
    assert func.args == [((1,), {"key": "v"})] * 2
    assert breaker.failure_count == 0  # the success after the failure reset the count
    assert pool.in_use == 0
    with pytest.raises(AuthenticationError):  # not retried: judged, slot given back
        await policy.execute(Script(AuthenticationError("no", status_code=401)))
    assert pool.in_use == 0


async def test_execute_cancelled_first_attempt_gives_back_and_is_not_retried() -> None:
    pool = ConcurrencyLimit(1)
    breaker = CircuitBreaker(failure_threshold=1)
    policy = full_policy(concurrency=pool, breaker=breaker)
    func = Script(sleep=3600.0)
    task = asyncio.create_task(policy.execute(func))
    while not func.calls:
        await asyncio.sleep(0)
    assert pool.in_use == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert func.calls == 1
    assert pool.in_use == 0
    assert state(breaker) is CircuitState.CLOSED  # cancellation is no verdict


async def test_execute_takes_the_general_way_when_a_step_is_mocked_or_busy() -> None:
    pool = ConcurrencyLimit(1)
    breaker = CircuitBreaker()
    policy = full_policy(concurrency=pool, breaker=breaker)
    with patch.object(pool, "try_acquire", return_value=False) as try_acquire:
        assert await policy.execute(Script()) == "ok"  # waits for the slot with acquire()
    assert try_acquire.call_count == 2  # execute() asked, then the pipeline
    assert pool.in_use == 0
    with patch.object(breaker, "try_enter", wraps=breaker.try_enter) as try_enter:
        assert await policy.execute(Script()) == "ok"
    try_enter.assert_called_once()  # a mocked breaker is asked, not bypassed
    assert pool.in_use == 0


async def test_execute_gives_the_slot_back_when_the_limiter_step_raises() -> None:
    pool = ConcurrencyLimit(1)
    limiter = TokenBucketRateLimiter(rate=10)
    policy = full_policy(concurrency=pool, limiter=limiter)
    with (
        patch.object(limiter, "try_take", side_effect=RuntimeError("mocked")),
        pytest.raises(RuntimeError, match="mocked"),
    ):
        await Policy(limiter=limiter, concurrency=pool).execute(Script())
    assert pool.in_use == 0
    assert await policy.execute(Script()) == "ok"
