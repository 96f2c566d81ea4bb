"""``RequestRecord``: everything ``observe/`` learns about one finished request.

The relay and the local endpoints build exactly one per request, when it ends;
logs, metrics, usage and sessions read only this (never an exchange or the gateway).
"""

from __future__ import annotations

from dataclasses import dataclass

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    method: str
    target: str  # as the client sent it (console line)
    path: str  # without the query (logs)
    kind: str  # endpoint kind: routed, models, passthrough, provider, local, unknown
    status: int  # 499 when the client left before an answer
    outcome: str  # ok, client_closed, upstream_error, timeout, rate_limited, error ...
    duration_s: float
    wall_time: float  # time.time() at the end
    provider: str = ""
    key_name: str = ""
    client_model: str | None = None
    upstream_model: str | None = None
    attempts: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    stream: bool = False
    upstream_ttfb_s: float | None = None
    overhead_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache: str | None = None  # HIT, MISS or None
    error: str = ""
    session_id: str | None = None
    key_limited: bool = False  # refused by the gateway key's own rate limit
    # Only when chat logging asked for them (else empty): the exchange as it was.
    request_headers: tuple[Header, ...] = ()
    request_body: bytes = b""
    response_headers: tuple[Header, ...] = ()
    response_body: bytes | None = None


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """One upstream attempt that failed and moved on (SPEC 5.3), for logs and metrics."""

    request_id: str
    provider: str
    attempt: int
    kind: str  # connect, tls, protocol, reset, timeout, status
    message: str
    upstream_status: int | None = None
