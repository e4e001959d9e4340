"""The headway pytest plugin (registered through the ``pytest11`` entry point).

Nothing here changes a test until it uses a fixture, a marker or an ini option.

Fixtures:
    ``virtual_clock`` (the test's loop in virtual time), ``fake_api`` (a running
    :class:`~headway.testing.FakeAPI`), ``capture_logs`` (headway's structured log
    records), ``mock_api_responses`` (canned provider answers).

Markers:
    ``virtual_time`` (run the test's loop in virtual time), ``no_leaks`` (fail the test
    if it leaks tasks, sessions, headway resources, unawaited coroutines or unretrieved
    task exceptions), ``allow_leaks`` (opt one test out of a suite-wide guard), and the
    plain labels ``unit``, ``integration`` and ``slow``.

Options:
    ``--headway-leak-check`` or the ini option ``headway_leak_check = true`` runs the
    leak guard for every test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Literal

import pytest

from headway.testing.clock import VirtualClock
from headway.testing.fake_api import FakeAPI
from headway.testing.leaks import Leak, LeakGuard, format_leaks
from headway.testing.mocks import CapturedLogs, MockAPIResponses, capture_headway_logs

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - headway.testing's async fixtures need it
    pytest_asyncio = None  # type: ignore[assignment]

_Scope = Literal["function", "class", "module", "package", "session"]
_LOOP_SCOPES: tuple[_Scope, ...] = ("function", "class", "module", "package", "session")
_SYNC_GUARD = "_headway_leak_guard_sync"


def _async_guard_name(scope: str) -> str:
    return f"_headway_leak_guard_{scope}"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("headway")
    group.addoption(
        "--headway-leak-check",
        action="store_true",
        default=False,
        help="headway: fail every test that leaks tasks, sessions or open resources",
    )
    parser.addini(
        "headway_leak_check",
        type="bool",
        default=False,
        help="headway: run the leak guard for every test (like --headway-leak-check)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "virtual_time: run the test's event loop in virtual time (headway)",
        "no_leaks: fail the test if it leaks tasks, sessions or open resources (headway)",
        "allow_leaks: skip the headway leak guard for this test",
        "unit: fast test of one component, no sockets",
        "integration: talks to a real loopback server or an external service",
        "slow: takes more than a second of real time",
    ):
        config.addinivalue_line("markers", line)


def _leak_check_everywhere(config: pytest.Config) -> bool:
    return bool(config.getoption("headway_leak_check", False)) or bool(
        config.getini("headway_leak_check")
    )


def _loop_scope(item: pytest.Item) -> str:
    marker = item.get_closest_marker("asyncio")
    scope = None
    if marker is not None:
        scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    if scope is None:
        try:
            scope = item.config.getini("asyncio_default_test_loop_scope")
        except ValueError:
            scope = None
    return scope if scope in _LOOP_SCOPES else "function"


def _is_async(item: pytest.Item) -> bool:
    is_async_test = getattr(pytest_asyncio, "is_async_test", None)
    return bool(is_async_test(item)) if is_async_test is not None else False


def _first_function_scoped(item: pytest.Item, fixturenames: list[str]) -> int:
    """Index of the first function-scoped fixture: wider-scoped ones are set up before.

    The guard and the virtual clock go there, so that fixtures of a wider scope (set up
    lazily by the first test that needs them) are not counted as the test's leaks and do
    not start in virtual time.
    """
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", None)
    if not isinstance(defs, dict):
        return 0
    for index, name in enumerate(fixturenames):
        fixturedefs = defs.get(name)
        if fixturedefs and getattr(fixturedefs[-1], "scope", "function") == "function":
            return index
    return len(fixturenames)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    everywhere = _leak_check_everywhere(config)
    for item in items:
        fixturenames = getattr(item, "fixturenames", None)
        if not isinstance(fixturenames, list):
            continue
        at = _first_function_scoped(item, fixturenames)
        if item.get_closest_marker("virtual_time") is not None and (
            "virtual_clock" not in fixturenames
        ):
            fixturenames.insert(at, "virtual_clock")
        guarded = everywhere or item.get_closest_marker("no_leaks") is not None
        if guarded and item.get_closest_marker("allow_leaks") is None:
            name = _async_guard_name(_loop_scope(item)) if _is_async(item) else _SYNC_GUARD
            if name not in fixturenames:
                fixturenames.insert(at, name)


def _fail_on(leaks: list[Leak], request: pytest.FixtureRequest) -> None:
    if leaks:
        pytest.fail(format_leaks(leaks, request.node.nodeid), pytrace=False)


def _new_guard(request: pytest.FixtureRequest) -> LeakGuard:
    # A test marked no_leaks gets a full garbage collection; the suite-wide guard a
    # young-generation one, so that it costs well under a millisecond per test.
    marked = request.node.get_closest_marker("no_leaks") is not None
    return LeakGuard(gc_generation=2 if marked else 1)


@pytest.fixture(name=_SYNC_GUARD)
def _headway_leak_guard_sync(request: pytest.FixtureRequest) -> Iterator[None]:
    """The leak guard for a test that does not run in an event loop."""
    guard = _new_guard(request)
    guard.start()
    yield
    _fail_on(guard.stop_sync(), request)


@pytest.fixture
def capture_logs() -> Iterator[CapturedLogs]:
    """headway's structured log records (``logging.getLogger("headway")``), at DEBUG.

    ``capture_logs.records`` are the log records, ``capture_logs.events`` the
    :class:`~headway.events.Event` objects on them (``record.headway_event``), and
    ``capture_logs.kinds()`` their kinds in order.
    """
    with capture_headway_logs() as captured:
        yield captured


@pytest.fixture
def mock_api_responses() -> MockAPIResponses:
    """Canned provider answers: ``success``, ``rate_limit``, ``auth_error``, ``server_error``...

    Each is a :class:`~headway.testing.mocks.CannedResponse` with ``status``, ``json``
    and ``headers``, and ``.mock()`` builds a :func:`~headway.testing.mocks.mock_response`.
    """
    return MockAPIResponses()


if pytest_asyncio is not None:

    @pytest.fixture
    def virtual_clock(request: pytest.FixtureRequest) -> VirtualClock:
        """The test's event loop in virtual time: idle waits complete at once.

        ``virtual_clock.advance(s)`` moves time by hand; ``virtual_clock.elapsed`` tells
        how much virtual time the test has used. Installed on the loop the test runs
        in, whatever its ``loop_scope``.
        """
        clock: VirtualClock = request.getfixturevalue(
            f"_headway_virtual_clock_{_loop_scope(request.node)}"
        )
        return clock

    @pytest.fixture
    def fake_api(request: pytest.FixtureRequest) -> FakeAPI:
        """A running :class:`~headway.testing.FakeAPI` with default settings.

        Configure it in the test (``fake_api.route(...)``, ``fake_api.script(...)``,
        ``fake_api.set_limits(rpm=...)``, ``fake_api.set_chaos(...)``); point clients at
        ``fake_api.url``. It serves from the loop the test runs in and is closed after
        the test.
        """
        api: FakeAPI = request.getfixturevalue(f"_headway_fake_api_{_loop_scope(request.node)}")
        return api

    def _make_virtual_clock(scope: _Scope) -> object:
        @pytest_asyncio.fixture(name=f"_headway_virtual_clock_{scope}", loop_scope=scope)
        async def clock_fixture() -> AsyncIterator[VirtualClock]:
            with VirtualClock() as clock:
                yield clock

        return clock_fixture

    def _make_fake_api(scope: _Scope) -> object:
        @pytest_asyncio.fixture(name=f"_headway_fake_api_{scope}", loop_scope=scope)
        async def api_fixture() -> AsyncIterator[FakeAPI]:
            async with FakeAPI() as api:
                yield api

        return api_fixture

    def _make_async_guard(scope: _Scope) -> object:
        @pytest_asyncio.fixture(name=_async_guard_name(scope), loop_scope=scope)
        async def guard(request: pytest.FixtureRequest) -> AsyncIterator[None]:
            leak_guard = _new_guard(request)
            leak_guard.start()
            yield
            _fail_on(await leak_guard.stop(), request)

        return guard

    for _scope in _LOOP_SCOPES:
        globals()[f"_headway_leak_guard_{_scope}"] = _make_async_guard(_scope)
        globals()[f"_headway_virtual_clock_{_scope}"] = _make_virtual_clock(_scope)
        globals()[f"_headway_fake_api_{_scope}"] = _make_fake_api(_scope)
