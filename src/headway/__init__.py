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
    from headway._clock import Clock, ManualClock
    from headway._resources import AsyncResourceManager
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
        CircuitBreakerOpenError,
        ConfigurationError,
        HeadwayError,
        MaxWaitExceededError,
        QuotaExceededError,
        RateLimitError,
        ServerError,
        is_retryable,
    )
    from headway.events import Event, add_listener, remove_listener
    from headway.http import AsyncAPIClient, Endpoint, EndpointConfig
    from headway.limits import MultiLimiter, TokenBucketRateLimiter
    from headway.resilience.breaker import CircuitBreaker, CircuitState
    from headway.resilience.policy import Policy
    from headway.resilience.retry import RetryBudget, RetryPolicy, retry, retry_with_backoff
    from headway.resilience.timeouts import with_timeout

__version__ = "0.1.0"

# The public surface: the one list. Every other name lives in its submodule
# (headway.errors, headway.limits, headway.backends, headway.clock, headway.http, ...).
__all__ = [
    "APIClientError",
    "APIConnectionError",
    "APITimeoutError",
    "AdaptiveConcurrency",
    "AsyncAPIClient",
    "AsyncExecutor",
    "AsyncResourceManager",
    "CircuitBreaker",
    "CircuitBreakerOpenError",
    "CircuitState",
    "Clock",
    "ConcurrencyLimit",
    "ConfigurationError",
    "Endpoint",
    "EndpointConfig",
    "Event",
    "HeadwayError",
    "ManualClock",
    "MaxWaitExceededError",
    "MultiLimiter",
    "Policy",
    "QuotaExceededError",
    "RateLimitError",
    "RateLimitedExecutor",
    "RetryBudget",
    "RetryPolicy",
    "ServerError",
    "TokenBucketRateLimiter",
    "__version__",
    "add_listener",
    "is_retryable",
    "remove_listener",
    "retry",
    "retry_with_backoff",
    "with_timeout",
]

# The modules the names above are looked up in, on first use (PEP 562).
_MODULES = (
    "headway.errors",
    "headway._clock",
    "headway._resources",
    "headway.events",
    "headway.resilience.policy",
    "headway.resilience.breaker",
    "headway.resilience.retry",
    "headway.resilience.timeouts",
    "headway.limits",
    "headway.concurrency",
    "headway.http",
)


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _MODULES:
            mod = importlib.import_module(module)
            if name in getattr(mod, "__all__", ()):
                value = getattr(mod, name)
                globals()[name] = value  # later look-ups skip this function
                return value
    raise AttributeError(f"module 'headway' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
