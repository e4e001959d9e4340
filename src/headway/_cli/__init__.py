"""The ``headway`` console script's commands; the entry point is :mod:`headway.cli`."""

__all__: list[str] = []
