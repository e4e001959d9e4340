"""Token estimation, HeaderFactory, EndpointConfig and providers."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from headway.errors import ConfigurationError
from headway.http import (
    PROVIDERS,
    EndpointConfig,
    HeaderFactory,
    completion_budget,
    estimate_tokens,
    load_tiktoken,
    match_endpoint,
    provider_config,
    usage_tokens,
)

SECRET = "sk-very-secret-123"


def test_estimate_tokens_heuristic() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "x" * 40},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "y" * 8},
                    {"type": "image_url", "image_url": {"url": "u"}},
                ],
            },
        ],
        "max_tokens": 10,
    }
    # 10 + 2 + 85 (image) + 2 messages * 4 + 3 + 10
    assert estimate_tokens(body, method="heuristic") == 10 + 2 + 85 + 8 + 3 + 10
    assert estimate_tokens({"input": ["abcd", "efgh"]}, method="heuristic") == 2
    assert (
        estimate_tokens({"prompt": "abcdefgh", "n": 3, "max_tokens": 5}, method="heuristic")
        == 2 + 15
    )
    assert estimate_tokens(None) == 0
    assert estimate_tokens({}, method="heuristic") == 0
    assert estimate_tokens({"prompt": "abc"}, method="heuristic", default_completion=7) == 8


def test_estimate_tokens_auto_and_tiktoken_fall_back_or_count() -> None:
    body = {"messages": [{"role": "user", "content": "hello world " * 20}]}
    for method in ("auto", "tiktoken"):
        n = estimate_tokens(body, method=method)  # type: ignore[arg-type]
        assert 20 <= n <= 80
    assert load_tiktoken() in (True, False)  # offline here: False, and the heuristic stays


def test_completion_budget() -> None:
    assert completion_budget({"max_output_tokens": 9}) == 9
    assert completion_budget({"options": {"num_predict": 4}}) == 4
    assert completion_budget({"max_tokens": -1}, default=3) == 3
    assert completion_budget({"max_tokens": "x"}) == 0


def test_usage_tokens() -> None:
    assert usage_tokens({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == 7
    assert (
        usage_tokens(
            {"usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5}}
        )
        == 12
    )
    assert usage_tokens({"usage": {}}) is None
    assert usage_tokens({"prompt_eval_count": 2, "eval_count": 5}) == 7
    assert usage_tokens([1]) is None
    assert usage_tokens({"choices": []}) is None


def test_header_factory() -> None:
    assert (
        HeaderFactory.get_header(auth_type="bearer", api_key=SECRET)["Authorization"]
        == f"Bearer {SECRET}"
    )
    assert HeaderFactory.get_header(
        auth_type="x-api-key", api_key=SecretStr("k"), default_headers={"a": "b"}
    ) == {
        "Content-Type": "application/json",
        "x-api-key": "k",
        "a": "b",
    }
    assert HeaderFactory.get_header(auth_type="none") == {"Content-Type": "application/json"}
    with pytest.raises(ConfigurationError, match="needs an API key"):
        HeaderFactory.get_header(auth_type="bearer")
    with pytest.raises(ConfigurationError, match="needs an API key"):
        HeaderFactory.get_header(auth_type="x-api-key", api_key=SecretStr(""))
    with pytest.raises(ConfigurationError, match="unknown auth_type"):
        HeaderFactory.get_header(auth_type="basic", api_key="k")  # type: ignore[arg-type]
    assert HeaderFactory.get_content_type_header("text/plain") == {"Content-Type": "text/plain"}
    assert HeaderFactory.get_bearer_auth_header("k") == {"Authorization": "Bearer k"}
    assert HeaderFactory.get_x_api_key_header("k") == {"x-api-key": "k"}


def make(**kw: object) -> EndpointConfig:
    base = {
        "name": "t",
        "base_url": "https://api.example.com/v1/",
        "endpoint": "/items/{id}",
        "api_key": SECRET,
    }
    base.update(kw)
    return EndpointConfig(**base)  # type: ignore[arg-type]


def test_config_paths_and_secrets() -> None:
    cfg = make(
        endpoint_params={"id": "7"},
        default_headers={"Authorization": f"Bearer {SECRET}", "X-A": "1"},
        method="get",
    )
    assert cfg.base_url == "https://api.example.com/v1"
    assert cfg.method == "GET"
    assert cfg.full_url() == "https://api.example.com/v1/items/7"
    assert cfg.full_url({"id": "9"}) == "https://api.example.com/v1/items/9"
    assert SECRET not in repr(cfg)
    assert SECRET not in str(cfg)
    assert SECRET not in cfg.model_dump_json()
    assert "X-A" in repr(cfg)
    with pytest.raises(ConfigurationError, match=r"\{id\}"):
        make().path()
    assert make(endpoint="").full_url() == "https://api.example.com/v1"


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="http"):
        make(base_url="api.example.com")
    with pytest.raises(ValidationError, match="NAME of an environment variable"):
        make(api_key=None, api_key_env="sk-abc.def")
    with pytest.raises(ValidationError, match="needs api_key"):
        make(api_key=None)
    with pytest.raises(ValidationError):
        make(unknown=1)
    with pytest.raises(ValidationError):
        make(max_retries=-1)
    assert make(api_key=None, auth_type="none").resolve_api_key() is None


def test_api_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWAY_TEST_KEY", raising=False)
    cfg = make(api_key=None, api_key_env="HEADWAY_TEST_KEY")
    with pytest.raises(ConfigurationError, match="HEADWAY_TEST_KEY is not set") as info:
        cfg.headers()
    assert "HEADWAY_TEST_KEY" in str(info.value)
    monkeypatch.setenv("HEADWAY_TEST_KEY", SECRET)
    assert cfg.headers()["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(cfg)


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
