from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headway import ManualClock
from headway.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    CircuitBreakerOpenError,
    ConfigurationError,
    ExecutorShutdownError,
    MaxWaitExceededError,
    RateLimitError,
    ServerError,
)
from headway.events import (
    BREAKER_CALL_RECORDED,
    BREAKER_REJECTED,
    BREAKER_STATE_CHANGED,
    BreakerCallRecorded,
    BreakerOpened,
    Event,
)
from headway.events import add_listener as add_global_listener
from headway.events import remove_listener as remove_global_listener
from headway.resilience.breaker import (
    BreakerPermit,
    CircuitBreaker,
    CircuitState,
    default_failure_predicate,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    pass


async def ok() -> str:
    return "ok"


async def boom() -> None:
    raise Boom("down")


def make(clock: ManualClock, **kwargs: Any) -> CircuitBreaker:
    kwargs.setdefault("failure_threshold", 3)
    kwargs.setdefault("recovery_time", 10.0)
    return CircuitBreaker(clock=clock, **kwargs)


async def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await breaker.execute(boom)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


# -- basics -----------------------------------------------------------------------------


def test_defaults() -> None:
    b = CircuitBreaker()
    assert b.failure_threshold == 5
    assert b.recovery_time == 30.0
    assert b.half_open_max_calls == 1
    assert b.success_threshold == 1
    assert b.state is CLOSED
    assert b.failure_count == 0
    assert b.retry_after == 0.0
    assert b.name is None
    assert "closed" in repr(b)


def test_state_values() -> None:
    assert [s.value for s in CircuitState] == ["closed", "open", "half_open"]
    assert CircuitState.OPEN == "open"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_threshold": 2.5},
        {"recovery_time": -1},
        {"half_open_max_calls": 0},
        {"success_threshold": 0},
        {"minimum_calls": 0},
        {"window": 0},
        {"failure_rate_threshold": 0},
        {"failure_rate_threshold": 1.5},
        {"slow_call_rate_threshold": 0},
        {"slow_call_duration": 0},
    ],
)
def test_invalid_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        CircuitBreaker(**kwargs)


async def test_execute_passes_arguments_and_results() -> None:
    b = CircuitBreaker()

    async def add(a: int, *, b: int) -> int:
        return a + b

    assert await b.execute(add, 1, b=2) == 3


# -- consecutive mode -------------------------------------------------------------------


async def test_consecutive_failures_trip(clock: ManualClock) -> None:
    b = make(clock)
    await fail_times(b, 2)
    assert b.state is CLOSED
    assert b.failure_count == 2
    await fail_times(b, 1)
    assert b.state is OPEN
    assert b.failure_count == 3


async def test_a_success_resets_the_count(clock: ManualClock) -> None:
    b = make(clock)
    await fail_times(b, 2)
    assert await b.execute(ok) == "ok"
    assert b.failure_count == 0
    await fail_times(b, 2)
    assert b.state is CLOSED


async def test_open_rejects_without_calling(clock: ManualClock) -> None:
    b = make(clock, name="api")
    await fail_times(b, 3)
    clock.advance(4)
    called = False

    async def spy() -> None:
        nonlocal called
        called = True

    with pytest.raises(CircuitBreakerOpenError) as info:
        await b.execute(spy)
    assert not called
    assert "Circuit breaker is open" in str(info.value)
    assert info.value.retry_after == pytest.approx(6)
    assert info.value.name == "api"
    assert b.retry_after == pytest.approx(6)


async def test_recovery_trial_success_closes(clock: ManualClock) -> None:
    b = make(clock)
    await fail_times(b, 3)
    clock.advance(10)
    assert b.state is HALF_OPEN
    assert b.retry_after == 0.0
    assert await b.execute(ok) == "ok"
    assert b.state is CLOSED
    assert b.failure_count == 0


async def test_recovery_trial_failure_reopens_for_a_full_recovery_time(
    clock: ManualClock,
) -> None:
    b = make(clock)
    await fail_times(b, 3)
    clock.advance(12)
    await fail_times(b, 1)
    assert b.state is OPEN
    assert b.retry_after == pytest.approx(10)


async def test_half_open_allows_only_max_calls_trials(clock: ManualClock) -> None:
    b = make(clock, half_open_max_calls=2)
    await fail_times(b, 3)
    clock.advance(10)
    p1, p2 = b.acquire(), b.acquire()
    assert p1.trial
    assert p2.trial
    with pytest.raises(CircuitBreakerOpenError, match="trial") as info:
        b.acquire()
    assert info.value.retry_after == 0.0
    p1.record_success()
    assert b.state is CLOSED  # success_threshold=1
    p2.record_failure(Boom())  # from the closed generation's past: ignored
    assert b.state is CLOSED
    assert b.failure_count == 0


async def test_success_threshold_needs_several_trials(clock: ManualClock) -> None:
    b = make(clock, success_threshold=3)
    await fail_times(b, 3)
    clock.advance(10)
    for _ in range(2):
        assert await b.execute(ok) == "ok"
        assert b.state is HALF_OPEN
    assert await b.execute(ok) == "ok"
    assert b.state is CLOSED


async def test_excluded_trial_frees_its_permit(clock: ManualClock) -> None:
    b = make(clock, excluded_exceptions=[KeyError])

    async def excluded() -> None:
        raise KeyError("not judged")

    await fail_times(b, 3)
    clock.advance(10)
    with pytest.raises(KeyError):
        await b.execute(excluded)
    assert b.state is HALF_OPEN
    assert b.acquire().trial  # the permit came back


async def test_cancelled_trial_frees_its_permit(clock: ManualClock) -> None:
    b = make(clock)
    await fail_times(b, 3)
    clock.advance(10)
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(b.execute(hang))
    await started.wait()
    with pytest.raises(CircuitBreakerOpenError):
        b.acquire()  # the only trial is in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state is HALF_OPEN
    assert await b.execute(ok) == "ok"
    assert b.state is CLOSED


async def test_excluded_errors_are_neutral_while_closed(clock: ManualClock) -> None:
    b = make(clock, excluded_exceptions=(KeyError,))
    await fail_times(b, 2)

    async def excluded() -> None:
        raise KeyError

    for _ in range(5):
        with pytest.raises(KeyError):
            await b.execute(excluded)
    assert b.failure_count == 2  # neither reset nor increased


# -- what counts as failure -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (BadRequestError("bad", status_code=400), False),
        (RateLimitError("slow down", status_code=429), False),
        (ServerError("oops", status_code=500), True),
        (ServerError("no status"), True),
        (APIConnectionError("refused"), True),
        (APITimeoutError(), True),
        (ConnectionResetError(), True),
        (ValueError(), True),
    ],
)
def test_default_failure_predicate(exc: Exception, failure: bool) -> None:
    assert default_failure_predicate(exc) is failure


async def test_client_errors_count_as_successes(clock: ManualClock) -> None:
    b = make(clock)
    await fail_times(b, 2)

    async def throttled() -> None:
        raise RateLimitError("slow down", status_code=429)

    for _ in range(5):
        with pytest.raises(RateLimitError):
            await b.execute(throttled)
    assert b.state is CLOSED
    assert b.failure_count == 0


async def test_local_headway_errors_are_neutral(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=1)
    for exc in (
        MaxWaitExceededError("would wait"),
        ExecutorShutdownError("closed"),
        CircuitBreakerOpenError(),
        asyncio.CancelledError(),
    ):
        b.acquire().record_failure(exc)
    assert b.state is CLOSED


async def test_custom_failure_predicate(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=1, failure_predicate=lambda e: "fatal" in str(e))
    b.acquire().record_failure(ValueError("meh"))
    assert b.state is CLOSED
    b.acquire().record_failure(ValueError("fatal"))
    assert b.state is OPEN


# -- permits ----------------------------------------------------------------------------


def test_permit_reports_once(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=2)
    p = b.acquire()
    p.record_failure(Boom())
    p.record_failure(Boom())
    p.release()
    p.record_success()
    assert p.done
    assert b.failure_count == 1
    assert "done=True" in repr(p)


def test_permit_plain_failure_and_explicit_release(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=1)
    b.acquire().release()
    assert b.state is CLOSED
    b.acquire().record_failure()
    assert b.state is OPEN


def test_permit_as_context_manager(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=2)
    with b.acquire() as permit:
        assert isinstance(permit, BreakerPermit)
    with pytest.raises(Boom), b.acquire():
        raise Boom
    assert b.failure_count == 1
    with b.acquire():
        pass
    assert b.failure_count == 0


def test_outcomes_of_calls_from_before_a_transition_are_ignored(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=1)
    early = b.acquire()
    b.acquire().record_failure(Boom())
    assert b.state is OPEN
    early.record_success()  # granted while closed: must not close an open breaker
    assert b.state is OPEN
    clock.advance(10)
    trial = b.acquire()
    early2 = early  # already done
    early2.record_failure(Boom())
    trial.record_success()
    assert b.state is CLOSED


# -- async with -------------------------------------------------------------------------


async def test_async_with_guards_a_block(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=2)
    async with b as permit:
        assert isinstance(permit, BreakerPermit)
    for _ in range(2):
        with pytest.raises(Boom):
            async with b:
                raise Boom
    assert b.state is OPEN
    with pytest.raises(CircuitBreakerOpenError):
        async with b:
            pytest.fail("must not run")


async def test_async_with_nests_and_runs_concurrently(clock: ManualClock) -> None:
    outer = make(clock, failure_threshold=1)
    inner = make(clock, failure_threshold=1)

    async def nested() -> None:
        async with outer:
            async with inner:
                pass
            raise Boom

    with pytest.raises(Boom):
        await nested()
    assert inner.state is CLOSED
    assert outer.state is OPEN

    shared = make(clock, failure_threshold=3)

    async def guarded(fail: bool) -> None:
        async with shared:
            await asyncio.sleep(0)
            if fail:
                raise Boom

    results = await asyncio.gather(guarded(True), guarded(False), return_exceptions=True)
    assert isinstance(results[0], Boom)
    assert results[1] is None


async def test_async_with_exit_without_enter_is_an_error() -> None:
    b = CircuitBreaker()
    with pytest.raises(RuntimeError):
        await b.__aexit__(None, None, None)


# -- manual control ---------------------------------------------------------------------


async def test_force_open_until_reset(clock: ManualClock) -> None:
    b = make(clock)
    b.force_open()
    clock.advance(10_000)
    assert b.state is OPEN
    with pytest.raises(CircuitBreakerOpenError) as info:
        await b.execute(ok)
    assert info.value.retry_after == b.recovery_time
    assert b.retry_after == b.recovery_time
    b.reset()
    assert b.state is CLOSED
    assert await b.execute(ok) == "ok"


async def test_force_open_for_a_while(clock: ManualClock) -> None:
    b = make(clock)
    b.force_open(5)
    with pytest.raises(CircuitBreakerOpenError) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(5)
    clock.advance(5)
    assert b.state is HALF_OPEN


async def test_reset_forgets_counts(clock: ManualClock) -> None:
    b = make(clock)
    await fail_times(b, 2)
    b.reset()
    assert b.failure_count == 0
    await fail_times(b, 2)
    assert b.state is CLOSED


# -- events -----------------------------------------------------------------------------


async def test_listeners_see_every_transition(clock: ManualClock) -> None:
    events: list[Event] = []
    b = make(clock, name="svc", listeners=[events.append])
    await fail_times(b, 3)
    clock.advance(10)
    await b.execute(ok)
    changes = [(e.data["old"], e.data["new"]) for e in events if e.kind == BREAKER_STATE_CHANGED]
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert all(e.source == "svc" for e in events)
    changed = [e for e in events if e.kind == BREAKER_STATE_CHANGED]
    assert "3 consecutive failures" in changed[0].data["reason"]
    assert isinstance(changed[0], BreakerOpened)
    assert (changed[0].old, changed[0].new) == ("closed", "open")
    calls = [e for e in events if isinstance(e, BreakerCallRecorded)]
    assert [c.failure for c in calls] == [True, True, True, False]  # per call, as they end


async def test_add_and_remove_listener(clock: ManualClock) -> None:
    events: list[Event] = []
    b = make(clock, failure_threshold=1)
    b.add_listener(events.append)
    assert b.listeners == (events.append,)
    await fail_times(b, 1)
    with pytest.raises(CircuitBreakerOpenError):
        b.acquire()
    events[:] = [e for e in events if e.kind != BREAKER_CALL_RECORDED]
    assert [e.kind for e in events] == [BREAKER_STATE_CHANGED, BREAKER_REJECTED]
    assert events[1].data["retry_after"] == pytest.approx(10)
    b.remove_listener(events.append)
    b.reset()
    assert len(events) == 2


async def test_global_listeners_see_transitions(clock: ManualClock) -> None:
    events: list[Event] = []
    add_global_listener(events.append)
    try:
        b = make(clock, failure_threshold=1)
        await fail_times(b, 1)
    finally:
        remove_global_listener(events.append)
    assert [e.kind for e in events] == [BREAKER_STATE_CHANGED, BREAKER_CALL_RECORDED]


async def test_a_failing_listener_does_not_break_calls(clock: ManualClock) -> None:
    def bad(_event: Event) -> None:
        raise RuntimeError("listener bug")

    b = make(clock, failure_threshold=1, listeners=[bad])
    await fail_times(b, 1)
    assert b.state is OPEN


# -- failure-ratio mode -----------------------------------------------------------------


async def test_ratio_mode_needs_minimum_calls(clock: ManualClock) -> None:
    b = make(clock, failure_rate_threshold=0.5, minimum_calls=10, failure_threshold=1)
    await fail_times(b, 9)  # 100% failures, but only 9 calls; consecutive mode is off
    assert b.state is CLOSED
    await fail_times(b, 1)
    assert b.state is OPEN


async def test_ratio_mode_trips_at_the_threshold(clock: ManualClock) -> None:
    events: list[Event] = []
    b = make(clock, failure_rate_threshold=0.5, minimum_calls=10, listeners=[events.append])
    for i in range(10):
        if i % 3 == 0:
            await fail_times(b, 1)  # 4 failures of 10: 40%
        else:
            await b.execute(ok)
        clock.advance(1)
    assert b.state is CLOSED
    await fail_times(b, 1)  # 5 of 11
    assert b.state is CLOSED
    await fail_times(b, 1)  # 6 of 12 = 50%
    assert b.state is OPEN
    changed = [e for e in events if e.kind == BREAKER_STATE_CHANGED]
    assert changed[0].data["reason"] == "failure rate 6/12 in 60s"


async def test_ratio_mode_forgets_calls_older_than_the_window(clock: ManualClock) -> None:
    b = make(clock, failure_rate_threshold=0.5, minimum_calls=4, window=60)
    await fail_times(b, 3)
    clock.advance(70)  # those failures are now outside the window
    for _ in range(3):
        await b.execute(ok)
    await fail_times(b, 1)  # 1 of 4 in the window
    assert b.state is CLOSED
    await fail_times(b, 1)  # 2 of 5
    assert b.state is CLOSED


async def test_ratio_window_is_cleared_when_closing(clock: ManualClock) -> None:
    b = make(clock, failure_rate_threshold=0.5, minimum_calls=2)
    await fail_times(b, 2)
    assert b.state is OPEN
    clock.advance(10)
    await b.execute(ok)
    assert b.state is CLOSED
    await fail_times(b, 1)  # old failures are gone: 1 of 1 < minimum_calls
    assert b.state is CLOSED


def test_a_windowed_breaker_judges_tickets_without_permits(clock: ManualClock) -> None:
    b = make(clock, failure_rate_threshold=0.5, minimum_calls=4)
    tickets = [b.try_enter() for _ in range(4)]
    assert all(type(t) is int for t in tickets)  # closed: no permit objects
    b.record(tickets[0], Boom("down"))
    b.record(tickets[1], Boom("down"))
    b.record(tickets[2], asyncio.CancelledError())  # no verdict: not counted
    b.record(tickets[2])
    assert b.state is CLOSED  # 3 calls judged, fewer than minimum_calls
    b.record(tickets[3])  # 2 failures of 4: the success completes the count, and it trips
    assert b.state is OPEN
    b.reset()
    b.record(tickets[0], Boom("down"))  # a ticket of the old circuit no longer counts
    b.record(b.try_enter(), Boom("down"))
    assert b.state is CLOSED  # 1 failure of 1: below minimum_calls


# -- slow calls -------------------------------------------------------------------------


async def test_slow_call_rate_trips(clock: ManualClock) -> None:
    b = make(clock, slow_call_duration=2.0, slow_call_rate_threshold=0.5, minimum_calls=4)

    async def slow() -> str:
        clock.advance(3)
        return "late"

    await b.execute(ok)
    await b.execute(ok)
    await b.execute(slow)
    assert b.state is CLOSED
    await b.execute(slow)  # 2 slow of 4
    assert b.state is OPEN


async def test_slow_mode_keeps_consecutive_failures(clock: ManualClock) -> None:
    b = make(clock, slow_call_duration=2.0)
    await fail_times(b, 3)
    assert b.state is OPEN


async def test_slow_trial_reopens(clock: ManualClock) -> None:
    b = make(clock, slow_call_duration=1.0, failure_threshold=1)
    await fail_times(b, 1)
    clock.advance(10)
    b.acquire().record_success(duration=5.0)
    assert b.state is OPEN
    clock.advance(10)
    b.acquire().record_success(duration=0.5)
    assert b.state is CLOSED


async def test_explicit_durations_are_used(clock: ManualClock) -> None:
    b = make(clock, slow_call_duration=1.0, minimum_calls=2)
    b.acquire().record_success(duration=3)
    b.acquire().record_failure(BadRequestError("bad", status_code=400), duration=3)
    assert b.state is OPEN


# -- backend seam -----------------------------------------------------------------------


def test_backend_supplies_the_store_and_hears_every_transition(clock: ManualClock) -> None:
    made: list[tuple[str | None, int]] = []
    calls: list[str] = []

    class Store:
        """A store that agrees with whatever the breaker last published."""

        def __init__(self) -> None:
            self.until: float | None = None
            self.trials = 0

        def open_for(self) -> float | None:
            return None if self.until is None else self.until - clock.now()

        def publish_open(self, recovery_time: float) -> None:
            calls.append(f"open {recovery_time:g}")
            self.until = clock.now() + recovery_time

        def publish_closed(self) -> None:
            calls.append("closed")
            self.until = None

        def try_trial(self) -> bool:
            calls.append("try")
            self.trials += 1
            return self.trials == 1

        def release_trial(self) -> None:
            calls.append("release")
            self.trials -= 1

    class Backend:
        def breaker_store(self, name: str, *, half_open_max_calls: int = 1) -> Store:
            made.append((name, half_open_max_calls))
            return Store()

    a = CircuitBreaker(
        failure_threshold=1,
        recovery_time=10,
        half_open_max_calls=3,
        success_threshold=2,
        name="shared",
        clock=clock,
        backend=Backend(),
    )
    assert made == [("shared", 3)]
    a.acquire().record_failure(Boom())
    assert a.state is OPEN
    clock.advance(10)
    first = a.acquire()
    with pytest.raises(CircuitBreakerOpenError):
        a.acquire()  # one trial per breaker at a time
    first.record_success()  # one more success to go: the permit goes back
    a.acquire().record_success()
    assert a.state is CLOSED
    a.force_open()
    a.force_open(5)
    a.reset()
    assert calls == ["open 10", "try", "release", "try", "closed", "open 86400", "open 5", "closed"]


def test_backend_without_breaker_state_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="breaker_store"):
        CircuitBreaker(backend=object())


async def test_default_clock_is_the_loop_clock() -> None:
    b = CircuitBreaker(failure_threshold=1, recovery_time=5)
    await fail_times(b, 1)
    assert 0 < b.retry_after <= 5


def test_a_stale_trial_cannot_close_a_reopened_breaker(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=1, half_open_max_calls=2)
    b.acquire().record_failure(Boom())
    clock.advance(10)
    first, second = b.acquire(), b.acquire()
    first.record_failure(Boom())
    assert b.state is OPEN
    second.record_success()
    assert b.state is OPEN
    clock.advance(10)
    assert [b.acquire().trial, b.acquire().trial] == [True, True]  # both permits free


def test_a_stale_trial_cannot_reopen_a_closed_breaker(clock: ManualClock) -> None:
    b = make(clock, failure_threshold=1, half_open_max_calls=2)
    b.acquire().record_failure(Boom())
    clock.advance(10)
    first, second = b.acquire(), b.acquire()
    first.record_success()
    assert b.state is CLOSED
    second.record_failure(Boom())
    assert b.state is CLOSED
    assert b.failure_count == 0


async def test_ratio_mode_ignores_excluded_and_cancelled_calls(clock: ManualClock) -> None:
    b = make(clock, failure_rate_threshold=0.5, minimum_calls=2, excluded_exceptions=[KeyError])
    await fail_times(b, 1)
    b.acquire().record_failure(KeyError("neutral"))
    b.acquire().release()
    assert b.state is CLOSED  # still 1 call in the window: below minimum_calls
    await fail_times(b, 1)
    assert b.state is OPEN


def test_a_shared_breaker_needs_a_name() -> None:
    from headway.backends import MemoryBackend

    with pytest.raises(ConfigurationError, match="name"):
        CircuitBreaker(backend=MemoryBackend())
    assert CircuitBreaker(name="svc", backend=MemoryBackend()).state is CircuitState.CLOSED


# -- closed_ticket: the pipeline's fast path ------------------------------------------------


def test_closed_ticket_is_the_ticket_only_while_nothing_needs_recording() -> None:
    breaker = CircuitBreaker(failure_threshold=3)
    assert breaker.closed_ticket == breaker.try_enter()
    ticket = breaker.try_enter()
    breaker.record(ticket, ConnectionError("down"))
    assert breaker.closed_ticket is None  # a success now has a count to reset
    breaker.record(breaker.try_enter())
    assert breaker.closed_ticket == breaker.try_enter()
    listener = [].append
    breaker.add_listener(listener)
    assert breaker.closed_ticket is None  # per-call events go to this listener
    breaker.remove_listener(listener)
    assert breaker.closed_ticket is not None
    breaker.force_open()
    assert breaker.closed_ticket is None
    breaker.reset()
    assert breaker.closed_ticket == breaker.try_enter()
    for kwargs in ({"failure_rate_threshold": 0.5}, {"slow_call_duration": 1.0}):
        assert CircuitBreaker(**kwargs).closed_ticket is None  # type: ignore[arg-type]


async def test_a_policy_calls_breaker_methods_patched_after_it_was_built() -> None:
    from unittest.mock import patch

    from headway.resilience import Policy

    breaker = CircuitBreaker()
    policy = Policy(breaker=breaker, retry=None)
    assert await policy.execute(asyncio.sleep, 0, "ok") == "ok"
    with patch.object(breaker, "try_enter", side_effect=RuntimeError("mocked")):
        assert breaker.closed_ticket is None
        with pytest.raises(RuntimeError, match="mocked"):
            await policy.execute(asyncio.sleep, 0)
    assert breaker.closed_ticket is not None  # the patch is undone
    with patch.object(breaker, "record") as record:
        await policy.execute(asyncio.sleep, 0)
    record.assert_called_once()
    assert breaker.closed_ticket is not None


async def test_a_policy_records_a_success_after_failures_through_the_fast_path() -> None:
    from headway.resilience import Policy

    breaker = CircuitBreaker(failure_threshold=2)
    policy = Policy(breaker=breaker, retry=None)

    async def fail() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await policy.execute(fail)
    assert breaker.failure_count == 1
    await policy.execute(asyncio.sleep, 0)
    assert breaker.failure_count == 0  # the success reset the count
    with pytest.raises(ConnectionError):
        await policy.execute(fail)
    assert breaker.state == "closed"  # not two consecutive failures


async def test_global_listeners_hear_fast_path_successes() -> None:
    from headway.resilience import Policy

    seen: list[Any] = []
    breaker = CircuitBreaker()
    policy = Policy(breaker=breaker, retry=None)
    add_global_listener(seen.append)
    try:
        await policy.execute(asyncio.sleep, 0)
    finally:
        remove_global_listener(seen.append)
    assert any(getattr(e, "failure", None) is False for e in seen)
