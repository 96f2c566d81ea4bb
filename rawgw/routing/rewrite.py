"""Request-body rewriting by splicing bytes: only ``model`` and ``provider`` change.

Re-serialising a parsed body would renormalise every other field (number
formats, escapes, key order, integers beyond 64 bits). Instead the top-level
members are located in the raw bytes and only the values that must change are
replaced; everything else stays byte-for-byte as the client sent it (SPEC 5.5).
"""

from __future__ import annotations

from typing import Any

import orjson

_WS = b" \t\r\n"


class _Malformed(ValueError):
    pass


class RawJSON(bytes):
    """A value that is already JSON text: spliced in as is."""


def _skip_ws(data: bytes, i: int) -> int:
    n = len(data)
    while i < n and data[i] in _WS:
        i += 1
    return i


def _skip_string(data: bytes, i: int) -> int:
    """``data[i]`` is the opening quote; return the index after the closing one."""
    i += 1
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x5C:  # backslash
            i += 2
            continue
        if c == 0x22:
            return i + 1
        i += 1
    raise _Malformed("unterminated string")


def _skip_value(data: bytes, i: int) -> int:
    c = data[i]
    if c == 0x22:
        return _skip_string(data, i)
    if c in (0x7B, 0x5B):  # { [
        depth = 0
        n = len(data)
        while i < n:
            c = data[i]
            if c == 0x22:
                i = _skip_string(data, i)
                continue
            if c in (0x7B, 0x5B):
                depth += 1
            elif c in (0x7D, 0x5D):
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise _Malformed("unbalanced")
    n = len(data)
    while i < n and data[i] not in b",}] \t\r\n":
        i += 1
    return i


def top_level_spans(data: bytes) -> tuple[dict[str, tuple[int, int]], int]:
    """Value spans of the top-level members by decoded key, and the index of the closing brace."""
    i = _skip_ws(data, 0)
    if i >= len(data) or data[i] != 0x7B:
        raise _Malformed("not an object")
    spans: dict[str, tuple[int, int]] = {}
    i = _skip_ws(data, i + 1)
    if data[i] == 0x7D:
        return spans, i
    while True:
        if data[i] != 0x22:
            raise _Malformed("key expected")
        end = _skip_string(data, i)
        key = orjson.loads(data[i:end])
        i = _skip_ws(data, end)
        if data[i] != 0x3A:
            raise _Malformed("colon expected")
        i = _skip_ws(data, i + 1)
        vend = _skip_value(data, i)
        spans[key] = (i, vend)  # duplicate keys: the last wins, as in most parsers
        i = _skip_ws(data, vend)
        if data[i] == 0x2C:
            i = _skip_ws(data, i + 1)
            continue
        if data[i] == 0x7D:
            return spans, i
        raise _Malformed("comma or brace expected")


def rewrite_body(body: bytes, changes: dict[str, Any]) -> bytes:
    """``body`` with the top-level members in ``changes`` replaced or appended."""
    try:
        spans, close = top_level_spans(body)
    except (_Malformed, IndexError, orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        plain = {k: orjson.loads(v) if isinstance(v, RawJSON) else v for k, v in changes.items()}
        return orjson.dumps({**parsed, **plain})
    edits: list[tuple[int, int, bytes]] = []
    appended: list[bytes] = []
    for key, value in changes.items():
        encoded = bytes(value) if isinstance(value, RawJSON) else orjson.dumps(value)
        span = spans.get(key)
        if span is not None:
            edits.append((span[0], span[1], encoded))
        else:
            appended.append(orjson.dumps(key) + b":" + encoded)
    if appended:
        sep = b"," if spans else b""
        edits.append((close, close, sep + b",".join(appended)))
    out = bytearray(body)
    for start, end, value in sorted(edits, reverse=True):
        out[start:end] = value
    return bytes(out)


def member_span(body: bytes, key: str) -> tuple[int, int] | None:
    """Where the top-level member ``key``'s value lies in ``body`` (None if absent/unparsable)."""
    try:
        spans, _ = top_level_spans(body)
    except (_Malformed, IndexError, orjson.JSONDecodeError):
        return None
    return spans.get(key)
