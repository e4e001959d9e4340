"""Known providers and :func:`match_endpoint`: a configured :class:`Endpoint` by name.

Importing this module, listing providers and building endpoints never needs a key: the
key is read from the provider's environment variable when the endpoint opens.

>>> ep = match_endpoint("anthropic", "messages")
>>> ep.config.base_url, ep.config.auth_type, ep.config.default_headers["anthropic-version"]
('https://api.anthropic.com/v1', 'x-api-key', '2023-06-01')
>>> match_endpoint("openai", "chat").config.full_url()
'https://api.openai.com/v1/chat/completions'
>>> local = match_endpoint("openai_compatible", "chat", base_url="http://localhost:8000/v1")
>>> local.config.auth_type
'none'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headway.errors import ConfigurationError

if TYPE_CHECKING:  # the models and the client are imported when a config is built
    from headway._clock import Clock
    from headway.http.config import EndpointConfig
    from headway.http.endpoint import Endpoint
    from headway.http.headers import AuthType
    from headway.http.transports.base import Transport

__all__ = ["PROVIDERS", "ProviderSpec", "match_endpoint", "provider_config"]


@dataclass(slots=True, frozen=True)
class ProviderSpec:
    """What headway knows about a provider.

    Attributes:
        name: the provider's name (``"openai"``).
        base_url: the API root (``None``: the caller must give one).
        auth_type: how the key is sent.
        api_key_env: the environment variable holding the key.
        endpoints: endpoint name -> path (aliases allowed).
        default_headers: headers every request needs (``anthropic-version``).
        stream_formats: endpoint name -> ``"sse"``/``"ndjson"`` where not SSE.
        base_url_env: an environment variable that overrides ``base_url``.
        sdk: whether ``transport_type="sdk"`` (OpenAI SDK) works with it.
        burst_seconds: the granularity the provider is known to enforce its per-minute
            limits at, in seconds: the burst an endpoint allows itself (Anthropic
            refills per second; OpenAI quantizes to about a second).
    """

    name: str
    base_url: str | None
    auth_type: AuthType
    api_key_env: str | None
    endpoints: Mapping[str, str]
    default_headers: Mapping[str, str] = field(default_factory=dict)
    stream_formats: Mapping[str, str] = field(default_factory=dict)
    base_url_env: str | None = None
    sdk: bool = True
    burst_seconds: float = 1.0


_OPENAI_STYLE = {
    "chat": "chat/completions",
    "chat/completions": "chat/completions",
    "completions": "completions",
    "embeddings": "embeddings",
    "responses": "responses",
    "models": "models",
}

PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec(
            "openai", "https://api.openai.com/v1", "bearer", "OPENAI_API_KEY", _OPENAI_STYLE
        ),
        ProviderSpec(
            "anthropic",
            "https://api.anthropic.com/v1",
            "x-api-key",
            "ANTHROPIC_API_KEY",
            {"messages": "messages", "chat": "messages", "count_tokens": "messages/count_tokens"},
            default_headers={"anthropic-version": "2023-06-01"},
            sdk=False,
        ),
        ProviderSpec(
            "perplexity",
            "https://api.perplexity.ai",
            "bearer",
            "PERPLEXITY_API_KEY",
            {"chat": "chat/completions", "chat/completions": "chat/completions"},
        ),
        ProviderSpec(
            "groq", "https://api.groq.com/openai/v1", "bearer", "GROQ_API_KEY", _OPENAI_STYLE
        ),
        ProviderSpec(
            "openrouter",
            "https://openrouter.ai/api/v1",
            "bearer",
            "OPENROUTER_API_KEY",
            _OPENAI_STYLE,
        ),
        ProviderSpec(
            "ollama",
            "http://localhost:11434",
            "none",
            None,
            {
                "chat": "v1/chat/completions",
                "chat/completions": "v1/chat/completions",
                "completions": "v1/completions",
                "embeddings": "v1/embeddings",
                "api/chat": "api/chat",
                "api/generate": "api/generate",
                "api/embed": "api/embed",
            },
            stream_formats={"api/chat": "ndjson", "api/generate": "ndjson"},
            base_url_env="OLLAMA_HOST",
        ),
        ProviderSpec(
            "exa",
            "https://api.exa.ai",
            "x-api-key",
            "EXA_API_KEY",
            {
                "search": "search",
                "contents": "contents",
                "findSimilar": "findSimilar",
                "answer": "answer",
            },
            sdk=False,
        ),
        ProviderSpec("openai_compatible", None, "bearer", None, _OPENAI_STYLE),
    )
}
_ALIASES = {
    "vllm": "openai_compatible",
    "llamacpp": "openai_compatible",
    "llama.cpp": "openai_compatible",
    "openai-compatible": "openai_compatible",
    "custom": "openai_compatible",
}


def provider_config(provider: str, endpoint: str, **overrides: Any) -> EndpointConfig:
    """The :class:`EndpointConfig` for ``provider``'s ``endpoint``, with ``overrides``.

    Raises:
        ConfigurationError: unknown provider, or no base URL for an OpenAI-compatible one.
    """
    key = provider.lower()
    key = _ALIASES.get(key, key)
    spec = PROVIDERS.get(key)
    if spec is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigurationError(
            f"unknown provider {provider!r}; known: {known}. For any OpenAI-compatible "
            "server use provider='openai_compatible' with base_url=..."
        )
    path = spec.endpoints.get(endpoint, endpoint).lstrip("/")
    base_url = overrides.pop("base_url", None)
    if base_url is None and spec.base_url_env:
        env = os.environ.get(spec.base_url_env)
        if env:
            base_url = env if env.startswith(("http://", "https://")) else f"http://{env}"
    base_url = base_url or spec.base_url
    if base_url is None:
        raise ConfigurationError(
            f"provider {provider!r} needs base_url=... (for example 'http://localhost:8000/v1')"
        )
    auth_type: AuthType = spec.auth_type
    api_key_env = spec.api_key_env
    if key == "openai_compatible" and "api_key" not in overrides and "api_key_env" not in overrides:
        auth_type = "none"
    if "api_key" in overrides or "api_key_env" in overrides:
        api_key_env = overrides.pop("api_key_env", None)
        if overrides.get("api_key") is not None and auth_type == "none":
            auth_type = "bearer"
    values: dict[str, Any] = {
        "name": overrides.pop("name", f"{key}:{endpoint}"),
        "provider": key,
        "base_url": base_url,
        "endpoint": path,
        "auth_type": overrides.pop("auth_type", auth_type),
        "api_key_env": api_key_env,
        "default_headers": {**spec.default_headers, **overrides.pop("default_headers", {})},
        "stream_format": overrides.pop("stream_format", spec.stream_formats.get(endpoint, "sse")),
    }
    if values["auth_type"] == "none":
        values["api_key_env"] = None
    values.update(overrides)
    from headway.http.config import EndpointConfig

    return EndpointConfig(**values)


def match_endpoint(
    provider: str,
    endpoint: str,
    *,
    policy: Any = None,
    transport: Transport | None = None,
    clock: Clock | None = None,
    **overrides: Any,
) -> Endpoint:
    """A configured :class:`Endpoint` for ``provider``'s ``endpoint``.

    ``overrides`` are :class:`EndpointConfig` fields (``api_key``, ``rpm``, ``tpm``,
    ``concurrency``, ``defaults``, ``base_url``, ...). Providers: openai (chat,
    chat/completions, embeddings, responses), anthropic (messages), perplexity, groq,
    openrouter, ollama (``chat`` via ``/v1``; ``api/chat``, ``api/generate`` streamed as
    NDJSON), exa (search, contents), and ``openai_compatible`` (aliases ``vllm``,
    ``llamacpp``) for any OpenAI-compatible server given its ``base_url``.
    """
    config = provider_config(provider, endpoint, **overrides)
    from headway.http.endpoint import Endpoint

    return Endpoint(config, policy=policy, transport=transport, clock=clock)
