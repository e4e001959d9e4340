"""Map an HTTP status (and body) to the exact :mod:`headway.errors` class.

======================  ==========================================================
status                  error
======================  ==========================================================
400, 422                :class:`~headway.errors.BadRequestError`
401, 403                :class:`~headway.errors.AuthenticationError`
404                     :class:`~headway.errors.ResourceNotFoundError`
429                     :class:`~headway.errors.RateLimitError` (``retry_after`` from
                        ``retry-after-ms`` / ``Retry-After``), or
                        :class:`~headway.errors.QuotaExceededError` when the body says
                        ``insufficient_quota`` (or another exhausted quota/billing code)
5xx, 529                :class:`~headway.errors.ServerError`
anything else >= 400    :class:`~headway.errors.APIClientError`
======================  ==========================================================

>>> err = error_for_status(429, {"retry-after": "2"}, b'{"error": {"message": "slow"}}',
...                        "POST", "https://api.example.com/v1/x")
>>> type(err).__name__, err.retry_after, err.message
('RateLimitError', 2.0, '429 Too Many Requests: slow')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from headway import _json
from headway._secrets import MASK
from headway.errors import APIClientError, error_class
from headway.http.ratelimit_headers import parse_retry_after, rate_limit_error

__all__ = ["error_for_status", "error_message", "parse_body"]

_QUOTA_CODES = ("insufficient_quota", "quota_exceeded", "billing_hard_limit_reached")
_HINTS = {
    401: " (check the API key)",
    403: " (the key lacks permission for this resource)",
    404: " (check the URL, path and model name)",
}


def parse_body(content: bytes) -> Any:
    """The body as JSON when it parses, else as text; ``None`` when empty."""
    if not content:
        return None
    try:
        return _json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def error_message(body: Any) -> str | None:
    """The human message an API put in its error body, if any."""
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            msg = err.get("message") or err.get("type") or err.get("code")
            return None if msg is None else str(msg)
        if isinstance(err, str):
            return err
        for key in ("message", "detail", "error_message"):
            msg = body.get(key)
            if isinstance(msg, str):
                return msg
        return None
    if isinstance(body, str):
        text = body.strip()
        return text[:300] if text else None
    return None


def _is_quota(body: Any) -> bool:
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            for key in ("code", "type"):
                value = err.get(key)
                if isinstance(value, str) and value.lower() in _QUOTA_CODES:
                    return True
        return False
    return isinstance(body, str) and any(code in body for code in _QUOTA_CODES)


def error_for_status(
    status: int,
    headers: Mapping[str, str],
    content: bytes | Any,
    method: str | None,
    url: object,
    *,
    secrets: Iterable[str] = (),
) -> APIClientError:
    """The typed error for a response with ``status`` >= 400.

    ``content`` is the raw body (bytes) or an already parsed body. ``secrets`` (the
    request's credential values) are masked in the body first: some servers echo the key
    in their 401 answer, and the error's message and body travel into logs and files.
    """
    if isinstance(content, bytes | bytearray):
        raw = bytes(content)
        for secret in secrets:
            if len(secret) >= 8 and secret.encode() in raw:
                raw = raw.replace(secret.encode(), MASK.encode())
        body = parse_body(raw)
    else:
        body = content
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Overloaded" if status == 529 else "Error"
    detail = error_message(body)
    message = f"{status} {reason}"
    if detail:
        message = f"{message}: {detail}"
    message += _HINTS.get(status, "")
    kw: dict[str, Any] = {
        "status_code": status,
        "headers": headers,
        "body": body,
        "method": method,
        "url": url,
    }
    cls = error_class(status, quota=status == 429 and _is_quota(body))
    if status == 429:
        return rate_limit_error(cls, message, **kw)
    if status >= 500:
        kw["retry_after"] = parse_retry_after(headers)
    return cls(message, **kw)
