"""Start-up: what ``import headway.cli`` loads, and the packages that load names on use.

``headway run`` reaches its first request sooner when the console script imports only what
every command needs: pydantic, rich, aiohttp, the HTTP client and the Batch API machinery
are imported by the code that uses them. Each check runs in a fresh interpreter, because
this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import headway.batch
import headway.http
import headway.resilience
import headway.resilience.retry  # the subpackage, in sys.modules

#: Modules that ``import headway.cli`` must not load (each is imported where it is used).
HEAVY = (
    "pydantic",
    "rich",
    "aiohttp",
    "tomllib",
    "headway.http.client",
    "headway.http.config",
    "headway.http.endpoint",
    "headway.resilience",
    "headway.batch.batchapi",
    "headway._cli.demo",  # demo and serve-fake: imported when called or listed
    "headway._cli.serve",
)


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout))


def test_importing_the_cli_loads_no_heavy_module() -> None:
    loaded = _loaded_after("import headway.cli")
    assert "headway.cli" in loaded  # the check ran
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_a_submodule_of_headway_http_does_not_load_the_client() -> None:
    loaded = _loaded_after("import headway.http.tokens")
    assert "headway.http.tokens" in loaded
    assert "headway.http.client" not in loaded
    assert "pydantic" not in loaded


def test_the_run_path_loads_no_pydantic() -> None:
    """``headway run`` without a key builds its client and Policy without pydantic."""
    loaded = _loaded_after(
        "from headway.batch.sender import SenderSettings, Target, build_policy\n"
        "from headway.http.client import AsyncAPIClient\n"
        "import headway.http.transports, headway.resilience\n"
        "policy = build_policy(SenderSettings(Target('http://127.0.0.1:1')))\n"
        "AsyncAPIClient('http://127.0.0.1:1', policy=policy, auth_type='none')"
    )
    assert "headway.resilience.policy" in loaded  # the check ran
    assert "pydantic" not in loaded


def test_a_keyed_run_path_loads_no_pydantic() -> None:
    """With an API key the run wraps it in headway's own redacting ``Secret``, not pydantic's."""
    loaded = _loaded_after(
        "import asyncio, headway.cli\n"
        "from headway._cli.run import run\n"
        "from headway.batch.sender import SenderSettings, open_sender, resolve_target\n"
        "target = resolve_target(provider=None, base_url='http://127.0.0.1:1/v1', endpoint=None,\n"
        "                        api_key_env='K', environ={'K': 'sk-start-up-0000'})\n"
        "assert 'sk-start-up' not in repr(target) and target.key() == 'sk-start-up-0000'\n"
        "async def main():\n"
        "    async with open_sender(SenderSettings(target)):\n"
        "        pass\n"
        "asyncio.run(main())"
    )
    assert "headway.http.client" in loaded  # the check ran
    assert "pydantic" not in loaded
    # Loaded when they are used: a stream, a gzip-compressed input.
    assert "headway.http.streaming" not in loaded
    assert "gzip" not in loaded
    assert "headway._event_types" not in loaded  # the typed events: when one is built


#: Packages whose names load on first use (``headway.resilience.retry`` is also the name
#: of the decorator in ``headway.resilience``: the subpackage is taken from sys.modules).
PACKAGES = [
    headway.http,
    headway.batch,
    headway.resilience,
    sys.modules["headway.resilience.retry"],
]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_name_resolves(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    for name in names:
        value = getattr(package, name)
        assert value is getattr(package, name)  # cached on first use
    assert set(names) <= set(dir(package))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_an_unknown_name_is_an_attribute_error(package: object) -> None:
    missing = "no_such_name"
    with pytest.raises(AttributeError, match=missing):
        getattr(package, missing)


def test_names_come_from_their_modules() -> None:
    from headway.batch.runner import BatchRunner
    from headway.http.client import AsyncAPIClient
    from headway.http.transports import Request

    assert headway.http.AsyncAPIClient is AsyncAPIClient
    assert headway.http.Request is Request
    assert headway.batch.BatchRunner is BatchRunner


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("headway.cli", "check_exactly_once"),
        ("headway.events", "RetryScheduled"),
        ("headway.http.client", "EventStream"),
    ],
)
def test_names_loaded_on_use_resolve_and_others_do_not(module: str, name: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    assert getattr(mod, name).__name__ == name
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = mod.no_such_name
