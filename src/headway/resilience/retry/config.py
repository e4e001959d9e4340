"""RetryPolicy: a validated, reusable retry configuration."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Annotated, Any, ParamSpec, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from headway._clock import Clock
from headway.errors import ConfigurationError, is_retryable
from headway.events import EventListener
from headway.resilience.retry.budget import RetryBudget
from headway.resilience.retry.engine import RetryEngine
from headway.resilience.retry.schedule import (
    DEFAULT_MAX_SERVER_DELAY,
    ExceptionTypes,
    JitterMode,
    RetryDelays,
    RetryPredicate,
    _exception_types,
    _jitter_mode,
)

__all__ = ["RetryPolicy"]

P = ParamSpec("P")
T = TypeVar("T")


class RetryPolicy(RetryDelays, BaseModel):
    """A reusable retry configuration: schedule, what to retry, server delays and budget.

    Args:
        max_retries: retries after the first attempt (0 disables retrying).
        base_delay: delay before the first retry, in seconds.
        max_delay: cap on any scheduled delay.
        backoff_factor: growth of the delay per retry (>= 1).
        jitter: ``True`` (= ``"full"``), ``False`` (= ``"none"``), ``"equal"`` or
            ``"decorrelated"``; see the table in :mod:`headway.resilience.retry`.
        retry_on: exception types to retry, or a predicate ``(exc) -> bool``. Default:
            :func:`headway.is_retryable` (transient errors by headway's table). An
            ``async def`` predicate is refused here (a predicate must answer at once).
        retry_on_result: a predicate ``(result) -> bool``; a result it accepts is retried
            like an error (same schedule and budget); when retries run out, the last
            result is returned. Not awaited: ``async def`` predicates are refused.
        exclude: exception types never retried.
        max_server_delay: longest ``retry_after`` honoured; above it the call gives up.
        budget: a :class:`RetryBudget` shared by every call; ``None`` turns it off.
        clock: where to sleep; the loop clock by default.
        name: shown as the ``source`` of events.
        listeners: extra event listeners for this policy's events.

    >>> policy = RetryPolicy(max_retries=4, jitter=False)
    >>> list(policy.delays())
    [1.0, 2.0, 4.0, 8.0]
    >>> RetryPolicy(retry_on=ValueError).should_retry(ValueError("x"))
    True
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    max_retries: Annotated[int, Field(ge=0)] = 3
    base_delay: Annotated[float, Field(ge=0)] = 1.0
    max_delay: Annotated[float, Field(ge=0)] = 60.0
    backoff_factor: Annotated[float, Field(ge=1.0)] = 2.0
    jitter: bool | JitterMode = True
    retry_on: type[BaseException] | ExceptionTypes | RetryPredicate = is_retryable
    retry_on_result: Callable[[Any], bool] | None = None
    exclude: type[BaseException] | ExceptionTypes = ()
    max_server_delay: Annotated[float, Field(ge=0)] = DEFAULT_MAX_SERVER_DELAY
    budget: RetryBudget | None = Field(default_factory=RetryBudget)
    clock: Clock | None = None
    name: str | None = None
    listeners: tuple[EventListener, ...] = ()

    @field_validator("retry_on", mode="before")
    @classmethod
    def _check_retry_on(cls, value: Any) -> Any:
        if isinstance(value, type | tuple | list | set | frozenset):
            return _exception_types(value, "retry_on")
        if not callable(value):
            raise ValueError(
                f"retry_on must be exception types or a predicate (exc) -> bool; got {value!r}"
            )
        _refuse_async(value, "retry_on")
        return value

    @field_validator("retry_on_result", mode="before")
    @classmethod
    def _check_retry_on_result(cls, value: Any) -> Any:
        if value is not None:
            if not callable(value):
                raise ValueError(
                    f"retry_on_result must be a predicate (result) -> bool; got {value!r}"
                )
            _refuse_async(value, "retry_on_result")
        return value

    @field_validator("exclude", mode="before")
    @classmethod
    def _check_exclude(cls, value: Any) -> Any:
        return _exception_types(value, "exclude")

    @field_validator("jitter", mode="before")
    @classmethod
    def _check_jitter(cls, value: Any) -> Any:
        _jitter_mode(value)
        return value

    @model_validator(mode="after")
    def _finish(self) -> RetryPolicy:
        if self.max_delay < self.base_delay:
            raise ValueError(
                f"max_delay ({self.max_delay}) must be >= base_delay ({self.base_delay})"
            )
        self.engine()
        return self

    def engine(self) -> RetryEngine:
        # The compiled policy lives in the instance dict (not a pydantic private
        # attribute, whose lookup is slow); a copy gets its own on first use.
        engine: RetryEngine | None = self.__dict__.get("_rt")
        if engine is None or engine.owner is not self:
            engine = self.__dict__["_rt"] = RetryEngine(self)
        return engine

    # -- the schedule ---------------------------------------------------------------------
    @property
    def jitter_mode(self) -> JitterMode:
        """The jitter strategy in words: ``"none"``, ``"full"``, ``"equal"``, ``"decorrelated"``."""
        return self.engine().mode

    # -- running ---------------------------------------------------------------------------
    async def call(self, func: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Call ``await func(*args, **kwargs)``, retrying by this policy; raise the last error.

        A zero delay retries at once, without a sleep.
        """
        return await self.engine().call(func, args, kwargs)

    @overload
    def wrap(self, func: Callable[P, AsyncIterator[T]], /) -> Callable[P, AsyncIterator[T]]: ...

    @overload
    def wrap(self, func: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def wrap(self, func: Callable[..., Any], /) -> Callable[..., Any]:
        """Decorate ``func`` so that every call retries by this policy.

        The wrapper keeps ``__wrapped__``, ``__defaults__``, ``__kwdefaults__`` and so
        :func:`inspect.signature`. An async *generator* function stays one: an error
        before its first item is retried (the generator is started again); once an
        item was yielded, errors go to the caller. A plain (not async) function is
        refused at decoration time with a :class:`~headway.errors.ConfigurationError`.
        """
        engine = self.engine()
        if inspect.isasyncgenfunction(func):
            iterate = engine.iterate

            @functools.wraps(func)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                async for item in iterate(func, args, kwargs):
                    yield item

            return _finish_wrapper(agen_wrapper, func, self)
        if not _is_async_callable(func):
            raise ConfigurationError(
                f"retry needs an async function (async def), got {func!r}: a plain "
                "function cannot be awaited; make it async or call it in a thread"
            )
        call = engine.call

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await call(func, args, kwargs)

        return _finish_wrapper(wrapper, func, self)


W = TypeVar("W", bound=Callable[..., Any])


def _finish_wrapper(wrapper: W, func: Any, policy: RetryPolicy) -> W:
    """Copy what functools.wraps leaves out (defaults) and mark the policy."""
    wrapper.__defaults__ = getattr(func, "__defaults__", None)
    wrapper.__kwdefaults__ = getattr(func, "__kwdefaults__", None)
    wrapper.retry_policy = policy  # type: ignore[attr-defined]
    return wrapper


def _is_async_callable(func: Any) -> bool:
    """Whether calling ``func`` gives an awaitable by its definition (async def, an
    object with an async ``__call__``, a partial of one, an AsyncMock)."""
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004 - the method itself is wanted
    return call is not None and inspect.iscoroutinefunction(call)


def _refuse_async(predicate: Any, what: str) -> None:
    if _is_async_callable(predicate) or inspect.isasyncgenfunction(predicate):
        raise ValueError(
            f"{what} must be a plain predicate answering at once; {predicate!r} is async "
            "(decide from the exception or result alone, without awaiting)"
        )
