"""SSE, NDJSON and line framing over arbitrary chunking."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headway.errors import InvalidResponseError, StreamError
from headway.http import (
    AsyncAPIClient,
    Endpoint,
    EndpointConfig,
    LineDecoder,
    NDJSONDecoder,
    ServerSentEvent,
    SSEDecoder,
)

RawServerFactory = Callable[[bytes], Awaitable[str]]


def feed_all(decoder: SSEDecoder, chunks: list[bytes]) -> list[ServerSentEvent]:
    out: list[ServerSentEvent] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.flush())
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, start = [], 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_sse_line_endings(eol: bytes) -> None:
    raw = eol.join([b"event: a", b"id: 7", b"retry: 1500", b"data: x", b"data: y", b"", b""])
    events = feed_all(SSEDecoder(), [raw])
    assert events == [ServerSentEvent("a", "x\ny", "7", 1500)]


def test_sse_comments_fields_and_defaults() -> None:
    raw = (
        b"\xef\xbb\xbf: keep-alive\n\ndata\n\ndata:no-space\nunknown: z\n\n"
        b"id: bad\x00id\nretry: soon\ndata: q\n\nevent: only\n\n"
    )
    events = feed_all(SSEDecoder(), [raw])
    assert [(e.event, e.data, e.id, e.retry) for e in events] == [
        ("message", "", None, None),
        ("message", "no-space", None, None),
        ("message", "q", None, None),
    ]


def test_sse_event_json_and_unterminated_event_is_discarded() -> None:
    dec = SSEDecoder()
    [event] = dec.feed(b'data: {"a": 1}\n\n')
    assert event.json() == {"a": 1}
    assert dec.feed(b'data: {"a": 2}') == []
    assert dec.flush() == []  # WHATWG: an event the stream did not terminate is dropped
    assert dec.incomplete
    whole = SSEDecoder()
    whole.feed(b"data: x\n\n: trailing comment")
    assert whole.flush() == []
    assert not whole.incomplete


def test_sse_one_mebibyte_event_in_small_chunks() -> None:
    payload = json.dumps({"text": "x" * (1 << 20)}).encode()
    raw = b"data: " + payload + b"\n\n"
    dec = SSEDecoder()
    events: list[ServerSentEvent] = []
    for i in range(0, len(raw), 1000):
        events.extend(dec.feed(raw[i : i + 1000]))
    assert len(events) == 1
    assert len(events[0].json()["text"]) == 1 << 20


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    dec = LineDecoder()
    assert dec.feed(b"a\r") == [b"a"]
    assert dec.feed(b"\n") == []
    assert dec.feed(b"\nb") == [b""]
    assert dec.flush() == [b"b"]
    assert dec.flush() == []
    assert dec.feed(b"") == []


lines_st = st.lists(
    st.text(
        alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
        max_size=20,
    )
)


@given(
    lines=lines_st, eol=st.sampled_from(["\n", "\r", "\r\n"]), cuts=st.lists(st.integers(0, 10_000))
)
def test_line_decoder_is_independent_of_chunking(
    lines: list[str], eol: str, cuts: list[int]
) -> None:
    data = "".join(line + eol for line in lines).encode()
    dec = LineDecoder()
    got: list[bytes] = []
    for chunk in split(data, cuts):
        got.extend(dec.feed(chunk))
    got.extend(dec.flush())
    assert got == [line.encode() for line in lines]


@given(
    datas=st.lists(
        st.text(
            alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]),
            max_size=30,
        ),
        min_size=1,
        max_size=5,
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_sse_is_independent_of_chunking(datas: list[str], cuts: list[int]) -> None:
    raw = "".join(f"data: {d}\r\n\r\n" for d in datas).encode()
    events = feed_all(SSEDecoder(), split(raw, cuts))
    assert [e.data for e in events] == datas


def test_ndjson_decoder() -> None:
    dec = NDJSONDecoder()
    assert dec.feed(b'{"a": 1}\n\n{"b"') == [{"a": 1}]
    assert dec.feed(b": 2}\r\n[1") == [{"b": 2}]
    with pytest.raises(json.JSONDecodeError):
        dec.flush()
    dec2 = NDJSONDecoder()
    dec2.feed(b"[1, 2]")
    assert dec2.flush() == [[1, 2]]
    with pytest.raises(json.JSONDecodeError):
        NDJSONDecoder().feed(b"nope\n")


async def _collect(items: AsyncIterator[Any], into: list[Any]) -> None:
    async for item in items:
        into.append(item)


def _sse_answer(body: bytes, ctype: bytes = b"text/event-stream") -> bytes:
    """A close-delimited answer: no Content-Length, no chunking; the close ends it."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nConnection: close\r\n\r\n" + body


@pytest.mark.parametrize("kind", ["aiohttp", "httpx"])
async def test_sse_cut_mid_event_raises_and_never_yields_the_half(
    serve_raw: RawServerFactory, kind: str
) -> None:
    url = await serve_raw(_sse_answer(b'data: {"n": 0}\n\ndata: {"n": 1, "text": "hal'))
    got: list[Any] = []
    async with AsyncAPIClient(url, transport=kind) as client:  # type: ignore[arg-type]
        items = client.stream("POST", "/chat", mode="json", json={"q": 1})
        with pytest.raises(StreamError, match="middle of an event"):
            await _collect(items, got)
    assert got == [{"n": 0}]


async def test_stream_without_its_end_marker(serve_raw: RawServerFactory) -> None:
    url = await serve_raw(_sse_answer(b'data: {"n": 0}\n\ndata: {"n": 1}\n\n'))
    async with AsyncAPIClient(url) as client:
        # A plain SSE server may end by closing: accepted unless the end is required.
        assert [d async for d in client.stream("GET", "/", mode="json")] == [{"n": 0}, {"n": 1}]
        got: list[Any] = []
        items = client.stream("GET", "/", mode="json", require_end=True)
        with pytest.raises(StreamError, match=r"without its end marker"):
            await _collect(items, got)
        assert got == [{"n": 0}, {"n": 1}]  # what arrived was delivered first


async def test_endpoint_stream_requires_done_or_message_stop(serve_raw: RawServerFactory) -> None:
    openai_cut = await serve_raw(_sse_answer(b'data: {"choices": []}\n\n'))
    openai_ok = await serve_raw(_sse_answer(b'data: {"choices": []}\n\ndata: [DONE]\n\n'))
    anthropic_ok = await serve_raw(
        _sse_answer(
            b'event: message_start\ndata: {"type": "message_start"}\n\n'
            b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
        )
    )
    anthropic_cut = await serve_raw(
        _sse_answer(b'event: message_start\ndata: {"type": "message_start"}\n\n')
    )

    def endpoint(url: str, **kw: Any) -> Endpoint:
        return Endpoint(
            EndpointConfig(base_url=url, endpoint="v1/x", auth_type="none", max_retries=0, **kw)
        )

    assert [c async for c in endpoint(openai_ok).stream({})] == [{"choices": []}]
    types = [c["type"] async for c in endpoint(anthropic_ok).stream({})]
    assert types == ["message_start", "message_stop"]
    for url in (openai_cut, anthropic_cut):
        with pytest.raises(StreamError, match="end marker"):
            async for _ in endpoint(url).stream({}):
                pass
    lenient = endpoint(openai_cut, stream_requires_end=False)
    assert [c async for c in lenient.stream({})] == [{"choices": []}]


async def test_json_answer_to_a_stream_request_is_delivered(serve_raw: RawServerFactory) -> None:
    body = b'{"id": "x", "choices": [{"message": {"content": "hi"}}]}'
    url = await serve_raw(_sse_answer(body, b"application/json"))
    error = await serve_raw(
        _sse_answer(b'{"error": {"message": "streaming unsupported"}}', b"application/json")
    )
    garbled = await serve_raw(_sse_answer(b'{"id": ', b"application/json"))
    ep = Endpoint(EndpointConfig(base_url=url, endpoint="v1/x", auth_type="none"))
    assert [c async for c in ep.stream({})] == [json.loads(body)]  # the end marker is moot
    async with AsyncAPIClient(url) as client:
        [event] = [e async for e in client.stream("GET", "/")]
        assert event.json() == json.loads(body)
    async with AsyncAPIClient(error) as client:
        with pytest.raises(StreamError, match="streaming unsupported"):
            async for _ in client.stream("GET", "/", mode="json"):
                pass
    async with AsyncAPIClient(garbled) as client:
        with pytest.raises(InvalidResponseError, match="not valid JSON"):
            async for _ in client.stream("GET", "/", mode="ndjson"):
                pass


async def test_ndjson_cut_mid_line_raises(serve_raw: RawServerFactory) -> None:
    url = await serve_raw(_sse_answer(b'{"n": 0}\n{"n": 1, "te', b"application/x-ndjson"))
    got: list[Any] = []
    async with AsyncAPIClient(url) as client:
        with pytest.raises(StreamError, match="middle of a line"):
            await _collect(client.stream("GET", "/", mode="ndjson"), got)
    assert got == [{"n": 0}]


async def test_a_cut_or_unfinished_stream_gives_its_lease_back(serve_raw: RawServerFactory) -> None:
    from headway import Policy
    from headway.concurrency import ConcurrencyLimit

    cut = await serve_raw(_sse_answer(b'data: {"n": 0}\n\ndata: {"n"'))
    unfinished = await serve_raw(_sse_answer(b'data: {"n": 0}\n\n'))
    pool = ConcurrencyLimit(1)
    for url in (cut, unfinished):
        async with AsyncAPIClient(url, policy=Policy(retry=None, concurrency=pool)) as client:
            got: list[Any] = []
            items = client.stream("GET", "/", mode="json", require_end=True)
            with pytest.raises(StreamError):
                await _collect(items, got)
            assert got == [{"n": 0}]
            assert pool.in_use == 0
