"""Backend-neutral pieces: limit specs, sharding, the backend protocols."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar

from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from headway.errors import ConfigurationError
from headway.resilience.breaker import BreakerStore

if TYPE_CHECKING:
    from headway._clock import Clock

__all__ = [
    "Backend",
    "Limit",
    "limits_of",
    "Shard",
    "llm_limits",
    "shard_of",
]


@pydantic_dataclass(frozen=True)
class Limit:
    """One rate limit: ``rate`` units per ``period`` seconds, bursts up to ``burst``.

    ``unit`` says what a reservation is charged with: ``"requests"`` (one per call) or
    ``"tokens"`` (the call's token estimate, settled later with the actual use).

    >>> Limit(100, 60, burst=10, unit="tokens")
    Limit(rate=100.0, period=60.0, burst=10.0, unit='tokens')
    >>> Limit(0)
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Limit
    ...
    """

    rate: float = Field(gt=0)
    period: float = Field(default=1.0, gt=0)
    burst: float | None = Field(default=None, gt=0)
    unit: Literal["requests", "tokens"] = "requests"

    @property
    def capacity(self) -> float:
        """The most units ever available at once (``burst``, else ``rate``)."""
        return float(self.rate if self.burst is None else self.burst)

    @property
    def per_second(self) -> float:
        """The sustained rate in units per second."""
        return self.rate / self.period


def llm_limits(
    *,
    rpm: float | None = None,
    tpm: float | None = None,
    rpd: float | None = None,
    tpd: float | None = None,
    rps: float | None = None,
    burst: float | None = None,
) -> tuple[Limit, ...]:
    """The limits an LLM provider states: requests/tokens per minute and per day.

    ``burst`` caps the shortest requests limit (``rps`` if given, else ``rpm``).

    >>> llm_limits(rps=10, burst=2)
    (Limit(rate=10.0, period=1.0, burst=2.0, unit='requests'),)
    """
    out: list[Limit] = []
    if rps is not None:
        out.append(Limit(rps, 1.0, burst=burst))
    if rpm is not None:
        out.append(Limit(rpm, 60.0, burst=burst if rps is None else None))
    if tpm is not None:
        out.append(Limit(tpm, 60.0, unit="tokens"))
    if rpd is not None:
        out.append(Limit(rpd, 86_400.0))
    if tpd is not None:
        out.append(Limit(tpd, 86_400.0, unit="tokens"))
    if not out:
        raise ConfigurationError("give at least one limit: rps, rpm, tpm, rpd or tpd")
    return tuple(out)


def limits_of(limiter: Any) -> tuple[Limit, ...]:
    """The :class:`Limit` list of an in-memory limiter (a ``MultiLimiter`` or a bucket).

    Reads ``limiters`` (or the object itself) for ``rate``, ``period``, ``max_tokens`` and
    ``unit``; used by :meth:`RedisBackend.share`.
    """
    buckets = getattr(limiter, "limiters", None) or (limiter,)
    out = []
    for b in buckets:
        try:
            out.append(
                Limit(
                    float(b.rate),
                    float(b.period),
                    burst=float(b.max_tokens),
                    unit=getattr(b, "unit", "requests"),
                )
            )
        except AttributeError as exc:
            raise ConfigurationError(
                f"{limiter!r} is not a limiter: expected rate, period and max_tokens"
            ) from exc
    return tuple(out)


def shard_of(key: str, n: int) -> int:
    """The shard (``0 .. n-1``) that owns ``key``: a stable hash, the same on every machine.

    Uses BLAKE2b (not Python's ``hash``, which changes per process), so N workers
    started anywhere agree on who sends which line.

    >>> shard_of("line-1", 1)
    0
    >>> sorted({shard_of(f"id-{i}", 3) for i in range(100)})
    [0, 1, 2]
    """
    if n < 1:
        raise ConfigurationError(f"the number of shards must be at least 1, not {n}")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@pydantic_dataclass(frozen=True)
class Shard:
    """Worker ``index`` (1-based, as written on a command line) of ``count`` workers.

    >>> s = Shard.parse("2/4")
    >>> s.index, s.count, s.owns("abc") == (shard_of("abc", 4) == 1)
    (2, 4, True)
    >>> Shard.parse("5/4")
    Traceback (most recent call last):
    ...
    headway.errors.ConfigurationError: shard '5/4': K must be between 1 and N (write K/N, e.g. 1/4)
    """

    index: int = Field(ge=1)
    count: int = Field(ge=1)

    def __post_init__(self) -> None:
        if self.index > self.count:
            raise ConfigurationError(f"shard {self.index}/{self.count}: K must be at most N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Read ``"K/N"`` (1 <= K <= N), the form of ``headway run --shard K/N``."""
        m = _SHARD_RE.match(text)
        if m is None or not 1 <= int(m.group(1)) <= int(m.group(2)):
            raise ConfigurationError(
                f"shard {text!r}: K must be between 1 and N (write K/N, e.g. 1/4)"
            )
        return cls(int(m.group(1)), int(m.group(2)))

    def owns(self, key: str) -> bool:
        """Whether this worker sends the line with this ``custom_id``."""
        return shard_of(key, self.count) == self.index - 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


L = TypeVar("L")
S = TypeVar("S", bound=BreakerStore)


class Backend(Generic[L, S]):
    """Where limiters and breakers keep their state: memory, Redis or a Ray actor.

    A backend names its limiters and circuit stores: the same name gives the same object
    (one shared limit). Each backend supplies :meth:`new_limiter` and
    :meth:`new_breaker_store`, the parts that differ by where the state lives; the
    naming rules live here once.
    """

    def __init__(self) -> None:
        self._limiters: dict[str, tuple[tuple[Limit, ...], L]] = {}
        self._breakers: dict[str, S] = {}

    def limiter(
        self,
        name: str,
        *,
        limits: Iterable[Limit] = (),
        rpm: float | None = None,
        tpm: float | None = None,
        rpd: float | None = None,
        tpd: float | None = None,
        rps: float | None = None,
        burst: float | None = None,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> L:
        """The limiter ``name``: the same object for the same name (a shared limit).

        Give ``limits`` or the LLM shorthands (``rpm``, ``tpm``, ``rpd``, ``tpd``, ``rps``,
        ``burst``; see :func:`llm_limits`), the first time at least. Every user of the
        name must give the same limits to share them.
        """
        specs = tuple(limits)
        if any(x is not None for x in (rpm, tpm, rpd, tpd, rps)):
            specs += llm_limits(rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd, rps=rps, burst=burst)
        existing = self._limiters.get(name)
        if existing is not None:
            if specs and specs != existing[0]:
                raise ConfigurationError(
                    f"limiter {name!r} already exists with limits {existing[0]}; "
                    "one name, one set of limits"
                )
            return existing[1]
        if not specs:
            raise ConfigurationError(f"limiter {name!r} needs at least one Limit")
        made = self.new_limiter(name, specs, max_wait=max_wait, clock=clock)
        self._limiters[name] = (specs, made)
        return made

    def breaker_store(self, name: str, *, half_open_max_calls: int = 1) -> S:
        """The store of the circuit ``name``, shared by the breakers of that name.

        ``CircuitBreaker(name=..., backend=backend)`` calls this; the same object for the
        same name. Give ``half_open_max_calls`` (how many trial calls at once, for every
        user of the name) by calling it once yourself before building the breakers, if
        it is not 1.
        """
        store = self._breakers.get(name)
        if store is None:
            store = self.new_breaker_store(name, half_open_max_calls=half_open_max_calls)
            self._breakers[name] = store
        return store

    def new_limiter(self, name: str, limits: tuple[Limit, ...], **options: Any) -> L:
        """Build the limiter ``name`` (once per name, by :meth:`limiter`); ``options``:
        ``max_wait`` and ``clock``."""
        raise NotImplementedError

    def new_breaker_store(self, name: str, *, half_open_max_calls: int = 1) -> S:
        """Build the circuit store ``name`` (called once per name by :meth:`breaker_store`)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the backend opened (idempotent)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
