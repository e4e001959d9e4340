"""The headway error taxonomy.

Every error headway raises derives from :class:`HeadwayError`. Errors that describe an
API's answer (or the lack of one) derive from :class:`APIClientError` and carry the
status code, case-insensitive headers, a size-bounded parsed body, the request id and
the method and URL with secrets redacted.

Which errors are transient (worth retrying)?

======================================  =========  ===================================
error                                   transient  why
======================================  =========  ===================================
:class:`APIConnectionError`             yes        network trouble passes
:class:`APITimeoutError`                yes        the server may answer next time
:class:`RateLimitError` (429)           yes        wait ``retry_after`` and try again
:class:`ServerError` (5xx, 529)         yes        the provider's trouble
:class:`APIClientError` 408 / 409       yes        as the official SDKs do
:class:`InvalidResponseError`           yes        a truncated or garbled body
:class:`MaxWaitExceededError`           yes        a local limiter would wait too long
:class:`BackendUnavailableError`        yes        Redis is down (``on_backend_error='fail'``)
:class:`CircuitBreakerOpenError`        no [1]_    fail fast; retry after ``retry_after``
:class:`QuotaExceededError`             no         billing or quota exhausted
:class:`AuthenticationError` (401/403)  no         fix the key
:class:`ResourceNotFoundError` (404)    no         fix the URL or model
:class:`BadRequestError` (400/422)      no         fix the request
:class:`RequestTooLargeError`           no         larger than the limit's capacity
:class:`ConfigurationError`             no         fix the configuration
:class:`ExecutorShutdownError`          no         the executor is closed
======================================  =========  ===================================

.. [1] A policy does not spin on an open breaker; the error tells when to come back.

A server's ``x-should-retry: true|false`` header overrides the table for that error.

>>> err = RateLimitError("slow down", status_code=429, retry_after=2.0)
>>> err.retryable, err.retry_after
(True, 2.0)
>>> is_retryable(AuthenticationError("bad key", status_code=401))
False
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from multidict import CIMultiDict, CIMultiDictProxy

from headway._secrets import mask_headers, redact_url

__all__ = [
    "APIClientError",
    "APIConnectionError",
    "APITimeoutError",
    "AuthenticationError",
    "BackendUnavailableError",
    "BadRequestError",
    "CircuitBreakerOpenError",
    "ConfigurationError",
    "ExecutorShutdownError",
    "HeadwayError",
    "InvalidResponseError",
    "QuotaExceededError",
    "RateLimitError",
    "MaxWaitExceededError",
    "RequestTooLargeError",
    "ResourceNotFoundError",
    "ServerError",
    "status_error_code",
    "StreamError",
    "error_class",
    "error_code",
    "is_retryable",
]

#: Largest body kept on an error, in characters of its text form.
MAX_BODY_CHARS = 8192

_EMPTY_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class HeadwayError(Exception):
    """Base class of every error headway raises."""

    #: Whether retrying may help, for the class; see :attr:`retryable`.
    transient: ClassVar[bool] = False

    @property
    def retryable(self) -> bool:
        """Whether retrying may help (the table in :mod:`headway.errors`)."""
        return self.transient


class ConfigurationError(HeadwayError, ValueError):
    """A setting is missing or invalid; the message says which and how to fix it."""


class ExecutorShutdownError(HeadwayError, RuntimeError):
    """Work was submitted to an executor that is shut down or shutting down."""


class RequestTooLargeError(HeadwayError, ValueError):
    """A reservation asks for more than a limit can ever hold (more than ``max_tokens``)."""

    def __init__(self, message: str, *, requested: float = 0.0, capacity: float = 0.0) -> None:
        super().__init__(message)
        self.requested = requested
        self.capacity = capacity


class MaxWaitExceededError(HeadwayError):
    """A local limiter refused to wait: the wait would exceed ``max_wait``.

    ``retry_after`` is the wait that was refused, in seconds.
    """

    transient = True

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = max(0.0, retry_after)


class BackendUnavailableError(HeadwayError):
    """A shared state backend (Redis) is unreachable and ``on_backend_error="fail"``.

    Transient: the backend reconnects by itself. Use ``on_backend_error="local"`` (the
    default) to keep calling at a share of the global rate during an outage instead.
    """

    transient = True


class CircuitBreakerOpenError(HeadwayError):
    """The circuit breaker is open: the call was rejected without being made.

    ``retry_after`` (>= 0) says when the breaker will let a trial call through.
    """

    def __init__(
        self, message: str | None = None, *, retry_after: float = 0.0, name: str | None = None
    ) -> None:
        self.retry_after = max(0.0, float(retry_after))
        self.name = name
        if message is None:
            who = f" ({name!r})" if name else ""
            message = (
                f"Circuit breaker is open{who}: calls are rejected for "
                f"{self.retry_after:.2f}s more while the service recovers"
            )
        super().__init__(message)


def _bound_body(body: Any) -> Any:
    """Keep a parsed body small enough to log and pickle."""
    if body is None:
        return None
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        if len(body) > MAX_BODY_CHARS:
            return body[:MAX_BODY_CHARS] + f"... [{len(body) - MAX_BODY_CHARS} more characters]"
        return body
    try:
        text = json.dumps(body, default=str)
    except (TypeError, ValueError):
        return _bound_body(repr(body))
    if len(text) > MAX_BODY_CHARS:
        return _bound_body(text)
    return body


class APIClientError(HeadwayError):
    """An API call failed; base of every error about an API's answer.

    Attributes:
        status_code: the HTTP status, or ``None`` when no response arrived.
        headers: the response headers, case-insensitive (read-only).
        body: the parsed response body (JSON or text), bounded in size.
        request_id: the server's request id (``x-request-id`` and kin), if any.
        method: the HTTP method of the request.
        url: the request URL with credentials redacted.
        should_retry: the server's ``x-should-retry`` verdict, if it gave one.
    """

    #: Status codes that are transient for a generic error (as the official SDKs).
    TRANSIENT_STATUSES: ClassVar[frozenset[int]] = frozenset({408, 409})

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: Any = None,
        request_id: str | None = None,
        method: str | None = None,
        url: object = None,
    ) -> None:
        self.status_code = status_code
        self.headers: CIMultiDictProxy[str] = (
            _EMPTY_HEADERS if headers is None else CIMultiDictProxy(CIMultiDict(headers))
        )
        self.body = _bound_body(body)
        self.request_id = request_id or _request_id(self.headers)
        self.method = method
        self.url = None if url is None else redact_url(url)
        self.message = message
        flag = self.headers.get("x-should-retry", "").strip().lower()
        self.should_retry: bool | None = {"true": True, "false": False}.get(flag)
        super().__init__(self._full_message())

    def _full_message(self) -> str:
        parts = [self.message]
        where = " ".join(p for p in (self.method, self.url) if p)
        extra = [where] if where else []
        if self.request_id:
            extra.append(f"request_id={self.request_id}")
        if extra:
            parts.append(f"({', '.join(extra)})")
        return " ".join(parts)

    @property
    def retryable(self) -> bool:
        if self.should_retry is not None:
            return self.should_retry
        return self._default_retryable()

    def _default_retryable(self) -> bool:
        code = self.status_code
        return code is not None and (code in self.TRANSIENT_STATUSES or code >= 500)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                type(self),
                self.message,
                {
                    "status_code": self.status_code,
                    "headers": list(self.headers.items()),
                    "body": self.body,
                    "request_id": self.request_id,
                    "method": self.method,
                    "url": self.url,
                },
                {k: v for k, v in self.__dict__.items() if k != "headers"},
            ),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r}, "
            f"request_id={self.request_id!r}, headers={mask_headers(self.headers)!r})"
        )


def _rebuild(
    cls: type[APIClientError], message: str, kw: dict[str, Any], state: dict[str, Any]
) -> Any:
    obj = cls.__new__(cls)
    APIClientError.__init__(obj, message, **kw)
    obj.__dict__.update(state)
    return obj


def _request_id(headers: Mapping[str, str]) -> str | None:
    for name in ("x-request-id", "request-id", "openai-request-id", "cf-ray"):
        value = headers.get(name)
        if value:
            return value
    return None


class APIConnectionError(APIClientError, ConnectionError):
    """No answer: the connection failed, was refused or was reset."""

    def __init__(self, message: str = "", **kwargs: Any) -> None:
        if not message.startswith("Connection error: "):
            message = f"Connection error: {message}" if message else "Connection error."
        super().__init__(message, **kwargs)

    def _default_retryable(self) -> bool:
        return True


class APITimeoutError(APIClientError, TimeoutError):
    """The request (or one attempt of it) took longer than its deadline."""

    def __init__(self, message: str = "Request timed out.", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)

    def _default_retryable(self) -> bool:
        return True


class InvalidResponseError(APIClientError):
    """The server answered with something that cannot be parsed (garbled or truncated)."""

    def _default_retryable(self) -> bool:
        return True


class StreamError(APIClientError):
    """A stream broke off or carried an error event in its middle."""

    def _default_retryable(self) -> bool:
        return True


class BadRequestError(APIClientError):
    """400 or 422: the request is malformed or rejected; fix it, don't retry it."""

    def _default_retryable(self) -> bool:
        return False


class AuthenticationError(APIClientError):
    """401 or 403: the key is missing, wrong or lacks permission."""

    def _default_retryable(self) -> bool:
        return False


class ResourceNotFoundError(APIClientError):
    """404: the path, model or resource does not exist."""

    def _default_retryable(self) -> bool:
        return False


class RateLimitError(APIClientError):
    """429 for rate: the provider's rate limit was hit; ``retry_after`` is its requested delay.

    Attributes:
        retry_after: the delay the server asked for (seconds), or ``None``.
        bucket_empty: whether the server said its bucket is empty (remaining 0, or a
            429 without rate-limit headers, the default). A :class:`~headway.Policy`
            then pauses everyone sharing the limiter; otherwise it backs off just the
            request that got the 429.

    A quota or billing 429 is a :class:`QuotaExceededError`, which is *not* a
    ``RateLimitError``: ``except RateLimitError`` is about rate only.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        bucket_empty: bool = True,
        **kwargs: Any,
    ) -> None:
        self.retry_after = None if retry_after is None else max(0.0, float(retry_after))
        self.bucket_empty = bucket_empty
        super().__init__(message, **kwargs)

    def _default_retryable(self) -> bool:
        return True


class QuotaExceededError(APIClientError):
    """429 with an exhausted quota or billing limit: waiting won't help; never retried.

    Not a :class:`RateLimitError` (that one is about rate only). Never retried, even
    with ``x-should-retry: true`` (the one exception to the header's rule).
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = None if retry_after is None else max(0.0, float(retry_after))
        super().__init__(message, **kwargs)

    def _default_retryable(self) -> bool:
        return False

    @property
    def retryable(self) -> bool:
        return False  # quota is not rate: waiting won't help, whatever the headers say


class ServerError(APIClientError):
    """5xx or 529 (overloaded): the provider's trouble; transient.

    ``retry_after`` is the delay the server asked for (a 503's or 529's ``Retry-After``),
    or ``None``; a retry waits it instead of its own backoff.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = None if retry_after is None else max(0.0, float(retry_after))
        super().__init__(message, **kwargs)

    def _default_retryable(self) -> bool:
        return True


_NEVER_RETRY = (
    AuthenticationError,
    ResourceNotFoundError,
    BadRequestError,
    QuotaExceededError,
    RequestTooLargeError,
    ConfigurationError,
    ExecutorShutdownError,
)


# Built once: ``isinstance(exc, A | B)`` would build a union object on every call.
_CANCELLED_OR_EXIT = (asyncio.CancelledError, KeyboardInterrupt, SystemExit)
_CANCELLED_OR_EXIT_OR_GEN = (*_CANCELLED_OR_EXIT, GeneratorExit)
_TRANSIENT_BUILTIN = (TimeoutError, ConnectionError)


def error_class(status: int, *, quota: bool = False) -> type[APIClientError]:
    """The error class for an HTTP ``status`` >= 400: headway's one status table.

    ``quota``: the 429's body says a quota or billing limit is exhausted.

    >>> error_class(429).__name__, error_class(429, quota=True).__name__
    ('RateLimitError', 'QuotaExceededError')
    >>> error_class(503).__name__, error_class(418).__name__
    ('ServerError', 'APIClientError')
    """
    if status == 429:
        return QuotaExceededError if quota else RateLimitError
    if status in (401, 403):
        return AuthenticationError
    if status == 404:
        return ResourceNotFoundError
    if status in (400, 422):
        return BadRequestError
    if status >= 500:
        return ServerError
    return APIClientError


# The short codes failed results carry, most specific first.
_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (QuotaExceededError, "insufficient_quota"),
    (RateLimitError, "rate_limit_exceeded"),
    (AuthenticationError, "authentication_error"),
    (ResourceNotFoundError, "not_found"),
    (BadRequestError, "bad_request"),
    (APITimeoutError, "timeout"),
    (APIConnectionError, "connection_error"),
    (InvalidResponseError, "invalid_response"),
    (StreamError, "stream_error"),
    (ServerError, "server_error"),
    (CircuitBreakerOpenError, "circuit_open"),
    (RequestTooLargeError, "request_too_large"),
    (MaxWaitExceededError, "local_rate_limit"),
    (TimeoutError, "timeout"),
    (ConnectionError, "connection_error"),
)


def error_code(exc: BaseException) -> str:
    """The short code a failed result carries for ``exc`` (``rate_limit_exceeded``, ...).

    >>> error_code(ServerError("boom", status_code=503))
    'server_error'
    >>> error_code(APIClientError("teapot", status_code=418))
    'http_418'
    """
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, APIClientError) and exc.status_code is not None:
        return f"http_{exc.status_code}"
    if isinstance(exc, APIClientError):
        return "api_error"
    return "internal_error"


def status_error_code(status: int) -> str:
    """The error code of an HTTP ``status`` >= 400 (by :func:`error_class`).

    >>> status_error_code(429), status_error_code(502), status_error_code(418)
    ('rate_limit_exceeded', 'server_error', 'http_418')
    """
    cls = error_class(status)
    for known, code in _CODES:
        if cls is known:
            return code
    return f"http_{status}"


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is transient by headway's rules (the table above).

    Cancellation is never retryable. Builtin timeouts and connection errors are.
    Any other non-headway exception is not.
    """
    if isinstance(exc, _CANCELLED_OR_EXIT):
        return False
    if isinstance(exc, HeadwayError):
        return bool(exc.retryable)
    return isinstance(exc, _TRANSIENT_BUILTIN)


def _transient(exc: BaseException) -> bool:
    """``not never_retry(exc) and is_retryable(exc)`` in one pass (the retry hot path)."""
    if isinstance(exc, HeadwayError):
        return not never_retry(exc) and bool(exc.retryable)
    return isinstance(exc, _TRANSIENT_BUILTIN) and not isinstance(exc, _CANCELLED_OR_EXIT_OR_GEN)


def never_retry(exc: BaseException) -> bool:
    """Whether ``exc`` must never be retried, whatever a retry policy says.

    True for cancellation, authentication, not-found, bad-request, quota and
    configuration errors, and for an API error whose server said ``x-should-retry: false``.
    An API error whose server said ``x-should-retry: true`` is never in this set, whatever
    its status (quota errors excepted): the header wins (so :func:`is_retryable` and
    :meth:`RetryPolicy.should_retry <headway.resilience.retry.RetryPolicy.should_retry>`
    agree).
    """
    if isinstance(exc, _CANCELLED_OR_EXIT_OR_GEN):
        return True
    if not isinstance(exc, HeadwayError):
        return False  # every error below is a HeadwayError
    if isinstance(exc, QuotaExceededError):
        return True  # quota is not rate: never retried, whatever the headers say
    if isinstance(exc, APIClientError) and exc.should_retry is not None:
        return not exc.should_retry  # the server's verdict wins over the table
    return isinstance(exc, _NEVER_RETRY)
