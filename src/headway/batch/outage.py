"""The run-level judgement of ``headway run``: outages and rejections stop a run, resumably.

One failed request costs one result. But when *every* request fails the same way, the
fault is not in the lines: the server is down, or rejects the key, or the path is wrong.
Writing one failure line per request then buries the cause and spoils the output.
:class:`RunJudge` watches the results as they come and decides, run-wide:

* **Outage.** A few consecutive results that say the server is unreachable or failing
  (connection errors, timeouts, 5xx, an open breaker) put the run in an *outage*: it
  says why at once (``provider unreachable: connection refused ...; next probe in 2 s``),
  sends nothing but one *probe* at a time (at growing intervals up to
  ``max_probe_interval``), and keeps the failed requests to send them again. The first
  answer ends the outage; after ``max_outage`` seconds without one the run stops with a
  :class:`Verdict`, leaving every unsent line for the resume.
* **Rejection.** A few consecutive 401/403 with no success in between (or 404 on every
  request so far) stop the run at once: "the server rejects the key in WRONG: 401
  invalid_api_key". Those requests are left unsent too.

Results that might be part of such a streak are *held* (not written) until the streak
breaks — then they are written as usual — or reaches the threshold.

>>> judge = RunJudge(max_outage=600)
>>> judge.classify(Result.failure("a", "connection_error", "refused"))
'outage'
>>> judge.classify(Result.failure("a", "authentication_error", "no", status_code=401))
'auth'
>>> judge.classify(Result.success("a", 200, {}))
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Literal

from headway._clock import Clock, resolve_clock
from headway.batch.jobs import BatchRequest
from headway.batch.ledger import Result

__all__ = [
    "EXIT_DISK_FULL",
    "EXIT_OUTAGE",
    "EXIT_REJECTED",
    "RunJudge",
    "Verdict",
]

_log = logging.getLogger("headway.batch")

#: Exit code of a run stopped because the server stayed unreachable for ``--max-outage``.
EXIT_OUTAGE = 3
#: Exit code of a run stopped because the server rejects the key or the path.
EXIT_REJECTED = 4
#: Exit code of a run stopped because the disk is full.
EXIT_DISK_FULL = 5

_OUTAGE_CODES = frozenset({"connection_error", "timeout", "server_error", "circuit_open"})

_OUTAGE_ERRORS = ("ConnectionError", "TimeoutError", "ServerError", "CircuitBreakerOpenError")

Kind = Literal["outage", "auth", "not_found"]


class Verdict:
    """Why a run was stopped: ``reason`` (``outage``/``rejected``), a message, an exit code.

    A plain class, not a dataclass (cheaper to import on the way to the first request).
    """

    __slots__ = ("exit_code", "message", "reason")

    def __init__(self, reason: Literal["outage", "rejected"], message: str, exit_code: int):
        self.reason = reason
        self.message = message
        self.exit_code = exit_code

    def __repr__(self) -> str:
        return (
            f"Verdict(reason={self.reason!r}, message={self.message!r}, "
            f"exit_code={self.exit_code!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verdict):
            return NotImplemented
        return (self.reason, self.message, self.exit_code) == (
            other.reason,
            other.message,
            other.exit_code,
        )

    def __hash__(self) -> int:
        return hash((self.reason, self.message, self.exit_code))


_REFUSED = re.compile(
    r"Cannot connect to host (\S+?)(?::(?:443|80))? ssl:\S+ \[Connect call failed"
)
_HOST = re.compile(r"Cannot connect to host (\S+?)(?::(?:443|80))? ssl:\S+ \[(.*?)\]")


def describe_failure(text: str) -> str:
    """A short cause from an error message (``connection refused to 127.0.0.1:1``...).

    >>> describe_failure("Connection error: Cannot connect to host 127.0.0.1:1 ssl:default "
    ...                  "[Connect call failed ('127.0.0.1', 1)]")
    'connection refused to 127.0.0.1:1'
    >>> describe_failure("APITimeoutError: Request timed out.")
    'no answer within the timeout (APITimeoutError: Request timed out.)'
    """
    text = " ".join(text.split())
    if m := _REFUSED.search(text):
        return f"connection refused to {m.group(1)}"
    if m := _HOST.search(text):
        return f"cannot connect to {m.group(1)} ({m.group(2)})"[:200]
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"no answer within the timeout ({text[:150]})"
    return text[:200]


def _describe(result: Result) -> str:
    """One short phrase for a failed result: its status or code and its message."""
    error = result.error or {}
    message = describe_failure(str(error.get("message", "")))
    code = str(error.get("code", ""))
    if result.status_code is not None:
        body = result.body
        detail = ""
        if isinstance(body, dict):
            inner = body.get("error")
            if isinstance(inner, dict):
                detail = str(inner.get("code") or inner.get("type") or "")
        return f"{result.status_code} {detail or code}".strip()
    return message or code


class _Held:
    __slots__ = ("kind", "request", "result")

    def __init__(self, request: BatchRequest, result: Result, kind: Kind) -> None:
        self.request = request
        self.result = result
        self.kind = kind


class _Streak:
    __slots__ = ("count", "held")

    def __init__(self) -> None:
        self.count = 0
        self.held: list[_Held] = []


class RunJudge:
    """Decides when a run's failures are the server's, not the lines' (see the module).

    Args:
        max_outage: seconds an outage may last before the run stops (:data:`EXIT_OUTAGE`).
        outage_after: consecutive outage-like results that start an outage.
        rejected_after: consecutive 401/403 (with no success between) that stop the run;
            also the number of 404s, with no other answer yet, that stop it.
        first_probe: seconds from the start of an outage to the first probe; the interval
            doubles after each failed probe up to ``max_probe_interval``.
        key_env: the variable the key came from, named in the rejection message.
        notify: called with each message for the user (default: a warning log record).
        clock: the clock for probe times and the outage limit.
    """

    def __init__(
        self,
        *,
        max_outage: float = 600.0,
        outage_after: int = 3,
        rejected_after: int = 3,
        first_probe: float = 2.0,
        max_probe_interval: float = 30.0,
        key_env: str | None = None,
        notify: Callable[[str], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_outage <= 0:
            raise ValueError("max_outage must be positive")
        self.max_outage = max_outage
        self.outage_after = max(1, outage_after)
        self.rejected_after = max(1, rejected_after)
        self.first_probe = first_probe
        self.max_probe_interval = max(first_probe, max_probe_interval)
        self.key_env = key_env
        self.notify: Callable[[str], None] = notify or _log.warning
        self.clock = resolve_clock(clock)
        #: Set once the run must stop; the runner reads it.
        self.verdict: Verdict | None = None
        #: Requests to send again (the runner's workers take these first).
        self.resend: list[BatchRequest] = []
        self.outages = 0
        self._streaks: dict[Kind, _Streak] = {k: _Streak() for k in ("outage", "auth", "not_found")}
        self._answered = False  # any answer other than a 404 so far
        self._told = False  # the first retry's cause was shown
        self._stopped = False
        self._in_outage = False
        self._since = 0.0
        self._interval = first_probe
        self._next_probe = 0.0
        self._probing = False
        self._cause = ""
        self._changed = asyncio.Event()
        #: Called once when a verdict is reached (the runner stops the run).
        self.on_verdict: Callable[[], None] | None = None

    # -- what the runner calls --------------------------------------------------------------
    @property
    def in_outage(self) -> bool:
        """True while the server is judged unreachable."""
        return self._in_outage

    def classify(self, result: Result) -> Kind | None:
        """Which streak ``result`` belongs to, or ``None`` for an ordinary result."""
        code = result.code
        if code is None:
            return None
        if code in _OUTAGE_CODES:
            return "outage"
        if code == "authentication_error" or result.status_code in (401, 403):
            return "auth"
        if code == "not_found" and not self._answered:
            return "not_found"
        return None

    def judge(
        self, request: BatchRequest, result: Result, *, hint: str | None = None
    ) -> list[Result]:
        """Take one result; return the results to write now (maybe none, maybe several).

        Results of a possible streak are held; when ``result`` breaks a streak, the held
        ones come back to be written; when it completes one, they are sent again
        (outage) or dropped for the resume (rejection), and :attr:`verdict` may be set.
        ``hint``: the request's last retry reason, the cause named when the result itself
        only says that the breaker is open.
        """
        kind = None if result.error is None else self.classify(result)
        if kind != "outage":
            self._end_outage()
        if kind is None:
            self._answered = True
            streaks = self._streaks
            if not (streaks["auth"].count or streaks["outage"].count or streaks["not_found"].count):
                return [result]  # the common case: nothing held (a streak holds what it counts)
            return [
                result,
                *self._release("auth"),
                *self._release("outage"),
                *self._release("not_found"),
            ]
        if kind == "outage":
            if result.code == "circuit_open" and hint:
                self._cause = describe_failure(hint.partition(": ")[2] or hint)
            elif result.code != "circuit_open" or not self._cause:
                self._cause = _describe(result)
            if self._in_outage:
                self._probe_failed(request)
                return []
            streak = self._streaks["outage"]
            streak.count += 1
            streak.held.append(_Held(request, result, kind))
            if streak.count >= self.outage_after:
                self._start_outage()
            return []
        # auth or 404: the server answered, so a streak of outage results is over
        released = self._release("outage")
        if kind == "auth":
            self._answered = True
        streak = self._streaks[kind]
        streak.count += 1
        streak.held.append(_Held(request, result, kind))
        if streak.count >= self.rejected_after:
            self._reject(kind, result)
        return released

    def retrying(self, reason: str) -> None:
        """A request is being retried for ``reason``: before any answer, say so once.

        So the cause is on screen within seconds, while the retries are still running.
        """
        if self._answered or self._told or self._in_outage or self.verdict is not None:
            return
        kind, _, text = reason.partition(": ")
        if not kind.endswith(_OUTAGE_ERRORS):
            return  # a 429 or a garbled body: not a sign of an outage
        self._told = True
        self.notify(f"first requests failing: {describe_failure(text or reason)}; retrying")

    def held(self) -> list[Result]:
        """Results still held at the end of a run without a verdict: write them."""
        if self.verdict is not None:
            return []
        out: list[Result] = []
        for kind in ("outage", "auth", "not_found"):
            out.extend(h.result for h in self._streaks[kind].held)
            self._streaks[kind] = _Streak()
        return out

    def gate_nowait(self) -> Literal["send", "stop"] | None:
        """:meth:`gate`'s answer when it needs no wait (outside an outage), else ``None``.

        The runner asks this first: the usual answer costs no coroutine.
        """
        if self.verdict is not None or self._stopped:
            return "stop"
        return None if self._in_outage else "send"

    async def gate(self) -> Literal["send", "probe", "stop"]:
        """Wait until a request may be sent: ``send``, ``probe``, or ``stop`` (the run ends).

        Outside an outage it returns ``send`` at once. In an outage, one caller at a time
        is let through as the ``probe``, at the probe time; the others wait for its
        outcome. A probe calls :meth:`probe_done` when its send is over.
        """
        while True:
            if self.verdict is not None or self._stopped:
                return "stop"
            if not self._in_outage:
                return "send"
            changed = self._changed
            if not self._probing:
                wait = self._next_probe - self.clock.now()
                if wait <= 0:
                    self._probing = True
                    return "probe"
                try:
                    async with asyncio.timeout(wait):
                        await changed.wait()
                except TimeoutError:
                    pass
            else:
                await changed.wait()

    def stop(self) -> None:
        """The run is stopping (Ctrl-C): callers waiting in :meth:`gate` leave at once."""
        self._stopped = True
        self._signal()

    def probe_done(self) -> None:
        """The probe's send finished (whatever its outcome); let the next one go later."""
        self._probing = False
        self._signal()

    async def watch(self) -> None:
        """Stop the run when an outage outlasts ``max_outage`` (the runner runs this)."""
        while self.verdict is None:
            if not self._in_outage:
                await self._changed.wait()
                continue
            remaining = self._since + self.max_outage - self.clock.now()
            if remaining <= 0:
                self._give_up()
                return
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass

    # -- inside ----------------------------------------------------------------------------
    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _release(self, kind: Kind) -> list[Result]:
        streak = self._streaks[kind]
        if not streak.count and not streak.held:
            return []
        self._streaks[kind] = _Streak()
        return [h.result for h in streak.held]

    def _start_outage(self) -> None:
        streak = self._streaks["outage"]
        self._streaks["outage"] = _Streak()
        self.resend.extend(h.request for h in streak.held)
        self._in_outage = True
        self.outages += 1
        self._since = self.clock.now()
        self._interval = self.first_probe
        self._next_probe = self._since + self._interval
        self.notify(
            f"provider unreachable: {self._cause}; next probe in {_secs(self._interval)} "
            f"(giving up after {_secs(self.max_outage)} of outage: --max-outage)"
        )
        self._signal()

    def _probe_failed(self, request: BatchRequest) -> None:
        self.resend.append(request)
        now = self.clock.now()
        if now < self._next_probe:
            return  # a request already in flight when the outage began, not the probe
        self._interval = min(self._interval * 2, self.max_probe_interval)
        self._next_probe = now + self._interval
        self.notify(
            f"still unreachable after {_secs(now - self._since)}: {self._cause}; "
            f"next probe in {_secs(self._interval)}"
        )
        self._signal()

    def _end_outage(self) -> None:
        if not self._in_outage:
            return
        self._in_outage = False
        self.notify(
            f"provider answers again after {_secs(self.clock.now() - self._since)} of outage; "
            "resuming"
        )
        self._signal()

    def _give_up(self) -> None:
        self._set_verdict(
            Verdict(
                "outage",
                f"stopped: the provider stayed unreachable for {_secs(self.max_outage)} "
                f"({self._cause}); the unsent requests are left for the resume: run the same "
                "command again once it is back (or raise --max-outage)",
                EXIT_OUTAGE,
            )
        )

    def _reject(self, kind: Kind, result: Result) -> None:
        what = _describe(result)
        if kind == "auth":
            where = f"the key in {self.key_env}" if self.key_env else "the request's credentials"
            message = (
                f"stopped: the server rejects {where}: {what}; "
                f"{self._streaks[kind].count} requests in a row. "
                "Check the key (--api-key-env names the variable), then run the same command "
                "again: the unsent requests are left for it"
            )
        else:
            message = (
                f"stopped: every request so far answered {what} (not found): check --base-url "
                "and --endpoint (or the lines' url and model), then run the same command again"
            )
        self._set_verdict(Verdict("rejected", message, EXIT_REJECTED))

    def _set_verdict(self, verdict: Verdict) -> None:
        if self.verdict is not None:
            return
        self.verdict = verdict
        for kind in ("outage", "auth", "not_found"):
            self._streaks[kind] = _Streak()
        self.resend.clear()
        self.notify(verdict.message)
        self._signal()
        if self.on_verdict is not None:
            self.on_verdict()


def _secs(seconds: float) -> str:
    """``8 s``, ``2 min``, ``1 min 30 s``.

    >>> _secs(8), _secs(120), _secs(90.4), _secs(0.5)
    ('8 s', '2 min', '1 min 30 s', '0.5 s')
    """
    if seconds < 1:
        return f"{seconds:.1f} s"
    total = round(seconds)
    minutes, secs = divmod(total, 60)
    if not minutes:
        return f"{secs} s"
    return f"{minutes} min" + (f" {secs} s" if secs else "")
