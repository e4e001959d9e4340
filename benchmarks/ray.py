"""One global limit across Ray Data actors: headway's UDF against Ray Data's own HTTP stage.

One command (from the repository root, with the ray extra installed)::

    python benchmarks/ray.py                  # 4 actors, 6,000 RPM, ~30 s each, 1 run
    python benchmarks/ray.py --runs 3 --seconds 20

A FakeAPI runs in a subprocess (``python benchmarks/ray.py --serve``: FakeAPI with the
account's limit, enforced as a token bucket that answers 429 beyond it, plus a route
that hands back its journal). One local Ray (``num_cpus=2``, no dashboard) runs, in
turn, for each run:

* **headway**: ``headway.ray.run(ds, endpoint, output=...)`` — ``Caller`` actors sharing
  one limit of ``--rpm`` through the named-actor backend (its default burst: a tenth of
  a second's worth).
* **ray.data.llm**: ``build_processor(HttpRequestProcessorConfig(url=..., qps=rpm / 60
  / actors, concurrency=(actors, actors), max_retries=...))`` — Ray Data's HTTP stage,
  with the limit split evenly over the actors as its ``qps`` is per actor (and
  ``num_cpus=0.25`` per actor, as headway's, so that all of them fit in 2 CPUs).

Both get the same rows (``rpm / 60 * seconds`` chat requests, JSON bodies, a
``custom_id`` each) and ``--actors`` actors. Reported, from the server's journal: the
achieved rate of accepted requests after the first second (where a burst may go) to the
last arrival, its error against the limit, the most arrivals in any 1 s and 10 s window
(bounds: the limit plus the burst), 429s answered; from the output: failed rows (an
error, or missing) and duplicated ``custom_id``\\ s; for headway, the reservations the
state actor made per round trip (batching). A measurement, not a test: exits 0 whatever
the numbers. Writes ``benchmarks/results/ray.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

# This file is called ray.py: keep ``import ray`` from finding it instead of Ray.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


# -- the server process -----------------------------------------------------------------
def serve(rpm: float, burst: float) -> None:
    """FakeAPI with the limit, plus ``GET /_journal`` (arrival time, status) and
    ``POST /_reset`` (forget the journal, refill the bucket)."""
    from aiohttp import web

    from headway.testing import FakeAPI

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        api = FakeAPI(rpm=rpm, burst=burst, seed=0)

        async def journal(_request: web.Request) -> web.Response:
            rows = [
                [r.time, r.status, (r.json or {}).get("messages", [{}])[-1].get("content")]
                for r in api.requests
                if r.path == "/v1/chat/completions"
            ]
            return web.json_response(rows)

        async def reset(_request: web.Request) -> web.Response:
            api.reset()
            return web.json_response({"ok": True})

        api.route("GET", "/_journal", journal)
        api.route("POST", "/_reset", reset)
        async with api:
            print(f"listening on {api.url}", flush=True)
            await stop.wait()

    asyncio.run(main())


class Server:
    def __init__(self, rpm: float, burst: float) -> None:
        argv = [sys.executable, __file__, "--serve", "--rpm", str(rpm), "--burst", str(burst)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = match.group(1)

    def _call(self, method: str, path: str) -> Any:
        import urllib.request

        req = urllib.request.Request(
            self.url + path, method=method, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())

    def journal(self) -> list[list[Any]]:
        rows: list[list[Any]] = self._call("GET", "/_journal")
        return rows

    def reset(self) -> None:
        self._call("POST", "/_reset")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the contenders ---------------------------------------------------------------------
def _rows(n: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "body": json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": f"{tag}-{i}"}]}
            ),
        }
        for i in range(n)
    ]


def run_headway(
    ray: Any, url: str, rows: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    import headway.ray as hr
    from headway.backends.ray import RayBackend

    out_dir = Path(tempfile.mkdtemp(prefix="headway-ray-bench-"))
    backend_name = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    state = RayBackend(backend_name).actor  # held here, to read its counts at the end
    try:
        t0 = time.monotonic()
        hr.run(
            ray.data.from_items(rows),
            {
                "base_url": url + "/v1",
                "endpoint": "chat/completions",
                "auth_type": "none",
                "rpm": args.rpm,
                "max_retries": args.max_retries,
                "concurrency": 64,
            },
            output=out_dir,
            actors=args.actors,
            batch_size=args.batch_size,
            backend_name=backend_name,
        )
        wall = time.monotonic() - t0
        trips = ray.get(state.stats.remote())
        ray.kill(state)
        ids: Counter[str] = Counter()
        failed = 0
        with open(out_dir / "results.jsonl") as f:
            for line in f:
                rec = json.loads(line)
                ids[rec["custom_id"]] += 1
                failed += rec["error"] is not None
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    per_trip = trips["reservations"] / max(1, trips["trips"])
    return {"ids": ids, "failed_rows": failed, "wall": wall, "per_trip": round(per_trip, 2)}


def run_ray_llm(
    ray: Any, url: str, rows: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    qps = max(1, int(args.rpm / 60 / args.actors))
    config = HttpRequestProcessorConfig(
        url=url + "/v1/chat/completions",
        qps=qps,
        concurrency=(args.actors, args.actors),  # an int n means an autoscaling (1, n)
        batch_size=args.batch_size,
        max_retries=args.max_retries,
        http_request_stage={"num_cpus": 0.25},  # as headway's actors: fit 2 CPUs
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {"custom_id": row["custom_id"], "payload": json.loads(row["body"])},
        postprocess=lambda row: {
            "custom_id": row["custom_id"],
            "error": row.get("__inference_error__") or "",
            "ok": isinstance(row.get("http_response"), dict) and "choices" in row["http_response"],
        },
    )
    t0 = time.monotonic()
    ids: Counter[str] = Counter()
    failed = 0
    error = None
    try:
        for row in processor(ray.data.from_items(rows)).iter_rows():
            ids[row["custom_id"]] += 1
            failed += bool(row["error"]) or not row["ok"]
    except Exception as exc:  # the stage raises when a row runs out of retries
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return {
        "ids": ids,
        "failed_rows": failed,
        "wall": time.monotonic() - t0,
        "error": error,
        "qps": qps,
    }


# -- measuring --------------------------------------------------------------------------
def worst(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def measure(
    name: str, journal: list[list[Any]], got: dict[str, Any], n: int, args: argparse.Namespace
) -> dict[str, Any]:
    ok_times = sorted(t for t, status, _ in journal if status == 200)
    all_times = sorted(t for t, _, _ in journal)
    limit_s = args.rpm / 60.0
    # the steady rate: accepted arrivals after the first second (where a burst may go)
    steady = [t for t in ok_times if t > ok_times[0] + 1.0] if ok_times else []
    span = (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    rate = (len(steady) - 1) / span if span > 0 else 0.0
    ids: Counter[str] = got["ids"]
    missing = n - len(ids)
    return {
        "name": name,
        "rows": n,
        "accepted": len(ok_times),
        "rate_per_s": round(rate, 2),
        "rate_error_pct": round((rate / limit_s - 1) * 100, 2) if rate else None,
        "worst_1s": worst(all_times, 1.0),
        "worst_10s": worst(all_times, 10.0),
        "bound_1s": int(limit_s + args.burst),
        "bound_10s": int(limit_s * 10 + args.burst),
        "http_429": sum(1 for _, status, _ in journal if status == 429),
        "failed_rows": got["failed_rows"] + missing,
        "duplicated": sum(1 for c in ids.values() if c > 1),
        "wall_s": round(got["wall"], 1),
        "reservations_per_trip": got.get("per_trip"),
        "error": got.get("error"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rpm", type=float, default=6000.0)
    p.add_argument("--burst", type=float, default=None, help="default: one second's worth")
    p.add_argument("--actors", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-retries", type=int, default=5)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--only", choices=["headway", "ray.data.llm"], default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "ray.json")
    p.add_argument("--dump", help="also write each run's server journal to DUMP-NAME-RUN.json")
    args = p.parse_args()
    if args.burst is None:
        args.burst = args.rpm / 60.0
    if args.serve:
        serve(args.rpm, args.burst)
        return

    import ray

    n = int(args.rpm / 60.0 * args.seconds)
    server = Server(args.rpm, args.burst)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    contenders = {"headway": run_headway, "ray.data.llm": run_ray_llm}
    if args.only:
        contenders = {args.only: contenders[args.only]}
    results: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            for name, fn in contenders.items():
                server.reset()
                time.sleep(args.burst / (args.rpm / 60.0) + 0.5)  # a full bucket for each
                rows = _rows(n, f"{name}-{run}")
                got = fn(ray, server.url, rows, args)
                journal = server.journal()
                if args.dump:
                    Path(f"{args.dump}-{name}-{run}.json").write_text(json.dumps(journal))
                m = measure(name, journal, got, n, args)
                m["run"] = run
                results.append(m)
                print(json.dumps(m), flush=True)
    finally:
        ray.shutdown()
        server.stop()
    write(results, args)


def write(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rpm": args.rpm,
        "burst": args.burst,
        "actors": args.actors,
        "seconds": args.seconds,
        "batch_size": args.batch_size,
        "max_retries": args.max_retries,
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    cols = [
        "name",
        "run",
        "rows",
        "rate_per_s",
        "rate_error_pct",
        "worst_1s",
        "bound_1s",
        "worst_10s",
        "bound_10s",
        "http_429",
        "failed_rows",
        "duplicated",
        "reservations_per_trip",
        "wall_s",
    ]
    lines = [
        f"# Ray: {args.actors} actors, one limit of {args.rpm:g} RPM (burst {args.burst:g})",
        "",
        f"`python benchmarks/ray.py --runs {args.runs} --seconds {args.seconds:g}` "
        f"({meta['cpus']} CPUs shared with other jobs, Python {meta['python']}).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in results:
        lines.append("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    errors = [f"* {r['name']} run {r['run']}: {r['error']}" for r in results if r.get("error")]
    if errors:
        lines += ["", "Errors:", "", *errors]
    medians = []
    for name in dict.fromkeys(r["name"] for r in results):
        rates = [r["rate_per_s"] for r in results if r["name"] == name]
        medians.append(
            f"* {name}: median rate {statistics.median(rates):.2f}/s over {len(rates)} run(s)"
        )
    lines += ["", *medians, ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
