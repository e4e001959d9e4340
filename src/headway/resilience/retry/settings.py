"""RetrySettings: a retry configuration as a plain record, for code that builds its own.

:class:`~headway.resilience.retry.RetryPolicy` is the validated configuration users write;
it is a pydantic model, and importing pydantic and building the model takes a start-up
tenth of a second. Code of headway that builds a :class:`~headway.Policy` from settings it
has already checked (``headway run``: its flags) uses this record instead, so that the
batch runner reaches its first request without pydantic. Same fields, same defaults, the
same retry engine; only the checks of ``RetryPolicy`` are left to the caller (the
obvious ones are kept).

>>> from headway.resilience.policy import Policy
>>> settings = RetrySettings(max_retries=4, jitter=False)
>>> list(settings.delays())
[1.0, 2.0, 4.0, 8.0]
>>> Policy(retry=settings).retry is settings
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    _jitter_mode,
)

__all__ = ["RetrySettings"]


@dataclass(frozen=True, slots=True, eq=False)
class RetrySettings(RetryDelays):
    """The fields of :class:`~headway.resilience.retry.RetryPolicy`, without pydantic.

    ``retry_on`` and ``exclude`` take a tuple of exception types (or a predicate for
    ``retry_on``); see ``RetryPolicy`` for every field.

    Raises:
        ConfigurationError: a negative count or delay, ``max_delay < base_delay``,
            ``backoff_factor < 1`` or an unknown jitter mode.
    """

    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0
    backoff_factor: float = 2.0
    jitter: bool | JitterMode = True
    retry_on: ExceptionTypes | RetryPredicate = is_retryable
    retry_on_result: Callable[[Any], bool] | None = None
    exclude: ExceptionTypes = ()
    max_server_delay: float = DEFAULT_MAX_SERVER_DELAY
    budget: RetryBudget | None = field(default_factory=RetryBudget)
    clock: Clock | None = None
    name: str | None = None
    listeners: tuple[EventListener, ...] = ()
    _engine: RetryEngine | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for what in ("max_retries", "base_delay", "max_delay", "max_server_delay"):
            if not getattr(self, what) >= 0:
                raise ConfigurationError(f"{what} must be >= 0, got {getattr(self, what)!r}")
        if self.max_delay < self.base_delay:
            raise ConfigurationError(
                f"max_delay ({self.max_delay}) must be >= base_delay ({self.base_delay})"
            )
        if not self.backoff_factor >= 1.0:
            raise ConfigurationError(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")
        _jitter_mode(self.jitter)
        object.__setattr__(self, "_engine", RetryEngine(self))

    def engine(self) -> RetryEngine:
        """The compiled form the retry loop runs (one per settings object)."""
        assert self._engine is not None
        return self._engine
