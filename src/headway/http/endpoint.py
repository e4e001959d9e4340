"""Endpoint: one configured API endpoint, called through a shared pooled client and policy.

Example::

    config = EndpointConfig(name="chat", provider="openai",
                            base_url="https://api.openai.com/v1", endpoint="chat/completions",
                            api_key_env="OPENAI_API_KEY", rpm=500, tpm=200_000,
                            defaults={"model": "gpt-4o-mini"})
    async with Endpoint(config) as ep:
        reply = await ep.call({"messages": [{"role": "user", "content": "Hi"}]})
        async for chunk in ep.stream({"messages": [...]}):
            ...
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel

from headway._clock import Clock
from headway._resources import ClosesOnExit
from headway._resources import track as _track
from headway._resources import untrack as _untrack
from headway._secrets import redact_url
from headway.http.client import AsyncAPIClient, PolicyLike, _returns_coroutine
from headway.http.config import EndpointConfig
from headway.http.streaming import EventStream, StreamMode
from headway.http.transports.base import Response, Transport

if TYPE_CHECKING:
    from headway.resilience.policy import Policy

__all__ = ["Endpoint", "default_policy"]

logger = logging.getLogger("headway")


def default_policy(config: EndpointConfig, *, clock: Clock | None = None) -> Policy:
    """The :class:`headway.Policy` an endpoint gets when none is passed.

    Retries ``config.max_retries`` times (SDK-style: 408/409/429/5xx, connection errors and
    timeouts; a 429's Retry-After pauses every caller), paces calls at the server's real
    limit (an :class:`~headway.limits.AdaptiveLimiter`: the limit the server advertises,
    or probed when it advertises none) with ``rpm`` and ``tpm`` as ceilings, caps
    concurrency (``concurrency``) and bounds each attempt by ``config.attempt_timeout``
    (by default 900 s), so a server that trickles its body a byte at a time cannot hold a
    call forever (``timeout`` alone is per read).
    """
    from headway.http.providers import PROVIDERS
    from headway.limits import AdaptiveLimiter
    from headway.resilience.policy import Policy
    from headway.resilience.retry import RetryPolicy

    spec = PROVIDERS.get(config.provider)
    limiter = AdaptiveLimiter(
        rpm=config.rpm,
        tpm=config.tpm,
        burst_seconds=spec.burst_seconds if spec is not None else 1.0,
        clock=clock,
        name=config.name,
    )
    return Policy(
        retry=RetryPolicy(max_retries=config.max_retries, clock=clock),
        limiter=limiter,
        concurrency=config.concurrency,
        attempt_timeout=config.attempt_timeout,
        clock=clock,
        name=config.name,
    )


def _payload(request: Mapping[str, Any] | BaseModel | None, defaults: dict[str, Any]) -> Any:
    if type(request) is dict:  # the common case, before the costlier isinstance checks
        body: dict[str, Any] = dict(request)
    elif request is None:
        body = {}
    elif isinstance(request, BaseModel):
        body = request.model_dump(exclude_none=True)
    else:
        body = dict(request)
    if defaults:
        body = {**defaults, **body}
    return body


class Endpoint(ClosesOnExit):
    """Call one endpoint as its :class:`EndpointConfig` says.

    Args:
        config: the endpoint's configuration (or a dict of its fields).
        policy: the resilience policy; by default :func:`default_policy` builds one from
            the config (retries, rpm/tpm limits, concurrency). It is shared by every call
            and kept across ``async with`` blocks, so limits hold over the endpoint's life.
        transport: a transport to use (never closed by the endpoint).
        clock: the clock of the default policy.

    ``endpoint.client`` is ``None`` until ``async with`` opens it and again after it
    closes; inside, one pooled client serves every concurrent call. Outside a context,
    each :meth:`call` opens a client, uses it and closes it.
    """

    def __init__(
        self,
        config: EndpointConfig | Mapping[str, Any],
        *,
        policy: PolicyLike | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(config, EndpointConfig):
            config = EndpointConfig.model_validate(dict(config))
        self.config = config
        self.policy = policy if policy is not None else default_policy(config, clock=clock)
        self._transport = transport
        self.client: AsyncAPIClient | None = None
        self._client_transport: Transport | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def _new_client(self) -> tuple[AsyncAPIClient, Transport | None]:
        cfg = self.config
        owned: Transport | None = None
        transport: Transport | str = self._transport or cfg.transport
        headers = cfg.headers()
        if self._transport is None and cfg.transport_type == "sdk":
            from headway.http.transports.openai_sdk import OpenAISDKTransport

            owned = OpenAISDKTransport(
                api_key=cfg.resolve_api_key(),
                base_url=cfg.base_url,
                timeout=cfg.timeout,
                default_headers=cfg.default_headers,
            )
            transport = owned
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        client = AsyncAPIClient(
            cfg.base_url,
            timeout=cfg.timeout,
            headers=headers,
            auth_type="none",
            secret_headers=cfg.secret_header_names(),
            transport=transport,  # type: ignore[arg-type]
            policy=self.policy,
            max_connections=cfg.concurrency,
            token_estimator=cfg.token_estimator,
            name=cfg.name,
        )
        return client, owned

    async def __aenter__(self) -> Self:
        if self.client is None:
            client, owned = self._new_client()
            try:
                await client.__aenter__()
            except BaseException:
                if owned is not None:
                    await owned.aclose()
                raise
            self.client, self._client_transport = client, owned
            _track(self)
        return self

    async def aclose(self) -> None:
        """Close the pooled client. Idempotent; never raises for a failed close (logs it)."""
        client, owned = self.client, self._client_transport
        self.client = None
        self._client_transport = None
        try:
            if client is not None:
                await client.aclose()
            if owned is not None:
                await owned.aclose()
        except Exception:
            logger.warning("closing endpoint %r failed", self.config.name, exc_info=True)
        finally:
            _untrack(self)

    # -- calls --------------------------------------------------------------------------
    @_returns_coroutine
    def call(
        self,
        request: Mapping[str, Any] | BaseModel | None = None,
        *,
        endpoint_params: dict[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        tokens: float | None = None,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Send ``request`` (merged over ``config.defaults``); return the parsed response.

        ``await ep.call(...)``. For a ``GET`` endpoint the payload goes in the query string.
        """
        return self._call(request, endpoint_params, params, headers, tokens, timeout, True)

    @_returns_coroutine
    def call_raw(
        self,
        request: Mapping[str, Any] | BaseModel | None = None,
        *,
        endpoint_params: dict[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        tokens: float | None = None,
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """As :meth:`call`, but return the whole :class:`~headway.http.Response`.

        For the status, the headers (``x-request-id``, rate-limit headers) or the raw
        body; the body is parsed inside the attempt (a garbled body is retried) and
        cached for ``response.json()`` / ``response.parsed()``.
        """
        return self._call(request, endpoint_params, params, headers, tokens, timeout, False)

    def _call(
        self,
        request: Mapping[str, Any] | BaseModel | None,
        endpoint_params: dict[str, str] | None,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        tokens: float | None,
        timeout: float | None,
        body_only: bool,
    ) -> Coroutine[Any, Any, Any]:
        cfg = self.config
        body = _payload(request, cfg.defaults)
        path = cfg.path(endpoint_params)
        json: Any = body
        if cfg.method == "GET":
            params = {**body, **(params or {})}
            json = None
        client = self.client
        if client is not None:  # the pooled client's coroutine itself: no layer between
            req = client.build_request(
                cfg.method, path, params, json, None, headers, timeout, tokens, True
            )
            return client.send(req, parsed=body_only)
        return self._call_once(path, params, json, headers, timeout, tokens, body_only)

    async def _call_once(
        self,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        tokens: float | None,
        body_only: bool,
    ) -> Any:
        # Outside ``async with``: a client for this call only, closed before returning.
        client, owned = self._new_client()
        try:
            async with client:
                request = client.build_request(
                    self.config.method,
                    path,
                    params=params,
                    json=json,
                    headers=headers,
                    timeout=timeout,
                    tokens=tokens,
                    parse=True,
                )
                return await client.send(request, parsed=body_only)
        finally:
            if owned is not None:
                await owned.aclose()

    def stream(
        self,
        request: Mapping[str, Any] | BaseModel | None = None,
        *,
        endpoint_params: dict[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        tokens: float | None = None,
        timeout: float | None = None,
    ) -> EventStream[Any]:
        """Stream ``request``; yield each parsed chunk (SSE data or NDJSON lines).

        Sets ``"stream": true`` in the payload unless it is set. An SSE stream ends at
        ``[DONE]`` (OpenAI) or after the ``message_stop`` event (Anthropic); a stream the
        server closes before either, or cuts in the middle of an event, raises
        :class:`~headway.errors.StreamError` (``config.stream_requires_end=False`` accepts
        a server that just closes). An error event raises
        :class:`~headway.errors.StreamError`. A ``200 application/json`` answer (a gateway
        that does not stream) is yielded as the one item. Use
        ``async with ep.stream(req) as chunks`` when you may stop early, so the connection
        is released at once.
        """
        return EventStream(self._stream(request, endpoint_params, params, headers, tokens, timeout))

    async def _stream(
        self,
        request: Mapping[str, Any] | BaseModel | None,
        endpoint_params: dict[str, str] | None,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        tokens: float | None,
        timeout: float | None,
    ) -> AsyncIterator[Any]:
        cfg = self.config
        body = _payload(request, cfg.defaults)
        body.setdefault("stream", True)
        path = cfg.path(endpoint_params)
        mode: StreamMode = "ndjson" if cfg.stream_format == "ndjson" else "json"
        client = self.client
        owned: Transport | None = None
        temp = client is None
        if client is None:
            client, owned = self._new_client()
            await client.__aenter__()
        try:
            async with client.stream(
                cfg.method,
                path,
                mode=mode,
                params=params,
                json=body,
                headers=headers,
                timeout=timeout,
                tokens=tokens,
                require_end=cfg.stream_format == "sse" and cfg.stream_requires_end,
            ) as items:
                async for item in items:
                    yield item
        finally:
            if temp:
                await client.aclose()
            if owned is not None:
                await owned.aclose()

    def __repr__(self) -> str:
        state = "open" if self.client is not None else "closed"
        url = redact_url(f"{self.config.base_url}/{self.config.endpoint}")
        return f"Endpoint(name={self.config.name!r}, url={url!r}, {state})"
