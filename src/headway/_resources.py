"""A registry of open headway resources, for the leak guard of :mod:`headway.testing`.

Anything in headway that owns a session, a socket or tasks (a client, an endpoint, an
executor, a runner) calls :func:`track` when it opens and :func:`untrack` when it
closes. :func:`open_resources` lists what is still open, which is how the pytest leak
guard names "a client that was never closed". Tracking is a set insertion: cheap
enough for any constructor. Objects are held weakly when they allow it (give a slots
class a ``__weakref__`` slot); otherwise strongly until :func:`untrack`. While a leak
guard watches (:func:`watch`), new objects are held strongly, so that a resource that
was dropped without being closed is still found.

>>> class Client:
...     def __init__(self) -> None:
...         track(self)
...     def close(self) -> None:
...         untrack(self)
>>> c = Client()
>>> c in open_resources()
True
>>> c.close()
>>> c in open_resources()
False
"""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

__all__ = ["AsyncResourceManager", "open_resources", "track", "untrack", "unwatch", "watch"]


@runtime_checkable
class AsyncResourceManager(Protocol):
    """What every headway object owning a session, a socket or tasks implements.

    ``async with obj:`` opens it (where there is anything to open) and closes it;
    ``await obj.aclose()`` closes it, and closing twice is harmless. Clients, endpoints,
    transports, executors, backends and the fake API server all satisfy it::

        isinstance(client, headway.AsyncResourceManager)  # True
    """

    async def __aenter__(self) -> Self:
        """Open (if needed) and return the object."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        """Close it, whatever happened in the block."""
        ...

    async def aclose(self) -> None:
        """Close it and release what it holds; idempotent."""
        ...


class ClosesOnExit:
    """A base for an :class:`AsyncResourceManager`: ``async with obj:`` gives ``obj``
    and leaves through ``await obj.aclose()``, which the subclass defines."""

    __slots__ = ()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close it (defined by the subclass)."""
        raise NotImplementedError


_weak: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_strong: dict[int, Any] = {}
_watchers = 0


def track(obj: object) -> None:
    """Record ``obj`` as open (idempotent)."""
    key = id(obj)
    if _watchers:
        _strong[key] = obj
        return
    try:
        _weak[key] = obj
    except TypeError:
        _strong[key] = obj


def watch() -> None:
    """A leak guard starts watching: hold newly tracked objects strongly."""
    global _watchers
    _watchers += 1


def unwatch() -> None:
    """A leak guard stops watching; with no guard left, hold objects weakly again."""
    global _watchers
    _watchers = max(0, _watchers - 1)
    if _watchers:
        return
    for key, obj in list(_strong.items()):
        try:
            _weak[key] = obj
        except TypeError:
            continue
        del _strong[key]


def untrack(obj: object) -> None:
    """Record ``obj`` as closed (idempotent; unknown objects are ignored)."""
    key = id(obj)
    if _weak.get(key) is obj:
        del _weak[key]
    if _strong.get(key) is obj:
        del _strong[key]


def open_resources() -> list[object]:
    """The tracked resources that are still open, oldest first."""
    return [*_weak.values(), *_strong.values()]
