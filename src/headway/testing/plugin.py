"""The headway pytest plugin (registered through the ``pytest11`` entry point).

Nothing here changes a test until it uses a fixture, a marker or an ini option.

Fixtures: ``virtual_clock``.
Markers: ``virtual_time`` (run the test's loop in virtual time).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from headway.testing.clock import VirtualClock
from headway.testing.fake_api import FakeAPI

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - headway.testing's async fixtures need it
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "virtual_time: run the test's event loop in virtual time (headway)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("virtual_time") is not None:
            fixturenames = getattr(item, "fixturenames", None)
            if fixturenames is not None and "virtual_clock" not in fixturenames:
                fixturenames.insert(0, "virtual_clock")


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def virtual_clock() -> AsyncIterator[VirtualClock]:
        """The test's event loop in virtual time: idle waits complete at once.

        ``virtual_clock.advance(s)`` moves time by hand; ``virtual_clock.elapsed`` tells
        how much virtual time the test has used.
        """
        with VirtualClock() as clock:
            yield clock

    @pytest_asyncio.fixture
    async def fake_api() -> AsyncIterator[FakeAPI]:
        """A running :class:`~headway.testing.FakeAPI` with default settings.

        Configure it in the test (``fake_api.route(...)``, ``fake_api.script(...)``,
        ``fake_api.set_limits(rpm=...)``, ``fake_api.set_chaos(...)``); point clients at
        ``fake_api.url``. It is closed after the test.
        """
        async with FakeAPI() as api:
            yield api
