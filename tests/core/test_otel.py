from typing import Any

from headway import events
from headway.otel import OpenTelemetryListener, instrument, uninstrument


class FakeInstrument:
    def __init__(self) -> None:
        self.values: list[tuple[float, dict[str, str]]] = []

    def add(self, value: float, attributes: dict[str, str]) -> None:
        self.values.append((value, attributes))

    record = add


class FakeMeter:
    def __init__(self) -> None:
        self.instruments: dict[str, FakeInstrument] = {}

    def _make(self, name: str, **_: Any) -> FakeInstrument:
        return self.instruments.setdefault(name, FakeInstrument())

    create_counter = _make
    create_histogram = _make


def test_events_become_metrics() -> None:
    meter = FakeMeter()
    listener = instrument(meter)
    try:
        events.emit(events.RETRY_SCHEDULED, source="api", attempt=1, delay=0.5)
        events.emit(events.LIMITER_WAIT, wait=0.25)
        events.emit(events.BREAKER_STATE_CHANGED, old="closed", new="open")
    finally:
        uninstrument(listener)
    events.emit(events.RETRY_SCHEDULED, delay=9.0)  # no longer recorded
    counted = meter.instruments["headway.events"].values
    assert [a["kind"] for _, a in counted] == [
        events.RETRY_SCHEDULED,
        events.LIMITER_WAIT,
        events.BREAKER_STATE_CHANGED,
    ]
    assert meter.instruments["headway.retry.delay"].values == [
        (0.5, {"kind": events.RETRY_SCHEDULED, "source": "api"})
    ]
    assert meter.instruments["headway.limiter.wait"].values[0][0] == 0.25


def test_default_meter_is_the_api_noop() -> None:
    listener = OpenTelemetryListener()
    listener(events.Event(events.RETRY_SCHEDULED, data={"delay": 1.0}))
