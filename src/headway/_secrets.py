"""Keep secrets out of reprs, logs, errors and files.

>>> redact_url("https://user:pw@api.example.com/v1/x?api_key=abc&q=1")
'https://***@api.example.com/v1/x?api_key=***&q=1'
>>> mask_headers({"Authorization": "Bearer sk-123456789", "X-Api-Token": "t0k", "Accept": "json"})
{'Authorization': 'Bearer ***', 'X-Api-Token': '***', 'Accept': 'json'}
>>> scrub_text("GET https://u:pw@h/x failed with key sk-123456789", ["sk-123456789"])
'GET https://***@h/x failed with key ***'
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "SECRET_HEADERS",
    "SECRET_PARAMS",
    "Secret",
    "is_secret_header",
    "looks_like_key",
    "mask_headers",
    "mask_value",
    "redact_url",
    "scrub_text",
    "secret_values",
]

MASK = "***"

#: Header names (lower case) whose values are credentials.
SECRET_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "openai-api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
    }
)

#: Query parameter names (lower case) whose values are credentials.
SECRET_PARAMS: frozenset[str] = frozenset(
    {"key", "api_key", "apikey", "api-key", "token", "access_token", "secret", "password", "sig"}
)


#: Parts of a header name that mark its value as a credential (``X-Api-Token``, ...).
SECRET_NAME_PARTS = ("key", "token", "secret", "auth", "cookie", "password", "signature")

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


class Secret:
    """A credential that never shows itself: its ``repr`` and ``str`` are masked.

    What :class:`pydantic.SecretStr` does for a key, without importing pydantic (the
    start-up of ``headway run``). The value comes back only from :meth:`get_secret_value`.

    >>> key = Secret("sk-123456789")
    >>> key, str(key), f"{key}"
    (Secret('**********'), '**********', '**********')
    >>> key.get_secret_value()
    'sk-123456789'
    >>> key == Secret("sk-123456789"), len(key)
    (True, 12)
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The credential itself (send it; never print it)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)


def is_secret_header(name: str, extra: Collection[str] = ()) -> bool:
    """Whether a header named ``name`` carries a credential.

    The well-known names (:data:`SECRET_HEADERS`), any name containing one of
    :data:`SECRET_NAME_PARTS` (but not rate-limit headers such as
    ``x-ratelimit-remaining-tokens``, which are counts), and the lower-case names in
    ``extra`` (the headers an endpoint's own authentication sets).
    """
    low = name.lower()
    if low in SECRET_HEADERS or low in extra:
        return True
    if "ratelimit" in low or "rate-limit" in low:  # x-ratelimit-remaining-tokens: a count
        return False
    return any(part in low for part in SECRET_NAME_PARTS)


def mask_value(value: str) -> str:
    """Mask a credential, keeping an auth scheme such as ``Bearer`` readable."""
    scheme, sep, _ = value.partition(" ")
    if sep and scheme.lower() in {"bearer", "basic", "token", "digest"}:
        return f"{scheme} {MASK}"
    return MASK


def mask_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
    extra: Collection[str] = (),
) -> dict[str, str]:
    """Return a copy of ``headers`` with credential values masked (:func:`is_secret_header`)."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (mask_value(v) if is_secret_header(k, extra) else v) for k, v in items}


def secret_values(headers: Mapping[str, str] | None, extra: Collection[str] = ()) -> list[str]:
    """The credential values in ``headers`` (whole values and, for ``Bearer x``, ``x``)."""
    values: list[str] = []
    if not headers:
        return values
    for name, value in headers.items():
        if value and is_secret_header(name, extra):
            values.append(value)
            _, sep, rest = value.partition(" ")
            if sep and rest:
                values.append(rest)
    return values


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every value of ``secrets`` masked and URL user info redacted.

    For messages that quote another library's exception (which may quote the request).
    Values shorter than 4 characters are left alone (they would mask ordinary words).
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return text


def redact_url(url: object) -> str:
    """Return ``url`` with user info and credential query parameters masked."""
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_KEY_PREFIXES = (
    "sk-",
    "sk_",
    "rk-",
    "pk-",
    "xai-",
    "gsk_",
    "aiza",
    "hf_",
    "ghp_",
    "github_pat_",
    "glpat-",
    "r8_",
    "pplx-",
    "nvapi-",
    "fw_",
    "key-",
    "bearer ",
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def looks_like_key(value: str) -> bool:
    """True when ``value``, given where a variable *name* is expected, looks like a key.

    Callers then say so without echoing the value.

    >>> looks_like_key("sk-proj-abc123"), looks_like_key("OPENAI_API_KEY")
    (True, False)
    >>> looks_like_key("3f9a1c0e7b2d4a6f8e0c1b3d5f7a9c2e"), looks_like_key("MY-KEY")
    (True, False)
    """
    v = value.strip()
    if v.lower().startswith(_KEY_PREFIXES):
        return True
    if not _ENV_NAME.fullmatch(v):
        return len(v) >= 16
    has_digit = any(c.isdigit() for c in v)
    mixed = any(c.islower() for c in v) and any(c.isupper() for c in v)
    return len(v) >= 20 and has_digit and (mixed or "_" not in v)
