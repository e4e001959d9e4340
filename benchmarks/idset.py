"""Peak memory of the batch runner's custom_id handling: a resume over N ids (not a test).

    python benchmarks/idset.py [--ids 3000000] [--old PATH/src]

Writes an input of N lines and an output that already holds a result for each, then, in a
fresh process per tree, times and measures a :class:`~headway.batch.BatchRunner` resume over
them: the ledger reads the output (its sets of done ids), the runner reads every input
line (its set of ids seen, for repeats) and skips each one. Nothing is sent, so the
growth of peak RSS over the process's size after imports is the id handling alone.
``--old`` runs the same child on another source tree (e.g. main's, unpacked) for a
before/after row. Results print as JSON; the lines carry no ``request_digest``, so the
resume check's digest map (not an id set) stays empty here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def write_files(d: Path, n: int) -> tuple[Path, Path]:
    inp, out = d / "in.jsonl", d / "out.jsonl"
    with open(inp, "w") as f:
        for i in range(n):
            f.write(f'{{"custom_id": "request-{i:09d}", "body": {{"n": {i}}}}}\n')
    with open(out, "w") as f:
        for i in range(n):
            f.write(
                f'{{"id": "batch_req_{i:024x}", "custom_id": "request-{i:09d}", '
                '"response": {"status_code": 200, "request_id": null, "body": {}}, '
                '"error": null}\n'
            )
    return inp, out


def child(inp: str, out: str) -> None:
    import asyncio

    from headway.batch import BatchRunner, Response

    async def never(request: Any) -> Response:  # every line is done already
        raise AssertionError("nothing is sent on this resume")

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    runner = BatchRunner(never, inp, out)
    stats = asyncio.run(runner.run())
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    leftovers = sorted(p for p in os.listdir(os.path.dirname(out)) if "headway-ids" in p)
    print(
        json.dumps(
            {
                "skipped": stats.skipped,
                "base_rss_mb": round(base / 1024, 1),
                "peak_rss_mb": round(peak / 1024, 1),
                "id_handling_mb": round((peak - base) / 1024, 1),
                "wall_s": round(wall, 1),
                "files_left": leftovers,
            }
        )
    )


def measure(src: str | None, inp: Path, out: Path) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    cmd = [sys.executable, __file__, "_child", str(inp), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_child":
        child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=3_000_000)
    parser.add_argument("--old", help="the src directory of the tree to compare with")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent.parent / "src")
    trees = [("this tree", here)] + ([("old", args.old)] if args.old else [])
    with tempfile.TemporaryDirectory() as d:
        inp, out = write_files(Path(d), args.ids)
        for name, src in trees:
            row = measure(src, inp, out)
            print(json.dumps({"tree": name, "ids": args.ids, **row}))


if __name__ == "__main__":
    main()
