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
``/v1/messages``). ``profile`` enforces them as a given provider does (``openai``,
``azure``, ``anthropic``, ``litellm``, ``silent``, ``shared``: windows, headers and 429
shapes; see :mod:`headway.testing._fake_limits`). ``api_key`` makes every route demand
that key (401).

Every request lands in :attr:`FakeAPI.requests` (headers with secrets masked, arrival
time on the server's clock), with :meth:`FakeAPI.assert_called` and
:meth:`FakeAPI.assert_scripts_consumed` to check them, and
:meth:`FakeAPI.max_in_window` to count admissions per window as the server saw them.

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
import socket
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self

from aiohttp import web

from headway import _resources
from headway._clock import Clock, resolve_clock
from headway._secrets import mask_headers, mask_value
from headway.testing import _fake_content as content
from headway.testing._fake_answers import _DRIBBLE_PIECE as _DRIBBLE_PIECE
from headway.testing._fake_answers import _Answer, _AnswersMixin, _Stream
from headway.testing._fake_answers import _json_bytes as _json_bytes
from headway.testing._fake_answers import _sse as _sse
from headway.testing._fake_batches import install_batches
from headway.testing._fake_journal import _PARAM as _PARAM
from headway.testing._fake_journal import (
    Handler,
    Journal,
    RecordedRequest,
    Route,
    Script,
    _compile,
)
from headway.testing._fake_journal import HandlerResult as HandlerResult
from headway.testing._fake_limits import PROFILES, Limits, Refusal, make_limits
from headway.testing.faults import Chaos, FaultLike, parse_script
from headway.testing.faults import Fault as Fault

__all__ = ["PROFILES", "FakeAPI", "Limits", "RecordedRequest", "Route", "Script"]
# Names imported "as" themselves are re-exported: they were defined or imported here
# before the split (the doctests use Fault).

# web.RequestKey exists from aiohttp 3.14 (which warns on str keys); older versions take str.
_RequestKey: Any = getattr(web, "RequestKey", None)
_ENTRY_KEY: Any = _RequestKey("headway_entry", object) if _RequestKey else "headway_entry"
_PARAMS_KEY: Any = _RequestKey("headway_params", dict) if _RequestKey else "headway_params"
_FAULT_KEY: Any = _RequestKey("headway_fault", object) if _RequestKey else "headway_fault"


class FakeAPI(_AnswersMixin):
    """A fake LLM provider on ``127.0.0.1``: deterministic answers, faults and limits.

    Args:
        host: interface to listen on.
        port: TCP port; ``0`` picks a free one (see :attr:`port`, :attr:`url`).
        rpm: requests per minute allowed (token bucket, starts full), or ``None``.
        tpm: tokens per minute allowed; a request costs its ``usage.total_tokens``.
        burst: the most requests the ``rpm`` bucket holds, i.e. admits at once (default:
            ``rpm``, a minute's worth, as providers do); a small burst makes any client
            that sends faster than ``rpm`` get 429s at once.
        profile: enforce ``rpm``/``tpm`` as a provider does: ``"openai"``, ``"azure"``,
            ``"anthropic"``, ``"litellm"``, ``"silent"`` or ``"shared"`` (``None``: the
            classic limits above). Or a :class:`~headway.testing._fake_limits.Limits`
            object.
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
        profile: str | Limits | None = None,
    ) -> None:
        self.journal = Journal(seed, journal_limit)
        self.host = host
        self._port = port
        self.api_key = api_key
        self.chaos = chaos
        self.models = tuple(models)
        self._clock = resolve_clock(clock)
        self.limits = (
            profile if isinstance(profile, Limits) else make_limits(profile, rpm, tpm, burst)
        )
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._builtin: dict[tuple[str, str], Callable[[dict[str, Any], str], Any]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", "/v1/responses"): self._responses,
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/v1/messages/count_tokens"): self._count_tokens,
        }
        # The Batch APIs (OpenAI files + batches, Anthropic message batches).
        self.batches = install_batches(self)

    @property
    def clock(self) -> Clock:
        """The clock the server's latencies, limits and batch timings run on."""
        return self._clock

    def builtin_handler(
        self, method: str, path: str
    ) -> Callable[[dict[str, Any], str], Any] | None:
        """The built-in answer of ``method path`` (``"POST"``, ``"/v1/chat/completions"``;
        also embeddings, responses, messages), or ``None``."""
        return self._builtin.get((method, path))

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
        self.limits.restart()
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

    async def __aexit__(self, *exc: object) -> None:
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

    # -- journal --------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in order (see :attr:`journal_limit`)."""
        return self.journal.requests

    @property
    def journal_limit(self) -> int | None:
        """Keep only about the newest this many requests (``None``: all)."""
        return self.journal.journal_limit

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Journal entries for ``method`` and ``path`` (a pattern with ``{name}`` works)."""
        return self.journal.calls(method, path)

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
        return self.journal.assert_called(method, path, times=times, json=json, headers=headers)

    def assert_not_called(self, method: str | None = None, path: str | None = None) -> None:
        """Assert no request matched."""
        self.journal.assert_not_called(method, path)

    def assert_scripts_consumed(self) -> None:
        """Assert every scripted step was played."""
        self.journal.assert_scripts_consumed()

    def max_in_window(
        self,
        width: float,
        method: str | None = None,
        path: str | None = None,
        *,
        status: int = 200,
        after: float | None = None,
    ) -> int:
        """The most admissions (answers ``status``) in any closed window of ``width`` s.

        Counted on arrival times as the server saw them: what a provider would count.
        """
        return self.journal.max_in_window(width, method, path, status=status, after=after)

    # -- limits ---------------------------------------------------------------------------
    def set_limits(
        self,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        burst: float | None = None,
        profile: str | Limits | None = None,
    ) -> None:
        """Replace the request and token limits (buckets start full)."""
        self.limits = (
            profile if isinstance(profile, Limits) else make_limits(profile, rpm, tpm, burst)
        )

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
        if handler is not None and not callable(handler):
            raise TypeError(
                f"FakeAPI.route({method!r}, {path!r}, ...): the third argument is a handler "
                f"function, not a {type(handler).__name__}; for a canned answer pass "
                "json=... (or text=..., status=...)"
            )
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
        journal = self.journal
        journal.routes = [r for r in journal.routes if (r.method, r.path) != (method, path)]
        journal.routes.append(new)
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

    @staticmethod
    def request_fault(request: web.Request) -> Fault | None:
        """The ``lost`` or ``late`` fault playing on ``request``, if any (in a handler).

        The Batch API routes read its :attr:`~headway.testing.faults.Fault.listed_after`
        to keep a batch they create out of listings for a while; a route of your own can
        do the same.
        """
        fault = request.get(_FAULT_KEY)
        return fault if isinstance(fault, Fault) else None

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
        self.journal.scripts.append(new)
        return new

    def set_chaos(self, chaos: Chaos | None, *, method: str = "*", path: str | None = None) -> None:
        """Random faults for one route (``path``) or, without a path, for all routes."""
        if path is None:
            self.chaos = chaos
            return
        method = method.upper()
        journal = self.journal
        journal.route_chaos = [c for c in journal.route_chaos if (c[0], c[2]) != (method, path)]
        if chaos is not None:
            journal.route_chaos.append((method, _compile(path), path, chaos))

    def reset(self) -> None:
        """Forget the journal and the scripts (routes and limits stay)."""
        self.journal.reset()

    # -- request handling -----------------------------------------------------------------
    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        entry = request.get(_ENTRY_KEY)
        if isinstance(entry, RecordedRequest) and entry.fault not in ("reset", "hang", "lost"):
            entry.status = response.status
            response.headers.setdefault("x-request-id", f"req_{self._rid(entry)}")
            response.headers.setdefault("request-id", f"req_{self._rid(entry)}")  # Anthropic's
        anthropic = request.path.rstrip("/") == "/v1/messages"
        extra = self.limits.headers(self._clock.now(), response.status, anthropic)
        for key, value in extra.items():
            response.headers.setdefault(key, value)

    @staticmethod
    def _rid(entry: RecordedRequest) -> str:
        return f"fake{entry.index:06d}"

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
        journal = self.journal
        entry = RecordedRequest(
            journal.received,
            method,
            path,
            dict(request.query),
            mask_headers(request.headers.items()),
            raw,
            parsed,
            clock.now(),
        )
        journal.record(entry)
        request[_ENTRY_KEY] = entry
        route, params = journal.match_route(method, path)
        request[_PARAMS_KEY] = params
        builtin = self._builtin.get((method, path.rstrip("/")))
        is_models = method == "GET" and path.rstrip("/").startswith("/v1/models")
        if route is not None:
            entry.route = route.path
        elif builtin is not None or is_models:
            entry.route = path.rstrip("/")
        anthropic = route is None and path.rstrip("/").startswith("/v1/messages")

        journal.chaos = self.chaos
        chaos = journal.chaos_for(method, path, route)
        if chaos is not None:
            delay = chaos.pick_latency(journal.rng)
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

        fault = journal.next_fault(method, path, chaos)
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
            elif fault.kind in ("lost", "late"):
                request[_FAULT_KEY] = fault  # the route does its work, then the answer is lost

        rid = self._rid(entry)
        if route is not None:
            result = await self._user_answer(route, request)
            if isinstance(result, web.StreamResponse):
                limited = self.limits.admit(clock.now(), 0)
                if limited is not None:
                    return self._refuse(limited, 0, anthropic)
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

        if self.limits.tokens_at_admission and builtin is not None:
            tokens = _admission_tokens(parsed, tokens, path.rstrip("/"))
        limited = self.limits.admit(clock.now(), tokens)
        if limited is not None:
            return self._refuse(limited, tokens, anthropic)
        if fault is not None and fault.kind in ("lost", "late"):
            if fault.kind == "late" and math.isfinite(fault.delay):
                await clock.sleep(fault.delay)  # then answered, if the client still waits
            else:
                if fault.kind == "late":
                    assert self._closing is not None
                    await self._closing.wait()  # held until the server closes: never sent
                entry.fault = "lost"
                return self._reset(request)
        return await self._send(request, answer, fault, anthropic)

    def _refuse(self, refused: Refusal, tokens: int, anthropic: bool) -> web.Response:
        shaped, message, kind, headers = self.limits.refusal(refused, tokens, anthropic)
        body = self.limits.error_body(message)
        if body is not None:
            return web.Response(
                status=429,
                body=_json_bytes(body),
                content_type="application/json",
                headers=headers,
            )
        return self._error_response(
            429, shaped, message, kind, "rate_limit_exceeded", headers=headers
        )


def _admission_tokens(body: Any, total: int, path: str) -> int:
    """What OpenAI counts at admission: the prompt plus ``max_tokens`` (when given)."""
    if not isinstance(body, dict):
        return total
    cap = body.get("max_tokens", body.get("max_completion_tokens", body.get("max_output_tokens")))
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
        return total
    try:
        if path == "/v1/chat/completions":
            prompt = content.plan_chat(body).prompt_tokens
        elif path == "/v1/messages":
            prompt = content.plan_messages(body).prompt_tokens
        elif path == "/v1/responses":
            prompt = content.plan_responses(body).prompt_tokens
        else:
            return total
    except content.BadRequest:
        return total
    return prompt + cap
