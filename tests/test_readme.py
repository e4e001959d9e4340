"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = compile(BLOCKS[index], f"README.md example {index + 1}", "exec")
    exec(code, {"__name__": "readme_example"})
    assert capsys.readouterr().out.strip(), "each example prints what it shows"


def test_quickstart_commands_are_the_two_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    assert "pip install -e . && headway demo" in text
    assert "pip install -e '.[dev,ray]' && pytest" in text
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -e '.[dev,ray]' && pytest" in ci
    # and CI runs both halves of it
    assert "\npip install -e '.[dev,ray]'\n" in ci
    assert "\nHEADWAY_REQUIRE_RAY=1 pytest\n" in ci
