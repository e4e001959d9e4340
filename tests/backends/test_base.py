"""Backend-neutral pieces: limit specs, LLM shorthands, sharding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from headway import ConfigurationError
from headway.backends import Limit, RedisBackend, RedisBackendConfig, Shard, llm_limits, shard_of


def test_limits_and_llm_shorthands() -> None:
    assert Limit(120, 60).per_second == 2.0
    assert Limit(10, burst=3).capacity == 3.0
    with pytest.raises(ValidationError):
        Limit(10, unit="bytes")  # type: ignore[arg-type]
    every = llm_limits(rps=5, rpm=100, tpm=1000, rpd=10_000, tpd=1e6, burst=2)
    assert [(x.unit, x.period, x.burst) for x in every] == [
        ("requests", 1.0, 2.0),
        ("requests", 60.0, None),
        ("tokens", 60.0, None),
        ("requests", 86_400.0, None),
        ("tokens", 86_400.0, None),
    ]
    assert llm_limits(rpm=60, burst=5)[0].capacity == 5.0
    with pytest.raises(ConfigurationError):
        llm_limits()


@given(st.text(max_size=40), st.integers(1, 64))
def test_every_key_belongs_to_exactly_one_shard(key: str, n: int) -> None:
    owners = [k for k in range(1, n + 1) if Shard(k, n).owns(key)]
    assert owners == [shard_of(key, n) + 1]


def test_shards_are_stable_and_spread() -> None:
    # stable across processes and machines: a fixed value, not Python's hash()
    assert shard_of("request-1", 1000) == shard_of("request-1", 1000)
    assert [shard_of(f"id-{i}", 4) for i in range(8)] == [shard_of(f"id-{i}", 4) for i in range(8)]
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of(f"id-{i}", 4)] += 1
    assert min(counts) > 850
    with pytest.raises(ConfigurationError):
        shard_of("x", 0)


def test_shard_parsing() -> None:
    assert Shard.parse(" 3 / 4 ") == Shard(3, 4)
    assert str(Shard(1, 2)) == "1/2"
    for bad in ("0/4", "5/4", "a/b", "2", "1/0"):
        with pytest.raises(ConfigurationError, match="K/N"):
            Shard.parse(bad)
    with pytest.raises(ValueError, match="at most N"):
        Shard(3, 2)


def test_backend_options_are_validated() -> None:
    with pytest.raises(ValueError, match="local_share"):
        RedisBackendConfig(local_share=1.5)
    with pytest.raises(ValidationError):
        RedisBackendConfig(on_backend_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        RedisBackend("redis://localhost", timeout=0)
    assert RedisBackendConfig(local_share=0.25).local_share == 0.25
