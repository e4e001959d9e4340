"""Build request headers: content type, authentication and defaults.

>>> from pydantic import SecretStr
>>> h = HeaderFactory.get_header(auth_type="bearer", api_key=SecretStr("sk-test"))
>>> h["Authorization"], h["Content-Type"]
('Bearer sk-test', 'application/json')
>>> HeaderFactory.get_header(auth_type="x-api-key", api_key="k", content_type=None)
{'x-api-key': 'k'}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import SecretStr

from headway.errors import ConfigurationError

__all__ = ["AuthType", "HeaderFactory"]

AuthType = Literal["bearer", "x-api-key", "none"]


class HeaderFactory:
    """Builds the headers of an API's requests (stateless)."""

    @staticmethod
    def get_content_type_header(content_type: str = "application/json") -> dict[str, str]:
        """``{"Content-Type": content_type}``."""
        return {"Content-Type": content_type}

    @staticmethod
    def get_bearer_auth_header(api_key: str) -> dict[str, str]:
        """``{"Authorization": "Bearer <key>"}``."""
        return {"Authorization": f"Bearer {api_key}"}

    @staticmethod
    def get_x_api_key_header(api_key: str) -> dict[str, str]:
        """``{"x-api-key": "<key>"}``."""
        return {"x-api-key": api_key}

    @staticmethod
    def get_header(
        *,
        auth_type: AuthType,
        content_type: str | None = "application/json",
        api_key: str | SecretStr | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Headers for a request: content type, then auth, then ``default_headers``.

        Raises:
            ConfigurationError: ``auth_type`` needs a key and none (or an empty one) was
                given, or ``auth_type`` is unknown.
        """
        headers: dict[str, str] = {}
        if content_type:
            headers["Content-Type"] = content_type
        if auth_type != "none":
            key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
            if not key:
                raise ConfigurationError(
                    f"auth_type={auth_type!r} needs an API key and none was given: pass "
                    "api_key=... or api_key_env='NAME_OF_ENV_VAR', or use auth_type='none'"
                )
            if auth_type == "bearer":
                headers["Authorization"] = f"Bearer {key}"
            elif auth_type == "x-api-key":
                headers["x-api-key"] = key
            else:
                raise ConfigurationError(
                    f"unknown auth_type {auth_type!r}: use 'bearer', 'x-api-key' or 'none'"
                )
        if default_headers:
            headers.update(default_headers)
        return headers
