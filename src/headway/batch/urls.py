"""Where each line goes: ``--base-url``, ``--endpoint`` and ``--request-url``, joined as meant.

The rules (``docs/batch.md`` has the table):

* ``--base-url`` is the server, with or without its API prefix: ``http://host:8000``,
  ``http://host:8000/v1``, ``https://example.com/openai/v1``. An OpenAI Batch line's
  ``"url": "/v1/chat/completions"`` joins it without doubling ``/v1``.
* ``--endpoint`` (where bare bodies go) is read *relative to the base URL* when it has no
  ``/v1`` of its own, as the OpenAI SDK reads paths: ``--base-url .../v1 --endpoint
  embeddings`` (or ``/embeddings``) posts to ``.../v1/embeddings``; ``--endpoint
  /v1/embeddings`` is taken as it is.
* A ``--base-url`` that already ends in an endpoint path (the cookbook's
  ``https://api.openai.com/v1/embeddings``) is split: the server part is the base URL and
  the path is the endpoint for bare bodies (a note says so).
* ``--request-url URL`` (the cookbook's flag) sends *every* line to that one full URL,
  whatever its own ``url`` says.

>>> join_urls("http://h/v1", "embeddings", None)
UrlPlan(base_url='http://h', endpoint='/v1/embeddings', request_path=None, note=None)
>>> join_urls("https://api.openai.com/v1/embeddings", None, None).endpoint
'/v1/embeddings'
>>> plan = join_urls(None, None, "https://api.openai.com/v1/embeddings")
>>> plan.base_url, plan.request_path
('https://api.openai.com', '/v1/embeddings')
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from headway._record import Record
from headway.batch.sender import Target
from headway.errors import ConfigurationError

__all__ = ["ENDPOINT_NAMES", "FixedTarget", "UrlPlan", "join_urls"]

#: Path endings recognised as an endpoint at the end of a ``--base-url``.
ENDPOINT_NAMES = (
    "chat/completions",
    "completions",
    "embeddings",
    "responses",
    "messages",
    "moderations",
    "rerank",
    "api/chat",
    "api/generate",
    "api/embed",
)


class UrlPlan(Record):
    """What :func:`join_urls` decided.

    Attributes:
        base_url: the server (scheme, host, port and any path prefix before ``/v1``), or
            ``None`` when no URL was given (a ``--provider`` supplies it).
        endpoint: the path bare bodies go to, or ``None`` for the default.
        request_path: with ``--request-url``, the path (and query) every line goes to.
        note: a sentence for the user when a URL was read in a way worth saying.
    """

    __slots__ = _fields = ("base_url", "endpoint", "request_path", "note")

    def __init__(
        self, base_url: str | None, endpoint: str | None, request_path: str | None, note: str | None
    ) -> None:
        self.base_url = base_url
        self.endpoint = endpoint
        self.request_path = request_path
        self.note = note


def _check(url: str, flag: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{flag} must be an http(s) URL, got {url!r}")


def _split_endpoint(path: str) -> tuple[str, str] | None:
    """(prefix, endpoint path) when ``path`` ends in a known endpoint."""
    for name in ENDPOINT_NAMES:
        if path.endswith("/" + name):
            head = path[: -len(name) - 1]
            if head.endswith("/v1"):
                return head[: -len("/v1")], f"/v1/{name}"
            return head, f"/{name}"
    return None


def join_urls(
    base_url: str | None,
    endpoint: str | None,
    request_url: str | None,
    *,
    provider_prefix: str = "",
) -> UrlPlan:
    """Apply the URL rules to ``run``'s flags; :class:`ConfigurationError` if impossible.

    ``provider_prefix``: the API prefix of the ``--provider`` (``"/v1"`` for OpenAI), for
    an ``--endpoint`` given without ``--base-url``.
    """
    if request_url is not None:
        if base_url is not None:
            raise ConfigurationError(
                "give --request-url (one full URL for every line) or --base-url, not both"
            )
        _check(request_url, "--request-url")
        parts = urlsplit(request_url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        base = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return UrlPlan(base, path, path, None)
    if base_url is None:
        return UrlPlan(None, _endpoint_path(provider_prefix, endpoint), None, None)
    _check(base_url, "--base-url")
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    note = None
    split = _split_endpoint(path)
    if split is not None and endpoint is None:
        prefix, endpoint = split
        base = urlunsplit((parts.scheme, parts.netloc, prefix, "", ""))
        note = (
            f"--base-url ends in an endpoint path: sending bare request bodies to {endpoint} "
            f"on {base} (lines with their own url keep it; --request-url sends every line "
            "to one URL)"
        )
        return UrlPlan(base, endpoint, None, note)
    prefix = path
    v1 = prefix.endswith("/v1")
    if v1:
        prefix = prefix[: -len("/v1")]
    base = urlunsplit((parts.scheme, parts.netloc, prefix, "", ""))
    return UrlPlan(base, _endpoint_path("/v1" if v1 else "", endpoint), None, note)


def _endpoint_path(api_prefix: str, endpoint: str | None) -> str | None:
    """An ``--endpoint`` read relative to the base URL's API prefix (``/v1`` or none)."""
    if endpoint is None:
        return None
    path = endpoint.strip()
    if path.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"--endpoint takes a path such as /v1/embeddings, got the URL {endpoint!r} "
            "(use --request-url for one full URL)"
        )
    if path.startswith("/v1/") or path == "/v1":
        return path
    return f"{api_prefix}/{path.lstrip('/')}"


class FixedTarget(Target):
    """A :class:`~headway.batch.sender.Target` that sends every line to one path."""

    __slots__ = ("request_path",)

    def __init__(self, target: Target, request_path: str) -> None:
        super().__init__(
            target.base_url,
            target.api_key,
            target.auth,
            target.headers,
            request_path,
            target.v1_paths,
        )
        self.request_path = request_path

    def path(self, url: str) -> str:
        """Always the ``--request-url``'s path."""
        return self.request_path
