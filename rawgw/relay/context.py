"""The narrow context the relay depends on: data built at config load, plus hooks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rawgw.http.cors import Cors

if TYPE_CHECKING:
    from rawgw.cache import ResponseCache
    from rawgw.observe.record import FailedAttempt, RequestRecord
    from rawgw.routing.router import Router
    from rawgw.state.backend import LocalState
    from rawgw.upstream.pool import OriginPool

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class ProviderLink:
    """How to reach one provider: computed once per config, never per request."""

    authority: bytes  # the Host header value
    headers: tuple[Header, ...]  # configured extra upstream headers (lower-cased names)
    pool: OriginPool


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """One loaded config as the relay sees it; a reload builds a new one (in-flight
    exchanges keep the one they started with)."""

    router: Router
    links: dict[str, ProviderLink]
    cors: Cors
    response_drop: frozenset[bytes]  # upstream response headers the gateway sets itself
    response_drop_limited: frozenset[bytes]  # ... plus x-ratelimit-* for a limited gateway key
    cache: ResponseCache | None
    chat_logging: bool
    state: LocalState  # in-process, or shared on a state server (rawgw.state.backend)


class RelayHooks(Protocol):
    """What the relay reports as it goes (implemented by the observer side)."""

    def record(self, rec: RequestRecord) -> None: ...

    def failed_attempt(self, failure: FailedAttempt) -> None: ...

    def stream_opened(self) -> None: ...

    def stream_closed(self) -> None: ...
