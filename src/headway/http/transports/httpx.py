"""The httpx transport: :class:`HttpxTransport` (``pip install 'headway[httpx]'``).

For code standardised on httpx; much slower under concurrency than aiohttp
(encode/httpx#3215, ``benchmarks/http_throughput.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headway.errors import APIClientError
from headway.http.transports.base import (
    HttpxResponseTransport,
    Request,
    TransportStream,
    closed_error,
    connection_error,
    timeout_error,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpxTransport"]


def _kind(exc: BaseException) -> str | None:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "failure" if isinstance(exc, httpx.TransportError) else None


class _HttpxStream(TransportStream):
    __slots__ = ()

    def _kind(self, exc: BaseException) -> str | None:
        return _kind(exc)


class HttpxTransport(HttpxResponseTransport):
    """A transport on :class:`httpx.AsyncClient` (``pip install 'headway[httpx]'``).

    Same arguments as :class:`~headway.http.AiohttpTransport`; ``client`` is an
    ``httpx.AsyncClient`` to use (never closed by the transport). Headers are sent as the
    :class:`~headway.http.Request` has them (merged case-insensitively by the client);
    the ``httpx.AsyncClient``'s own default headers are added by httpx.
    """

    stream_class = _HttpxStream

    def __init__(
        self,
        *,
        client: httpx.AsyncClient | None = None,
        max_connections: int | None = None,
        timeout: float | None = 10.0,
        connect_timeout: float | None = None,
        trust_env: bool = False,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("HttpxTransport needs httpx: pip install 'headway[httpx]'") from exc
        self._owns = client is None
        if client is None:
            limits = httpx.Limits(
                max_connections=max_connections or None,
                max_keepalive_connections=max_connections or None,
            )
            client = httpx.AsyncClient(
                limits=limits,
                timeout=httpx.Timeout(
                    timeout,
                    connect=connect_timeout if connect_timeout is not None else timeout,
                    pool=None,
                ),
                trust_env=trust_env,
            )
        self._client = client
        self.timeout = timeout
        self._closed = False

    def _build(self, request: Request) -> httpx.Request:
        import httpx

        data = request.content
        content = data if isinstance(data, bytes | str) else None
        form = None if content is not None else data
        extensions = None
        if request.timeout is not None:
            extensions = {"timeout": httpx.Timeout(request.timeout).as_dict()}
        return self._client.build_request(
            request.method,
            request.url,
            headers=request.headers,
            params=request.params,
            json=request.json,
            content=content,
            data=form,
            extensions=extensions,
        )

    async def _call(self, request: Request, *, stream: bool) -> Any:
        """Send through httpx, mapping its failures to headway's errors."""
        if self._closed:
            raise closed_error(request)
        err: APIClientError | None = None
        try:
            return await self._client.send(self._build(request), stream=stream)
        except Exception as exc:
            kind = _kind(exc)
            if kind is None:
                raise
            if kind == "timeout":
                err = timeout_error(request, exc)
            else:
                err = connection_error(request, exc, closed=self._closed)
        raise err  # outside ``except``: httpx's exception (it holds the headers) is dropped

    async def _close_client(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"HttpxTransport(timeout={self.timeout})"
