"""``python benchmarks/batch.py batchapi``: 200,000 lines through ``headway run --via batch``.

The server is ``headway serve-fake --batch-seconds 30`` in its own process (each batch is
in progress for 30 s, its lines finishing evenly over them); the run is the real console
script under ``/usr/bin/time -v``. Reported: wall time, the run's peak RSS (bound:
250 MB), the files uploaded and batches created (from the sidecar state), exactly-once.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from batch import (
    HEADWAY,
    RESULTS,
    Server,
    ids_exactly_once,
    run_command,
    run_with_peak_rss,
    write_input,
)


def bench_batchapi(lines: int = 200_000, seconds: float = 30.0) -> dict[str, Any]:
    server = Server([*HEADWAY, "serve-fake", "--batch-seconds", str(seconds)])
    try:
        with tempfile.TemporaryDirectory() as d:
            inp, out, summ = Path(d) / "in.jsonl", Path(d) / "out.jsonl", Path(d) / "s.json"
            write_input(inp, lines)
            size_mb = inp.stat().st_size / 1e6
            flags = ["--via", "batch", "--poll-interval", "1", "--max-poll-interval", "5"]
            cmd = run_command(inp, out, server.url, *flags, summary=summ)
            wall, rss_mb = run_with_peak_rss(cmd)
            summary = json.loads(summ.read_text())
            state = json.loads(Path(f"{out}.batches.json").read_text())
            parts = state["parts"]
            check = ids_exactly_once(inp, out)
    finally:
        server.stop()
    return {
        "command": "/usr/bin/time -v " + " ".join(["headway", *cmd[3:]]).replace(d, "$TMP"),
        "server": f"headway serve-fake --batch-seconds {seconds:g}",
        "lines": lines,
        "input_mb": round(size_mb, 1),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(rss_mb, 1),
        "uploads": sum(1 for p in parts if p.get("file_id")),
        "batches": len({p["batch_id"] for p in parts if p.get("batch_id")}),
        "succeeded": summary["succeeded"],
        "exactly_once": check["exactly_once"],
        "pass": rss_mb <= 250 and check["exactly_once"],
    }


def report(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# headway run --via batch: 200,000 lines through the Batch API",
            "",
            f"`{r['command']}` against `{r['server']}` (another process).",
            "",
            "| lines | input | wall | peak RSS | uploads | batches | succeeded | exactly once |",
            "|---|---|---|---|---|---|---|---|",
            f"| {r['lines']:,} | {r['input_mb']} MB | {r['wall_s']} s | {r['peak_rss_mb']} MB "
            f"| {r['uploads']} | {r['batches']} | {r['succeeded']:,} | {r['exactly_once']} |",
            "",
            f"Bound: peak RSS <= 250 MB and exactly once: {'pass' if r['pass'] else 'FAIL'}.",
        ]
    )


def main(lines: int, write: bool) -> None:
    result = bench_batchapi(lines)
    print(json.dumps(result, indent=2), flush=True)
    if write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "batchapi.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "batchapi.md").write_text(report(result) + "\n")
        print(f"wrote {RESULTS / 'batchapi.md'}")
