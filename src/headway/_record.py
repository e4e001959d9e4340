"""A base for small internal records: a dataclass's ``repr`` and ``==``, without its cost.

Building a dataclass compiles its generated methods when the module is imported, which
``headway run`` pays before its first request. A record lists its fields in ``_fields``,
stores them in ``__slots__`` and writes its own ``__init__``.

>>> class Point(Record):
...     __slots__ = _fields = ("x", "y")
...     def __init__(self, x: int, y: int = 0) -> None:
...         self.x, self.y = x, y
>>> Point(1), Point(1) == Point(1, 0), Point(1) == Point(2)
(Point(x=1, y=0), True, False)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["Record"]


class Record:
    """``repr`` and ``==`` over the fields named in ``_fields`` (unhashable, as a dataclass)."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({args})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    __hash__ = None  # type: ignore[assignment]
