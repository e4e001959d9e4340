"""headway.http.transports.base: Request, Response and the shared error mapping."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from headway.http import Response


def test_response_object() -> None:
    resp = Response(200, CIMultiDict({"Content-Type": "text/plain"}), b"hi", "GET", "http://x")
    assert resp.parsed() == "hi"
    assert resp.body == b"hi"
    utf16 = Response(200, {}, '{"a": 1}'.encode("utf-16"), "GET", "u")
    assert utf16.json() == {"a": 1}
    assert Response(204, {}, b"", "GET", "u").parsed() is None
    assert Response(200, {}, b"", "GET", "u").parsed() is None
    bad = Response(200, CIMultiDict({"content-type": "application/json"}), b"{", "GET", "u")
    with pytest.raises(Exception, match="not valid JSON"):
        bad.parsed()
