"""headway.http.providers: provider specs and match_endpoint."""

from __future__ import annotations

import pytest

from headway.errors import ConfigurationError
from headway.http import PROVIDERS, match_endpoint, provider_config


def test_providers_need_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OLLAMA_HOST"):
        monkeypatch.delenv(name, raising=False)
    for provider, spec in PROVIDERS.items():
        kw = {"base_url": "http://localhost:1/v1"} if spec.base_url is None else {}
        for endpoint in spec.endpoints:
            ep = match_endpoint(provider, endpoint, **kw)
            assert ep.client is None
            assert ep.config.provider == provider
    groq = provider_config("groq", "chat")
    assert groq.full_url() == "https://api.groq.com/openai/v1/chat/completions"
    assert groq.api_key_env == "GROQ_API_KEY"
    ollama = provider_config("ollama", "api/chat")
    assert (ollama.auth_type, ollama.stream_format) == ("none", "ndjson")
    assert ollama.full_url() == "http://localhost:11434/api/chat"
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:11434")
    assert (
        provider_config("ollama", "chat").full_url() == "http://gpu-box:11434/v1/chat/completions"
    )
    exa = provider_config("exa", "search")
    assert (exa.auth_type, exa.full_url()) == ("x-api-key", "https://api.exa.ai/search")
    assert provider_config("openrouter", "chat").base_url == "https://openrouter.ai/api/v1"
    assert (
        provider_config("perplexity", "chat").full_url()
        == "https://api.perplexity.ai/chat/completions"
    )
    assert (
        provider_config("openai", "responses").full_url() == "https://api.openai.com/v1/responses"
    )


def test_openai_compatible_and_errors() -> None:
    vllm = provider_config("vllm", "chat", base_url="http://127.0.0.1:8000/v1", api_key="k")
    assert vllm.auth_type == "bearer"
    assert vllm.api_key is not None
    env = provider_config("llamacpp", "embeddings", base_url="http://h/v1", api_key_env="LLAMA_KEY")
    assert env.auth_type == "bearer"
    assert env.api_key_env == "LLAMA_KEY"
    with pytest.raises(ConfigurationError, match="needs base_url"):
        provider_config("openai_compatible", "chat")
    with pytest.raises(ConfigurationError, match="unknown provider"):
        provider_config("nope", "chat")
    custom = provider_config("openai", "chat", rpm=100, defaults={"model": "m"}, name="mine")
    assert (custom.rpm, custom.defaults, custom.name) == (100, {"model": "m"}, "mine")
