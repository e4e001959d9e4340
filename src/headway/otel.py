"""OpenTelemetry metrics for headway's events (extra ``headway[otel]``).

:func:`instrument` registers a listener that counts every headway event as the counter
``headway.events`` (attributes ``kind`` and ``source``) and records retry delays and
limiter waits as histograms. Configure an OpenTelemetry SDK ``MeterProvider`` as usual;
without one, the API's no-op meter makes this free.

>>> listener = instrument()
>>> from headway import events
>>> events.emit(events.RETRY_SCHEDULED, source="docs", attempt=1, delay=0.25)
>>> uninstrument(listener)
"""

from __future__ import annotations

from typing import Any

from headway import events

__all__ = ["OpenTelemetryListener", "instrument", "uninstrument"]


class OpenTelemetryListener:
    """An event listener that turns headway events into OpenTelemetry metrics.

    Args:
        meter: an ``opentelemetry.metrics.Meter``; by default ``get_meter("headway")``.
    """

    def __init__(self, meter: Any = None) -> None:
        if meter is None:
            try:
                from opentelemetry import metrics
            except ImportError as exc:  # pragma: no cover - depends on the extra
                raise ImportError(
                    "headway.otel needs opentelemetry-api: pip install 'headway[otel]'"
                ) from exc
            meter = metrics.get_meter("headway")
        self._events = meter.create_counter(
            "headway.events", unit="1", description="Events emitted by headway components"
        )
        self._retry_delay = meter.create_histogram(
            "headway.retry.delay", unit="s", description="Backoff delay before a retry"
        )
        self._limiter_wait = meter.create_histogram(
            "headway.limiter.wait", unit="s", description="Time a call waited for a rate limit"
        )

    def __call__(self, event: events.Event) -> None:
        attributes = {"kind": event.kind, "source": event.source or ""}
        self._events.add(1, attributes)
        if event.kind == events.RETRY_SCHEDULED and "delay" in event.data:
            self._retry_delay.record(float(event.data["delay"]), attributes)
        elif event.kind == events.LIMITER_WAIT and "wait" in event.data:
            self._limiter_wait.record(float(event.data["wait"]), attributes)


def instrument(meter: Any = None) -> OpenTelemetryListener:
    """Start recording headway events as OpenTelemetry metrics; returns the listener."""
    listener = OpenTelemetryListener(meter)
    events.add_listener(listener)
    return listener


def uninstrument(listener: OpenTelemetryListener) -> None:
    """Stop recording through ``listener``."""
    events.remove_listener(listener)
