"""What every transport shares: :class:`Request`, :class:`Response`, the protocols.

A :class:`Request` is built once per call by :class:`~headway.http.AsyncAPIClient` (or an
:class:`~headway.http.Endpoint` through it) and handed down unchanged: a policy sends
the same object on every attempt, a transport reads it and never mutates it.

>>> req = Request("POST", "https://user:pw@api.example.com/v1/chat",
...               {"Authorization": "Bearer sk-123", "Accept": "application/json"},
...               json={"model": "m"})
>>> req
Request('POST', 'https://***@api.example.com/v1/chat', \
headers={'Authorization': 'Bearer ***', 'Accept': 'application/json'})

A transport implements :meth:`Transport.send` and :meth:`Transport.open_stream`; it turns
network failures into :class:`~headway.errors.APIConnectionError` and
:class:`~headway.errors.APITimeoutError` and never interprets a status code. The
library's exception is never chained to headway's error (it holds the request's headers,
keys included): its type and (scrubbed) message are in the error's text instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from headway import _json
from headway._secrets import mask_headers, redact_url, scrub_text, secret_values
from headway.errors import (
    APIClientError,
    APIConnectionError,
    APITimeoutError,
    InvalidResponseError,
    StreamError,
)

__all__ = [
    "ClientClosedError",
    "Request",
    "Response",
    "StreamResponse",
    "Transport",
    "TransportStream",
]


@dataclass(slots=True, eq=False, repr=False)
class Request:
    """One HTTP request, as built once per call and sent on every attempt.

    Attributes:
        method: ``"GET"``, ``"POST"``, ...
        url: the absolute URL (query parameters in :attr:`params`).
        headers: every header to send (defaults already merged, case-insensitively).
        params: query parameters.
        json: a JSON body.
        content: a raw body (bytes/str) or form fields, when not :attr:`json`.
        timeout: seconds to connect and between reads; ``None``: the transport's own.
        stream: whether the body is read as a stream (:meth:`Transport.open_stream`).
        tokens: the tokens the call reserves on the policy's limiter.
        parse: parse the body inside the attempt (a garbled body fails the attempt).
        secret_headers: lower-case names of extra headers that carry credentials (masked
            in ``repr`` and scrubbed from error messages, as the default names are).
    """

    method: str
    url: str
    headers: Mapping[str, str]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: Any = None
    timeout: float | None = None
    stream: bool = False
    tokens: float = 0.0
    parse: bool = False
    secret_headers: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        headers = mask_headers(self.headers, self.secret_headers)
        return f"Request({self.method!r}, {redact_url(self.url)!r}, headers={headers!r})"


_MISSING: Any = object()


class Response:
    """A complete HTTP response.

    Attributes:
        status: the status code.
        headers: case-insensitive headers.
        content: the raw body.
        method: the request method.
        url: the request URL (as sent; redacted in ``repr``).
    """

    __slots__ = ("_json", "content", "headers", "method", "status", "url")

    def __init__(
        self, status: int, headers: Mapping[str, str], content: bytes, method: str, url: str
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.method = method
        self.url = url
        self._json: Any = _MISSING

    @property
    def body(self) -> bytes:
        """The raw body (same as :attr:`content`)."""
        return self.content

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON (cached).

        Raises:
            InvalidResponseError: the body is not JSON.
        """
        value = self._json
        if value is _MISSING:
            try:
                value = _json.loads(self.content)
            except ValueError as exc:
                detail = str(exc)
            else:
                self._json = value
                return value
            raise InvalidResponseError(
                f"the response body is not valid JSON ({detail})",
                status_code=self.status,
                headers=self.headers,
                body=self.content[:2048],
                method=self.method,
                url=self.url,
            )
        return value

    def parsed(self) -> Any:
        """JSON when the content type says JSON, text otherwise, ``None`` when empty/204."""
        if self.status == 204 or not self.content:
            return None
        ctype = self.headers.get("Content-Type") or ""
        if "json" in ctype:
            return self.json()
        return self.text

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.method} {redact_url(self.url)}>"


class StreamResponse(Protocol):
    """An open streamed response; read it with :meth:`aiter_bytes`, then :meth:`aclose`."""

    status: int
    headers: Mapping[str, str]

    @property
    def method(self) -> str:
        """The request's method."""
        ...

    @property
    def url(self) -> str:
        """The request's URL."""
        ...

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive."""
        ...

    async def aread(self) -> bytes:
        """The whole (rest of the) body."""
        ...

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        ...


@runtime_checkable
class Transport(Protocol):
    """Sends requests; maps network failures to headway errors; knows no status codes."""

    async def send(self, request: Request) -> Response:
        """Send one request and read its whole body."""
        ...

    async def open_stream(self, request: Request) -> StreamResponse:
        """Send one request and return as soon as the headers are in."""
        ...

    async def aclose(self) -> None:
        """Close what the transport opened (idempotent)."""
        ...


class ClientClosedError(APIConnectionError, RuntimeError):
    """The client (or its transport) is closed: the call was stopped or never sent.

    Raised for a call in flight when another task closes the client (``aclose()`` or
    leaving ``async with``), and for a call sent through a closed transport. Not
    retryable: the client that would retry it is gone. Also a :class:`RuntimeError`.
    """

    def _default_retryable(self) -> bool:
        return False


def _detail(request: Request, exc: BaseException) -> str:
    """``exc`` as text for an error message, with the request's secrets scrubbed."""
    text = str(exc)
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return scrub_text(detail, secret_values(request.headers, request.secret_headers))


def timeout_error(request: Request, exc: BaseException) -> APITimeoutError:
    """The :class:`~headway.errors.APITimeoutError` for a library's timeout ``exc``."""
    return APITimeoutError(
        f"Request timed out: {_detail(request, exc)}", method=request.method, url=request.url
    )


def connection_error(
    request: Request, exc: BaseException, *, closed: bool = False
) -> APIConnectionError:
    """The :class:`~headway.errors.APIConnectionError` for a library's failure ``exc``.

    With ``closed`` (the transport was closed meanwhile) a :class:`ClientClosedError`.
    """
    if closed:
        return ClientClosedError(
            "Connection error: the client was closed while the request was in flight "
            f"({_detail(request, exc)})",
            method=request.method,
            url=request.url,
        )
    return APIConnectionError(
        f"Connection error: {_detail(request, exc)}", method=request.method, url=request.url
    )


def closed_error(request: Request) -> ClientClosedError:
    """The error for a request sent through a closed transport."""
    return ClientClosedError(
        "Connection error: the client is closed; create a new one (or send inside its "
        "'async with' block)",
        method=request.method,
        url=request.url,
    )


class TransportStream:
    """The shared half of every transport's :class:`StreamResponse`.

    It reads a response object with httpx's methods (``aiter_bytes``, ``aread``,
    ``aclose``); a transport whose library differs overrides :meth:`_chunks`,
    :meth:`_read` and :meth:`_close`, and says in :meth:`_kind` which of the library's
    exceptions are timeouts and failures. The mapping of failures to headway errors,
    scrubbed of secrets, is done here.
    """

    __slots__ = ("_resp", "_transport", "headers", "request", "status")

    #: What to call a failure while reading the body (``StreamError`` while streaming).
    broken: ClassVar[str] = "the stream broke off"

    def __init__(
        self,
        resp: Any,
        status: int,
        headers: Mapping[str, str],
        request: Request,
        transport: Any = None,
    ) -> None:
        self._resp = resp
        self._transport = transport
        self.status = status
        self.headers = headers
        self.request = request

    @property
    def method(self) -> str:
        """The request's method."""
        return self.request.method

    @property
    def url(self) -> str:
        """The request's URL."""
        return self.request.url

    # -- what a transport may override ---------------------------------------------------
    def _chunks(self) -> AsyncIterator[bytes]:
        chunks: AsyncIterator[bytes] = self._resp.aiter_bytes()
        return chunks

    async def _read(self) -> bytes:
        data: bytes = await self._resp.aread()
        return data

    async def _close(self) -> None:
        await self._resp.aclose()

    def _kind(self, exc: BaseException) -> str | None:
        """``"timeout"``, ``"failure"`` or ``None`` (not the library's: passed on)."""
        return "timeout" if isinstance(exc, TimeoutError) else None

    # -- shared --------------------------------------------------------------------------
    def _error(self, exc: BaseException, *, streaming: bool) -> APIClientError | None:
        if isinstance(exc, APIClientError):
            return None
        kind = self._kind(exc)
        if kind is None:
            return None
        request = self.request
        if kind == "timeout":
            return timeout_error(request, exc)
        closed = bool(getattr(self._transport, "closed", False))
        if streaming and not closed:
            return StreamError(
                f"{self.broken}: {_detail(request, exc)}",
                status_code=self.status,
                headers=self.headers,
                method=request.method,
                url=request.url,
            )
        return connection_error(request, exc, closed=closed)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; failures as headway errors."""
        chunks = self._chunks()
        while True:
            err: APIClientError | None = None
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except Exception as exc:
                err = self._error(exc, streaming=True)
                if err is None:
                    raise
            if err is not None:
                raise err  # outside ``except``: the library's exception is not chained
            yield chunk

    async def aread(self) -> bytes:
        """The whole (rest of the) body."""
        err: APIClientError | None = None
        try:
            return await self._read()
        except Exception as exc:
            err = self._error(exc, streaming=False)
            if err is None:
                raise
        raise err

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        await self._close()


class HttpxResponseTransport:
    """The shared half of the transports whose library answers with ``httpx`` responses
    (:class:`~headway.http.HttpxTransport`, :class:`~headway.http.OpenAISDKTransport`).

    A subclass sets ``_owns``, ``_closed`` and ``stream_class`` and implements
    :meth:`_call` (send, map failures) and :meth:`_close_client`.
    """

    stream_class: ClassVar[type[TransportStream]] = TransportStream
    _owns: bool
    _closed: bool

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    async def _call(self, request: Request, *, stream: bool) -> Any:  # pragma: no cover
        raise NotImplementedError

    async def _close_client(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def send(self, request: Request) -> Response:
        """Send ``request`` and read its whole body."""
        resp = await self._call(request, stream=False)
        return Response(resp.status_code, resp.headers, resp.content, request.method, request.url)

    async def open_stream(self, request: Request) -> StreamResponse:
        """Send ``request``; return as soon as the response headers are in."""
        resp = await self._call(request, stream=True)
        return self.stream_class(resp, resp.status_code, resp.headers, request, self)

    async def aclose(self) -> None:
        """Close the library's client if this transport created it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._owns:
            await self._close_client()
