"""headway.http.headers: HeaderFactory and case-insensitive header merging."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from headway.errors import ConfigurationError
from headway.http import AsyncAPIClient, HeaderFactory
from headway.http.headers import merge_headers

SECRET = "sk-very-secret-123"


def test_header_factory() -> None:
    assert (
        HeaderFactory.get_header(auth_type="bearer", api_key=SECRET)["Authorization"]
        == f"Bearer {SECRET}"
    )
    assert HeaderFactory.get_header(
        auth_type="x-api-key", api_key=SecretStr("k"), default_headers={"a": "b"}
    ) == {
        "Content-Type": "application/json",
        "x-api-key": "k",
        "a": "b",
    }
    assert HeaderFactory.get_header(auth_type="none") == {"Content-Type": "application/json"}
    with pytest.raises(ConfigurationError, match="needs an API key"):
        HeaderFactory.get_header(auth_type="bearer")
    with pytest.raises(ConfigurationError, match="needs an API key"):
        HeaderFactory.get_header(auth_type="x-api-key", api_key=SecretStr(""))
    with pytest.raises(ConfigurationError, match="unknown auth_type"):
        HeaderFactory.get_header(auth_type="basic", api_key="k")  # type: ignore[arg-type]
    assert HeaderFactory.get_content_type_header("text/plain") == {"Content-Type": "text/plain"}
    assert HeaderFactory.get_bearer_auth_header("k") == {"Authorization": "Bearer k"}
    assert HeaderFactory.get_x_api_key_header("k") == {"x-api-key": "k"}


def test_merge_headers_is_case_insensitive() -> None:
    base = {"authorization": "Bearer default", "Accept": "json", "X-A": "1"}
    assert merge_headers(base, {"AUTHORIZATION": "Bearer mine", "x-a": "2"}) == {
        "Accept": "json",
        "AUTHORIZATION": "Bearer mine",
        "x-a": "2",
    }
    assert merge_headers(base, None) == base
    assert merge_headers(base, None) is not base


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_a_per_request_header_replaces_the_default_whatever_its_case(kind: str) -> None:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with AsyncAPIClient(
            url,
            auth="default-key",
            headers={"x-trace": "a"},
            transport=kind,  # type: ignore[arg-type]
        ) as client:
            await client.get("/", headers={"AUTHORIZATION": "Bearer per-call", "X-TRACE": "b"})
            async for _ in client.stream("GET", "/", mode="bytes", headers={"X-Trace": "c"}):
                pass
    finally:
        server.close()
        await server.wait_closed()
    first = [line.lower() for line in heads[0].split(b"\r\n")]
    assert [h for h in first if h.startswith(b"authorization:")] == [
        b"authorization: bearer per-call"
    ]
    assert [h for h in first if h.startswith(b"x-trace:")] == [b"x-trace: b"]
    second = [line.lower() for line in heads[1].split(b"\r\n")]
    assert [h for h in second if h.startswith(b"authorization:")] == [
        b"authorization: bearer default-key"
    ]
    assert [h for h in second if h.startswith(b"x-trace:")] == [b"x-trace: c"]
