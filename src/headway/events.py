"""Structured events: what headway's components did, for listeners and for logging.

Every component reports what matters (a retry scheduled with its delay and reason, a
breaker transition, a limiter wait or rejection, a pause after a 429) as an
:class:`Event`. Events go to the listeners registered with :func:`add_listener` (or
passed to a component) and to ``logging.getLogger("headway")``, with the event on the
record as ``record.headway_event``. Nothing is built or formatted unless a listener is
registered or the logger is enabled for the event's level.

>>> seen = []
>>> add_listener(seen.append)
>>> emit("retry.scheduled", source="demo", attempt=1, delay=0.5)
>>> seen[0].kind, seen[0].data["delay"]
('retry.scheduled', 0.5)
>>> remove_listener(seen.append)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headway._clock import LOOP_CLOCK

__all__ = [
    "BREAKER_CALL_RECORDED",
    "BREAKER_REJECTED",
    "BREAKER_STATE_CHANGED",
    "CONCURRENCY_LIMIT_CHANGED",
    "LIMITER_PAUSED",
    "LIMITER_REJECTED",
    "LIMITER_SYNCED",
    "LIMITER_WAIT",
    "RETRY_BUDGET_EXHAUSTED",
    "RETRY_GAVE_UP",
    "RETRY_SCHEDULED",
    "TIMEOUT",
    "BreakerCallRecorded",
    "BreakerOpened",
    "BreakerStateChanged",
    "Event",
    "EventListener",
    "GLOBAL_LISTENERS",
    "RateLimited",
    "RetryGaveUp",
    "RetryScheduled",
    "add_listener",
    "emit",
    "enabled",
    "logger",
    "publish",
    "remove_listener",
]

logger = logging.getLogger("headway")
# A library logs; the application decides where records go (no stderr fallback).
logger.addHandler(logging.NullHandler())

# Event kinds emitted by the core. Other layers add their own, same dotted style.
RETRY_SCHEDULED = "retry.scheduled"  # attempt, delay, reason (error type and message)
RETRY_GAVE_UP = "retry.gave_up"  # attempts, reason
RETRY_BUDGET_EXHAUSTED = "retry.budget_exhausted"  # attempt, reason
BREAKER_STATE_CHANGED = "breaker.state_changed"  # old, new, reason
BREAKER_REJECTED = "breaker.rejected"  # retry_after
BREAKER_CALL_RECORDED = "breaker.call_recorded"  # exception, failure (per call, DEBUG)
LIMITER_WAIT = "limiter.wait"  # tokens, wait
LIMITER_REJECTED = "limiter.rejected"  # tokens, wait, max_wait
LIMITER_PAUSED = "limiter.paused"  # until, seconds
LIMITER_SYNCED = "limiter.synced"  # remaining, reset
CONCURRENCY_LIMIT_CHANGED = "concurrency.limit_changed"  # old, new, reason
TIMEOUT = "timeout"  # scope ("attempt" | "total"), seconds


@dataclass(slots=True, frozen=True)
class Event:
    """One thing a component did.

    Attributes:
        kind: dotted name such as ``"retry.scheduled"``.
        source: the component's name (a breaker's or endpoint's name), if it has one.
        data: the event's fields (delay, attempt, reason, ...).
        time: the clock's time when it happened.
        level: the logging level it is logged at.
    """

    kind: str
    source: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    time: float = 0.0
    level: int = logging.DEBUG

    def __str__(self) -> str:
        fields = " ".join(f"{k}={v!r}" for k, v in self.data.items())
        who = f"[{self.source}] " if self.source else ""
        return f"{who}{self.kind} {fields}".rstrip()


# The typed events below Event live in headway._event_types and load on first use (PEP
# 562): building a dataclass compiles its methods at import, which ``headway run`` would
# pay before its first request. They are built only when someone listens.
TYPED_EVENTS = (
    "BreakerCallRecorded",
    "BreakerOpened",
    "BreakerStateChanged",
    "RateLimited",
    "RetryGaveUp",
    "RetryScheduled",
)

if TYPE_CHECKING:
    from headway._event_types import (
        BreakerCallRecorded,
        BreakerOpened,
        BreakerStateChanged,
        RateLimited,
        RetryGaveUp,
        RetryScheduled,
    )


def __getattr__(name: str) -> Any:
    if name in TYPED_EVENTS:
        from headway import _event_types

        for typed in TYPED_EVENTS:
            globals()[typed] = getattr(_event_types, typed)  # later look-ups skip this
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


EventListener = Callable[[Event], None]

_listeners: list[EventListener] = []

#: The global listeners (read it, don't change it: use :func:`add_listener`). Hot paths
#: test it to build per-call events only when someone registered a listener.
GLOBAL_LISTENERS = _listeners


def add_listener(listener: EventListener) -> None:
    """Call ``listener(event)`` for every event headway emits, in any component."""
    _listeners.append(listener)


def remove_listener(listener: EventListener) -> None:
    """Stop calling ``listener``; a listener that was never added is ignored."""
    with contextlib.suppress(ValueError):
        _listeners.remove(listener)


def enabled(level: int = logging.DEBUG, extra: tuple[EventListener, ...] = ()) -> bool:
    """Whether an event at ``level`` would reach anyone (cheap; check before building)."""
    return bool(_listeners or extra) or logger.isEnabledFor(level)


def publish(event: Event, listeners: tuple[EventListener, ...] = ()) -> None:
    """Deliver a built (typed) event to the listeners and the ``headway`` logger.

    Check :func:`enabled` first to build nothing when nobody listens.
    """
    for listener in (*listeners, *_listeners):
        try:
            listener(event)
        except Exception:  # pragma: no cover - defensive; reported, never raised
            logger.exception("headway event listener %r failed", listener)
    if logger.isEnabledFor(event.level):
        logger.log(event.level, "%s", event, extra={"headway_event": event})


def emit(
    kind: str,
    *,
    source: str | None = None,
    level: int = logging.DEBUG,
    listeners: tuple[EventListener, ...] = (),
    **data: Any,
) -> None:
    """Emit an event to the global listeners, ``listeners`` and the ``headway`` logger.

    A listener that raises is logged and skipped: observing never breaks a call.
    """
    log_on = logger.isEnabledFor(level)
    if not (_listeners or listeners or log_on):
        return
    event = Event(kind, source, data, LOOP_CLOCK.now(), level)
    for listener in (*listeners, *_listeners):
        try:
            listener(event)
        except Exception:  # pragma: no cover - defensive; reported, never raised
            logger.exception("headway event listener %r failed", listener)
    if log_on:
        logger.log(level, "%s", event, extra={"headway_event": event})
