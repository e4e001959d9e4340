"""Suite-wide test configuration for headway's own tests."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# headway's own plugin is loaded here rather than through its entry point (pyproject has
# "-p no:headway"): the entry point would import headway before coverage starts and hide
# every module's import-time lines from it.
pytest_plugins = ["headway.testing.plugin"]

settings.register_profile(
    "ci", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts a local Ray runs on one xdist worker: one Ray at a time.

    ``--dist loadgroup`` groups by an ``@group`` suffix of the node id, which pytest-xdist
    (3.8) writes to ``item._nodeid``; pytest 9.2 keeps the id in ``item._id`` and ignores
    that write, so every worker started its own Ray. The suffix is written here for both.
    """
    for item in items:
        path = item.path.as_posix()
        if "/tests/ray/" in path or path.endswith("/test_ray_backend.py"):
            item.add_marker(pytest.mark.xdist_group("ray"))
            if not item.nodeid.endswith("@ray"):
                _set_nodeid(item, item.nodeid + "@ray")


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    try:
        from _pytest.nodeid import NodeId  # pytest >= 9.2
    except ImportError:
        item._nodeid = nodeid
    else:
        item._id = NodeId.parse(nodeid)
