"""headway.http.status: an HTTP status (and body) to its typed error."""

from __future__ import annotations

from headway.errors import APIClientError, ResourceNotFoundError, ServerError
from headway.http import error_for_status
from headway.http.status import error_message, parse_body


def test_error_messages_and_bodies() -> None:
    assert error_message({"error": "plain"}) == "plain"
    assert error_message({"detail": "d"}) == "d"
    assert error_message({"error": {"type": "invalid"}}) == "invalid"
    assert error_message({"error": {}}) is None
    assert error_message({"other": 1}) is None
    assert error_message("  ") is None
    assert error_message(42) is None
    assert parse_body(b"") is None
    assert parse_body(b"\xff not json") == "\ufffd not json"
    err = error_for_status(529, {}, b"", "POST", "http://x/y?key=secret")
    assert isinstance(err, ServerError)
    assert "529 Overloaded" in str(err)
    assert "secret" not in str(err)
    err = error_for_status(499, {}, {"message": "client closed"}, None, "http://x")
    assert type(err) is APIClientError
    assert "499 Error: client closed" in str(err)
    err = error_for_status(404, {}, bytearray(b'{"error": {"message": "no model"}}'), "GET", "u")
    assert isinstance(err, ResourceNotFoundError)
    assert "check the URL" in str(err)
