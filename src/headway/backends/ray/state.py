"""What the named actor holds: :class:`SharedState` (Ray wraps it as the actor)."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from headway.backends._model import Bucket, reserve_batch

__all__ = ["SharedState"]

_PRESENCE = 10.0  # seconds a worker counts as live after its last round trip


class SharedState:
    """The state the named actor holds (a plain class: Ray wraps it, tests call it directly).

    ``now``: the clock (the actor's ``time.monotonic``; tests pass a virtual one).
    ``restarted``: whether this is an actor Ray restarted (default: asked of Ray).

    Limits are kept per name as :class:`~headway.backends._model.Bucket` lists, on the
    actor's monotonic clock (seconds). Methods run one at a time (the actor is serial),
    which is what makes a reservation atomic.

    A limit starts full on a fresh cluster, as the server's does. Where the state was
    lost — a restarted actor, or a worker that reserved here before finds its limit
    gone (the actor was created anew) — it starts EMPTY: the server's window may still
    hold what the lost state admitted, so a restart adds no burst, only the rate.
    """

    def __init__(self, now: Any = time.monotonic, *, restarted: bool | None = None) -> None:
        self._now = now
        self.restarted = _reconstructed() if restarted is None else restarted
        self._limits: dict[str, tuple[tuple[tuple[float, float], ...], list[Bucket]]] = {}
        self._clients: dict[str, float] = {}
        self._breakers: dict[str, _Circuit] = {}
        self._learned: dict[str, tuple[int, dict[str, str]]] = {}
        self._epoch = uuid.uuid4().hex[:12]
        self._trips = 0
        self._reserved = 0

    def stats(self) -> dict[str, int]:
        """Round trips served, reservations made in them (batching: several per trip),
        and whether the actor was restarted (1) or is the first of its name here (0)."""
        return {
            "trips": self._trips,
            "reservations": self._reserved,
            "restarted": int(self.restarted),
        }

    def reserve(
        self,
        name: str,
        specs: Sequence[tuple[float, float]],
        client: str,
        adjusts: Sequence[float] | None,
        caps: Sequence[float | None] | None,
        cancels: Sequence[tuple[float, Sequence[float]]],
        pause: float,
        callers: Sequence[tuple[Sequence[float], float | None]],
        retune: bool = False,
        known: bool = False,
    ) -> tuple[float, float, int, list[tuple[bool, float]]]:
        """Apply settles/caps/cancels/pause, then reserve for ``callers`` in order.

        With ``retune`` the limits' rates and capacities become ``specs`` (a learned
        rate: the levels stay); without it other ``specs`` than the name's are refused.
        ``known``: the caller reserved under ``name`` before (if the name is missing,
        its state was lost). Returns ``(total pause shift, actor now, live workers,
        [(admitted, wait)])``.
        """
        now = self._now()
        key = tuple((float(r), float(c)) for r, c in specs)
        entry = self._limits.get(name)
        if entry is None:
            level = 0.0 if self.restarted or known else None
            entry = (key, [Bucket(rate=r, capacity=c, level=level, start=now) for r, c in key])
            self._limits[name] = entry
        elif entry[0] != key:
            if not retune or len(key) != len(entry[0]):
                raise ValueError(
                    f"limiter {name!r} already exists with other limits; "
                    "one name, one set of limits"
                )
            for b, (rate, cap) in zip(entry[1], key, strict=True):
                b.rate, b.capacity = rate, cap
            entry = (key, entry[1])
            self._limits[name] = entry
        self._clients[client] = now
        if len(self._clients) > 1:
            for c, seen in list(self._clients.items()):
                if now - seen > _PRESENCE:
                    del self._clients[c]
        buckets = entry[1]
        self._trips += 1
        self._reserved += sum(1 for amounts, _ in callers if any(amounts))
        out = reserve_batch(
            buckets, now, callers, adjusts=adjusts, level_caps=caps, cancels=cancels, pause=pause
        )
        return max(b.shift for b in buckets), now, len(self._clients), out

    def learned(self, name: str, state: dict[str, str] | None) -> tuple[str, dict[str, str] | None]:
        """The rate the workers learned for ``name``: store ``state`` (a new version) if
        given; return ``(version, state)`` (``("", None)``: nothing learned yet).

        A version names this actor too (``"<actor id>:<n>"``): after a restart the
        versions differ from every one seen before.
        """
        n, held = self._learned.get(name, (0, None))
        if state is not None:
            n, held = n + 1, dict(state)
            self._learned[name] = (n, held)
        return (f"{self._epoch}:{n}" if n else ""), held

    def breaker(
        self,
        name: str,
        write: float,
        token: str,
        want_trial: bool,
        release: bool,
        max_trials: int,
        lease: float,
    ) -> tuple[float | None, int, bool]:
        """One breaker round: a write (``> 0`` open for that long, ``0`` close, ``< 0``
        none), a trial request or release; returns ``(open_for, generation, got_trial)``."""
        now = self._now()
        c = self._breakers.get(name)
        if c is None:
            c = self._breakers[name] = _Circuit()
        if write >= 0:
            c.open_until = now + write if write > 0 else None
            c.generation += 1
            c.trials.clear()
        if release:
            c.trials.pop(token, None)
        for t, until in list(c.trials.items()):
            if until <= now:
                del c.trials[t]
        got = False
        if (
            want_trial
            and c.open_until is not None
            and c.open_until <= now
            and (token in c.trials or len(c.trials) < max_trials)
        ):
            c.trials[token] = now + lease
            got = True
        left = None if c.open_until is None else c.open_until - now
        return left, c.generation, got


def _reconstructed() -> bool:
    """Whether this runs in an actor Ray restarted (False outside an actor)."""
    ray = sys.modules.get("ray")  # never imported (nor started) here
    try:
        if ray is None or not ray.is_initialized():
            return False
        ctx = ray.get_runtime_context()
        return ctx.get_actor_id() is not None and bool(ctx.was_current_actor_reconstructed)
    except Exception:
        return False


@dataclass(slots=True)
class _Circuit:
    open_until: float | None = None
    generation: int = 0
    trials: dict[str, float] = field(default_factory=dict)
