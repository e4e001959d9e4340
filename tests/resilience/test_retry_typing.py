"""The @retry decorator keeps signatures for mypy: checked by running mypy on a snippet."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SNIPPET = textwrap.dedent(
    """
    from typing import assert_type
    from headway.resilience.retry import RetryPolicy, retry

    @retry
    async def bare(a: int, b: str = "x") -> list[str]:
        return [b] * a

    @retry(max_retries=5, jitter="equal")
    async def configured(url: str, *, timeout: float) -> bytes:
        return url.encode()

    async def plain(x: int) -> int:
        return x

    wrapped = RetryPolicy().wrap(plain)

    async def use() -> None:
        assert_type(await bare(2), list[str])
        assert_type(await configured("u", timeout=1.0), bytes)
        assert_type(await wrapped(1), int)
        await bare("not an int")  # E1
        await configured("u")  # E2
    """
)


@pytest.mark.slow
def test_retry_decorator_keeps_signature_for_mypy(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    out, err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(path)]
    )
    lines = [line for line in out.splitlines() if ": error:" in line]
    # exactly the two bad calls are errors; the assert_type lines pass
    assert len(lines) == 2, out + err
    assert 'Argument 1 to "bare" has incompatible type "str"' in out
    assert 'Missing named argument "timeout"' in out
    assert status == 1
