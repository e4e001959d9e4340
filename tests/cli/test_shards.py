"""headway run --shard K/N --redis-url URL: workers split one input and share one limit."""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from headway.cli import cli

from .conftest import ThreadedFakeAPI, result_ids, write_chat_input

REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(
    not redis_up() and not os.environ.get("CI"),
    reason="no Redis server on 127.0.0.1:6379 (CI always has one)",
)


def run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_shards_split_the_input_exactly(
    tmp_path: Path, fake_server: Callable[..., ThreadedFakeAPI]
) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 40)
    outs = [tmp_path / f"out.{k}.jsonl" for k in (1, 2, 3)]
    for k, out in enumerate(outs, 1):
        code, _, err = run(
            ["run", str(inp), "-o", str(out), "--base-url", server.url, "--shard", f"{k}/3", "-q"]
        )
        assert code == 0, err
    shares = [result_ids(o) for o in outs]
    assert all(shares)
    assert Counter(i for s in shares for i in s) == Counter({f"q{i}": 1 for i in range(40)})


@needs_redis
def test_shards_share_a_redis_limit(
    tmp_path: Path, fake_server: Callable[..., ThreadedFakeAPI]
) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 20)
    outs = [tmp_path / f"out.{k}.jsonl" for k in (1, 2)]
    for k, out in enumerate(outs, 1):
        args = ["run", str(inp), "-o", str(out), "--base-url", server.url, "--rpm", "60000"]
        code, _, err = run([*args, "--redis-url", REDIS_URL, "--shard", f"{k}/2", "-q"])
        assert code == 0, err
    assert Counter(result_ids(outs[0]) + result_ids(outs[1])) == Counter(
        {f"q{i}": 1 for i in range(20)}
    )


def test_bad_shard_is_a_usage_error(tmp_path: Path) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    code, _, err = run(
        ["run", str(inp), "-o", str(tmp_path / "o"), "--base-url", "http://x", "--shard", "3/2"]
    )
    assert code == 2
    assert err.startswith("headway: error: shard '3/2'")


def test_unreachable_redis_is_a_usage_error(tmp_path: Path) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    code, _, err = run(
        [
            "run",
            str(inp),
            "-o",
            str(tmp_path / "o"),
            "--base-url",
            "http://127.0.0.1:9",
            "--rpm",
            "60",
            "--redis-url",
            "redis://127.0.0.1:1/0",
        ]
    )
    assert code == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in err
    assert len(err.strip().splitlines()) == 1
