"""``@retry`` and :func:`retry_with_backoff`: retry a coroutine function."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload

from headway._clock import LOOP_CLOCK, Clock
from headway.errors import ConfigurationError, is_retryable, never_retry
from headway.events import RETRY_SCHEDULED, EventListener, emit, enabled
from headway.resilience.retry.budget import RetryBudget
from headway.resilience.retry.config import RetryPolicy
from headway.resilience.retry.engine import _emit_gave_up
from headway.resilience.retry.schedule import (
    _ANY_EXCEPTION,
    DEFAULT_MAX_SERVER_DELAY,
    ExceptionTypes,
    JitterMode,
    RetryPredicate,
    _exception_types,
    _jitter_mode,
    _reason,
    _schedule_delay,
    _server_delay,
)

__all__ = ["RetryDecorator", "retry", "retry_with_backoff"]

P = ParamSpec("P")
T = TypeVar("T")


class RetryDecorator(Protocol):
    """What ``retry(...)`` returns: a decorator keeping the function's signature."""

    def __call__(self, func: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]:
        """Wrap ``func``."""
        ...


@overload
def retry(func: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


@overload
def retry(
    *,
    policy: RetryPolicy | None = None,
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    backoff_factor: float = 2.0,
    jitter: bool | JitterMode = True,
    retry_on: type[BaseException] | ExceptionTypes | RetryPredicate = is_retryable,
    exclude: type[BaseException] | ExceptionTypes = (),
    max_server_delay: float = DEFAULT_MAX_SERVER_DELAY,
    budget: RetryBudget | Literal["default"] | None = "default",
    clock: Clock | None = None,
    name: str | None = None,
    listeners: tuple[EventListener, ...] = (),
) -> RetryDecorator: ...


def retry(
    func: Callable[..., Awaitable[Any]] | None = None,
    /,
    *,
    policy: RetryPolicy | None = None,
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    backoff_factor: float = 2.0,
    jitter: bool | JitterMode = True,
    retry_on: type[BaseException] | ExceptionTypes | RetryPredicate = is_retryable,
    exclude: type[BaseException] | ExceptionTypes = (),
    max_server_delay: float = DEFAULT_MAX_SERVER_DELAY,
    budget: RetryBudget | Literal["default"] | None = "default",
    clock: Clock | None = None,
    name: str | None = None,
    listeners: tuple[EventListener, ...] = (),
) -> Any:
    """Decorate an async function so that its calls retry; the signature is kept for mypy.

    Use bare (``@retry``: headway's defaults) or with options (``@retry(max_retries=5)``),
    or pass a ready :class:`RetryPolicy` (``@retry(policy=p)``; other options are then
    ignored). All calls of the decorated function share one :class:`RetryBudget`.

    >>> import asyncio
    >>> attempts = []
    >>> @retry(max_retries=2, base_delay=0, retry_on=KeyError)
    ... async def lookup(key: str) -> int:
    ...     attempts.append(key)
    ...     if len(attempts) < 3:
    ...         raise KeyError(key)
    ...     return len(key)
    >>> asyncio.run(lookup("abc")), len(attempts)
    (3, 3)
    """
    if policy is None:
        policy = RetryPolicy(
            max_retries=max_retries,
            base_delay=base_delay,
            max_delay=max_delay,
            backoff_factor=backoff_factor,
            jitter=jitter,
            retry_on=retry_on,
            exclude=exclude,
            max_server_delay=max_server_delay,
            clock=clock,
            name=name,
            listeners=listeners,
            **({} if budget == "default" else {"budget": budget}),
        )
    if func is not None:
        return policy.wrap(func)
    return policy.wrap


async def retry_with_backoff(
    func: Callable[..., Awaitable[T]],
    *args: Any,
    max_retries: int = 3,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    backoff_factor: float = 2.0,
    jitter: bool | JitterMode = True,
    retry_exceptions: type[BaseException] | ExceptionTypes = _ANY_EXCEPTION,
    exclude_exceptions: type[BaseException] | ExceptionTypes = (),
    **kwargs: Any,
) -> T:
    """Call ``await func(*args, **kwargs)``, retrying failures with exponential backoff.

    The n-th retry waits ``min(base_delay * backoff_factor ** (n - 1), max_delay)``,
    jittered (``jitter=True`` is full jitter; ``False`` sleeps exactly that). At most
    ``max_retries`` retries, then the last error is raised. Errors in ``retry_exceptions``
    are retried unless they are in ``exclude_exceptions`` or
    :func:`headway.errors.never_retry` says never (cancellation, authentication,
    not-found, bad-request, quota). A ``retry_after`` on the error (a 429's server delay)
    is waited instead of the schedule, up to 120 s; above that it gives up at once.
    A zero delay retries at once. Keyword arguments not listed here go to ``func``.
    No retry budget: use a
    :class:`RetryPolicy` to share one between calls.

    >>> import asyncio
    >>> from unittest import mock
    >>> tries = []
    >>> async def fetch(url: str, *, timeout: float) -> str:
    ...     tries.append(timeout)
    ...     if len(tries) == 1:
    ...         raise ConnectionError("reset")
    ...     return url
    >>> with mock.patch("asyncio.sleep", mock.AsyncMock()) as sleep:
    ...     asyncio.run(retry_with_backoff(fetch, "u", timeout=5.0, jitter=False))
    ...     sleep.await_args_list
    'u'
    [call(1.0)]
    """
    if max_retries < 0 or base_delay < 0 or max_delay < 0 or backoff_factor < 1:
        raise ConfigurationError(
            "retry_with_backoff needs max_retries >= 0, base_delay >= 0, max_delay >= 0 "
            "and backoff_factor >= 1"
        )
    types = (
        retry_exceptions
        if retry_exceptions is _ANY_EXCEPTION
        else _exception_types(retry_exceptions, "retry_exceptions")
    )
    excluded = exclude_exceptions and _exception_types(exclude_exceptions, "exclude_exceptions")
    mode = _jitter_mode(jitter)
    retry_n = 0
    previous = base_delay
    while True:
        try:
            return await func(*args, **kwargs)
        except Exception as exc:
            if never_retry(exc) or not isinstance(exc, types):
                raise
            if excluded and isinstance(exc, excluded):
                raise
            retry_n += 1
            if retry_n > max_retries:
                _emit_gave_up(exc, retry_n, "retries exhausted")
                raise
            delay = _server_delay(exc)
            if delay is None:
                delay = _schedule_delay(
                    mode, retry_n, previous, base_delay, backoff_factor, max_delay, random.random
                )
                previous = delay if delay > 0 else base_delay
            elif delay > DEFAULT_MAX_SERVER_DELAY:
                _emit_gave_up(exc, retry_n, f"server delay {delay:g}s exceeds the cap")
                raise
            if enabled(logging.INFO):
                emit(
                    RETRY_SCHEDULED,
                    level=logging.INFO,
                    attempt=retry_n,
                    delay=delay,
                    reason=_reason(exc),
                )
        if delay > 0.0:
            await LOOP_CLOCK.sleep(delay)
