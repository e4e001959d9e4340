"""The leak guard: find what a test left behind, name it, then clean it up.

A :class:`LeakGuard` watches one test (or any block of code). When it stops it collects
garbage and reports, as :class:`Leak` records:

* tasks created while it watched that are still pending, with where each was created
  and where it is suspended;
* headway clients, endpoints, executors and servers still open (the registry in
  :mod:`headway._resources`);
* ``aiohttp.ClientSession`` objects and connectors, and ``httpx.AsyncClient`` objects
  (with the connections they keep alive), that were not closed, with where each was
  created;
* coroutines that were never awaited, with the file and line Python reports;
* task exceptions nobody retrieved, and tasks destroyed while pending.

Then it cancels and closes what it found, so what comes next is unaffected. The pytest
plugin runs it for tests marked ``no_leaks`` or, with ``--headway-leak-check`` or the
ini option ``headway_leak_check = true``, for every test, and fails the test with a
message that names each leak. Outside pytest::

    async with leak_guard():      # raises LeakError on exit if something leaked
        await code_under_test()

>>> import asyncio
>>> async def main() -> list[str]:
...     guard = LeakGuard()
...     guard.start()
...     asyncio.get_running_loop().create_task(asyncio.sleep(60), name="sleeper")
...     return [leak.kind for leak in await guard.stop()]
>>> asyncio.run(main())
['task']
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import sys
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal, TypeAlias

from headway import _resources

__all__ = ["Leak", "LeakError", "LeakGuard", "LeakKind", "format_leaks", "leak_guard"]

LeakKind: TypeAlias = Literal[
    "task", "resource", "session", "connector", "client", "coroutine", "exception"
]

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)
_THIS_FILE = __file__.removesuffix("c")
_NEVER_AWAITED = r"coroutine .* was never awaited"
_TASK_MESSAGES = ("Task exception was never retrieved", "Task was destroyed but it is pending")
# Tasks a test runner creates around each fixture and test (anyio's pytest plugin): the
# runner's, not the test's.
_RUNNER_TASKS = frozenset({"TestRunner._call_in_runner_task"})


@dataclass(slots=True, frozen=True)
class Leak:
    """One thing left behind.

    Attributes:
        kind: ``task``, ``resource`` (a headway object), ``session``, ``connector``
            (aiohttp), ``client`` (``httpx.AsyncClient``), ``coroutine`` (never awaited)
            or ``exception`` (never retrieved).
        description: what it is, where it came from, and what to do about it.
    """

    kind: LeakKind
    description: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.description}"


class LeakError(AssertionError):
    """Raised by :func:`leak_guard` when the guarded block leaked."""

    def __init__(self, leaks: list[Leak], where: str = "the guarded block") -> None:
        super().__init__(format_leaks(leaks, where))
        self.leaks = leaks


def format_leaks(leaks: list[Leak], where: str) -> str:
    """A readable report of ``leaks``."""
    lines = [f"headway leak guard: {where} leaked {len(leaks)} thing(s):"]
    lines += [f"  - {leak}" for leak in leaks]
    lines.append("(the guard has cancelled and closed them so that later tests are unaffected)")
    return "\n".join(lines)


def _site(frame: FrameType | None) -> str:
    """``file:line in func`` of the first frame outside asyncio and this module."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_ASYNCIO_DIR) and filename != _THIS_FILE:
            return f"{_short(filename)}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return "<unknown>"


def _short(filename: str) -> str:
    try:
        rel = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if rel.startswith(".." + os.sep + "..") else rel


def _coro_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or type(coro).__name__


def _suspended_at(task: asyncio.Task[Any]) -> str:
    """Where the task waits: the innermost frame of its await chain outside asyncio."""
    coro: Any = task.get_coro()
    found = None
    for _ in range(100):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        if found is None or not frame.f_code.co_filename.startswith(_ASYNCIO_DIR):
            found = frame
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    if found is None:
        return "<unknown>"
    return f"{_short(found.f_code.co_filename)}:{found.f_lineno} in {found.f_code.co_name}"


class LeakGuard:
    """Watch for leaks between :meth:`start` and :meth:`stop` (or :meth:`stop_sync`).

    Call :meth:`start` inside the running loop to watch tasks too (without a loop it
    watches resources, sessions and coroutines only). Guards nest: an inner guard
    reports and cleans up what leaked inside it, so an outer one does not see it again.

    Args:
        grace: real seconds to let tasks that are finishing anyway finish, before
            they count as leaked.
        close: cancel and close what leaked (default ``True``).
        gc_generation: the oldest generation :func:`gc.collect` collects when the guard
            stops (2, the default: every generation).

    The collection is cheap however large the process: the guard freezes the objects
    that exist when it starts (:func:`gc.freeze`) and unfreezes them when it stops, so
    the collection looks only at what was allocated while it watched, which is where
    a leak is. (If something else froze objects first, the guard leaves them alone
    and collects the usual way.)
    """

    def __init__(self, *, grace: float = 0.1, close: bool = True, gc_generation: int = 2) -> None:
        self.grace = grace
        self.close = close
        self.gc_generation = gc_generation
        self._loop: asyncio.AbstractEventLoop | None = None
        self._before: set[asyncio.Task[Any]] = set()
        self._sites: weakref.WeakKeyDictionary[asyncio.Task[Any], str] = weakref.WeakKeyDictionary()
        self._resources_before: set[int] = set()
        self._sessions: list[tuple[Any, str]] = []
        self._connectors: list[tuple[Any, str]] = []
        self._servers: list[tuple[Any, str]] = []
        self._clients: list[tuple[Any, str]] = []
        self._coroutines: list[str] = []
        self._loop_errors: list[dict[str, Any]] = []
        self._restore: list[Callable[[], None]] = []
        self._froze = False

    # -- start ----------------------------------------------------------------------------
    def start(self) -> None:
        """Begin watching (inside a running loop to watch its tasks too)."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._resources_before = {id(r) for r in _resources.open_resources()}
        _resources.watch()
        self._restore.append(_resources.unwatch)
        if self._loop is not None:
            self._before = set(asyncio.all_tasks(self._loop))
            self._hook_loop(self._loop)
        self._hook_warnings()
        self._hook_aiohttp()
        if gc.get_freeze_count() == 0:
            gc.freeze()  # the collection at stop then sees only what the test allocated
            self._froze = True

    def _hook_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        previous_factory = loop.get_task_factory()
        sites = self._sites

        def factory(
            loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
        ) -> asyncio.Future[Any]:
            if previous_factory is not None:
                task = previous_factory(loop, coro, **kwargs)
            else:
                task = asyncio.Task(coro, loop=loop, **kwargs)
            if isinstance(task, asyncio.Task):
                sites[task] = _site(inspect.currentframe())
            return task

        loop.set_task_factory(factory)  # type: ignore[arg-type]

        def unset_factory() -> None:
            if loop.get_task_factory() is factory:
                loop.set_task_factory(previous_factory)

        self._restore.append(unset_factory)

        previous_handler = loop.get_exception_handler()
        errors = self._loop_errors

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            message = str(context.get("message", ""))
            if message.startswith(_TASK_MESSAGES) or message.startswith("Unclosed"):
                errors.append(context)
            elif previous_handler is not None:
                previous_handler(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

        def unset_handler() -> None:
            if loop.get_exception_handler() is handler:
                loop.set_exception_handler(previous_handler)

        self._restore.append(unset_handler)

    def _hook_warnings(self) -> None:
        previous = warnings.showwarning
        coroutines = self._coroutines

        def showwarning(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: Any = None,
            line: str | None = None,
        ) -> None:
            text = str(message)
            if issubclass(category, RuntimeWarning) and "was never awaited" in text:
                if filename.removesuffix("c") == _THIS_FILE:
                    text += " (found by the guard's garbage collection)"
                else:
                    text += f" (at {_short(filename)}:{lineno})"
                coroutines.append(text)
                return
            previous(message, category, filename, lineno, file, line)

        warnings.showwarning = showwarning
        warnings.filterwarnings("always", message=_NEVER_AWAITED, category=RuntimeWarning)
        entry = warnings.filters[0]

        def unhook() -> None:
            if warnings.showwarning is showwarning:
                warnings.showwarning = previous
            with contextlib.suppress(ValueError):
                warnings.filters.remove(entry)  # type: ignore[attr-defined]
                mutated = getattr(warnings, "_filters_mutated", None)
                if mutated is not None:  # invalidates the "once" caches (CPython)
                    mutated()

        self._restore.append(unhook)

    def _hook_aiohttp(self) -> None:
        aiohttp = sys.modules.get("aiohttp")
        if aiohttp is not None:
            self._hook_aiohttp_classes(aiohttp)
        httpx = sys.modules.get("httpx")
        if httpx is not None:
            self._wrap_init(httpx.AsyncClient, self._clients)

    def _hook_aiohttp_classes(self, aiohttp: Any) -> None:
        self._wrap_init(aiohttp.ClientSession, self._sessions)
        self._wrap_init(aiohttp.BaseConnector, self._connectors)
        web = sys.modules.get("aiohttp.web")
        if web is not None:
            self._wrap_init(web.Server, self._servers)

    def _wrap_init(self, cls: type, sink: list[tuple[Any, str]]) -> None:
        original = cls.__dict__["__init__"]

        def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
            original(obj, *args, **kwargs)
            sink.append((obj, _site(inspect.currentframe())))

        __init__.__wrapped__ = original  # type: ignore[attr-defined]
        type.__setattr__(cls, "__init__", __init__)

        def unwrap() -> None:
            if cls.__dict__.get("__init__") is __init__:
                type.__setattr__(cls, "__init__", original)

        self._restore.append(unwrap)

    # -- stop -----------------------------------------------------------------------------
    async def stop(self) -> list[Leak]:
        """Stop watching: report what leaked and clean it up (inside the loop)."""
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            pending = self._pending_tasks()
            if pending and self.grace > 0:
                await asyncio.wait(pending, timeout=self.grace)
                pending = [t for t in pending if not t.done()]
            leaks = self._collect(pending)
            if self.close:
                await self._cleanup(pending)
            return leaks
        finally:
            self._unhook()

    def stop_sync(self) -> list[Leak]:
        """Stop watching without a running loop (sync tests)."""
        try:
            return self._collect([])
        finally:
            self._unhook()

    def _unhook(self) -> None:
        if self._froze:  # stopped without collecting
            self._froze = False
            gc.unfreeze()
        while self._restore:
            self._restore.pop()()
        self._sessions.clear()
        self._connectors.clear()
        self._servers.clear()
        self._clients.clear()

    def _pending_tasks(self) -> list[asyncio.Task[Any]]:
        if self._loop is None:
            return []
        current = asyncio.current_task()
        servers = {id(server) for server, _ in self._servers}
        return [
            t
            for t in asyncio.all_tasks(self._loop)
            if t is not current
            and t not in self._before
            and not t.done()
            and _coro_name(t) not in _RUNNER_TASKS
            and not _serves_an_older_server(t, servers)
        ]

    def _collect(self, pending: list[asyncio.Task[Any]]) -> list[Leak]:
        gc.collect(self.gc_generation)
        if self._froze:
            self._froze = False
            gc.unfreeze()
        leaks: list[Leak] = []
        for task in pending:
            site = self._sites.get(task, "<before the guard started>")
            leaks.append(
                Leak(
                    "task",
                    f"task {task.get_name()!r} running {_coro_name(task)}() is still pending "
                    f"(created at {site}; suspended at {_suspended_at(task)}); "
                    "await it, cancel it in a finally, or use a TaskGroup",
                )
            )
        for obj in _resources.open_resources():
            if id(obj) not in self._resources_before:
                leaks.append(
                    Leak(
                        "resource",
                        f"{obj!r} is still open; use `async with` or `await ....aclose()`",
                    )
                )
        owned_connectors: set[int] = set()
        for session, site in self._sessions:
            owned_connectors.add(id(getattr(session, "_connector", None)))
            if not session.closed:
                leaks.append(
                    Leak(
                        "session",
                        f"aiohttp.ClientSession created at {site} was not closed; "
                        "use `async with aiohttp.ClientSession() as session:`",
                    )
                )
        for connector, site in self._connectors:
            if not connector.closed and id(connector) not in owned_connectors:
                leaks.append(
                    Leak(
                        "connector",
                        f"{type(connector).__name__} created at {site} was not closed; "
                        "close it or give it to a session that owns it",
                    )
                )
        for client, site in self._clients:
            if not client.is_closed:
                leaks.append(
                    Leak(
                        "client",
                        f"httpx.AsyncClient created at {site} was not closed"
                        f"{_keep_alive(client)}; use `async with httpx.AsyncClient() as client:`"
                        " or `await client.aclose()`",
                    )
                )
        for text in self._coroutines:
            leaks.append(Leak("coroutine", f"{text}; did you forget `await`?"))
        self._coroutines.clear()
        for context in self._loop_errors:
            leaks.append(_loop_error_leak(context, self._sites))
        self._loop_errors.clear()
        return leaks

    async def _cleanup(self, pending: list[asyncio.Task[Any]]) -> None:
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(Exception):
                await asyncio.wait(pending, timeout=max(self.grace, 1.0))
            for task in pending:
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: no second report
        for obj in _resources.open_resources():
            if id(obj) not in self._resources_before:
                await _close(obj)
        for session, _ in self._sessions:
            if not session.closed:
                await _close(session)
        for connector, _ in self._connectors:
            if not connector.closed:
                await _close(connector)
        for client, _ in self._clients:
            if not client.is_closed:
                await _close(client)
        # Exceptions of tasks that ended while being cancelled are not new leaks.
        self._loop_errors.clear()


def _keep_alive(client: Any) -> str:
    """`` (holding N connection(s))`` for an httpx client whose pool keeps some."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    connections = getattr(pool, "connections", None)
    count = len(connections) if isinstance(connections, list) else 0
    return f" (holding {count} keep-alive connection(s))" if count else ""


def _serves_an_older_server(task: asyncio.Task[Any], new_servers: set[int]) -> bool:
    """Whether ``task`` handles a connection of an aiohttp server older than the guard.

    A server that outlives the test (a module-scoped fixture) owns the tasks that serve
    its keep-alive connections, even when a request of the test created them.
    """
    frame = getattr(task.get_coro(), "cr_frame", None)
    if frame is None or frame.f_code.co_name not in ("start", "_handle_request"):
        return False
    handler = frame.f_locals.get("self")
    if type(handler).__name__ != "RequestHandler":
        return False
    server = getattr(handler, "_manager", None)
    return server is not None and id(server) not in new_servers


def _loop_error_leak(
    context: dict[str, Any], sites: weakref.WeakKeyDictionary[asyncio.Task[Any], str]
) -> Leak:
    message = str(context.get("message", ""))
    future = context.get("future") or context.get("task")
    exc = context.get("exception")
    if isinstance(future, asyncio.Task):
        where = sites.get(future)
        name = f"task {future.get_name()!r} running {_coro_name(future)}()"
        if where:
            name += f" (created at {where})"
        if exc is not None:
            return Leak(
                "exception",
                f"{name} raised {exc!r} and nobody retrieved it; await the task or "
                "add a done callback that reads task.exception()",
            )
        return Leak("task", f"{name}: {message}")
    if message.startswith("Unclosed"):
        kind: LeakKind = "connector" if "connector" in message.lower() else "session"
        return Leak(kind, f"{message} (garbage collected without being closed)")
    return Leak("exception", f"{message}: {exc!r}")


async def _close(obj: Any) -> None:
    closer = getattr(obj, "aclose", None) or getattr(obj, "close", None)
    if closer is None:
        return
    with contextlib.suppress(Exception):
        result = closer()
        if inspect.isawaitable(result):
            async with asyncio.timeout(5):
                await result
    _resources.untrack(obj)


@contextlib.asynccontextmanager
async def leak_guard(*, grace: float = 0.1) -> AsyncIterator[LeakGuard]:
    """Fail (:class:`LeakError`) if the block leaks tasks, sessions or resources.

    The leaks are cleaned up before the error is raised.
    """
    guard = LeakGuard(grace=grace)
    guard.start()
    try:
        yield guard
    except BaseException:
        await guard.stop()
        raise
    leaks = await guard.stop()
    if leaks:
        raise LeakError(leaks)
