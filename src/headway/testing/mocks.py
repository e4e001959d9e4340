"""Async mocks done right.

The classic traps of mocking async API code, solved once:

* an async context manager whose mock returns a coroutine instead of a context
  (:func:`async_cm_mock` gives an object usable both as ``await m()`` and as
  ``async with m() as x``);
* an aiohttp response whose ``json()`` is not awaitable, or a session whose ``get()``
  is awaitable but not a context manager (:func:`mock_response`,
  :func:`mock_aiohttp_session` behave like aiohttp's own objects);
* patching a headway endpoint without touching its internals (:func:`mock_endpoint`);
* a future that never completes (:func:`get_incomplete_future`), an async iterator over
  canned items (:class:`AsyncIterator`), an async callable that raises
  (:func:`raise_exception`), headway's structured logs (:func:`capture_headway_logs`).

>>> import asyncio
>>> async def main() -> tuple[int, dict[str, int]]:
...     session = mock_aiohttp_session({"GET https://api.test/x": {"a": 1}})
...     async with session.get("https://api.test/x") as resp:
...         return resp.status, await resp.json()
>>> asyncio.run(main())
(200, {'a': 1})
"""

from __future__ import annotations

import asyncio
import collections.abc as abc
import contextlib
import json as jsonlib
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, NoReturn, TypeVar
from unittest import mock

from multidict import CIMultiDict, CIMultiDictProxy

from headway.events import Event
from headway.events import logger as headway_logger

__all__ = [
    "AsyncIterator",
    "AwaitableContext",
    "CannedResponse",
    "CapturedLogs",
    "MockAPIResponses",
    "MockResponse",
    "MockSession",
    "async_cm_mock",
    "capture_headway_logs",
    "get_incomplete_future",
    "mock_aiohttp_session",
    "mock_endpoint",
    "mock_response",
    "raise_exception",
]

T = TypeVar("T")
_SENTINEL: Any = object()


def _resolve(effect: Any, value: Any) -> Any:
    """Apply ``side_effect`` semantics: raise an exception, else return the value."""
    if isinstance(effect, BaseException) or (
        isinstance(effect, type) and issubclass(effect, BaseException)
    ):
        raise effect
    return value if effect is _SENTINEL else effect


class AwaitableContext(Generic[T]):
    """Both an awaitable and an async context manager that give ``value``.

    Like aiohttp's ``session.get(...)``: ``await ctx`` and ``async with ctx as x`` both
    work. An exception as ``value`` is raised instead.
    """

    def __init__(
        self,
        value: T,
        *,
        aenter: mock.AsyncMock | None = None,
        aexit: mock.AsyncMock | None = None,
    ) -> None:
        self._value = value
        self.aenter = aenter if aenter is not None else mock.AsyncMock()
        self.aexit = aexit if aexit is not None else mock.AsyncMock(return_value=False)

    def __await__(self) -> Generator[Any, None, T]:
        async def get() -> T:
            return _resolve(self._value, self._value)  # type: ignore[no-any-return]

        return get().__await__()

    async def __aenter__(self) -> T:
        await self.aenter()
        return _resolve(self._value, self._value)  # type: ignore[no-any-return]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return bool(await self.aexit(exc_type, exc, tb))


def async_cm_mock(return_value: Any = None, *, side_effect: Any = _SENTINEL) -> mock.MagicMock:
    """A callable mock whose result works with ``await`` and with ``async with``.

    ``side_effect`` may be an exception (raised on await / enter). The mock records
    its calls as usual; ``m.aenter`` and ``m.aexit`` are :class:`~unittest.mock.AsyncMock`
    objects that record entering and leaving the context.

    >>> import asyncio
    >>> m = async_cm_mock("conn")
    >>> async def main() -> tuple[str, str]:
    ...     async with m("db") as conn:
    ...         pass
    ...     return conn, await m("db")
    >>> asyncio.run(main())
    ('conn', 'conn')
    >>> m.call_count, m.aexit.await_count
    (2, 1)
    """
    value = return_value if side_effect is _SENTINEL else side_effect
    m = mock.MagicMock(name="async_cm_mock")
    m.aenter = mock.AsyncMock(name="aenter")
    m.aexit = mock.AsyncMock(name="aexit", return_value=False)
    m.side_effect = lambda *args, **kwargs: AwaitableContext(value, aenter=m.aenter, aexit=m.aexit)
    return m


class _Content:
    """Enough of aiohttp's ``StreamReader`` to read a canned body."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self._body) if n < 0 else self._pos + n
        chunk, self._pos = self._body[self._pos : end], min(end, len(self._body))
        return chunk

    async def readline(self) -> bytes:
        end = self._body.find(b"\n", self._pos)
        end = len(self._body) if end < 0 else end + 1
        line, self._pos = self._body[self._pos : end], end
        return line

    async def readany(self) -> bytes:
        return await self.read()

    def at_eof(self) -> bool:
        return self._pos >= len(self._body)

    async def iter_chunked(self, n: int) -> abc.AsyncIterator[bytes]:
        while not self.at_eof():
            yield await self.read(n)

    async def iter_any(self) -> abc.AsyncIterator[bytes]:
        while not self.at_eof():
            yield await self.read()

    def __aiter__(self) -> abc.AsyncIterator[bytes]:
        return self._lines()

    async def _lines(self) -> abc.AsyncIterator[bytes]:
        while not self.at_eof():
            yield await self.readline()


class MockResponse:
    """An aiohttp-like response with a canned body (see :func:`mock_response`)."""

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        reason: str | None = None,
        url: str = "http://mock.invalid/",
        method: str = "GET",
        encoding: str = "utf-8",
    ) -> None:
        self.status = status
        self._body = body
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(headers or {}))
        self.reason = reason if reason is not None else _REASONS.get(status, "")
        self.url = url
        self.method = method
        self.encoding = encoding
        self.content = _Content(body)
        self.closed = False
        self.read = mock.AsyncMock(side_effect=self._read)
        self.text = mock.AsyncMock(side_effect=self._text)
        self.json = mock.AsyncMock(side_effect=self._json)
        self.release = mock.MagicMock()

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/octet-stream").split(";")[0]

    async def _read(self) -> bytes:
        return self._body

    async def _text(self, encoding: str | None = None, errors: str = "strict") -> str:
        return self._body.decode(encoding or self.encoding, errors)

    async def _json(
        self,
        *,
        encoding: str | None = None,
        loads: Callable[[str], Any] = jsonlib.loads,
        content_type: str | None = "application/json",
    ) -> Any:
        # As aiohttp: an empty body is None; another Content-Type raises ContentTypeError
        # unless content_type=None says not to check.
        if not self._body.strip():
            return None
        if content_type is not None and not _json_type(self.content_type, content_type):
            import aiohttp

            raise aiohttp.ContentTypeError(
                self._request_info(),
                (),
                status=self.status,
                message=f"Attempt to decode JSON with unexpected mimetype: {self.content_type}",
                headers=self.headers,
            )
        return loads(self._body.decode(encoding or self.encoding))

    def _request_info(self) -> Any:
        import aiohttp
        from yarl import URL

        return aiohttp.RequestInfo(URL(self.url), self.method, CIMultiDictProxy(CIMultiDict()))

    def _rewind(self) -> None:
        """Serve again: a fresh ``content`` stream, open (a reused response is whole)."""
        self.content = _Content(self._body)
        self.closed = False

    def raise_for_status(self) -> None:
        """Raise ``aiohttp.ClientResponseError`` for a 4xx/5xx status, like aiohttp."""
        if self.ok:
            return
        import aiohttp

        raise aiohttp.ClientResponseError(
            self._request_info(), (), status=self.status, message=self.reason, headers=self.headers
        )

    def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> MockResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<MockResponse {self.status} {self.reason}>"


def _json_type(actual: str, expected: str) -> bool:
    """aiohttp's test: ``application/json`` also accepts ``application/<x>+json``."""
    if expected == "application/json":
        return actual == "application/json" or (
            actual.startswith("application/") and actual.endswith("+json")
        )
    return expected in actual


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


def mock_response(
    status: int = 200,
    *,
    json: Any = _SENTINEL,
    text: str | None = None,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    reason: str | None = None,
    url: str = "http://mock.invalid/",
) -> MockResponse:
    """An aiohttp-like response: async ``json()``/``text()``/``read()``, ``content``,
    ``raise_for_status()`` and the async context-manager protocol.

    >>> import asyncio
    >>> resp = mock_response(429, json={"error": "slow"}, headers={"Retry-After": "2"})
    >>> asyncio.run(resp.json()), resp.headers["retry-after"], resp.ok
    ({'error': 'slow'}, '2', False)
    """
    hdrs = dict(headers or {})
    if json is not _SENTINEL:
        payload = jsonlib.dumps(json).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif text is not None:
        payload = text.encode()
        hdrs.setdefault("Content-Type", "text/plain; charset=utf-8")
    else:
        payload = body or b""
    return MockResponse(status, payload, hdrs, reason=reason, url=url)


ResponseSpec = MockResponse | Mapping[str, Any] | list[Any] | BaseException | type[BaseException]


def _as_response(spec: Any, method: str, url: str, kwargs: dict[str, Any]) -> MockResponse:
    if callable(spec) and not isinstance(spec, type | MockResponse):
        spec = spec(method, url, **kwargs)
    spec = _resolve(spec, spec)
    if isinstance(spec, MockResponse):
        spec.method, spec.url = method, url
        spec._rewind()
        return spec
    return mock_response(200, json=spec, url=url)


def _is_route_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    if key.startswith(("http://", "https://", "/")):
        return True
    verb, _, rest = key.partition(" ")
    return verb.isalpha() and verb.isupper() and rest.startswith(("http://", "https://", "/"))


_REQUEST_KWARGS: frozenset[str] | None = None


def _request_kwargs() -> frozenset[str]:
    """The keyword arguments aiohttp's ``ClientSession._request`` accepts."""
    global _REQUEST_KWARGS
    if _REQUEST_KWARGS is None:
        import inspect

        import aiohttp

        params = inspect.signature(aiohttp.ClientSession._request).parameters
        _REQUEST_KWARGS = frozenset(
            name for name, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
        ) | {"data", "json"}
    return _REQUEST_KWARGS


class MockSession:
    """An aiohttp-like session that answers from canned responses.

    See :func:`mock_aiohttp_session`. ``request``, ``get``, ``post``... are
    :class:`~unittest.mock.MagicMock` objects, so ``session.post.assert_called_once_with``
    works; ``session.calls`` lists ``(method, url, kwargs)`` in order.
    """

    def __init__(
        self,
        responses: Any,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: Any = None,
    ) -> None:
        self._by_key: dict[str, Iterator[Any]] = {}
        self._default: Iterator[Any] | None = None
        if isinstance(responses, Mapping):
            wrong = [k for k in responses if not _is_route_key(k)]
            if wrong:
                raise ValueError(
                    f'mock_aiohttp_session: a dict is read as answers keyed by "METHOD url" '
                    f"or url, and {wrong[0]!r} is neither; to answer every request with "
                    "this JSON, pass mock_response(json={...})"
                )
            for key, value in responses.items():
                self._by_key[key] = _sequence(value)
        else:
            self._default = _sequence(responses)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.closed = False
        # What code under test reads off a real session.
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        if timeout is None:
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=300, sock_connect=30)
        self.timeout = timeout
        self.connector = mock.MagicMock(name="connector", limit=100, limit_per_host=0)
        self.connector.closed = False
        self.request = mock.MagicMock(name="request", side_effect=self._request)
        self.get = self._verb("GET")
        self.post = self._verb("POST")
        self.put = self._verb("PUT")
        self.patch = self._verb("PATCH")
        self.delete = self._verb("DELETE")
        self.head = self._verb("HEAD")
        self.options = self._verb("OPTIONS")
        self.close = mock.AsyncMock(name="close", side_effect=self._close)

    def _verb(self, verb: str) -> mock.MagicMock:
        def send(url: Any, **kwargs: Any) -> AwaitableContext[MockResponse]:
            return self._request(verb, url, **kwargs)

        return mock.MagicMock(name=verb.lower(), side_effect=send)

    async def _close(self) -> None:
        self.closed = True
        self.connector.closed = True

    def _pick(self, method: str, url: str) -> Any:
        for key in (f"{method} {url}", url):
            source = self._by_key.get(key)
            if source is not None:
                return next(source)
        if self._default is not None:
            return next(self._default)
        raise AssertionError(f"mock_aiohttp_session has no response for {method} {url}")

    def _request(self, method: str, url: Any, **kwargs: Any) -> AwaitableContext[MockResponse]:
        if self.closed:
            raise RuntimeError("Session is closed")
        unknown = sorted(set(kwargs) - _request_kwargs())
        if unknown:
            raise TypeError(
                f"{method.lower()}() got an unexpected keyword argument {unknown[0]!r} "
                "(aiohttp would refuse it too)"
            )
        method, url = method.upper(), str(url)
        self.calls.append((method, url, kwargs))
        try:
            response: Any = _as_response(self._pick(method, url), method, url, kwargs)
        except BaseException as exc:  # raised when awaited / entered, like aiohttp
            response = exc
        return AwaitableContext(response)

    async def __aenter__(self) -> MockSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _sequence(value: Any) -> Iterator[Any]:
    """A list is served in order (the last one repeats); anything else every time.

    To answer with a JSON array, wrap it: ``mock_response(json=[...])``.
    """
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(
                "mock_aiohttp_session: an empty list has nothing to serve; "
                "to answer with an empty JSON array, pass mock_response(json=[])"
            )
        items = list(value)

        def gen() -> Iterator[Any]:
            yield from items[:-1]
            while True:
                yield items[-1]

        return gen()

    def forever() -> Iterator[Any]:
        while True:
            yield value

    return forever()


def mock_aiohttp_session(
    responses: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: Any = None,
) -> MockSession:
    """An aiohttp-like session whose requests are both awaitable and context managers.

    ``responses`` is one of:

    * a response (:func:`mock_response`), JSON data (served as a 200), an exception
      (raised when the request is awaited or entered), or a callable
      ``(method, url, **kwargs) -> response``: served for every request;
    * a list of those: served in order, the last one repeating (to answer with a JSON
      array, wrap it: ``mock_response(json=[...])``);
    * a dict keyed by ``"METHOD url"`` or ``url`` whose values are any of the above
      (any other key is refused: wrap JSON data in ``mock_response(json=...)``).

    A response served twice is served whole both times (its ``content`` stream
    rewinds). Keyword arguments aiohttp does not know (``jsno=``) raise ``TypeError``.
    The session has ``headers``, ``timeout`` (an ``aiohttp.ClientTimeout``) and a
    ``connector``, like a real one.

    >>> import asyncio
    >>> session = mock_aiohttp_session([{"n": 1}, {"n": 2}])
    >>> async def two() -> list[dict[str, int]]:
    ...     return [await (await session.get("https://x.test/")).json() for _ in range(2)]
    >>> asyncio.run(two())
    [{'n': 1}, {'n': 2}]
    """
    return MockSession({} if responses is None else responses, headers=headers, timeout=timeout)


@contextlib.contextmanager
def mock_endpoint(
    target: Any, return_value: Any = _SENTINEL, *, side_effect: Any = None
) -> Iterator[mock.AsyncMock]:
    """Replace ``target.call`` (an endpoint, a provider, any object with an async
    ``call``) by an :class:`~unittest.mock.AsyncMock` for the ``with`` block.

    >>> import asyncio
    >>> class Endpoint:
    ...     async def call(self, request: dict) -> dict:
    ...         raise RuntimeError("would hit the network")
    >>> ep = Endpoint()
    >>> with mock_endpoint(ep, return_value={"ok": True}) as call:
    ...     asyncio.run(ep.call({"q": 1}))
    {'ok': True}
    >>> call.assert_awaited_once_with({"q": 1})
    """
    if not callable(getattr(target, "call", None)):
        raise TypeError(f"{target!r} has no `call` method to mock")
    kwargs: dict[str, Any] = {"side_effect": side_effect}
    if return_value is not _SENTINEL:
        kwargs["return_value"] = return_value
    replacement = mock.AsyncMock(name=f"{type(target).__name__}.call", **kwargs)
    with mock.patch.object(target, "call", replacement):
        yield replacement


def get_incomplete_future() -> asyncio.Future[Any]:
    """A future of the running loop that never completes (cancel it when done).

    Handy as a mock's return value to simulate a call that hangs.
    """
    return asyncio.get_running_loop().create_future()


class AsyncIterator(Generic[T]):
    """An async iterator over ``items``; an exception among them is raised there.

    >>> import asyncio
    >>> async def main() -> list[int]:
    ...     return [x async for x in AsyncIterator([1, 2, 3])]
    >>> asyncio.run(main())
    [1, 2, 3]
    """

    def __init__(self, items: Iterable[T | BaseException]) -> None:
        self._items = iter(items)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            item = next(self._items)
        except StopIteration:
            raise StopAsyncIteration from None
        if isinstance(item, BaseException):
            raise item
        return item


def raise_exception(exc: BaseException | type[BaseException]) -> Callable[..., Awaitable[NoReturn]]:
    """An async callable that raises ``exc`` whatever it is called with.

    >>> import asyncio
    >>> fail = raise_exception(TimeoutError("slow"))
    >>> asyncio.run(fail(1, x=2))
    Traceback (most recent call last):
    ...
    TimeoutError: slow
    """

    async def raiser(*args: Any, **kwargs: Any) -> NoReturn:
        raise exc

    return raiser


@dataclass(slots=True)
class CapturedLogs:
    """Log records of the ``headway`` logger (see the ``capture_logs`` fixture)."""

    records: list[logging.LogRecord] = field(default_factory=list)

    @property
    def events(self) -> list[Event]:
        """The structured events (``record.headway_event``) in order."""
        found = (getattr(r, "headway_event", None) for r in self.records)
        return [e for e in found if isinstance(e, Event)]

    def kinds(self) -> list[str]:
        """The kinds of the structured events in order."""
        return [e.kind for e in self.events]

    def of_kind(self, kind: str) -> list[Event]:
        """The events of one kind."""
        return [e for e in self.events if e.kind == kind]

    def clear(self) -> None:
        self.records.clear()


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@contextlib.contextmanager
def capture_headway_logs(level: int = logging.DEBUG) -> Iterator[CapturedLogs]:
    """Capture the ``headway`` logger's records at ``level`` and above."""
    captured = CapturedLogs()
    handler = _ListHandler(captured.records)
    handler.setLevel(level)
    old_level = headway_logger.level
    headway_logger.addHandler(handler)
    headway_logger.setLevel(level)
    try:
        yield captured
    finally:
        headway_logger.removeHandler(handler)
        headway_logger.setLevel(old_level)


@dataclass(slots=True, frozen=True)
class CannedResponse:
    """A provider answer: status, JSON body and headers."""

    status: int
    json: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    def mock(self) -> MockResponse:
        """This answer as a :func:`mock_response`."""
        return mock_response(self.status, json=self.json, headers=self.headers)


def _openai_error(message: str, kind: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass(slots=True, frozen=True)
class MockAPIResponses:
    """Canned OpenAI-style answers (the ``mock_api_responses`` fixture)."""

    success: CannedResponse = CannedResponse(
        200,
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello!"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        },
        {"Content-Type": "application/json", "x-request-id": "req_mock"},
    )
    rate_limit: CannedResponse = CannedResponse(
        429,
        _openai_error(
            "Rate limit reached. Please try again in 1s.", "requests", "rate_limit_exceeded"
        ),
        {
            "Retry-After": "1",
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
        },
    )
    quota_exceeded: CannedResponse = CannedResponse(
        429,
        _openai_error(
            "You exceeded your current quota.", "insufficient_quota", "insufficient_quota"
        ),
    )
    auth_error: CannedResponse = CannedResponse(
        401,
        _openai_error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    )
    bad_request: CannedResponse = CannedResponse(
        400, _openai_error("'messages' is required.", "invalid_request_error", None)
    )
    not_found: CannedResponse = CannedResponse(
        404, _openai_error("The model does not exist.", "invalid_request_error", "model_not_found")
    )
    server_error: CannedResponse = CannedResponse(
        500, _openai_error("The server had an error.", "server_error", None)
    )
    overloaded: CannedResponse = CannedResponse(
        529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
