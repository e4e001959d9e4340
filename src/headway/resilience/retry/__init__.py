"""Retry with exponential backoff, jitter, server delays and a shared retry budget.

Three ways in, one set of rules:

* :func:`retry_with_backoff` retries one call (``func(*args, **kwargs)``);
* :class:`RetryPolicy` is the reusable, validated configuration (and ``await policy.call(...)``);
* :func:`retry` is a decorator that keeps the wrapped function's signature for type checkers.

The schedule: the n-th retry waits ``min(base_delay * backoff_factor ** (n - 1), max_delay)``
(1.0 s, then 2.0 s, then 4.0 s with the defaults), randomised by the jitter strategy:

==================  ==========================================================  ============
jitter              delay before retry n (``d`` = the exponential delay)         range
==================  ==========================================================  ============
``"none"``/False    ``d``                                                       exactly d
``"full"``/True     ``uniform(0, d)`` (AWS measured it the cheapest in total)   [0, d]
``"equal"``         ``d / 2 + uniform(0, d / 2)``                               [d/2, d]
``"decorrelated"``  ``min(max_delay, uniform(base_delay, 3 * previous))``       [base, max]
==================  ==========================================================  ============

What is never retried, whatever ``retry_on`` or ``retry_exceptions`` say:
:func:`headway.errors.never_retry` errors — cancellation, authentication, not-found,
bad-request, quota and configuration errors, and any API error whose server said
``x-should-retry: false``. ``CancelledError`` is not even caught.

A server's delay wins over the schedule: a :class:`~headway.errors.RateLimitError` (or any
headway error) with ``retry_after`` waits exactly that long, if it is at most
``max_server_delay`` (120 s by default). Above the cap the retry gives up at once and raises
the error, as the OpenAI SDK does: waiting minutes inside one call is rarely what a caller
wants, and the error carries the delay for whoever decides.

A :class:`RetryBudget` (on by default in :class:`RetryPolicy`) is shared by every call of a
policy. As in gRPC and Finagle, retries are allowed only while they stay below ``ratio`` of
the calls in a sliding window plus a small floor per second; when most calls fail, the
budget runs dry and calls fail fast instead of multiplying the load on a sick service.

Events: ``retry.scheduled`` (attempt, delay, reason), ``retry.gave_up`` (attempts, reason),
``retry.budget_exhausted`` (attempt, reason). Every sleep goes through the :class:`Clock`.

>>> import asyncio
>>> from headway import ManualClock
>>> calls = []
>>> async def flaky() -> str:
...     calls.append(1)
...     if len(calls) < 3:
...         raise ConnectionError("reset")
...     return "ok"
>>> clock = ManualClock()
>>> policy = RetryPolicy(max_retries=3, jitter=False, clock=clock)
>>> asyncio.run(policy.call(flaky))
'ok'
>>> clock.sleeps
[1.0, 2.0]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headway._lazy import lazy_names

if TYPE_CHECKING:
    from headway.resilience.retry.budget import RetryBudget
    from headway.resilience.retry.config import RetryPolicy
    from headway.resilience.retry.decorator import RetryDecorator, retry, retry_with_backoff
    from headway.resilience.retry.schedule import DEFAULT_MAX_SERVER_DELAY, JitterMode

__all__ = [
    "DEFAULT_MAX_SERVER_DELAY",
    "JitterMode",
    "RetryBudget",
    "RetryDecorator",
    "RetryPolicy",
    "retry",
    "retry_with_backoff",
]

# Names are imported on first use (PEP 562): a submodule (the engine, the budget) can be
# imported without pydantic, which RetryPolicy's module loads.
_WHERE = {
    "DEFAULT_MAX_SERVER_DELAY": "headway.resilience.retry.schedule",
    "JitterMode": "headway.resilience.retry.schedule",
    "RetryBudget": "headway.resilience.retry.budget",
    "RetryDecorator": "headway.resilience.retry.decorator",
    "RetryPolicy": "headway.resilience.retry.config",
    "retry": "headway.resilience.retry.decorator",
    "retry_with_backoff": "headway.resilience.retry.decorator",
}
__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())
