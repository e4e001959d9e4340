"""Fixtures for the Ray tests: one local Ray per session, FakeAPI in a thread.

``test_ray.py`` needs the ``ray`` extra (``pip install -e '.[dev,ray]'``). Without it
it is not collected — except with ``HEADWAY_REQUIRE_RAY=1`` (CI's Ray step, in
``.ci/run``), where a missing Ray fails the run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from headway.testing import FakeAPI

# .ci/run's Ray step sets HEADWAY_REQUIRE_RAY=1 after installing the extra: there a
# missing Ray fails the run. Its other passes (the suite without the extra, the lowest
# declared versions) leave test_ray.py out.
REQUIRED = os.environ.get("HEADWAY_REQUIRE_RAY") == "1"


def _ray_installed() -> bool:
    # this directory is called "ray" too: only a real package (with an origin) counts
    spec = importlib.util.find_spec("ray")
    return spec is not None and spec.origin is not None


if not _ray_installed():
    if REQUIRED:
        raise ImportError("ray is not installed: pip install -e '.[dev,ray]' (CI runs tests/ray)")
    collect_ignore_glob = ["test_ray.py"]  # test_caller.py needs no Ray


class ServedAPI:
    """A :class:`FakeAPI` served from its own thread and loop (Ray calls block the test's)."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.api: FakeAPI = self._run(FakeAPI(**options).start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    @property
    def url(self) -> str:
        return self.api.url

    def requests(self) -> list[Any]:
        """A snapshot of the journal, taken on the server's loop."""

        async def snap() -> list[Any]:
            return list(self.api.requests)

        result: list[Any] = self._run(snap())
        return result

    def close(self) -> None:
        self._run(self.api.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def served() -> Iterator[Any]:
    """``served(**FakeAPI options)`` starts a FakeAPI in a thread; closed after the test."""
    started: list[ServedAPI] = []

    def start(**options: Any) -> ServedAPI:
        s = ServedAPI(**options)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray for the whole session: 2 CPUs, no dashboard (about 5 s to start)."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        namespace="headway-tests",
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data drops a per-dataset log handler with its file still open when two
    # datasets overlap (register_dataset_logger makes the waiting one's handler again);
    # the file is then closed by the garbage collector, a ResourceWarning the suite
    # turns into an error in whichever test runs then. The driver needs no such files.
    import ray.data._internal.logging as data_logging

    make_handler = data_logging._create_dataset_log_handler
    data_logging._create_dataset_log_handler = lambda dataset_id: logging.NullHandler()
    try:
        yield ray
    finally:
        data_logging._create_dataset_log_handler = make_handler
        ray.shutdown()
