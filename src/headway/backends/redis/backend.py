"""The Redis backend: its connection, its outage handling and its factories."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import headway.backends._scripts as _scripts
from headway._clock import Clock
from headway._secrets import redact_url
from headway.backends._base import limits_of
from headway.backends._shared import SharedBackend
from headway.backends.redis._outage import _Unavailable
from headway.backends.redis.breaker import RedisBreakerState
from headway.backends.redis.limiter import RedisLimiter
from headway.errors import BackendUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["OnBackendError", "RedisBackend", "RedisBackendConfig"]

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


class RedisBackend(SharedBackend[RedisLimiter, RedisBreakerState]):
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

    outage_error = _Unavailable
    limiter_type = RedisLimiter
    circuit_type = RedisBreakerState

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
        from redis.exceptions import TimeoutError as RedisTimeout

        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._slow: tuple[type[BaseException], ...] = (RedisTimeout, TimeoutError)
        if isinstance(url_or_client, str):
            self.client: Redis = aioredis.Redis.from_url(
                url_or_client,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
            self._owns_client = True
            where = redact_url(url_or_client)
        else:
            self.client = url_or_client
            self._owns_client = False
            where = repr(url_or_client)
        super().__init__(
            where=where,
            worker_id=uuid.uuid4().hex,
            retry_interval=retry_interval,
            breaker_refresh=breaker_refresh,
            clock=clock,
        )
        self.prefix = prefix
        #: The limiters' reservation script (:meth:`eval_script` runs it).
        self.reserve_script: AsyncScript = self.client.register_script(_scripts.RESERVE)

    # -- health -----------------------------------------------------------------------

    def outage_fields(self) -> dict[str, Any]:
        """The ``on_backend_error`` mode, in the ``backend.unavailable`` event."""
        return {"mode": self.config.on_backend_error}

    async def eval_script(
        self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run ``script`` within ``timeout``; any trouble marks an outage and raises
        :class:`~headway.errors.BackendUnavailableError` (for this backend's stores)."""
        try:
            async with asyncio.timeout(self.config.timeout):
                result = await script(keys=keys, args=args)
        except self._errors as exc:
            self.mark_failed(exc)
            raise _Unavailable(
                f"Redis at {self.where} is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        finally:
            self.call_done()
        self.mark_recovered()
        return result

    def unavailable_error(self, what: str) -> BackendUnavailableError:
        """The error for ``what`` under ``on_backend_error="fail"`` during an outage."""
        return BackendUnavailableError(
            f"Redis at {self.where} is unreachable, so {what} cannot be shared "
            "(on_backend_error='fail'); it is retried every "
            f"{self.config.retry_interval:g}s. Use on_backend_error='local' to keep "
            "calling at a share of the global rate during an outage."
        )

    def local_share(self) -> float:
        """The share of a global rate this worker keeps during an outage."""
        share = self.config.local_share
        if share == "auto":
            return super().local_share()
        return float(share)

    async def ping(self, *, within: float = 0.0) -> bool:
        """Whether Redis answers within ``timeout`` (and mark it up or down).

        ``within``: seconds to keep asking while the answer is only slow (a timeout): a
        start-up check on a loaded machine may take longer than one call's ``timeout``
        to connect. A refused connection or any other error answers at once.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + within
        while True:
            try:
                async with asyncio.timeout(self.config.timeout):
                    await self.client.ping()
            except self._errors as exc:
                if isinstance(exc, self._slow) and loop.time() < give_up:
                    continue
                self.mark_failed(exc)
                return False
            self.mark_recovered()
            return True

    # -- factories --------------------------------------------------------------------

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

    def key(self, *parts: str) -> str:
        """A key under this backend's prefix."""
        return self.prefix + ":".join(parts)

    # -- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the breaker refresher, flush what limiters owe, close an owned client."""
        if self._closed:
            return
        await super().aclose()
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:
        return (
            f"RedisBackend({self.where!r}, prefix={self.prefix!r}, "
            f"on_backend_error={self.config.on_backend_error!r})"
        )
