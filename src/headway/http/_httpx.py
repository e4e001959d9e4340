"""The httpx transport: :class:`HttpxTransport` (``pip install 'headway[httpx]'``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from headway.errors import StreamError
from headway.http.transport import (
    Params,
    Response,
    StreamResponse,
    _connection_error,
    _timeout_error,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpxTransport"]


class _HttpxStream:
    __slots__ = ("_resp", "headers", "method", "status", "url")

    def __init__(self, resp: httpx.Response, method: str, url: str) -> None:
        self._resp = resp
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers
        self.method = method
        self.url = url

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._resp.aiter_bytes():
                yield chunk
        except httpx.TimeoutException as exc:
            raise _timeout_error(self.method, self.url, exc) from exc
        except httpx.TransportError as exc:
            raise StreamError(
                f"the stream broke off: {exc or type(exc).__name__}",
                status_code=self.status,
                headers=self.headers,
                method=self.method,
                url=self.url,
            ) from exc

    async def aread(self) -> bytes:
        import httpx

        try:
            return await self._resp.aread()
        except httpx.TimeoutException as exc:
            raise _timeout_error(self.method, self.url, exc) from exc
        except httpx.TransportError as exc:
            raise _connection_error(self.method, self.url, exc) from exc

    async def aclose(self) -> None:
        await self._resp.aclose()


class HttpxTransport:
    """A transport on :class:`httpx.AsyncClient` (``pip install 'headway[httpx]'``).

    Same arguments as :class:`AiohttpTransport`; ``client`` is an ``httpx.AsyncClient``
    to use (never closed by the transport).
    """

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

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def _build(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Params,
        json: Any,
        data: Any,
        timeout: float | None,
    ) -> httpx.Request:
        import httpx

        content = data if isinstance(data, bytes | str) else None
        form = None if content is not None else data
        extensions = None
        if timeout is not None:
            extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        return self._client.build_request(
            method,
            url,
            headers=headers,
            params=params,
            json=json,
            content=content,
            data=form,
            extensions=extensions,
        )

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
        resp = await self._send(method, url, headers, params, json, data, timeout, stream=False)
        return Response(resp.status_code, resp.headers, resp.content, method, url)

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
        resp = await self._send(method, url, headers, params, json, data, timeout, stream=True)
        return _HttpxStream(resp, method, url)

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Params,
        json: Any,
        data: Any,
        timeout: float | None,
        *,
        stream: bool,
    ) -> Any:
        """Send through httpx, mapping its failures to headway's errors."""
        import httpx

        if self._closed:
            raise RuntimeError("the transport is closed")
        request = self._build(method, url, headers, params, json, data, timeout)
        try:
            return await self._client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise _timeout_error(method, url, exc) from exc
        except httpx.TransportError as exc:
            raise _connection_error(method, url, exc) from exc

    async def aclose(self) -> None:
        """Close the client if the transport created it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._owns:
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"HttpxTransport(timeout={self.timeout})"
