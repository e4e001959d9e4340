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

import importlib
from typing import TYPE_CHECKING

from headway._lazy import lazy_names

if TYPE_CHECKING:
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

# Names are imported on first use (PEP 562): importing the breaker or the Policy does not
# load RetryPolicy's pydantic model.
_WHERE = {
    "AttemptContext": "headway.resilience.policy",
    "CircuitBreaker": "headway.resilience.breaker",
    "CircuitState": "headway.resilience.breaker",
    "Deadline": "headway.resilience.timeouts",
    "Lease": "headway.resilience.policy",
    "Policy": "headway.resilience.policy",
    "RetryBudget": "headway.resilience.retry.budget",
    "RetryPolicy": "headway.resilience.retry.config",
    "deadline": "headway.resilience.timeouts",
    "retry": "headway.resilience.retry.decorator",
    "retry_with_backoff": "headway.resilience.retry.decorator",
    "with_timeout": "headway.resilience.timeouts",
}
__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())

# ``headway.resilience.retry`` names the decorator here, as it always has, not the
# subpackage of the same name: load the subpackage now (it is light) and drop the
# attribute its import sets, so that the name resolves through ``__getattr__``.
importlib.import_module("headway.resilience.retry")
del globals()["retry"]
