"""FakeAPI's journal, routes and scripts: recorded requests, route matching, assertions."""

from __future__ import annotations

import json as jsonlib
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aiohttp import web

from headway.testing.faults import Chaos, Fault

__all__ = ["Handler", "HandlerResult", "Journal", "RecordedRequest", "Route", "Script"]

#: What a route handler may return: a response, or anything JSON-serialisable.
HandlerResult: TypeAlias = web.StreamResponse | dict[str, Any] | list[Any] | str | None
Handler: TypeAlias = Callable[[web.Request], Awaitable[HandlerResult]]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


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


class Journal:
    """FakeAPI's journal, routes, chaos and scripts: what arrived and how to answer it.

    ``requests`` lists what arrived, in order, with arrival times on the server's clock:
    :meth:`admissions` and :meth:`max_in_window` count what the server admitted per
    window, as the server saw it.
    """

    def __init__(self, seed: int | None = 0, journal_limit: int | None = None) -> None:
        if journal_limit is not None and journal_limit < 1:
            raise ValueError(f"journal_limit must be at least 1 or None, got {journal_limit!r}")
        self.journal_limit = journal_limit
        self.requests: list[RecordedRequest] = []
        self.received = 0
        self.chaos: Chaos | None = None
        self.routes: list[Route] = []
        self.route_chaos: list[tuple[str, re.Pattern[str], str, Chaos]] = []
        self.scripts: list[Script] = []
        self.rng = random.Random(seed)

    def record(self, entry: RecordedRequest) -> None:
        """Add an arrival (trimming to about ``journal_limit`` entries)."""
        self.received += 1
        self.requests.append(entry)
        limit = self.journal_limit
        if limit is not None and len(self.requests) >= 2 * limit:
            del self.requests[:-limit]  # amortised: trim to the newest `limit` entries

    def reset(self) -> None:
        """Forget the arrivals and the scripts."""
        self.requests.clear()
        self.received = 0
        self.scripts.clear()

    # -- admissions as the server saw them --------------------------------------------
    def admissions(
        self, method: str | None = None, path: str | None = None, *, status: int = 200
    ) -> list[float]:
        """Arrival times of the requests answered ``status`` (admitted), in order."""
        return [r.time for r in self.calls(method, path) if r.status == status]

    def max_in_window(
        self,
        width: float,
        method: str | None = None,
        path: str | None = None,
        *,
        status: int = 200,
        after: float | None = None,
    ) -> int:
        """The most admissions (answers with ``status``) in any closed window of ``width`` s.

        ``after``: count only arrivals at or after that clock time.
        """
        times = sorted(
            t for t in self.admissions(method, path, status=status) if after is None or t >= after
        )
        best = j = 0
        for i, start in enumerate(times):
            j = max(j, i)
            while j + 1 < len(times) and times[j + 1] <= start + width:
                j += 1
            best = max(best, j - i + 1)
        return best

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
                f"  #{r.index} {r.method} {r.path} -> {r.status}" + _body_of(r)
                for r in self.requests
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
        left = [s for s in self.scripts if s.steps]
        if left:
            lines = "\n".join(
                f"  {s.method} {s.path}: {s.remaining} step(s) left "
                f"({', '.join(f.kind if f.kind != 'status' else str(f.status) for f in s.steps)})"
                for s in left
            )
            raise AssertionError(f"scripted faults were not all played:\n{lines}")

    # -- route, chaos and script lookup ---------------------------------------------------
    def match_route(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in reversed(self.routes):
            if route.method in ("*", method):
                m = route._regex.fullmatch(path)
                if m is not None:
                    return route, m.groupdict()
        return None, {}

    def chaos_for(self, method: str, path: str, route: Route | None) -> Chaos | None:
        if route is not None and route.chaos is not None:
            return route.chaos
        for c_method, regex, _, chaos in reversed(self.route_chaos):
            if c_method in ("*", method) and regex.fullmatch(path) is not None:
                return chaos
        return self.chaos

    def next_fault(self, method: str, path: str, chaos: Chaos | None) -> Fault | None:
        for script in self.scripts:
            if script.steps and script.matches(method, path):
                script.consumed += 1
                return script.steps.popleft()
        return chaos.pick(self.rng) if chaos is not None else None


def _body_of(entry: RecordedRequest, limit: int = 200) -> str:
    """`` body: ...`` (the JSON sent, or the raw bytes), cut to ``limit`` characters."""
    if entry.json is not None:
        text = jsonlib.dumps(entry.json, sort_keys=True, ensure_ascii=False)
    elif entry.body:
        text = entry.body[:limit].decode("utf-8", "replace")
    else:
        return ""
    return " body: " + (text if len(text) <= limit else text[: limit - 3] + "...")
