"""``headway run --engine ray``: the batch runner's requests sent from Ray actors.

The driver keeps everything that makes ``headway run`` safe — reading and checking the
input, the ledger and resume, duplicates, ``--shard``, Ctrl-C, the display and the
summary — and hands each request to one of ``actors`` Ray actors (on any node of the
cluster), each holding one :class:`~headway.ray.Caller`: its own connection pool and
Policy, with the limits and the circuit shared by all of them through the named-actor
backend (or Redis with ``--redis-url``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from headway.batch.jobs import BatchRequest
from headway.batch.ledger import Result
from headway.batch.runner import BatchRunner, Response, note_rate, note_retry, signal_handlers
from headway.batch.sender import SenderSettings
from headway.errors import ConfigurationError
from headway.http.config import EndpointConfig
from headway.limits.adaptive import describe_learned
from headway.ray._caller import Caller

if TYPE_CHECKING:
    from headway.backends.ray import RayBackend

__all__ = ["CallerActor", "RaySender", "endpoint_config", "run_batch_on_ray"]


class CallerActor:
    """A Ray actor holding one :class:`Caller` (the ``--engine ray`` workers)."""

    def __init__(self, **options: Any) -> None:
        self.caller = Caller(**options)

    async def send(
        self, custom_id: str, body: dict[str, Any], url: str | None
    ) -> tuple[Result, BaseException | None, int]:
        """Send one request: its result, the error behind a failure, the 429s retried."""
        return await self.caller.send_detailed(custom_id, body, url)


def endpoint_config(settings: SenderSettings, actors: int) -> EndpointConfig:
    """The endpoint every actor uses for ``run``'s resolved flags."""
    target = settings.target
    key = target.key()
    return EndpointConfig(
        name="headway-batch",
        base_url=target.base_url,
        api_key=None if key is None else SecretStr(key),
        auth_type=target.auth,
        default_headers=dict(target.headers),
        timeout=settings.timeout,
        max_retries=max(0, settings.max_attempts - 1),
        rpm=settings.rpm,
        tpm=settings.tpm,
        concurrency=max(1, math.ceil(settings.concurrency / actors)),
    )


class RaySender:
    """A batch :class:`~headway.batch.Sender` that sends from a pool of Ray actors."""

    def __init__(self, settings: SenderSettings, *, actors: int, backend: str) -> None:
        self.settings = settings
        self.count = actors
        self.backend = backend
        #: The named actor's backend: the learned rate is read there for the display.
        self.owner: RayBackend | None = None
        self._read_at = -math.inf
        #: The actors, started with the first request (a resumed run with nothing left
        #: to send starts none).
        self.actors: list[Any] = []
        self._next = 0

    def _start(self) -> list[Any]:
        import ray

        settings = self.settings
        remote = ray.remote(CallerActor).options(
            num_cpus=0.25, max_restarts=-1, max_task_retries=-1, max_concurrency=10_000
        )
        config = endpoint_config(settings, self.count)
        self.actors = [
            remote.remote(
                endpoint=config,
                backend=self.backend,
                limit_name=settings.shared_name,
                burst=settings.burst,
                max_breaker_wait=settings.max_breaker_wait,
                adaptive=True,  # as the local engine: --rpm/--tpm are ceilings
            )
            for _ in range(self.count)
        ]
        return self.actors

    async def __call__(self, request: BatchRequest) -> Response:
        from ray.exceptions import RayActorError

        url = self.settings.target.path(request.url)
        actors = self.actors or self._start()
        tries = 0
        while True:
            actor = actors[self._next % len(actors)]
            self._next += 1
            try:
                result, exc, limited = await actor.send.remote(request.custom_id, request.body, url)
                break
            except RayActorError:
                tries += 1
                if tries >= 3 * len(actors):
                    raise
        for i in range(result.attempts - 1):
            note_retry(rate_limited=i < limited)
        await self._note_rate()
        if exc is not None:
            raise exc
        return Response(result.status_code or 0, result.body, {}, request_id=result.request_id)

    async def _note_rate(self) -> None:
        """Show the rate the actors learned (read from the named actor, once a second)."""
        owner = self.owner
        if owner is None or owner.clock.now() - self._read_at < 1.0:
            return
        self._read_at = owner.clock.now()
        try:
            _, state = await owner.call("learned", self.settings.shared_name, None)
        except Exception:
            return  # shown, not needed
        if state:
            rate, who, learned = describe_learned(state, rpm=self.settings.rpm)
            note_rate(rate, who, learned)

    def close(self) -> None:
        """Kill the actors."""
        import ray

        for actor in self.actors:
            ray.kill(actor)


async def run_batch_on_ray(
    runner: BatchRunner, settings: SenderSettings, *, address: str | None, actors: int
) -> None:
    """Run ``runner`` with a :class:`RaySender` on the cluster at ``address`` (local if None)."""
    try:
        import ray
    except ImportError:
        raise ConfigurationError(
            "--engine ray needs the ray extra: pip install 'headway[ray]'"
        ) from None
    if actors < 1:
        raise ConfigurationError("--ray-actors must be at least 1")
    started = False
    if not ray.is_initialized():
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = address or "a local Ray"
            raise ConfigurationError(f"cannot start or reach {where}: {exc}") from None
        started = True
    owner = None
    try:
        backend = settings.redis_url or "actor"
        if backend == "actor":
            from headway.backends.ray import RayBackend

            owner = RayBackend()  # the driver owns the named actor
        sender = RaySender(settings, actors=actors, backend=backend)
        sender.owner = owner
        try:
            runner.sender = sender
            with signal_handlers(runner):
                await runner.run()
        finally:
            sender.close()
    finally:
        del owner  # the named actor lives as long as this driver (shared while it does)
        if started:
            ray.shutdown()
