"""EndpointConfig: everything needed to call one API endpoint, validated (pydantic v2).

>>> cfg = EndpointConfig(name="chat", base_url="https://api.openai.com/v1",
...                      endpoint="chat/completions", api_key="sk-secret")
>>> cfg.full_url()
'https://api.openai.com/v1/chat/completions'
>>> "sk-secret" in repr(cfg)
False
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FieldSerializationInfo,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from headway._secrets import looks_like_key, mask_headers, redact_url
from headway.errors import ConfigurationError
from headway.http.headers import AuthType, HeaderFactory
from headway.http.tokens import TokenMethod

__all__ = ["EndpointConfig"]

_PARAM = re.compile(r"{(\w+)}")


class EndpointConfig(BaseModel):
    """How to call one endpoint of one provider.

    Attributes:
        name: a name for logs, errors and limiter keys.
        provider: the provider (``"openai"``, ``"anthropic"``, ...; free text).
        base_url: the API root, such as ``"https://api.openai.com/v1"``.
        endpoint: the path under ``base_url``; ``{param}`` placeholders are filled from
            ``endpoint_params`` (and per call).
        endpoint_params: values for the path's placeholders.
        method: the HTTP method.
        transport_type: ``"http"`` (headway's own transport) or ``"sdk"`` (the official
            ``openai.AsyncOpenAI`` client, with its retries off; ``headway[openai]``).
        api_key: the key itself (kept as a :class:`~pydantic.SecretStr`).
        api_key_env: the name of an environment variable holding the key; read when the
            endpoint opens. A missing variable is a :class:`~headway.ConfigurationError`.
        auth_type: ``"bearer"``, ``"x-api-key"`` or ``"none"``.
        auth_header: send the key as is in this header (``"X-Api-Token"``) instead of
            the one ``auth_type`` names; masked wherever shown.
        content_type: the request body's content type.
        default_headers: sent with every request (masked wherever shown).
        timeout: seconds allowed to connect and between reads.
        attempt_timeout: seconds allowed for one whole attempt of a call (headers and
            body; not local queueing) by the default policy: a server trickling its body
            cannot hold a call longer. ``None`` for no bound. A stream's body is bounded
            by ``timeout`` per read only (it may rightly last long).
        max_retries: retries after the first attempt (``0`` disables retrying).
        rpm / tpm: requests and tokens per minute to stay within (``None``: no limit).
        concurrency: the most requests in flight (``None``: no limit).
        defaults: default payload values; a request's own values win.
        stream_format: how streamed responses are framed (``"sse"`` or ``"ndjson"``).
        stream_requires_end: an SSE stream must end with ``data: [DONE]`` or a
            ``message_stop`` event; one that just stops raises
            :class:`~headway.errors.StreamError`. ``False`` for servers that end streams
            by closing them.
        token_estimator: how request tokens are estimated for ``tpm``.
        transport: the HTTP library for ``transport_type="http"``.
    """

    # hide_input_in_errors: a rejected value may hold a key (a base URL with user info,
    # a key where a name belongs); validation errors say what is wrong without it.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, hide_input_in_errors=True
    )

    name: str = "endpoint"
    provider: str = "openai_compatible"
    base_url: str
    endpoint: str = ""
    endpoint_params: dict[str, str] = Field(default_factory=dict)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    transport_type: Literal["http", "sdk"] = "http"
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    auth_type: AuthType = "bearer"
    auth_header: str | None = None
    content_type: str | None = "application/json"
    default_headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(default=600.0, gt=0)
    attempt_timeout: float | None = Field(default=900.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    defaults: dict[str, Any] = Field(default_factory=dict)
    stream_format: Literal["sse", "ndjson"] = "sse"
    stream_requires_end: bool = True
    token_estimator: TokenMethod = "auto"
    transport: Literal["aiohttp", "httpx"] = "aiohttp"

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url must start with http:// or https:// (got {redact_url(value)!r})"
            )
        return value.rstrip("/")

    @field_validator("endpoint")
    @classmethod
    def _strip_endpoint(cls, value: str) -> str:
        return value.strip().lstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _hide_key_given_as_env_name(cls, data: Any) -> Any:
        # A key passed as api_key_env must not travel on as the error's input value.
        if isinstance(data, dict):
            value = data.get("api_key_env")
            if isinstance(value, str) and looks_like_key(value):
                return {**data, "api_key_env": "<a key, not shown>"}
        return data

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and (
            looks_like_key(value) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value)
        ):
            raise ValueError(
                "api_key_env is the NAME of an environment variable (like 'OPENAI_API_KEY'); "
                "the value given looks like a key, not a variable name (not shown): pass the "
                "key itself as api_key"
            )
        return value

    @field_serializer("default_headers")
    def _mask_headers(self, value: dict[str, str], info: FieldSerializationInfo) -> dict[str, str]:
        # Credentials in headers never reach JSON (files, logs); Python dumps keep them.
        if not info.mode_is_json():
            return value
        return mask_headers(value, self.secret_header_names())

    @field_serializer("base_url")
    def _redact_base_url(self, value: str, info: FieldSerializationInfo) -> str:
        # User info (https://user:secret@host) never reaches JSON; Python dumps keep it.
        return redact_url(value) if info.mode_is_json() else value

    @model_validator(mode="after")
    def _check_auth(self) -> EndpointConfig:
        if self.auth_type == "none" or self.api_key is not None or self.api_key_env:
            return self
        raise ValueError(
            f"auth_type={self.auth_type!r} needs api_key or api_key_env "
            "(or set auth_type='none' for a server without authentication)"
        )

    def resolve_api_key(self) -> SecretStr | None:
        """The key: ``api_key``, else the ``api_key_env`` variable; ``None`` for no auth.

        Raises:
            ConfigurationError: ``api_key_env`` names a variable that is unset or empty.
        """
        if self.auth_type == "none":
            return None
        if self.api_key is not None:
            return self.api_key
        name = self.api_key_env or ""
        value = os.environ.get(name)
        if not value:
            raise ConfigurationError(
                f"environment variable {name} is not set (endpoint {self.name!r} needs it "
                f"for its API key): export {name}=... or pass api_key=..."
            )
        return SecretStr(value)

    def headers(self) -> dict[str, str]:
        """The request headers: content type, auth, ``default_headers`` (resolves the key)."""
        return HeaderFactory.get_header(
            auth_type=self.auth_type,
            content_type=self.content_type,
            api_key=self.resolve_api_key(),
            default_headers=self.default_headers,
            auth_header=self.auth_header,
        )

    def secret_header_names(self) -> frozenset[str]:
        """Lower-case names of the headers that carry this endpoint's key (masked)."""
        return HeaderFactory.auth_header_names(self.auth_type, self.auth_header)

    def path(self, params: dict[str, str] | None = None) -> str:
        """The endpoint path with its ``{param}`` placeholders filled.

        Raises:
            ConfigurationError: a placeholder has no value.
        """
        if "{" not in self.endpoint:
            return self.endpoint
        values = {**self.endpoint_params, **(params or {})}

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in values:
                raise ConfigurationError(
                    f"endpoint {self.endpoint!r} needs a value for {{{key}}}: "
                    f"pass endpoint_params={{'{key}': ...}}"
                )
            return str(values[key])

        return _PARAM.sub(fill, self.endpoint)

    def full_url(self, params: dict[str, str] | None = None) -> str:
        """``base_url`` joined with :meth:`path`."""
        path = self.path(params)
        return f"{self.base_url}/{path}" if path else self.base_url

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            if key == "default_headers":
                yield key, mask_headers(value, self.secret_header_names())
            elif key == "base_url":
                yield key, redact_url(value)
            else:
                yield key, value
