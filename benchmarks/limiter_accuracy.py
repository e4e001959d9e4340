"""Rate-limiter accuracy and fairness, headway against aiolimiter, in real time.

One command (from the repository root)::

    python benchmarks/limiter_accuracy.py              # 3 runs of every scenario (~2 min)
    python benchmarks/limiter_accuracy.py --runs 1 --seconds 2 --json out.json

Scenarios, each run ``--runs`` times (the table shows the median of the runs):

* **steady**: 50 workers loop ``acquire -> record`` on a 200/s limiter for ``--seconds``
  seconds. Reported: the achieved rate after the burst allowance
  (``(admitted - max_tokens) / seconds``) and its error against 200/s, and the most
  admissions in any closed 1 s window (bound: ``max_tokens + rate``).
* **even**: the same with ``max_tokens=1`` (no burst): the most admissions in any
  closed 0.1 s window (bound: 21). aiolimiter has no separate burst setting; it runs as
  ``AsyncLimiter(200, 1)`` (its way to say 200/s) and as ``AsyncLimiter(1, 0.005)``
  (the nearest it has to ``max_tokens=1``).
* **arrival**: what the server sees. 50 workers loop ``limiter.wait()`` then send a
  request to a loopback FakeAPI, with ``max_tokens=1`` at 200/s; admissions are counted
  from the server's journal (arrival times): the most in any 0.1 s window (bound 21) and
  in any 1 s window (bound 201), the achieved rate (``admitted / seconds``), and how far
  late wake-ups moved the schedule back (``limiter.shift``: turns the loop could not
  serve on time are not made up, or the callers after them would arrive too close).
  The FakeAPI runs on the client's event loop, or with ``--server-process`` in its own
  process (then the client's loop runs only the client; arrival times are read from
  the server's journal over HTTP, on the same monotonic clock).
* **fairness**: 20 one-unit loopers on a 100/s limiter; after 1 s a caller asks for 50
  units at once. Reported: how long it waited (bound: 1.5 s). aiolimiter serves the
  smallest request first: the 50-unit caller is given up after ``--fair-timeout`` s.

Writes JSON (``benchmarks/results/limiter_accuracy.json`` by default) and prints a
Markdown table (also written to ``--markdown`` if given). A measurement, not a test:
exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiolimiter import AsyncLimiter

from headway.limits import TokenBucketRateLimiter

#: Waits for ``n`` units; returns the loop time the limiter scheduled the call for, if it
#: tells (headway does: the reservation's time plus its wait).
Acquire = Callable[[float], Awaitable[float | None]]


# -- helpers ------------------------------------------------------------------------------
def max_in_window(times: list[float], width: float) -> int:
    """Most admissions in any closed window ``[t, t + width]``."""
    times = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] <= start + width:
            j += 1
        best = max(best, j - i + 1)
    return best


def headway_acquire(limiter: TokenBucketRateLimiter) -> Acquire:
    loop_time = asyncio.get_running_loop().time

    async def acquire(n: float) -> float:
        # What limiter.wait(n) does, keeping the scheduled time.
        now = loop_time()
        wait = limiter.try_reserve(n)
        if wait > 0.0:
            await asyncio.sleep(wait)
        return now + wait

    return acquire


def aiolimiter_acquire(limiter: AsyncLimiter) -> Acquire:
    async def acquire(n: float) -> None:
        await limiter.acquire(n)

    return acquire


async def run_workers(
    acquire: Acquire, workers: int, seconds: float
) -> tuple[list[float], list[float]]:
    """``workers`` tasks loop acquire(1) for ``seconds``.

    Returns the observed admission times (when each caller resumed) and the scheduled
    ones (when the limiter said it could go; empty if the limiter does not say).
    """
    loop = asyncio.get_running_loop()
    times: list[float] = []
    scheduled: list[float] = []
    t0 = loop.time()
    end = t0 + seconds

    async def worker() -> None:
        while True:
            when = await acquire(1.0)
            now = loop.time()
            if now >= end:
                return
            times.append(now - t0)
            if when is not None:
                scheduled.append(when - t0)

    async with asyncio.timeout(seconds + 5.0):
        await asyncio.gather(*(worker() for _ in range(workers)))
    return times, scheduled


async def steady(make: Callable[[], Acquire], seconds: float, burst: float) -> dict[str, float]:
    times, scheduled = await run_workers(make(), 50, seconds)
    achieved = (len(times) - burst) / seconds
    lateness = [t - s for t, s in zip(sorted(times), sorted(scheduled), strict=False)]
    return {
        "admitted": len(times),
        "achieved_rate": achieved,
        "rate_error_pct": abs(achieved - 200.0) / 200.0 * 100.0,
        "max_1s": max_in_window(times, 1.0),
        "max_100ms": max_in_window(times, 0.1),
        "scheduled_max_1s": max_in_window(scheduled, 1.0) if scheduled else -1,
        "scheduled_max_100ms": max_in_window(scheduled, 0.1) if scheduled else -1,
        "max_lateness_ms": max(lateness) * 1000 if lateness else -1,
    }


async def fairness(make: Callable[[], Acquire], timeout: float) -> dict[str, float | None]:
    """20 one-unit loopers; after 1 s, one call for 50 units. How long does it wait?"""
    loop = asyncio.get_running_loop()
    acquire = make()
    stop = asyncio.Event()

    async def looper() -> None:
        while not stop.is_set():
            await acquire(1.0)

    loopers = [asyncio.create_task(looper()) for _ in range(20)]
    try:
        await asyncio.sleep(1.0)
        t = loop.time()
        try:
            async with asyncio.timeout(timeout):
                await acquire(50.0)
            waited: float | None = loop.time() - t
        except TimeoutError:
            waited = None
    finally:
        stop.set()
        for task in loopers:
            task.cancel()
        await asyncio.gather(*loopers, return_exceptions=True)
    return {"heavy_wait_s": waited}


async def arrival(seconds: float, server: str | None = None) -> dict[str, float]:
    """Admissions counted at the server: 200/s, ``max_tokens=1``, 50 workers.

    ``server``: the URL of a FakeAPI in another process (``--server-process``; its
    journal is read over HTTP), else one runs on this event loop.
    """
    import contextlib

    import aiohttp

    from headway.testing import FakeAPI

    limiter = TokenBucketRateLimiter(200, 1.0, max_tokens=1)
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        api = None
        if server is None:
            api = await stack.enter_async_context(FakeAPI())
            base = api.url
        else:
            base = server
            await (await session.post(base + "/_reset")).read()
        url = base + "/v1/models"
        end = loop.time() + seconds

        async def worker() -> None:
            while True:
                await limiter.wait()
                if loop.time() >= end:
                    return
                async with session.get(url) as resp:
                    await resp.read()

        async with asyncio.timeout(seconds + 10.0):
            await asyncio.gather(*(worker() for _ in range(50)))
        if api is not None:
            times = sorted(r.time for r in api.requests)
        else:  # the same monotonic clock in both processes
            async with session.get(base + "/_journal") as resp:
                times = sorted(await resp.json())
    span = times[-1] - times[0] if len(times) > 1 else seconds
    # Seconds the schedule moved back because callers woke late (nothing else pauses it
    # here): the process was not run on time, so those turns could not be used without
    # sending the next callers too close behind the late ones.
    late = min(limiter.shift, span)
    return {
        "admitted": len(times),
        "achieved_rate": (len(times) - 1) / span if span > 0 else 0.0,
        "achieved_pct": (len(times) - 1) / span / 200.0 * 100.0 if span > 0 else 0.0,
        "max_1s": max_in_window(times, 1.0),
        "max_100ms": max_in_window(times, 0.1),
        "late_s": late,
        "achieved_pct_on_time": (
            (len(times) - 1) / (span - late) / 200.0 * 100.0 if span > late else 0.0
        ),
    }


# -- the run ------------------------------------------------------------------------------
CASES: dict[str, Callable[[], Acquire]] = {
    "headway TokenBucketRateLimiter(200, max_tokens=200)": lambda: headway_acquire(
        TokenBucketRateLimiter(200, 1.0)
    ),
    "aiolimiter AsyncLimiter(200, 1)": lambda: aiolimiter_acquire(AsyncLimiter(200, 1.0)),
    "headway TokenBucketRateLimiter(200, max_tokens=1)": lambda: headway_acquire(
        TokenBucketRateLimiter(200, 1.0, max_tokens=1)
    ),
    "aiolimiter AsyncLimiter(1, 0.005)": lambda: aiolimiter_acquire(AsyncLimiter(1, 0.005)),
}
BURST = {
    "headway TokenBucketRateLimiter(200, max_tokens=200)": 200.0,
    "aiolimiter AsyncLimiter(200, 1)": 200.0,
    "headway TokenBucketRateLimiter(200, max_tokens=1)": 1.0,
    "aiolimiter AsyncLimiter(1, 0.005)": 1.0,
}
FAIR: dict[str, Callable[[], Acquire]] = {
    "headway TokenBucketRateLimiter(100)": lambda: headway_acquire(
        TokenBucketRateLimiter(100, 1.0)
    ),
    "aiolimiter AsyncLimiter(100, 1)": lambda: aiolimiter_acquire(AsyncLimiter(100, 1.0)),
}


def serve() -> None:
    """A FakeAPI in this process for ``--server-process``: ``GET /_journal`` gives the
    arrival times of ``/v1/models``, ``POST /_reset`` forgets them."""
    import signal

    from aiohttp import web

    from headway.testing import FakeAPI

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        api = FakeAPI(journal_limit=None)

        async def journal(_request: web.Request) -> web.Response:
            return web.json_response([r.time for r in api.requests if r.path == "/v1/models"])

        async def reset(_request: web.Request) -> web.Response:
            api.reset()
            return web.json_response({})

        api.route("GET", "/_journal", journal)
        api.route("POST", "/_reset", reset)
        async with api:
            print(f"listening on {api.url}", flush=True)
            await stop.wait()

    asyncio.run(run())


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    if len(present) < len(values):  # any run that timed out: the median is a timeout
        return None if len(present) <= len(values) // 2 else statistics.median(present)
    return statistics.median(present)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    steady_runs: dict[str, list[dict[str, float]]] = {name: [] for name in CASES}
    fair_runs: dict[str, list[dict[str, float | None]]] = {name: [] for name in FAIR}
    arrival_runs: list[dict[str, float]] = []
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}: arrival side ...", file=sys.stderr, flush=True)
        arrival_runs.append(await arrival(args.seconds, args.server_url))
        for name, make in CASES.items():
            print(f"run {run + 1}/{args.runs}: {name} ...", file=sys.stderr, flush=True)
            steady_runs[name].append(await steady(make, args.seconds, BURST[name]))
        for name, make in FAIR.items():
            print(f"run {run + 1}/{args.runs}: fairness {name} ...", file=sys.stderr, flush=True)
            fair_runs[name].append(await fairness(make, args.fair_timeout))
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "runs": args.runs,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "steady": {},
        "fairness": {},
        "arrival": {key: median([r[key] for r in arrival_runs]) for key in arrival_runs[0]}
        | {"per_run": arrival_runs},
    }
    for name, runs in steady_runs.items():
        result["steady"][name] = {key: median([r[key] for r in runs]) for key in runs[0]} | {
            "per_run": runs,
            "burst": BURST[name],
        }
    for name, fruns in fair_runs.items():
        result["fairness"][name] = {
            "heavy_wait_s": median([r["heavy_wait_s"] for r in fruns]),
            "per_run": fruns,
            "timeout_s": args.fair_timeout,
        }
    return result


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Limiter accuracy and fairness",
        "",
        f"Command: `{command}`  ",
        f"Median of {result['runs']} runs, {result['seconds']:g} s each, real time; "
        f"Python {result['python']}, {result['platform']}, {result['cpus']} CPUs, "
        f"load average {result['load_average_1m']:.1f} at the end of the run.",
        "",
        "## 200/s, 50 workers",
        "",
        "Windows are closed (`[t, t + w]`) and slide over every admission. *Observed* is when",
        "each caller resumed; *scheduled* is the time headway's limiter gave it (the loop may",
        "wake a sleeper late, which can bunch two callers; it never wakes one early).",
        "",
        "| limiter | admitted | rate after burst | error | max in 1 s (bound) "
        "| max in 0.1 s (bound) | scheduled max 1 s / 0.1 s | max lateness |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["steady"].items():
        burst = r["burst"]
        bound_1s = int(burst + 200)
        bound_100ms = int(burst + 20)
        if r["scheduled_max_1s"] >= 0:
            sched = f"{r['scheduled_max_1s']:.0f} / {r['scheduled_max_100ms']:.0f}"
            late = f"{r['max_lateness_ms']:.1f} ms"
        else:
            sched = late = "n/a"
        lines.append(
            f"| {name} | {r['admitted']:.0f} | {r['achieved_rate']:.1f}/s "
            f"| {r['rate_error_pct']:.2f}% | {r['max_1s']:.0f} ({bound_1s}) "
            f"| {r['max_100ms']:.0f} ({bound_100ms}) | {sched} | {late} |"
        )
    a = result["arrival"]
    lines += [
        "",
        "## What the server sees: 200/s, max_tokens=1, 50 workers, counted at the server",
        "",
        "The server runs "
        + ("in its own process." if result.get("server_process") else "on the client's loop."),
        "",
        "*Moved back* is how far the schedule moved because callers woke late (more than",
        "half an interval): the time the process was not run when a caller was due.",
        "",
        "| admitted | achieved | max in 0.1 s (bound 21) | max in 1 s (bound 201) "
        "| moved back | achieved over the time not moved back |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {a['admitted']:.0f} | {a['achieved_rate']:.1f}/s ({a['achieved_pct']:.1f}%) "
        f"| {a['max_100ms']:.0f} | {a['max_1s']:.0f} | {a['late_s']:.3f} s "
        f"| {a['achieved_pct_on_time']:.1f}% |",
    ]
    lines += [
        "",
        "## Weighted fairness: acquire(50) at 100/s against 20 one-unit loopers",
        "",
        "| limiter | wait of the 50-unit call (bound 1.5 s) |",
        "|---|---:|",
    ]
    for name, r in result["fairness"].items():
        wait = r["heavy_wait_s"]
        shown = f"{wait:.3f} s" if wait is not None else f"not served in {r['timeout_s']:g} s"
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fair-timeout", type=float, default=5.0)
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/limiter_accuracy.json")
    )
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--server-process",
        action="store_true",
        help="run the arrival side's FakeAPI in its own process (not on the client's loop)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    args.server_url = None
    proc = None
    if args.server_process:
        import re
        import signal
        import subprocess

        argv = [sys.executable, __file__, "--serve"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        match = re.search(r"(http://\S+)", proc.stdout.readline())
        if match is None:
            proc.kill()
            raise SystemExit("the server process did not start")
        args.server_url = match.group(1)
    try:
        result = asyncio.run(main_async(args))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    result["server_process"] = args.server_process
    command = "python benchmarks/limiter_accuracy.py " + " ".join(sys.argv[1:])
    result["command"] = command.strip()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result, command.strip())
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
