"""headway.testing against looptime: an hour of waits in virtual time, and plugin start-up.

One command (from the repository root)::

    python benchmarks/testing.py              # 5 runs of every case (~1 min)
    python benchmarks/testing.py --runs 3 --json out.json

Cases, each timed in real seconds, ``--runs`` times, alternating the two clocks; the
table shows the medians:

* **paced**: 900 requests to a real FakeAPI socket on loopback, paced by aiolimiter at
  one per 4 s (an hour), through one ``aiohttp.ClientSession``. (At one per 3.6 s the
  limiter's waker lands at "now plus 1e-14", which rounds to now: looptime spins on it
  forever, headway steps the clock; so the period is one both can run.)
* **backoff**: 120 calls with tenacity retries; the server answers 429 with
  ``Retry-After: 10`` twice, then 200, and tenacity waits what the header says
  (2,400 virtual seconds in all, over a real socket).
* **idle socket**: 3,600 sleeps of one second while a keep-alive connection and the
  server's listening socket stay open (every jump happens with sockets registered).

Each case runs on a fresh loop under headway's :class:`~headway.testing.VirtualClock`
and under looptime's loop (``looptime.new_event_loop()``), the same coroutine both times.
The virtual time each run reports is checked against the expected hour.

Start-up: the real time to import the pytest plugin in a fresh interpreter where pytest
and pytest-asyncio are already imported (what the plugin adds to every pytest start),
median of ``--runs``; and the leak guard's real cost per test in a process the size of
a real test run (see :func:`guard_costs`), next to what it collected per test before.

Writes JSON (``benchmarks/results/testing.json``) and prints a Markdown table (also
written to ``--markdown``). A measurement, not a test: exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import looptime
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from headway.testing import FakeAPI, Fault, VirtualClock

Case = Callable[[], Awaitable[float]]


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


# -- the cases: each returns the virtual seconds it took ---------------------------------
async def paced() -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    limiter = AsyncLimiter(1, 4)
    async with FakeAPI() as api, aiohttp.ClientSession() as session:
        url = f"{api.url}/v1/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(900):
            async with limiter, session.post(url, json=body) as resp:
                await resp.read()
    return loop.time() - t0


async def backoff() -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def wait_retry_after(state: Any) -> float:
        exc = state.outcome.exception()
        return exc.retry_after if isinstance(exc, RateLimited) else 1.0

    async with FakeAPI() as api, aiohttp.ClientSession() as session:
        path = "/v1/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

        async def call() -> None:
            async with session.post(api.url + path, json=body) as resp:
                await resp.read()
                if resp.status == 429:
                    raise RateLimited(float(resp.headers["retry-after"]))

        for _ in range(120):
            api.script("POST", path, [Fault.rate_limit(10), Fault.rate_limit(10)])
            async for attempt in AsyncRetrying(
                wait=wait_retry_after,
                stop=stop_after_attempt(5),
                retry=retry_if_exception_type(RateLimited),
                reraise=True,
            ):
                with attempt:
                    await call()
    return loop.time() - t0


async def idle_socket() -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with FakeAPI() as api, aiohttp.ClientSession() as session:
        async with session.get(f"{api.url}/v1/models") as resp:
            await resp.read()
        for _ in range(3600):
            await asyncio.sleep(1)
    return loop.time() - t0


CASES: dict[str, tuple[Case, float]] = {
    "paced": (paced, 899 * 4.0),
    "backoff": (backoff, 120 * 20.0),
    "idle socket": (idle_socket, 3600.0),
}


# -- the two clocks -----------------------------------------------------------------------
def run_headway(case: Case) -> tuple[float, float]:
    async def main() -> float:
        with VirtualClock():
            return await case()

    loop = asyncio.new_event_loop()
    try:
        t0 = time.perf_counter()
        virtual = loop.run_until_complete(main())
        return time.perf_counter() - t0, virtual
    finally:
        loop.close()


def run_looptime(case: Case) -> tuple[float, float]:
    loop = looptime.new_event_loop(start=0)
    try:
        t0 = time.perf_counter()
        virtual = loop.run_until_complete(case())
        return time.perf_counter() - t0, virtual
    finally:
        loop.close()


CLOCKS: dict[str, Callable[[Case], tuple[float, float]]] = {
    "headway VirtualClock": run_headway,
    "looptime": run_looptime,
}


# -- start-up and per-test cost -----------------------------------------------------------
# Imports are timed as a user's run imports them: with bytecode cached. A shell that sets
# PYTHONDONTWRITEBYTECODE would make each timed import compile an editable checkout.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
IMPORT_PLUGIN = """
import time, pytest, pytest_asyncio
t, c = time.perf_counter(), time.process_time()
import headway.testing.plugin
print(time.perf_counter() - t, time.process_time() - c)
"""


def plugin_import_seconds() -> tuple[float, float]:
    """Real and CPU seconds of the plugin's import (CPU time is less hurt by a busy box)."""
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_PLUGIN], capture_output=True, text=True, check=True
    )
    real, cpu = out.stdout.split()
    return float(real), float(cpu)


def guard_costs(runs: int, cycles: int = 200) -> dict[str, float]:
    """Real ms per test of the leak guard, in a process the size of a real test run.

    The process holds pytest, aiohttp, the SDKs and 300,000 live objects; each cycle
    starts a guard, allocates a little (as a test does) and stops it. For comparison,
    what the guard used to collect per test: a full collection of the whole heap (the
    ``no_leaks`` marker) and a young-generation one (the suite-wide flag).
    """
    code = textwrap.dedent(
        f"""
        import asyncio, gc, json, statistics, time
        import aiohttp, anthropic, hypothesis, openai, pytest
        from headway.testing.leaks import LeakGuard

        heap = [{{"n": [i]}} for i in range(300_000)]

        async def cycle():
            guard = LeakGuard()
            guard.start()
            junk = [[i] for i in range(200)]
            junk.append(junk)
            del junk
            assert await guard.stop() == []

        async def main():
            def timed(step, n):
                return min(
                    statistics.median(step() for _ in range(n)) for _ in range({runs})
                )

            async def guard_ms():
                t = time.perf_counter()
                for _ in range({cycles}):
                    await cycle()
                return (time.perf_counter() - t) / {cycles} * 1000

            guard = min([await guard_ms() for _ in range({runs})])

            def gc_ms(generation):
                t = time.perf_counter()
                gc.collect(generation)
                return (time.perf_counter() - t) * 1000

            full = timed(lambda: gc_ms(2), 5)
            young = timed(lambda: gc_ms(1), 50)
            print(json.dumps({{"guard_ms_per_test": guard, "full_gc_ms": full,
                               "young_gc_ms": young}}))

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


# -- report -------------------------------------------------------------------------------
def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Command: `{result['command']}`  ",
        f"Python {result['python']}, {result['machine']}, "
        f"load average {result['load_average']}, median of {result['runs']} runs.",
        "",
        "| case (virtual time) | headway s | looptime s | headway / looptime | virtual s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["cases"].items():
        h, lt = row["headway VirtualClock"], row["looptime"]
        lines.append(
            f"| {name} | {h['median_s']:.3f} | {lt['median_s']:.3f} "
            f"| {h['median_s'] / lt['median_s']:.2f}x | {h['virtual_s']:.0f} |"
        )
    start = result["startup"]
    guard = result["guard"]
    lines += [
        "",
        "| start-up and per-test cost | measured |",
        "|---|---:|",
        f"| import of the pytest plugin (pytest already imported), real time "
        f"| {start['median_ms']:.1f} ms |",
        f"| the same, CPU time | {start['median_cpu_ms']:.1f} ms |",
        f"| leak guard per test (marker or suite-wide flag, same guard) "
        f"| {guard['guard_ms_per_test']:.3f} ms |",
        f"| before: full collection per test (`no_leaks`) | {guard['full_gc_ms']:.3f} ms |",
        f"| before: young collection per test (suite-wide) | {guard['young_gc_ms']:.3f} ms |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/testing.json"))
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()

    cases: dict[str, dict[str, Any]] = {}
    for name, (case, expected) in CASES.items():
        times: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
        virtual: dict[str, float] = {}
        for _ in range(args.runs):
            for clock, run in CLOCKS.items():
                real, virtual[clock] = run(case)
                times[clock].append(real)
                if abs(virtual[clock] - expected) > 0.01 * expected:
                    raise SystemExit(f"{name} under {clock}: {virtual[clock]} virtual s")
        cases[name] = {
            clock: {
                "median_s": statistics.median(times[clock]),
                "runs_s": times[clock],
                "virtual_s": virtual[clock],
            }
            for clock in CLOCKS
        }
        print(name, {c: round(v["median_s"], 3) for c, v in cases[name].items()}, flush=True)

    plugin_import_seconds()  # untimed: bytecode written, files in the page cache
    imports = [plugin_import_seconds() for _ in range(max(args.runs, 11))]
    result: dict[str, Any] = {
        "command": ("python benchmarks/testing.py " + " ".join(sys.argv[1:])).strip(),
        "python": platform.python_version(),
        "machine": f"{os.cpu_count()} CPUs {platform.machine()}",
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "runs": args.runs,
        "cases": cases,
        "startup": {
            "median_ms": statistics.median(r for r, _ in imports) * 1000,
            "median_cpu_ms": statistics.median(c for _, c in imports) * 1000,
            "runs_s": imports,
        },
        "guard": guard_costs(args.runs),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
