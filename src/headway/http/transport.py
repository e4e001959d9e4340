"""Transports: the one place bytes meet the network.

A :class:`Transport` sends one request and returns a :class:`Response` (or opens a
:class:`StreamResponse`), turning network failures into
:class:`~headway.errors.APIConnectionError` and :class:`~headway.errors.APITimeoutError`.
It never interprets status codes; :class:`~headway.http.AsyncAPIClient` does.

Two implementations ship:

* :class:`AiohttpTransport` (the default): the fastest asyncio client measured
  (``benchmarks/http_throughput.py``). Its pitfalls are handled: the connector's limit is
  sized by the caller (aiohttp's default of 100 connections silently caps concurrency),
  the timeout is a connect + per-read timeout rather than a total one (so a long stream
  survives as long as bytes keep coming), and streamed bodies are read as raw chunks
  (no line-length limit).
* :class:`HttpxTransport` (``pip install 'headway[httpx]'``), for code standardised on
  httpx; much slower under concurrency (encode/httpx#3215).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from headway import _json
from headway._secrets import redact_url
from headway.errors import (
    APIConnectionError,
    APITimeoutError,
    InvalidResponseError,
    StreamError,
)

if TYPE_CHECKING:
    import aiohttp

    from headway.http._httpx import HttpxTransport

__all__ = [
    "AiohttpTransport",
    "HttpxTransport",
    "Response",
    "StreamResponse",
    "Transport",
]

Params = Mapping[str, Any] | None


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

    _MISSING: Any = object()

    def __init__(
        self, status: int, headers: Mapping[str, str], content: bytes, method: str, url: str
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self.method = method
        self.url = url
        self._json: Any = Response._MISSING

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
        if value is Response._MISSING:
            try:
                value = _json.loads(self.content)
            except ValueError as exc:
                raise InvalidResponseError(
                    f"the response body is not valid JSON ({exc})",
                    status_code=self.status,
                    headers=self.headers,
                    body=self.content[:2048],
                    method=self.method,
                    url=self.url,
                ) from None
            self._json = value
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
    method: str
    url: str

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

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Params = None,
        json: Any = None,
        data: Any = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read its whole body."""
        ...

    async def open_stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Params = None,
        json: Any = None,
        data: Any = None,
        timeout: float | None = None,
    ) -> StreamResponse:
        """Send one request and return as soon as the headers are in."""
        ...

    async def aclose(self) -> None:
        """Close what the transport opened (idempotent)."""
        ...


def _timeout_error(method: str, url: str, exc: BaseException) -> APITimeoutError:
    detail = str(exc) or type(exc).__name__
    return APITimeoutError(f"Request timed out: {detail}", method=method, url=url)


def _connection_error(method: str, url: str, exc: BaseException) -> APIConnectionError:
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(f"Connection error: {detail}", method=method, url=url)


_BytesPayload: Any = None
_allocator_warmed = False


def _warm_allocator() -> None:
    """Raise glibc's mmap threshold once, so that socket reads stop mapping memory.

    asyncio reads a socket into a fresh 256 KiB buffer, then shrinks it to what arrived.
    glibc serves blocks above its mmap threshold (128 KiB until it adapts) with ``mmap``,
    so until the threshold rises every read maps, faults and unmaps memory: two page
    faults per response, a fifth of a request's CPU time at high rates (measured with
    ``perf stat``, see ``benchmarks/README.md``). glibc raises the threshold when it frees
    a mapped block whole; freeing one 300 KiB block does that for the rest of the process.
    Elsewhere this is one short-lived allocation.
    """
    global _allocator_warmed
    if not _allocator_warmed:
        _allocator_warmed = True
        block = bytes(300 * 1024)
        del block


def _json_body(value: Any) -> Any:
    """``value`` as an aiohttp JSON payload, encoded by :mod:`headway._json` (orjson)."""
    global _BytesPayload
    if _BytesPayload is None:
        from aiohttp.payload import BytesPayload as _BytesPayload
    return _BytesPayload(_json.dumps(value), content_type="application/json")


class _AiohttpStream:
    __slots__ = ("_resp", "headers", "method", "status", "url")

    def __init__(self, resp: aiohttp.ClientResponse, method: str, url: str) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers
        self.method = method
        self.url = url

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        import aiohttp

        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except TimeoutError as exc:
            raise _timeout_error(self.method, self.url, exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise StreamError(
                f"the stream broke off: {exc or type(exc).__name__}",
                status_code=self.status,
                headers=self.headers,
                method=self.method,
                url=self.url,
            ) from exc

    async def aread(self) -> bytes:
        import aiohttp

        try:
            return await self._resp.read()
        except TimeoutError as exc:
            raise _timeout_error(self.method, self.url, exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(self.method, self.url, exc) from exc

    async def aclose(self) -> None:
        resp = self._resp
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


class AiohttpTransport:
    """The default transport, on one pooled :class:`aiohttp.ClientSession`.

    Args:
        session: use this session (never closed by the transport); by default one is
            created on first use and closed by :meth:`aclose`.
        max_connections: the connector's limit; ``0`` or ``None`` for no limit. Size it
            to the concurrency you allow (aiohttp's own default of 100 silently caps it).
        timeout: seconds allowed to connect and for each read (not for the whole
            response, so long streams survive); ``None`` for no timeout. Waiting for a
            free pooled connection is not timed: the client sizes the pool to its
            policy's concurrency, so nobody waits for one there.
        connect_timeout: seconds to open a connection (TLS handshake included), when
            different from ``timeout``.
        trust_env: honour ``HTTP(S)_PROXY`` and ``.netrc`` (aiohttp's option).
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        max_connections: int | None = None,
        timeout: float | None = 10.0,
        connect_timeout: float | None = None,
        trust_env: bool = False,
    ) -> None:
        self._session = session
        self._owns = session is None
        self.max_connections = max_connections or 0
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.trust_env = trust_env
        self._timeouts: dict[float | None, Any] = {}
        self._closed = False
        _warm_allocator()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def _client_timeout(self, timeout: float | None) -> aiohttp.ClientTimeout:
        cached = self._timeouts.get(timeout)
        if cached is None:
            import aiohttp

            connect = timeout if self.connect_timeout is None else self.connect_timeout
            if timeout is not None and connect is not None:
                connect = min(connect, timeout)
            # sock_connect, not connect: ``connect`` also arms a timer on every request
            # that takes a pooled connection; ``sock_connect`` only when one is opened.
            cached = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=timeout)
            self._timeouts[timeout] = cached
        return cached

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise RuntimeError("the transport is closed")
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._client_timeout(self.timeout),
                trust_env=self.trust_env,
            )
            self._session = session
        return session

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Params = None,
        json: Any = None,
        data: Any = None,
        timeout: float | None = None,
    ) -> Response:
        import aiohttp

        session = self._session or self._get_session()
        if json is not None and data is None:
            data = _json_body(json)
            json = None
        try:
            if timeout is None:
                cm = session.request(
                    method, url, headers=headers, params=params, json=json, data=data
                )
            else:
                cm = session.request(
                    method,
                    url,
                    headers=headers,
                    params=params,
                    json=json,
                    data=data,
                    timeout=self._client_timeout(timeout),
                )
            # Awaited directly, not through ``async with``: the context manager's two
            # extra coroutines sit on every suspension of the request (~2 us each).
            resp = await cm
            try:
                content = await resp.read()
            finally:
                resp.release()
                await resp.wait_for_close()
            return Response(resp.status, resp.headers, content, method, url)
        except TimeoutError as exc:
            raise _timeout_error(method, url, exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(method, url, exc) from exc

    async def open_stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Params = None,
        json: Any = None,
        data: Any = None,
        timeout: float | None = None,
    ) -> StreamResponse:
        import aiohttp

        session = self._session or self._get_session()
        if json is not None and data is None:
            data = _json_body(json)
            json = None
        try:
            resp = await session.request(
                method,
                url,
                headers=headers,
                params=params,
                json=json,
                data=data,
                timeout=self._client_timeout(self.timeout if timeout is None else timeout),
            )
        except TimeoutError as exc:
            raise _timeout_error(method, url, exc) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _connection_error(method, url, exc) from exc
        return _AiohttpStream(resp, method, url)

    async def aclose(self) -> None:
        """Close the session if the transport created it (idempotent)."""
        self._closed = True
        session = self._session
        if session is not None and self._owns:
            self._session = None
            await session.close()

    def __repr__(self) -> str:
        return f"AiohttpTransport(max_connections={self.max_connections}, timeout={self.timeout})"


def __getattr__(name: str) -> Any:
    # HttpxTransport lives in headway.http._httpx, which imports this module: loaded on
    # first access (no import cycle; httpx itself is only imported when one is created).
    if name == "HttpxTransport":
        from headway.http._httpx import HttpxTransport

        return HttpxTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
