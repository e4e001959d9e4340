"""Following the server's real limit: every FakeAPI profile x the user's ceiling, real time.

One command (from the repository root)::

    python benchmarks/adaptive.py                       # 20 s per case, 3 cases at once
    python benchmarks/adaptive.py --seconds 15 --parallel 3 --json out.json

Each case runs in its own process: a FakeAPI enforcing ``--limit`` requests per minute
the way one provider does (``openai``, ``azure``, ``anthropic``, ``litellm``,
``silent``, ``shared``), and an :class:`~headway.http.Endpoint` (its default policy: an
:class:`~headway.limits.AdaptiveLimiter`, rate 429s waited out) with ``rpm`` set to
nothing, 0.5x, 1x, 2x or 10x the real limit. ``--workers`` callers send chat requests
back to back for ``--seconds`` seconds.

Reported per case, from the server's journal (arrival times, as the server saw them):

* **achieved**: requests admitted per minute after the first ``--warmup`` seconds, as a
  fraction of the real limit (for ``shared``, of the limit: another client takes
  0-80% of it by turns, so the fraction is bounded by what is left: the refill the
  other client leaves over the counted span, plus what the server's bucket held at its
  start less what it holds at its end);
* **429 share**: answers that were 429, of all answers;
* **failed**: calls that raised (a line written as failed by ``headway run``);
* **max/min**: the most admissions in any 60 s window scaled from the busiest 10 s one,
  against the user's ceiling (never above it).

Bars (issue 10): 0 failed everywhere; >= 95% of the real limit when the ceiling is above
it (>= 97% for openai/anthropic); <= 2% answered 429; never above the user's ceiling.
A measurement, not a test: exits 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROFILES = ("openai", "azure", "anthropic", "litellm", "silent", "shared")
CEILINGS: tuple[float | None, ...] = (None, 0.5, 1.0, 2.0, 10.0)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def one_case(profile: str, ceiling: float | None, args: argparse.Namespace) -> dict[str, Any]:
    from headway.errors import APIClientError
    from headway.http import Endpoint
    from headway.testing import FakeAPI

    limit = args.limit
    rpm = None if ceiling is None else ceiling * limit
    failed = 0
    ok = 0
    # The shared profile gets a bucket of a few seconds (a minute's worth would hide the
    # other client for the whole run).
    burst = limit / 60.0 * args.shared_burst if profile == "shared" else None
    async with FakeAPI(profile=profile, rpm=limit, burst=burst, journal_limit=None) as api:
        config = {
            "base_url": api.url + "/v1",
            "endpoint": "chat/completions",
            "rpm": rpm,
            "concurrency": args.workers,
            "max_retries": 3,
            "auth_type": "none",
        }
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + args.seconds
        async with Endpoint(config) as endpoint:

            async def worker() -> None:
                nonlocal failed, ok
                while loop.time() < end:
                    try:
                        await endpoint.call(BODY)
                        ok += 1
                    except APIClientError:
                        failed += 1

            async def level_at(when: float) -> float:
                # The server's requests bucket at clock time `when` (the shared profile).
                await asyncio.sleep(max(0.0, when - loop.time()))
                meter = api.limits.meters(loop.time())[0]
                return float(meter.level) if meter is not None else 0.0

            levels = asyncio.gather(level_at(t0 + args.warmup), level_at(end))
            await asyncio.gather(*(worker() for _ in range(args.workers)))
            level_start, level_end = await levels
            limiter = endpoint.policy.limiter
            in_force = limiter.rate_in_force() if limiter is not None else None  # type: ignore[attr-defined]
        entries = list(api.requests)
        limits = api.limits
        other = getattr(limits, "other_share", None)
        if other is not None:  # the share of the limit left for us, on average
            steps = [
                t0 + args.warmup + i * 0.1 for i in range(int((args.seconds - args.warmup) * 10))
            ]
            available = sum(1.0 - other(t) for t in steps) / max(1, len(steps))
            # What the bucket held at the start of the count and still holds at its end
            # is available too (a few seconds' worth moves the share by much in 10 s).
            span = args.seconds - args.warmup
            available += (level_start - level_end) / (limit / 60.0 * span) if span > 0 else 0.0
        else:
            available = 1.0
    admitted = sorted(r.time - t0 for r in entries if r.status == 200)
    answered = [r for r in entries if r.status is not None]
    n429 = sum(1 for r in answered if r.status == 429)
    warm = [t for t in admitted if args.warmup <= t < args.seconds]
    span = args.seconds - args.warmup
    achieved = len(warm) / span * 60.0 / limit if span > 0 else 0.0
    busiest = _max_in_window(admitted, 10.0) * 6.0  # per minute, from the busiest 10 s
    # Above the ceiling: more admissions than the ceiling allows over their span (its
    # rate, plus the burst of one second's worth, plus the first call).
    # Callers that started before the end are admitted after it: count over the span of
    # the admissions themselves.
    span_all = admitted[-1] - admitted[0] if len(admitted) > 1 else 0.0
    allowance = None if rpm is None else rpm * span_all / 60.0 + rpm / 60.0 + 1.0
    return {
        "profile": profile,
        "ceiling_x": ceiling,
        "achieved_x": achieved,
        "share_429": n429 / len(answered) if answered else 0.0,
        "n429": n429,
        "answers": len(answered),
        "failed": failed,
        "ok": ok,
        "busiest_10s_per_min": busiest,
        "admitted": len(admitted),
        "span": span_all,
        "allowance": allowance,
        "over_ceiling": allowance is not None and len(admitted) > allowance,
        "available_x": available,
        "rate_in_force": in_force,
    }


def _max_in_window(times: list[float], width: float) -> int:
    best = j = 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] <= start + width:
            j += 1
        best = max(best, j - i + 1)
    return best


def run_case_process(
    profile: str, ceiling: float | None, args: argparse.Namespace
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--case",
        f"{profile}:{'none' if ceiling is None else ceiling}",
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--limit",
        str(args.limit),
        "--workers",
        str(args.workers),
        "--shared-burst",
        str(args.shared_burst),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    except (IndexError, ValueError):
        return {"profile": profile, "ceiling_x": ceiling, "error": out.stderr[-2000:]}


def markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Following the server's real limit",
        "",
        f"Command: `{command}`  ",
        f"Real limit {result['limit']:g}/min, {result['seconds']:g} s per case (achieved counted "
        f"after {result['warmup']:g} s), {result['workers']} callers, {result['parallel']} cases "
        f"at once; Python {result['python']}, {result['cpus']} CPUs, load average "
        f"{result['load_average_1m']:.1f} at the end (a shared, loaded machine).",
        "",
        "| profile | user ceiling | achieved (of real limit) | 429 share | failed | busiest 10 s "
        "(per min) | admitted (ceiling allows) | rate in force at the end |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in result["cases"]:
        ceiling = "none" if r.get("ceiling_x") is None else f"{r['ceiling_x']:g}x"
        if "error" in r:
            lines.append(f"| {r['profile']} | {ceiling} | error | | | | | |")
            continue
        rif = r.get("rate_in_force")
        shown = f"{rif[0]:,.0f}/min ({rif[1]})" if rif else "n/a"
        achieved = f"{r['achieved_x'] * 100:.1f}%"
        if r.get("available_x", 1.0) < 1.0:
            share = r["achieved_x"] / r["available_x"] * 100
            achieved += f" ({share:.0f}% of the {r['available_x'] * 100:.0f}% left)"
        allowed = "" if r["allowance"] is None else f" ({r['allowance']:.0f})"
        over = " **above**" if r["over_ceiling"] else ""
        lines.append(
            f"| {r['profile']} | {ceiling} | {achieved} "
            f"| {r['share_429'] * 100:.2f}% ({r['n429']}/{r['answers']}) | {r['failed']} "
            f"| {r['busiest_10s_per_min']:.0f} | {r['admitted']}{allowed}{over} | {shown} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--limit", type=float, default=1200.0, help="the real limit, per min")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument(
        "--shared-burst",
        type=float,
        default=5.0,
        help="seconds of the limit the shared bucket holds",
    )
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/adaptive.json"))
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    if args.case:
        profile, _, c = args.case.partition(":")
        ceiling = None if c == "none" else float(c)
        print(json.dumps(asyncio.run(one_case(profile, ceiling, args))))
        return
    cases = [(p, c) for p in args.profiles.split(",") for c in CEILINGS]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(lambda pc: run_case_process(pc[0], pc[1], args), cases))
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "limit": args.limit,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "workers": args.workers,
        "parallel": args.parallel,
        "wall_seconds": time.monotonic() - started,
        "cases": results,
    }
    command = ("python benchmarks/adaptive.py " + " ".join(sys.argv[1:])).strip()
    result["command"] = command
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result, command)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
