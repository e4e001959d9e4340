"""Backoff schedules: jitter modes, exponential delays, server-requested delays."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from headway.errors import ConfigurationError, HeadwayError

if TYPE_CHECKING:
    from headway.resilience.retry.engine import RetryEngine

__all__ = ["DEFAULT_MAX_SERVER_DELAY", "JitterMode"]

JitterMode = Literal["none", "full", "equal", "decorrelated"]
RetryPredicate = Callable[[BaseException], bool]
ExceptionTypes = tuple[type[BaseException], ...]

#: Longest server-requested delay (``retry_after``) a retry waits by default, in seconds.
DEFAULT_MAX_SERVER_DELAY = 120.0

_ANY_EXCEPTION: ExceptionTypes = (Exception,)

_JITTER_MODES: frozenset[str] = frozenset({"none", "full", "equal", "decorrelated"})


class RetryDelays:
    """The schedule's reading of a retry configuration (``RetryPolicy`` and
    ``RetrySettings`` both): its delays and what it retries, from its compiled engine."""

    __slots__ = ()

    if TYPE_CHECKING:
        base_delay: float
        max_retries: int

        def engine(self) -> RetryEngine: ...

    def delay(self, retry: int, previous: float | None = None) -> float:
        """Delay before retry number ``retry`` (1-based), jittered by the configuration's
        strategy.

        ``previous`` is the delay before the previous retry (decorrelated jitter grows
        from it; it defaults to ``base_delay``).
        """
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        return self.engine().delay(retry, self.base_delay if previous is None else previous)

    def delays(self) -> Iterator[float]:
        """The delays before each of the ``max_retries`` retries (one random draw)."""
        previous = self.base_delay
        for n in range(1, self.max_retries + 1):
            previous = self.delay(n, previous)
            yield previous

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` is of a kind this configuration retries (ignoring counts and
        budget)."""
        return self.engine().should_retry(exc)


def _jitter_mode(jitter: bool | str) -> JitterMode:
    if jitter is True:
        return "full"
    if jitter is False:
        return "none"
    if jitter in _JITTER_MODES:
        return jitter  # type: ignore[return-value]
    raise ConfigurationError(
        f"jitter must be True, False or one of {sorted(_JITTER_MODES)}; got {jitter!r}"
    )


def _exp_delay(retry: int, base_delay: float, backoff_factor: float, max_delay: float) -> float:
    """The un-jittered delay before retry number ``retry`` (1-based)."""
    try:
        delay = base_delay * backoff_factor ** (retry - 1)
    except OverflowError:
        return max_delay
    return delay if delay < max_delay else max_delay


def _schedule_delay(
    mode: str,
    retry: int,
    previous: float,
    base_delay: float,
    backoff_factor: float,
    max_delay: float,
    rand: Callable[[], float],
) -> float:
    """Delay before retry number ``retry``; ``previous`` is the last delay (decorrelated)."""
    if mode == "decorrelated":
        low = base_delay if base_delay < max_delay else max_delay
        high = 3.0 * previous
        if high < low:
            high = low
        delay = low + (high - low) * rand()
        return delay if delay < max_delay else max_delay
    delay = _exp_delay(retry, base_delay, backoff_factor, max_delay)
    if mode == "full":
        return delay * rand()
    if mode == "equal":
        half = delay / 2.0
        jittered = half + half * rand()
        return jittered if jittered < delay else delay
    return delay


def _server_delay(exc: BaseException) -> float | None:
    """The delay a server asked for (``retry_after`` on a headway error), if any."""
    if isinstance(exc, HeadwayError):
        delay = getattr(exc, "retry_after", None)
        if isinstance(delay, int | float):
            return float(delay) if delay > 0 else 0.0
    return None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{name}: {text}" if text else name


def _exception_types(value: Any, what: str) -> ExceptionTypes:
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if isinstance(value, tuple | list | set | frozenset) and all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        return tuple(value)
    raise ConfigurationError(f"{what} must be an exception type or a tuple of them; got {value!r}")
