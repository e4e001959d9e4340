"""What the user sees while a batch runs.

On a terminal, a rich progress bar: done/total, requests/s, tokens/min, ETA, succeeded /
failed / retrying, and the 429s seen. Elsewhere (CI logs, pipes) a plain status line
every few seconds. Both read the runner's :class:`~headway.batch.summary.BatchStats`
when the runner ticks them; they never slow a request down.

>>> import io
>>> out = io.StringIO()
>>> p = PlainProgress(file=out, every=0.0)
>>> stats = BatchStats(total=10)
>>> p.start(stats, now=0.0)
>>> stats.succeeded = 4
>>> p.update(stats, now=2.0)
>>> print(out.getvalue().strip())
[headway] 4/10 (40%) | 2.0 req/s | 0 tok/min | ok 4 | failed 0 | retrying 0 | 429s 0 | ETA 3s
"""

from __future__ import annotations

import sys
from collections import deque
from typing import IO, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from headway.batch.summary import BatchStats

__all__ = ["NullProgress", "PlainProgress", "ProgressReporter", "RichProgress", "Rates"]


class ProgressReporter(Protocol):
    """What the runner drives: ``start`` once, ``update`` every tick, ``stop`` once."""

    #: Seconds between ticks the reporter wants.
    interval: float

    def start(self, stats: BatchStats, now: float) -> None: ...

    def update(self, stats: BatchStats, now: float) -> None: ...

    def stop(self, stats: BatchStats, now: float) -> None: ...


class Rates:
    """Requests/s and tokens/min over a sliding window of recent snapshots."""

    __slots__ = ("_snaps", "window")

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._snaps: deque[tuple[float, int, int]] = deque()

    def add(self, now: float, sent: int, tokens: int) -> tuple[float, float]:
        """Record a snapshot; return (requests per second, tokens per minute)."""
        snaps = self._snaps
        snaps.append((now, sent, tokens))
        while len(snaps) > 2 and now - snaps[1][0] >= self.window:
            snaps.popleft()
        t0, s0, k0 = snaps[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0
        return (sent - s0) / dt, (tokens - k0) / dt * 60.0


def _eta(remaining: int | None, rate: float) -> str:
    if remaining is None or rate <= 0:
        return "?"
    secs = int(remaining / rate + 0.5)
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


def _remaining(stats: BatchStats) -> int | None:
    if stats.total is None:
        return None
    return max(0, stats.total - stats.done)


def _status(stats: BatchStats, rps: float, tpm: float) -> str:
    return (
        f"{rps:.1f} req/s | {tpm:,.0f} tok/min | ok {stats.succeeded} | "
        f"failed {stats.failed} | retrying {stats.retrying} | 429s {stats.rate_limited}"
    ) + (f" | {stats.limited_by}" if stats.limited_by else "")


class NullProgress:
    """Shows nothing (``--quiet``)."""

    interval = 60.0

    def start(self, stats: BatchStats, now: float) -> None:
        pass

    def update(self, stats: BatchStats, now: float) -> None:
        pass

    def stop(self, stats: BatchStats, now: float) -> None:
        pass


class PlainProgress:
    """A plain status line every ``every`` seconds (for logs and pipes)."""

    def __init__(self, file: IO[str] | None = None, *, every: float = 5.0) -> None:
        self.file = file
        self.every = every
        self.interval = max(0.25, min(every, 1.0)) if every > 0 else 0.25
        self._rates = Rates()
        self._last = float("-inf")

    def _print(self, stats: BatchStats, now: float, *, force: bool = False) -> None:
        rps, tpm = self._rates.add(now, stats.written, stats.tokens)
        if not force and now - self._last < self.every:
            return
        self._last = now
        total = "?" if stats.total is None else str(stats.total)
        pct = f" ({stats.done * 100 // stats.total}%)" if stats.total else ""
        eta = _eta(_remaining(stats), rps)
        line = f"[headway] {stats.done}/{total}{pct} | {_status(stats, rps, tpm)} | ETA {eta}"
        print(line, file=self.file or sys.stderr, flush=True)

    def start(self, stats: BatchStats, now: float) -> None:
        self._rates.add(now, stats.written, stats.tokens)
        self._last = now

    def update(self, stats: BatchStats, now: float) -> None:
        self._print(stats, now)

    def stop(self, stats: BatchStats, now: float) -> None:
        self._print(stats, now, force=True)


class RichProgress:
    """A live rich progress bar on a terminal."""

    interval = 0.25

    def __init__(self, console: Console | None = None, *, description: str = "headway") -> None:
        self.console = console or Console(stderr=True)
        self.description = description
        self._rates = Rates()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.completed}/{task.fields[total_text]}"),
            TextColumn("{task.fields[status]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        self._task: TaskID | None = None

    def _fields(self, stats: BatchStats, now: float) -> dict[str, object]:
        rps, tpm = self._rates.add(now, stats.written, stats.tokens)
        return {
            "completed": stats.done,
            "total": stats.total,
            "total_text": "?" if stats.total is None else str(stats.total),
            "status": _status(stats, rps, tpm),
            "eta": _eta(_remaining(stats), rps),
        }

    def start(self, stats: BatchStats, now: float) -> None:
        fields = self._fields(stats, now)
        self._progress.start()
        self._task = self._progress.add_task(
            self.description,
            total=stats.total,
            completed=stats.done,
            total_text=fields["total_text"],
            status=fields["status"],
            eta=fields["eta"],
        )
        self._progress.refresh()

    def update(self, stats: BatchStats, now: float) -> None:
        if self._task is None:
            return
        fields = self._fields(stats, now)
        self._progress.update(self._task, **fields)  # type: ignore[arg-type]
        self._progress.refresh()

    def stop(self, stats: BatchStats, now: float) -> None:
        if self._task is not None:
            self.update(stats, now)
            self._task = None
        self._progress.stop()
