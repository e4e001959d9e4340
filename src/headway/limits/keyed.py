"""One limiter per key: per endpoint, per model, per API key.

Providers often limit each model (or each key) separately. :class:`KeyedLimiter` makes a
limiter the first time a key is seen, with a factory you give, and keeps at most
``max_keys`` of them, dropping the least recently used.

>>> import asyncio
>>> from headway.limits import MultiLimiter
>>> per_model = KeyedLimiter(lambda model: MultiLimiter.for_llm(rpm=500, tpm=200_000))
>>> async def main() -> float:
...     reservation = await per_model.reserve("gpt-4o-mini", tokens=1_200)
...     return reservation.delay
>>> asyncio.run(main())
0.0
>>> per_model.get("gpt-4o-mini") is per_model.get("gpt-4o-mini"), len(per_model)
(True, 1)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from headway.errors import ConfigurationError
from headway.limits._reservation import Reservation
from headway.limits.bucket import TokenBucketRateLimiter
from headway.limits.multi import MultiLimiter

__all__ = ["KeyedLimiter"]

L = TypeVar("L", MultiLimiter, TokenBucketRateLimiter)


class KeyedLimiter(Generic[L]):
    """A limiter per key, made on first use by ``factory(key)``; LRU-bounded.

    Args:
        factory: builds the limiter for a new key.
        max_keys: how many keys to keep. When a new key would exceed it, the least
            recently used limiter is dropped (and rebuilt full if its key comes back),
            so keep ``max_keys`` above the number of keys active within one period.
    """

    __slots__ = ("__dict__", "_factory", "_items", "max_keys")  # "__dict__": mockable

    def __init__(self, factory: Callable[[str], L], *, max_keys: int = 10_000) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigurationError(f"max_keys must be an int >= 1, got {max_keys!r}")
        self._factory: Callable[[str], L] = factory
        self._items: OrderedDict[str, L] = OrderedDict()
        self.max_keys = max_keys

    def get(self, key: str) -> L:
        """The limiter for ``key``, made now if it is new."""
        items = self._items
        limiter = items.get(key)
        if limiter is not None:
            items.move_to_end(key)
            return limiter
        limiter = self._factory(key)
        items[key] = limiter
        if len(items) > self.max_keys:
            items.popitem(last=False)
        return limiter

    __getitem__ = get

    async def reserve(
        self,
        key: str,
        requests: float = 1.0,
        tokens: float = 0.0,
        *,
        max_wait: float | None = None,
    ) -> Reservation:
        """``get(key).reserve(requests, tokens, max_wait=max_wait)``."""
        return await self.get(key).reserve(requests, tokens, max_wait=max_wait)

    def reserve_nowait(
        self, key: str, requests: float = 1.0, tokens: float = 0.0
    ) -> Reservation | None:
        """``get(key).reserve_nowait(requests, tokens)`` (``None``: await :meth:`reserve`)."""
        return self.get(key).reserve_nowait(requests, tokens)

    def pause_until(self, when: float) -> None:
        """Pause every limiter held now (a key-wide 429 is ``get(key).pause_until``)."""
        for limiter in self._items.values():
            limiter.pause_until(when)

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429 for every key: each limiter held now decides (a key's own 429 is
        ``get(key).on_rate_limited``)."""
        for limiter in self._items.values():
            limiter.on_rate_limited(delay, empty=empty)

    def on_success(self) -> None:
        """An attempt succeeded: a no-op (the limiters held are fixed limits)."""

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __repr__(self) -> str:
        return f"KeyedLimiter(keys={len(self._items)}, max_keys={self.max_keys})"
