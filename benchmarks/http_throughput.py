"""HTTP throughput: requests/s against a fast loopback server, side by side in one run.

    python benchmarks/http_throughput.py            # full run (about a minute)
    python benchmarks/http_throughput.py --quick    # a smoke run
    python benchmarks/http_throughput.py --levels 64 --clients aiohttp,headway
                                                    # raw aiohttp and headway's only

Clients, each sending OpenAI-style chat completions and parsing the JSON answer:

* raw aiohttp (``ClientSession.post`` + ``resp.json()``, unlimited connector),
* raw httpx (``AsyncClient.post`` + ``resp.json()``, pool sized to the concurrency),
* the OpenAI SDK's default client (``AsyncOpenAI(max_retries=0)``, typed models),
* headway ``AsyncAPIClient`` with a full ``Policy`` (retry + budget, request and token
  limits set far above the load, concurrency limit, circuit breaker),
* headway ``Endpoint`` (default policy from ``EndpointConfig`` with rpm/tpm/concurrency,
  token estimation, limit-header sync and usage settling).

The server runs in a separate process: a minimal keep-alive HTTP/1.1 responder on
asyncio, much faster than any of the clients, answering with a fixed chat completion
and OpenAI's ``x-ratelimit-*`` headers. Each cell is the median of several timed
windows; windows of the different clients are interleaved so drift hits all alike.

Writes ``benchmarks/results/http_throughput.json`` and ``.md``. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
PAYLOAD = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
    "max_tokens": 16,
}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, benchmark!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"x-request-id: req-bench\r\n"
    b"x-ratelimit-limit-requests: 100000000\r\n"
    b"x-ratelimit-remaining-requests: 99999999\r\n"
    b"x-ratelimit-reset-requests: 1ms\r\n"
    b"x-ratelimit-limit-tokens: 1000000000000\r\n"
    b"x-ratelimit-remaining-tokens: 999999999999\r\n"
    b"x-ratelimit-reset-tokens: 1ms\r\n"
    b"Content-Length: " + str(len(ANSWER)).encode() + b"\r\n\r\n" + ANSWER
)


# -- the server (separate process) -----------------------------------------------------------
class _Responder(asyncio.Protocol):
    """Keep-alive HTTP/1.1: answer every complete request with the canned response."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            length = 0
            pos = head.find(b"content-length:")
            if pos >= 0:
                stop = head.find(b"\r\n", pos)
                length = int(head[pos + 15 : stop if stop >= 0 else None])
            total = end + 4 + length
            if len(buf) < total:
                break
            buf = buf[total:]
            out.append(RESPONSE)
        self.buf = buf
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


def _serve(port_queue: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Responder, "127.0.0.1", 0, backlog=4096)
        port_queue.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


# -- clients ---------------------------------------------------------------------------------
Call = Callable[[], Awaitable[Any]]


async def raw_aiohttp(stack: AsyncExitStack, base: str, conc: int) -> Call:
    import aiohttp

    session = await stack.enter_async_context(
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    )
    url = f"{base}/v1/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}

    async def call() -> Any:
        async with session.post(url, json=PAYLOAD, headers=headers) as resp:
            return await resp.json()

    return call


async def raw_httpx(stack: AsyncExitStack, base: str, conc: int) -> Call:
    import httpx

    client = await stack.enter_async_context(
        httpx.AsyncClient(limits=httpx.Limits(max_connections=conc, max_keepalive_connections=conc))
    )
    url = f"{base}/v1/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}

    async def call() -> Any:
        resp = await client.post(url, json=PAYLOAD, headers=headers)
        return resp.json()

    return call


async def openai_sdk(stack: AsyncExitStack, base: str, conc: int) -> Call:
    import openai

    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=f"{base}/v1", max_retries=0)
    stack.push_async_callback(client.close)
    create = client.chat.completions.create

    async def call() -> Any:
        return await create(**PAYLOAD)  # type: ignore[call-overload]

    return call


def _full_policy() -> Any:
    from headway import Policy, RetryPolicy
    from headway.limits import MultiLimiter
    from headway.resilience.breaker import CircuitBreaker

    return Policy(
        retry=RetryPolicy(max_retries=3),
        limiter=MultiLimiter.for_llm(rpm=1e9, tpm=1e13),
        concurrency=100_000,
        breaker=CircuitBreaker(),
    )


async def headway_client(stack: AsyncExitStack, base: str, conc: int) -> Call:
    from headway import AsyncAPIClient

    client = await stack.enter_async_context(
        AsyncAPIClient(f"{base}/v1", auth="sk-bench", policy=_full_policy())
    )
    post = client.post

    async def call() -> Any:
        return await post("/chat/completions", json=PAYLOAD)

    return call


async def headway_plain(stack: AsyncExitStack, base: str, conc: int) -> Call:
    from headway import AsyncAPIClient

    client = await stack.enter_async_context(AsyncAPIClient(f"{base}/v1", auth="sk-bench"))
    post = client.post

    async def call() -> Any:
        return await post("/chat/completions", json=PAYLOAD)

    return call


async def headway_endpoint(stack: AsyncExitStack, base: str, conc: int) -> Call:
    from headway import Endpoint, EndpointConfig

    config = EndpointConfig(
        name="bench",
        provider="openai",
        base_url=f"{base}/v1",
        endpoint="chat/completions",
        api_key="sk-bench",
        rpm=1e9,
        tpm=1e13,
        concurrency=100_000,
    )
    ep = await stack.enter_async_context(Endpoint(config))
    return lambda: ep.call(PAYLOAD)


CLIENTS: dict[str, Callable[[AsyncExitStack, str, int], Awaitable[Call]]] = {
    "raw aiohttp": raw_aiohttp,
    "raw httpx": raw_httpx,
    "openai SDK (default client)": openai_sdk,
    "headway AsyncAPIClient, no policy": headway_plain,
    "headway AsyncAPIClient + Policy": headway_client,
    "headway Endpoint": headway_endpoint,
}


async def _window(call: Call, conc: int, seconds: float) -> tuple[float, float]:
    """Requests/s of ``conc`` workers calling in a loop for ``seconds``, and the client
    process's CPU microseconds per request (steadier than wall time on a busy machine)."""
    perf = time.perf_counter
    done = 0
    end = 0.0

    async def worker() -> None:
        nonlocal done
        while perf() < end:
            await call()
            done += 1

    end = perf() + seconds
    start = perf()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(conc)))
    cpu = time.process_time() - cpu
    return done / (perf() - start), cpu / max(done, 1) * 1e6


Samples = dict[str, dict[int, list[float]]]


async def measure(
    base: str,
    levels: list[int],
    runs: int,
    seconds: float,
    warmup: float,
    clients: dict[str, Callable[[AsyncExitStack, str, int], Awaitable[Call]]],
) -> tuple[Samples, Samples]:
    results: Samples = {name: {} for name in clients}
    cpu_us: Samples = {name: {} for name in clients}
    for conc in levels:
        async with AsyncExitStack() as stack:
            calls = {name: await make(stack, base, conc) for name, make in clients.items()}
            for call in calls.values():  # warm up: connections, caches, imports
                await _window(call, conc, warmup)
            for _ in range(runs):
                for name, call in calls.items():
                    gc.collect()
                    rate, us = await _window(call, conc, seconds)
                    results[name].setdefault(conc, []).append(rate)
                    cpu_us[name].setdefault(conc, []).append(us)
                    print(
                        f"  c={conc:<4} {name:<34} {rate:>9.0f} req/s {us:>8.1f} us CPU/req",
                        file=sys.stderr,
                    )
    return results, cpu_us


_LOAD: list[str] = []


def _load() -> str:
    if not _LOAD:
        try:
            _LOAD.append(f"{os.getloadavg()[0]:.1f}")
        except OSError:  # pragma: no cover - not on every platform
            _LOAD.append("n/a")
    return _LOAD[0]


def render(
    summary: dict[str, dict[int, float]],
    cpu: dict[str, dict[int, float]],
    levels: list[int],
    command: str,
) -> str:
    base = summary["raw aiohttp"]
    httpx_ = summary.get("raw httpx")
    lines = [
        "# HTTP throughput",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{mp.cpu_count()} CPUs, load average {_load()} when the run started. Server: a "
        "minimal asyncio keep-alive responder in a separate process. Median requests/s of "
        "the timed windows; on a shared machine the windows vary by +-20%, and the CPU "
        "table below is the steadier signal.",
        "",
        "| client | " + " | ".join(f"c={c}" for c in levels) + " | vs aiohttp @64 | vs httpx @64 |",
        "|---|" + "---:|" * len(levels) + "---:|---:|",
    ]
    for name, row in summary.items():
        cells = " | ".join(f"{row[c]:,.0f}" for c in levels)
        ref = 64 if 64 in levels else levels[-1]
        vs_httpx = "n/a" if httpx_ is None else f"{row[ref] / httpx_[ref]:.1f}x"
        lines.append(f"| {name} | {cells} | {row[ref] / base[ref]:.2f}x | {vs_httpx} |")
    lines += [
        "",
        "Client CPU per request (microseconds, median; lower is better):",
        "",
        "| client | " + " | ".join(f"c={c}" for c in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for name, row in cpu.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:,.0f}" for c in levels) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, one run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--levels", default="1,64,256")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--clients",
        default="",
        help="comma-separated parts of client names to run (raw aiohttp always runs)",
    )
    args = parser.parse_args()
    wanted = [part.strip() for part in args.clients.split(",") if part.strip()]
    clients = {
        name: make
        for name, make in CLIENTS.items()
        if not wanted or name == "raw aiohttp" or any(part in name for part in wanted)
    }
    runs, seconds, warmup = (1, 0.3, 0.2) if args.quick else (args.runs, args.seconds, 0.5)
    levels = [int(x) for x in args.levels.split(",")]

    _load()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    server = ctx.Process(target=_serve, args=(queue,), daemon=True)
    server.start()
    try:
        port = queue.get(timeout=30)
        raw, raw_cpu = asyncio.run(
            measure(f"http://127.0.0.1:{port}", levels, runs, seconds, warmup, clients)
        )
    finally:
        server.terminate()
        server.join()
    summary = {name: {c: statistics.median(v) for c, v in row.items()} for name, row in raw.items()}
    cpu = {name: {c: statistics.median(v) for c, v in row.items()} for name, row in raw_cpu.items()}
    command = "python benchmarks/http_throughput.py" + (" --quick" if args.quick else "")
    table = render(summary, cpu, levels, command)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        data = {
            "command": command,
            "levels": levels,
            "runs": runs,
            "seconds": seconds,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "median_rps": {n: {str(c): v for c, v in row.items()} for n, row in summary.items()},
            "median_cpu_us_per_request": {
                n: {str(c): v for c, v in row.items()} for n, row in cpu.items()
            },
            "samples": {n: {str(c): v for c, v in row.items()} for n, row in raw.items()},
        }
        (RESULTS / "http_throughput.json").write_text(json.dumps(data, indent=2) + "\n")
        (RESULTS / "http_throughput.md").write_text(table)


if __name__ == "__main__":
    main()
