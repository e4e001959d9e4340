"""Retry: schedule, what is retried, server delays, budget, events, decorator."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import pytest

from headway import (
    APIConnectionError,
    CircuitBreakerOpenError,
    ConfigurationError,
    Event,
    ManualClock,
    QuotaExceededError,
    RateLimitError,
    ServerError,
)
from headway.errors import AuthenticationError, BadRequestError, ResourceNotFoundError
from headway.events import RETRY_BUDGET_EXHAUSTED, RETRY_GAVE_UP, RETRY_SCHEDULED
from headway.resilience.retry import RetryBudget, RetryPolicy, retry, retry_with_backoff
from headway.testing import VirtualClock


class Flaky:
    """Fails with the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls.append((args, kwargs))
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def always(exc_factory: Callable[[], BaseException]) -> Callable[..., Any]:
    calls: list[int] = []

    async def func() -> None:
        calls.append(1)
        raise exc_factory()

    func.calls = calls  # type: ignore[attr-defined]
    return func


# -- retry_with_backoff ---------------------------------------------------------------------


async def test_default_schedule_is_one_then_two_seconds(virtual_clock: VirtualClock) -> None:
    func = Flaky(ConnectionError("a"), ConnectionError("b"))
    assert await retry_with_backoff(func, jitter=False) == "ok"
    assert len(func.calls) == 3
    assert virtual_clock.elapsed == pytest.approx(3.0)


async def test_gives_up_after_max_retries_with_last_error(virtual_clock: VirtualClock) -> None:
    errors = [ConnectionError(str(i)) for i in range(5)]
    func = Flaky(*errors)
    with pytest.raises(ConnectionError) as info:
        await retry_with_backoff(func, max_retries=3, jitter=False)
    assert info.value is errors[3]
    assert len(func.calls) == 4
    assert virtual_clock.elapsed == pytest.approx(1 + 2 + 4)


async def test_sleeps_go_through_patched_asyncio_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    func = Flaky(*(ConnectionError() for _ in range(4)))
    with pytest.raises(ConnectionError):
        await retry_with_backoff(func, base_delay=0.5, backoff_factor=3, max_delay=4, jitter=False)
    assert slept == [0.5, 1.5, 4.0]


async def test_unknown_kwargs_and_args_go_to_func(virtual_clock: VirtualClock) -> None:
    func = Flaky(ConnectionError())
    assert await retry_with_backoff(func, 1, "two", timeout=3, model="m", base_delay=0) == "ok"
    assert func.calls == [((1, "two"), {"timeout": 3, "model": "m"})] * 2


async def test_retry_exceptions_filter(virtual_clock: VirtualClock) -> None:
    func = Flaky(ValueError("no"))
    with pytest.raises(ValueError):
        await retry_with_backoff(func, retry_exceptions=(KeyError,))
    assert len(func.calls) == 1
    func = Flaky(KeyError("yes"))
    assert await retry_with_backoff(func, retry_exceptions=KeyError) == "ok"


async def test_exclude_exceptions(virtual_clock: VirtualClock) -> None:
    func = Flaky(KeyError("x"))
    with pytest.raises(KeyError):
        await retry_with_backoff(func, exclude_exceptions=(LookupError,))
    assert len(func.calls) == 1


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("bad key", status_code=401),
        ResourceNotFoundError("no model", status_code=404),
        BadRequestError("bad", status_code=400),
        QuotaExceededError("billing", status_code=429, retry_after=1.0),
        ServerError("nope", status_code=503, headers={"x-should-retry": "false"}),
        asyncio.CancelledError(),
    ],
)
async def test_never_retried_whatever_retry_exceptions(
    error: BaseException, virtual_clock: VirtualClock
) -> None:
    func = Flaky(error)
    with pytest.raises(type(error)):
        await retry_with_backoff(func, retry_exceptions=(BaseException,))
    assert len(func.calls) == 1
    assert virtual_clock.elapsed == 0


async def test_server_delay_is_honoured_exactly(virtual_clock: VirtualClock) -> None:
    func = Flaky(RateLimitError("slow", status_code=429, retry_after=7.5))
    assert await retry_with_backoff(func) == "ok"
    assert virtual_clock.elapsed == pytest.approx(7.5)


async def test_server_delay_above_cap_gives_up_at_once(virtual_clock: VirtualClock) -> None:
    seen: list[Event] = []
    func = Flaky(RateLimitError("slow", status_code=429, retry_after=121))
    with pytest.raises(RateLimitError):
        await retry_with_backoff(func)
    assert len(func.calls) == 1
    assert virtual_clock.elapsed == 0
    del seen


async def test_outside_cancellation_during_backoff_propagates(virtual_clock: VirtualClock) -> None:
    func = Flaky(*(ConnectionError() for _ in range(3)))
    task = asyncio.create_task(retry_with_backoff(func, jitter=False))
    await asyncio.sleep(0.5)  # first attempt failed, in its 1 s backoff
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(func.calls) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_retries": -1},
        {"base_delay": -1},
        {"backoff_factor": 0.5},
        {"jitter": "sometimes"},
        {"retry_exceptions": ("x",)},
    ],
)
async def test_invalid_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        await retry_with_backoff(Flaky(), **kwargs)


async def test_events_for_retry_with_backoff(
    virtual_clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="headway")
    func = Flaky(*(APIConnectionError("reset") for _ in range(3)))
    with pytest.raises(APIConnectionError):
        await retry_with_backoff(func, max_retries=2, jitter=False)
    kinds = [r.headway_event.kind for r in caplog.records]  # type: ignore[attr-defined]
    assert kinds == [RETRY_SCHEDULED, RETRY_SCHEDULED, RETRY_GAVE_UP]
    first = caplog.records[0].headway_event  # type: ignore[attr-defined]
    assert first.data["attempt"] == 1
    assert first.data["delay"] == 1.0
    assert "APIConnectionError" in first.data["reason"]


# -- RetryPolicy ------------------------------------------------------------------------------


async def test_policy_default_retries_transient_errors_only() -> None:
    clock = ManualClock()
    policy = RetryPolicy(jitter=False, clock=clock)
    assert await policy.call(Flaky(APIConnectionError(), ServerError("x", status_code=502))) == "ok"
    assert clock.sleeps == [1.0, 2.0]
    func = Flaky(ValueError("a bug"))
    with pytest.raises(ValueError):
        await policy.call(func)
    assert len(func.calls) == 1


async def test_policy_does_not_spin_on_open_breaker() -> None:
    policy = RetryPolicy(clock=ManualClock())
    func = Flaky(CircuitBreakerOpenError(retry_after=5))
    with pytest.raises(CircuitBreakerOpenError):
        await policy.call(func)
    assert len(func.calls) == 1


async def test_policy_retry_on_types_predicate_and_exclude() -> None:
    clock = ManualClock()
    by_type = RetryPolicy(retry_on=(KeyError, ValueError), base_delay=0, clock=clock)
    assert await by_type.call(Flaky(KeyError(), ValueError())) == "ok"
    by_pred = RetryPolicy(retry_on=lambda e: "again" in str(e), base_delay=0, clock=clock)
    assert await by_pred.call(Flaky(RuntimeError("again"))) == "ok"
    with pytest.raises(RuntimeError):
        await by_pred.call(Flaky(RuntimeError("stop")))
    excl = RetryPolicy(retry_on=Exception, exclude=KeyError, clock=clock)
    assert excl.should_retry(ValueError())
    assert not excl.should_retry(KeyError())
    assert not excl.should_retry(asyncio.CancelledError())


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_delay"):
        RetryPolicy(base_delay=10, max_delay=1)
    with pytest.raises(ValueError):
        RetryPolicy(retry_on=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetryPolicy(exclude=("nope",))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetryPolicy(jitter="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(nonsense=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        RetryPolicy().delay(0)


def test_policy_schedule_and_jitter_mode() -> None:
    assert list(RetryPolicy(max_retries=5, jitter=False, max_delay=5).delays()) == [
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    assert RetryPolicy().jitter_mode == "full"
    assert RetryPolicy(jitter=False).jitter_mode == "none"
    assert RetryPolicy(jitter="equal").jitter_mode == "equal"
    assert RetryPolicy(max_retries=1000, jitter=False, max_delay=9).delay(1000) == 9.0


async def test_policy_server_delay_and_cap() -> None:
    clock = ManualClock()
    policy = RetryPolicy(max_server_delay=10, clock=clock)
    assert await policy.call(Flaky(RateLimitError("x", retry_after=3))) == "ok"
    assert clock.sleeps == [3.0]
    func = Flaky(RateLimitError("x", retry_after=11))
    with pytest.raises(RateLimitError):
        await policy.call(func)
    assert len(func.calls) == 1
    # retry_after=None: the schedule applies
    policy2 = RetryPolicy(jitter=False, clock=clock)
    await policy2.call(Flaky(RateLimitError("x")))
    assert clock.sleeps[-1] == 1.0


async def test_policy_events_reach_policy_listeners() -> None:
    seen: list[Event] = []
    policy = RetryPolicy(
        max_retries=1, jitter=False, clock=ManualClock(), name="p", listeners=(seen.append,)
    )
    with pytest.raises(APIConnectionError):
        await policy.call(Flaky(APIConnectionError("1"), APIConnectionError("2")))
    assert [e.kind for e in seen] == [RETRY_SCHEDULED, RETRY_GAVE_UP]
    assert seen[0].source == "p"
    assert seen[0].data == {
        "attempt": 1,
        "delay": 1.0,
        "reason": "APIConnectionError: Connection error: 1",
    }
    assert seen[1].data["attempts"] == 2
    assert "retries exhausted" in seen[1].data["reason"]


async def test_gave_up_on_non_retryable_after_retrying_is_reported() -> None:
    seen: list[Event] = []
    policy = RetryPolicy(clock=ManualClock(), base_delay=0, listeners=(seen.append,))
    with pytest.raises(AuthenticationError):
        await policy.call(Flaky(APIConnectionError(), AuthenticationError("k", status_code=401)))
    assert [e.kind for e in seen] == [RETRY_SCHEDULED, RETRY_GAVE_UP]
    assert "not retryable" in seen[1].data["reason"]


async def test_long_reason_is_truncated() -> None:
    seen: list[Event] = []
    policy = RetryPolicy(clock=ManualClock(), base_delay=0, listeners=(seen.append,))
    await policy.call(Flaky(ConnectionError("x" * 1000)))
    assert len(seen[0].data["reason"]) < 300


# -- budget ---------------------------------------------------------------------------------


async def test_budget_stops_retry_storm() -> None:
    clock = ManualClock()
    seen: list[Event] = []
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0.0, window=10.0, clock=clock)
    policy = RetryPolicy(base_delay=0, budget=budget, clock=clock, listeners=(seen.append,))
    failing = always(lambda: APIConnectionError("down"))
    for _ in range(100):
        with pytest.raises(APIConnectionError):
            await policy.call(failing)
    calls = len(failing.calls)  # type: ignore[attr-defined]
    assert 100 <= calls <= 110  # at most 10 % extra load
    assert budget.retries <= 0.1 * budget.requests
    assert RETRY_BUDGET_EXHAUSTED in {e.kind for e in seen}


def test_budget_window_expires_old_counts() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=10.0, clock=clock)
    budget.record_request()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(5)
    assert budget.requests == 1  # reads the clock: later deposits book at t=5
    budget.record_request()
    assert budget.requests == 2
    assert budget.retries == 1
    assert budget.available == 1
    clock.advance(5.5)  # the first second's bucket has left the window
    assert budget.requests == 1
    assert budget.retries == 0
    clock.advance(100)
    assert budget.requests == 0
    assert budget.available == 0
    assert "RetryBudget(" in repr(budget)


def test_budget_books_deposits_no_later_than_they_happened() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=10.0, clock=clock)
    assert budget.requests == 0  # clock read at t=0
    clock.advance(9)
    budget.record_request()  # booked in t=0's slice (no clock read on the success path)
    clock.advance(1.5)
    assert budget.requests == 0
    assert not budget.try_withdraw()
    for _ in range(RetryBudget.BATCH):  # a full batch reads the clock
        budget.record_request()
    clock.advance(9)
    assert budget.requests == RetryBudget.BATCH


def test_budget_floor_per_second() -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.5, window=4.0, clock=ManualClock())
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(
    "kwargs", [{"ratio": -1}, {"min_retries_per_second": -1}, {"window": 0}, {"buckets": 0}]
)
def test_budget_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryBudget(**kwargs)


def test_budget_is_on_by_default_and_shared_per_policy() -> None:
    a, b = RetryPolicy(), RetryPolicy()
    assert isinstance(a.budget, RetryBudget)
    assert a.budget is not b.budget
    assert RetryPolicy(budget=None).budget is None


# -- decorator --------------------------------------------------------------------------------


async def test_bare_decorator_keeps_name_and_retries(virtual_clock: VirtualClock) -> None:
    attempts: list[int] = []

    @retry
    async def fetch(n: int, *, scale: int = 1) -> int:
        """Doc."""
        attempts.append(n)
        if len(attempts) < 2:
            raise APIConnectionError("reset")
        return n * scale

    assert await fetch(2, scale=3) == 6
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Doc."
    assert isinstance(fetch.retry_policy, RetryPolicy)  # type: ignore[attr-defined]
    assert attempts == [2, 2]


async def test_decorator_with_options_and_with_policy() -> None:
    clock = ManualClock()

    @retry(max_retries=1, jitter=False, base_delay=0.25, retry_on=KeyError, clock=clock)
    async def f() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        await f()
    assert clock.sleeps == [0.25]

    policy = RetryPolicy(max_retries=2, base_delay=0, retry_on=KeyError, clock=clock)
    flaky = Flaky(KeyError(), KeyError())
    g = retry(policy=policy)(flaky)
    assert await g() == "ok"
    assert g.retry_policy is policy  # type: ignore[attr-defined]

    no_budget = retry(budget=None)(Flaky())
    assert no_budget.retry_policy.budget is None  # type: ignore[attr-defined]


async def test_decorated_method_works() -> None:
    class Client:
        def __init__(self) -> None:
            self.n = 0

        @retry(base_delay=0, retry_on=ValueError)
        async def get(self, x: int) -> int:
            self.n += 1
            if self.n == 1:
                raise ValueError
            return x

    c = Client()
    assert await c.get(5) == 5
    assert c.n == 2


def test_partial_is_accepted() -> None:
    async def add(a: int, b: int) -> int:
        return a + b

    wrapped = retry(functools.partial(add, 1))
    assert asyncio.run(wrapped(2)) == 3


async def test_copied_policy_uses_its_own_settings() -> None:
    clock = ManualClock()
    base = RetryPolicy(max_retries=3, base_delay=0, clock=clock)
    once = base.model_copy(update={"max_retries": 1})
    func = Flaky(APIConnectionError(), APIConnectionError())
    with pytest.raises(APIConnectionError):
        await once.call(func)
    assert len(func.calls) == 2
    assert await base.call(Flaky(APIConnectionError(), APIConnectionError())) == "ok"
    assert base == RetryPolicy(max_retries=3, base_delay=0, clock=clock, budget=base.budget)
