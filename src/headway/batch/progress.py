"""What the user sees while a batch runs.

On a terminal, a live display drawn for 80 columns first: a bar with the count, the
percentage, the rate and the ETA on one line, the outcome counts, tokens per minute and
the rate in force on a second; a terminal of 120 columns or more gets it all on one line.
Failures are printed above the display as they happen (kind, custom_id, one-line reason).
Elsewhere (``--progress plain``: CI logs, log files) one plain status line every few seconds,
plus one line per failure. Both read the runner's :class:`~headway.batch.summary.BatchStats`
when the runner ticks them; they never slow a request down.

The rate slot reads ``stats.limit_text`` and ``stats.limited_by``: ``limited by you:
3,000/min`` for a limit from the flags, ``limited by server: 1,180/min`` once the server's
is lower.

>>> import io
>>> out = io.StringIO()
>>> p = PlainProgress(file=out, every=0.0)
>>> stats = BatchStats(total=10)
>>> p.start(stats, now=0.0)
>>> stats.succeeded = 4
>>> p.update(stats, now=2.0)
>>> print(out.getvalue().strip())
[headway] 4/10 40% | 2.0 results/s | ok 4 failed 0 retrying 0 429s 0 | 0 tok/min | no limit | ETA 3s
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, Protocol

from headway.batch.summary import BatchStats

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult

__all__ = [
    "NullProgress",
    "PlainProgress",
    "ProgressReporter",
    "Rates",
    "RichProgress",
    "StatusLine",
    "limit_slot",
]

#: Failures printed per tick at most; the rest are counted in one line.
FAILURES_PER_TICK = 5


class ProgressReporter(Protocol):
    """What the runner drives: ``start`` once, ``update`` every tick, ``stop`` once."""

    #: Seconds between ticks the reporter wants.
    interval: float

    def start(self, stats: BatchStats, now: float) -> None: ...

    def update(self, stats: BatchStats, now: float) -> None: ...

    def stop(self, stats: BatchStats, now: float) -> None: ...


class Rates:
    """Results/s and tokens/min over a sliding window of recent snapshots."""

    __slots__ = ("_snaps", "window")

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._snaps: deque[tuple[float, int, int]] = deque()

    def add(self, now: float, sent: int, tokens: int) -> tuple[float, float]:
        """Record a snapshot; return (results per second, tokens per minute)."""
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


def _short(n: float) -> str:
    """A count in at most 5 characters: 999, 12.3k, 4.56M."""
    if n < 1000:
        return f"{n:.0f}"
    if n < 1_000_000:
        return f"{n / 1000:.1f}k" if n < 100_000 else f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.2f}M"


def limit_slot(stats: BatchStats) -> str:
    """The rate in force, and who sets it.

    >>> s = BatchStats()
    >>> limit_slot(s)
    'no limit'
    >>> s.limit_text, s.limited_by = "3,000/min", "you"
    >>> limit_slot(s)
    'limited by you: 3,000/min'
    >>> s.limit_text, s.limited_by = "1,180/min", "server"
    >>> limit_slot(s)
    'limited by server: 1,180/min'
    """
    if stats.limit_text is None:
        return "no limit"
    if stats.limited_by:
        return f"limited by {stats.limited_by}: {stats.limit_text}"
    return f"limit {stats.limit_text}"


def _failure_text(code: str, custom_id: str, reason: str, width: int) -> str:
    line = f"failed {code} {custom_id}: {reason}"
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


class _FailureFeed:
    """Hands out the failures not shown yet, a few per tick."""

    __slots__ = ("_shown",)

    def __init__(self) -> None:
        self._shown = 0

    def new(self, stats: BatchStats) -> tuple[list[tuple[int, str, str, str]], int]:
        """(failures to show now, how many more were skipped)."""
        if stats.failures_seen == self._shown:
            return [], 0
        fresh = [f for f in stats.recent_failures if f[0] > self._shown]
        skipped = stats.failures_seen - self._shown - len(fresh)
        if len(fresh) > FAILURES_PER_TICK:
            skipped += len(fresh) - FAILURES_PER_TICK
            fresh = fresh[-FAILURES_PER_TICK:]
        self._shown = stats.failures_seen
        return fresh, skipped


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
    """A plain status line every ``every`` seconds, and a line per failure (logs, pipes)."""

    def __init__(self, file: IO[str] | None = None, *, every: float = 5.0) -> None:
        self.file = file
        self.every = every
        self.interval = max(0.25, min(every, 1.0)) if every > 0 else 0.25
        self._rates = Rates()
        self._last = float("-inf")
        self._feed = _FailureFeed()
        self._warned_404 = False

    def line(self, stats: BatchStats, rps: float, tpm: float) -> str:
        """The status line (no width limit: a log file holds it)."""
        total = "?" if stats.total is None else str(stats.total)
        pct = f" {stats.done * 100 // stats.total}%" if stats.total else ""
        return (
            f"[headway] {stats.done}/{total}{pct} | {rps:.1f} results/s | ok {stats.succeeded} "
            f"failed {stats.failed} retrying {stats.retrying} 429s {stats.rate_limited} | "
            f"{tpm:,.0f} tok/min | {limit_slot(stats)} | ETA {_eta(_remaining(stats), rps)}"
        )

    def _out(self, text: str) -> None:
        print(text, file=self.file or sys.stderr, flush=True)

    def _print(self, stats: BatchStats, now: float, *, force: bool = False) -> None:
        rps, tpm = self._rates.add(now, stats.written, stats.tokens)
        fresh, skipped = self._feed.new(stats)
        for _, code, cid, reason in fresh:
            self._out("[headway] " + _failure_text(code, cid, reason, 200))
        if skipped:
            self._out(f"[headway] ... and {skipped} more failure(s)")
        if stats.all_404 and not self._warned_404:
            self._warned_404 = True
            self._out("[headway] warning: " + NOT_FOUND_HINT)
        if not force and now - self._last < self.every:
            return
        self._last = now
        self._out(self.line(stats, rps, tpm))

    def start(self, stats: BatchStats, now: float) -> None:
        self._rates.add(now, stats.written, stats.tokens)
        self._last = now

    def update(self, stats: BatchStats, now: float) -> None:
        self._print(stats, now)

    def stop(self, stats: BatchStats, now: float) -> None:
        self._print(stats, now, force=True)


#: Said once when the first answers are all 404s.
NOT_FOUND_HINT = (
    "the first answers were all 404 Not Found: check the URL (--base-url, --endpoint, "
    "--request-url; see 'headway run --help')"
)


class StatusLine:
    """The live display as a rich renderable: one line when it all fits, else two.

    By priority: the bar, count, percentage, rate and ETA; the outcome counts; the rate in
    force; tokens per minute (dropped first when the terminal is narrow).

    ``rps``/``tpm`` are set by the reporter before each refresh.
    """

    def __init__(self, stats: BatchStats) -> None:
        self.stats = stats
        self.rps = 0.0
        self.tpm = 0.0

    def _parts(self) -> tuple[str, str, tuple[str, str]]:
        s = self.stats
        total = "?" if s.total is None else f"{s.total:,}"
        pct = f" {s.done * 100 // s.total:>3d}%" if s.total else ""
        head = f"{s.done:,}/{total}{pct} {self.rps:,.1f}/s ETA {_eta(_remaining(s), self.rps)}"
        counts = (
            f"ok {s.succeeded:,}  failed {s.failed:,}  retrying {s.retrying}  "
            f"429s {s.rate_limited:,}"
        )
        return head, counts, (limit_slot(s), f"{_short(self.tpm)} tok/min")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        width = options.max_width
        head, counts, extra = self._parts()
        limit, tpm = extra
        one = f"{head}  {counts}  {limit}  {tpm}"
        if width >= len(one) + 11:  # wide: all on one line, with a bar of 10 or more
            bar = _bar(self.stats, min(40, width - len(one) - 1))
            yield Text.assemble((bar, "magenta"), " ", one, no_wrap=True, overflow="ellipsis")
            return
        bar = _bar(self.stats, max(5, min(40, width - len(head) - 1)))
        yield Text.assemble((bar, "magenta"), " ", head, no_wrap=True, overflow="ellipsis")
        second = f"{counts}  {limit}"
        if len(second) + len(tpm) + 2 <= width:  # tokens/min when there is room
            second = f"{counts}  {tpm}  {limit}"
        yield Text(second, no_wrap=True, overflow="ellipsis")


def _bar(stats: BatchStats, width: int) -> str:
    if not stats.total:
        return "─" * width
    done = min(width, stats.done * width // stats.total)
    return "━" * done + "╌" * (width - done)


class RichProgress:
    """The live display on a terminal (see :class:`StatusLine`), failures above it."""

    interval = 0.25

    def __init__(self, console: Console | None = None, *, description: str = "headway") -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.description = description
        self._rates = Rates()
        self._feed = _FailureFeed()
        self._live: Any = None
        self._line: StatusLine | None = None
        self._warned_404 = False

    def _failures(self, stats: BatchStats) -> Iterator[str]:
        fresh, skipped = self._feed.new(stats)
        width = self.console.width
        for _, code, cid, reason in fresh:
            yield _failure_text(code, cid, reason, width)
        if skipped:
            yield f"... and {skipped} more failure(s)"
        if stats.all_404 and not self._warned_404:
            self._warned_404 = True
            yield "warning: " + NOT_FOUND_HINT

    def start(self, stats: BatchStats, now: float) -> None:
        from rich.live import Live

        self._rates.add(now, stats.written, stats.tokens)
        self._line = StatusLine(stats)
        self._live = Live(self._line, console=self.console, auto_refresh=False, transient=False)
        self._live.start(refresh=True)

    def update(self, stats: BatchStats, now: float) -> None:
        if self._live is None or self._line is None:
            return
        self._line.rps, self._line.tpm = self._rates.add(now, stats.written, stats.tokens)
        for text in self._failures(stats):
            self.console.print(text, style="red", markup=False, highlight=False, no_wrap=True)
        self._live.refresh()

    def stop(self, stats: BatchStats, now: float) -> None:
        if self._live is not None:
            self.update(stats, now)
            self._live.stop()
            self._live = None
