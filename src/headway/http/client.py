"""AsyncAPIClient: a small, fast HTTP API client with typed errors and optional resilience.

>>> import asyncio
>>> async def main() -> None:
...     async with AsyncAPIClient("https://api.example.com", timeout=5.0) as client:
...         print(client)
>>> asyncio.run(main())
AsyncAPIClient(base_url='https://api.example.com', timeout=5.0, headers={}, policy=None)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, TypeVar

from headway._resources import ClosesOnExit
from headway._resources import track as _track
from headway._resources import untrack as _untrack
from headway._secrets import mask_headers, redact_url
from headway.errors import ConfigurationError
from headway.http._attempt import _Attempt, _StreamAttempt, open_checked
from headway.http.headers import AuthType, HeaderFactory, merge_headers
from headway.http.status import error_for_status
from headway.http.tokens import TokenMethod, estimate_tokens, usage_tokens
from headway.http.transports.aiohttp import AiohttpTransport
from headway.http.transports.base import Request, Response, StreamResponse, Transport

if TYPE_CHECKING:
    import aiohttp
    from pydantic import SecretStr

    from headway.http.streaming import EventStream, StreamMode
    from headway.resilience.policy import Lease

__all__ = ["AsyncAPIClient", "EventStream", "PolicyLike", "StreamMode"]


def __getattr__(name: str) -> Any:
    # The streaming module is imported when a stream is opened (not by ``headway run``).
    if name in ("EventStream", "StreamMode"):
        from headway.http import streaming

        value = getattr(streaming, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


T = TypeVar("T")


class PolicyLike(Protocol):
    """What the client needs of a :class:`headway.Policy`."""

    async def run(
        self,
        attempt_fn: Callable[[Any], Awaitable[T]],
        /,
        *,
        requests: float = 1.0,
        tokens: float = 0.0,
    ) -> T:
        """Run ``attempt_fn(ctx)`` under retry, breaker, concurrency and limits."""
        ...

    async def open(
        self,
        attempt_fn: Callable[[Any], Awaitable[T]],
        /,
        *,
        requests: float = 1.0,
        tokens: float = 0.0,
    ) -> Lease[T]:
        """Like :meth:`run`; the successful attempt's slot stays in the returned lease."""
        ...


C = TypeVar("C", bound=Callable[..., Any])


def _returns_coroutine(func: C) -> C:
    """Mark a plain function that returns a coroutine as a coroutine function.

    ``await client.get(...)`` works either way; the mark keeps
    :func:`unittest.mock.create_autospec` (and ``inspect``) treating it as async. Python
    3.11 has no public mark: there the function becomes an ``async def`` awaiting it.
    """
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:  # pragma: no cover - Python >= 3.12
        return mark(func)  # type: ignore[no-any-return]

    @functools.wraps(func)
    async def call(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return call  # type: ignore[return-value]


_CLOSED_MSG = (
    "{name} is closed: it cannot send requests after aclose() or leaving 'async with'; "
    "create a new client"
)


class AsyncAPIClient(ClosesOnExit):
    """An HTTP API client on one pooled connection session.

    Args:
        base_url: prefix of every relative path (``"https://api.openai.com/v1"``).
        timeout: seconds allowed to connect and between reads (not for the whole
            response, so long streams survive); ``None`` for no limit.
        headers: sent with every request.
        auth: an API key (``str`` or :class:`~pydantic.SecretStr`), sent as
            ``auth_type`` says; never shown in ``repr``, logs or errors.
        auth_type: ``"bearer"`` (``Authorization: Bearer ...``), ``"x-api-key"`` or
            ``"none"``.
        auth_header: send the key as is in this header instead (``"X-Api-Token"``).
        secret_headers: names of further headers that carry credentials: masked in
            reprs and scrubbed from errors, like ``Authorization`` and any header whose
            name contains key, token, secret or auth.
        transport: a :class:`~headway.http.Transport`, or ``"aiohttp"`` (default) /
            ``"httpx"``. A transport passed in is never closed by the client.
        policy: a :class:`headway.Policy`; with it every call is retried, limited and
            guarded by its breaker; without it (``None``) each call is one attempt and
            errors are raised as they come.
        session: an :class:`aiohttp.ClientSession` to use (never closed by the client).
        max_connections: the connection pool's size; by default the policy's
            concurrency limit, else unlimited.
        token_estimator: how to estimate a JSON body's tokens for the policy's
            tokens-per-minute limit (``"heuristic"``, ``"tiktoken"``, ``"auto"``), or
            ``None`` to reserve none unless a call passes ``tokens=``.
        name: a name for logs and the leak guard.

    Use it as an async context manager: entering opens one pooled session that serves
    every call, leaving closes it (also on error). Without ``async with`` each call opens
    and closes a temporary session (correct, but slower).

    Example::

        async with AsyncAPIClient("https://api.example.com", auth=key) as client:
            data = await client.get("/items", params={"limit": 10})
            created = await client.post("/items", json={"name": "x"})
    """

    def __init__(
        self,
        base_url: str = "",
        timeout: float | None = 10.0,
        headers: Mapping[str, str] | None = None,
        *,
        auth: str | SecretStr | None = None,
        auth_type: AuthType = "bearer",
        auth_header: str | None = None,
        secret_headers: Collection[str] = (),
        transport: Transport | Literal["aiohttp", "httpx"] | None = None,
        policy: PolicyLike | None = None,
        session: aiohttp.ClientSession | None = None,
        max_connections: int | None = None,
        token_estimator: TokenMethod | None = "heuristic",
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers: dict[str, str] = dict(headers or {})
        self.policy = policy
        self.name = name
        self.token_estimator = token_estimator
        if max_connections is None and policy is not None:
            max_connections = _policy_concurrency(policy)
        self.max_connections = max_connections
        self._send_headers = dict(self.headers)
        names = {header.lower() for header in secret_headers}
        if auth is not None or auth_type == "none":
            self._send_headers = merge_headers(
                self._send_headers,
                HeaderFactory.get_header(
                    auth_type=auth_type, content_type=None, api_key=auth, auth_header=auth_header
                ),
            )
            names |= HeaderFactory.auth_header_names(auth_type, auth_header)
        self._secret_names = frozenset(names)
        if "@" in self.base_url.partition("://")[2].partition("/")[0] and any(
            k.lower() == "authorization" for k in self._send_headers
        ):
            raise ConfigurationError(
                f"base_url {redact_url(self.base_url)!r} carries user info (user:password@), "
                "which is sent as an Authorization header, and an Authorization header is set "
                "too: remove one of them"
            )
        self._kind: str = "aiohttp"
        self._session = session
        self._transport: Transport | None = None
        self._owns_transport = True
        if isinstance(transport, str):
            if transport not in ("aiohttp", "httpx"):
                raise ValueError(f"unknown transport {transport!r}: use 'aiohttp' or 'httpx'")
            self._kind = transport
        elif transport is not None:
            self._transport = transport
            self._owns_transport = False
        if session is not None and self._transport is None:
            self._transport = self._make_transport()
        self._closed = False
        self._entered = False

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called (or the ``async with`` block was left)."""
        return self._closed

    def _make_transport(self) -> Transport:
        if self._kind == "httpx":
            from headway.http.transports.httpx import HttpxTransport

            return HttpxTransport(max_connections=self.max_connections, timeout=self.timeout)
        return AiohttpTransport(
            session=self._session, max_connections=self.max_connections, timeout=self.timeout
        )

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeError(_CLOSED_MSG.format(name=type(self).__name__))
        if self._transport is None:
            self._transport = self._make_transport()
        self._entered = True
        _track(self)
        return self

    async def aclose(self) -> None:
        """Close the pooled session (if the client opened it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        transport = self._transport
        self._transport = None
        try:
            if transport is not None and self._owns_transport:
                await transport.aclose()
        finally:
            _untrack(self)

    # -- requests -----------------------------------------------------------------------
    def _url(self, path: str) -> str:
        if not path:
            return self.base_url
        if path.startswith(("http://", "https://")):
            return path
        if path[0] == "/":
            return self.base_url + path
        return f"{self.base_url}/{path}"

    def _estimate(self, json: Any) -> float:
        estimator = self.token_estimator
        if estimator is not None and (type(json) is dict or isinstance(json, Mapping)):
            return estimate_tokens(json, method=estimator)
        return 0.0

    def build_request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        tokens: float | None = None,
        parse: bool = False,
        stream: bool = False,
    ) -> Request:
        """The :class:`~headway.http.Request` a call with these arguments sends.

        ``path`` is joined to ``base_url``; ``headers`` are merged over the client's
        (case-insensitively: a per-call ``AUTHORIZATION`` replaces the default
        ``authorization``); ``tokens`` is estimated from ``json`` when the client has
        a policy and none is given. Send it with :meth:`send`.

        >>> client = AsyncAPIClient("https://api.example.com/v1", auth="sk-secret")
        >>> client.build_request("POST", "/chat", json={"model": "m"})
        Request('POST', 'https://api.example.com/v1/chat', \
headers={'Authorization': 'Bearer ***'})
        """
        hdrs = self._send_headers if headers is None else merge_headers(self._send_headers, headers)
        if tokens is None:
            tokens = 0.0 if self.policy is None else self._estimate(json)
        return Request(
            method,
            self._url(path),
            hdrs,
            params,
            json,
            data,
            timeout,
            stream,
            tokens,
            parse,
            self._secret_names,
        )

    async def send(self, request: Request, *, parsed: bool = False) -> Any:
        """Send a :class:`~headway.http.Request` (from :meth:`build_request`).

        Returns the :class:`~headway.http.Response`, or with ``parsed`` its parsed body
        (as :meth:`request`). With a policy the request is retried, limited and guarded;
        a status >= 400 raises the matching :mod:`headway.errors` class.
        """
        # The hot path of every call. Every coroutine layer between the caller and
        # aiohttp sits on each of the request's suspensions, so the public methods are
        # plain functions returning this coroutine, and the pooled case is inlined here.
        transport = self._transport
        if transport is None:
            return await self._send_once(request, parsed)
        policy = self.policy
        if policy is None:
            resp = await transport.send(request)
            if resp.status >= 400:
                raise error_for_status(
                    resp.status, resp.headers, resp.content, request.method, request.url
                )
        else:
            attempt = _Attempt(transport, request)
            resp = await policy.run(attempt, requests=1.0, tokens=request.tokens)
        return resp.parsed() if parsed else resp

    async def _send_once(self, request: Request, parsed: bool) -> Any:
        # Outside ``async with``: a transport for this call only.
        if self._closed:
            raise RuntimeError(_CLOSED_MSG.format(name=type(self).__name__))
        transport = self._make_transport()
        try:
            policy = self.policy
            if policy is None:
                resp = await transport.send(request)
                if resp.status >= 400:
                    raise error_for_status(
                        resp.status, resp.headers, resp.content, request.method, request.url
                    )
            else:
                attempt = _Attempt(transport, request)
                resp = await policy.run(attempt, requests=1.0, tokens=request.tokens)
        finally:
            await transport.aclose()
        return resp.parsed() if parsed else resp

    @_returns_coroutine
    def request_raw(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        tokens: float | None = None,
        parse: bool = False,
    ) -> Coroutine[Any, Any, Response]:
        """Send a request; return the whole :class:`~headway.http.Response`.

        A status >= 400 raises the matching :mod:`headway.errors` class (see
        :mod:`headway.http.status`).

        Args:
            method: ``"GET"``, ``"POST"``, ...
            path: appended to ``base_url`` (or an absolute URL).
            params: query parameters.
            json: a JSON body.
            data: a raw body (bytes/str) or form fields.
            headers: extra headers for this call (replacing defaults case-insensitively).
            timeout: this call's connect/read timeout, instead of the client's.
            tokens: tokens to reserve on the policy's limiter; by default estimated
                from ``json``.
            parse: parse the body inside the attempt, so that with a policy a garbled
                2xx body (:class:`~headway.errors.InvalidResponseError`) is retried; the
                parsed JSON is cached for ``response.parsed()`` / ``response.json()``.
        """
        request = self.build_request(
            method, path, params, json, data, headers, timeout, tokens, parse
        )
        return self.send(request)

    @_returns_coroutine
    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        tokens: float | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Send a request; return its parsed body (``await client.request(...)``).

        Returns the parsed JSON for a JSON content type, the text for any other, and
        ``None`` for 204 No Content or an empty body. Arguments as :meth:`request_raw`.

        Raises:
            APIClientError: and subclasses, as :mod:`headway.http.status` maps statuses.
            InvalidResponseError: the content type says JSON but the body is not.
            APIConnectionError: the server could not be reached.
            APITimeoutError: connecting or reading took longer than the timeout.
        """
        return self._parsed(method, path, params, json, data, headers, timeout, tokens)

    def _parsed(
        self, method: str, path: str, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        # request()'s coroutine, for the verbs too: one coroutine layer at most (3.11).
        kwargs["parse"] = True
        return self.send(self.build_request(method, path, *args, **kwargs), parsed=True)

    @_returns_coroutine
    def get(self, path: str, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """``request("GET", path, ...)``: ``await client.get("/x", params={"k": "v"})``."""
        return self._parsed("GET", path, **kwargs)

    @_returns_coroutine
    def post(self, path: str, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """``request("POST", path, ...)``."""
        return self._parsed("POST", path, **kwargs)

    @_returns_coroutine
    def put(self, path: str, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """``request("PUT", path, ...)``."""
        return self._parsed("PUT", path, **kwargs)

    @_returns_coroutine
    def patch(self, path: str, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """``request("PATCH", path, ...)``."""
        return self._parsed("PATCH", path, **kwargs)

    @_returns_coroutine
    def delete(self, path: str, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """``request("DELETE", path, ...)``."""
        return self._parsed("DELETE", path, **kwargs)

    # -- streaming ----------------------------------------------------------------------
    def stream(
        self,
        method: str,
        path: str,
        *,
        mode: StreamMode = "events",
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        tokens: float | None = None,
        require_end: bool = False,
    ) -> EventStream[Any]:
        """Stream a response.

        ``mode`` picks what is yielded:

        * ``"bytes"``: raw chunks as they arrive;
        * ``"lines"``: decoded lines (CR, LF or CRLF);
        * ``"events"``: :class:`~headway.http.ServerSentEvent` objects, ending at
          ``data: [DONE]``; an ``error`` event raises :class:`~headway.errors.StreamError`;
        * ``"json"``: each SSE event's data parsed as JSON (same ending and errors; a
          payload with an ``error`` member also raises);
        * ``"ndjson"``: one parsed JSON document per line (Ollama's native streaming).

        A body cut in the middle of an event or line raises
        :class:`~headway.errors.StreamError`; with ``require_end`` so does an SSE body
        that ends without ``data: [DONE]`` or a ``message_stop`` event. A
        ``200 application/json`` answer is delivered as one item (see
        :mod:`headway.http.streaming`).

        With a policy, opening the stream (up to the response headers) is retried,
        limited and guarded; once items flow, a broken stream raises
        :class:`~headway.errors.StreamError` and is not retried (it may have had effects).
        The stream holds one of the policy's concurrency slots from opening until it is
        closed (exhausted, broken, or left through ``async with`` / ``aclose()``).
        """
        request = self.build_request(
            method,
            path,
            params=params,
            json=json,
            data=data,
            headers=headers,
            timeout=timeout,
            tokens=tokens,
            stream=True,
        )
        from headway.http.streaming import EventStream

        return EventStream(self._stream(request, mode, require_end))

    async def _open_stream(
        self, transport: Transport, request: Request
    ) -> tuple[StreamResponse, Lease[StreamResponse] | None]:
        """Open the stream; return it and the policy's lease on it (or ``None``)."""
        policy = self.policy
        if policy is None:
            return await open_checked(transport, request, None, None), None
        attempt = _StreamAttempt(transport, request)
        lease = await policy.open(attempt, requests=1.0, tokens=request.tokens)
        return lease.value, lease

    async def _stream(
        self, request: Request, mode: StreamMode, require_end: bool
    ) -> AsyncIterator[Any]:
        from headway.http.streaming import iterate

        transport = self._transport
        temp: Transport | None = None
        if transport is None:
            if self._closed:
                raise RuntimeError(_CLOSED_MSG.format(name=type(self).__name__))
            transport = temp = self._make_transport()
        try:
            resp, lease = await self._open_stream(transport, request)
            reservation = None if lease is None else lease.reservation
            failure: BaseException | None = None
            try:
                used: int | None = None
                async for item in iterate(resp, mode, require_end=require_end):
                    if reservation is not None and mode in ("json", "ndjson"):
                        n = usage_tokens(item)
                        if n is not None:
                            used = n
                    yield item
                if used is not None and reservation is not None and reservation.tokens:
                    reservation.settle(used)
            except GeneratorExit:
                raise  # closed early by the caller: not a failure of the call
            except BaseException as exc:
                failure = exc
                raise
            finally:
                try:
                    await resp.aclose()
                finally:
                    if lease is not None:
                        await lease.aclose(failure)
        finally:
            if temp is not None:
                await temp.aclose()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base_url={redact_url(self.base_url)!r}, "
            f"timeout={self.timeout!r}, "
            f"headers={mask_headers(self.headers, self._secret_names)!r}, "
            f"policy={self.policy!r})"
        )


def _policy_concurrency(policy: Any) -> int | None:
    """The policy's concurrency limit, to size the connection pool to it."""
    conc = getattr(policy, "concurrency", None)
    if isinstance(conc, int):
        return conc
    limit = getattr(conc, "max_limit", None) or getattr(conc, "limit", None)
    return limit if isinstance(limit, int) else None
