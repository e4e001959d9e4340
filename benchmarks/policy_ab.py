"""CPU cost of a full ``Policy`` call, for comparing source trees in one sitting.

Prints the overhead over a bare ``await`` (CPU microseconds per call, median of the
runs) of three cases that every headway version since 0.1 can build: a full
``Policy.execute`` (retry + budget, token bucket, concurrency limit, breaker),
``Policy.run`` on an rpm + tpm ``MultiLimiter``, and the full policy with attempt and
total deadlines. Put another tree first on ``PYTHONPATH`` to measure it, and alternate::

    for i in 1 2 3 4 5; do
      PYTHONPATH=/tmp/old/src flock /work/wt/bench.lock python benchmarks/policy_ab.py
      flock /work/wt/bench.lock python benchmarks/policy_ab.py
    done

CPU time (``time.process_time``) is steadier than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

HUGE = 1e12


async def noop() -> None:
    return None


async def attempt(ctx: Any) -> None:
    return None


async def measure(calls: int, runs: int) -> dict[str, float]:
    from headway.concurrency import ConcurrencyLimit
    from headway.limits import MultiLimiter, TokenBucketRateLimiter
    from headway.resilience import CircuitBreaker, Policy, RetryPolicy

    def full(**extra: Any) -> Any:
        return Policy(
            retry=RetryPolicy(),
            limiter=TokenBucketRateLimiter(rate=HUGE, max_tokens=HUGE),
            concurrency=ConcurrencyLimit(1000),
            breaker=CircuitBreaker(),
            **extra,
        )

    plain, timed = full(), full(attempt_timeout=60.0, total_timeout=600.0)
    llm = Policy(
        retry=RetryPolicy(),
        limiter=MultiLimiter.for_llm(rpm=HUGE, tpm=HUGE),
        concurrency=ConcurrencyLimit(1000),
        breaker=CircuitBreaker(),
    )

    async def bare(n: int) -> None:
        for _ in range(n):
            await noop()

    async def execute(n: int) -> None:
        for _ in range(n):
            await plain.execute(noop)

    async def run(n: int) -> None:
        for _ in range(n):
            await llm.run(attempt, tokens=100.0)

    async def deadlines(n: int) -> None:
        for _ in range(n):
            await timed.execute(noop)

    cases: dict[str, Callable[[int], Awaitable[None]]] = {
        "bare": bare,
        "full": execute,
        "run rpm+tpm": run,
        "full + deadlines": deadlines,
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up
        for _ in range(20):
            await fn(100)
            await asyncio.sleep(0)
    for _ in range(runs):
        for name, fn in cases.items():
            gc.collect()
            t0 = time.process_time()
            for _ in range(calls // 100):
                await fn(100)
                await asyncio.sleep(0)  # real calls yield to the loop
            samples[name].append((time.process_time() - t0) / calls * 1e6)
    base = statistics.median(samples.pop("bare"))
    return {name: statistics.median(values) - base for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    result = asyncio.run(measure(args.calls, args.runs))
    print("  ".join(f"{name}={value:.3f}" for name, value in result.items()))


if __name__ == "__main__":
    main()
