"""The headway pytest plugin (registered through the ``pytest11`` entry point).

Nothing here changes a test until it uses a fixture, a marker or an ini option, and
loading the plugin costs next to nothing: it imports only pytest at start, and each
feature (virtual time, FakeAPI, the leak guard, the mocks) is imported by the first test
that uses it. If a feature cannot load (a missing or too old dependency), only the tests
that use it fail, with a message that says why; the rest of the run is unaffected.

Fixtures:
    ``virtual_clock`` (the test's loop in virtual time), ``fake_api`` (a running
    :class:`~headway.testing.FakeAPI`), ``capture_logs`` (headway's structured log
    records), ``mock_api_responses`` (canned provider answers).

Markers:
    ``virtual_time`` (run the test's loop in virtual time), ``no_leaks`` (fail the test
    if it leaks tasks, sessions, clients, headway resources, unawaited coroutines or
    unretrieved task exceptions), ``allow_leaks`` (opt one test out of a suite-wide
    guard). The plugin registers only these three.

Options:
    ``--headway-leak-check`` or the ini option ``headway_leak_check = true`` runs the
    leak guard for every test (it costs about as much as the marker: a garbage
    collection of only what the test allocated).

Async tests may be run by pytest-asyncio (any ``loop_scope``) or by anyio's pytest
plugin on its asyncio backend; the fixtures and markers work under both.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    from headway.testing.clock import VirtualClock
    from headway.testing.fake_api import FakeAPI
    from headway.testing.leaks import Leak, LeakGuard
    from headway.testing.mocks import CapturedLogs, MockAPIResponses

try:
    import pytest_asyncio
except Exception:  # not installed (or broken): anyio's runner or a clear error instead
    pytest_asyncio = None  # type: ignore[assignment]

_Scope = Literal["function", "class", "module", "package", "session"]
_LOOP_SCOPES: tuple[_Scope, ...] = ("function", "class", "module", "package", "session")
_SYNC_GUARD = "_headway_leak_guard_sync"
_ANYIO_GUARD = "_headway_leak_guard_anyio"
_MARKERS = (
    "virtual_time: run the test's event loop in virtual time (headway)",
    "no_leaks: fail the test if it leaks tasks, sessions or open resources (headway)",
    "allow_leaks: skip the headway leak guard for this test (headway)",
)


def _feature(module: str) -> Any:
    """Import ``headway.testing.<module>`` on first use; a failure fails one test only."""
    try:
        return importlib.import_module(f"headway.testing.{module}")
    except Exception as exc:
        pytest.fail(
            f"headway.testing.{module} could not be imported ({type(exc).__name__}: {exc}); "
            "check that headway's dependencies are installed at the versions it declares",
            pytrace=False,
        )


def _asyncio_plugin_active(config: pytest.Config) -> bool:
    """pytest-asyncio is importable and its plugin loaded (not ``-p no:asyncio``)."""
    return getattr(pytest_asyncio, "fixture", None) is not None and (
        config.pluginmanager.has_plugin("asyncio")
    )


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
    for line in _MARKERS:
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


def _is_anyio(item: pytest.Item, fixturenames: list[str] | None = None) -> bool:
    names = fixturenames if fixturenames is not None else getattr(item, "fixturenames", [])
    return "anyio_backend" in names or item.get_closest_marker("anyio") is not None


def _is_async(item: pytest.Item) -> bool:
    """Whether pytest-asyncio runs ``item`` in an event loop."""
    is_async_test = getattr(pytest_asyncio, "is_async_test", None)
    try:
        return bool(is_async_test(item)) if is_async_test is not None else False
    except Exception:  # pragma: no cover - a pytest-asyncio whose API changed
        return False


def _runs_in_a_loop(item: pytest.Item, fixturenames: list[str]) -> bool:
    obj = getattr(item, "obj", None)
    inner = getattr(getattr(obj, "hypothesis", None), "inner_test", obj)
    return _is_anyio(item, fixturenames) or _is_async(item) or inspect.iscoroutinefunction(inner)


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
        if name == "anyio_backend":
            continue  # module-scoped by anyio, but cheap and never a leak
        fixturedefs = defs.get(name)
        if fixturedefs and getattr(fixturedefs[-1], "scope", "function") == "function":
            return index
    return len(fixturenames)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    everywhere = _leak_check_everywhere(config)
    asyncio_plugin = _asyncio_plugin_active(config)
    for item in items:
        fixturenames = getattr(item, "fixturenames", None)
        if not isinstance(fixturenames, list):
            continue
        at = _first_function_scoped(item, fixturenames)
        if (
            item.get_closest_marker("virtual_time") is not None
            and "virtual_clock" not in fixturenames
            and (asyncio_plugin or _runs_in_a_loop(item, fixturenames))
        ):
            # (pytest-asyncio gives even a sync test a current loop, here in virtual time)
            fixturenames.insert(at, "virtual_clock")
        guarded = everywhere or item.get_closest_marker("no_leaks") is not None
        if guarded and item.get_closest_marker("allow_leaks") is None:
            if _is_anyio(item, fixturenames):
                name = _ANYIO_GUARD
            elif _is_async(item):
                name = _async_guard_name(_loop_scope(item))
            else:
                name = _SYNC_GUARD
            if name not in fixturenames:
                fixturenames.insert(at, name)


# The classic async-mock mistakes, and what fixes each (shown under a failing test that
# uses headway's fixtures, markers or leak guard).
_PITFALLS = (
    (
        re.compile(
            r"'coroutine' object (has no attribute '__aenter__'|does not support the "
            r"asynchronous context manager protocol)"
        ),
        "an AsyncMock method returns a coroutine, but `async with session.get(...)` needs "
        "an async context manager: use headway.testing.mock_aiohttp_session(...) for an "
        "aiohttp session, or async_cm_mock(...) for any async context manager",
    ),
    (
        re.compile(r"object (Magic|NonCallableMagic)?Mock can't be used in 'await' expression"),
        "a MagicMock is not awaitable: use AsyncMock for async methods, or "
        "headway.testing.mock_response(...), whose json(), text() and read() are awaitable",
    ),
    (
        re.compile(r"'(coroutine|AsyncMock)' object has no attribute '(status|json|headers|text)'"),
        "a response was used without `await` (an AsyncMock session returns coroutines): "
        "use headway.testing.mock_aiohttp_session(...), whose requests give responses "
        "both awaited and in `async with`",
    ),
)
_OWN_FIXTURES = frozenset(
    {"virtual_clock", "fake_api", "capture_logs", "mock_api_responses", _SYNC_GUARD, _ANYIO_GUARD}
)


def _uses_headway(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if names & _OWN_FIXTURES or any(n.startswith("_headway_") for n in names):
        return True
    return any(item.get_closest_marker(m) is not None for m in ("virtual_time", "no_leaks"))


def pitfall_hint(exc: BaseException) -> str | None:
    """What fixes ``exc`` if it is a classic async-mock mistake, else ``None``."""
    text = str(exc)
    for pattern, hint in _PITFALLS:
        if pattern.search(text):
            return hint
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and call.excinfo is not None and _uses_headway(item):
        hint = pitfall_hint(call.excinfo.value)
        if hint is not None:
            report.sections.append(("headway: how to fix this", hint))
    return report


def _fail_on(leaks: list[Leak], request: pytest.FixtureRequest) -> None:
    if leaks:
        format_leaks = _feature("leaks").format_leaks
        pytest.fail(format_leaks(leaks, request.node.nodeid), pytrace=False)


def _new_guard(request: pytest.FixtureRequest) -> LeakGuard:
    # A full collection, made cheap by freezing what existed before the test.
    guard: LeakGuard = _feature("leaks").LeakGuard()
    return guard


def _anyio_backend(request: pytest.FixtureRequest) -> str:
    backend = request.getfixturevalue("anyio_backend")
    return str(backend if isinstance(backend, str) else backend[0])


def _loop_fixture(request: pytest.FixtureRequest, what: str) -> str:
    """The name of the fixture that builds ``what`` in the loop this test runs in."""
    node = request.node
    if "anyio_backend" in request.fixturenames:
        backend = _anyio_backend(request)
        if backend != "asyncio":
            pytest.fail(
                f"headway's {what} runs on asyncio, and this test runs on anyio's "
                f"{backend!r} backend; give it anyio_backend = 'asyncio'",
                pytrace=False,
            )
        return f"_headway_{what}_anyio"
    if _asyncio_plugin_active(request.config):
        return f"_headway_{what}_{_loop_scope(node)}"
    pytest.fail(
        f"headway's {what} fixture needs an async test in an event loop: install "
        "pytest-asyncio, or run the test with anyio's plugin (@pytest.mark.anyio)",
        pytrace=False,
    )


def _sync_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    guard = _new_guard(request)
    guard.start()
    yield
    _fail_on(guard.stop_sync(), request)


@pytest.fixture(name=_SYNC_GUARD)
def _headway_leak_guard_sync(request: pytest.FixtureRequest) -> Iterator[None]:
    """The leak guard for a test that does not run in an event loop."""
    yield from _sync_guard(request)


@pytest.fixture(name=_ANYIO_GUARD)
def _headway_leak_guard_anyio(request: pytest.FixtureRequest) -> Iterator[None]:
    """The leak guard for a test run by anyio's plugin: the asyncio one, or refusal."""
    backend = _anyio_backend(request)
    if backend == "asyncio":
        request.getfixturevalue("_headway_leak_guard_anyio_asyncio")
        yield
        return
    if request.node.get_closest_marker("no_leaks") is not None:
        pytest.fail(
            f"headway's no_leaks guard watches asyncio tasks; this test runs on anyio's "
            f"{backend!r} backend: run it on 'asyncio' or drop the marker",
            pytrace=False,
        )
    # The suite-wide guard still checks what is not tied to asyncio's tasks.
    yield from _sync_guard(request)


@pytest.fixture(name="_headway_leak_guard_anyio_asyncio")
async def _anyio_async_guard(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    leak_guard = _new_guard(request)
    leak_guard.start()
    yield
    _fail_on(await leak_guard.stop(), request)


@pytest.fixture(name="_headway_virtual_clock_anyio")
async def _anyio_virtual_clock() -> AsyncIterator[VirtualClock]:
    with _feature("clock").VirtualClock() as clock:
        yield clock


@pytest.fixture(name="_headway_fake_api_anyio")
async def _anyio_fake_api() -> AsyncIterator[FakeAPI]:
    async with _feature("fake_api").FakeAPI() as api:
        yield api


@pytest.fixture
def virtual_clock(request: pytest.FixtureRequest) -> VirtualClock:
    """The test's event loop in virtual time: idle waits complete at once.

    ``virtual_clock.advance(s)`` moves time by hand; ``virtual_clock.elapsed`` tells
    how much virtual time the test has used. Installed on the loop the test runs
    in, whatever its ``loop_scope`` (pytest-asyncio) or on anyio's asyncio loop.
    """
    clock: VirtualClock = request.getfixturevalue(_loop_fixture(request, "virtual_clock"))
    return clock


@pytest.fixture
def fake_api(request: pytest.FixtureRequest) -> FakeAPI:
    """A running :class:`~headway.testing.FakeAPI` with default settings.

    Configure it in the test (``fake_api.route(...)``, ``fake_api.script(...)``,
    ``fake_api.set_limits(rpm=...)``, ``fake_api.set_chaos(...)``); point clients at
    ``fake_api.url``. It serves from the loop the test runs in and is closed after
    the test.
    """
    api: FakeAPI = request.getfixturevalue(_loop_fixture(request, "fake_api"))
    return api


@pytest.fixture
def capture_logs() -> Iterator[CapturedLogs]:
    """headway's structured log records (``logging.getLogger("headway")``), at DEBUG.

    ``capture_logs.records`` are the log records, ``capture_logs.events`` the
    :class:`~headway.events.Event` objects on them (``record.headway_event``), and
    ``capture_logs.kinds()`` their kinds in order.
    """
    with _feature("mocks").capture_headway_logs() as captured:
        yield captured


@pytest.fixture
def mock_api_responses() -> MockAPIResponses:
    """Canned provider answers: ``success``, ``rate_limit``, ``auth_error``, ``server_error``...

    Each is a :class:`~headway.testing.mocks.CannedResponse` with ``status``, ``json``
    and ``headers``, and ``.mock()`` builds a :func:`~headway.testing.mocks.mock_response`.
    """
    responses: MockAPIResponses = _feature("mocks").MockAPIResponses()
    return responses


if pytest_asyncio is not None:

    def _make_virtual_clock(scope: _Scope) -> object:
        @pytest_asyncio.fixture(name=f"_headway_virtual_clock_{scope}", loop_scope=scope)
        async def clock_fixture() -> AsyncIterator[VirtualClock]:
            with _feature("clock").VirtualClock() as clock:
                yield clock

        return clock_fixture

    def _make_fake_api(scope: _Scope) -> object:
        @pytest_asyncio.fixture(name=f"_headway_fake_api_{scope}", loop_scope=scope)
        async def api_fixture() -> AsyncIterator[FakeAPI]:
            async with _feature("fake_api").FakeAPI() as api:
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

    try:
        for _scope in _LOOP_SCOPES:
            globals()[f"_headway_leak_guard_{_scope}"] = _make_async_guard(_scope)
            globals()[f"_headway_virtual_clock_{_scope}"] = _make_virtual_clock(_scope)
            globals()[f"_headway_fake_api_{_scope}"] = _make_fake_api(_scope)
    except Exception:  # pragma: no cover - a pytest-asyncio without loop_scope (< 0.24)
        pytest_asyncio = None  # type: ignore[assignment]
