"""headway.testing: a pytest toolkit for async API code.

Virtual time (:class:`VirtualClock`), a real fake API server (:class:`FakeAPI`) with
scripted and random faults (:class:`Fault`, :class:`Chaos`), a leak guard
(:func:`leak_guard`, and the pytest marker ``no_leaks``), async mocks done right
(:func:`async_cm_mock`, :func:`mock_response`, :func:`mock_aiohttp_session`,
:func:`mock_endpoint`...) and Hypothesis strategies (:mod:`headway.testing.strategies`,
which needs ``hypothesis``). Installed as a pytest plugin: its fixtures and markers are
available once headway is installed. See ``docs/testing.md``.

Names are imported on first use (PEP 562): importing the package, as the pytest plugin
does at every pytest start, loads neither ``aiohttp.web`` nor the FakeAPI.

>>> from headway.testing import VirtualClock
>>> VirtualClock.__name__
'VirtualClock'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE = {
    "VirtualClock": "clock",
    "FakeAPI": "fake_api",
    "RecordedRequest": "fake_api",
    "Route": "fake_api",
    "Script": "fake_api",
    "Chaos": "faults",
    "Fault": "faults",
    "parse_script": "faults",
    "Leak": "leaks",
    "LeakError": "leaks",
    "LeakGuard": "leaks",
    "leak_guard": "leaks",
    "AsyncIterator": "mocks",
    "async_cm_mock": "mocks",
    "get_incomplete_future": "mocks",
    "mock_aiohttp_session": "mocks",
    "mock_endpoint": "mocks",
    "mock_response": "mocks",
    "raise_exception": "mocks",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'headway.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"headway.testing.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
