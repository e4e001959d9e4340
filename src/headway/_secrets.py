"""Keep secrets out of reprs, logs, errors and files.

>>> redact_url("https://user:pw@api.example.com/v1/x?api_key=abc&q=1")
'https://***@api.example.com/v1/x?api_key=***&q=1'
>>> mask_headers({"Authorization": "Bearer sk-123456789", "Accept": "json"})
{'Authorization': 'Bearer ***', 'Accept': 'json'}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "SECRET_HEADERS",
    "SECRET_PARAMS",
    "looks_like_key",
    "mask_headers",
    "mask_value",
    "redact_url",
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


def mask_value(value: str) -> str:
    """Mask a credential, keeping an auth scheme such as ``Bearer`` readable."""
    scheme, sep, _ = value.partition(" ")
    if sep and scheme.lower() in {"bearer", "basic", "token", "digest"}:
        return f"{scheme} {MASK}"
    return MASK


def mask_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None,
) -> dict[str, str]:
    """Return a copy of ``headers`` with credential values masked."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: (mask_value(v) if k.lower() in SECRET_HEADERS else v) for k, v in items}


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
