"""The shared limiter :class:`RedisLimiter` and the batching of its round trips."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headway._clock import Clock, resolve_clock
from headway.backends._base import Limit
from headway.backends._model import LocalBuckets
from headway.backends.redis._outage import _Unavailable
from headway.backends.redis.reservation import _ALLOW, _LOCAL, _SHARED, RedisReservation, _Slot
from headway.errors import ConfigurationError, MaxWaitExceededError, RequestTooLargeError
from headway.events import (
    LIMITER_PAUSED,
    LIMITER_REJECTED,
    LIMITER_SYNCED,
    LIMITER_WAIT,
    emit,
    enabled,
)
from headway.limits import RATE_LIMITED_PAUSE

if TYPE_CHECKING:
    from headway.backends.redis.backend import RedisBackend

__all__ = ["MAX_PAUSE", "RedisLimiter"]

#: The longest a pause (a 429's Retry-After) holds every worker, in seconds.
MAX_PAUSE = 120.0


def _first(item: tuple[float, list[float]]) -> float:
    return item[0]


#: Most callers sent in one round trip.
_MAX_BATCH = 256
#: What a queued caller is told when it is its turn to lead the next round trip.
_LEAD: Any = object()


@dataclass(slots=True)
class _Request:
    amounts: list[float]
    max_wait: float | None
    requests: float
    tokens: float
    future: asyncio.Future[Any] | None = None


def _outcome(got: Any) -> RedisReservation:
    if isinstance(got, BaseException):
        raise got
    return got  # type: ignore[no-any-return]


class RedisLimiter:
    """Several rate limits shared through Redis, reserved atomically: all or nothing.

    Satisfies the ``headway.limits.Limiter`` protocol (``reserve``, ``pause_until``,
    ``sync``), so it drops into a ``Policy`` or an ``Endpoint`` where an in-memory
    ``MultiLimiter`` would go. Within a process, reservations reach Redis one at a time
    in arrival order (FIFO); across processes, in the order Redis runs them. Waits never
    shrink for later callers, so a large request is never starved by small ones.

    Build it with :meth:`RedisBackend.limiter`.
    """

    def __init__(
        self,
        backend: RedisBackend,
        name: str,
        limits: Iterable[Limit],
        *,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        self.limits = tuple(limits)
        if not self.limits:
            raise ConfigurationError(f"limiter {name!r} needs at least one Limit")
        seen = {(x.unit, x.period) for x in self.limits}
        if len(seen) != len(self.limits):
            raise ConfigurationError(
                f"limiter {name!r}: two limits with the same unit and period; keep one"
            )
        self.max_wait = max_wait
        self.clock = resolve_clock(clock if clock is not None else backend.clock)
        tag = "{" + name + "}"
        self._keys = [backend.key("rl", tag, x.unit, f"{x.period:g}") for x in self.limits]
        self._keys.append(backend.key("workers", tag))
        self._tokens = tuple(x.unit == "tokens" for x in self.limits)
        self._static = [(repr(x.per_second / 1000.0), repr(x.capacity)) for x in self.limits]
        n = len(self.limits)
        self._pending = [0.0] * n
        self._caps: list[float | None] = [None] * n
        self._cancels: list[tuple[float, list[float]]] = []
        self._pause_until = -math.inf
        self._pause_sent = -math.inf
        #: total pause length seen (here or from other workers): waiters extend by it
        self._shift = 0.0
        self._seen_shift: float | None = None
        self._own_shift = 0.0
        self._busy = False  # a round trip is in flight; newcomers queue
        self._queue: deque[_Request] = deque()
        self._local: LocalBuckets | None = None
        self._local_outage = -1
        #: clock time of the last admission Redis granted this worker (the fallback
        #: refills only after it: those admissions already use the shared rate)
        self._shared_until = -math.inf
        self._local_share = 1.0
        self._capped = -1  # the outage whose recovery capped the shared level
        self._recovering_until = -math.inf
        #: the wait of the last admission Redis granted: how far ahead the fleet's queue
        #: of shared admissions ran then (other workers' run about as far)
        self._last_wait = 0.0

    # -- reserving --------------------------------------------------------------------

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
        amounts = [tokens if t else requests for t in self._tokens]
        for amount, lim in zip(amounts, self.limits, strict=True):
            if amount > lim.capacity:
                raise RequestTooLargeError(
                    f"limiter {self.name!r}: {amount:g} {lim.unit} can never be admitted by "
                    f"a limit of {lim.rate:g} per {lim.period:g}s (capacity "
                    f"{lim.capacity:g}); split the request or raise the burst",
                    requested=amount,
                    capacity=lim.capacity,
                )
            if amount < 0:
                raise ValueError(f"cannot reserve a negative amount ({amount:g})")
        if max_wait is None:
            max_wait = self.max_wait
        backend = self.backend
        if not self._busy and backend.resting(self.clock.now()):
            # an outage: no round trip, unless a probe is due
            return _outcome(self._reserve_local(amounts, max_wait, requests, tokens))
        if self._local is not None and self.clock.now() < self._recovering_until:
            # Just back from an outage: other workers may still be on their fallbacks, so
            # this one keeps to its share too. It waits its local turn first and only
            # then reserves from Redis, so the shared bucket sees the admission when it
            # happens (reserving both at once would bank shared tokens for a burst).
            ok, wait = self._local.reserve(amounts, max_wait=max_wait)
            if not ok:
                raise self._rejection(amounts, wait, max_wait)
            if wait > 0:
                await self.clock.sleep(wait)
                if max_wait is not None:
                    max_wait = max(0.0, max_wait - wait)
        req = _Request(amounts, max_wait, requests, tokens)
        if self._busy:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            req.future = fut
            self._queue.append(req)
            try:
                got = await fut
            except asyncio.CancelledError:
                self._abandon(req)
                raise
            if got is not _LEAD:
                return _outcome(got)
        else:
            self._busy = True
        return _outcome(await self._lead(req))

    def _abandon(self, req: _Request) -> None:
        """A queued caller was cancelled: withdraw it, or undo what it was given."""
        fut = req.future
        assert fut is not None
        if not fut.done() or fut.cancelled():
            with contextlib.suppress(ValueError):
                self._queue.remove(req)  # not sent yet (if sent: the leader undoes it)
            return
        got = fut.result()
        if got is _LEAD:
            self._hand_off()
        elif isinstance(got, RedisReservation):
            got.cancel()

    def _hand_off(self) -> None:
        """Make the next queued caller lead the next round trip, or go idle."""
        queue = self._queue
        while queue:
            nxt = queue.popleft()
            assert nxt.future is not None
            if not nxt.future.done():
                nxt.future.set_result(_LEAD)
                return
        self._busy = False

    async def _lead(self, req: _Request) -> Any:
        """Send ``req`` and every caller queued behind it in one round trip."""
        batch = [req]
        queue = self._queue
        while queue and len(batch) < _MAX_BATCH:
            nxt = queue.popleft()
            assert nxt.future is not None
            if not nxt.future.done():
                batch.append(nxt)
        outcomes: list[Any] | None = None
        try:
            if self.backend.may_call():
                with contextlib.suppress(_Unavailable):
                    outcomes = await self._reserve_shared(batch)
        except BaseException:
            # cancelled mid round trip: the others go again (anything Redis took for them
            # is lost: too little used, never too much)
            for other in reversed(batch[1:]):
                queue.appendleft(other)
            self._hand_off()
            raise
        if outcomes is None:
            outcomes = [
                self._reserve_local(r.amounts, r.max_wait, r.requests, r.tokens) for r in batch
            ]
        for other, got in zip(batch[1:], outcomes[1:], strict=True):
            assert other.future is not None
            if other.future.done():  # cancelled meanwhile: give its units back
                if isinstance(got, RedisReservation):
                    got.cancel()
            else:
                other.future.set_result(got)
        self._hand_off()
        return outcomes[0]

    async def _reserve_shared(self, batch: list[_Request]) -> list[Any]:
        backend = self.backend
        now = self.clock.now()
        pause_ms = 0.0
        if self._pause_until > now and self._pause_until > self._pause_sent:
            pause_ms = (self._pause_until - now) * 1000.0
            self._pause_sent = self._pause_until
        n = len(self.limits)
        args: list[Any] = [
            n,
            len(batch),
            pause_ms,
            backend.worker_id,
            backend.config.presence_window * 1000.0,
            "",
        ]
        pending, caps = self._pending, self._caps
        local = self._local
        if local is not None and self._capped == self._local_outage:
            local = None  # this outage's recovery is done
        for i in range(n):
            rate, cap = self._static[i]
            level_cap = caps[i]
            if local is not None:
                level_cap = self._recovery_cap(local, i, level_cap)
            args += [rate, cap, pending[i], "" if level_cap is None else level_cap]
            pending[i] = 0.0
            caps[i] = None
        cancels = self._cancels
        args.append(len(cancels))
        if cancels:
            cancels.sort(key=_first, reverse=True)
            for at, back in cancels:
                args.append(at)
                args += back
            self._cancels = []
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
        shift = float(result[1]) / 1000.0
        server_now = float(result[2])
        seen = self._seen_shift
        if seen is not None and shift > seen:
            # what other workers paused (our own pause shifted our waiters already)
            extra = shift - seen - (self._own_shift if pause_ms else 0.0)
            if extra > 0:
                self._shift += extra
        if pause_ms:
            self._own_shift = 0.0
        self._seen_shift = shift
        outcomes: list[Any] = []
        for j, r in enumerate(batch):
            wait_ms = float(result[4 + 2 * j])
            wait = wait_ms / 1000.0
            if int(result[3 + 2 * j]):
                outcomes.append(
                    self._admitted(_SHARED, None, wait, r.requests, r.tokens, server_now + wait_ms)
                )
            else:
                outcomes.append(self._rejection(r.amounts, wait, r.max_wait))
        return outcomes

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

    def _reserve_local(
        self, amounts: list[float], max_wait: float | None, requests: float, tokens: float
    ) -> RedisReservation | BaseException:
        mode = self.backend.config.on_backend_error
        if mode == "fail":
            return self.backend.unavailable_error(f"limiter {self.name!r}")
        if mode == "allow":
            return RedisReservation(self, _ALLOW, None, 0.0, requests, tokens)
        local = self._local
        now = self.clock.now()
        if local is None or self._local_outage != self.backend.outages:
            # This worker's share of each limit, starting EMPTY: the shared bucket may have
            # just been drained, so the fallback adds no burst, only the share's rate.
            share = self._local_share = self.backend.local_share()
            local = LocalBuckets(
                [(x.per_second * share, max(1.0, x.capacity * share)) for x in self.limits],
                clock=self.clock,
            )
            # Nothing refills before the fleet's queue of shared admissions has run out:
            # ours (shared_until) and, about as long, the other workers'.
            start = max(now + self._last_wait, self._shared_until)
            for bucket in local.buckets:
                bucket.level, bucket.start = 0.0, start
            self._local = local
            self._local_outage = self.backend.outages
        caps = self._caps
        level_caps = None
        if any(c is not None for c in caps):
            level_caps, self._caps = caps, [None] * len(caps)
        ok, wait = local.reserve(
            amounts,
            max_wait=max_wait,
            pause=max(0.0, self._pause_until - now),
            level_caps=level_caps,
        )
        if not ok:
            return self._rejection(amounts, wait, max_wait)
        return self._admitted(_LOCAL, local, wait, requests, tokens, now + wait)

    def _admitted(
        self,
        source: int,
        state: LocalBuckets | None,
        wait: float,
        requests: float,
        tokens: float,
        at: float,
    ) -> RedisReservation:
        now = self.clock.now()
        floor = self._pause_until - now
        if floor > wait:
            wait = floor
        if source == _SHARED:
            self._last_wait = wait
            if now + wait > self._shared_until:
                self._shared_until = now + wait
        if wait > 0 and enabled():
            emit(LIMITER_WAIT, source=self.name, requests=requests, tokens=tokens, wait=wait)
        return RedisReservation(self, source, state, wait, requests, tokens, at)

    def _rejection(
        self, amounts: list[float], wait: float, max_wait: float | None
    ) -> MaxWaitExceededError:
        if enabled():
            emit(LIMITER_REJECTED, source=self.name, tokens=amounts, wait=wait, max_wait=max_wait)
        return MaxWaitExceededError(
            f"limiter {self.name!r}: admission in {wait:.3f}s would exceed "
            f"max_wait={max_wait or 0.0:g}s; nothing was reserved",
            retry_after=wait,
        )

    @property
    def shift(self) -> float:
        """Total seconds waiting reservations were pushed back by pauses (only grows)."""
        return self._shift

    def settle_units(self, source: int, state: LocalBuckets | None, tokens: float) -> None:
        """A reservation of ``source`` settled: ``tokens`` more were used (< 0: fewer)."""
        deltas = [tokens if t else 0.0 for t in self._tokens]
        if source == _SHARED:
            pending = self._pending
            for i, d in enumerate(deltas):
                pending[i] += d
        elif source == _LOCAL and state is not None:
            state.adjust(deltas)

    def cancel_units(
        self, source: int, state: LocalBuckets | None, at: float, requests: float, tokens: float
    ) -> None:
        """Give back a cancelled reservation of ``source`` admitted ``at``."""
        back = [tokens if t else requests for t in self._tokens]
        if source == _SHARED:
            self._cancels.append((at, back))
        elif source == _LOCAL and state is not None:
            state.cancel(at, back)

    def has_pending(self) -> bool:
        """Whether settles, cancels, caps or a pause still wait to be sent to Redis."""
        return (
            any(self._pending)
            or bool(self._cancels)
            or any(c is not None for c in self._caps)
            or (self._pause_until > self._pause_sent and self._pause_until > self.clock.now())
        )

    def slot(self, requests: float = 1.0, tokens: float = 0.0) -> _Slot:
        """``async with limiter.slot(1, 800) as reservation:`` waits; refunds if cancelled."""
        return _Slot(self, requests, tokens)

    async def acquire(self, requests: float = 1.0, tokens: float = 0.0) -> float:
        """Reserve, wait until admitted (refunding if cancelled) and return the wait."""
        res = await self.reserve(requests, tokens)
        await res.wait()
        return res.delay

    async def flush(self) -> None:
        """Send pending settles, refunds, pauses and syncs to Redis now.

        They otherwise ride along with this process's next reservation.
        """
        await self.reserve(0.0, 0.0)

    # -- steering from server signals -------------------------------------------------

    def pause_until(self, when: float) -> None:
        """Admit nobody before clock time ``when`` (after a 429 with Retry-After).

        Applies in this process at once and for every worker with the next round trip
        (call :meth:`flush` to publish it now). Later reservations queue behind it. A
        pause is at most :data:`MAX_PAUSE` long: one ``Retry-After: 86400`` does not stop
        every worker (nor keep the bucket in Redis) for a day.
        """
        now = self.clock.now()
        if when > now + MAX_PAUSE:
            when = now + MAX_PAUSE
        start = max(self._pause_until, now)
        if when > start:
            self._pause_until = when
            self._shift += when - start
            self._own_shift += when - start
            if enabled(logging.INFO):
                emit(
                    LIMITER_PAUSED,
                    source=self.name,
                    level=logging.INFO,
                    until=when,
                    seconds=when - now,
                )

    def pause(self, seconds: float) -> None:
        """:meth:`pause_until` ``now + seconds``."""
        self.pause_until(self.clock.now() + seconds)

    def reserve_nowait(self, requests: float = 1.0, tokens: float = 0.0) -> RedisReservation | None:
        """Always ``None``: a shared reservation needs a round trip; await :meth:`reserve`."""
        return None

    def on_rate_limited(self, delay: float | None, *, empty: bool) -> None:
        """A rate 429: pause every worker if the server's bucket is ``empty`` (for
        ``delay``, already capped by the policy, or ``RATE_LIMITED_PAUSE`` seconds)."""
        if empty:
            self.pause(delay if delay is not None and delay > 0.0 else RATE_LIMITED_PAUSE)

    def on_success(self) -> None:
        """An attempt succeeded: a no-op for fixed limits."""

    def set_limit(self, index: int, limit: Limit) -> None:
        """Replace limit ``index`` (same unit and period) from the next round trip on.

        What a limiter that learns its rate (:class:`~headway.backends.redis.adaptive.
        SharedAdaptiveLimiter`) uses to change the shared bucket's rate and burst.
        """
        old = self.limits[index]
        if (limit.unit, limit.period) != (old.unit, old.period):
            raise ConfigurationError(
                f"limiter {self.name!r}: limit {index} is {old.unit} per {old.period:g}s; "
                "a new rate keeps the unit and the period"
            )
        limits = list(self.limits)
        limits[index] = limit
        self.limits = tuple(limits)
        self._static[index] = (repr(limit.per_second / 1000.0), repr(limit.capacity))

    def sync(
        self,
        unit: str,
        remaining: float,
        reset_after: float | None = None,
        limit: float | None = None,
    ) -> None:
        """The server says ``remaining`` ``unit`` are left: lower the shared level to that.

        Applies to the limit of that unit whose capacity is ``limit`` if given, else to
        the shortest one. Never raises a level. Published with the next round trip.
        """
        candidates = [i for i, x in enumerate(self.limits) if x.unit == unit]
        if not candidates:
            return
        if limit is not None:
            exact = [i for i in candidates if self.limits[i].capacity == limit]
            candidates = exact or candidates
        i = min(candidates, key=lambda j: self.limits[j].period)
        old = self._caps[i]
        self._caps[i] = remaining if old is None else min(old, remaining)
        if enabled():
            emit(LIMITER_SYNCED, source=self.name, remaining=remaining, reset=reset_after)

    def __repr__(self) -> str:
        return f"RedisLimiter({self.name!r}, limits={list(self.limits)!r})"
