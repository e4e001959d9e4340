"""The backend of the named actor: :class:`RayBackend`, its round trips and factories."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any

from headway._clock import Clock
from headway.backends._shared import SharedBackend
from headway.backends.ray.breaker import RayBreakerState
from headway.backends.ray.limiter import RayLimiter
from headway.backends.ray.state import SharedState
from headway.errors import BackendUnavailableError

__all__ = ["RayBackend"]


class RayBackend(SharedBackend[RayLimiter, RayBreakerState]):
    """Named limiters and circuit states held by one named Ray actor.

    Args:
        name: the actor's name; every process using the same name (and ``namespace``)
            shares its limits and circuits.
        namespace: the Ray namespace of the actor.
        detached: create the actor detached (it outlives the job that created it; kill
            it with :meth:`kill`). By default it lives as long as the process that
            created it first: create it on the driver (``headway.ray.run`` does).
        timeout: seconds a round trip to the actor may take before the local fallback.
        retry_interval: seconds between probes of an actor that failed.
        breaker_refresh: seconds between reads of the shared circuit state.
        trial_lease: seconds a half-open trial permit is held at most.
        clock: the clock waits are slept on (``headway.testing`` swaps it).
        actor: an actor handle to use instead of the named one (anything whose methods
            have ``.remote(...)`` returning an awaitable: tests pass a stand-in).

    ``ray`` must be initialised (``ray.init()``) or the code must run inside Ray.

    >>> # every worker: backend.limiter("openai", rpm=500, tpm=200_000)
    """

    limiter_type = RayLimiter
    circuit_type = RayBreakerState

    def __init__(
        self,
        name: str = "headway-limits",
        *,
        namespace: str = "headway",
        detached: bool = False,
        timeout: float = 2.0,
        retry_interval: float = 1.0,
        breaker_refresh: float = 0.25,
        trial_lease: float = 30.0,
        clock: Clock | None = None,
        actor: Any = None,
    ) -> None:
        super().__init__(
            where=f"ray:{name}",
            worker_id=f"{os.getpid()}:{uuid.uuid4().hex[:8]}",
            retry_interval=retry_interval,
            breaker_refresh=breaker_refresh,
            clock=clock,
        )
        self.name = name
        self.namespace = namespace
        self.timeout = timeout
        self.trial_lease = trial_lease
        self._options: dict[str, Any] | None = None
        self._dead = False  # the last trip found the actor dead (not slow, not restarting)
        if actor is None:
            self._options = {
                "name": name,
                "namespace": namespace,
                "get_if_exists": True,
                "num_cpus": 0,
                "max_restarts": -1,
            }
            if detached:
                self._options["lifetime"] = "detached"
            actor = self._named_actor()
        self.actor: Any = actor

    def kill(self) -> None:
        """Kill the actor (its state is lost): at the end of a job, for a detached one."""
        with contextlib.suppress(Exception):
            import ray

            if isinstance(self.actor, ray.actor.ActorHandle):
                ray.kill(self.actor)

    def _named_actor(self) -> Any:
        import ray

        assert self._options is not None
        return ray.remote(SharedState).options(**self._options).remote()

    async def call(self, method: str, *args: Any) -> Any:
        """One round trip to the actor's ``method``, bounded by ``timeout``.

        An error the actor's method raised (a ``ValueError``) comes back as it is; a
        failed or slow trip marks an outage and raises
        :class:`~headway.errors.BackendUnavailableError`.
        """
        try:
            if self._dead and self._options is not None:
                # A probe after the actor died for good (a non-detached actor dies with
                # the process that created it): look it up or create it anew. Only then:
                # after a slow trip the handle is kept, as dropping the handle that created
                # the actor would let Ray collect the actor while it starts.
                self._dead = False
                self.actor = self._named_actor()
            async with asyncio.timeout(self.timeout):
                result = await getattr(self.actor, method).remote(*args)
        except ValueError:
            raise
        except Exception as exc:
            self._dead = self._options is not None and _died(exc)
            self.mark_failed(exc)
            raise BackendUnavailableError(
                f"the Ray actor {self.name!r} did not answer ({type(exc).__name__}: {exc})"
            ) from exc
        self.mark_recovered()
        return result

    def __repr__(self) -> str:
        return f"RayBackend({self.name!r}, namespace={self.namespace!r})"


def _died(exc: BaseException) -> bool:
    """Whether ``exc`` says the actor is dead for good (Ray's ``ActorDiedError``), not
    slow (a timeout) or restarting (``ActorUnavailableError``)."""
    import ray.exceptions

    return isinstance(exc, ray.exceptions.ActorDiedError)
