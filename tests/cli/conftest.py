from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from headway.testing.fake_api import FakeAPI


class ThreadedFakeAPI:
    """A FakeAPI on its own loop in a thread, for CLI tests that call asyncio.run."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.url = ""
        self.calls = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._api: FakeAPI | None = None

    def _main(self) -> None:
        async def serve() -> None:
            async with FakeAPI(**self.kwargs) as api:
                self._api = api
                self.url = api.url
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                self._ready.set()
                await self._stop.wait()
                self.calls = len(api.requests)

        asyncio.run(serve())

    def arrived(self) -> int:
        """Requests the server has received so far."""
        return 0 if self._api is None else len(self._api.requests)

    def journal(self) -> list[Any]:
        """The requests the server has received so far (``RecordedRequest``)."""
        return [] if self._api is None else list(self._api.requests)

    def start(self) -> ThreadedFakeAPI:
        self._thread.start()
        assert self._ready.wait(10), "FakeAPI did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def fake_server() -> Iterator[Callable[..., ThreadedFakeAPI]]:
    servers: list[ThreadedFakeAPI] = []

    def start(**kwargs: Any) -> ThreadedFakeAPI:
        server = ThreadedFakeAPI(**kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def write_chat_input(path: Path, n: int, *, prefix: str = "q") -> Path:
    with open(path, "w") as f:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": 8,
            }
            f.write(
                json.dumps(
                    {
                        "custom_id": f"{prefix}{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + "\n"
            )
    return path


def result_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]
