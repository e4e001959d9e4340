"""FakeAPI: a real HTTP server on loopback that behaves like an LLM provider, faults included.

``async with FakeAPI() as api:`` serves on ``127.0.0.1`` at a free port. Point any
client at ``api.url`` (or ``api.openai_base_url`` for the OpenAI SDK). It answers

* ``POST /v1/chat/completions`` (plain, or SSE with ``"stream": true`` and a final
  usage chunk when ``stream_options.include_usage`` is set),
* ``POST /v1/embeddings``, ``POST /v1/responses`` (plain and SSE),
* Anthropic-shaped ``POST /v1/messages`` (plain and SSE), ``GET /v1/models``,

with deterministic content (the reply echoes the last user message) and ``usage``
computed from the input: one token per word or punctuation mark. Add your own routes
with :meth:`FakeAPI.route`.

Faults: :meth:`FakeAPI.script` plays a list of :class:`~headway.testing.faults.Fault`
steps on a route, one per request; :class:`~headway.testing.faults.Chaos` draws faults
at random from a seeded generator, for one route or the whole server. ``rpm`` and
``tpm`` enforce token buckets and answer 429 like OpenAI, with ``x-ratelimit-*``
headers on every response (and Anthropic's ``anthropic-ratelimit-*`` on
``/v1/messages``). ``api_key`` makes every route demand that key (401).

Every request lands in :attr:`FakeAPI.requests` (headers with secrets masked), with
:meth:`FakeAPI.assert_called` and :meth:`FakeAPI.assert_scripts_consumed` to check them.

Latencies, dribbles and the buckets' refill follow the running loop's clock, so in
virtual time (:class:`~headway.testing.VirtualClock`) a minute of rate limiting takes
no real time at all.

>>> import asyncio, aiohttp
>>> async def main() -> tuple[int, str]:
...     async with FakeAPI() as api, aiohttp.ClientSession() as session:
...         api.route("GET", "/users/{id}", json={"name": "ada"})
...         async with session.get(f"{api.url}/users/7") as resp:
...             return resp.status, (await resp.json())["name"]
>>> asyncio.run(main())
(200, 'ada')
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import math
import random
import re
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeAlias

from aiohttp import web

from headway import _resources
from headway._clock import Clock, resolve_clock
from headway._secrets import mask_headers, mask_value
from headway.testing import _fake_content as content
from headway.testing.faults import (
    Chaos,
    Fault,
    FaultLike,
    format_go_duration,
    parse_script,
    retry_after_headers,
)

__all__ = ["FakeAPI", "RecordedRequest", "Route", "Script"]

#: What a route handler may return: a response, or anything JSON-serialisable.
HandlerResult: TypeAlias = web.StreamResponse | dict[str, Any] | list[Any] | str | None
Handler: TypeAlias = Callable[[web.Request], Awaitable[HandlerResult]]

_ENTRY_KEY = web.RequestKey("headway_entry", object)
_PARAMS_KEY = web.RequestKey("headway_params", dict)
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DRIBBLE_PIECE = 32


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ValueError(f"a route path starts with '/', not {pattern!r}")
    out, pos = [], 0
    for match in _PARAM.finditer(pattern):
        out.append(re.escape(pattern[pos : match.start()]))
        out.append(f"(?P<{match.group(1)}>[^/]+)")
        pos = match.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out) + "/?")


@dataclass(slots=True)
class RecordedRequest:
    """One request as the server received it.

    Attributes:
        index: position in the journal (0 first).
        method, path: as sent (``path`` without the query string).
        query: query parameters.
        headers: request headers with credentials masked.
        body: the raw body; ``json`` is its parsed form (``None`` if not JSON).
        time: the loop clock's time at arrival.
        route: the route pattern that matched (``None``: no route, answered 404).
        status: the status answered (``None``: no answer, e.g. a reset or a hang).
        fault: the kind of fault applied, if any.
    """

    index: int
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    time: float
    route: str | None = None
    status: int | None = None
    fault: str | None = None


@dataclass(slots=True)
class Script:
    """Faults a route plays in order, one per matching request."""

    method: str
    path: str
    steps: deque[Fault]
    consumed: int = 0
    _regex: re.Pattern[str] = field(repr=False, default=re.compile(""))

    @property
    def remaining(self) -> int:
        return len(self.steps)

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self._regex.fullmatch(path) is not None


@dataclass(slots=True)
class Route:
    """A user route: a canned answer or a handler."""

    method: str
    path: str
    handler: Handler | None = None
    status: int = 200
    json: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chaos: Chaos | None = None
    _regex: re.Pattern[str] = field(repr=False, default=re.compile(""))


@dataclass(slots=True)
class _Bucket:
    limit: float  # per period
    level: float
    stamp: float
    period: float = 60.0
    capacity: float = 0.0  # the most held at once; 0: the limit (a period's worth)

    def __post_init__(self) -> None:
        if not self.capacity:
            self.capacity = self.limit

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(
                self.capacity, self.level + (now - self.stamp) * self.limit / self.period
            )
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (``inf`` if it never fits)."""
        if amount > self.capacity:
            return math.inf
        missing = amount - self.level
        return 0.0 if missing <= 1e-9 else missing * self.period / self.limit

    def reset_after(self) -> float:
        return (self.capacity - self.level) * self.period / self.limit


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    content_type: str = "application/json"


@dataclass(slots=True)
class _Stream:
    frames: list[bytes]
    error_frame: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _sse(data: Any, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else jsonlib.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def _json_bytes(data: Any) -> bytes:
    return jsonlib.dumps(data).encode()


class FakeAPI:
    """A fake LLM provider on ``127.0.0.1``: deterministic answers, faults and limits.

    Args:
        host: interface to listen on.
        port: TCP port; ``0`` picks a free one (see :attr:`port`, :attr:`url`).
        rpm: requests per minute allowed (token bucket, starts full), or ``None``.
        tpm: tokens per minute allowed; a request costs its ``usage.total_tokens``.
        burst: the most requests the ``rpm`` bucket holds, i.e. admits at once (default:
            ``rpm``, a minute's worth, as providers do); a small burst makes any client
            that sends faster than ``rpm`` get 429s at once.
        api_key: when set, every request must send it as ``Authorization: Bearer ...``,
            ``x-api-key`` or ``api-key``; otherwise 401.
        chaos: random faults for every route (per-route chaos wins, see :meth:`set_chaos`).
        seed: seed of the generator that draws chaos and latency.
        models: the model ids ``GET /v1/models`` lists.
        clock: the clock latencies and buckets follow (default: the running loop's).
        journal_limit: keep only about the newest this many requests in ``requests``
            (``None``: all of them); a long-running server sets it to bound its memory.

    Example::

        async with FakeAPI(rpm=60, chaos=Chaos(rate_limit=0.1), seed=1) as api:
            api.script("POST", "/v1/chat/completions", [503, Fault.rate_limit(2)])
            ...  # call api.url
            api.assert_called("POST", "/v1/chat/completions", times=3)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        burst: float | None = None,
        api_key: str | None = None,
        chaos: Chaos | None = None,
        seed: int | None = 0,
        models: Sequence[str] = content.DEFAULT_MODELS,
        clock: Clock | None = None,
        journal_limit: int | None = None,
    ) -> None:
        if journal_limit is not None and journal_limit < 1:
            raise ValueError(f"journal_limit must be at least 1 or None, got {journal_limit!r}")
        self.journal_limit = journal_limit
        self._received = 0
        self.host = host
        self._port = port
        self.api_key = api_key
        self.chaos = chaos
        self.models = tuple(models)
        self._clock = resolve_clock(clock)
        self._rng = random.Random(seed)
        if burst is not None and not burst >= 1:
            raise ValueError(f"burst must be at least 1 or None, got {burst!r}")
        self._rpm = rpm
        self._tpm = tpm
        self._burst = burst
        self._requests_bucket: _Bucket | None = None
        self._tokens_bucket: _Bucket | None = None
        self._limits_pending = True
        self.requests: list[RecordedRequest] = []
        self._routes: list[Route] = []
        self._route_chaos: list[tuple[str, re.Pattern[str], str, Chaos]] = []
        self._scripts: list[Script] = []
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._builtin: dict[tuple[str, str], Callable[[dict[str, Any], str], Any]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/responses"): self._responses,
            ("POST", "/v1/messages"): self._messages,
        }

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> Self:
        """Start serving (``async with`` does it for you)."""
        if self._runner is not None:
            raise RuntimeError("this FakeAPI is already running")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        app.on_response_prepare.append(self._on_prepare)
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = sock.getsockname()[1]
        self._runner = runner
        self._closing = asyncio.Event()
        self._limits_pending = True
        _resources.track(self)
        return self

    async def aclose(self) -> None:
        """Stop serving; hanging requests are dropped. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        _resources.untrack(self)
        if self._closing is not None:
            self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        """The TCP port (known once started)."""
        if self._runner is None:
            raise RuntimeError("FakeAPI is not running: use `async with FakeAPI() as api:`")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``url + "/v1"``: the ``base_url`` of the OpenAI and Anthropic SDKs."""
        return f"{self.url}/v1"

    def __repr__(self) -> str:
        where = self.url if self._runner is not None else "not running"
        return f"FakeAPI({where}, requests={len(self.requests)})"

    # -- configuration --------------------------------------------------------------------
    def route(
        self,
        method: str,
        path: str,
        handler: Handler | None = None,
        *,
        json: Any = None,
        text: str | None = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        chaos: Chaos | None = None,
    ) -> Route:
        """Serve ``method path`` (``{name}`` matches one path segment).

        Give a canned answer (``json=`` or ``text=``, ``status=``, ``headers=``) or an
        async ``handler(request)`` returning an ``aiohttp.web`` response or JSON data;
        read path parameters with :meth:`path_params`.
        A route replaces an earlier one with the same method and path, and wins over
        the built-in routes. ``method="*"`` matches any method.
        """
        method = method.upper()
        new = Route(
            method,
            path,
            handler,
            status,
            json,
            text,
            dict(headers or {}),
            chaos,
            _compile(path),
        )
        self._routes = [r for r in self._routes if (r.method, r.path) != (method, path)]
        self._routes.append(new)
        return new

    @staticmethod
    def path_params(request: web.Request) -> dict[str, str]:
        """The ``{name}`` values of the route that matched ``request`` (in a handler).

        Example::

            async def get_user(request):
                return {"id": FakeAPI.path_params(request)["id"]}

            api.route("GET", "/users/{id}", get_user)
        """
        params = request.get(_PARAMS_KEY)
        return dict(params) if isinstance(params, dict) else {}

    def script(self, method: str, path: str, steps: str | Iterable[FaultLike]) -> Script:
        """Play ``steps`` on ``method path``, one per request, then answer normally.

        A step is a :class:`~headway.testing.faults.Fault`, a status code, ``None`` or
        ``"ok"`` (answer normally), or the compact text form (``"429:2"``). Scripts on
        the same route play one after the other.

        >>> api = FakeAPI()
        >>> s = api.script("POST", "/v1/chat/completions", [503, 503, Fault.rate_limit(2)])
        >>> s.remaining
        3
        >>> api.script("POST", "/v1/embeddings", "503,429:2,ok").remaining
        3
        """
        new = Script(method.upper(), path, deque(parse_script(steps)), 0, _compile(path))
        self._scripts.append(new)
        return new

    def set_chaos(self, chaos: Chaos | None, *, method: str = "*", path: str | None = None) -> None:
        """Random faults for one route (``path``) or, without a path, for all routes."""
        if path is None:
            self.chaos = chaos
            return
        method = method.upper()
        self._route_chaos = [c for c in self._route_chaos if (c[0], c[2]) != (method, path)]
        if chaos is not None:
            self._route_chaos.append((method, _compile(path), path, chaos))

    def set_limits(
        self, *, rpm: float | None = None, tpm: float | None = None, burst: float | None = None
    ) -> None:
        """Replace the request and token limits (buckets start full)."""
        if burst is not None and not burst >= 1:
            raise ValueError(f"burst must be at least 1 or None, got {burst!r}")
        self._rpm, self._tpm, self._burst = rpm, tpm, burst
        self._limits_pending = True

    def reset(self) -> None:
        """Forget the journal and the scripts (routes and limits stay)."""
        self.requests.clear()
        self._received = 0
        self._scripts.clear()

    # -- journal and assertions -----------------------------------------------------------
    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Journal entries for ``method`` and ``path`` (a pattern with ``{name}`` works)."""
        regex = _compile(path) if path is not None else None
        return [
            r
            for r in self.requests
            if (method is None or method.upper() in ("*", r.method))
            and (regex is None or regex.fullmatch(r.path) is not None)
        ]

    def assert_called(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        times: int | None = None,
        json: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[RecordedRequest]:
        """Assert matching requests arrived (``times`` exactly, or at least once).

        ``json`` matches requests whose JSON body contains those keys with those
        values; ``headers`` those headers (names case-insensitive; compare with the
        masked form for credentials). Returns the matching entries.
        """
        found = self.calls(method, path)
        if json is not None:
            found = [
                r
                for r in found
                if isinstance(r.json, dict) and all(r.json.get(k) == v for k, v in json.items())
            ]
        if headers is not None:
            want = {k.lower(): v for k, v in headers.items()}
            found = [
                r
                for r in found
                if all(
                    {k.lower(): v for k, v in r.headers.items()}.get(k) == v
                    for k, v in want.items()
                )
            ]
        ok = len(found) == times if times is not None else bool(found)
        if not ok:
            what = " ".join(p for p in (method, path) if p) or "any request"
            expected = f"exactly {times}" if times is not None else "at least one"
            journal = "\n".join(
                f"  #{r.index} {r.method} {r.path} -> {r.status}" for r in self.requests
            )
            raise AssertionError(
                f"expected {expected} call(s) to {what}"
                + (f" with json {dict(json)!r}" if json is not None else "")
                + f", found {len(found)}; journal:\n{journal or '  (empty)'}"
            )
        return found

    def assert_not_called(self, method: str | None = None, path: str | None = None) -> None:
        """Assert no request matched."""
        self.assert_called(method, path, times=0)

    def assert_scripts_consumed(self) -> None:
        """Assert every scripted step was played."""
        left = [s for s in self._scripts if s.steps]
        if left:
            lines = "\n".join(
                f"  {s.method} {s.path}: {s.remaining} step(s) left "
                f"({', '.join(f.kind if f.kind != 'status' else str(f.status) for f in s.steps)})"
                for s in left
            )
            raise AssertionError(f"scripted faults were not all played:\n{lines}")

    # -- limits ---------------------------------------------------------------------------
    def _buckets(self) -> tuple[_Bucket | None, _Bucket | None]:
        now = self._clock.now()
        if self._limits_pending:
            self._limits_pending = False
            rpm = self._rpm
            if rpm:
                burst = self._burst or rpm
                self._requests_bucket = _Bucket(rpm, burst, now, capacity=burst)
            else:
                self._requests_bucket = None
            self._tokens_bucket = _Bucket(self._tpm, self._tpm, now) if self._tpm else None
        for bucket in (self._requests_bucket, self._tokens_bucket):
            if bucket is not None:
                bucket.refill(now)
        return self._requests_bucket, self._tokens_bucket

    def _limit_headers(self, anthropic: bool = False) -> dict[str, str]:
        rb, tb = self._buckets()
        out: dict[str, str] = {}
        for unit, bucket in (("requests", rb), ("tokens", tb)):
            if bucket is not None:
                limit, remaining = str(int(bucket.limit)), str(max(0, math.floor(bucket.level)))
                out[f"x-ratelimit-limit-{unit}"] = limit
                out[f"x-ratelimit-remaining-{unit}"] = remaining
                out[f"x-ratelimit-reset-{unit}"] = format_go_duration(bucket.reset_after())
                if anthropic:
                    # Anthropic's form: resets as RFC 3339 wall-clock timestamps.
                    when = datetime.now(UTC) + timedelta(seconds=bucket.reset_after())
                    out[f"anthropic-ratelimit-{unit}-limit"] = limit
                    out[f"anthropic-ratelimit-{unit}-remaining"] = remaining
                    out[f"anthropic-ratelimit-{unit}-reset"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        return out

    def _admit(self, tokens: int) -> tuple[str, float, float] | None:
        """Take one request and ``tokens``; or say which limit refused, and for how long."""
        rb, tb = self._buckets()
        waits = []
        if rb is not None:
            waits.append(("requests", rb.wait_for(1), rb.limit))
        if tb is not None:
            waits.append(("tokens", tb.wait_for(tokens), tb.limit))
        refused = [w for w in waits if w[1] > 0]
        if refused:
            return max(refused, key=lambda w: w[1])
        if rb is not None:
            rb.level -= 1
        if tb is not None:
            tb.level -= tokens
        return None

    # -- request handling -----------------------------------------------------------------
    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        entry = request.get(_ENTRY_KEY)
        if isinstance(entry, RecordedRequest) and entry.fault not in ("reset", "hang"):
            entry.status = response.status
            response.headers.setdefault("x-request-id", f"req_{self._rid(entry)}")
        anthropic = request.path.rstrip("/") == "/v1/messages"
        for key, value in self._limit_headers(anthropic).items():
            response.headers.setdefault(key, value)

    @staticmethod
    def _rid(entry: RecordedRequest) -> str:
        return f"fake{entry.index:06d}"

    def _match_route(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in reversed(self._routes):
            if route.method in ("*", method):
                m = route._regex.fullmatch(path)
                if m is not None:
                    return route, m.groupdict()
        return None, {}

    def _chaos_for(self, method: str, path: str, route: Route | None) -> Chaos | None:
        if route is not None and route.chaos is not None:
            return route.chaos
        for c_method, regex, _, chaos in reversed(self._route_chaos):
            if c_method in ("*", method) and regex.fullmatch(path) is not None:
                return chaos
        return self.chaos

    def _next_fault(self, method: str, path: str, chaos: Chaos | None) -> Fault | None:
        for script in self._scripts:
            if script.steps and script.matches(method, path):
                script.consumed += 1
                return script.steps.popleft()
        return chaos.pick(self._rng) if chaos is not None else None

    def _authorized(self, request: web.Request) -> bool:
        key = self.api_key
        auth = request.headers.get("Authorization", "")
        return (
            auth == f"Bearer {key}"
            or request.headers.get("x-api-key") == key
            or request.headers.get("api-key") == key
        )

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        clock = self._clock
        raw = await request.read()
        parsed: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                parsed = jsonlib.loads(raw)
        method, path = request.method, request.path
        entry = RecordedRequest(
            self._received,
            method,
            path,
            dict(request.query),
            mask_headers(request.headers.items()),
            raw,
            parsed,
            clock.now(),
        )
        self._received += 1
        self.requests.append(entry)
        limit = self.journal_limit
        if limit is not None and len(self.requests) >= 2 * limit:
            del self.requests[:-limit]  # amortised: trim to the newest `limit` entries
        request[_ENTRY_KEY] = entry
        route, params = self._match_route(method, path)
        request[_PARAMS_KEY] = params
        builtin = self._builtin.get((method, path.rstrip("/")))
        is_models = method == "GET" and path.rstrip("/").startswith("/v1/models")
        if route is not None:
            entry.route = route.path
        elif builtin is not None or is_models:
            entry.route = path.rstrip("/")
        anthropic = route is None and path.rstrip("/") == "/v1/messages"

        chaos = self._chaos_for(method, path, route)
        if chaos is not None:
            delay = chaos.pick_latency(self._rng)
            if delay > 0:
                await clock.sleep(delay)

        if self.api_key is not None and not self._authorized(request):
            return self._error_response(
                401,
                anthropic,
                "Incorrect API key provided: " + mask_value("sk") + ". Check your key.",
                "invalid_request_error",
                "invalid_api_key",
            )

        fault = self._next_fault(method, path, chaos)
        if fault is not None and fault.kind != "ok":
            entry.fault = fault.kind if fault.kind != "status" else str(fault.status)
        answer: _Answer | _Stream | web.StreamResponse
        if fault is not None:
            if fault.kind == "latency":
                await clock.sleep(fault.delay)
            elif fault.kind == "status":
                return self._status_fault(fault, anthropic)
            elif fault.kind == "insufficient_quota":
                return self._error_response(
                    429,
                    anthropic,
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    "insufficient_quota",
                )
            elif fault.kind == "reset":
                return self._reset(request)
            elif fault.kind == "hang":
                assert self._closing is not None
                await self._closing.wait()
                return self._reset(request)

        rid = self._rid(entry)
        if route is not None:
            result = await self._user_answer(route, request)
            if isinstance(result, web.StreamResponse):
                limited = self._admit(0)
                if limited is not None:
                    return self._limited(limited, 0, anthropic)
                return result
            answer = result
            tokens = 0
        elif builtin is not None:
            if not isinstance(parsed, dict):
                return self._error_response(
                    400, anthropic, "the body must be a JSON object", "invalid_request_error"
                )
            try:
                tokens, answer = builtin(parsed, rid)
            except content.BadRequest as exc:
                return self._error_response(
                    400, anthropic, str(exc), "invalid_request_error", param=exc.param
                )
        elif is_models:
            answer, tokens = self._models(path.rstrip("/")), 0
        else:
            return self._error_response(
                404, False, f"no route for {method} {path}", "invalid_request_error", "not_found"
            )

        limited = self._admit(tokens)
        if limited is not None:
            return self._limited(limited, tokens, anthropic)
        return await self._send(request, answer, fault, anthropic)

    async def _user_answer(
        self, route: Route, request: web.Request
    ) -> _Answer | web.StreamResponse:
        if route.handler is not None:
            result = await route.handler(request)
            if isinstance(result, web.Response) and not result.prepared:
                body = result.body if isinstance(result.body, bytes) else None
                if body is not None:
                    headers = {
                        k: v
                        for k, v in result.headers.items()
                        if k.lower() not in ("content-type", "content-length")
                    }
                    return _Answer(
                        result.status,
                        body,
                        headers,
                        result.content_type or "application/octet-stream",
                    )
                return result
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, str):
                return _Answer(200, result.encode(), {}, "text/plain")
            if result is None:
                return _Answer(204, b"", {}, "application/json")
            return _Answer(200, _json_bytes(result), {})
        if route.text is not None:
            return _Answer(route.status, route.text.encode(), dict(route.headers), "text/plain")
        body = b"" if route.json is None and route.status == 204 else _json_bytes(route.json)
        return _Answer(route.status, body, dict(route.headers))

    # -- built-in routes ------------------------------------------------------------------
    def _chat(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer | _Stream]:
        reply = content.plan_chat(body)
        if body.get("stream"):
            opts = body.get("stream_options")
            include = isinstance(opts, dict) and bool(opts.get("include_usage"))
            frames = [_sse(c) for c in content.chat_stream(reply, rid, include)]
            frames.append(_sse("[DONE]"))
            error = {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
            return reply.total_tokens, _Stream(frames, _sse(error))
        return reply.total_tokens, _Answer(
            200, _json_bytes(content.chat_completion(reply, rid)), {}
        )

    def _embeddings(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer | _Stream]:
        data, tokens = content.embeddings(body)
        return tokens, _Answer(200, _json_bytes(data), {})

    def _responses(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer | _Stream]:
        reply = content.plan_responses(body)
        if body.get("stream"):
            frames = [_sse(d, e) for e, d in content.responses_stream(reply, rid)]
            error = {
                "type": "error",
                "code": "server_error",
                "message": "stream interrupted",
                "param": None,
            }
            return reply.total_tokens, _Stream(frames, _sse(error, "error"))
        return reply.total_tokens, _Answer(
            200, _json_bytes(content.response_object(reply, rid)), {}
        )

    def _messages(self, body: dict[str, Any], rid: str) -> tuple[int, _Answer | _Stream]:
        reply = content.plan_messages(body)
        if body.get("stream"):
            frames = [_sse(d, e) for e, d in content.anthropic_stream(reply, rid)]
            error = {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
            }
            return reply.total_tokens, _Stream(frames, _sse(error, "error"))
        return reply.total_tokens, _Answer(200, _json_bytes(content.messages(reply, rid)), {})

    def _models(self, path: str) -> _Answer:
        listing = content.models(self.models)
        if path == "/v1/models":
            return _Answer(200, _json_bytes(listing), {})
        name = path.removeprefix("/v1/models/")
        for model in listing["data"]:
            if model["id"] == name:
                return _Answer(200, _json_bytes(model), {})
        body = {
            "error": {
                "message": f"The model '{name}' does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
        return _Answer(404, _json_bytes(body), {})

    # -- answers --------------------------------------------------------------------------
    @staticmethod
    def _error_body(
        status: int, anthropic: bool, message: str, kind: str, code: str | None, param: str | None
    ) -> dict[str, Any]:
        if anthropic:
            a_kind = {
                400: "invalid_request_error",
                401: "authentication_error",
                403: "permission_error",
                404: "not_found_error",
                429: "rate_limit_error",
                529: "overloaded_error",
            }.get(status, "api_error")
            return {"type": "error", "error": {"type": a_kind, "message": message}}
        return {"error": {"message": message, "type": kind, "param": param, "code": code}}

    def _error_response(
        self,
        status: int,
        anthropic: bool,
        message: str,
        kind: str,
        code: str | None = None,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = self._error_body(status, anthropic, message, kind, code, param)
        return web.Response(
            status=status,
            body=_json_bytes(body),
            content_type="application/json",
            headers=dict(headers or {}),
        )

    def _status_fault(self, fault: Fault, anthropic: bool) -> web.Response:
        status = fault.status
        headers = retry_after_headers(fault.retry_after, fault.retry_after_style)
        if status == 429:
            message = fault.message or "Rate limit reached. Please try again later."
            return self._error_response(
                429, anthropic, message, "requests", "rate_limit_exceeded", headers=headers
            )
        if status == 529:
            message = fault.message or "Overloaded"
            return self._error_response(
                529, anthropic, message, "overloaded_error", "overloaded", headers=headers
            )
        kind = "server_error" if status >= 500 else "invalid_request_error"
        message = fault.message or (
            "The server had an error while processing your request."
            if status >= 500
            else f"fake client error {status}"
        )
        return self._error_response(status, anthropic, message, kind, None, headers=headers)

    def _limited(
        self, limited: tuple[str, float, float], tokens: int, anthropic: bool
    ) -> web.Response:
        unit, wait, limit = limited
        if math.isinf(wait):
            return self._error_response(
                429,
                anthropic,
                f"Request too large: {tokens} tokens requested, limit {int(limit)} per min.",
                "tokens",
                "rate_limit_exceeded",
            )
        label = "requests per min (RPM)" if unit == "requests" else "tokens per min (TPM)"
        requested = 1 if unit == "requests" else tokens
        shown = format_go_duration(wait)
        headers = {
            "retry-after": str(math.ceil(wait)),
            "retry-after-ms": str(math.ceil(wait * 1000)),
        }
        return self._error_response(
            429,
            anthropic,
            f"Rate limit reached for {label}: Limit {int(limit)}, Requested {requested}. "
            f"Please try again in {shown}.",
            unit,
            "rate_limit_exceeded",
            headers=headers,
        )

    @staticmethod
    def _reset(request: web.Request) -> web.Response:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)

    async def _send(
        self,
        request: web.Request,
        answer: _Answer | _Stream | web.StreamResponse,
        fault: Fault | None,
        anthropic: bool,
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else "ok"
        interval = fault.delay if fault is not None and kind == "dribble" else 0.0
        if isinstance(answer, web.StreamResponse):
            return answer
        if isinstance(answer, _Stream):
            return await self._send_stream(request, answer, kind, interval, fault)
        if kind == "stream_error":
            return self._status_fault(Fault.error(500), anthropic)
        if kind == "malformed":
            broken = answer.body[: len(answer.body) // 2] or b"{"
            return web.Response(status=200, body=broken, content_type="application/json")
        if kind not in ("truncate", "dribble"):
            return web.Response(
                status=answer.status,
                body=answer.body,
                headers=answer.headers,
                content_type=answer.content_type,
            )
        resp = web.StreamResponse(status=answer.status, headers=answer.headers)
        resp.content_type = answer.content_type
        resp.content_length = len(answer.body)
        await resp.prepare(request)
        if kind == "truncate":
            await resp.write(answer.body[: len(answer.body) // 2])
            if request.transport is not None:
                request.transport.close()
            return resp
        for start in range(0, len(answer.body), _DRIBBLE_PIECE):
            if start:
                await self._clock.sleep(interval)
            await resp.write(answer.body[start : start + _DRIBBLE_PIECE])
        await resp.write_eof()
        return resp

    async def _send_stream(
        self, request: web.Request, stream: _Stream, kind: str, interval: float, fault: Fault | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers=stream.headers)
        resp.content_type = "text/event-stream"
        resp.headers["Cache-Control"] = "no-cache"
        await resp.prepare(request)
        frames = stream.frames
        if kind == "truncate":
            for frame in frames[: max(1, len(frames) // 2)]:
                await resp.write(frame)
            if request.transport is not None:
                request.transport.close()
            return resp
        if kind == "stream_error" and fault is not None:
            frames = [*frames[: min(fault.after, len(frames) - 1)], stream.error_frame]
        for i, frame in enumerate(frames):
            if i and interval > 0:
                await self._clock.sleep(interval)
            await resp.write(frame)
        await resp.write_eof()
        return resp
