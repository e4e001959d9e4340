"""headway.testing: a pytest toolkit for async API code.

Virtual time (:class:`VirtualClock`), a real fake API server (:class:`FakeAPI`) with
scripted and random faults (:class:`Fault`, :class:`Chaos`), a leak guard
(:func:`leak_guard`, and the pytest marker ``no_leaks``), async mocks done right
(:func:`async_cm_mock`, :func:`mock_response`, :func:`mock_aiohttp_session`,
:func:`mock_endpoint`...) and Hypothesis strategies (:mod:`headway.testing.strategies`,
which needs ``hypothesis``). Installed as a pytest plugin: its fixtures and markers are
available once headway is installed. See ``docs/testing.md``.
"""

from headway.testing.clock import VirtualClock
from headway.testing.fake_api import FakeAPI, RecordedRequest, Route, Script
from headway.testing.faults import Chaos, Fault, parse_script
from headway.testing.leaks import Leak, LeakError, LeakGuard, leak_guard
from headway.testing.mocks import (
    AsyncIterator,
    async_cm_mock,
    get_incomplete_future,
    mock_aiohttp_session,
    mock_endpoint,
    mock_response,
    raise_exception,
)

__all__ = [
    "AsyncIterator",
    "Chaos",
    "FakeAPI",
    "Fault",
    "Leak",
    "LeakError",
    "LeakGuard",
    "RecordedRequest",
    "Route",
    "Script",
    "VirtualClock",
    "async_cm_mock",
    "get_incomplete_future",
    "leak_guard",
    "mock_aiohttp_session",
    "mock_endpoint",
    "mock_response",
    "parse_script",
    "raise_exception",
]
