"""Resilience: circuit breaker, retry with backoff and budget, deadlines, and the Policy.

* :class:`CircuitBreaker` stops calling what is down (:mod:`~headway.resilience.breaker`);
* :func:`retry_with_backoff`, :class:`RetryPolicy`, :func:`retry` and :class:`RetryBudget`
  retry what is transient (:mod:`~headway.resilience.retry`);
* :func:`deadline` and :func:`with_timeout` bound how long a call may
  take (:mod:`~headway.resilience.timeouts`);
* :class:`Policy` composes all of them with a limiter and a concurrency limit in one
  documented order (:mod:`~headway.resilience.policy`).
"""

from __future__ import annotations

from headway.resilience.breaker import CircuitBreaker, CircuitState
from headway.resilience.policy import AttemptContext, Lease, Policy
from headway.resilience.retry import RetryBudget, RetryPolicy, retry, retry_with_backoff
from headway.resilience.timeouts import Deadline, deadline, with_timeout

__all__ = [
    "AttemptContext",
    "CircuitBreaker",
    "CircuitState",
    "Deadline",
    "Lease",
    "Policy",
    "RetryBudget",
    "RetryPolicy",
    "deadline",
    "retry",
    "retry_with_backoff",
    "with_timeout",
]
