"""The breaker's state machine against a reference model, and cancellation at random points."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)

from headway import ManualClock
from headway.errors import CircuitBreakerOpenError, RateLimitError
from headway.resilience.breaker import BreakerPermit, CircuitBreaker, CircuitState
from headway.testing import VirtualClock

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

OUTCOMES = ["success", "failure", "client_error", "excluded", "cancelled", "released"]
# Failures and successes drive the state machine; weight them up.
WEIGHTED = st.sampled_from([*OUTCOMES, "success", "failure", "failure"])


class Boom(Exception):
    pass


class BreakerMachine(RuleBasedStateMachine):
    """Drive a real breaker and a tiny reference model side by side."""

    permits = Bundle("permits")

    @initialize(
        threshold=st.integers(1, 3),
        recovery=st.sampled_from([1.0, 2.0]),
        max_trials=st.integers(1, 3),
        successes=st.integers(1, 2),
    )
    def setup(self, threshold: int, recovery: float, max_trials: int, successes: int) -> None:
        self.clock = ManualClock()
        self.breaker = CircuitBreaker(
            threshold,
            recovery,
            half_open_max_calls=max_trials,
            success_threshold=successes,
            excluded_exceptions=(KeyError,),
            clock=self.clock,
        )
        self.threshold, self.recovery = threshold, recovery
        self.max_trials, self.successes = max_trials, successes
        # the model
        self.state = CLOSED
        self.gen = 0
        self.failures = 0
        self.open_until = 0.0
        self.forced = False
        self.trials = 0
        self.trial_ok = 0
        self.meta: dict[int, tuple[int, bool]] = {}

    # -- model --------------------------------------------------------------------------
    def to(self, new: CircuitState, *, forced: bool = False) -> None:
        self.state = new
        self.gen += 1
        self.trials = self.trial_ok = 0
        self.forced = forced
        if new is OPEN:
            self.open_until = self.clock.now() + self.recovery
        if new is CLOSED:
            self.failures = 0

    def refresh(self) -> None:
        if self.state is OPEN and not self.forced and self.clock.now() >= self.open_until:
            self.to(HALF_OPEN)

    def model_acquire(self) -> bool | None:
        """None: rejected; else whether the permit is a trial."""
        self.refresh()
        if self.state is CLOSED:
            return False
        if self.state is OPEN or self.trials >= self.max_trials:
            return None
        self.trials += 1
        return True

    def model_finish(self, gen: int, trial: bool, outcome: str) -> None:
        if gen != self.gen:
            return
        verdict = {
            "success": "ok",
            "client_error": "ok",
            "failure": "fail",
        }.get(outcome, "ignored")
        if trial:
            self.trials -= 1
            if verdict == "fail":
                self.to(OPEN)
            elif verdict == "ok":
                self.trial_ok += 1
                if self.trial_ok >= self.successes:
                    self.to(CLOSED)
        elif verdict == "fail":
            self.failures += 1
            if self.failures >= self.threshold:
                self.to(OPEN)
        elif verdict == "ok":
            self.failures = 0

    # -- rules --------------------------------------------------------------------------
    @rule(target=permits)
    def acquire(self) -> Any:
        expected = self.model_acquire()
        try:
            permit = self.breaker.acquire()
        except CircuitBreakerOpenError as exc:
            rejection = exc
        else:
            assert expected is not None, "the breaker let a call through the model rejects"
            assert permit.trial is expected
            self.meta[id(permit)] = (self.gen, expected)
            return permit
        assert expected is None, "the breaker rejected a call the model lets through"
        assert rejection.retry_after >= 0
        assert "Circuit breaker is open" in str(rejection)
        if self.state is OPEN and not self.forced:
            assert rejection.retry_after == pytest.approx(self.open_until - self.clock.now())
        return multiple()

    @rule(permit=consumes(permits), outcome=WEIGHTED)
    def finish(self, permit: BreakerPermit, outcome: str) -> None:
        gen, trial = self.meta.pop(id(permit))
        self.model_finish(gen, trial, outcome)
        if outcome == "success":
            permit.record_success()
        elif outcome == "failure":
            permit.record_failure(Boom())
        elif outcome == "client_error":
            permit.record_failure(RateLimitError("slow down", status_code=429))
        elif outcome == "excluded":
            permit.record_failure(KeyError("x"))
        elif outcome == "cancelled":
            permit.record_failure(asyncio.CancelledError())
        else:
            permit.release()

    @rule(target=permits)
    def acquire_several(self) -> Any:
        got: list[BreakerPermit] = []
        while len(got) < 3:
            permit = self.acquire()
            if not isinstance(permit, BreakerPermit):
                break
            got.append(permit)
        return multiple(*got)

    @rule(outcome=WEIGHTED)
    def call(self, outcome: str) -> None:
        permit = self.acquire()
        if isinstance(permit, BreakerPermit):
            self.finish(permit, outcome)

    @rule()
    def trip(self) -> None:
        for _ in range(self.threshold):
            self.call("failure")

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["force_open", "force_open_for", "reset"]))
    def manual(self, action: str) -> None:
        if action == "force_open":
            self.to(OPEN, forced=True)
            self.breaker.force_open()
        elif action == "force_open_for":
            self.to(OPEN)
            self.breaker.force_open(self.recovery)
        else:
            self.to(CLOSED)
            self.breaker.reset()

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def same_state(self) -> None:
        self.refresh()
        assert self.breaker.state is self.state
        assert self.breaker.failure_count == self.failures
        if self.state is CLOSED:
            assert self.failures < self.threshold
            assert self.breaker.retry_after == 0.0
        elif self.state is OPEN:
            assert 0 < self.breaker.retry_after <= self.recovery
        else:
            assert 0 <= self.trials <= self.max_trials


TestBreakerStateMachine = BreakerMachine.TestCase
TestBreakerStateMachine.settings = settings(max_examples=150, stateful_step_count=40)


@given(
    max_trials=st.integers(1, 3),
    calls=st.lists(
        st.tuples(
            st.floats(0, 3),  # start
            st.floats(0, 3),  # duration
            st.sampled_from(["success", "failure", "excluded"]),
            st.none() | st.floats(0, 6),  # cancel at
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_cancellation_at_random_points_frees_trial_permits(
    max_trials: int, calls: list[tuple[float, float, str, float | None]]
) -> None:
    async def main() -> None:
        breaker = CircuitBreaker(1, 10.0, half_open_max_calls=max_trials, success_threshold=99)
        breaker.acquire().record_failure(Boom())
        await asyncio.sleep(10)
        assert breaker.state is HALF_OPEN

        async def attempt(start: float, duration: float, outcome: str) -> None:
            await asyncio.sleep(start)

            async def work() -> None:
                await asyncio.sleep(duration)
                if outcome == "failure":
                    raise Boom
                if outcome == "excluded":
                    raise KeyError

            breaker.excluded_exceptions = (KeyError,)
            await breaker.execute(work)

        tasks = [asyncio.create_task(attempt(s, d, o)) for s, d, o, _ in calls]
        for task, (*_, cancel_at) in zip(tasks, calls, strict=True):
            if cancel_at is not None:
                asyncio.get_running_loop().call_later(cancel_at, task.cancel)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(10)  # past any re-opening
        # Nothing leaked: a full set of trial permits is available again.
        state = breaker.state
        assert state is HALF_OPEN
        permits = [breaker.acquire() for _ in range(max_trials)]
        assert all(p.trial for p in permits)
        with pytest.raises(CircuitBreakerOpenError):
            breaker.acquire()

    async def wrapper() -> None:
        with VirtualClock():
            async with asyncio.timeout(1000):
                await main()

    asyncio.run(wrapper())


@settings(max_examples=200)
@given(
    rate=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    minimum=st.integers(1, 6),
    calls=st.lists(
        st.tuples(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0, 7.0]), st.booleans()),
        max_size=80,
    ),
)
def test_ratio_mode_trips_exactly_when_the_window_says_so(
    rate: float, minimum: int, calls: list[tuple[float, bool]]
) -> None:
    """The window is kept in buckets, so it reaches back between ``window`` and
    ``window + window / 20`` seconds: whatever it counted lies between those two exact
    windows, and the verdict must agree with both bounds."""
    span = 10.0
    width = span / 20
    clock = ManualClock()
    breaker = CircuitBreaker(
        failure_rate_threshold=rate, minimum_calls=minimum, window=span, clock=clock
    )
    history: list[tuple[float, bool]] = []
    for dt, failed in calls:
        clock.advance(dt)
        permit = breaker.acquire()
        if failed:
            permit.record_failure(Boom())
        else:
            permit.record_success()
        now = clock.now()
        history.append((now, failed))
        inner = [f for t, f in history if t >= now - span + 1e-9]
        outer = [f for t, f in history if t > now - span - width - 1e-9]
        c_in, f_in = len(inner), sum(inner)
        c_out, f_out = len(outer), sum(outer)
        if breaker.state is OPEN:
            assert c_out >= minimum, "opened before minimum_calls were made"
            assert f_out >= rate * c_in, "opened below the failure rate"
            breaker.reset()
            history.clear()
        else:
            assert not (c_in >= minimum and f_in >= rate * c_out), "did not open"
