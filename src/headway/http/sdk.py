"""A transport on the official ``openai.AsyncOpenAI`` client (``transport_type="sdk"``).

The SDK's own retries are off (``max_retries=0``): only headway's policy retries, so a
401 is tried once, not once per stacked layer. Statuses and network failures map to the
same :mod:`headway.errors` classes as the HTTP transports. Requires ``headway[openai]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import SecretStr

from headway.errors import APIConnectionError, APITimeoutError, StreamError
from headway.http.mapping import error_for_status
from headway.http.transport import Params, Response, StreamResponse

__all__ = ["OpenAISDKTransport"]


class _SDKStream:
    __slots__ = ("_resp", "headers", "method", "status", "url")

    def __init__(self, resp: Any, method: str, url: str) -> None:
        self._resp = resp
        self.status: int = resp.status_code
        self.headers: Mapping[str, str] = resp.headers
        self.method = method
        self.url = url

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.aiter_bytes():
                yield chunk
        except Exception as exc:
            if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
                raise APITimeoutError(
                    f"Request timed out: {exc}", method=self.method, url=self.url
                ) from exc
            raise StreamError(
                f"the stream broke off: {exc or type(exc).__name__}",
                status_code=self.status,
                headers=self.headers,
                method=self.method,
                url=self.url,
            ) from exc

    async def aread(self) -> bytes:
        data: bytes = await self._resp.aread()
        return data

    async def aclose(self) -> None:
        await self._resp.aclose()


class OpenAISDKTransport:
    """Send requests through ``openai.AsyncOpenAI`` (retries off; closed by :meth:`aclose`).

    Args:
        api_key: the key (the SDK sends it as a bearer token).
        base_url: the OpenAI-compatible API root.
        timeout: seconds per request.
        client: an ``openai.AsyncOpenAI`` to use instead (never closed here).
        default_headers: extra headers for every request.
    """

    def __init__(
        self,
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        timeout: float | None = 600.0,
        client: Any = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "transport_type='sdk' needs the openai package: pip install 'headway[openai]'"
            ) from exc
        self._openai = openai
        self._owns = client is None
        if client is None:
            key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
            client = openai.AsyncOpenAI(
                api_key=key or "unused",
                base_url=base_url,
                timeout=timeout,
                max_retries=0,
                default_headers=dict(default_headers or {}),
            )
        self.client = client
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def _response_cls(self) -> Any:
        from openai._httpx2 import http_response_types

        return http_response_types()[0]

    async def _post(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        params: Params,
        json: Any,
        timeout: float | None,
        stream: bool,
    ) -> Any:
        openai = self._openai
        if self._closed:
            raise RuntimeError("the SDK transport is closed")
        options: dict[str, Any] = {}
        if headers:
            options["headers"] = {
                k: v for k, v in headers.items() if k.lower() not in ("authorization",)
            }
        if params:
            options["params"] = dict(params)
        if timeout is not None:
            options["timeout"] = timeout
        cast_to = self._response_cls()
        try:
            if method.upper() == "GET":
                return await self.client.get(
                    url, cast_to=cast_to, options=options, stream=stream, stream_cls=None
                )
            if method.upper() == "DELETE":
                return await self.client.delete(url, cast_to=cast_to, options=options, body=json)
            return await self.client.post(
                url, cast_to=cast_to, body=json, options=options, stream=stream, stream_cls=None
            )
        except openai.APIStatusError as exc:
            resp = exc.response
            raise error_for_status(
                resp.status_code, resp.headers, resp.content, method, url
            ) from None
        except openai.APITimeoutError as exc:
            raise APITimeoutError(f"Request timed out: {exc}", method=method, url=url) from exc
        except openai.APIConnectionError as exc:
            raise APIConnectionError(
                f"Connection error: {exc.__cause__ or exc}", method=method, url=url
            ) from exc

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
        """Send through the SDK; a non-2xx answer raises the mapped headway error."""
        resp = await self._post(method, url, headers, params, json, timeout, False)
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
        """Open a streamed response through the SDK."""
        resp = await self._post(method, url, headers, params, json, timeout, True)
        return _SDKStream(resp, method, url)

    async def aclose(self) -> None:
        """Close the SDK client if this transport created it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._owns:
            await self.client.close()

    def __repr__(self) -> str:
        return "OpenAISDKTransport()"
