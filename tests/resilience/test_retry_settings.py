"""RetrySettings: RetryPolicy's fields as a plain record, run by the same engine."""

from __future__ import annotations

import dataclasses

import pytest

from headway import ConfigurationError, Policy, RetryPolicy
from headway.errors import APIConnectionError
from headway.resilience.retry.settings import RetrySettings
from headway.testing import VirtualClock

pytestmark = pytest.mark.virtual_time


def test_same_fields_and_defaults_as_retry_policy() -> None:
    fields = {f.name: f for f in dataclasses.fields(RetrySettings) if f.init}
    assert set(fields) == set(RetryPolicy.model_fields)
    policy = RetryPolicy()
    settings = RetrySettings()
    for name in fields:
        if name == "budget":  # a fresh budget each, of the same kind
            assert type(settings.budget) is type(policy.budget)
            continue
        assert getattr(settings, name) == getattr(policy, name), name


def test_same_schedule_and_decisions_as_retry_policy() -> None:
    kwargs = {"max_retries": 5, "base_delay": 0.5, "max_delay": 3.0, "jitter": False}
    assert list(RetrySettings(**kwargs).delays()) == list(RetryPolicy(**kwargs).delays())
    settings = RetrySettings(retry_on=(ValueError,), exclude=(KeyError,))
    assert settings.should_retry(ValueError("x"))
    assert not settings.should_retry(TypeError("x"))
    assert settings.engine() is settings.engine()
    with pytest.raises(ValueError, match="start at 1"):
        settings.delay(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"base_delay": -0.5}, "base_delay"),
        ({"base_delay": 2.0, "max_delay": 1.0}, "max_delay"),
        ({"backoff_factor": 0.5}, "backoff_factor"),
        ({"jitter": "sideways"}, "jitter"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RetrySettings(**kwargs)  # type: ignore[arg-type]


async def test_a_policy_retries_by_the_settings(virtual_clock: VirtualClock) -> None:
    settings = RetrySettings(max_retries=2, base_delay=1.0, jitter=False)
    policy = Policy(retry=settings)
    assert policy.retry is settings
    failures = [APIConnectionError("reset"), APIConnectionError("reset")]

    async def flaky() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    assert await policy.execute(flaky) == "ok"
    assert virtual_clock.elapsed == pytest.approx(3.0)  # 1 s, then 2 s


def test_a_policy_still_refuses_what_is_not_a_retry_policy() -> None:
    with pytest.raises(ConfigurationError, match="RetryPolicy or None"):
        Policy(retry="three times")  # type: ignore[arg-type]
