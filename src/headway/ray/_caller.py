"""The map_batches UDF: one Endpoint and Policy per actor, the batch's rows sent concurrently."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

import orjson

from headway._clock import resolve_clock
from headway.batch.ledger import Result, result_from_error, tokens_used
from headway.errors import (
    CircuitBreakerOpenError,
    ConfigurationError,
    RateLimitError,
    status_error_code,
)
from headway.events import Event, RetryScheduled
from headway.http.config import EndpointConfig
from headway.http.endpoint import Endpoint

__all__ = ["RESULT_COLUMNS", "Caller", "check_backend", "default_limit_name", "request_of"]

#: The columns :class:`Caller` adds to every row.
RESULT_COLUMNS = (
    "status_code",
    "response",
    "error_code",
    "error_message",
    "usage_tokens",
    "request_id",
    "attempts",
    "latency",
)

_RETRIES: ContextVar[list[int] | None] = ContextVar("headway_ray_retries", default=None)


def _on_event(event: Event) -> None:
    if isinstance(event, RetryScheduled):
        counter = _RETRIES.get()
        if counter is not None:
            counter[0] += 1
            if isinstance(event.exception, RateLimitError):
                counter[1] += 1


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def check_backend(spec: str) -> str:
    """``spec`` if it names a backend :class:`Caller` knows, else a one-line error.

    >>> check_backend("actor"), check_backend("redis://127.0.0.1:6379/0")
    ('actor', 'redis://127.0.0.1:6379/0')
    >>> check_backend("etcd://x")
    Traceback (most recent call last):
    ...
    headway.errors.ConfigurationError: backend 'etcd://x': use 'actor', a redis:// URL or 'memory'
    """
    if spec in ("actor", "memory") or spec.startswith(_REDIS_SCHEMES):
        return spec
    raise ConfigurationError(f"backend {spec!r}: use 'actor', a redis:// URL or 'memory'")


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (from a numpy or pandas batch) as plain JSON values."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


def request_of(
    row: Mapping[str, Any],
    *,
    id_column: str = "custom_id",
    body_column: str = "body",
    url_column: str = "url",
) -> tuple[str, dict[str, Any], str | None]:
    """``(custom_id, body, url)`` of one row.

    A Batch-format row has ``custom_id``, ``body`` (a dict or its JSON text) and an
    optional ``url``; an Anthropic batch row has ``params`` instead of ``body``. Any
    other row is a bare body: every column but the id (and ``url``) is sent.

    >>> request_of({"custom_id": "a", "body": '{"model": "m"}', "url": "/v1/embeddings"})
    ('a', {'model': 'm'}, '/v1/embeddings')
    >>> request_of({"id": 7, "model": "m", "input": "hi"}, id_column="id")
    ('7', {'model': 'm', 'input': 'hi'}, None)
    """
    if id_column not in row or row[id_column] is None or row[id_column] == "":
        raise ConfigurationError(f"every row needs a non-empty {id_column!r} column")
    cid = str(row[id_column])
    url = row.get(url_column) or None
    if body_column in row:
        body: Any = row[body_column]
    elif "params" in row:
        body = row["params"]
        url = url or "/v1/messages"
    else:
        body = {k: v for k, v in row.items() if k not in (id_column, url_column)}
    if isinstance(body, str | bytes):
        body = orjson.loads(body)
    if not isinstance(body, dict):
        raise ConfigurationError(f"row {cid!r}: the body must be a JSON object")
    return cid, body, None if url is None else str(url)


def _rows(batch: Any) -> list[dict[str, Any]]:
    """The rows of a batch in any of Ray Data's batch formats."""
    if hasattr(batch, "to_pylist"):  # pyarrow.Table
        rows: list[dict[str, Any]] = batch.to_pylist()
        return rows
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas.DataFrame
        return [_plain(r) for r in batch.to_dict("records")]
    columns = {k: list(v) for k, v in dict(batch).items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [_plain({k: v[i] for k, v in columns.items()}) for i in range(n)]


def _with_results(batch: Any, results: list[Result]) -> Any:
    cols: dict[str, list[Any]] = {
        "status_code": [r.status_code for r in results],
        "response": [
            None if r.body is None else orjson.dumps(r.body).decode("utf-8") for r in results
        ],
        "error_code": [r.code for r in results],
        "error_message": [None if r.error is None else r.error.get("message") for r in results],
        "usage_tokens": [tokens_used(r.body) if r.ok else 0 for r in results],
        "request_id": [r.request_id for r in results],
        "attempts": [r.attempts for r in results],
        "latency": [r.latency for r in results],
    }
    if hasattr(batch, "to_pylist"):  # pyarrow: keep the input columns as they are
        import pyarrow as pa

        types = {
            "status_code": pa.int64(),
            "usage_tokens": pa.int64(),
            "attempts": pa.int64(),
            "latency": pa.float64(),
        }
        for name, values in cols.items():
            if name in batch.column_names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(values, type=types.get(name, pa.string())))
        return batch
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        out = batch.copy()
        for name, values in cols.items():
            out[name] = values
        return out
    out_dict = dict(batch)
    try:
        import numpy as np
    except ImportError:  # outside Ray (numpy comes with it): plain lists
        out_dict.update(cols)
        return out_dict
    for name, values in cols.items():
        out_dict[name] = np.array(values, dtype=object)
    return out_dict


def default_limit_name(config: EndpointConfig) -> str:
    """The name :class:`Caller` shares its limits under unless given one."""
    return f"ray:{config.base_url}"


class Caller:
    """A Ray Data ``map_batches`` UDF sending each row's request under one policy.

    ``ds.map_batches(Caller, fn_constructor_kwargs={"endpoint": config}, concurrency=4,
    batch_size=64, batch_format="pyarrow")``: each actor builds one
    :class:`~headway.Endpoint` and one :class:`~headway.Policy` (retries, the breaker,
    RPM/TPM, concurrency); the policy's limiter and breaker live in a shared backend, so
    the limits hold for the whole cluster. Each call sends its batch's rows concurrently
    and returns the input rows with :data:`RESULT_COLUMNS` added: ``status_code``,
    ``response`` (the body as JSON text, or the columns ``parse`` returns), ``error_code``
    and ``error_message`` (``None`` on success), ``usage_tokens``, ``request_id``,
    ``attempts`` and ``latency`` (seconds). A failed request is a row with an error, never
    a failed batch.

    Args:
        endpoint: an :class:`~headway.EndpointConfig` (or its fields as a dict): base URL,
            default path, key (``api_key_env`` is read on the worker), ``rpm``/``tpm``
            (the account's limits, for the whole cluster), ``concurrency`` (per actor,
            default 64), ``max_retries``, ``timeout``.
        backend: where the shared limit lives: ``"actor"`` (default, a named Ray actor, see
            :class:`~headway.backends.ray.RayBackend`), a ``redis://`` URL, or
            ``"memory"`` (each actor its own limit: only for one actor).
        backend_name: the named actor's name (``"actor"``) or the Redis key prefix (a
            ``:`` is added).
        limit_name: the name the limits and breaker are shared under (default: the
            endpoint's base URL).
        id_column, body_column, url_column: the row's columns (see :func:`request_of`).
        to_request: ``row -> body`` when rows are not requests yet (the id still comes
            from ``id_column``, the path from ``url_column`` or the endpoint).
        parse: ``body -> dict of columns`` to return parsed fields instead of
            ``response`` (``None`` for failed rows).
        burst: requests admitted at once (default: a tenth of a second's worth of
            ``rpm``, leaving the server's burst for the jitter of many senders).
        max_breaker_wait: seconds to wait for an open circuit before failing a row.
        adaptive: follow the server's real limit: ``rpm``/``tpm`` become ceilings and
            the cluster paces at the limit the server advertises (or probes for it when
            it advertises none), learned together by every actor through the backend
            (:class:`~headway.backends.ray.RayAdaptiveLimiter` for ``"actor"``,
            :class:`~headway.backends.redis.adaptive.SharedAdaptiveLimiter` for Redis,
            :class:`~headway.limits.AdaptiveLimiter` for ``"memory"``). Off by default:
            the limit is then exactly ``rpm``/``tpm``.
        fleet: the most actors sharing the limit (:func:`headway.ray.run` passes its
            pool's maximum). During a Redis outage each actor keeps ``1/fleet`` of the
            global rate, so the fleet together stays within it; default: one over the
            workers Redis saw live, which an outage at start-up does not know yet.
    """

    def __init__(
        self,
        endpoint: EndpointConfig | Mapping[str, Any],
        *,
        backend: str = "actor",
        backend_name: str = "headway-limits",
        limit_name: str | None = None,
        id_column: str = "custom_id",
        body_column: str = "body",
        url_column: str = "url",
        to_request: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
        parse: Callable[[Any], Mapping[str, Any]] | None = None,
        burst: float | None = None,
        max_breaker_wait: float = 600.0,
        adaptive: bool = False,
        fleet: int | None = None,
    ) -> None:
        if fleet is not None and fleet < 1:
            raise ValueError(f"fleet must be at least 1 actor, got {fleet!r}")
        config = (
            endpoint
            if isinstance(endpoint, EndpointConfig)
            else EndpointConfig.model_validate(dict(endpoint))
        )
        if config.concurrency is None:
            config = config.model_copy(update={"concurrency": 64})
        self.config = config
        self.backend_spec = check_backend(backend)
        self.backend_name = backend_name
        self.limit_name = limit_name or default_limit_name(config)
        self.id_column = id_column
        self.body_column = body_column
        self.url_column = url_column
        self.to_request = to_request
        self.parse = parse
        self.burst = burst
        self.max_breaker_wait = max_breaker_wait
        self.adaptive = adaptive
        self.fleet = fleet
        self.clock = resolve_clock(None)
        self.backend: Any = None
        self._policy: Any = None
        self._endpoints: dict[str | None, Endpoint] = {}
        self._open_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- per-actor resources ----------------------------------------------------------

    def _make_backend(self) -> Any:
        spec = self.backend_spec
        if spec == "actor":
            from headway.backends.ray import RayBackend

            return RayBackend(self.backend_name)
        if spec == "memory":
            return None
        from headway.backends.redis import RedisBackend

        # the actor backend's bound on a round trip (2 s), not Redis's own 0.5 s: a Ray
        # worker busy with its batches stalls now and then, and a stall is not an outage
        # (an outage falls back to a local share, which four actors can overrun together)
        return RedisBackend(
            spec,
            prefix=self.backend_name.rstrip(":") + ":",
            timeout=2.0,
            local_share="auto" if self.fleet is None else 1.0 / self.fleet,
        )

    def _make_policy(self) -> Any:
        from headway.limits import MultiLimiter
        from headway.resilience.breaker import CircuitBreaker
        from headway.resilience.policy import Policy
        from headway.resilience.retry import RetryPolicy

        cfg = self.config
        limiter: Any = None
        if self.adaptive:
            limiter = self._adaptive_limiter()
        elif cfg.rpm is not None or cfg.tpm is not None:
            burst = self.burst
            if burst is None and cfg.rpm is not None:
                # A tenth of a second's worth: the actors' sends leave with some jitter,
                # and the server's own burst (often a second's worth) absorbs it.
                burst = max(1.0, cfg.rpm / 600.0)
            if self.backend is not None:
                limiter = self.backend.limiter(
                    self.limit_name, rpm=cfg.rpm, tpm=cfg.tpm, burst=burst
                )
            else:
                limiter = MultiLimiter.for_llm(rpm=cfg.rpm, tpm=cfg.tpm, burst=burst)
        retry = RetryPolicy(
            max_retries=cfg.max_retries,
            base_delay=0.5,
            max_delay=30.0,
            name="ray",
            listeners=(_on_event,),
        )
        conc = cfg.concurrency or 64
        breaker = CircuitBreaker(
            failure_threshold=1_000_000,
            recovery_time=5.0,
            failure_rate_threshold=0.5,
            window=30.0,
            minimum_calls=max(20, conc),
            name=self.limit_name if self.backend is not None else "ray",
            backend=self.backend,
        )
        return Policy(
            retry=retry,
            limiter=limiter,
            breaker=breaker,
            concurrency=conc,
            attempt_timeout=cfg.timeout,
            name="ray",
        )

    def _adaptive_limiter(self) -> Any:
        """A limiter that learns the server's limit, shared like the fixed one."""
        cfg = self.config
        # The burst: ``burst`` requests, or a tenth of a second's worth (see _make_policy).
        burst_seconds = 0.1
        if self.burst is not None and cfg.rpm is not None:
            burst_seconds = self.burst * 60.0 / cfg.rpm
        options: dict[str, Any] = {"rpm": cfg.rpm, "tpm": cfg.tpm, "burst_seconds": burst_seconds}
        backend = self.backend
        if backend is None:
            from headway.limits import AdaptiveLimiter

            return AdaptiveLimiter(name=self.limit_name, **options)
        from headway.backends.ray import RayAdaptiveLimiter, RayBackend

        if isinstance(backend, RayBackend):
            return RayAdaptiveLimiter(backend, self.limit_name, **options)
        from headway.backends.redis.adaptive import SharedAdaptiveLimiter

        return SharedAdaptiveLimiter(backend, self.limit_name, **options)

    async def _endpoint(self, url: str | None) -> Endpoint:
        ep = self._endpoints.get(url)
        if ep is not None:
            return ep
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            ep = self._endpoints.get(url)
            if ep is not None:
                return ep
            if self._policy is None:
                self._loop = asyncio.get_running_loop()
                self.backend = self._make_backend()
                self._policy = self._make_policy()
            cfg = self.config
            if url is not None:
                path = url
                if cfg.base_url.rstrip("/").endswith("/v1") and path.startswith("/v1/"):
                    path = path[3:]
                cfg = cfg.model_copy(update={"endpoint": path.lstrip("/")})
            ep = Endpoint(cfg, policy=self._policy)
            await ep.__aenter__()
            self._endpoints[url] = ep
            return ep

    async def aclose(self) -> None:
        """Close the endpoints and the backend (idempotent)."""
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        for ep in endpoints:
            await ep.aclose()
        backend, self.backend = self.backend, None
        self._policy = None
        if backend is not None:
            await backend.aclose()

    def __del__(self) -> None:
        # Ray Data drops the UDF when its actor shuts down gracefully: close the pool on
        # the loop it was opened on (that loop runs in another thread of the actor).
        loop = getattr(self, "_loop", None)  # None too when __init__ raised
        if loop is None or not self._endpoints or loop.is_closed() or not loop.is_running():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout=5.0)

    # -- sending ----------------------------------------------------------------------

    async def send(self, custom_id: str, body: dict[str, Any], url: str | None = None) -> Result:
        """Send one request under the policy; its :class:`~headway.batch.Result`."""
        return (await self.send_detailed(custom_id, body, url))[0]

    async def send_detailed(
        self, custom_id: str, body: dict[str, Any], url: str | None = None
    ) -> tuple[Result, BaseException | None, int]:
        """:meth:`send`, plus the error behind a failure and the 429s that were retried."""
        counter = [0, 0]
        token = _RETRIES.set(counter)
        clock = self.clock
        t0 = clock.now()
        waited = 0.0
        try:
            ep = await self._endpoint(url)
            tokens = None if self.config.tpm is not None else 0.0
            while True:
                try:
                    resp = await ep.call_raw(body, tokens=tokens)
                    break
                except CircuitBreakerOpenError as exc:
                    # nothing was sent: wait for the circuit instead of failing the row
                    if waited >= self.max_breaker_wait:
                        raise
                    delay = max(exc.retry_after or 0.0, 0.25)
                    waited += delay
                    await clock.sleep(delay)
        except Exception as exc:
            failed = result_from_error(
                custom_id, exc, latency=clock.now() - t0, attempts=counter[0] + 1
            )
            return failed, exc, counter[1]
        finally:
            _RETRIES.reset(token)
        headers = resp.headers
        rid = headers.get("x-request-id") or headers.get("request-id")
        status = resp.status
        try:
            parsed = resp.parsed()
        except Exception:  # a 2xx without a JSON body
            parsed = resp.content.decode("utf-8", "replace")
        if 200 <= status < 300:
            ok = Result.success(
                custom_id,
                status,
                parsed,
                request_id=rid,
                latency=clock.now() - t0,
                attempts=counter[0] + 1,
            )
            return ok, None, counter[1]
        bad = Result.failure(
            custom_id,
            status_error_code(status),
            f"HTTP {status}",
            status_code=status,
            request_id=rid,
            body=parsed,
            latency=clock.now() - t0,
            attempts=counter[0] + 1,
        )
        return bad, None, counter[1]

    async def send_rows(self, rows: list[dict[str, Any]]) -> list[Result]:
        """Send every row's request concurrently; one result per row, in order."""

        async def one(row: dict[str, Any]) -> Result:
            try:
                if self.to_request is not None:
                    cid = row.get(self.id_column)
                    if cid is None or cid == "":
                        raise ConfigurationError(
                            f"every row needs a non-empty {self.id_column!r} column"
                        )
                    body = dict(self.to_request(row))
                    url = row.get(self.url_column) or None
                    cid = str(cid)
                else:
                    cid, body, url = request_of(
                        row,
                        id_column=self.id_column,
                        body_column=self.body_column,
                        url_column=self.url_column,
                    )
            except Exception as exc:
                cid = str(row.get(self.id_column, ""))
                return Result.failure(cid, "invalid_request", f"{type(exc).__name__}: {exc}")
            return await self.send(cid, body, url)

        return list(await asyncio.gather(*(one(r) for r in rows)))

    async def __call__(self, batch: Any) -> Any:
        """Send the batch; the input rows with the result columns added."""
        results = await self.send_rows(_rows(batch))
        out = _with_results(batch, results)
        if self.parse is not None:
            out = self._parsed(out, results)
        return out

    def _parsed(self, out: Any, results: list[Result]) -> Any:
        fields = [dict(self.parse(r.body)) if r.ok else {} for r in results]  # type: ignore[misc]
        names = sorted({k for f in fields for k in f})
        for name in names:
            values = [f.get(name) for f in fields]
            if hasattr(out, "append_column"):
                import pyarrow as pa

                if name in out.column_names:
                    out = out.drop_columns([name])
                out = out.append_column(name, pa.array(values))
            else:
                out[name] = values
        if hasattr(out, "drop_columns"):
            return out.drop_columns(["response"])
        with contextlib.suppress(KeyError):
            del out["response"]
        return out

    def __repr__(self) -> str:
        return f"Caller({self.config.name!r}, backend={self.backend_spec!r})"
