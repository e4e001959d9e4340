"""Package attributes imported on first use (PEP 562), for ``__init__`` modules that
re-export names from their submodules without importing them all up front."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    package: str, where: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``where`` is imported
    from its module on first use and kept in ``namespace`` (the package's globals).

    >>> ns: dict[str, Any] = {"__all__": ["dumps"]}
    >>> getattr_, dir_ = lazy_names("pkg", {"dumps": "json"}, ns)
    >>> getattr_("dumps").__module__, "dumps" in ns, dir_()
    ('json', True, ['__all__', 'dumps'])
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *namespace.get("__all__", ())})

    return __getattr__, __dir__
