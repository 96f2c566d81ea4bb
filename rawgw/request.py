"""What the dispatcher knows about one request before anything answers it.

``Incoming`` is built once per request head (headers as a plain list, the
request id, the start time, the endpoint, the authenticated key) and read by
whoever answers: a local endpoint, the cache or the relay. ``response_extras``
are the gateway's own headers on every answer (SPEC 6).
"""

from __future__ import annotations

import os
import random
from time import perf_counter
from typing import TYPE_CHECKING

import h11

from rawgw.http.cors import Cors
from rawgw.http.headers import get_header

if TYPE_CHECKING:
    from rawgw.config import GatewayKey
    from rawgw.routing.router import Endpoint

Header = tuple[bytes, bytes]


def valid_request_id(value: bytes | None) -> bool:
    """SPEC 6: 1–128 visible ASCII characters."""
    return value is not None and 0 < len(value) <= 128 and all(0x21 <= c <= 0x7E for c in value)


# Request ids: 96 random bits as 24 hex digits, from a per-process generator seeded by
# os.urandom (drawn again in a forked child). Not os.urandom per request: that was a
# getrandom(2) each. Not a counter: consecutive ids would tell any client how many
# requests the gateway served in between.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> bytes:
    return b"%024x" % _ids.getrandbits(96)


class Incoming:
    """One request head and what the dispatch learned about it."""

    __slots__ = (
        "deadline",
        "endpoint",
        "headers",
        "key",
        "key_limited",
        "limit_deferred",
        "method",
        "origin",
        "rate_headers",
        "request",
        "request_id",
        "session_id",
        "t0",
    )

    def __init__(self, request: h11.Request, headers: list[Header], request_id: bytes, t0: float, endpoint: Endpoint) -> None:
        self.request = request
        self.method = request.method
        self.headers = headers  # a plain list, made once: scanned several times
        self.request_id = request_id
        self.t0 = t0
        self.endpoint = endpoint
        self.key: GatewayKey | None = None
        self.origin = get_header(headers, b"origin")
        self.rate_headers: list[Header] = []  # x-ratelimit-* of a limited gateway key
        self.key_limited = False  # refused by the key's own rate limit
        # the key's limit is decided in the Exchange (TPM needs the body; a state server
        # needs a round trip), not in the synchronous dispatch
        self.limit_deferred = False
        self.deadline = t0
        self.session_id: bytes | None = None  # a valid X-Session-ID (rawgw.control.sessions), echoed

    @property
    def key_name(self) -> str:
        return self.key.name if self.key is not None else ""


def response_extras(
    inc: Incoming,
    cors: Cors,
    *,
    routed: bool = False,
    provider: str = "",
    attempts: int = 0,
    cache: bytes | None = None,
    t_sent: float = 0.0,
    t_head: float = 0.0,
) -> list[Header]:
    """The gateway's headers on an answer: request id, limits, cache, routing, timing, CORS."""
    now = perf_counter()
    out: list[Header] = [(b"x-request-id", inc.request_id)]
    if inc.session_id is not None:
        out.append((b"x-session-id", inc.session_id))  # echoed as a header; bodies stay untouched
    if inc.rate_headers:
        out.extend(inc.rate_headers)
    if cache is not None:
        out.append((b"x-cache", cache))
    if routed:
        if provider:
            out.append((b"x-rawgw-provider", provider.encode()))
        out.append((b"x-rawgw-attempts", str(attempts).encode()))
    if t_sent and t_head:
        upstream_ms = (t_head - t_sent) * 1000
        gw_ms = (now - inc.t0) * 1000 - upstream_ms
        out.append((b"server-timing", f"gw;dur={gw_ms:.3f}, upstream;dur={upstream_ms:.3f}".encode()))
    else:
        out.append((b"server-timing", f"gw;dur={(now - inc.t0) * 1000:.3f}".encode()))
    if cors.enabled:
        out.extend(cors.headers(inc.origin))
    return out
