"""The retry loop's decisions, shared by :class:`RetryPolicy`, ``@retry`` and the Policy."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from headway import events
from headway._clock import LOOP_CLOCK, resolve_clock
from headway.errors import (
    APIClientError,
    HeadwayError,
    RateLimitError,
    _transient,
    is_retryable,
    never_retry,
)
from headway.events import (
    RETRY_BUDGET_EXHAUSTED,
    RETRY_GAVE_UP,
    RETRY_SCHEDULED,
    EventListener,
    emit,
    enabled,
    publish,
)
from headway.resilience.retry.schedule import (
    ExceptionTypes,
    RetryPredicate,
    _jitter_mode,
    _reason,
    _schedule_delay,
    _server_delay,
)

if TYPE_CHECKING:
    from headway.resilience.retry.config import RetryPolicy
    from headway.resilience.retry.settings import RetrySettings

__all__ = ["RetryEngine"]

T = TypeVar("T")


class RetryEngine:
    """The compiled form of a :class:`RetryPolicy` (or of a
    :class:`~headway.resilience.retry.settings.RetrySettings`): plain slots, cheap on the
    hot path."""

    __slots__ = (
        "backoff_factor",
        "base_delay",
        "budget",
        "clock",
        "exclude",
        "listeners",
        "max_delay",
        "max_retries",
        "max_server_delay",
        "mode",
        "name",
        "owner",
        "predicate",
        "rand",
        "result_predicate",
        "transient",
        "types",
    )

    def __init__(self, policy: RetryPolicy | RetrySettings) -> None:
        self.owner = policy
        self.max_retries = policy.max_retries
        self.base_delay = policy.base_delay
        self.max_delay = policy.max_delay
        self.backoff_factor = policy.backoff_factor
        self.mode = _jitter_mode(policy.jitter)
        # The validators turned single types into tuples; keep mypy and copies honest.
        retry_on = policy.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        self.types: ExceptionTypes | None = None
        self.predicate: RetryPredicate | None = None
        if isinstance(retry_on, tuple):
            self.types = retry_on
        else:
            self.predicate = retry_on
        exclude = policy.exclude
        self.exclude: ExceptionTypes = (exclude,) if isinstance(exclude, type) else exclude
        # The default rules (never_retry, then is_retryable) as one check.
        self.transient = self.predicate is is_retryable and not self.exclude
        self.max_server_delay = policy.max_server_delay
        self.budget = policy.budget
        self.clock = resolve_clock(policy.clock)
        self.name = policy.name
        self.listeners = policy.listeners
        self.rand: Callable[[], float] = random.random
        self.result_predicate = policy.retry_on_result

    def delay(self, retry: int, previous: float) -> float:
        return _schedule_delay(
            self.mode,
            retry,
            previous,
            self.base_delay,
            self.backoff_factor,
            self.max_delay,
            self.rand,
        )

    def should_retry(self, exc: BaseException) -> bool:
        """The one retry predicate: the rules below, then the policy's ``retry_on``.

        Never cancellation and the like (:func:`~headway.errors.never_retry`); always an
        API error whose server said ``x-should-retry: true``; never an ``exclude`` type.
        """
        if self.transient:
            return _transient(exc)
        if never_retry(exc):
            return False
        if isinstance(exc, APIClientError) and exc.should_retry:
            return True  # the server's verdict wins
        if self.exclude and isinstance(exc, self.exclude):
            return False
        types = self.types
        if types is not None:
            return isinstance(exc, types)
        assert self.predicate is not None
        return bool(self.predicate(exc))

    def next_delay(
        self,
        exc: BaseException,
        retry: int,
        previous: float,
        remaining: float | None = None,
        source: str | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> float | None:
        """Decide the retry after ``exc``: the delay to sleep, or ``None`` to give up.

        ``retry`` is the number of the retry being considered (1 after the first failure);
        ``remaining`` the seconds left before a deadline (no retry may start after it).
        Emits the events.
        """
        retryable = _transient(exc) if self.transient else self.should_retry(exc)
        if not retryable:
            if retry > 1:
                _emit_gave_up(
                    exc, retry, "not retryable", source or self.name, listeners or self.listeners
                )
            return None
        if retry > self.max_retries:
            _emit_gave_up(
                exc, retry, "retries exhausted", source or self.name, listeners or self.listeners
            )
            return None
        delay = _server_delay(exc) if isinstance(exc, HeadwayError) else None
        if delay is not None:
            if delay > self.max_server_delay:
                why = f"server delay {delay:g}s exceeds max_server_delay {self.max_server_delay:g}s"
                _emit_gave_up(exc, retry, why, source or self.name, listeners or self.listeners)
                return None
        else:
            mode = self.mode
            if mode == "full" or mode == "none":
                # _schedule_delay() inlined for the two common strategies.
                try:
                    delay = self.base_delay * self.backoff_factor ** (retry - 1)
                except OverflowError:
                    delay = self.max_delay
                if delay > self.max_delay:
                    delay = self.max_delay
                if mode == "full":
                    delay *= self.rand()
            else:
                delay = self.delay(retry, previous)
        if remaining is not None and delay >= remaining:
            _emit_gave_up(
                exc,
                retry,
                "deadline would pass before the retry",
                source or self.name,
                listeners or self.listeners,
            )
            return None
        budget = self.budget
        if budget is not None and not budget.try_withdraw():
            listeners = listeners or self.listeners
            if enabled(logging.WARNING, listeners):
                emit(
                    RETRY_BUDGET_EXHAUSTED,
                    source=source or self.name,
                    level=logging.WARNING,
                    listeners=listeners,
                    attempt=retry,
                    reason=_reason(exc),
                )
            return None
        listeners = listeners or self.listeners
        if enabled(logging.INFO, listeners):
            _scheduled(events.RetryScheduled, exc, retry, delay, source or self.name, listeners)
        return delay

    def server_delay(self, exc: RateLimitError) -> float | None:
        """The server's delay for a rate 429, capped by ``max_server_delay`` (or ``None``)."""
        delay = exc.retry_after
        if delay is None or not delay > 0.0:
            return None
        return delay if delay < self.max_server_delay else self.max_server_delay

    def rate_delay(
        self,
        exc: RateLimitError,
        waits: int,
        remaining: float | None = None,
        source: str | None = None,
        listeners: tuple[EventListener, ...] = (),
    ) -> float | None:
        """The wait before going again after a rate 429 that is not counted as a retry.

        ``waits`` numbers the rate waits of this call (1, 2, ...). The server's delay,
        capped by ``max_server_delay``, else the backoff schedule; ``None`` when the
        deadline would pass first. Draws nothing from the budget.
        """
        delay = self.server_delay(exc)
        if delay is None:
            delay = self.delay(waits, self.base_delay)
        if remaining is not None and delay >= remaining:
            why = "deadline would pass before the rate limit allows another attempt"
            _emit_gave_up(exc, waits, why, source or self.name, listeners or self.listeners)
            return None
        listeners = listeners or self.listeners
        if enabled(logging.INFO, listeners):
            _scheduled(events.RateLimited, exc, waits, delay, source or self.name, listeners)
        return delay

    async def call(
        self, func: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        budget = self.budget
        if budget is not None:
            budget.record_request()
        retry = 0
        previous = self.base_delay
        check = self.result_predicate
        while True:
            try:
                result = await func(*args, **kwargs)
            except Exception as exc:
                retry += 1
                delay = self.next_delay(exc, retry, previous)
                if delay is None:
                    raise
            else:
                if check is None or not check(result):
                    return result
                retry += 1
                delay = self.result_delay(retry, previous)
                if delay is None:
                    return result
            previous = delay if delay > 0.0 else self.base_delay
            if delay > 0.0:
                await self.clock.sleep(delay)

    def result_delay(self, retry: int, previous: float) -> float | None:
        """The delay before retry ``retry`` after a result ``retry_on_result`` rejected;
        ``None`` when retries or the budget ran out (the caller keeps the result)."""
        if retry > self.max_retries:
            return None
        budget = self.budget
        if budget is not None and not budget.try_withdraw():
            return None
        return self.delay(retry, previous)

    async def iterate(
        self,
        func: Callable[..., AsyncIterator[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> AsyncIterator[Any]:
        """Iterate ``func(*args, **kwargs)`` (an async generator function), starting it
        again after an error raised before its first item, as :meth:`call` would."""
        budget = self.budget
        if budget is not None:
            budget.record_request()
        retry = 0
        previous = self.base_delay
        while True:
            gen = func(*args, **kwargs)
            try:
                first = await gen.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                await _aclose(gen)
                retry += 1
                delay = self.next_delay(exc, retry, previous)
                if delay is None:
                    raise
                previous = delay if delay > 0.0 else self.base_delay
                if delay > 0.0:
                    await self.clock.sleep(delay)
                continue
            break
        try:
            yield first
            async for item in gen:
                yield item
        finally:
            await _aclose(gen)


async def _aclose(gen: AsyncIterator[Any]) -> None:
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        await aclose()


def _emit_gave_up(
    exc: BaseException,
    retry: int,
    why: str,
    source: str | None = None,
    listeners: tuple[EventListener, ...] = (),
) -> None:
    # INFO, not WARNING: the caller gets the error itself; this is context for the logs.
    if enabled(logging.INFO, listeners):
        reason = f"{why}; last error {_reason(exc)}"
        event = events.RetryGaveUp(
            RETRY_GAVE_UP,
            source,
            {"attempts": retry, "reason": reason},
            LOOP_CLOCK.now(),
            logging.INFO,
            attempts=retry,
            exception=exc,
        )
        publish(event, listeners)


def _scheduled(
    cls: type[events.RetryScheduled],
    exc: BaseException,
    attempt: int,
    delay: float,
    source: str | None,
    listeners: tuple[EventListener, ...],
) -> None:
    rate = cls is events.RateLimited
    data: dict[str, Any] = {"attempt": attempt, "delay": delay, "reason": _reason(exc)}
    if rate:
        data["rate_limited"] = True
    event = cls(
        RETRY_SCHEDULED,
        source,
        data,
        LOOP_CLOCK.now(),
        logging.INFO,
        attempt=attempt,
        delay=delay,
        exception=exc,
        rate_limited=rate,
    )
    publish(event, listeners)
