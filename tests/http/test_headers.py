"""headway.http.headers: HeaderFactory and case-insensitive header merging."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from headway.errors import ConfigurationError
from headway.http import HeaderFactory

SECRET = "sk-very-secret-123"


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
