"""Helpers for the concurrency tests (imported by name; tests/ has no packages)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from headway.testing import VirtualClock

T = TypeVar("T")


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` in a fresh loop driven by virtual time (for Hypothesis examples)."""

    async def wrapper() -> T:
        with VirtualClock():
            async with asyncio.timeout(10_000):
                return await main()

    return asyncio.run(wrapper())


class Gauge:
    """Counts how many calls are inside at once, and the most ever seen."""

    def __init__(self) -> None:
        self.now = 0
        self.max = 0
        self.entered = 0

    def __enter__(self) -> Gauge:
        self.now += 1
        self.entered += 1
        self.max = max(self.max, self.now)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.now -= 1
