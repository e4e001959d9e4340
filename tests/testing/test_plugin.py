"""The pytest plugin, tested the way users meet it: a fresh pytest run in a temp dir.

The plugin is loaded through its ``pytest11`` entry point, as in a user's project.
Each run collects several tests at once; outcomes are read from the JUnit XML report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@dataclass
class Outcome:
    status: str  # passed, failed, error, skipped
    message: str


def run_pytest(
    tmp_path: Path,
    files: dict[str, str],
    *args: str,
    ini: str = "",
    env: dict[str, str] | None = None,
) -> tuple[dict[str, Outcome], str]:
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n" + textwrap.dedent(ini)
    )
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-p",
            "no:cov",
            "-p",
            "no:hypothesispytest",
            "-p",
            "no:looptime_plugin",
            f"--junitxml={report}",
            "-q",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    outcomes: dict[str, Outcome] = {}
    if not report.exists():
        return outcomes, proc.stdout + proc.stderr
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or "") + "\n" + (child.text or "")
                break
        outcomes[name] = outcome = outcomes.get(name) or Outcome(status, message)
        if status != "passed":
            outcome.status, outcome.message = status, message
    return outcomes, proc.stdout + proc.stderr


LEAKY = """
import asyncio
import aiohttp
import pytest

from headway import _resources

async def forever():
    await asyncio.sleep(3600)

async def boom():
    raise ValueError("boom")

class Client:
    def __init__(self):
        _resources.track(self)
    def close(self):
        _resources.untrack(self)
    def __repr__(self):
        return "<Client demo>"

@pytest.mark.no_leaks
async def test_task_leak():
    asyncio.create_task(forever(), name="orphan")

@pytest.mark.no_leaks
async def test_session_leak():
    aiohttp.ClientSession()

@pytest.mark.no_leaks
async def test_resource_leak():
    Client()

@pytest.mark.no_leaks
async def test_coroutine_leak():
    boom()

@pytest.mark.no_leaks
async def test_exception_leak():
    t = asyncio.create_task(boom(), name="failing")
    await asyncio.sleep(0)
    del t

@pytest.mark.no_leaks
def test_sync_coroutine_leak():
    boom()

@pytest.mark.no_leaks
async def test_clean():
    async with aiohttp.ClientSession():
        pass
    task = asyncio.create_task(asyncio.sleep(0))
    await task

async def test_unmarked_leak_is_not_checked():
    asyncio.create_task(forever())

@pytest.mark.no_leaks
async def test_async_mock_session_pitfall():
    from unittest.mock import AsyncMock

    session = AsyncMock()
    async with session.get("https://x.test/") as resp:
        pass

@pytest.mark.no_leaks
@pytest.mark.allow_leaks
def test_all_markers_are_registered():
    pass
"""


def test_marked_tests_fail_naming_each_leak(tmp_path: Path) -> None:
    outcomes, output = run_pytest(
        tmp_path, {"test_leaky.py": LEAKY}, "--strict-markers", ini="asyncio_mode = auto\n"
    )
    expected = {
        "test_task_leak": ["'orphan'", "forever()", "test_leaky.py"],
        "test_session_leak": ["aiohttp.ClientSession", "test_leaky.py", "not closed"],
        "test_resource_leak": ["<Client demo>", "still open"],
        "test_coroutine_leak": ["'boom' was never awaited"],
        "test_exception_leak": ["ValueError('boom')", "'failing'"],
        "test_sync_coroutine_leak": ["'boom' was never awaited"],
    }
    for name, needles in expected.items():
        outcome = outcomes[name]
        assert outcome.status in ("failed", "error"), (name, output)
        assert "headway leak guard" in outcome.message, (name, outcome.message)
        for needle in needles:
            assert needle in outcome.message, (name, needle, outcome.message)
    assert outcomes["test_async_mock_session_pitfall"].status in ("failed", "error"), output
    assert "headway: how to fix this" in output
    assert "mock_aiohttp_session(...) for an" in output
    assert outcomes["test_clean"].status == "passed", output
    assert outcomes["test_unmarked_leak_is_not_checked"].status == "passed", output
    assert outcomes["test_all_markers_are_registered"].status == "passed", output


SUITE = """
import asyncio
import aiohttp
import pytest
import pytest_asyncio

from headway.testing import FakeAPI, VirtualClock

async def forever():
    await asyncio.sleep(3600)

@pytest_asyncio.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s

@pytest_asyncio.fixture(loop_scope="module")
async def module_session():
    async with aiohttp.ClientSession() as s:
        yield s

@pytest.mark.asyncio
async def test_fixture_owned_resources_are_not_leaks(session, fake_api):
    async with session.get(fake_api.url + "/v1/models") as resp:
        assert resp.status == 200

@pytest.mark.asyncio
async def test_leak_found_by_the_suite_wide_guard():
    asyncio.create_task(forever(), name="suite-orphan")

@pytest.mark.allow_leaks
@pytest.mark.asyncio
async def test_opted_out():
    asyncio.create_task(forever())

@pytest.mark.asyncio
@pytest.mark.virtual_time
async def test_an_hour_in_virtual_time():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for _ in range(60):
        await asyncio.sleep(60)
    assert loop.time() - t0 == pytest.approx(3600)

@pytest.mark.asyncio
async def test_virtual_clock_with_fake_api(virtual_clock, session):
    async with FakeAPI(rpm=1) as api:
        for _ in range(3):
            async with session.get(api.url + "/v1/models") as resp:
                if resp.status == 429:
                    await asyncio.sleep(int(resp.headers["retry-after"]))
        assert virtual_clock.elapsed >= 60 - 1e-6

def test_sync_clean():
    assert True

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_api():
    async with FakeAPI() as api:
        yield api

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_session():
    async with aiohttp.ClientSession() as s:
        yield s

class TestModuleScopedServer:
    # keep-alive connections of a module-scoped server are not the test's leaks
    @pytest.mark.asyncio(loop_scope="module")
    async def test_first_request(self, module_api, shared_session):
        async with shared_session.get(module_api.url + "/v1/models") as resp:
            assert resp.status == 200

    @pytest.mark.asyncio(loop_scope="module")
    async def test_second_request_reuses_the_connection(self, module_api, shared_session):
        async with shared_session.get(module_api.url + "/v1/models") as resp:
            assert resp.status == 200
        assert len(module_api.requests) == 2

class TestModuleLoop:
    @pytest.mark.asyncio(loop_scope="module")
    async def test_leaks_in_a_module_loop(self):
        asyncio.create_task(forever(), name="module-orphan")

    @pytest.mark.asyncio(loop_scope="module")
    async def test_fixtures_follow_the_module_loop(self, virtual_clock, fake_api, module_session):
        await asyncio.sleep(600)
        assert virtual_clock.elapsed == pytest.approx(600)
        async with module_session.get(fake_api.url + "/v1/models") as resp:
            assert resp.status == 200

    @pytest.mark.asyncio(loop_scope="module")
    async def test_next_test_in_the_same_loop_is_unaffected(self):
        pending = [t.get_name() for t in asyncio.all_tasks() if not t.done()]
        assert "module-orphan" not in pending
"""


def test_strict_mode_with_the_command_line_option(tmp_path: Path) -> None:
    outcomes, output = run_pytest(
        tmp_path, {"test_suite.py": SUITE}, "--headway-leak-check", ini="asyncio_mode = strict\n"
    )
    assert outcomes["test_fixture_owned_resources_are_not_leaks"].status == "passed", output
    leak = outcomes["test_leak_found_by_the_suite_wide_guard"]
    assert leak.status in ("failed", "error"), output
    assert "'suite-orphan'" in leak.message
    assert outcomes["test_opted_out"].status == "passed", output
    assert outcomes["test_an_hour_in_virtual_time"].status == "passed", output
    assert outcomes["test_virtual_clock_with_fake_api"].status == "passed", output
    assert outcomes["test_sync_clean"].status == "passed", output
    module_leak = outcomes["test_leaks_in_a_module_loop"]
    assert module_leak.status in ("failed", "error"), output
    assert "'module-orphan'" in module_leak.message
    assert outcomes["test_next_test_in_the_same_loop_is_unaffected"].status == "passed", output
    assert outcomes["test_fixtures_follow_the_module_loop"].status == "passed", output
    assert outcomes["test_first_request"].status == "passed", output
    assert outcomes["test_second_request_reuses_the_connection"].status == "passed", output


def test_auto_mode_with_the_ini_option(tmp_path: Path) -> None:
    outcomes, output = run_pytest(
        tmp_path,
        {"test_suite.py": SUITE},
        ini="asyncio_mode = auto\nheadway_leak_check = true\n",
    )
    assert outcomes["test_leak_found_by_the_suite_wide_guard"].status in ("failed", "error")
    assert outcomes["test_an_hour_in_virtual_time"].status == "passed", output
    assert outcomes["test_fixture_owned_resources_are_not_leaks"].status == "passed", output
    assert outcomes["test_next_test_in_the_same_loop_is_unaffected"].status == "passed", output


def test_nothing_changes_without_a_marker_or_option(tmp_path: Path) -> None:
    outcomes, output = run_pytest(tmp_path, {"test_suite.py": SUITE}, ini="asyncio_mode = strict\n")
    # without the guard, the leak passes silently and spills into the next test
    spilled = "test_next_test_in_the_same_loop_is_unaffected"
    assert outcomes[spilled].status == "failed", output
    assert all(o.status == "passed" for n, o in outcomes.items() if n != spilled), output


def test_only_headways_own_markers_are_registered(tmp_path: Path) -> None:
    files = {
        "test_markers.py": """
        import pytest

        @pytest.mark.slow
        def test_generic_label():
            pass
        """
    }
    _outcomes, output = run_pytest(tmp_path, files, "--strict-markers", "--markers")
    assert "virtual_time:" in output
    assert "no_leaks:" in output
    assert "allow_leaks:" in output
    for generic in ("@pytest.mark.unit:", "@pytest.mark.integration:", "@pytest.mark.slow:"):
        assert generic not in output, output


ANYIO = """
import asyncio
import aiohttp
import pytest

pytestmark = pytest.mark.anyio

@pytest.fixture
def anyio_backend():
    return "asyncio"

async def forever():
    await asyncio.sleep(3600)

async def test_fake_api_and_virtual_clock(fake_api, virtual_clock):
    async with aiohttp.ClientSession() as session:
        async with session.get(fake_api.url + "/v1/models") as resp:
            assert resp.status == 200
    await asyncio.sleep(3600)
    assert virtual_clock.elapsed == pytest.approx(3600)
    assert asyncio.get_running_loop().time() == virtual_clock.now()

@pytest.mark.virtual_time
async def test_virtual_time_marker():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.sleep(86400)
    assert loop.time() - t0 == pytest.approx(86400)

@pytest.mark.no_leaks
async def test_pending_task_is_caught():
    asyncio.create_task(forever(), name="anyio-orphan")

@pytest.mark.no_leaks
async def test_clean_under_anyio():
    await asyncio.sleep(0)
"""

ANYIO_TRIO = """
import pytest

pytestmark = pytest.mark.anyio

@pytest.fixture
def anyio_backend():
    return "trio"

async def test_fake_api_on_trio(fake_api):
    pass
"""

NO_RUNNER = """
def test_sync_test_asks_for_fake_api(fake_api):
    pass

async def test_async_test_without_a_runner(virtual_clock):
    pass
"""


def test_anyio_runner_gets_every_fixture_and_marker(tmp_path: Path) -> None:
    outcomes, output = run_pytest(
        tmp_path, {"test_anyio.py": ANYIO}, "-p", "no:asyncio", ini="headway_leak_check = true\n"
    )
    assert outcomes["test_fake_api_and_virtual_clock"].status == "passed", output
    assert outcomes["test_virtual_time_marker"].status == "passed", output
    assert outcomes["test_clean_under_anyio"].status == "passed", output
    leak = outcomes["test_pending_task_is_caught"]
    assert leak.status in ("failed", "error"), output
    assert "'anyio-orphan'" in leak.message
    assert "forever()" in leak.message


def test_fixtures_without_a_runner_say_what_to_do(tmp_path: Path) -> None:
    outcomes, output = run_pytest(
        tmp_path, {"test_none.py": NO_RUNNER, "test_trio.py": ANYIO_TRIO}, "-p", "no:asyncio"
    )
    sync = outcomes["test_sync_test_asks_for_fake_api"]
    assert sync.status == "error", output
    assert "needs an async test" in sync.message
    assert outcomes["test_async_test_without_a_runner"].status == "error", output
    assert "pytest-asyncio" in sync.message
    assert "fixture 'virtual_clock' not found" not in output
    trio = outcomes["test_fake_api_on_trio"]
    assert trio.status == "error", output
    assert "anyio_backend = 'asyncio'" in trio.message


BROKEN_AIOHTTP_WEB = """
raise ImportError("aiohttp.web is broken in this environment")
"""


def test_a_feature_that_cannot_load_fails_only_its_tests(tmp_path: Path) -> None:
    # aiohttp.web is shadowed by a module that cannot be imported: the plugin still loads,
    # a plain project's tests pass, and only the test using FakeAPI fails, saying why.
    shim = tmp_path / "shim" / "aiohttp"
    shim.mkdir(parents=True)
    real = Path(__import__("aiohttp").__file__).parent
    (shim / "__init__.py").write_text(
        f"__path__ = [{str(shim)!r}, {str(real)!r}]\n"
        f"exec(open({str(real / '__init__.py')!r}).read())\n"
    )
    (shim / "web.py").write_text(BROKEN_AIOHTTP_WEB)
    files = {
        "conftest.py": "",
        "test_plain.py": """
        import pytest

        def test_plain():
            assert 1 + 1 == 2

        @pytest.mark.asyncio
        async def test_uses_fake_api(fake_api):
            pass
        """,
    }
    outcomes, output = run_pytest(
        tmp_path, files, env={"PYTHONPATH": str(tmp_path / "shim")}, ini="asyncio_mode = strict\n"
    )
    assert outcomes["test_plain"].status == "passed", output
    broken = outcomes["test_uses_fake_api"]
    assert broken.status == "error", output
    assert "headway.testing.fake_api could not be imported" in broken.message
