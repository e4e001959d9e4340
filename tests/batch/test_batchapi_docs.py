"""The Python examples of the "Batch APIs" section of docs/batch.md run here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "batch.md"


def _blocks() -> list[tuple[int, str]]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("\n## Batch APIs")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    offset = text.count("\n", 0, start)
    return [
        (offset + section.count("\n", 0, m.start()) + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", section, re.S | re.M)
    ]


@pytest.mark.parametrize(("line", "source"), _blocks(), ids=lambda v: str(v)[:8])
def test_batch_api_doc_example(line: int, source: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile("\n" * line + source, str(DOC), "exec"), {"__name__": "docs_batch"})
    out = capsys.readouterr().out
    assert "3 batches submitted" in out
    assert "100 results" in out
