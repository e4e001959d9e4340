"""headway.http: call HTTP APIs fast, within their limits, with typed errors.

* :class:`Request`: one request, built once per call and handed to a transport's
  ``send(request)`` / ``open_stream(request)``; transports live side by side in
  :mod:`headway.http.transports` (aiohttp by default, httpx, the openai SDK).
* :class:`AsyncAPIClient`: a pooled client (aiohttp by default) whose errors are the exact
  :mod:`headway.errors` classes; with a :class:`headway.Policy` it retries, limits and
  breaks by itself.
* :class:`Endpoint` + :class:`EndpointConfig`: one configured endpoint of a provider;
  :func:`match_endpoint` knows OpenAI, Anthropic, Perplexity, Groq, OpenRouter, Ollama,
  Exa and any OpenAI-compatible server.
* Framers for streamed responses (:class:`SSEDecoder`, :class:`NDJSONDecoder`), rate-limit
  header parsing (:func:`parse_rate_limit_headers`, :func:`parse_retry_after`) and token
  estimation (:func:`estimate_tokens`).

Names are imported on first use (PEP 562): ``import headway.http.tokens`` (or any one
submodule) does not import the client, the pydantic models or every transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headway._lazy import lazy_names

if TYPE_CHECKING:
    from headway.http.client import AsyncAPIClient
    from headway.http.config import EndpointConfig
    from headway.http.endpoint import Endpoint, default_policy
    from headway.http.headers import AuthType, HeaderFactory
    from headway.http.providers import PROVIDERS, ProviderSpec, match_endpoint, provider_config
    from headway.http.ratelimit_headers import (
        LimitState,
        RateLimitInfo,
        parse_go_duration,
        parse_rate_limit_headers,
        parse_retry_after,
        sync_limiter,
    )
    from headway.http.status import error_for_status
    from headway.http.streaming import (
        EventStream,
        LineDecoder,
        NDJSONDecoder,
        ServerSentEvent,
        SSEDecoder,
        StreamMode,
    )
    from headway.http.tokens import completion_budget, estimate_tokens, load_tiktoken, usage_tokens
    from headway.http.transports import (
        AiohttpTransport,
        ClientClosedError,
        HttpxTransport,
        OpenAISDKTransport,
        Request,
        Response,
        StreamResponse,
        Transport,
    )

__all__ = [
    "PROVIDERS",
    "AiohttpTransport",
    "AsyncAPIClient",
    "AuthType",
    "ClientClosedError",
    "Endpoint",
    "EndpointConfig",
    "EventStream",
    "HeaderFactory",
    "HttpxTransport",
    "LimitState",
    "LineDecoder",
    "NDJSONDecoder",
    "OpenAISDKTransport",
    "ProviderSpec",
    "RateLimitInfo",
    "Request",
    "Response",
    "SSEDecoder",
    "ServerSentEvent",
    "StreamMode",
    "StreamResponse",
    "Transport",
    "completion_budget",
    "default_policy",
    "error_for_status",
    "estimate_tokens",
    "load_tiktoken",
    "match_endpoint",
    "parse_go_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "provider_config",
    "sync_limiter",
    "usage_tokens",
]

# Where each name of ``__all__`` lives; looked up on first use (PEP 562).
_WHERE = {
    "AiohttpTransport": "headway.http.transports",
    "AsyncAPIClient": "headway.http.client",
    "AuthType": "headway.http.headers",
    "ClientClosedError": "headway.http.transports",
    "Endpoint": "headway.http.endpoint",
    "EndpointConfig": "headway.http.config",
    "EventStream": "headway.http.streaming",
    "HeaderFactory": "headway.http.headers",
    "HttpxTransport": "headway.http.transports",
    "LimitState": "headway.http.ratelimit_headers",
    "LineDecoder": "headway.http.streaming",
    "NDJSONDecoder": "headway.http.streaming",
    "OpenAISDKTransport": "headway.http.transports",
    "PROVIDERS": "headway.http.providers",
    "ProviderSpec": "headway.http.providers",
    "RateLimitInfo": "headway.http.ratelimit_headers",
    "Request": "headway.http.transports",
    "Response": "headway.http.transports",
    "SSEDecoder": "headway.http.streaming",
    "ServerSentEvent": "headway.http.streaming",
    "StreamMode": "headway.http.streaming",
    "StreamResponse": "headway.http.transports",
    "Transport": "headway.http.transports",
    "completion_budget": "headway.http.tokens",
    "default_policy": "headway.http.endpoint",
    "error_for_status": "headway.http.status",
    "estimate_tokens": "headway.http.tokens",
    "load_tiktoken": "headway.http.tokens",
    "match_endpoint": "headway.http.providers",
    "parse_go_duration": "headway.http.ratelimit_headers",
    "parse_rate_limit_headers": "headway.http.ratelimit_headers",
    "parse_retry_after": "headway.http.ratelimit_headers",
    "provider_config": "headway.http.providers",
    "sync_limiter": "headway.http.ratelimit_headers",
    "usage_tokens": "headway.http.tokens",
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())
