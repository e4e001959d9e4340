"""headway.testing: a pytest toolkit for async API code.

Virtual time (:class:`VirtualClock`), a real fake API server (``FakeAPI``), a leak
guard, async mocks done right and Hypothesis strategies. Installed as a pytest plugin:
its fixtures are available once headway is installed.
"""

from headway.testing.clock import VirtualClock

__all__ = ["VirtualClock"]
