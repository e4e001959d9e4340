"""A transport on the official ``openai.AsyncOpenAI`` client (``transport_type="sdk"``).

The SDK's own retries are off (``max_retries=0``): only headway's policy retries, so a
401 is tried once, not once per stacked layer. Statuses and network failures map to the
same :mod:`headway.errors` classes as the HTTP transports. Requires ``headway[openai]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from headway.errors import APIClientError
from headway.http.status import error_for_status
from headway.http.transports.base import (
    HttpxResponseTransport,
    Request,
    TransportStream,
    closed_error,
    connection_error,
    timeout_error,
)

if TYPE_CHECKING:  # a key that is not a str is a SecretStr: pydantic is not imported here
    from pydantic import SecretStr

__all__ = ["OpenAISDKTransport"]


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
        return "timeout"
    return "failure"


class _SDKStream(TransportStream):
    __slots__ = ()

    def _kind(self, exc: BaseException) -> str | None:
        return _kind(exc)


class OpenAISDKTransport(HttpxResponseTransport):
    """Send requests through ``openai.AsyncOpenAI`` (retries off; closed by :meth:`aclose`).

    Args:
        api_key: the key (the SDK sends it as a bearer token).
        base_url: the OpenAI-compatible API root.
        timeout: seconds per request.
        client: an ``openai.AsyncOpenAI`` to use instead (never closed here).
        default_headers: extra headers for every request.
    """

    stream_class = _SDKStream

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
            key = api_key
            if key is not None and not isinstance(key, str):
                key = key.get_secret_value()
            client = openai.AsyncOpenAI(
                api_key=key or "unused",
                base_url=base_url,
                timeout=timeout,
                max_retries=0,
                default_headers=dict(default_headers or {}),
            )
        self.client = client
        self._closed = False

    def _response_cls(self) -> Any:
        from openai._httpx2 import http_response_types

        return http_response_types()[0]

    async def _call(self, request: Request, *, stream: bool) -> Any:
        openai = self._openai
        if self._closed:
            raise closed_error(request)
        options: dict[str, Any] = {}
        if request.headers:
            # The SDK sends its own key: a second Authorization would be sent as well.
            options["headers"] = {
                k: v for k, v in request.headers.items() if k.lower() != "authorization"
            }
        if request.params:
            options["params"] = dict(request.params)
        if request.timeout is not None:
            options["timeout"] = request.timeout
        cast_to = self._response_cls()
        method, url, json = request.method.upper(), request.url, request.json
        err: APIClientError | None = None
        try:
            if method == "GET":
                return await self.client.get(
                    url, cast_to=cast_to, options=options, stream=stream, stream_cls=None
                )
            if method == "DELETE":
                return await self.client.delete(url, cast_to=cast_to, options=options, body=json)
            return await self.client.post(
                url, cast_to=cast_to, body=json, options=options, stream=stream, stream_cls=None
            )
        except openai.APIStatusError as exc:
            resp = exc.response
            err = error_for_status(
                resp.status_code, resp.headers, resp.content, request.method, url
            )
        except openai.APITimeoutError as exc:
            err = timeout_error(request, exc)
        except openai.APIConnectionError as exc:
            err = connection_error(request, exc.__cause__ or exc, closed=self._closed)
        raise err  # outside ``except``: the SDK's exception (it holds the headers) is dropped

    async def _close_client(self) -> None:
        await self.client.close()

    def __repr__(self) -> str:
        return "OpenAISDKTransport()"
