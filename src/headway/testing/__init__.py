"""headway.testing: a pytest toolkit for async API code.

Virtual time (:class:`VirtualClock`), a real fake API server (:class:`FakeAPI`) with
scripted and random faults (:class:`Fault`, :class:`Chaos`), a leak guard, async mocks
done right and Hypothesis strategies (:mod:`headway.testing.strategies`). Installed as a
pytest plugin: its fixtures and markers are available once headway is installed.
"""

from headway.testing.clock import VirtualClock
from headway.testing.fake_api import FakeAPI, RecordedRequest, Route, Script
from headway.testing.faults import Chaos, Fault, parse_script

__all__ = [
    "Chaos",
    "FakeAPI",
    "Fault",
    "RecordedRequest",
    "Route",
    "Script",
    "VirtualClock",
    "parse_script",
]
