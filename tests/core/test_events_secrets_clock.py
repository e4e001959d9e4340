import asyncio
import logging

import pytest

from headway import Clock, ManualClock, events
from headway._clock import resolve_clock
from headway._secrets import mask_headers, mask_value, redact_url
from headway.clock import LOOP_CLOCK


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


def test_mask_headers_and_values() -> None:
    assert mask_headers(None) == {}
    masked = mask_headers([("x-api-key", "sk-1"), ("Cookie", "a=b"), ("X-Other", "v")])
    assert masked == {"x-api-key": "***", "Cookie": "***", "X-Other": "v"}
    assert mask_value("Basic dXNlcg==") == "Basic ***"
    assert mask_value("sk-plain") == "***"


def test_redact_url() -> None:
    assert redact_url("https://api.example.com/v1?q=1") == "https://api.example.com/v1?q=1"
    assert redact_url("http://[::1") == "http://[::1"  # unparsable stays as it is
    assert "sk" not in redact_url("https://h/x?token=sk&key=sk")


async def test_loop_clock_reads_the_running_loop() -> None:
    loop = asyncio.get_running_loop()
    assert abs(LOOP_CLOCK.now() - loop.time()) < 0.5
    await LOOP_CLOCK.sleep(-1)
    assert isinstance(LOOP_CLOCK, Clock)
    assert repr(LOOP_CLOCK) == "LoopClock()"


def test_loop_clock_outside_a_loop_and_resolve() -> None:
    assert LOOP_CLOCK.now() > 0
    manual = ManualClock()
    assert resolve_clock(None) is LOOP_CLOCK
    assert resolve_clock(manual) is manual


async def test_manual_clock() -> None:
    clock = ManualClock(start=5)
    await clock.sleep(-3)
    await clock.sleep(2)
    assert clock.now() == 7
    assert clock.sleeps == [0.0, 2]
    with pytest.raises(ValueError):
        clock.advance(-1)
    assert "7" in repr(clock)
