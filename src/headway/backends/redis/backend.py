"""The Redis backend: its connection, its outage handling and its factories."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import headway.backends._scripts as _scripts
from headway._clock import Clock, resolve_clock
from headway._secrets import redact_url
from headway.backends._base import Limit, limits_of, llm_limits
from headway.backends.redis._outage import _Unavailable
from headway.backends.redis.breaker import RedisBreakerState
from headway.backends.redis.limiter import RedisLimiter
from headway.errors import BackendUnavailableError, ConfigurationError
from headway.events import emit

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "BACKEND_RECOVERED",
    "BACKEND_UNAVAILABLE",
    "OnBackendError",
    "RedisBackend",
    "RedisBackendConfig",
]

#: Event: Redis stopped answering (once per outage, WARNING). Data: error, mode.
BACKEND_UNAVAILABLE = "backend.unavailable"
#: Event: Redis answers again; shared state resumed (INFO). Data: outage (seconds).
BACKEND_RECOVERED = "backend.recovered"

OnBackendError = Literal["local", "fail", "allow"]


class RedisBackendConfig(BaseModel):
    """Options of :class:`RedisBackend` (validated; see its docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str = "headway:"
    timeout: float = Field(default=0.5, gt=0)
    on_backend_error: OnBackendError = "local"
    local_share: float | Literal["auto"] = "auto"
    retry_interval: float = Field(default=1.0, gt=0)
    presence_window: float = Field(default=10.0, gt=0)
    breaker_refresh: float = Field(default=0.25, gt=0)
    trial_lease: float = Field(default=30.0, gt=0)

    def model_post_init(self, __context: Any) -> None:
        share = self.local_share
        if share != "auto" and not 0 < float(share) <= 1:
            raise ConfigurationError(
                f"local_share must be 'auto' or in (0, 1], not {share!r}: the share of the "
                "global rate one worker may use while Redis is unreachable"
            )


class RedisBackend:
    """Shared limiter and breaker state in Redis for every worker of a fleet.

    Args:
        url_or_client: a ``redis://`` URL (the backend opens and closes its client) or a
            ``redis.asyncio.Redis`` client (used as given, never closed by headway).
        prefix: the start of every key headway writes.
        timeout: the longest any one Redis call may take, in seconds.
        on_backend_error: during an outage, ``"local"`` limits in process at
            ``local_share`` of the global rate, ``"fail"`` raises
            :class:`~headway.errors.BackendUnavailableError`, ``"allow"`` lets calls through.
        local_share: share of the global rate a worker keeps in an outage; ``"auto"``
            is one over the number of workers seen live in the last ``presence_window`` s.
        retry_interval: how often (s) a call probes Redis during an outage.
        presence_window: how long (s) a worker counts as live after its last reservation.
        breaker_refresh: how often (s) shared circuit states are re-read.
        trial_lease: the longest (s) one half-open trial call may hold its permit.
        clock: the clock timing outages and local fallbacks.

    >>> backend = RedisBackend("redis://:secret@localhost:6379/0", prefix="demo:")
    >>> backend
    RedisBackend('redis://***@localhost:6379/0', prefix='demo:', on_backend_error='local')
    """

    def __init__(
        self,
        url_or_client: str | Redis,
        *,
        prefix: str = "headway:",
        timeout: float = 0.5,
        on_backend_error: OnBackendError = "local",
        local_share: float | Literal["auto"] = "auto",
        retry_interval: float = 1.0,
        presence_window: float = 10.0,
        breaker_refresh: float = 0.25,
        trial_lease: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self.config = RedisBackendConfig(
            prefix=prefix,
            timeout=timeout,
            on_backend_error=on_backend_error,
            local_share=local_share,
            retry_interval=retry_interval,
            presence_window=presence_window,
            breaker_refresh=breaker_refresh,
            trial_lease=trial_lease,
        )
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        if isinstance(url_or_client, str):
            self.client: Redis = aioredis.Redis.from_url(
                url_or_client,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
            self._owns_client = True
            self._where = redact_url(url_or_client)
        else:
            self.client = url_or_client
            self._owns_client = False
            self._where = repr(url_or_client)
        self.clock = resolve_clock(clock)
        self.prefix = prefix
        #: A random id naming this worker in Redis (its presence entry, its trial leases).
        self.worker_id = uuid.uuid4().hex
        #: Workers seen live at the last reservation (this one included).
        self.workers = 1
        #: How many outages this backend has gone through.
        self.outages = 0
        #: The limiters' reservation script (:meth:`eval_script` runs it).
        self.reserve_script: AsyncScript = self.client.register_script(_scripts.RESERVE)
        self._down = False
        self._down_since = 0.0
        self._retry_at = 0.0
        self._probing = False
        self._limiters: dict[str, RedisLimiter] = {}
        self._breakers: dict[str, RedisBreakerState] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False

    # -- health -----------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False during an outage (between a failed call and the next answer)."""
        return not self._down

    def resting(self, now: float) -> bool:
        """Whether an outage is on and no probe is due at ``now``: skip Redis, stay local."""
        return self._down and (self._probing or now < self._retry_at)

    def may_call(self) -> bool:
        """Whether to call Redis now; during an outage one caller probes per interval."""
        if not self._down:
            return True
        if self._probing or self.clock.now() < self._retry_at:
            return False
        self._probing = True
        return True

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = self.clock.now() + self.config.retry_interval
        if self._down:
            return
        self._down = True
        self._down_since = self.clock.now()
        self.outages += 1
        emit(
            BACKEND_UNAVAILABLE,
            source=self._where,
            level=logging.WARNING,
            error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
            mode=self.config.on_backend_error,
            retry_interval=self.config.retry_interval,
        )

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            emit(
                BACKEND_RECOVERED,
                source=self._where,
                level=logging.INFO,
                outage=round(self.clock.now() - self._down_since, 3),
            )

    async def eval_script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run ``script`` within ``timeout``; any trouble marks an outage and raises
        :class:`~headway.errors.BackendUnavailableError` (for this backend's stores)."""
        try:
            async with asyncio.timeout(self.config.timeout):
                result = await script(keys=keys, args=args)
        except self._errors as exc:
            self._probing = False
            self._failed(exc)
            raise _Unavailable(
                f"Redis at {self._where} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        except BaseException:
            self._probing = False
            raise
        self._probing = False
        self._recovered()
        return result

    def unavailable_error(self, what: str) -> BackendUnavailableError:
        """The error for ``what`` under ``on_backend_error="fail"`` during an outage."""
        return BackendUnavailableError(
            f"Redis at {self._where} is unreachable, so {what} cannot be shared "
            "(on_backend_error='fail'); it is retried every "
            f"{self.config.retry_interval:g}s. Use on_backend_error='local' to keep "
            "calling at a share of the global rate during an outage."
        )

    def local_share(self) -> float:
        """The share of a global rate this worker keeps during an outage."""
        share = self.config.local_share
        if share == "auto":
            return 1.0 / max(1, self.workers)
        return float(share)

    async def ping(self) -> bool:
        """Whether Redis answers within ``timeout`` (and mark it up or down)."""
        try:
            async with asyncio.timeout(self.config.timeout):
                await self.client.ping()
        except self._errors as exc:
            self._failed(exc)
            return False
        self._recovered()
        return True

    def ensure_refresher(self) -> None:
        """Start the task that keeps shared circuit states fresh (once, in a loop)."""
        if self._task is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(
            self._refresh(self._wake), name="headway-redis-breaker-refresher"
        )

    def wake_refresher(self) -> None:
        """A shared circuit state has something to send: run the refresher now."""
        self.ensure_refresher()
        if self._wake is not None:
            self._wake.set()

    async def _refresh(self, wake: asyncio.Event) -> None:
        """The refresher task: keep every shared circuit state fresh."""
        clock = self.clock
        interval = self.config.breaker_refresh
        next_read = clock.now()
        while not self._closed:
            read = clock.now() >= next_read
            if read:
                next_read = clock.now() + interval
            wake.clear()
            if self.may_call():
                try:
                    for state in list(self._breakers.values()):
                        await state.step(read)
                except _Unavailable:
                    pass
                finally:
                    self._probing = False
            with contextlib.suppress(TimeoutError):
                delay = max(0.0, next_read - clock.now())
                if self._down:
                    delay = max(delay, self._retry_at - clock.now())
                async with asyncio.timeout(delay):
                    await wake.wait()

    # -- factories --------------------------------------------------------------------

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
    ) -> RedisLimiter:
        """The shared limiter ``name``: the same object for the same name in this process.

        Give ``limits`` or the LLM shorthands (``rpm``, ``tpm``, ``rpd``, ``tpd``, ``rps``,
        ``burst``; see :func:`~headway.backends.llm_limits`). Every worker must use the
        same name and the same limits to share them.
        """
        specs = tuple(limits)
        if any(x is not None for x in (rpm, tpm, rpd, tpd, rps)):
            specs += llm_limits(rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd, rps=rps, burst=burst)
        existing = self._limiters.get(name)
        if existing is not None:
            if specs and specs != existing.limits:
                raise ConfigurationError(
                    f"limiter {name!r} already exists with limits {existing.limits}; "
                    "one name, one set of limits"
                )
            return existing
        lim = RedisLimiter(self, name, specs, max_wait=max_wait, clock=clock)
        self._limiters[name] = lim
        return lim

    def share(self, limiter: Any, name: str, *, max_wait: float | None = None) -> RedisLimiter:
        """A shared limiter with the limits of an in-memory one (``MultiLimiter``/bucket).

        >>> backend = RedisBackend("redis://localhost")
        >>> from headway.backends import Limit
        >>> class Bucket:  # anything with rate, period, max_tokens (and unit)
        ...     rate, period, max_tokens, unit = 60.0, 60.0, 10.0, "requests"
        >>> backend.share(Bucket(), "api").limits
        (Limit(rate=60.0, period=60.0, burst=10.0, unit='requests'),)
        """
        return self.limiter(name, limits=limits_of(limiter), max_wait=max_wait)

    def breaker_store(self, name: str, *, half_open_max_calls: int = 1) -> RedisBreakerState:
        """The store of the circuit ``name``, shared by every worker's breakers of that name.

        ``CircuitBreaker(name=..., backend=backend)`` calls this; the same object for the
        same name. Give ``half_open_max_calls`` (the cluster-wide number of trial calls)
        by calling it once yourself before building the breakers, if it is not 1.
        """
        store = self._breakers.get(name)
        if store is None:
            store = RedisBreakerState(self, name, half_open_max_calls=half_open_max_calls)
            self._breakers[name] = store
        return store

    def key(self, *parts: str) -> str:
        """A key under this backend's prefix."""
        return self.prefix + ":".join(parts)

    # -- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the breaker refresher, flush what limiters owe, close an owned client."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            # The refresher stops at its next turn (_closed); the cancel makes that now.
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        for lim in self._limiters.values():
            if lim.has_pending() and not self._down:
                with contextlib.suppress(BackendUnavailableError):
                    await lim.flush()
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> RedisBackend:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisBackend({self._where!r}, prefix={self.prefix!r}, "
            f"on_backend_error={self.config.on_backend_error!r})"
        )
