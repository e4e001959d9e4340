"""Every Python block of docs/testing.md runs here as a test module.

Each block is executed in a namespace of its own; the ``test_*`` functions it defines
are collected under ``test_docs_L<line>_<name>`` (``<line>`` is where the block starts
in the markdown), with their markers and fixtures intact.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(text: str) -> list[tuple[int, str]]:
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def _skipped(reason: str) -> Callable[[], None]:
    def test() -> None:
        pytest.skip(reason)

    return test


def _collect() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line, source in _blocks(DOC.read_text(encoding="utf-8")):
        namespace: dict[str, Any] = {"__name__": f"docs_testing_L{line}"}
        try:
            # Padded so that line numbers in tracebacks are the markdown file's own.
            exec(compile("\n" * line + source, str(DOC), "exec"), namespace)
        except pytest.skip.Exception as exc:
            found[f"test_docs_L{line}_skipped"] = _skipped(str(exc))
            continue
        for name, obj in namespace.items():
            if name.startswith("test_") and callable(obj):
                found[f"test_docs_L{line}_{name.removeprefix('test_')}"] = obj
    return found


globals().update(_collect())


def test_every_block_defines_a_test() -> None:
    blocks = _blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    for line, source in blocks:
        assert re.search(r"^(async )?def test_", source, re.M), f"block at line {line} has no test"
