"""The internal error of a failed Redis call (the caller falls back to local state)."""

from __future__ import annotations

from headway.errors import BackendUnavailableError

__all__ = ["_Unavailable"]


class _Unavailable(BackendUnavailableError):
    """A Redis call failed (internally: the caller falls back)."""
