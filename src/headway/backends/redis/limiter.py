"""The shared limiter :class:`RedisLimiter`: one Lua script per round trip."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from headway.backends._base import Limit
from headway.backends._model import LocalBuckets
from headway.backends._shared import ALLOW, Request, SharedLimiter, SharedReservation
from headway.backends.redis.reservation import RedisReservation

if TYPE_CHECKING:
    from headway.backends.redis.backend import RedisBackend

__all__ = ["MAX_PAUSE", "RedisLimiter"]

#: The longest a pause (a 429's Retry-After) holds every worker, in seconds.
MAX_PAUSE = 120.0


class RedisLimiter(SharedLimiter):
    """Several rate limits shared through Redis, reserved atomically: all or nothing.

    Satisfies the ``headway.limits.Limiter`` protocol (``reserve``, ``pause_until``,
    ``sync``), so it drops into a ``Policy`` or an ``Endpoint`` where an in-memory
    ``MultiLimiter`` would go. Within a process, reservations reach Redis one at a time
    in arrival order (FIFO); across processes, in the order Redis runs them. Waits never
    shrink for later callers, so a large request is never starved by small ones. A
    pause is at most :data:`MAX_PAUSE` long: one ``Retry-After: 86400`` does not stop
    every worker (nor keep the bucket in Redis) for a day.

    During a Redis outage, ``on_backend_error`` says what a reservation does: ``"local"``
    reserves from this worker's share, ``"fail"`` raises
    :class:`~headway.errors.BackendUnavailableError`, ``"allow"`` lets it through.

    Build it with :meth:`RedisBackend.limiter`.
    """

    reservation = RedisReservation
    max_pause = MAX_PAUSE
    backend: RedisBackend

    def setup(self) -> None:
        """The keys of the limits in Redis and the script's copy of the rates."""
        tag = "{" + self.name + "}"
        key = self.backend.key
        self._keys = [key("rl", tag, x.unit, f"{x.period:g}") for x in self.limits]
        self._keys.append(key("workers", tag))
        self._static = [(repr(x.per_second / 1000.0), repr(x.capacity)) for x in self.limits]
        self._capped = -1  # the outage whose recovery capped the shared level
        self._recovering_until = float("-inf")

    async def reserve(
        self, requests: float = 1.0, tokens: float = 0.0, *, max_wait: float | None = None
    ) -> RedisReservation:
        """Reserve ``requests`` and ``tokens`` from every limit now; wait ``delay`` after.

        Raises :class:`~headway.errors.RequestTooLargeError` if a limit can never hold
        the amount, :class:`~headway.errors.MaxWaitExceededError` if the wait would
        exceed ``max_wait`` (nothing is reserved then), and, during a Redis outage with
        ``on_backend_error="fail"``, :class:`~headway.errors.BackendUnavailableError`.

        Callers that arrive while a round trip is in flight queue here and go together,
        in arrival order, in the next one: one round trip serves them all.
        """
        req = Request(self.amounts(requests, tokens), max_wait, requests, tokens)
        if req.max_wait is None:
            req.max_wait = self.max_wait
        now = self.clock.now()
        if not self._busy and self.backend.resting(now):
            # an outage: no round trip, unless a probe is due
            got = self.reserve_local(req)
            if isinstance(got, BaseException):
                raise got
            return cast(RedisReservation, got)
        if self._local is not None and now < self._recovering_until:
            # Just back from an outage: other workers may still be on their fallbacks, so
            # this one keeps to its share too. It waits its local turn first and only
            # then reserves from Redis, so the shared bucket sees the admission when it
            # happens (reserving both at once would bank shared tokens for a burst).
            ok, wait = self._local.reserve(req.amounts, max_wait=req.max_wait)
            if not ok:
                raise self.rejection(req.amounts, wait, req.max_wait)
            if wait > 0:
                await self.clock.sleep(wait)
                if req.max_wait is not None:
                    req.max_wait = max(0.0, req.max_wait - wait)
        return cast(RedisReservation, await self.submit(req))

    async def send(self, batch: list[Request]) -> list[Any]:
        """One reservation script for ``batch`` (with settles, caps, cancels, a pause)."""
        backend = self.backend
        pause_ms = self.take_pause(self.clock.now()) * 1000.0
        args: list[Any] = [
            len(self.limits),
            len(batch),
            pause_ms,
            backend.worker_id,
            backend.config.presence_window * 1000.0,
            "",
        ]
        local = self._local
        if local is not None and self._capped == self._local_outage:
            local = None  # this outage's recovery is done
        pending, caps, cancels = self.take_settles()
        for i, (rate, cap) in enumerate(self._static):
            level_cap = caps[i]
            if local is not None:
                level_cap = self._recovery_cap(local, i, level_cap)
            args += [rate, cap, pending[i], "" if level_cap is None else level_cap]
        args.append(len(cancels))
        for at, back in cancels:
            args.append(at)
            args += back
        for r in batch:
            args.append(-1 if r.max_wait is None else r.max_wait * 1000.0)
            args += r.amounts
        result = await backend.eval_script(backend.reserve_script, self._keys, args)
        if local is not None:
            # Back: the level is capped. Other workers may still be on their fallbacks
            # until their next probe, and their queued local admissions run on, so until
            # this worker's own local queue has run out plus one probe interval it keeps
            # to its share too (see reserve).
            self._capped = self._local_outage
            self._recovering_until = (
                self.clock.now() + backend.config.retry_interval + self._local_horizon(local)
            )
        backend.workers = int(result[0])
        self.saw_shift(float(result[1]) / 1000.0, bool(pause_ms))
        server_now = float(result[2])
        return [
            self.answer(
                r,
                bool(int(result[3 + 2 * j])),
                float(result[4 + 2 * j]) / 1000.0,
                server_now + float(result[4 + 2 * j]),
            )
            for j, r in enumerate(batch)
        ]

    def _local_horizon(self, local: LocalBuckets) -> float:
        """Seconds until the fallback's queue of admissions has run out (its debt)."""
        horizon = 0.0
        for i, bucket in enumerate(local.buckets):
            level = local.level(i)
            if level < 0 and bucket.rate > 0:
                horizon = max(horizon, -level / bucket.rate)
        return horizon

    def _recovery_cap(self, local: LocalBuckets, i: int, level_cap: float | None) -> float:
        """Back from an outage: the level to cap limit ``i``'s shared bucket at.

        While Redis was away its bucket refilled (or, restarted, came back full) though
        the fleet kept admitting at its local shares. This worker's fallback tells what the
        fleet has left: its level over its share (negative while the queue of admissions
        runs on). Too little is used for a moment; never too much.
        """
        share = self._local_share
        estimate = local.level(i) / share if share > 0 else 0.0
        return estimate if level_cap is None else min(estimate, level_cap)

    def reserve_local(self, r: Request) -> SharedReservation | BaseException:
        """Redis is away: as ``on_backend_error`` says (a local share by default)."""
        mode = self.backend.config.on_backend_error
        if mode == "fail":
            return self.backend.unavailable_error(f"limiter {self.name!r}")
        if mode == "allow":
            return RedisReservation(self, ALLOW, None, 0.0, r.requests, r.tokens)
        return super().reserve_local(r)

    def limit_changed(self, index: int, limit: Limit) -> None:
        """The script's copy of limit ``index`` (rate per ms, capacity)."""
        self._static[index] = (repr(limit.per_second / 1000.0), repr(limit.capacity))
