"""headway.http: call HTTP APIs fast, within their limits, with typed errors.

* :class:`AsyncAPIClient`: a pooled client (aiohttp by default) whose errors are the exact
  :mod:`headway.errors` classes; with a :class:`headway.Policy` it retries, limits and
  breaks by itself.
* :class:`Endpoint` + :class:`EndpointConfig`: one configured endpoint of a provider;
  :func:`match_endpoint` knows OpenAI, Anthropic, Perplexity, Groq, OpenRouter, Ollama,
  Exa and any OpenAI-compatible server.
* Framers for streamed responses (:class:`SSEDecoder`, :class:`NDJSONDecoder`), rate-limit
  header parsing (:func:`parse_rate_limit_headers`, :func:`parse_retry_after`) and token
  estimation (:func:`estimate_tokens`).
"""

from headway.http.client import AsyncAPIClient, EventStream, StreamMode
from headway.http.config import EndpointConfig
from headway.http.endpoint import Endpoint, default_policy
from headway.http.headers import AuthType, HeaderFactory
from headway.http.mapping import error_for_status
from headway.http.providers import PROVIDERS, ProviderSpec, match_endpoint, provider_config
from headway.http.ratelimit_headers import (
    LimitState,
    RateLimitInfo,
    parse_go_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    sync_limiter,
)
from headway.http.streaming import LineDecoder, NDJSONDecoder, ServerSentEvent, SSEDecoder
from headway.http.tokens import completion_budget, estimate_tokens, load_tiktoken, usage_tokens
from headway.http.transport import (
    AiohttpTransport,
    HttpxTransport,
    Response,
    StreamResponse,
    Transport,
)

__all__ = [
    "PROVIDERS",
    "AiohttpTransport",
    "AsyncAPIClient",
    "AuthType",
    "Endpoint",
    "EndpointConfig",
    "EventStream",
    "HeaderFactory",
    "HttpxTransport",
    "LimitState",
    "LineDecoder",
    "NDJSONDecoder",
    "ProviderSpec",
    "RateLimitInfo",
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
