"""headway.batch: JSONL request files in, result files out, at the rate limit, exactly once.

The pieces: :mod:`~headway.batch.jobs` reads the input, :mod:`~headway.batch.ledger`
writes and resumes results, :mod:`~headway.batch.runner` runs the batch through a sender,
:mod:`~headway.batch.progress` and :mod:`~headway.batch.summary` show it. ``headway run``
(see ``docs/cli.md``) puts them together; ``docs/batch.md`` explains the guarantees.
"""

from headway.batch.jobs import BatchRequest, InvalidLine, parse_line, read_requests
from headway.batch.ledger import Ledger, Result, error_code
from headway.batch.progress import NullProgress, PlainProgress, ProgressReporter, RichProgress
from headway.batch.runner import BatchRunner, Response, Sender, note_retry, signal_handlers
from headway.batch.summary import BatchStats, render_summary

__all__ = [
    "BatchRequest",
    "BatchRunner",
    "BatchStats",
    "InvalidLine",
    "Ledger",
    "NullProgress",
    "PlainProgress",
    "ProgressReporter",
    "Response",
    "Result",
    "RichProgress",
    "Sender",
    "error_code",
    "note_retry",
    "parse_line",
    "read_requests",
    "render_summary",
    "signal_handlers",
]
