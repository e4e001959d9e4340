"""headway on Ray Data: one limit for a whole cluster, exactly-once results.

``pip install 'headway[ray]'``. Three ways in:

* :class:`Caller`, a ``map_batches`` UDF: ``ds.map_batches(Caller,
  fn_constructor_kwargs={"endpoint": config}, concurrency=4, batch_format="pyarrow")``
  sends each row's request under headway's Policy and adds result columns.
* :func:`run`: a dataset's requests to one results file, each ``custom_id`` exactly
  once, resumable after any failure by running it again.
* ``headway run IN -o OUT --engine ray [--ray-address ADDR]``: the CLI on Ray.

All actors share one RPM/TPM and one circuit through a named Ray actor
(:class:`~headway.backends.ray.RayBackend`) or Redis. See ``docs/distributed.md``.

>>> from headway.ray import request_of
>>> request_of({"custom_id": "q1", "body": {"model": "m"}})
('q1', {'model': 'm'}, None)
"""

from headway.ray._caller import RESULT_COLUMNS, Caller, request_of
from headway.ray._run import output_file, result_of_row, run, to_parquet

__all__ = [
    "RESULT_COLUMNS",
    "Caller",
    "output_file",
    "request_of",
    "result_of_row",
    "run",
    "to_parquet",
]
