from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headway.batch.jobs import (
    ANTHROPIC_URL,
    DEFAULT_URL,
    BatchRequest,
    InvalidLine,
    count_lines,
    parse_line,
    read_requests,
)


def test_openai_batch_line() -> None:
    line = json.dumps(
        {"custom_id": "r1", "method": "post", "url": "/v1/embeddings", "body": {"input": "x"}}
    )
    req = parse_line(line, 4)
    assert isinstance(req, BatchRequest)
    assert (req.custom_id, req.line, req.method, req.url, req.kind) == (
        "r1",
        4,
        "POST",
        "/v1/embeddings",
        "openai",
    )
    assert req.body == {"input": "x"}


def test_openai_line_defaults_method_and_url() -> None:
    req = parse_line('{"custom_id": "a", "body": {}}', 1, default_url="/v1/responses")
    assert isinstance(req, BatchRequest)
    assert (req.method, req.url) == ("POST", "/v1/responses")


def test_anthropic_line() -> None:
    req = parse_line(b'{"custom_id": "c", "params": {"model": "claude", "max_tokens": 10}}', 2)
    assert isinstance(req, BatchRequest)
    assert (req.custom_id, req.url, req.kind) == ("c", ANTHROPIC_URL, "anthropic")


def test_bare_body_gets_line_number_as_id() -> None:
    req = parse_line('{"model": "m", "messages": []}', 17)
    assert isinstance(req, BatchRequest)
    assert (req.custom_id, req.url, req.kind) == ("17", DEFAULT_URL, "bare")


@pytest.mark.parametrize(
    ("text", "cid", "fragment"),
    [
        ("{nope", "5", "not valid JSON"),
        ("[1, 2]", "5", "expected a JSON object, got list"),
        ('"text"', "5", "got str"),
        ('{"custom_id": 3, "body": {}}', "5", "custom_id must be a non-empty string"),
        ('{"custom_id": "", "body": {}}', "5", "custom_id must be a non-empty string"),
        ('{"custom_id": "k"}', "k", 'neither "body" nor "params"'),
        ('{"custom_id": "k", "body": [1]}', "k", "body must be a JSON object"),
        ('{"custom_id": "k", "params": "x"}', "k", "params must be a JSON object"),
        ('{"custom_id": "k", "method": "TRACE", "body": {}}', "k", "unsupported method"),
        ('{"custom_id": "k", "method": 7, "body": {}}', "k", "unsupported method"),
        ('{"custom_id": "k", "url": "v1/x", "body": {}}', "k", "url must be a path"),
        (b'{"a": "\xff"}', "5", "not valid JSON"),
    ],
)
def test_invalid_lines_name_their_line(text: str | bytes, cid: str, fragment: str) -> None:
    bad = parse_line(text, 5)
    assert isinstance(bad, InvalidLine)
    assert bad.custom_id == cid
    assert bad.line == 5
    assert bad.message.startswith("line 5: ")
    assert fragment in bad.message


def test_read_requests_streams_mixed_file_and_skips_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text(
        '{"custom_id": "a", "body": {"x": 1}}\n'
        "\n"
        "   \n"
        '{"custom_id": "b", "params": {"y": 2}}\n'
        "garbage\n"
        '{"z": 3}'  # no final newline
    )
    items = list(read_requests(p))
    assert [(i.custom_id, i.line, type(i).__name__) for i in items] == [
        ("a", 1, "BatchRequest"),
        ("b", 4, "BatchRequest"),
        ("5", 5, "InvalidLine"),
        ("6", 6, "BatchRequest"),
    ]
    assert count_lines(p) == 6


def test_gzip_input_by_magic_bytes(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl.gz"
    with gzip.open(p, "wt") as f:
        for i in range(3):
            f.write(json.dumps({"custom_id": f"g{i}", "body": {}}) + "\n")
    assert [r.custom_id for r in read_requests(p)] == ["g0", "g1", "g2"]
    assert count_lines(p) == 3


def test_truncated_gzip_is_an_oserror_naming_the_file(tmp_path: Path) -> None:
    p = tmp_path / "in.jsonl.gz"
    data = gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(5000)))
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="cannot read"):
        list(read_requests(p))


def test_count_lines_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_bytes(b"")
    assert count_lines(p) == 0
    assert list(read_requests(p)) == []


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)

_lines = st.one_of(
    st.text(max_size=40),
    _json_values.map(json.dumps),
    st.fixed_dictionaries(
        {
            "custom_id": st.text(min_size=1, max_size=8),
            "body": st.dictionaries(st.text(max_size=4), _json_values, max_size=3),
        },
        optional={
            "method": st.sampled_from(["POST", "get", "BREW"]),
            "url": st.sampled_from(["/v1/x", "x", 3]),
        },
    ).map(json.dumps),
    st.fixed_dictionaries(
        {"custom_id": st.one_of(st.text(max_size=8), st.integers()), "params": _json_values}
    ).map(json.dumps),
)


@given(text=_lines, line=st.integers(min_value=1, max_value=10**6))
def test_parse_line_never_raises_and_names_the_line(text: str, line: int) -> None:
    item = parse_line(text, line)
    if isinstance(item, InvalidLine):
        assert item.line == line
        assert item.message.startswith(f"line {line}: ")
        assert item.custom_id
    else:
        assert isinstance(item.body, dict)
        assert item.url.startswith("/")
        assert item.method in {"GET", "POST", "PUT", "PATCH", "DELETE"}
        if item.kind == "bare":
            assert item.custom_id == str(line)


@given(
    st.lists(_lines.filter(lambda s: "\n" not in s and "\r" not in s and s.strip()), max_size=15)
)
def test_every_nonblank_line_yields_one_item_in_order(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str]
) -> None:
    p = tmp_path_factory.mktemp("h") / "in.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    items = list(read_requests(p))
    assert [i.line for i in items] == list(range(1, len(lines) + 1))
