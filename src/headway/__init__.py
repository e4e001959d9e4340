"""headway: call HTTP APIs from asyncio at the full speed a provider allows and never faster.

The public surface is re-exported here; everything else lives in submodules or behind an
underscore. See the README and ``docs/`` for a tour.

Names are imported on first use (PEP 562), so ``import headway`` stays cheap and the
pytest plugin can load before coverage starts without hiding any module from it.

>>> import headway
>>> headway.Policy.__name__
'Policy'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headway._clock import (
        LOOP_CLOCK,
        Clock,
        ManualClock,
    )
    from headway.backends import (
        Limit,
        MemoryBackend,
        RedisBackend,
        RedisLimiter,
        Shard,
        shard_of,
    )
    from headway.concurrency import (
        AdaptiveConcurrency,
        AsyncExecutor,
        ConcurrencyLimit,
        RateLimitedExecutor,
    )
    from headway.errors import (
        APIClientError,
        APIConnectionError,
        APITimeoutError,
        AuthenticationError,
        BackendUnavailableError,
        BadRequestError,
        CircuitBreakerOpenError,
        ConfigurationError,
        ExecutorShutdownError,
        HeadwayError,
        InvalidResponseError,
        MaxWaitExceededError,
        QuotaExceededError,
        RateLimitError,
        RequestTooLargeError,
        ResourceNotFoundError,
        ServerError,
        StreamError,
        is_retryable,
    )
    from headway.events import (
        Event,
        add_listener,
        remove_listener,
    )
    from headway.http import (
        AsyncAPIClient,
        Endpoint,
        EndpointConfig,
        HeaderFactory,
        match_endpoint,
    )
    from headway.limits import (
        KeyedLimiter,
        Limiter,
        MultiLimiter,
        Reservation,
        TokenBucketRateLimiter,
    )
    from headway.resilience.breaker import (
        BreakerPermit,
        CircuitBreaker,
        CircuitState,
    )
    from headway.resilience.policy import (
        AttemptContext,
        Policy,
    )
    from headway.resilience.retry import (
        RetryBudget,
        RetryPolicy,
        retry,
        retry_with_backoff,
    )
    from headway.resilience.timeouts import (
        Timeouts,
        with_timeout,
    )

__version__ = "0.1.0"

# Where each public name lives; the one place to add a new one (and to __all__).
_LOCATIONS: dict[str, str] = {
    "LOOP_CLOCK": "headway._clock",
    "Clock": "headway._clock",
    "ManualClock": "headway._clock",
    "APIClientError": "headway.errors",
    "APIConnectionError": "headway.errors",
    "APITimeoutError": "headway.errors",
    "AuthenticationError": "headway.errors",
    "BackendUnavailableError": "headway.errors",
    "BadRequestError": "headway.errors",
    "CircuitBreakerOpenError": "headway.errors",
    "ConfigurationError": "headway.errors",
    "ExecutorShutdownError": "headway.errors",
    "HeadwayError": "headway.errors",
    "InvalidResponseError": "headway.errors",
    "QuotaExceededError": "headway.errors",
    "RateLimitError": "headway.errors",
    "MaxWaitExceededError": "headway.errors",
    "RequestTooLargeError": "headway.errors",
    "ResourceNotFoundError": "headway.errors",
    "ServerError": "headway.errors",
    "StreamError": "headway.errors",
    "is_retryable": "headway.errors",
    "Event": "headway.events",
    "add_listener": "headway.events",
    "remove_listener": "headway.events",
    "KeyedLimiter": "headway.limits",
    "Limiter": "headway.limits",
    "MultiLimiter": "headway.limits",
    "Reservation": "headway.limits",
    "TokenBucketRateLimiter": "headway.limits",
    "AdaptiveConcurrency": "headway.concurrency",
    "AsyncExecutor": "headway.concurrency",
    "ConcurrencyLimit": "headway.concurrency",
    "RateLimitedExecutor": "headway.concurrency",
    "BreakerPermit": "headway.resilience.breaker",
    "CircuitBreaker": "headway.resilience.breaker",
    "CircuitState": "headway.resilience.breaker",
    "AttemptContext": "headway.resilience.policy",
    "Policy": "headway.resilience.policy",
    "RetryBudget": "headway.resilience.retry",
    "RetryPolicy": "headway.resilience.retry",
    "retry": "headway.resilience.retry",
    "retry_with_backoff": "headway.resilience.retry",
    "Timeouts": "headway.resilience.timeouts",
    "with_timeout": "headway.resilience.timeouts",
    "AsyncAPIClient": "headway.http",
    "Endpoint": "headway.http",
    "EndpointConfig": "headway.http",
    "HeaderFactory": "headway.http",
    "match_endpoint": "headway.http",
    "Limit": "headway.backends",
    "MemoryBackend": "headway.backends",
    "RedisBackend": "headway.backends",
    "RedisLimiter": "headway.backends",
    "Shard": "headway.backends",
    "shard_of": "headway.backends",
}

__all__ = [
    "APIClientError",
    "APIConnectionError",
    "APITimeoutError",
    "AdaptiveConcurrency",
    "AsyncAPIClient",
    "AsyncExecutor",
    "AttemptContext",
    "AuthenticationError",
    "BackendUnavailableError",
    "BadRequestError",
    "BreakerPermit",
    "CircuitBreaker",
    "CircuitBreakerOpenError",
    "CircuitState",
    "Clock",
    "ConcurrencyLimit",
    "ConfigurationError",
    "Endpoint",
    "EndpointConfig",
    "Event",
    "ExecutorShutdownError",
    "HeaderFactory",
    "HeadwayError",
    "InvalidResponseError",
    "KeyedLimiter",
    "LOOP_CLOCK",
    "Limit",
    "Limiter",
    "ManualClock",
    "MemoryBackend",
    "MultiLimiter",
    "Policy",
    "QuotaExceededError",
    "RateLimitError",
    "MaxWaitExceededError",
    "RateLimitedExecutor",
    "RedisBackend",
    "RedisLimiter",
    "RequestTooLargeError",
    "Reservation",
    "ResourceNotFoundError",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "Shard",
    "StreamError",
    "Timeouts",
    "TokenBucketRateLimiter",
    "__version__",
    "add_listener",
    "is_retryable",
    "match_endpoint",
    "remove_listener",
    "retry",
    "retry_with_backoff",
    "shard_of",
    "with_timeout",
]


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'headway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
