"""Hypothesis properties of the limiters: rate bound, FIFO, cancellation, settle."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from headway import ManualClock
from headway.limits import MultiLimiter, TokenBucketRateLimiter
from headway.testing import VirtualClock

EPS = 1e-6


@st.composite
def buckets(draw: st.DrawFn) -> tuple[float, float, float]:
    rate = draw(st.floats(0.5, 50.0))
    period = draw(st.sampled_from([0.5, 1.0, 60.0]))
    max_tokens = draw(st.floats(1.0, 20.0))
    return rate, period, max_tokens


def assert_rate_bound(
    admitted: list[tuple[float, float]], rate: float, period: float, max_tokens: float
) -> None:
    """No window [a, b] holds more than max_tokens + rate * (b - a) / period."""
    admitted = sorted(admitted)
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for end, n in admitted[i:]:
            total += n
            bound = max_tokens + rate * (end - start) / period
            assert total <= bound + EPS * max(1.0, bound), (start, end, total, bound)


# -- synchronous core --------------------------------------------------------------------
@given(
    spec=buckets(),
    arrivals=st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 1.0)), min_size=1, max_size=60),
    initial=st.floats(0.0, 1.0),
)
def test_reservations_never_exceed_the_rate_and_are_fifo(
    spec: tuple[float, float, float],
    arrivals: list[tuple[float, float]],
    initial: float,
) -> None:
    rate, period, max_tokens = spec
    clock = ManualClock()
    limiter = TokenBucketRateLimiter(
        rate, period, max_tokens, initial_tokens=initial * max_tokens, clock=clock
    )
    admitted: list[tuple[float, float]] = []
    for gap, fraction in arrivals:
        clock.advance(gap)
        n = fraction * max_tokens  # any weight up to the capacity
        wait = limiter.try_reserve(n)
        assert wait >= 0.0
        admitted.append((clock.now() + wait, n))
    times = [t for t, _ in admitted]
    assert all(a <= b + EPS for a, b in itertools.pairwise(times)), "served out of order"
    assert_rate_bound(admitted, rate, period, max_tokens)


@given(
    spec=buckets(),
    weights=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30),
)
def test_a_heavy_request_waits_no_longer_than_its_share(
    spec: tuple[float, float, float], weights: list[float]
) -> None:
    # Whatever came before, a request's wait is exactly the time to refill what is
    # reserved ahead of it plus itself: it is never pushed back by later callers.
    rate, period, max_tokens = spec
    clock = ManualClock()
    limiter = TokenBucketRateLimiter(rate, period, max_tokens, initial_tokens=0, clock=clock)
    ahead = 0.0
    for w in weights:
        n = w * max_tokens
        ahead += n
        assert limiter.try_reserve(n) * rate / period == _approx(ahead)


def _approx(x: float) -> object:
    return pytest.approx(x, rel=1e-9, abs=1e-9)


# -- tasks in virtual time: pauses and cancellation ----------------------------------------
@dataclass
class Caller:
    arrive: float
    weight: float
    cancel_after: float | None
    admitted_at: float | None = None
    cancelled: bool = False
    turn: int = -1  # the order in which it reserved


callers_st = st.lists(
    st.builds(
        Caller,
        arrive=st.floats(0.0, 3.0),
        weight=st.floats(0.0, 1.0),
        cancel_after=st.none() | st.floats(0.0, 3.0),
    ),
    min_size=1,
    max_size=25,
)
pauses_st = st.lists(st.tuples(st.floats(0.0, 4.0), st.floats(0.0, 2.0)), max_size=3)


async def _run(
    limiter: TokenBucketRateLimiter, callers: list[Caller], pauses: list[tuple[float, float]]
) -> tuple[float, list[tuple[float, float]]]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    max_tokens = limiter.max_tokens

    turns = iter(range(len(callers)))

    async def call(c: Caller) -> None:
        await asyncio.sleep(c.arrive)
        c.turn = next(turns)  # `async with` reserves before it can suspend
        async with limiter.slot(c.weight * max_tokens):
            c.admitted_at = loop.time() - t0

    paused: list[tuple[float, float]] = []

    async def pauser(at: float, seconds: float) -> None:
        await asyncio.sleep(at)
        limiter.pause(seconds)
        paused.append((loop.time() - t0, seconds))

    async with asyncio.timeout(10_000):
        tasks = [asyncio.create_task(call(c)) for c in callers]
        handles = [
            loop.call_at(t0 + c.arrive + c.cancel_after, task.cancel)
            for c, task in zip(callers, tasks, strict=True)
            if c.cancel_after is not None
        ]
        await asyncio.gather(*(pauser(at, s) for at, s in pauses))
        await asyncio.gather(*tasks, return_exceptions=True)
        for handle in handles:
            handle.cancel()
    for c, task in zip(callers, tasks, strict=True):
        c.cancelled = task.cancelled()
    return loop.time() - t0, paused


@given(spec=buckets(), callers=callers_st, pauses=pauses_st)
def test_tasks_with_pauses_and_cancellations_keep_the_guarantees(
    spec: tuple[float, float, float],
    callers: list[Caller],
    pauses: list[tuple[float, float]],
) -> None:
    rate, period, max_tokens = spec

    async def main() -> tuple[float, list[tuple[float, float]]]:
        with VirtualClock():
            limiter = TokenBucketRateLimiter(rate, period, max_tokens)
            return await _run(limiter, callers, pauses)

    _, paused = asyncio.run(main())
    admitted = [c for c in callers if c.admitted_at is not None]
    note(f"admitted={[(c.arrive, c.admitted_at) for c in admitted]} paused={paused}")
    assert all(c.cancelled or c.admitted_at is not None for c in callers)
    # Rate bound over what was really admitted.
    assert_rate_bound(
        [(c.admitted_at, c.weight * max_tokens) for c in admitted if c.admitted_at is not None],
        rate,
        period,
        max_tokens,
    )
    # FIFO: in the order they reserved, admission times never go down, whatever the
    # weights, cancellations and pauses.
    by_turn = sorted(admitted, key=lambda c: c.turn)
    times = [c.admitted_at for c in by_turn if c.admitted_at is not None]
    assert all(a <= b + EPS for a, b in itertools.pairwise(times)), times
    # Nobody is admitted while a pause is in force.
    for at, seconds in paused:
        for c in admitted:
            assert c.admitted_at is not None
            assert not (at + EPS < c.admitted_at < at + seconds - EPS), (at, seconds, c)


@given(spec=buckets(), callers=callers_st, data=st.data())
def test_cancelling_waiters_in_any_order_restores_the_level(
    spec: tuple[float, float, float], callers: list[Caller], data: st.DataObject
) -> None:
    rate, period, max_tokens = spec
    initial = data.draw(st.floats(0.0, 1.0)) * max_tokens
    order = data.draw(st.permutations(range(len(callers))))
    cut = data.draw(st.floats(0.0, 1.0))  # how far the clock moves before the cancels

    async def main() -> tuple[float, float]:
        with VirtualClock():
            loop = asyncio.get_running_loop()
            limiter = TokenBucketRateLimiter(rate, period, max_tokens, initial_tokens=initial)
            t0 = loop.time()
            # Everyone reserves at once, then the clock moves, then all are cancelled
            # in a random order (the first ones may have been admitted meanwhile).
            tasks = [asyncio.create_task(limiter.wait(c.weight * max_tokens)) for c in callers]
            await asyncio.sleep(0)
            await asyncio.sleep(cut * 0.5)
            done = sum(1 for t in tasks if t.done())
            for i in order:
                tasks[i].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            elapsed = loop.time() - t0
            # The reference: a bucket that only saw the calls that were admitted.
            ref_clock = ManualClock()
            ref = TokenBucketRateLimiter(
                rate, period, max_tokens, initial_tokens=initial, clock=ref_clock
            )
            for c in callers[:done]:
                ref.try_reserve(c.weight * max_tokens)
            ref_clock.advance(elapsed)
            return limiter.tokens, ref.tokens

    got, want = asyncio.run(main())
    assert abs(got - want) <= 1e-6 * max(1.0, abs(want)), (got, want)


# -- settle accounting -------------------------------------------------------------------
@given(
    capacity=st.floats(10.0, 10_000.0),
    ops=st.lists(
        st.tuples(st.floats(0.0, 1.0), st.lists(st.floats(0.0, 2.0), max_size=3)),
        min_size=1,
        max_size=20,
    ),
    data=st.data(),
)
def test_settle_and_cancel_account_exactly(
    capacity: float, ops: list[tuple[float, list[float]]], data: st.DataObject
) -> None:
    clock = ManualClock()  # time stands still: only the accounting moves the level
    tpm = TokenBucketRateLimiter(capacity, 60.0, clock=clock, unit="tokens")
    multi = MultiLimiter([tpm, TokenBucketRateLimiter(1e6, clock=clock)])
    reservations = []
    for estimate, settles in ops:
        r = multi.reserve_nowait(1, estimate * capacity)
        reservations.append(r)
        for factor in settles:
            before = tpm.tokens
            previous = r.tokens
            r.settle(factor * estimate * capacity)
            assert tpm.tokens == _approx(before - (r.tokens - previous))
    for i in data.draw(st.permutations(range(len(reservations)))):
        reservations[i].cancel()
    assert tpm.tokens == _approx(capacity)
    assert multi.limiters[1].tokens == _approx(1e6)


@given(
    req=buckets(),
    tok=buckets(),
    arrivals=st.lists(
        st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 1.0), st.booleans()),
        min_size=1,
        max_size=40,
    ),
)
def test_multi_limits_each_hold_and_serve_in_order(
    req: tuple[float, float, float],
    tok: tuple[float, float, float],
    arrivals: list[tuple[float, float, bool]],
) -> None:
    clock = ManualClock()
    requests = TokenBucketRateLimiter(*req, clock=clock)
    tokens = TokenBucketRateLimiter(*tok, clock=clock, unit="tokens")
    multi = MultiLimiter([requests, tokens])
    sent_requests: list[tuple[float, float]] = []
    sent_tokens: list[tuple[float, float]] = []
    times: list[float] = []
    for gap, fraction, is_request in arrivals:
        clock.advance(gap)
        n_req = min(1.0, requests.max_tokens) if is_request else 0.0
        n_tok = fraction * tokens.max_tokens
        r = multi.reserve_nowait(n_req, n_tok)
        at = clock.now() + r.delay
        times.append(at)
        sent_requests.append((at, n_req))
        sent_tokens.append((at, n_tok))
    assert all(a <= b + EPS for a, b in itertools.pairwise(times)), "served out of order"
    assert_rate_bound(sent_requests, *req)
    assert_rate_bound(sent_tokens, *tok)
