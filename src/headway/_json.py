"""Fast JSON for the hot paths: orjson, with the standard library for what it refuses.

Request bodies and response bodies are encoded and parsed on every call; with the
standard :mod:`json` that is most of a call's CPU time over the bare HTTP exchange
(measured in ``benchmarks/http_throughput.py``). orjson does the same work several times
faster. Where orjson refuses a value the standard library accepts (integers beyond 64
bits, non-string dict keys; ``NaN`` and ``Infinity`` in a document), the standard
library takes over, so callers see the standard library's results and errors. One
difference remains, on purpose: a float ``nan`` or ``inf`` is encoded as ``null`` (valid
JSON), where the standard library writes ``NaN``, which no JSON parser must accept.

>>> dumps({"model": "m", "n": 1})
b'{"model":"m","n":1}'
>>> loads(b'{"ok": true}'), loads('[1, 2.5]')
({'ok': True}, [1, 2.5])
>>> dumps({1: "int keys"}), loads("NaN")
(b'{"1": "int keys"}', nan)
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_orjson_dumps = orjson.dumps
_orjson_loads = orjson.loads
_EncodeError = orjson.JSONEncodeError
_DecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON bytes.

    Raises:
        TypeError: ``value`` holds something JSON cannot encode (as :func:`json.dumps`).
        ValueError: ``value`` refers to itself.
    """
    try:
        return _orjson_dumps(value)
    except _EncodeError:
        # Big integers, non-str keys, ...: the standard library's encoding (or its error).
        return json.dumps(value, ensure_ascii=False).encode()


def loads(data: bytes | bytearray | str) -> Any:
    """Parse a JSON document.

    Raises:
        json.JSONDecodeError: ``data`` is not JSON (a :class:`ValueError`).
    """
    try:
        return _orjson_loads(data)
    except _DecodeError:
        # NaN, Infinity, integers beyond 64 bits, UTF-16/32: the standard library decides.
        return json.loads(data)
