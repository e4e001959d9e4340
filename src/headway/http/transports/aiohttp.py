"""The default transport: :class:`AiohttpTransport`, on one pooled aiohttp session.

The fastest asyncio client measured (``benchmarks/http_throughput.py``). Its pitfalls are
handled: the connector's limit is sized by the caller (aiohttp's default of 100
connections silently caps concurrency), the timeout is a connect + per-read timeout
rather than a total one (so a long stream survives as long as bytes keep coming; a whole
attempt is bounded by the policy's attempt deadline), and streamed bodies are read as
raw chunks (no line-length limit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from headway import _json
from headway.errors import APIClientError
from headway.http.transports.base import (
    Request,
    Response,
    StreamResponse,
    TransportStream,
    closed_error,
    connection_error,
    timeout_error,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["AiohttpTransport"]

_BytesPayload: Any = None
_Failures: tuple[type[BaseException], ...] = ()
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


def _failures() -> tuple[type[BaseException], ...]:
    """aiohttp's network failures (imported on first use)."""
    global _Failures
    if not _Failures:
        import aiohttp

        _Failures = (aiohttp.ClientError, OSError)
    return _Failures


def _body(request: Request) -> Any:
    """The request's body as aiohttp takes it: JSON encoded by :mod:`headway._json`."""
    global _BytesPayload
    json = request.json
    if json is not None and request.content is None:
        if _BytesPayload is None:
            from aiohttp.payload import BytesPayload as _BytesPayload
        return _BytesPayload(_json.dumps(json), content_type="application/json")
    return request.content


class _AiohttpStream(TransportStream):
    __slots__ = ("_reading",)

    def __init__(self, resp: Any, request: Request, transport: Any, reading: set[Any]) -> None:
        super().__init__(resp, resp.status, resp.headers, request, transport)
        self._reading = reading  # the transport's set of bodies being read

    async def _chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        while True:
            chunk = await content.readany()
            if not chunk:
                return
            yield chunk

    async def _read(self) -> bytes:
        data: bytes = await self._resp.read()
        return data

    async def _close(self) -> None:
        resp = self._resp
        self._reading.discard(resp)
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()

    def _kind(self, exc: BaseException) -> str | None:
        if isinstance(exc, TimeoutError):
            return "timeout"
        return "failure" if isinstance(exc, _failures()) else None


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

    :meth:`aclose` while other tasks are mid-request ends their calls with
    :class:`~headway.http.transports.base.ClientClosedError` (not retried).
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
        # Responses whose bodies are being read: closing the session does not wake a
        # read in progress, so aclose() fails them itself.
        self._reading: set[Any] = set()
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

    def _get_session(self, request: Request) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            if self._closed:
                raise closed_error(request)
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0)
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._client_timeout(self.timeout),
                trust_env=self.trust_env,
            )
            self._session = session
        return session

    def _request(self, request: Request, timeout: float | None) -> Any:
        session = self._session or self._get_session(request)
        return session.request(
            request.method,
            request.url,
            headers=request.headers,
            params=request.params,
            data=_body(request),
            timeout=session.timeout if timeout is None else self._client_timeout(timeout),
        )

    def _error(self, request: Request, exc: BaseException) -> APIClientError | None:
        if isinstance(exc, TimeoutError):
            return timeout_error(request, exc)
        if isinstance(exc, _failures()):
            return connection_error(request, exc, closed=self._closed)
        return None

    async def send(self, request: Request) -> Response:
        """Send ``request`` and read its whole body."""
        err: APIClientError | None = None
        try:
            # Awaited directly, not through ``async with``: the context manager's two
            # extra coroutines sit on every suspension of the request (~2 us each).
            resp = await self._request(request, request.timeout)
            reading = self._reading
            reading.add(resp)
            try:
                content = await resp.read()
            finally:
                reading.discard(resp)
                resp.release()
                await resp.wait_for_close()
            return Response(resp.status, resp.headers, content, request.method, request.url)
        except Exception as exc:
            err = self._error(request, exc)
            if err is None:
                raise
        raise err  # outside ``except``: aiohttp's exception (it holds the headers) is dropped

    async def open_stream(self, request: Request) -> StreamResponse:
        """Send ``request``; return as soon as the response headers are in."""
        timeout = self.timeout if request.timeout is None else request.timeout
        err: APIClientError | None = None
        try:
            resp = await self._request(request, timeout)
        except Exception as exc:
            err = self._error(request, exc)
            if err is None:
                raise
        if err is not None:
            raise err
        reading = self._reading
        reading.add(resp)
        return _AiohttpStream(resp, request, self, reading)

    async def aclose(self) -> None:
        """Close the session if the transport created it (idempotent).

        Calls of other tasks still reading a body end with
        :class:`~headway.http.ClientClosedError`.
        """
        self._closed = True
        if self._reading:
            import aiohttp

            reading, self._reading = self._reading, set()
            for resp in reading:
                resp.content.set_exception(
                    aiohttp.ClientConnectionError("the transport was closed")
                )
        session = self._session
        if session is not None and self._owns:
            self._session = None
            await session.close()

    def __repr__(self) -> str:
        return f"AiohttpTransport(max_connections={self.max_connections}, timeout={self.timeout})"
