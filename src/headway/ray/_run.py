"""``headway.ray.run``: a dataset's requests to one results file, exactly once, resumable."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import math
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from headway._idset import IdSet
from headway.batch.ledger import Ledger, Result
from headway.batch.progress import NullProgress, ProgressReporter
from headway.batch.summary import BatchStats
from headway.http.config import EndpointConfig
from headway.limits.adaptive import describe_learned
from headway.ray._caller import Caller, check_backend, default_limit_name

__all__ = ["note_learned", "output_file", "result_of_row", "run", "to_parquet"]

#: The file written inside an output directory.
RESULTS_NAME = "results.jsonl"
#: Next to a ``.parquet`` output: the JSONL ledger it is made from (what a rerun reads).
LEDGER_SUFFIX = ".ledger.jsonl"


def output_file(output: str | os.PathLike[str]) -> str:
    """The results file for ``output``: the file itself, or ``results.jsonl`` in a directory.

    ``output`` is a directory when it is one already, ends with a separator or has no
    file extension. For a ``.parquet`` output it is the JSONL ledger next to it.

    >>> output_file("out/results.jsonl"), output_file("out/"), output_file("runs/day1")
    ('out/results.jsonl', 'out/results.jsonl', 'runs/day1/results.jsonl')
    >>> output_file("out/results.parquet")
    'out/results.parquet.ledger.jsonl'
    """
    path = os.fspath(output)
    if path.endswith(".parquet"):
        return path + LEDGER_SUFFIX
    if (
        path.endswith(("/", os.sep))
        or os.path.isdir(path)
        or not os.path.splitext(os.path.basename(path))[1]
    ):
        return os.path.join(path, RESULTS_NAME)
    return path


def result_of_row(row: Mapping[str, Any], id_column: str = "custom_id") -> Result:
    """The ledger :class:`~headway.batch.Result` of one output row of :class:`Caller`."""
    text = row.get("response")
    body = None if text is None else orjson.loads(text)
    code = row.get("error_code")
    return Result(
        str(row[id_column]),
        row.get("status_code"),
        row.get("request_id"),
        body,
        None if code is None else {"code": code, "message": row.get("error_message") or ""},
        float(row.get("latency") or 0.0),
        int(row.get("attempts") or 1),
        int(row.get("usage_tokens") or 0),
    )


def to_parquet(
    ledger: str | os.PathLike[str], output: str | os.PathLike[str], *, rows: int = 50_000
) -> int:
    """Write the results of a JSONL ledger as a Parquet file; return how many.

    Columns: ``custom_id``, ``status_code``, ``request_id``, ``body`` (JSON text),
    ``error_code``, ``error_message``. Streams ``rows`` results at a time, so a ledger of
    any size fits in memory; the file is written aside and renamed into place.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("custom_id", pa.string()),
            ("status_code", pa.int64()),
            ("request_id", pa.string()),
            ("body", pa.string()),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
        ]
    )
    out = os.fspath(output)
    part = out + ".part"
    count = 0
    with open(ledger, "rb") as f, pq.ParquetWriter(part, schema) as writer:
        chunk: list[dict[str, Any]] = []
        for line in f:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut by a crash (repaired by the next run)
            response = record.get("response") or {}
            error = record.get("error") or {}
            body = response.get("body")
            chunk.append(
                {
                    "custom_id": record.get("custom_id"),
                    "status_code": response.get("status_code"),
                    "request_id": response.get("request_id"),
                    "body": None if body is None else orjson.dumps(body).decode(),
                    "error_code": error.get("code"),
                    "error_message": error.get("message"),
                }
            )
            if len(chunk) >= rows:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                count += len(chunk)
                chunk = []
        if chunk or not count:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            count += len(chunk)
    os.replace(part, out)
    return count


def _id_chunks(ids: Iterable[str], chunk: int = 65_536) -> Iterator[Any]:
    """The ids as Arrow string arrays of ``chunk`` ids each, one at a time."""
    import pyarrow as pa

    ids = iter(ids)
    while part := list(itertools.islice(ids, chunk)):
        yield pa.array(part, type=pa.string())


def _id_array(ids: Iterable[str], chunk: int = 65_536) -> Any:
    """The ids as an Arrow string array (chunked), built a chunk at a time: no Python list
    of them all, and no 2 GiB limit of one string array.

    >>> _id_array(iter(["a", "b", "c"]), chunk=2).to_pylist()  # doctest: +SKIP
    ['a', 'b', 'c']
    """
    import pyarrow as pa

    return pa.chunked_array(list(_id_chunks(ids, chunk)), type=pa.string())


# The done ids of a run as a pandas Index, per worker process: its hash table is built once
# (a quarter second a million ids) and each block is then looked up in it (a quarter
# millisecond for 1,024 rows). pyarrow's is_in built that table again for every block: with
# a million ids done, 0.14-0.23 s a block. Only the last run's is kept.
_DONE_INDEX: dict[str, Any] = {}


def _drop_done(batch: Any, done: Any, id_column: str, run: str = "") -> Any:
    """``batch`` without the rows whose id is in ``done`` (``run``: names ``done``, so
    that a worker process builds its lookup once per run)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    index = _DONE_INDEX.get(run) if run else None
    if index is None:
        import pandas as pd

        index = pd.Index(done.to_pandas(), dtype=object).drop_duplicates()  # an id twice
        _DONE_INDEX.clear()
        if run:
            _DONE_INDEX[run] = index
    ids = pc.cast(batch[id_column], pa.string()).to_pandas()
    return batch.filter(pa.array(index.get_indexer(ids) < 0))


#: Past this many done ids a resume drops them with Ray Data's anti-join (hash-shuffled:
#: each join worker holds a share of the ids), not with a lookup of them all in every
#: worker process. Needs ``polars`` (in the ``ray`` extra); without it, the lookup.
JOIN_AT = 2_000_000
#: Done ids per partition of that join.
JOIN_PARTITION = 1_000_000
_KEY = "__headway_id__"


def _with_key(batch: Any, id_column: str) -> Any:
    """``batch`` with its id as text in a column of its own, the join's key."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return batch.append_column(_KEY, pc.cast(batch[id_column], pa.string()))


def _without_done(ds: Any, ledger: Ledger, id_column: str) -> Any:
    """``ds`` without the rows whose id the output already holds (``ledger.skip``)."""
    done = len(ledger.skip)
    if done > JOIN_AT and importlib.util.find_spec("polars") is not None:
        import pyarrow as pa

        import ray

        refs: list[Any] = [
            ray.put(pa.table({_KEY: part}))
            for part in _id_chunks(ledger.done_ids(), chunk=JOIN_PARTITION)
        ]
        keyed = ds.map_batches(
            _with_key, fn_kwargs={"id_column": id_column}, batch_format="pyarrow"
        )
        joined = keyed.join(
            ray.data.from_arrow_refs(refs),
            join_type="left_anti",
            num_partitions=max(2, math.ceil(done / JOIN_PARTITION)),
            on=(_KEY,),
        )
        return joined.drop_columns([_KEY])
    return ds.map_batches(
        _drop_done,
        fn_kwargs={
            "done": _id_array(ledger.done_ids()),
            "id_column": id_column,
            "run": uuid.uuid4().hex,
        },
        batch_format="pyarrow",
    )


def note_learned(stats: BatchStats, state: Mapping[str, str] | None, rpm: float | None) -> None:
    """Put a shared learned ``state`` (see :meth:`SharedState.learned`) in ``stats``: the
    rate in force, who sets it and what was learned, as the local engine's summary has."""
    if not state:
        return
    rate, who, learned = describe_learned(state, rpm=rpm)
    stats.limit_text = f"{rate:,.0f}/min"
    stats.limited_by = "you" if who == "user" else who
    stats.learned = learned


def _state(read: Any) -> Any:
    """The named actor's learned state, or None if it does not answer (shown, not needed)."""
    import ray

    try:
        return ray.get(read(), timeout=5.0)[1]
    except Exception:
        return None


def _fleet(actors: int | tuple[int, int]) -> int:
    """The most actors the pool runs at once (each keeps a share of the limit in an
    outage of a Redis backend: one over this).

    >>> _fleet(4), _fleet((2, 8))
    (4, 8)
    """
    return actors[1] if isinstance(actors, tuple) else actors


def _pool(actors: int | tuple[int, int]) -> Any:
    from ray.data import ActorPoolStrategy

    if isinstance(actors, tuple):
        return ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
    return ActorPoolStrategy(size=actors)


def run(
    ds: Any,
    endpoint: EndpointConfig | Mapping[str, Any],
    output: str | os.PathLike[str],
    *,
    errors: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    fsync: bool = False,
    id_column: str = "custom_id",
    actors: int | tuple[int, int] = 4,
    batch_size: int = 64,
    num_cpus: float = 0.25,
    backend: str = "actor",
    backend_name: str = "headway-limits",
    progress: ProgressReporter | None = None,
    **caller_options: Any,
) -> BatchStats:
    """Send every row of the Ray dataset ``ds`` and write one result per ``custom_id``.

    Results are appended to ``output`` (a JSONL file, or ``results.jsonl`` in a
    directory: see :func:`output_file`) in the format of ``headway run``: ``{"id",
    "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``. An
    ``output`` ending in ``.parquet`` gets a Parquet file (see :func:`to_parquet`), made
    at the end of the run from the JSONL ledger beside it (``.parquet.ledger.jsonl``). Run it
    again with the same arguments after any failure — killed workers, restarted actors,
    a dead driver — and it sends only what the output does not hold yet (an anti-join
    of ``ds`` against the written ids), so each ``custom_id`` ends up in the output
    exactly once. Failed results count as done unless ``retry_failed``.

    The requests go out from ``actors`` Ray Data actors (a number, or ``(min, max)`` to
    let Ray Data scale the pool; each a :class:`Caller` with ``num_cpus``; Ray restarts
    a dead actor and retries its batch) sharing one limit through ``backend``
    (``"actor"``: a named Ray actor this driver creates; or a ``redis://`` URL). The
    results stream back to this driver, which writes them (a driver writes far faster
    than any API limit lets results arrive). ``caller_options`` go to :class:`Caller`
    (``to_request``, ``limit_name``, ``burst``, ...).

    Returns the run's :class:`~headway.batch.BatchStats` (``skipped``: done before).

    Example::

        ds = ray.data.read_json("s3://bucket/requests/")   # custom_id, body (JSON text)
        stats = headway.ray.run(ds, {"base_url": "https://api.openai.com/v1",
                                     "api_key_env": "OPENAI_API_KEY",
                                     "rpm": 5000, "tpm": 2_000_000},
                                output="results/")
    """
    import ray

    config = (
        endpoint
        if isinstance(endpoint, EndpointConfig)
        else EndpointConfig.model_validate(dict(endpoint))
    )  # a bad config fails here, on the driver, not in every actor
    check_backend(backend)
    path = output_file(output)
    # what earlier results answered is not checked on Ray (yet): not read back
    ledger = Ledger(path, errors, retry_failed=retry_failed, fsync=fsync, digests=False)
    ledger.open()
    stats = BatchStats()
    reporter: ProgressReporter = progress or NullProgress()
    t0 = time.monotonic()
    owner = None
    # The ids written by this run: on disk beside the output past a million of them (as
    # the ledger's `skip`: see headway._idset), so the driver's memory stays bounded.
    written = IdSet(dir=ledger.scratch_dir)
    try:
        done = ledger.skip
        stats.skipped = len(done)
        pending = _without_done(ds, ledger, id_column) if done else ds
        if backend == "actor":
            from headway.backends.ray import RayBackend

            owner = RayBackend(backend_name)  # the driver owns the named actor
            ray.get(owner.actor.__ray_ready__.remote())
        out = pending.map_batches(
            Caller,
            fn_constructor_kwargs={
                "endpoint": config,
                "backend": backend,
                "backend_name": backend_name,
                "id_column": id_column,
                "fleet": _fleet(actors),
                **caller_options,
            },
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=_pool(actors),
            num_cpus=num_cpus,
        )
        learned = None
        if owner is not None and caller_options.get("adaptive"):
            # the rate the actors learned lives in the named actor: show it here too
            name = caller_options.get("limit_name") or default_limit_name(config)
            learned = functools.partial(owner.actor.learned.remote, name, None)
        read_at = -math.inf
        reporter.start(stats, time.monotonic() - t0)
        for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                result = result_of_row(row, id_column)
                if result.custom_id in written or result.custom_id in done:
                    stats.duplicates += 1
                    continue
                written.add(result.custom_id)
                ledger.write(result)
                stats.record(result)
            if learned is not None and time.monotonic() - read_at >= 1.0:
                read_at = time.monotonic()
                note_learned(stats, _state(learned), config.rpm)
            reporter.update(stats, time.monotonic() - t0)
        if learned is not None:
            note_learned(stats, _state(learned), config.rpm)
        stats.total = stats.done
    finally:
        written.close()
        ledger.close()
        reporter.stop(stats, time.monotonic() - t0)
        del owner
    if os.fspath(output).endswith(".parquet"):
        to_parquet(path, output)
    return stats
