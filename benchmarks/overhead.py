"""Overhead of a no-op async call through headway's components and through its peers.

One command (from the repository root)::

    python benchmarks/overhead.py                 # defaults: 20000 calls x 7 runs
    python benchmarks/overhead.py --calls 5000 --runs 3 --json out.json --markdown out.md

Every case awaits a no-op coroutine ``--calls`` times in a tight loop (yielding to the
event loop every 100 calls, as real I/O would), in one event loop, all cases
interleaved run by run (so drift hits every case alike). A case's figure is the
median over ``--runs`` of the per-call time; *overhead* subtracts the median of the bare
``await noop()`` loop. Success path: the call never fails. Retry path: every call fails
once and succeeds on its retry, with a zero wait (retry budgets set wide enough not to
interfere). Rate limiters run with a huge rate so they never wait.

Writes JSON (``benchmarks/results/overhead.json`` by default) and a Markdown table
(printed, and written to ``--markdown`` if given). The bars from the issue are checked
and reported at the end; this is a measurement, not a test, and exits 0 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

RunLoop = Callable[[int], Awaitable[None]]

HUGE = 1e12


async def noop() -> None:
    return None


def FailEveryOther() -> Callable[[], Awaitable[None]]:
    """A coroutine function failing on odd calls: each call through retry fails once.

    A plain ``async def`` (not an object with an async ``__call__``), so that every
    library recognises it as a coroutine function.
    """
    count = [0]

    async def fail_every_other() -> None:
        count[0] += 1
        if count[0] & 1:
            raise ConnectionError("transient")

    return fail_every_other


# -- cases ------------------------------------------------------------------------------------


async def build_cases() -> dict[str, tuple[str, RunLoop]]:
    """name -> (group, loop). Groups: baseline, retry, breaker, limiter, concurrency, policy."""
    import aiolimiter
    import pyrate_limiter
    import stamina
    import tenacity
    from purgatory import AsyncCircuitBreakerFactory

    from headway.concurrency import ConcurrencyLimit
    from headway.limits import MultiLimiter, TokenBucketRateLimiter
    from headway.resilience import CircuitBreaker, Policy, RetryBudget, RetryPolicy
    from headway.resilience.retry import retry, retry_with_backoff

    stamina.instrumentation.set_on_retry_hooks([])  # measure the retry core, not logging

    cases: dict[str, tuple[str, RunLoop]] = {}

    def case(name: str, group: str) -> Callable[[RunLoop], RunLoop]:
        def register(fn: RunLoop) -> RunLoop:
            cases[name] = (group, fn)
            return fn

        return register

    @case("bare await noop()", "baseline")
    async def _baseline(n: int) -> None:
        for _ in range(n):
            await noop()

    # -- retry, success path --
    h_retry = retry(noop)

    @case("headway @retry (budget on)", "retry")
    async def _h_retry(n: int) -> None:
        for _ in range(n):
            await h_retry()

    @case("headway retry_with_backoff", "retry")
    async def _h_rwb(n: int) -> None:
        for _ in range(n):
            await retry_with_backoff(noop)

    t_retry = tenacity.retry(
        stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_exponential(multiplier=1, max=60),
        retry=tenacity.retry_if_exception_type(Exception),
    )(noop)

    @case("tenacity @retry (AsyncRetrying)", "retry")
    async def _t_retry(n: int) -> None:
        for _ in range(n):
            await t_retry()

    s_retry = stamina.retry(on=Exception, attempts=4)(noop)

    @case("stamina @retry", "retry")
    async def _s_retry(n: int) -> None:
        for _ in range(n):
            await s_retry()

    # -- retry path: one failure, zero wait --
    wide = RetryBudget(ratio=1.0, min_retries_per_second=1e9)
    h_fail = RetryPolicy(base_delay=0, max_delay=0, jitter=False, retry_on=Exception, budget=wide)
    h_fail_fn = h_fail.wrap(FailEveryOther())

    @case("retry path: headway @retry", "retry path")
    async def _h_fail(n: int) -> None:
        for _ in range(n):
            await h_fail_fn()

    t_fail = tenacity.retry(
        stop=tenacity.stop_after_attempt(4),
        wait=tenacity.wait_none(),
        retry=tenacity.retry_if_exception_type(Exception),
    )(FailEveryOther())

    @case("retry path: tenacity @retry", "retry path")
    async def _t_fail(n: int) -> None:
        for _ in range(n):
            await t_fail()

    s_fail = stamina.retry(
        on=Exception, attempts=4, wait_initial=0.0, wait_max=0.0, wait_jitter=0.0
    )(FailEveryOther())

    @case("retry path: stamina @retry", "retry path")
    async def _s_fail(n: int) -> None:
        for _ in range(n):
            await s_fail()

    # -- breakers --
    breaker = CircuitBreaker()

    @case("headway CircuitBreaker.execute", "breaker")
    async def _h_breaker(n: int) -> None:
        for _ in range(n):
            await breaker.execute(noop)

    factory = AsyncCircuitBreakerFactory()
    await factory.initialize()
    p_breaker = factory("bench")(noop)

    @case("purgatory breaker (decorator)", "breaker")
    async def _p_breaker(n: int) -> None:
        for _ in range(n):
            await p_breaker()

    # -- limiters (huge rate: never waits) --
    bucket = TokenBucketRateLimiter(rate=HUGE, max_tokens=HUGE)

    @case("headway TokenBucketRateLimiter.execute", "limiter")
    async def _h_bucket(n: int) -> None:
        for _ in range(n):
            await bucket.execute(noop)

    multi = MultiLimiter.for_llm(rpm=HUGE, tpm=HUGE)

    @case("headway MultiLimiter.slot (rpm+tpm)", "limiter")
    async def _h_multi(n: int) -> None:
        for _ in range(n):
            async with multi.slot(1.0, 100.0):
                await noop()

    aio = aiolimiter.AsyncLimiter(HUGE, 1)

    @case("aiolimiter AsyncLimiter", "limiter")
    async def _aio(n: int) -> None:
        for _ in range(n):
            async with aio:
                await noop()

    pyrate = pyrate_limiter.Limiter(pyrate_limiter.Rate(10**12, pyrate_limiter.Duration.SECOND))

    @case("pyrate-limiter try_acquire_async", "limiter")
    async def _pyrate(n: int) -> None:
        for _ in range(n):
            await pyrate.try_acquire_async("bench")
            await noop()

    # -- concurrency --
    sem = asyncio.Semaphore(1000)

    @case("asyncio.Semaphore", "concurrency")
    async def _sem(n: int) -> None:
        for _ in range(n):
            async with sem:
                await noop()

    conc = ConcurrencyLimit(1000)

    @case("headway ConcurrencyLimit.slot", "concurrency")
    async def _conc(n: int) -> None:
        for _ in range(n):
            async with conc.slot():
                await noop()

    # -- Policy --
    bare_policy = Policy(retry=None)

    @case("headway Policy, nothing configured (its own cost)", "policy")
    async def _bare_policy(n: int) -> None:
        for _ in range(n):
            await bare_policy.execute(noop)

    retry_policy = Policy()

    @case("headway Policy, retry + budget only", "policy")
    async def _retry_policy(n: int) -> None:
        for _ in range(n):
            await retry_policy.execute(noop)

    full = Policy(
        retry=RetryPolicy(),
        limiter=TokenBucketRateLimiter(rate=HUGE, max_tokens=HUGE),
        concurrency=ConcurrencyLimit(1000),
        breaker=CircuitBreaker(),
    )

    @case("headway Policy full (retry+budget, limiter, slot, breaker)", "policy")
    async def _full(n: int) -> None:
        for _ in range(n):
            await full.execute(noop)

    llm = Policy(
        retry=RetryPolicy(),
        limiter=MultiLimiter.for_llm(rpm=HUGE, tpm=HUGE),
        concurrency=ConcurrencyLimit(1000),
        breaker=CircuitBreaker(),
    )

    async def attempt(ctx: Any) -> None:
        return None

    @case("headway Policy.run full, rpm+tpm MultiLimiter", "policy")
    async def _llm(n: int) -> None:
        for _ in range(n):
            await llm.run(attempt, tokens=100.0)

    timed = Policy(
        retry=RetryPolicy(),
        limiter=TokenBucketRateLimiter(rate=HUGE, max_tokens=HUGE),
        concurrency=ConcurrencyLimit(1000),
        breaker=CircuitBreaker(),
        attempt_timeout=60.0,
        total_timeout=600.0,
    )

    @case("headway Policy full + attempt & total deadlines", "policy")
    async def _timed(n: int) -> None:
        for _ in range(n):
            await timed.execute(noop)

    full_fail = Policy(
        retry=RetryPolicy(base_delay=0, max_delay=0, jitter=False, budget=wide),
        limiter=TokenBucketRateLimiter(rate=HUGE, max_tokens=HUGE),
        concurrency=ConcurrencyLimit(1000),
        breaker=CircuitBreaker(failure_threshold=10**9),
    )
    full_fail_fn = FailEveryOther()

    @case("retry path: headway Policy full", "retry path")
    async def _full_fail(n: int) -> None:
        for _ in range(n):
            await full_fail.execute(full_fail_fn)

    return cases


# -- measuring ---------------------------------------------------------------------------------


CHUNK = 100


async def timed(fn: RunLoop, calls: int) -> float:
    """Microseconds per call of ``fn``, yielding to the loop every ``CHUNK`` calls.

    Real calls yield to the event loop (I/O); a loop that never yields would let
    cancelled timer handles (from ``asyncio.timeout``) pile up in the loop's heap and
    slow everything down. Every case pays the same yields, and the baseline too.
    """
    chunks = max(1, calls // CHUNK)
    sleep = asyncio.sleep
    t0 = time.perf_counter()
    for _ in range(chunks):
        await fn(CHUNK)
        await sleep(0)
    return (time.perf_counter() - t0) / (chunks * CHUNK) * 1e6


async def measure(calls: int, runs: int) -> dict[str, list[float]]:
    cases = await build_cases()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _, fn in cases.values():  # warm-up
        await timed(fn, min(calls, 2000))
    for _ in range(runs):
        for name, (_, fn) in cases.items():
            gc.collect()
            samples[name].append(await timed(fn, calls))
    return samples


def summarise(samples: dict[str, list[float]], groups: dict[str, str]) -> dict[str, Any]:
    base = statistics.median(samples["bare await noop()"])
    rows = {}
    for name, values in samples.items():
        med = statistics.median(values)
        rows[name] = {
            "group": groups[name],
            "median_us": round(med, 3),
            "overhead_us": round(med - base, 3),
            # overhead in units of one bare ``await noop()``: roughly machine-independent
            "overhead_x_bare_await": round((med - base) / base, 1),
            "runs_us": [round(v, 3) for v in values],
        }
    return rows


def check_bars(rows: dict[str, Any]) -> list[tuple[str, str, bool]]:
    full = rows["headway Policy full (retry+budget, limiter, slot, breaker)"]["overhead_us"]
    ten = rows["tenacity @retry (AsyncRetrying)"]["overhead_us"]
    path = rows["retry path: headway @retry"]["overhead_us"]
    path_full = rows["retry path: headway Policy full"]["overhead_us"]
    return [
        ("full Policy success path <= 1 us/call", f"{full:.2f} us", full <= 1.0),
        ("full Policy <= 0.2x tenacity @retry", f"{full / ten:.3f}x", full <= 0.2 * ten),
        ("retry path (@retry, one failure, zero wait) <= 10 us", f"{path:.2f} us", path <= 10),
        ("retry path (full Policy) <= 10 us", f"{path_full:.2f} us", path_full <= 10),
    ]


def markdown(rows: dict[str, Any], bars: list[tuple[str, str, bool]], meta: dict[str, Any]) -> str:
    lines = [
        f"Python {meta['python']} on {meta['platform']}; {meta['calls']} calls x "
        f"{meta['runs']} runs; median per call; overhead = median - bare await.",
        "",
        "| group | case | median µs/call | overhead µs/call | overhead ÷ bare await |",
        "|---|---|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {row['group']} | {name} | {row['median_us']:.2f} | {row['overhead_us']:.2f} "
            f"| {row['overhead_x_bare_await']:.1f} |"
        )
    lines += ["", "| bar | measured | met |", "|---|---:|:---:|"]
    for what, value, ok in bars:
        lines.append(f"| {what} | {value} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per run and case")
    parser.add_argument("--runs", type=int, default=7, help="runs per case (median taken)")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parent / "results" / "overhead.json",
        help="where to write the JSON results",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)

    samples = asyncio.run(measure(args.calls, args.runs))

    async def groups_of() -> dict[str, str]:
        return {name: group for name, (group, _) in (await build_cases()).items()}

    groups = asyncio.run(groups_of())
    rows = summarise(samples, groups)
    bars = check_bars(rows)
    meta = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "calls": args.calls,
        "runs": args.runs,
        "command": " ".join(["python", *sys.argv]),
    }
    table = markdown(rows, bars, meta)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"meta": meta, "results": rows, "bars": [list(b) for b in bars]},
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    if args.markdown is not None:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
