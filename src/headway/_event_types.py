"""The typed events of :mod:`headway.events` (imported from there, on first use).

They are defined here so that ``headway.events`` (on the path of every call) does not
build six dataclasses when it is imported; each keeps ``headway.events`` as its module.

>>> from headway.events import RetryScheduled
>>> RetryScheduled.__module__, RetryScheduled("retry.scheduled", attempt=2).attempt
('headway.events', 2)
"""

from __future__ import annotations

from dataclasses import dataclass

from headway.events import TYPED_EVENTS, Event

__all__ = list(TYPED_EVENTS)  # the names headway.events loads from here


@dataclass(slots=True, frozen=True)
class RetryScheduled(Event):
    """A retry was scheduled: ``attempt`` failed with ``exception``; the next one goes
    after ``delay`` seconds. ``rate_limited``: a rate 429 waited out, not counted."""

    __module__ = "headway.events"

    attempt: int = 0
    delay: float = 0.0
    exception: BaseException | None = None
    rate_limited: bool = False


@dataclass(slots=True, frozen=True)
class RateLimited(RetryScheduled):
    """A rate 429 (:class:`~headway.RateLimitError`) is waited out before going again."""

    __module__ = "headway.events"


@dataclass(slots=True, frozen=True)
class RetryGaveUp(Event):
    """The call gives up after ``attempts`` attempts; ``exception`` is raised."""

    __module__ = "headway.events"

    attempts: int = 0
    exception: BaseException | None = None


@dataclass(slots=True, frozen=True)
class BreakerStateChanged(Event):
    """A circuit breaker moved from ``old`` to ``new`` (state names) for ``reason``."""

    __module__ = "headway.events"

    old: str = ""
    new: str = ""
    reason: str = ""


@dataclass(slots=True, frozen=True)
class BreakerOpened(BreakerStateChanged):
    """A circuit breaker opened: calls are rejected until it lets a trial through."""

    __module__ = "headway.events"


@dataclass(slots=True, frozen=True)
class BreakerCallRecorded(Event):
    """A call through a circuit breaker ended: ``exception`` is ``None`` on success.

    ``failure`` says whether the breaker counted it as a failure (an excluded error or
    one its predicate accepts is not). Built only when a listener is registered (the
    breaker's or a global one), to keep the per-call path free otherwise; it then also
    reaches the logger at DEBUG."""

    __module__ = "headway.events"

    exception: BaseException | None = None
    failure: bool = False
