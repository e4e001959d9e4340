"""headway.events: listeners, the logging bridge, silence when nobody listens."""

import logging

import pytest

from headway import events


def test_listeners_receive_events_and_bad_listener_is_isolated() -> None:
    seen: list[events.Event] = []
    local: list[events.Event] = []

    def broken(event: events.Event) -> None:
        raise RuntimeError("listener bug")

    events.add_listener(seen.append)
    events.add_listener(broken)
    try:
        events.emit(events.RETRY_SCHEDULED, source="t", listeners=(local.append,), delay=1.5)
    finally:
        events.remove_listener(seen.append)
        events.remove_listener(broken)
    events.remove_listener(broken)  # removing twice is fine
    assert [e.kind for e in seen] == [events.RETRY_SCHEDULED]
    assert local[0].data == {"delay": 1.5}
    assert str(seen[0]) == "[t] retry.scheduled delay=1.5"


def test_events_reach_the_headway_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="headway"):
        assert events.enabled(logging.INFO)
        events.emit("breaker.state_changed", level=logging.INFO, old="closed", new="open")
        events.emit("limiter.wait", level=logging.DEBUG, wait=0.1)  # below the level
    records = [r for r in caplog.records if r.name == "headway"]
    assert len(records) == 1
    assert records[0].headway_event.data["new"] == "open"  # type: ignore[attr-defined]
    assert "breaker.state_changed" in records[0].getMessage()


def test_emit_without_anyone_listening_is_silent() -> None:
    assert not events.enabled(logging.DEBUG) or logging.getLogger("headway").isEnabledFor(10)
    events.emit("nothing", x=1)
    assert str(events.Event("k")) == "k"
