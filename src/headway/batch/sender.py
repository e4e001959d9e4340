"""The HTTP sender of ``headway run``: headway's client and Policy under the batch runner.

:func:`open_sender` opens one pooled :class:`~headway.http.client.AsyncAPIClient` whose
:class:`~headway.resilience.policy.Policy` holds everything that paces and protects the
batch: the requests- and tokens-per-minute limits (tokens estimated before sending,
settled from ``usage``; server limit headers and ``Retry-After`` followed), the retry
policy with its budget, the circuit breaker, the concurrency cap and the per-attempt
timeout. The runner only sees an async callable.

>>> t = resolve_target(provider=None, base_url="http://127.0.0.1:8000/v1", endpoint=None,
...                    api_key_env=None, environ={})
>>> t.base_url, t.default_url, t.api_key is None
('http://127.0.0.1:8000', '/v1/chat/completions', True)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

from headway import events
from headway._clock import Clock, resolve_clock
from headway._record import Record
from headway._secrets import Secret, looks_like_key, redact_url
from headway.batch.jobs import DEFAULT_URL, BatchRequest
from headway.batch.runner import Response, Sender, note_rate, note_retry, note_wait
from headway.errors import CircuitBreakerOpenError, ConfigurationError, RateLimitError
from headway.events import Event
from headway.http.providers import PROVIDERS as _HTTP_PROVIDERS
from headway.http.status import error_for_status

__all__ = [
    "PROVIDERS",
    "error_in_body",
    "ProviderInfo",
    "SenderSettings",
    "Target",
    "open_sender",
    "resolve_target",
]

AuthType = Literal["bearer", "x-api-key", "none"]


class ProviderInfo(Record):
    """Where a known provider lives and how it wants its key."""

    __slots__ = _fields = ("base_url", "key_env", "auth", "default_url", "headers")

    def __init__(
        self,
        base_url: str,
        key_env: str | None,
        auth: AuthType = "bearer",
        default_url: str = DEFAULT_URL,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url
        self.key_env = key_env
        self.auth: AuthType = auth
        self.default_url = default_url
        self.headers: Mapping[str, str] = {} if headers is None else headers


def _from_http_spec(spec: Any) -> ProviderInfo:
    """A batch view of a :mod:`headway.http.providers` spec: base URL before ``/v1``."""
    base = spec.base_url.rstrip("/")
    prefix = ""
    if urlsplit(base).path.endswith("/v1"):
        base, prefix = base[: -len("/v1")], "/v1"
    name = next((n for n in ("chat", "messages") if n in spec.endpoints), None)
    if name is None:
        name = next(iter(spec.endpoints))
    return ProviderInfo(
        base,
        spec.api_key_env,
        spec.auth_type,
        f"{prefix}/{spec.endpoints[name].lstrip('/')}",
        dict(spec.default_headers),
    )


#: Providers ``--provider`` knows (those of :mod:`headway.http.providers` with a fixed base
#: URL). Base URLs stop before ``/v1`` so that OpenAI Batch lines
#: (``"url": "/v1/chat/completions"``) join as they are.
PROVIDERS: dict[str, ProviderInfo] = {
    name: _from_http_spec(spec)
    for name, spec in _HTTP_PROVIDERS.items()
    if spec.base_url is not None
}


class Target(Record):
    """Where requests go: base URL, key, auth style, extra headers, path for bare bodies.

    ``v1_paths``: whether the server's paths start with ``/v1``. When they do not (as
    Perplexity's ``/chat/completions``), a line's ``"url": "/v1/..."`` (the OpenAI Batch
    format) is sent without the ``/v1``.
    """

    __slots__ = _fields = ("base_url", "api_key", "auth", "headers", "default_url", "v1_paths")

    def __init__(
        self,
        base_url: str,
        api_key: Secret | None = None,
        auth: AuthType = "bearer",
        headers: dict[str, str] | None = None,
        default_url: str = DEFAULT_URL,
        v1_paths: bool = True,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.auth: AuthType = auth
        self.headers: dict[str, str] = {} if headers is None else headers
        self.default_url = default_url
        self.v1_paths = v1_paths

    def key(self) -> str | None:
        """The API key itself, or None (the attribute keeps it masked in reprs).

        >>> t = Target("http://x", Secret("sk-123456789"))
        >>> t.key(), "sk-1234" in repr(t)
        ('sk-123456789', False)
        """
        return None if self.api_key is None else self.api_key.get_secret_value()

    def path(self, url: str) -> str:
        """The path to send a line's ``url`` to.

        >>> Target("https://api.perplexity.ai", v1_paths=False).path("/v1/chat/completions")
        '/chat/completions'
        >>> Target("https://api.openai.com").path("/v1/chat/completions")
        '/v1/chat/completions'
        """
        if not self.v1_paths and url.startswith("/v1/"):
            return url[3:]
        return url


def _strip_v1(base_url: str) -> str:
    base = base_url.rstrip("/")
    if urlsplit(base).path.endswith("/v1"):
        base = base[: -len("/v1")]
    return base


def resolve_target(
    *,
    provider: str | None,
    base_url: str | None,
    endpoint: str | None,
    api_key_env: str | None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Work out the target from ``run``'s flags; :class:`ConfigurationError` if impossible.

    A provider's key variable must be set (except for keyless ones such as ollama); with
    ``--base-url`` alone no key is sent unless ``--api-key-env`` names one. A named
    variable that is not set is an error, never an empty key.
    """
    env = os.environ if environ is None else environ
    if api_key_env is not None and looks_like_key(api_key_env):
        raise ConfigurationError(
            "--api-key-env (HEADWAY_API_KEY_ENV) takes the NAME of the environment variable "
            "holding the key, like OPENAI_API_KEY; the value given looks like a key, not a "
            "variable name (not shown): export it in a variable and name that"
        )
    info: ProviderInfo | None = None
    if provider is not None:
        try:
            info = PROVIDERS[provider]
        except KeyError:
            raise ConfigurationError(
                f"unknown provider {provider!r} (known: {', '.join(sorted(PROVIDERS))})"
            ) from None
    if base_url is None and info is None:
        raise ConfigurationError(
            "say where to send the requests: --provider NAME or --base-url URL"
        )
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"--base-url must be an http(s) URL, got {base_url!r}")
    base = _strip_v1(base_url if base_url is not None else info.base_url)  # type: ignore[union-attr]
    key_env = api_key_env if api_key_env is not None else (info.key_env if info else None)
    key: Secret | None = None
    if key_env:
        value = env.get(key_env)
        if not value:
            state = "is empty" if value is not None else "is not set"
            raise ConfigurationError(
                f"the API key variable {key_env} {state}; export it "
                "(or name another with --api-key-env)"
            )
        key = Secret(value)
    auth: AuthType = info.auth if info is not None else "bearer"
    if key is None:
        auth = "none"
    default_url = endpoint or (info.default_url if info is not None else DEFAULT_URL)
    if not default_url.startswith("/"):
        default_url = "/" + default_url
    headers = dict(info.headers) if info is not None else {}
    # A named provider whose own paths lack /v1 (Perplexity): OpenAI Batch lines lose it.
    v1_paths = base_url is not None or info is None or info.default_url.startswith("/v1/")
    return Target(base, key, auth, headers, default_url, v1_paths)


class SenderSettings(Record):
    """Everything :func:`open_sender` needs (``run``'s flags, resolved)."""

    __slots__ = _fields = (
        "target",
        "rpm",
        "tpm",
        "concurrency",
        "max_attempts",
        "timeout",
        "base_delay",
        "max_delay",
        "burst",
        "breaker_recovery",
        "max_breaker_wait",
        "redis_url",
        "limit_name",
    )

    def __init__(
        self,
        target: Target,
        rpm: float | None = None,
        tpm: float | None = None,
        concurrency: int = 64,
        max_attempts: int = 6,
        timeout: float = 120.0,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        burst: float | None = None,
        breaker_recovery: float = 5.0,
        max_breaker_wait: float = 30.0,
        redis_url: str | None = None,
        limit_name: str | None = None,
    ) -> None:
        self.target = target
        self.rpm = rpm
        self.tpm = tpm
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.burst = burst
        self.breaker_recovery = breaker_recovery
        self.max_breaker_wait = max_breaker_wait
        self.redis_url = redis_url
        self.limit_name = limit_name

    @property
    def shared_name(self) -> str:
        """The name workers share limits and breaker state under (default: the base URL)."""
        return self.limit_name or f"batch:{self.target.base_url}"


#: Where the rate starts, per minute, without --rpm: far above what one process sends
#: (100,000 calls a second), so that only --concurrency and the server bound the run.
UNPACED_RPM = 6_000_000.0


def _on_event(event: Event) -> None:
    if isinstance(event, events.RetryScheduled):
        # the exception names the cause an outage message shows
        note_retry(event.exception, rate_limited=isinstance(event.exception, RateLimitError))
        note_wait(event.delay)


def _on_rate(limiter: Any) -> Any:
    def listener(event: Event) -> None:
        if getattr(event, "unit", None) == "requests":
            new = getattr(event, "new", 0.0)
            who = getattr(event, "limited_by", "server")
            note_rate(new, who, limiter.learned_limits())

    return listener


def build_policy(
    settings: SenderSettings, *, clock: Clock | None = None, backend: Any = None
) -> Any:
    """The :class:`~headway.resilience.policy.Policy` for ``settings``.

    With a shared ``backend`` (a :class:`~headway.backends.RedisBackend`) the limits and
    the breaker's state are shared by every worker using the same name.
    """
    from headway.limits.adaptive import AdaptiveLimiter
    from headway.resilience.breaker import CircuitBreaker
    from headway.resilience.policy import Policy
    from headway.resilience.retry.settings import RetrySettings

    # The server's real limit, learned; --rpm/--tpm are ceilings. The burst: a second's
    # worth, or --burst requests.
    burst_seconds = 1.0
    if settings.burst is not None and settings.rpm is not None:
        burst_seconds = settings.burst * 60.0 / settings.rpm
    # Until the server speaks (limit headers or a rate 429), run at the user's word: at
    # --rpm, or unpaced without it (concurrency bounds the calls in flight). A server
    # that advertises a limit sets it with its first answer; one that only answers 429
    # is probed downward from there.
    start_rpm = settings.rpm if settings.rpm is not None else UNPACED_RPM
    limiter: Any
    if backend is not None:
        from headway.backends.redis.adaptive import SharedAdaptiveLimiter

        limiter = SharedAdaptiveLimiter(
            backend,
            settings.shared_name,
            rpm=settings.rpm,
            tpm=settings.tpm,
            start_rpm=start_rpm,
            burst_seconds=burst_seconds,
            clock=clock,
        )
    else:
        limiter = AdaptiveLimiter(
            rpm=settings.rpm,
            tpm=settings.tpm,
            start_rpm=start_rpm,
            burst_seconds=burst_seconds,
            clock=clock,
            name="batch",
        )
    limiter.listeners = (_on_rate(limiter),)
    # The flags were checked: a plain record, no pydantic model to import and build.
    retry = RetrySettings(
        max_retries=settings.max_attempts - 1,
        base_delay=settings.base_delay,
        max_delay=max(settings.max_delay, settings.base_delay),
        clock=clock,
        name="batch",
        listeners=(_on_event,),
    )
    # A breaker by failure ratio: when most calls fail, stop calling for a while (the
    # sender waits for it to close instead of failing the rest of the batch).
    breaker = CircuitBreaker(
        failure_threshold=1_000_000,
        recovery_time=settings.breaker_recovery,
        failure_rate_threshold=0.5,
        window=30.0,
        minimum_calls=max(20, settings.concurrency),
        clock=clock,
        name="batch" if backend is None else settings.shared_name,
        backend=backend,
    )
    return Policy(
        retry=retry,
        limiter=limiter,
        breaker=breaker,
        concurrency=settings.concurrency,
        attempt_timeout=settings.timeout,
        clock=clock,
        name="batch",
    )


_ERROR_TYPES = {
    "rate_limit": 429,
    "overloaded": 529,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "invalid_request": 400,
    "server": 500,
    "api_error": 500,
    "timeout": 504,
}


def error_in_body(body: Any) -> int | None:
    """The status a 2xx body's error object stands for, or ``None`` for a real answer.

    Some gateways answer 200 with ``{"error": {...}}``; that is the error it carries:
    its ``code``/``status`` when it is an HTTP status, else one read from its ``type``
    (``rate_limit_error`` -> 429...), else 502 (an upstream failure).

    >>> error_in_body({"error": {"code": 503, "message": "upstream down"}})
    503
    >>> error_in_body({"type": "error", "error": {"type": "overloaded_error"}})
    529
    >>> error_in_body({"error": {"message": "boom"}}), error_in_body({"id": "x", "error": None})
    (502, None)
    """
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, str) and error:
        return 502
    if not isinstance(error, dict) or not error:
        return None
    for key in ("status", "code", "status_code"):
        value = error.get(key)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and 400 <= value <= 599:
            return value
    kind = str(error.get("type") or error.get("code") or "").lower()
    for fragment, status in _ERROR_TYPES.items():
        if fragment in kind:
            return status
    return 502


class _ClientSender:
    __slots__ = ("client", "clock", "max_breaker_wait", "rpm", "target", "tokens")

    def __init__(
        self,
        client: Any,
        clock: Clock,
        max_breaker_wait: float,
        *,
        count_tokens: bool,
        target: Target | None = None,
        rpm: float | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.max_breaker_wait = max_breaker_wait
        self.target = target
        # Without a tokens-per-minute limit there is nothing to reserve: skip the estimate.
        self.tokens: float | None = None if count_tokens else 0.0
        # The user's ceiling, told to the runner with the first call (the rate starts
        # there, so no change of rate announces it).
        self.rpm = rpm

    async def __call__(self, request: BatchRequest) -> Response:
        if self.rpm is not None:
            note_rate(self.rpm, "user", {})
            self.rpm = None
        waited = 0.0
        url = request.url if self.target is None else self.target.path(request.url)
        while True:
            try:
                # parse=True: a garbled 2xx body fails the attempt and is retried
                resp = await self.client.request_raw(
                    request.method, url, json=request.body, tokens=self.tokens, parse=True
                )
            except CircuitBreakerOpenError as exc:
                # Nothing was sent: wait for the breaker instead of failing the request.
                if waited >= self.max_breaker_wait:
                    raise
                delay = max(exc.retry_after, 0.25)
                waited += delay
                await self.clock.sleep(delay)
                continue
            body = resp.parsed()
            if 200 <= resp.status < 300:
                carried = error_in_body(body)
                if carried is not None:
                    raise error_for_status(carried, resp.headers, body, request.method, url)
            return Response(resp.status, body, resp.headers)


@asynccontextmanager
async def open_sender(
    settings: SenderSettings, *, clock: Clock | None = None
) -> AsyncIterator[Sender]:
    """Open a pooled client with the batch's Policy; yield a :class:`Sender` using it.

    With ``settings.redis_url`` the limits and breaker state live in Redis, shared by
    every worker of the batch (``headway run --redis-url URL --shard K/N``).
    """
    async with contextlib.AsyncExitStack() as stack:
        backend = None
        if settings.redis_url is not None:
            backend = await stack.enter_async_context(_open_backend(settings.redis_url, clock))
        async with _open_client(settings, clock, backend) as sender:
            yield sender


_REACH_REDIS = 5.0  # seconds a slow Redis may take to answer the start-up check


@asynccontextmanager
async def _open_backend(url: str, clock: Clock | None) -> AsyncIterator[Any]:
    try:
        from headway.backends.redis import RedisBackend
    except ImportError as exc:  # pragma: no cover - the redis extra is missing
        raise ConfigurationError(
            f"--redis-url needs the redis extra: pip install 'headway[redis]' ({exc})"
        ) from None
    backend = RedisBackend(url, clock=clock)
    async with backend:
        if not await backend.ping(within=_REACH_REDIS):
            raise ConfigurationError(
                f"cannot reach Redis at {redact_url(url)}; check --redis-url and that the "
                "server is up"
            )
        yield backend


@asynccontextmanager
async def _open_client(
    settings: SenderSettings, clock: Clock | None, backend: Any
) -> AsyncIterator[Sender]:
    from headway.http.client import AsyncAPIClient

    target = settings.target
    client = AsyncAPIClient(
        target.base_url,
        timeout=settings.timeout,
        headers=target.headers,
        auth=target.key(),
        auth_type=target.auth,
        policy=build_policy(settings, clock=clock, backend=backend),
        max_connections=settings.concurrency,
        name="headway-batch",
    )
    async with client:
        yield _ClientSender(
            client,
            resolve_clock(clock),
            settings.max_breaker_wait,
            count_tokens=settings.tpm is not None,
            target=target,
            rpm=settings.rpm,
        )
