"""One request as a policy sends it: an attempt per call (no per-call closures)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headway.errors import InvalidResponseError
from headway.http.mapping import error_for_status
from headway.http.ratelimit_headers import sync_from_headers
from headway.http.tokens import usage_tokens
from headway.http.transport import Response, StreamResponse, Transport

__all__: list[str] = []  # internal: AsyncAPIClient uses it


def _json_or_none(resp: Response) -> Any:
    ctype = resp.headers.get("Content-Type") or ""
    if "json" not in ctype or not resp.content:
        return None
    try:
        return resp.json()
    except InvalidResponseError:
        return None


class _Attempt:
    """One request, sent once per attempt by a policy (no per-call closures)."""

    __slots__ = (
        "data",
        "headers",
        "json",
        "method",
        "params",
        "parse",
        "timeout",
        "transport",
        "url",
    )

    def __init__(
        self,
        transport: Transport,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, Any] | None,
        json: Any,
        data: Any,
        timeout: float | None,
        parse: bool,
    ) -> None:
        self.transport = transport
        self.method = method
        self.url = url
        self.headers = headers
        self.params = params
        self.json = json
        self.data = data
        self.timeout = timeout
        self.parse = parse

    async def __call__(self, ctx: Any) -> Response:
        resp = await self.transport.send(
            self.method,
            self.url,
            headers=self.headers,
            params=self.params,
            json=self.json,
            data=self.data,
            timeout=self.timeout,
        )
        limiter = ctx.limiter
        if limiter is not None:
            sync_from_headers(limiter, resp.headers)
        if resp.status >= 400:
            _refund_tokens(ctx.reservation)
            raise error_for_status(resp.status, resp.headers, resp.content, self.method, self.url)
        reservation = ctx.reservation
        if self.parse:
            body = resp.parsed()  # a garbled body fails this attempt (and is retried)
            if reservation is not None and reservation.tokens:
                used = usage_tokens(body)
                if used is not None:
                    reservation.settle(used)
        elif reservation is not None and reservation.tokens:
            used = usage_tokens(_json_or_none(resp))
            if used is not None:
                reservation.settle(used)
        return resp


def _refund_tokens(reservation: Any) -> None:
    """An error answer generated no tokens: give the attempt's token estimate back."""
    if reservation is not None and reservation.tokens:
        reservation.settle(0)


class _StreamAttempt:
    """Opening a stream, once per attempt (``Policy.open`` keeps the slot in a lease)."""

    __slots__ = ("call",)

    def __init__(self, call: _Attempt) -> None:
        self.call = call

    async def __call__(self, ctx: Any) -> StreamResponse:
        return await _open_checked(self.call, ctx.limiter, ctx.reservation)


async def _open_checked(c: _Attempt, limiter: Any, reservation: Any) -> StreamResponse:
    resp = await c.transport.open_stream(
        c.method,
        c.url,
        headers=c.headers,
        params=c.params,
        json=c.json,
        data=c.data,
        timeout=c.timeout,
    )
    try:
        if limiter is not None:
            sync_from_headers(limiter, resp.headers)
        if resp.status >= 400:
            _refund_tokens(reservation)
            content = await resp.aread()
            raise error_for_status(resp.status, resp.headers, content, c.method, c.url)
    except BaseException:
        await resp.aclose()
        raise
    return resp
