"""A fleet sharing one limit through Redis while Redis is killed, restarted, frozen, thawed.

    python benchmarks/redis_outage.py [--workers 4] [--rate 100] [--seconds 14]

Starts its own ``redis-server`` on a free port (stopped by its PID), runs ``--workers``
:class:`~headway.backends.RedisBackend` workers in one process, each with 16 tasks
reserving as fast as the shared limit admits, and records every admission time. At 2 s
Redis is killed (SIGKILL), at 4 s restarted (empty), at 7 s frozen (SIGSTOP), at 9 s
thawed (SIGCONT). Reports the most admissions in any 1 s window (sliding, after the first
second's burst), as a ratio of the shared limit; the bar is 1.1x. Admissions are counted
at the time the limiter scheduled them (when ``reserve`` returned plus the wait it gave);
``peak_ratio_by_wake_time`` counts them when the waiting task woke up instead, which on
a loaded machine adds the event loop's lateness (a late wake-up bunches admissions).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

from headway.backends import RedisBackend


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("redis-server did not start")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None


def max_window(times: list[float], start: float, width: float = 1.0) -> tuple[int, float]:
    """Most admissions in any window of ``width`` seconds starting at or after ``start``."""
    times = sorted(t for t in times if t >= start)
    best, at = 0, start
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + width)
        if j - i > best:
            best, at = j - i, t
    return best, at


async def fleet(
    url: str,
    redis: Redis,
    workers: int,
    rate: float,
    seconds: float,
    timeout: float = 0.1,
    retry_interval: float = 0.2,
) -> dict[str, Any]:
    backends = [
        RedisBackend(url, prefix="bench:", timeout=timeout, retry_interval=retry_interval)
        for _ in range(workers)
    ]
    for b in backends:
        await b.ping()
    limiters = [b.limiter("api", rps=rate, burst=rate) for b in backends]
    for lim in limiters:  # each worker registers (presence) before the clock starts
        await lim.flush()
    admitted: list[float] = []  # when each caller woke up, admitted
    scheduled: list[float] = []  # when the limiter said it would be admitted
    t0 = time.monotonic()
    stop_at = t0 + seconds

    async def task(lim: Any) -> None:
        while time.monotonic() < stop_at:
            res = await lim.reserve()
            due = time.monotonic() + res.delay
            await res.wait()
            now = time.monotonic()
            if now < stop_at:
                admitted.append(now - t0)
                scheduled.append(due - t0)

    async def chaos() -> list[str]:
        log = []
        for at, what in ((2.0, "kill"), (4.0, "restart"), (7.0, "freeze"), (9.0, "thaw")):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "kill":
                redis.signal(signal.SIGKILL)
            elif what == "restart":
                redis.start()
            elif what == "freeze":
                redis.signal(signal.SIGSTOP)
            else:
                redis.signal(signal.SIGCONT)
            log.append(f"{time.monotonic() - t0:.2f}s {what}")
        return log

    tasks = [asyncio.create_task(task(lim)) for lim in limiters for _ in range(16)]
    log = await chaos()
    await asyncio.gather(*tasks)
    for b in backends:
        await b.aclose()
    peak, at = max_window(scheduled, start=1.0)
    woke, woke_at = max_window(admitted, start=1.0)
    per_phase = {}
    for name, lo, hi in (
        ("steady", 1.0, 2.0),
        ("kill", 2.0, 4.0),
        ("restart", 4.0, 7.0),
        ("freeze", 7.0, 9.0),
        ("thaw", 9.0, seconds),
    ):
        n, _ = max_window([t for t in scheduled if t < hi], start=lo)
        per_phase[name] = round(n / rate, 3)
    return {
        "workers": workers,
        "rate": rate,
        "seconds": seconds,
        "timeout": timeout,
        "retry_interval": retry_interval,
        "admitted": len(admitted),
        "events": log,
        "peak_1s": peak,
        "peak_at_s": round(at, 2),
        "peak_ratio": round(peak / rate, 3),
        "peak_ratio_by_phase": per_phase,
        "peak_ratio_by_wake_time": round(woke / rate, 3),
        "peak_by_wake_time_at_s": round(woke_at, 2),
        "pass": peak / rate <= 1.1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=14.0)
    parser.add_argument("--timeout", type=float, default=0.1, help="RedisBackend timeout")
    parser.add_argument("--retry-interval", type=float, default=0.2, help="probe interval")
    args = parser.parse_args()
    redis = Redis()
    redis.start()
    try:
        result = asyncio.run(
            fleet(
                redis.url,
                redis,
                args.workers,
                args.rate,
                args.seconds,
                args.timeout,
                args.retry_interval,
            )
        )
    finally:
        redis.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
