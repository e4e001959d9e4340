"""headway.http.config: EndpointConfig."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from headway.errors import ConfigurationError
from headway.http import EndpointConfig

SECRET = "sk-very-secret-123"


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
