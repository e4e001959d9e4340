"""The reservation rule of the Redis script, in Python.

:data:`headway.backends._scripts.RESERVE` and :func:`reserve` are twins, step for step:
the test-suite runs both on the same inputs and compares. :class:`LocalBuckets` uses it
to keep limits in process when Redis is unreachable (``on_backend_error="local"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from headway._clock import Clock

__all__ = ["Bucket", "LocalBuckets", "reserve", "reserve_batch", "ttl_ms"]


@dataclass(slots=True)
class Bucket:
    """One limit's state: ``level`` units are available at time ``start``.

    ``start`` may lie in the future (a pause): nothing refills before it.
    """

    rate: float  # units per time unit
    capacity: float
    level: float | None = None  # None: never used, full
    start: float = 0.0
    shift: float = 0.0  # total length of the pauses so far
    pause_end: float = 0.0  # nobody is admitted before it


def reserve(
    buckets: Sequence[Bucket],
    now: float,
    amounts: Sequence[float],
    *,
    adjusts: Sequence[float] | None = None,
    level_caps: Sequence[float | None] | None = None,
    cancels: Sequence[tuple[float, Sequence[float]]] = (),
    pause: float = 0.0,
    max_wait: float | None = None,
) -> tuple[bool, float]:
    """Reserve ``amounts[i]`` from ``buckets[i]`` for every i, all or nothing.

    Returns ``(admitted, wait)``: the wait (same time unit as ``now``) before the caller
    may proceed. When ``max_wait`` is exceeded nothing is reserved (``admitted`` is
    false), though ``adjusts``, ``level_caps``, ``cancels`` and ``pause`` still apply.

    ``cancels`` are cancelled reservations ``(admission time, amounts)``, latest first:
    each limit gets a cancelled amount back only if that reservation is last in its
    queue or nobody waits any more (no newcomer may take the slot of a waiter still
    queued).

    >>> b = [Bucket(rate=1.0, capacity=2.0)]
    >>> reserve(b, 0.0, [2.0]), reserve(b, 0.0, [1.0]), reserve(b, 0.0, [1.0])
    ((True, 0.0), (True, 1.0), (True, 2.0))
    >>> reserve(b, 0.0, [1.0], max_wait=2.5)
    (False, 3.0)
    """
    return reserve_batch(
        buckets,
        now,
        [(amounts, max_wait)],
        adjusts=adjusts,
        level_caps=level_caps,
        cancels=cancels,
        pause=pause,
    )[0]


def reserve_batch(
    buckets: Sequence[Bucket],
    now: float,
    callers: Sequence[tuple[Sequence[float], float | None]],
    *,
    adjusts: Sequence[float] | None = None,
    level_caps: Sequence[float | None] | None = None,
    cancels: Sequence[tuple[float, Sequence[float]]] = (),
    pause: float = 0.0,
    tolerance: float = 1e-6,
) -> list[tuple[bool, float]]:
    """:func:`reserve` for several callers ``(amounts, max_wait)`` in order, at ``now``.

    ``adjusts``, ``level_caps``, ``cancels`` and ``pause`` apply first, once.
    ``tolerance``: how far before a queue's tail a cancelled reservation may have been
    admitted and still count as last in line: 1 µs, in the unit of ``now`` (the Redis
    script works in milliseconds and uses 0.001).
    """
    for i, b in enumerate(buckets):
        level = b.capacity if b.level is None else b.level
        t = now if b.level is None else b.start
        if now > t:
            level = min(b.capacity, level + (now - t) * b.rate)
            t = now
        p = b.pause_end
        if adjusts is not None:
            level, t = _norm(b, level + adjusts[i], t, now, p)
        if level_caps is not None:
            level_cap = level_caps[i]
            if level_cap is not None:
                level = min(level, level_cap + (t - now) * b.rate)
        for at, back in cancels:
            tail = max(now, t - level / b.rate)
            if back[i] > 0 and (at >= tail - tolerance or tail <= now):
                level, t = _norm(b, level + back[i], t, now, p)
        if pause > 0 and now + pause > t:
            b.shift += now + pause - t
            t = now + pause
            p = t
            level = min(level, 0.0)
        b.level, b.start, b.pause_end = level, t, p
    out = []
    for amounts, max_wait in callers:
        wait = 0.0
        for i, b in enumerate(buckets):
            assert b.level is not None
            w = b.start - now
            if b.level < amounts[i]:
                w += (amounts[i] - b.level) / b.rate
            wait = max(wait, w)
        ok = not (max_wait is not None and max_wait >= 0 and wait > max_wait)
        if ok and any(x > 0 for x in amounts):
            # every limit is used when the caller is admitted, not before: project each
            # bucket to the admission time (a limit with a shorter queue waits too)
            at = now + wait
            for i, b in enumerate(buckets):
                assert b.level is not None
                if at > b.start:
                    b.level = min(b.capacity, b.level + (at - b.start) * b.rate)
                    b.start = at
                b.level -= amounts[i]
        out.append((ok, wait))
    return out


def _norm(b: Bucket, level: float, t: float, now: float, pause_end: float) -> tuple[float, float]:
    """A level above capacity at a future start is credit earlier on: move the start back
    (never before ``now`` or the end of a pause) and cap the level."""
    if level > b.capacity:
        back_t = max(t - (level - b.capacity) / b.rate, now, pause_end)
        level = min(b.capacity, level - (t - back_t) * b.rate)
        t = back_t
    return level, t


class LocalBuckets:
    """Several limits in this process, with the Redis script's rule, on a :class:`Clock`.

    Used as the fallback while Redis is unreachable. Times are the clock's seconds.

    >>> from headway import ManualClock
    >>> local = LocalBuckets([(10.0, 5.0)], clock=ManualClock())
    >>> local.reserve([5.0]), local.reserve([1.0])
    ((True, 0.0), (True, 0.1))
    """

    __slots__ = ("buckets", "clock")

    def __init__(self, limits: Sequence[tuple[float, float]], *, clock: Clock) -> None:
        """``limits``: ``(rate per second, capacity)`` for each limit."""
        self.buckets = [Bucket(rate=r, capacity=c) for r, c in limits]
        self.clock = clock

    def reserve(
        self,
        amounts: Sequence[float],
        *,
        max_wait: float | None = None,
        pause: float = 0.0,
        level_caps: Sequence[float | None] | None = None,
    ) -> tuple[bool, float]:
        """Reserve now; see :func:`reserve`."""
        return reserve(
            self.buckets,
            self.clock.now(),
            amounts,
            level_caps=level_caps,
            pause=pause,
            max_wait=max_wait,
        )

    def adjust(self, deltas: Sequence[float]) -> None:
        """Give back (> 0) or take more (< 0) of each limit, never above capacity."""
        reserve(self.buckets, self.clock.now(), [0.0] * len(self.buckets), adjusts=deltas)

    def cancel(self, at: float, amounts: Sequence[float]) -> None:
        """Give back a cancelled reservation admitted at ``at``, where it is last in line."""
        reserve(self.buckets, self.clock.now(), [0.0] * len(self.buckets), cancels=[(at, amounts)])

    def level(self, i: int) -> float:
        """The level of limit ``i`` now (may be negative: debt)."""
        b = self.buckets[i]
        if b.level is None:
            return b.capacity
        now = self.clock.now()
        if now > b.start:
            return min(b.capacity, b.level + (now - b.start) * b.rate)
        return b.level - (b.start - now) * b.rate  # a future start is debt now


def ttl_ms(bucket: Bucket, now: float) -> int:
    """How long (ms) Redis keeps a bucket: until it would be full again, plus a second."""
    level = bucket.capacity if bucket.level is None else bucket.level
    return math.ceil((bucket.start - now) + (bucket.capacity - level) / bucket.rate) + 1000
