"""Build request headers: content type, authentication and defaults.

>>> from pydantic import SecretStr
>>> h = HeaderFactory.get_header(auth_type="bearer", api_key=SecretStr("sk-test"))
>>> h["Authorization"], h["Content-Type"]
('Bearer sk-test', 'application/json')
>>> HeaderFactory.get_header(auth_type="x-api-key", api_key="k", content_type=None)
{'x-api-key': 'k'}
>>> HeaderFactory.get_header(auth_type="bearer", api_key="k", auth_header="X-Api-Token",
...                          content_type=None)
{'X-Api-Token': 'k'}
>>> merge_headers({"authorization": "Bearer a", "Accept": "json"}, {"AUTHORIZATION": "b"})
{'Accept': 'json', 'AUTHORIZATION': 'b'}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from headway.errors import ConfigurationError

if TYPE_CHECKING:  # not imported at run time: a key that is not a str is a SecretStr
    from pydantic import SecretStr

__all__ = ["AuthType", "HeaderFactory", "merge_headers"]

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
    def auth_header_names(auth_type: AuthType, auth_header: str | None = None) -> frozenset[str]:
        """The (lower-case) names of the headers :meth:`get_header` puts the key in.

        >>> sorted(HeaderFactory.auth_header_names("bearer", "X-Custom-Key"))
        ['x-custom-key']
        """
        if auth_type == "none":
            return frozenset()
        if auth_header:
            return frozenset({auth_header.lower()})
        return frozenset({"authorization" if auth_type == "bearer" else "x-api-key"})

    @staticmethod
    def get_header(
        *,
        auth_type: AuthType,
        content_type: str | None = "application/json",
        api_key: str | SecretStr | None = None,
        default_headers: Mapping[str, str] | None = None,
        auth_header: str | None = None,
    ) -> dict[str, str]:
        """Headers for a request: content type, then auth, then ``default_headers``.

        ``auth_header`` names a custom header that carries the key as is (instead of
        ``Authorization: Bearer`` or ``x-api-key``); it is masked wherever shown.

        Raises:
            ConfigurationError: ``auth_type`` needs a key and none (or an empty one) was
                given, or ``auth_type`` is unknown.
        """
        headers: dict[str, str] = {}
        if content_type:
            headers["Content-Type"] = content_type
        if auth_type != "none":
            key = api_key
            if key is not None and not isinstance(key, str):
                key = key.get_secret_value()
            if not key:
                raise ConfigurationError(
                    f"auth_type={auth_type!r} needs an API key and none was given: pass "
                    "api_key=... or api_key_env='NAME_OF_ENV_VAR', or use auth_type='none'"
                )
            if auth_header:
                headers[auth_header] = key
            elif auth_type == "bearer":
                headers["Authorization"] = f"Bearer {key}"
            elif auth_type == "x-api-key":
                headers["x-api-key"] = key
            else:
                raise ConfigurationError(
                    f"unknown auth_type {auth_type!r}: use 'bearer', 'x-api-key' or 'none'"
                )
        if default_headers:
            headers = merge_headers(headers, default_headers)
        return headers


def merge_headers(base: Mapping[str, str], extra: Mapping[str, str] | None) -> dict[str, str]:
    """``base`` updated with ``extra``, header names compared case-insensitively.

    A name in ``extra`` replaces every spelling of it in ``base`` (``AUTHORIZATION``
    replaces ``authorization``): one value is sent, never both.
    """
    if not extra:
        return dict(base)
    lowered = {name.lower() for name in extra}
    merged = {k: v for k, v in base.items() if k.lower() not in lowered}
    merged.update(extra)
    return merged
