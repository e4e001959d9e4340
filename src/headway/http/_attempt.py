"""One request as a policy sends it: an attempt per call (no per-call closures)."""

from __future__ import annotations

from typing import Any

from headway._secrets import secret_values
from headway.errors import InvalidResponseError
from headway.http.ratelimit_headers import sync_from_headers
from headway.http.status import error_for_status
from headway.http.tokens import usage_tokens
from headway.http.transports.base import Request, Response, StreamResponse, Transport

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

    __slots__ = ("request", "transport")

    def __init__(self, transport: Transport, request: Request) -> None:
        self.transport = transport
        self.request = request

    async def __call__(self, ctx: Any) -> Response:
        request = self.request
        resp = await self.transport.send(request)
        limiter = ctx.limiter
        if limiter is not None:
            sync_from_headers(limiter, resp.headers)
        if resp.status >= 400:
            _refund_tokens(ctx.reservation)
            raise error_for_status(
                resp.status,
                resp.headers,
                resp.content,
                request.method,
                request.url,
                secrets=secret_values(request.headers, request.secret_headers),
            )
        reservation = ctx.reservation
        if request.parse:
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

    __slots__ = ("request", "transport")

    def __init__(self, transport: Transport, request: Request) -> None:
        self.transport = transport
        self.request = request

    async def __call__(self, ctx: Any) -> StreamResponse:
        return await open_checked(self.transport, self.request, ctx.limiter, ctx.reservation)


async def open_checked(
    transport: Transport, request: Request, limiter: Any, reservation: Any
) -> StreamResponse:
    """Open a stream; a status >= 400 raises its typed error (the stream closed)."""
    resp = await transport.open_stream(request)
    try:
        if limiter is not None:
            sync_from_headers(limiter, resp.headers)
        if resp.status >= 400:
            _refund_tokens(reservation)
            content = await resp.aread()
            raise error_for_status(
                resp.status,
                resp.headers,
                content,
                request.method,
                request.url,
                secrets=secret_values(request.headers, request.secret_headers),
            )
    except BaseException:
        await resp.aclose()
        raise
    return resp
