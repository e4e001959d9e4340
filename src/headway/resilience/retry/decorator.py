"""``@retry`` and :func:`retry_with_backoff`: retry a coroutine function."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload

from pydantic import ValidationError

from headway._clock import Clock
from headway.errors import ConfigurationError, is_retryable
from headway.events import EventListener
from headway.resilience.retry.budget import RetryBudget
from headway.resilience.retry.config import RetryPolicy
from headway.resilience.retry.schedule import (
    DEFAULT_MAX_SERVER_DELAY,
    ExceptionTypes,
    JitterMode,
    RetryPredicate,
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
    retry_on_result: Callable[[Any], bool] | None = None,
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
    retry_on_result: Callable[[Any], bool] | None = None,
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
        extra: dict[str, Any] = {} if budget == "default" else {"budget": budget}
        policy = RetryPolicy(
            max_retries=max_retries,
            base_delay=base_delay,
            max_delay=max_delay,
            backoff_factor=backoff_factor,
            jitter=jitter,
            retry_on=retry_on,
            retry_on_result=retry_on_result,
            exclude=exclude,
            max_server_delay=max_server_delay,
            clock=clock,
            name=name,
            listeners=listeners,
            **extra,
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
    retry_exceptions: type[BaseException] | ExceptionTypes | RetryPredicate = is_retryable,
    exclude_exceptions: type[BaseException] | ExceptionTypes = (),
    retry_on_result: Callable[[Any], bool] | None = None,
    **kwargs: Any,
) -> T:
    """Call ``await func(*args, **kwargs)``, retrying failures with exponential backoff.

    The n-th retry waits ``min(base_delay * backoff_factor ** (n - 1), max_delay)``,
    jittered (``jitter=True`` is full jitter; ``False`` sleeps exactly that). At most
    ``max_retries`` retries, then the last error is raised. ``retry_exceptions`` (types or
    a predicate; ``retry_on`` elsewhere) chooses what is retried, by default
    :func:`headway.is_retryable`, as for :func:`retry` and :class:`RetryPolicy`; errors in
    ``exclude_exceptions`` or that :func:`headway.errors.never_retry` names
    (cancellation, authentication, not-found, bad-request, quota) never are. A
    ``retry_after`` on the error (a 429's server delay) is waited instead of the
    schedule, up to 120 s; above that it gives up at once. ``retry_on_result`` retries a
    result it accepts. A zero delay retries at once. Keyword arguments not listed here go
    to ``func``. No retry budget: use a :class:`RetryPolicy` to share one between calls.
    A thin front door to :meth:`RetryPolicy.call`: the same engine.

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
    options: tuple[Any, ...] = (
        max_retries,
        base_delay,
        max_delay,
        backoff_factor,
        jitter,
        tuple(retry_exceptions) if isinstance(retry_exceptions, list) else retry_exceptions,
        tuple(exclude_exceptions) if isinstance(exclude_exceptions, list) else exclude_exceptions,
        retry_on_result,
    )
    try:
        policy = _backoff_policy(*options)
    except TypeError:  # an unhashable option: build it uncached
        policy = _backoff_policy.__wrapped__(*options)
    result: T = await policy.engine().call(func, args, kwargs)
    return result


@functools.lru_cache(maxsize=128)
def _backoff_policy(
    max_retries: int,
    base_delay: float,
    max_delay: float,
    backoff_factor: float,
    jitter: bool | JitterMode,
    retry_exceptions: Any,
    exclude_exceptions: Any,
    retry_on_result: Callable[[Any], bool] | None,
) -> RetryPolicy:
    """The RetryPolicy behind :func:`retry_with_backoff` (built once per argument set)."""
    try:
        return RetryPolicy(
            max_retries=max_retries,
            base_delay=base_delay,
            max_delay=max_delay,
            backoff_factor=backoff_factor,
            jitter=jitter,
            retry_on=retry_exceptions,
            retry_on_result=retry_on_result,
            exclude=exclude_exceptions,
            budget=None,
        )
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        raise ConfigurationError(f"retry_with_backoff: {problems}") from None
