"""The resume filter of ``headway.ray.run`` on a local Ray: how long dropping the done rows takes.

One command (from the repository root; needs the ``ray`` extra)::

    python benchmarks/ray_resume.py --rows 300000 --done 1000000 --blocks 400

A dataset of ``--rows`` ids in ``--blocks`` blocks (a folder of that many JSONL files reads
as about that many) is filtered against ``--done`` ids already in the output, as a resume
does before it sends anything, three ways: headway's lookup (a pandas Index of the done ids,
built once per worker process and run; what a resume uses up to ``JOIN_AT`` done ids),
headway's join (Ray Data's hash-shuffled anti-join, past ``JOIN_AT``), and the filter the
lookup replaced (pyarrow's ``is_in``, which builds its hash table of the done ids again for
every block). Alternating, ``--runs`` rounds; prints the seconds of each and the rows left
(the same for all).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

# benchmarks/ray.py would shadow the ray package for a script run from this folder
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def is_in_per_block(batch: Any, done: Any, id_column: str) -> Any:
    """The filter before: pyarrow's is_in, its hash table of ``done`` built per call."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pc.cast(batch[id_column], pa.string())
    return batch.filter(pc.invert(pc.is_in(ids, value_set=done)))


class _Done:
    """What ``_without_done`` reads of a ledger: the count of done ids, and the ids."""

    def __init__(self, n: int) -> None:
        self.skip = range(n)

    def done_ids(self) -> Any:
        return (f"req-{i}" for i in range(len(self.skip)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--done", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=400)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    import pyarrow as pa

    import ray
    from headway.ray import _run

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ids = pa.table({"custom_id": [f"req-{i}" for i in range(args.rows)]})
        rows = ray.data.from_arrow(ids).repartition(args.blocks).materialize()
        done = _run._id_array(f"req-{i}" for i in range(args.done))
        ledger = _Done(args.done)
        times: dict[str, list[float]] = {"lookup": [], "join": [], "is_in per block": []}
        for _ in range(args.runs):
            for name in times:
                t0 = time.perf_counter()
                if name == "is_in per block":
                    kwargs = {"done": done, "id_column": "custom_id"}
                    left = rows.map_batches(
                        is_in_per_block, fn_kwargs=kwargs, batch_format="pyarrow"
                    ).count()
                else:
                    _run.JOIN_AT = 0 if name == "join" else args.done
                    left = _run._without_done(rows, ledger, "custom_id").count()  # type: ignore[arg-type]
                times[name].append(time.perf_counter() - t0)
                print(f"{name}: {left:,} of {args.rows:,} rows left in {times[name][-1]:.1f} s")
        print(
            f"{args.rows:,} rows in {args.blocks} blocks, {args.done:,} done, median of "
            f"{args.runs}: "
            + ", ".join(f"{k} {statistics.median(v):.1f} s" for k, v in times.items())
        )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
