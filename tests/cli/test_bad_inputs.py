"""Every command with bad inputs: one line saying what to do, exit 2, never a traceback."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from headway.cli import cli

from .conftest import write_chat_input

#: (args, env, fragment of the one-line message). ``IN``/``OUT``/``DIR`` are filled in.
BAD = [
    (["run", "IN", "-o", "OUT", "--bogus"], {}, "No such option '--bogus'"),
    (["run", "IN", "-o", "OUT", "--rpm", "-1"], {}, "--rpm"),
    (["run", "IN"], {}, "--output"),
    (["run", "DIR/nope.jsonl", "-o", "OUT", "--base-url", "http://x"], {}, "does not exist"),
    (["run", "DIR", "-o", "OUT", "--base-url", "http://x"], {}, "is a directory"),
    (["run", "IN", "-o", "DIR", "--base-url", "http://x"], {}, "is a directory"),
    (["run", "IN", "-o", "OUT"], {}, "--provider NAME or --base-url"),
    (["run", "IN", "-o", "OUT", "--base-url", "ftp://x"], {}, "http(s) URL"),
    (["run", "IN", "-o", "OUT", "--base-url", "notaurl"], {}, "http(s) URL"),
    (["run", "IN", "-o", "OUT", "--request-url", "x/v1/embeddings"], {}, "--request-url must be"),
    (
        ["run", "IN", "-o", "OUT", "--request-url", "http://h/v1/e", "--base-url", "http://h"],
        {},
        "not both",
    ),
    (
        ["run", "IN", "-o", "OUT", "--base-url", "http://h", "--endpoint", "http://h/v1/e"],
        {},
        "use --request-url",
    ),
    (["run", "IN", "-o", "OUT", "--provider", "openai"], {"OPENAI_API_KEY": None}, "is not set"),
    (["run", "IN", "-o", "OUT", "--provider", "openai"], {"OPENAI_API_KEY": ""}, "is empty"),
    (
        ["run", "IN", "-o", "OUT", "--base-url", "http://x", "--redis-url", "notaurl"],
        {},
        "--redis-url must start with redis://",
    ),
    (["run", "IN", "-o", "OUT", "--base-url", "http://x", "--shard", "1-4"], {}, "write K/N"),
    (["run", "IN", "-o", "OUT", "--base-url", "http://x", "--shard", "5/4"], {}, "K/N"),
    (["run", "IN", "-o", "-", "--base-url", "http://x"], {}, "add --no-resume"),
    (
        ["run", "IN", "-o", "-", "--no-resume", "--retry-failed", "--base-url", "http://x"],
        {},
        "--retry-failed needs a result file",
    ),
    (["run", "IN", "-o", "OUT", "--progress", "fancy"], {}, "--progress"),
    (["run", "IN", "-o", "OUT", "--output-format", "xml"], {}, "--output-format"),
    (["run", "IN", "-o", "OUT", "--config", "DIR/none.toml"], {}, "does not exist"),
    (["--config", "DIR/none.toml", "run", "--help"], {}, "does not exist"),
    (["demo", "--requests", "0"], {}, "--requests"),
    (["demo", "--dir", "IN"], {}, "IN"),
    (["serve-fake", "--port", "70000"], {}, "--port"),
    (["serve-fake", "--rate-limit", "0.8", "--server-error", "0.5"], {}, "fault rates"),
    (["nope"], {}, "No such command"),
]


def _fill(args: list[str], tmp_path: Path, inp: Path) -> list[str]:
    out = []
    for a in args:
        a = a.replace("DIR", str(tmp_path))
        out.append(str(inp) if a == "IN" else str(tmp_path / "out.jsonl") if a == "OUT" else a)
    return out


@pytest.mark.parametrize(("args", "env", "fragment"), BAD)
def test_bad_input_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, Any],
    fragment: str,
) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, _fill(args, tmp_path, inp))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("headway: error: ")
    assert fragment.replace("IN", str(inp)) in lines[0]


def test_redis_url_without_the_redis_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    real = importlib.util.find_spec

    def find_spec(name: str, *a: Any, **k: Any) -> Any:
        return None if name == "redis" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    args = ["run", str(inp), "-o", str(tmp_path / "o"), "--base-url", "http://x"]
    result = CliRunner().invoke(cli, [*args, "--redis-url", "redis://localhost:6379/0"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "headway: error: --redis-url needs the redis extra: pip install 'headway[redis]'"
    )
