"""One global rate limit shared through Redis by several processes: headway against peers.

One command (from the repository root, with Redis on 127.0.0.1:6379)::

    python benchmarks/distributed.py                      # 4 x 50 workers, 400/s, 10 s each
    python benchmarks/distributed.py --seconds 3 --redis-url redis://host:6379/0

For each library in turn, ``--processes`` processes (separate interpreters) each run
``--workers`` concurrent asyncio workers that loop "acquire, record the time" against
one limit of ``--rate`` per second kept in one Redis, for ``--seconds`` seconds. All
processes start at the same wall-clock instant and record wall-clock times, so the
admissions of the whole fleet can be merged:

* **headway**: ``RedisBackend(url).limiter("bench", rps=rate, burst=rate/10)``;
  ``reserve()`` (one Lua script, one round trip) then ``await reservation.wait()``.
* **limits** (``limits.aio``, async Redis storage via redis-py, moving window
  ``rate/1 second``): ``hit()``; on a refusal, sleep until the window's reset time
  (``get_window_stats``) and hit again.
* **pyrate-limiter** (``RedisBucket`` on redis.asyncio, ``Rate(rate, SECOND)``):
  ``await limiter.try_acquire_async(name, blocking=True)``.

Reported: admissions, the achieved rate (after the burst allowance for headway, whose
first ``burst`` calls go at once) and its error against ``--rate``; the most admissions
in any 1 s window (bound: rate + burst), as measured when each worker woke up and, for
headway, as scheduled (receipt + the delay Redis handed out: what the limiter
guarantees, before event-loop wake-up jitter); the latency of one limiter call (Redis round
trips, without waiting) and of a whole acquire (with the wait), p50/p99; Redis calls
per admission. A measurement, not a test: exits 0 whatever the numbers. Writes JSON and
a Markdown table (``benchmarks/results/distributed.{json,md}`` by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


# -- one worker process ---------------------------------------------------------------------
async def _run_headway(cfg: dict[str, Any]) -> dict[str, Any]:
    from headway.backends import RedisBackend

    out: dict[str, Any] = {"admitted": [], "scheduled": [], "call": [], "acquire": []}
    out["cfg"] = cfg
    async with RedisBackend(cfg["url"], prefix=cfg["prefix"]) as backend:
        lim = backend.limiter("bench", rps=cfg["rate"], burst=cfg["burst"])
        await _start(cfg)

        async def worker() -> None:
            while time.time() < cfg["end"]:
                t0 = time.time()
                res = await lim.reserve()
                t1 = time.time()
                await res.wait()
                t2 = time.time()
                if t2 > cfg["end"]:
                    return
                out["admitted"].append(t2)
                out["scheduled"].append(t1 + res.delay)
                out["call"].append(t1 - t0)
                out["acquire"].append(t2 - t0)

        await asyncio.gather(*(worker() for _ in range(cfg["workers"])))
    return out


async def _run_limits(cfg: dict[str, Any]) -> dict[str, Any]:
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    from limits import RateLimitItemPerSecond

    out: dict[str, Any] = {"admitted": [], "call": [], "acquire": [], "cfg": cfg}
    uri = "async+" + cfg["url"]
    storage = RedisStorage(uri, implementation="redispy", key_prefix=cfg["prefix"])
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(int(cfg["rate"]), 1)
    await _start(cfg)

    async def worker() -> None:
        while time.time() < cfg["end"]:
            t0 = time.time()
            while True:
                c0 = time.time()
                ok = await limiter.hit(item, "bench")
                out["call"].append(time.time() - c0)
                if ok:
                    break
                c0 = time.time()
                stats = await limiter.get_window_stats(item, "bench")
                out["call"].append(time.time() - c0)
                await asyncio.sleep(max(0.001, stats.reset_time - time.time()))
                if time.time() > cfg["end"]:
                    return
            t2 = time.time()
            if t2 > cfg["end"]:
                return
            out["admitted"].append(t2)
            out["acquire"].append(t2 - t0)

    await asyncio.gather(*(worker() for _ in range(cfg["workers"])))
    return out


async def _run_pyrate(cfg: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis
    from pyrate_limiter import Duration, Limiter, Rate
    from pyrate_limiter.buckets.redis_bucket import RedisBucket

    out: dict[str, Any] = {"admitted": [], "call": [], "acquire": [], "cfg": cfg}
    client = aioredis.Redis.from_url(cfg["url"])
    bucket = await RedisBucket.init(
        [Rate(int(cfg["rate"]), Duration.SECOND)], client, cfg["prefix"] + "bench"
    )
    limiter = Limiter(bucket)
    await _start(cfg)

    async def worker() -> None:
        while time.time() < cfg["end"]:
            t0 = time.time()
            await limiter.try_acquire_async("bench", blocking=True)
            t2 = time.time()
            if t2 > cfg["end"]:
                return
            out["admitted"].append(t2)
            out["acquire"].append(t2 - t0)

    try:
        await asyncio.gather(*(worker() for _ in range(cfg["workers"])))
    finally:
        await client.aclose()
    return out


async def _start(cfg: dict[str, Any]) -> None:
    """Wait for every process to be ready, then start together (wall clock)."""
    await asyncio.get_running_loop().run_in_executor(None, cfg["barrier"].wait)
    cfg["start"] = time.time() + 0.2
    cfg["end"] = cfg["start"] + cfg["seconds"]
    await asyncio.sleep(max(0.0, cfg["start"] - time.time()))


RUNNERS = {"headway": _run_headway, "limits": _run_limits, "pyrate-limiter": _run_pyrate}


def _process(lib: str, cfg: dict[str, Any]) -> dict[str, Any]:
    out = asyncio.run(RUNNERS[lib](cfg))
    return {k: v for k, v in out.items() if k != "cfg"} | {"start": cfg["start"]}


# -- the fleet ------------------------------------------------------------------------------
def max_in_window(times: list[float], width: float) -> int:
    """Most admissions in any closed window ``[t, t + width]``."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] <= start + width:
            j += 1
        best = max(best, j - i + 1)
    return best


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_fleet(lib: str, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"headway-bench:{uuid.uuid4().hex[:8]}:"
    burst = args.rate / 10 if lib == "headway" else 0.0
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(args.processes) as pool:
        cfg = {
            "url": args.redis_url,
            "prefix": prefix,
            "rate": args.rate,
            "burst": burst,
            "workers": args.workers,
            "seconds": args.seconds,
            "barrier": manager.Barrier(args.processes),
        }
        parts = pool.starmap(_process, [(lib, cfg)] * args.processes)
    _cleanup(args.redis_url, prefix)
    start = min(p["start"] for p in parts)
    spread = max(p["start"] for p in parts) - start
    admitted = sorted(t for p in parts for t in p["admitted"] if t <= start + args.seconds)
    scheduled = [t for p in parts for t in p.get("scheduled", ()) if t <= start + args.seconds]
    calls = [c for p in parts for c in p["call"]]
    acquires = [a for p in parts for a in p["acquire"]]
    n = len(admitted)
    achieved = (n - burst) / args.seconds
    in_1s = max_in_window(admitted, 1.0)
    ms = 1000.0
    return {
        "library": lib,
        "admitted": n,
        "burst": burst,
        "achieved_rate": round(achieved, 2),
        "rate_error_pct": round(100.0 * (achieved - args.rate) / args.rate, 2),
        "max_in_1s_window": in_1s,
        "window_bound": args.rate + burst,
        "max_in_1s_scheduled": max_in_window(scheduled, 1.0) if scheduled else None,
        "call_p50_ms": None if not calls else round(pct(calls, 0.5) * ms, 3),  # type: ignore[operator]
        "call_p99_ms": None if not calls else round(pct(calls, 0.99) * ms, 3),  # type: ignore[operator]
        "acquire_p50_ms": round(pct(acquires, 0.5) * ms, 1),  # type: ignore[operator]
        "acquire_p99_ms": round(pct(acquires, 0.99) * ms, 1),  # type: ignore[operator]
        "calls_per_admission": None if not calls or not n else round(len(calls) / n, 2),
        "start_spread_ms": round(spread * 1000.0, 1),
    }


def _cleanup(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (
        f"{args.processes} processes x {args.workers} workers, one Redis limit of "
        f"{args.rate:g}/s, {args.seconds:g} s per library\n\n"
        "| library | admitted | achieved/s | error | max in 1 s (bound) | scheduled | "
        "call p50 / p99 ms | acquire p50 / p99 ms | calls per admission |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        call = (
            "n/a"
            if r["call_p50_ms"] is None
            else f"{r['call_p50_ms']:.2f} / {r['call_p99_ms']:.2f}"
        )
        cpa = "n/a" if r["calls_per_admission"] is None else f"{r['calls_per_admission']:.2f}"
        rows.append(
            f"| {r['library']} | {r['admitted']} | {r['achieved_rate']:.1f} | "
            f"{r['rate_error_pct']:+.2f}% | {r['max_in_1s_window']} ({r['window_bound']:g}) | "
            f"{'n/a' if r['max_in_1s_scheduled'] is None else r['max_in_1s_scheduled']} | "
            f"{call} | {r['acquire_p50_ms']:.0f} / {r['acquire_p99_ms']:.0f} | {cpa} |"
        )
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("HEADWAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--libraries", default="headway,limits,pyrate-limiter", help="comma-separated"
    )
    parser.add_argument("--json", default=str(RESULTS / "distributed.json"))
    parser.add_argument("--markdown", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    results = []
    for lib in args.libraries.split(","):
        print(f"running {lib} ...", file=sys.stderr, flush=True)
        try:
            results.append(run_fleet(lib, args))
        except Exception as exc:  # a peer that fails to run is reported, not fatal
            print(f"{lib} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    table = markdown(results, args)
    print(table)
    meta = {
        "command": "python benchmarks/distributed.py " + " ".join(argv or sys.argv[1:]),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "args": vars(args),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
