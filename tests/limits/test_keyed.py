"""KeyedLimiter: one limiter per key, made on first use, least recently used dropped."""

from __future__ import annotations

import pytest

from headway import ConfigurationError, ManualClock
from headway.limits import KeyedLimiter, MultiLimiter, TokenBucketRateLimiter


def test_one_limiter_per_key_made_once() -> None:
    clock = ManualClock()
    made: list[str] = []

    def factory(key: str) -> TokenBucketRateLimiter:
        made.append(key)
        return TokenBucketRateLimiter(10, clock=clock, name=key)

    keyed = KeyedLimiter(factory)
    a = keyed.get("a")
    assert keyed.get("a") is a
    assert keyed["b"].name == "b"
    assert made == ["a", "b"]
    assert len(keyed) == 2
    assert "a" in keyed
    assert "z" not in keyed
    assert list(keyed) == ["a", "b"]
    assert "keys=2" in repr(keyed)


def test_least_recently_used_key_is_dropped() -> None:
    keyed = KeyedLimiter(lambda key: TokenBucketRateLimiter(1), max_keys=2)
    a = keyed.get("a")
    keyed.get("b")
    keyed.get("a")  # a is now the most recent
    keyed.get("c")  # drops b
    assert list(keyed) == ["a", "c"]
    assert keyed.get("a") is a
    keyed.get("b")  # drops c
    assert list(keyed) == ["a", "b"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_keys_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigurationError):
        KeyedLimiter(lambda key: TokenBucketRateLimiter(1), max_keys=bad)  # type: ignore[arg-type]


async def test_reserve_and_pause_by_key() -> None:
    clock = ManualClock()
    keyed = KeyedLimiter(lambda key: MultiLimiter.for_llm(rpm=60, tpm=1000, clock=clock))
    r = await keyed.reserve("gpt", 1, 400)
    assert r.delay == 0.0
    assert keyed.get("gpt").limiters[1].tokens == 600.0
    other = keyed.get("claude")
    keyed.pause_until(clock.now() + 5)
    assert other.limiters[0].paused_until == 5.0
    r2 = await keyed.reserve("gpt", 1, 0)
    assert r2.delay > 5.0
