"""Header filtering between legs.

Headers travel as h11 gives them: lists of ``(lowercase name, value)`` byte pairs.
Filtering is one pass over that list with frozenset look-ups, no dict churn.
"""

from __future__ import annotations

from collections.abc import Iterable

from rawgw.http.h11compat import plain_headers as plain_headers  # re-exported: one copy

Header = tuple[bytes, bytes]

# RFC 9110 §7.6.1: hop-by-hop fields never cross a proxy; plus any field the
# Connection header names.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# The client's credentials for the gateway itself never go upstream (SPEC 5.1).
CLIENT_CREDENTIALS: frozenset[bytes] = frozenset({b"authorization", b"x-api-key"})

# Request headers the gateway sets itself on the upstream leg.
REQUEST_DROP: frozenset[bytes] = (
    HOP_BY_HOP | CLIENT_CREDENTIALS | frozenset({b"host", b"content-length", b"expect", b"x-request-id", b"x-rawgw-timeout"})
)

# Response headers the gateway sets itself on the client leg (exactly one Date and
# one Server, SPEC 6); Content-Length is re-added by the relay only when the body
# passes unchanged.
RESPONSE_DROP: frozenset[bytes] = HOP_BY_HOP | frozenset(
    {b"date", b"server", b"content-length", b"x-request-id", b"x-upstream-request-id", b"server-timing", b"x-accel-buffering"}
)


def upstream_request_id(headers: Iterable[Header]) -> bytes | None:
    """The provider's own id of the request: ``x-request-id`` (OpenAI and most), else
    Anthropic's ``request-id``; sent to the client as X-Upstream-Request-ID."""
    found = None
    for n, v in headers:
        if n == b"x-request-id":
            return v
        if n == b"request-id":
            found = v
    return found


def connection_listed(headers: Iterable[Header]) -> frozenset[bytes]:
    """Names listed in Connection headers (RFC 9110 §7.6.1) — also hop-by-hop."""
    names: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    names.add(token)
    return frozenset(names)


def filter_headers(headers: list[Header], drop: frozenset[bytes]) -> list[Header]:
    """End-to-end headers of ``headers``: without ``drop`` and Connection-listed names."""
    listed = connection_listed(headers)
    if listed:
        drop = drop | listed
    return [(n, v) for n, v in headers if n not in drop]


def get_header(headers: Iterable[Header], name: bytes) -> bytes | None:
    """The first value of ``name`` (lowercase) or None."""
    for n, v in headers:
        if n == name:
            return v
    return None
