"""Every Python block of docs/core.md runs as written, in virtual time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from headway import events
from headway.testing import VirtualClock

T = TypeVar("T")
DOC = Path(__file__).resolve().parents[1] / "docs" / "core.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)
_real_run = asyncio.run


def _virtual_run(coro: Coroutine[Any, Any, T], **kwargs: Any) -> T:
    async def main() -> T:
        with VirtualClock():
            return await coro

    return _real_run(main(), **kwargs)


@pytest.fixture
def virtual_asyncio_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio, "run", _virtual_run)
    monkeypatch.setattr(events, "_listeners", list(events._listeners))


def test_the_page_has_examples() -> None:
    assert len(BLOCKS) >= 6


@pytest.mark.usefixtures("virtual_asyncio_run")
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_core_doc_example(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(BLOCKS[index], f"docs/core.md example {index + 1}", "exec"), {"__name__": "doc"})
    assert capsys.readouterr().out.strip()
