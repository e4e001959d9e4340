"""headway.batch: JSONL request files in, result files out, at the rate limit, exactly once.

The pieces: :mod:`~headway.batch.jobs` reads the input, :mod:`~headway.batch.ledger`
writes and resumes results, :mod:`~headway.batch.runner` runs the batch through a sender,
:mod:`~headway.batch.progress` and :mod:`~headway.batch.summary` show it. ``headway run``
(see ``docs/cli.md``) puts them together; ``docs/batch.md`` explains the guarantees.

Names are imported on first use (PEP 562), so ``headway run`` loads only the pieces it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headway._lazy import lazy_names

if TYPE_CHECKING:
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

# Where each name of ``__all__`` lives; looked up on first use (PEP 562).
_WHERE = {
    "BatchRequest": "headway.batch.jobs",
    "BatchRunner": "headway.batch.runner",
    "BatchStats": "headway.batch.summary",
    "InvalidLine": "headway.batch.jobs",
    "Ledger": "headway.batch.ledger",
    "NullProgress": "headway.batch.progress",
    "PlainProgress": "headway.batch.progress",
    "ProgressReporter": "headway.batch.progress",
    "Response": "headway.batch.runner",
    "Result": "headway.batch.ledger",
    "RichProgress": "headway.batch.progress",
    "Sender": "headway.batch.runner",
    "error_code": "headway.batch.ledger",
    "note_retry": "headway.batch.runner",
    "parse_line": "headway.batch.jobs",
    "read_requests": "headway.batch.jobs",
    "render_summary": "headway.batch.summary",
    "signal_handlers": "headway.batch.runner",
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())
