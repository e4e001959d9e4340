"""headway: call HTTP APIs from asyncio at the full speed a provider allows and never faster.

The public surface is re-exported here; everything else lives in submodules or behind an
underscore. See the README and ``docs/`` for a tour.
"""

from __future__ import annotations

from headway._clock import LOOP_CLOCK, Clock, ManualClock
from headway.errors import (
    APIClientError,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CircuitBreakerOpenError,
    ConfigurationError,
    ExecutorShutdownError,
    HeadwayError,
    InvalidResponseError,
    QuotaExceededError,
    RateLimitError,
    RateLimitExceededError,
    RequestTooLargeError,
    ResourceNotFoundError,
    ServerError,
    StreamError,
    is_retryable,
)
from headway.events import Event, add_listener, remove_listener

# --- limits (begin) ---
from headway.limits import (
    KeyedLimiter,
    Limiter,
    MultiLimiter,
    Reservation,
    TokenBucketRateLimiter,
)

# --- limits (end) ---
# --- concurrency + breaker (begin) ---
# isort: split
from headway.concurrency import (
    AdaptiveConcurrency,
    AsyncExecutor,
    ConcurrencyLimit,
    RateLimitedExecutor,
)
from headway.resilience.breaker import BreakerPermit, CircuitBreaker, CircuitState

# --- concurrency + breaker (end) ---
# --- retry + timeouts + policy (begin) ---
from headway.resilience.policy import AttemptContext, Policy
from headway.resilience.retry import RetryBudget, RetryPolicy, retry, retry_with_backoff
from headway.resilience.timeouts import Timeouts, with_timeout

# --- retry + timeouts + policy (end) ---
# --- http (begin) ---
# isort: split
from headway.http import (
    AsyncAPIClient,
    Endpoint,
    EndpointConfig,
    HeaderFactory,
    match_endpoint,
)

# --- http (end) ---
# --- backends (begin) ---
# isort: split
from headway.backends import (
    Limit,
    MemoryBackend,
    RedisBackend,
    RedisLimiter,
    Shard,
    shard_of,
)
from headway.errors import BackendUnavailableError

# --- backends (end) ---

__version__ = "0.1.0"

__all__ = [
    "LOOP_CLOCK",
    "APIClientError",
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CircuitBreakerOpenError",
    "Clock",
    "ConfigurationError",
    "Event",
    "ExecutorShutdownError",
    "HeadwayError",
    "InvalidResponseError",
    "ManualClock",
    "QuotaExceededError",
    "RateLimitError",
    "RateLimitExceededError",
    "RequestTooLargeError",
    "ResourceNotFoundError",
    "ServerError",
    "StreamError",
    "__version__",
    "add_listener",
    "is_retryable",
    "remove_listener",
    # --- limits __all__ (begin) ---
    "KeyedLimiter",
    "Limiter",
    "MultiLimiter",
    "Reservation",
    "TokenBucketRateLimiter",
    # --- limits __all__ (end) ---
    # --- concurrency + breaker __all__ (begin) ---
    "AdaptiveConcurrency",
    "AsyncExecutor",
    "BreakerPermit",
    "CircuitBreaker",
    "CircuitState",
    "ConcurrencyLimit",
    "RateLimitedExecutor",
    # --- concurrency + breaker __all__ (end) ---
    # --- retry + timeouts + policy __all__ (begin) ---
    "AttemptContext",
    "Policy",
    "RetryBudget",
    "RetryPolicy",
    "Timeouts",
    "retry",
    "retry_with_backoff",
    "with_timeout",
    # --- retry + timeouts + policy __all__ (end) ---
    # --- http __all__ (begin) ---
    "AsyncAPIClient",
    "Endpoint",
    "EndpointConfig",
    "HeaderFactory",
    "match_endpoint",
    # --- http __all__ (end) ---
    # --- backends __all__ (begin) ---
    "BackendUnavailableError",
    "Limit",
    "MemoryBackend",
    "RedisBackend",
    "RedisLimiter",
    "Shard",
    "shard_of",
    # --- backends __all__ (end) ---
]
