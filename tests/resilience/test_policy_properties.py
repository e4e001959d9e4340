"""Cancellation at random points leaves slots, reservations and breaker permits restored."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headway import APIConnectionError, ManualClock, RateLimitError, ServerError
from headway.concurrency import AdaptiveConcurrency, ConcurrencyLimit
from headway.limits import Reservation, TokenBucketRateLimiter
from headway.resilience import AttemptContext, CircuitBreaker, Policy
from headway.resilience.policy import BOOK_EVERY
from headway.resilience.retry import RetryBudget, RetryPolicy
from headway.testing import VirtualClock


class RecordingLimiter:
    """A Limiter that remembers every reservation it handed out."""

    def __init__(self, inner: TokenBucketRateLimiter) -> None:
        self.inner = inner
        self.reservations: list[Reservation] = []

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> Reservation:
        r = await self.inner.reserve(requests, tokens, max_wait=max_wait)
        self.reservations.append(r)
        return r

    def pause_until(self, when: float) -> None:
        self.inner.pause_until(when)

    def pause(self, seconds: float) -> None:
        self.inner.pause(seconds)

    def sync(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - unused
        self.inner.sync(*args, **kwargs)


errors = st.sampled_from(
    [
        None,
        None,
        APIConnectionError("reset"),
        ServerError("boom", status_code=503),
        RateLimitError("slow", status_code=429, retry_after=0.3),
    ]
)

calls = st.lists(
    st.tuples(
        st.floats(0.0, 2.0),  # start offset
        st.one_of(st.none(), st.floats(0.0, 6.0)),  # cancel after (None: never)
        st.lists(st.tuples(st.floats(0.0, 1.5), errors), min_size=1, max_size=4),  # attempts
    ),
    min_size=1,
    max_size=8,
)


@given(
    plan=calls,
    limit=st.integers(1, 3),
    adaptive=st.booleans(),
    attempt_timeout=st.one_of(st.none(), st.floats(0.2, 2.0)),
    total_timeout=st.one_of(st.none(), st.floats(0.5, 5.0)),
    rate_limits=st.sampled_from(["wait", "retry"]),
)
def test_cancellation_at_random_points_restores_everything(
    plan: list[tuple[float, float | None, list[tuple[float, BaseException | None]]]],
    limit: int,
    adaptive: bool,
    attempt_timeout: float | None,
    total_timeout: float | None,
    rate_limits: Literal["wait", "retry"],
) -> None:
    async def main() -> None:
        with VirtualClock():
            limiter = RecordingLimiter(TokenBucketRateLimiter(rate=4, max_tokens=2))
            conc: ConcurrencyLimit = (
                AdaptiveConcurrency(limit, max_limit=4) if adaptive else ConcurrencyLimit(limit)
            )
            breaker = CircuitBreaker(failure_threshold=2, recovery_time=0.5)
            policy = Policy(
                limiter=limiter,
                concurrency=conc,
                breaker=breaker,
                retry=RetryPolicy(max_retries=3, base_delay=0.1, max_delay=0.5),
                attempt_timeout=attempt_timeout,
                total_timeout=total_timeout,
                rate_limits=rate_limits,
            )
            started: list[Reservation] = []

            async def one(
                offset: float,
                cancel_after: float | None,
                attempts: list[tuple[float, BaseException | None]],
            ) -> None:
                script = list(attempts)

                async def attempt(ctx: AttemptContext) -> None:
                    assert ctx.reservation is not None
                    started.append(ctx.reservation)
                    if ctx.attempt <= len(script):
                        duration, error = script[ctx.attempt - 1]
                    elif rate_limits == "wait":
                        # rate 429s are waited out without end: the server recovers
                        duration, error = 0.0, None
                    else:
                        duration, error = script[-1]
                    await asyncio.sleep(duration)
                    if error is not None:
                        raise error

                await asyncio.sleep(offset)
                task = asyncio.create_task(policy.run(attempt))
                if cancel_after is not None:
                    asyncio.get_running_loop().call_later(cancel_after, task.cancel)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

            async with asyncio.timeout(3600):
                await asyncio.gather(*(one(*p) for p in plan))

            assert conc.in_use == 0
            assert conc.waiting == 0
            started_ids = {id(r) for r in started}
            for r in limiter.reservations:
                # each reservation was either used by a call or given back, never both
                assert (id(r) in started_ids) != r.cancelled, r
            # no half-open trial permit leaked: after recovery, a trial is allowed
            await asyncio.sleep(1.0)
            breaker.acquire().release()

    asyncio.run(main())


@given(
    st.integers(1, 3),
    st.lists(st.tuples(st.integers(0, 2), st.booleans()), max_size=120),
)
def test_policies_sharing_a_budget_count_every_call(
    n_policies: int, calls: list[tuple[int, bool]]
) -> None:
    """Every call reaches the shared budget: at most BOOK_EVERY - 1 per policy late, and
    all of a policy's calls before it asks the budget for anything (after a failure)."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0.0, clock=clock)
    policies = [
        Policy(retry=RetryPolicy(max_retries=1, base_delay=0, budget=budget, clock=clock))
        for _ in range(n_policies)
    ]
    late = BOOK_EVERY - 1

    async def ok() -> None:
        return None

    async def bad() -> None:
        raise ValueError("not retried")

    async def main() -> None:
        made = [0] * n_policies
        for index, fails in calls:
            policy = index % n_policies
            made[policy] += 1
            if fails:
                with pytest.raises(ValueError):
                    await policies[policy].execute(bad)
                # the failing policy handed over all it counted; the others may lag
                assert budget.requests >= sum(made) - late * (n_policies - 1)
            else:
                await policies[policy].execute(ok)
            assert sum(made) - late * n_policies <= budget.requests <= sum(made)
        for policy in policies:  # a failure each: everything is booked
            with pytest.raises(ValueError):
                await policy.execute(bad)
        assert budget.requests == sum(made) + n_policies
        assert budget.retries == 0

    asyncio.run(main())
