"""The default backend: limiter and breaker state in this process.

A limiter built without ``backend=`` is already in memory; :class:`MemoryBackend` adds
names, so that every client of one process asking for ``"openai"`` shares one limit —
the same code as with a :class:`~headway.backends.RedisBackend`, minus Redis.

>>> import asyncio
>>> backend = MemoryBackend()
>>> a = backend.limiter("openai", rpm=500, tpm=90_000)
>>> a is backend.limiter("openai")
True
>>> r = asyncio.run(a.reserve(requests=1, tokens=1200))
>>> r.delay
0.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headway._clock import Clock, resolve_clock
from headway.backends._base import Backend, Limit
from headway.errors import ConfigurationError

if TYPE_CHECKING:
    from headway.limits import MultiLimiter

__all__ = ["MemoryBackend", "MemoryBreakerState"]


class MemoryBreakerState:
    """Circuit state shared by the breakers of one name in this process.

    The :class:`~headway.resilience.breaker.BreakerStore` of a :class:`MemoryBackend`:
    the same methods as :class:`~headway.backends.RedisBreakerState`, answered at once.

    >>> from headway import ManualClock
    >>> clock = ManualClock()
    >>> state = MemoryBreakerState("api", clock=clock)
    >>> state.publish_open(30.0)
    >>> state.open_for(), state.try_trial()
    (30.0, False)
    >>> clock.advance(30.0)
    >>> state.try_trial(), state.try_trial()
    (True, False)
    >>> state.publish_closed()
    >>> state.open_for() is None
    True
    """

    def __init__(
        self, name: str, *, half_open_max_calls: int = 1, clock: Clock | None = None
    ) -> None:
        if half_open_max_calls < 1:
            raise ConfigurationError("half_open_max_calls must be at least 1")
        self.name = name
        self.half_open_max_calls = half_open_max_calls
        self.clock = resolve_clock(clock)
        self._open_until: float | None = None
        self._trials = 0

    def open_for(self) -> float | None:
        """Seconds the circuit stays open (``<= 0``: trial calls may go); None: closed."""
        if self._open_until is None:
            return None
        return self._open_until - self.clock.now()

    @property
    def is_open(self) -> bool:
        """Whether the circuit is open or half-open."""
        return self._open_until is not None

    def publish_open(self, recovery_time: float) -> None:
        """Open the circuit for ``recovery_time`` seconds (frees every trial permit)."""
        if recovery_time <= 0:
            raise ValueError("recovery_time must be > 0")
        self._open_until = self.clock.now() + recovery_time
        self._trials = 0

    def publish_closed(self) -> None:
        """Close the circuit."""
        self._open_until = None
        self._trials = 0

    def try_trial(self) -> bool:
        """Take a half-open trial permit: only once the open period is over, and at most
        ``half_open_max_calls`` at a time."""
        left = self.open_for()
        if left is None or left > 0 or self._trials >= self.half_open_max_calls:
            return False
        self._trials += 1
        return True

    def release_trial(self) -> None:
        """Give a trial permit back (a cancelled or excluded trial call)."""
        if self._trials > 0:
            self._trials -= 1

    def __repr__(self) -> str:
        return f"MemoryBreakerState({self.name!r}, open_for={self.open_for()!r})"


class MemoryBackend(Backend["MultiLimiter", MemoryBreakerState]):
    """Named limiters and circuit states in this process (the default).

    ``limiter(name, ...)`` returns a ``headway.limits.MultiLimiter``: the same object for
    the same name.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__()
        self.clock = clock

    def new_limiter(self, name: str, limits: tuple[Limit, ...], **options: Any) -> MultiLimiter:
        """An in-memory ``MultiLimiter`` with a token bucket per limit."""
        from headway.limits import MultiLimiter, TokenBucketRateLimiter

        clk = options.get("clock") or self.clock
        buckets = [
            TokenBucketRateLimiter(
                x.rate,
                x.period,
                x.capacity,
                clock=clk,
                name=f"{name}:{x.unit}/{x.period:g}s",
                unit=x.unit,
            )
            for x in limits
        ]
        return MultiLimiter(buckets, clock=clk, max_wait=options.get("max_wait"))

    def new_breaker_store(self, name: str, *, half_open_max_calls: int = 1) -> MemoryBreakerState:
        """The circuit store ``name`` of this process."""
        return MemoryBreakerState(
            name, half_open_max_calls=half_open_max_calls, clock=resolve_clock(self.clock)
        )

    def __repr__(self) -> str:
        return f"MemoryBackend(limiters={sorted(self._limiters)!r})"
