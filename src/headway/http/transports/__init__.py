"""Transports side by side: the one place bytes meet the network.

* :mod:`~headway.http.transports.base`: :class:`Request`, :class:`Response`, the
  :class:`Transport` and :class:`StreamResponse` protocols, the shared error mapping;
* :mod:`~headway.http.transports.aiohttp`: :class:`AiohttpTransport` (the default);
* :mod:`~headway.http.transports.httpx`: :class:`HttpxTransport` (``headway[httpx]``);
* :mod:`~headway.http.transports.openai_sdk`: :class:`OpenAISDKTransport`
  (``headway[openai]``).

Each library is imported only when its transport is created.
"""

from headway.http.transports.aiohttp import AiohttpTransport
from headway.http.transports.base import (
    ClientClosedError,
    Request,
    Response,
    StreamResponse,
    Transport,
)
from headway.http.transports.httpx import HttpxTransport
from headway.http.transports.openai_sdk import OpenAISDKTransport

__all__ = [
    "AiohttpTransport",
    "ClientClosedError",
    "HttpxTransport",
    "OpenAISDKTransport",
    "Request",
    "Response",
    "StreamResponse",
    "Transport",
]
