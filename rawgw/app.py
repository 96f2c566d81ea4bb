"""The gateway: dispatches each request head to a local endpoint or an Exchange.

Holds what lives across requests — the config, the router (with key state), the
upstream pools, the open client connections and the observer — and swaps the
config on reload without dropping connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from time import perf_counter
from typing import TYPE_CHECKING

import h11
import orjson

from rawgw import __version__
from rawgw.cache import ResponseCache
from rawgw.config import Config, GatewayKey, Provider
from rawgw.errors import GatewayError, retry_after_header
from rawgw.http.headers import RESPONSE_DROP, filter_headers, get_header, plain_headers
from rawgw.observe.recorder import Recorder
from rawgw.relay import Exchange
from rawgw.routing.auth import authenticate, presented_key
from rawgw.routing.ratelimit import RATE_LIMIT_HEADERS, RateLimiter
from rawgw.routing.router import Endpoint, Router
from rawgw.server.connection import ClientConnection
from rawgw.upstream.pool import Origin, OriginPool, Pools

if TYPE_CHECKING:
    from rawgw.local import LocalEndpoints
    from rawgw.routing.router import Plan

log = logging.getLogger("rawgw")

Header = tuple[bytes, bytes]

CORS_RESPONSE_HEADERS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-max-age",
    }
)

CORS_ALLOW_HEADERS = (
    b"authorization, content-type, x-api-key, anthropic-version, anthropic-beta, "
    b"anthropic-dangerous-direct-browser-access, openai-organization, openai-project, "
    b"http-referer, x-title, x-request-id, x-rawgw-timeout, x-stainless-os, x-stainless-lang, "
    b"x-stainless-package-version, x-stainless-runtime, x-stainless-runtime-version, "
    b"x-stainless-arch, x-stainless-retry-count, x-stainless-timeout, cache-control"
)


def valid_request_id(value: bytes | None) -> bool:
    """SPEC 6: 1–128 visible ASCII characters."""
    return value is not None and 0 < len(value) <= 128 and all(0x21 <= c <= 0x7E for c in value)


def new_request_id() -> bytes:
    return os.urandom(12).hex().encode()


class Gateway:
    """Request dispatch plus the state shared by every connection of one process."""

    def __init__(self, config: Config, workers: int = 1) -> None:
        self.loop = asyncio.get_running_loop()
        self.workers = workers
        self.limiter = RateLimiter(workers)
        self.cache: ResponseCache | None = None
        self.clients: set[ClientConnection] = set()
        self.pools = Pools(config.server.max_header_bytes)
        self.router = Router(config)
        self.config = config
        self.recorder = Recorder(config)
        self._apply(config)
        self.started = time.time()
        self.active_streams = 0
        from rawgw.local import LocalEndpoints

        self.local: LocalEndpoints = LocalEndpoints(self)

    def _apply(self, config: Config) -> None:
        self.config = config
        self.keys: tuple[GatewayKey, ...] = config.keys
        self.encoded_keys = [k.key.encode() for k in config.keys]
        self.public_paths = frozenset(config.server.public_paths)
        self.cors_origins = config.server.cors_origins
        # With CORS on, the gateway's Access-Control-* answer replaces the provider's.
        self.response_drop = RESPONSE_DROP | CORS_RESPONSE_HEADERS if self.cors_origins else RESPONSE_DROP
        self.response_drop_limited = self.response_drop | RATE_LIMIT_HEADERS
        self._provider_headers: dict[str, list[Header]] = {
            name: [(k.lower().encode(), v.encode()) for k, v in p.headers] for name, p in config.providers.items()
        }
        self._origins: dict[str, Origin] = {name: Origin(p.scheme, p.host, p.port, p.proxy) for name, p in config.providers.items()}
        self._authority = {name: origin.authority.encode() for name, origin in self._origins.items()}
        self.chat_logging = config.logging.chat
        c = config.cache
        if not c.enabled:
            self.cache = None
        elif self.cache is None or (self.cache.ttl_s, self.cache.max_entries) != (c.ttl_s, c.max_entries):
            self.cache = ResponseCache(c.ttl_s, c.max_entries)

    def reload(self, config: Config) -> None:
        """SIGHUP: new routing and limits; cooldowns carried over by key value."""
        self.router = Router(config, old=self.router)
        self.recorder.reconfigure(config)
        self._apply(config)

    # ---- per-provider lookups (computed once per config) --------------------

    def authority(self, provider: Provider) -> bytes:
        return self._authority[provider.name]

    def provider_headers(self, provider: Provider) -> list[Header]:
        return self._provider_headers.get(provider.name, [])

    def origin_pool(self, provider: Provider) -> OriginPool:
        return self.pools.get(self._origins[provider.name], provider.max_connections, provider.pool_idle_s)

    # ---- dispatch (server.connection.Handler) -------------------------------

    def on_request(self, client: ClientConnection, request: h11.Request) -> None:
        t0 = perf_counter()
        hdrs = plain_headers(request.headers)  # scanned several times: a plain list, once
        rid = get_header(hdrs, b"x-request-id")
        request_id = rid if rid is not None and valid_request_id(rid) else new_request_id()
        path = request.target.decode("latin-1").partition("?")[0]
        # One Exchange per request, filled in as the dispatch learns more; whatever
        # answers (an error, a local endpoint, the relay) answers through it.
        ex = Exchange(self, client, request, Endpoint("unknown", path), None, request_id, t0, 0.0, hdrs)
        method = request.method
        origin = get_header(hdrs, b"origin")
        try:
            ex.endpoint = endpoint = self.router.classify(request.target)
        except GatewayError as err:
            ex.fail(err)
            return
        if method == b"OPTIONS" and self.cors_origins and origin is not None:
            client.send_response(204, self._preflight_headers(origin, hdrs), b"")
            return
        key: GatewayKey | None = None
        if endpoint.path not in self.public_paths and self.keys:
            presented = presented_key(hdrs)
            key = authenticate(self.keys, self.encoded_keys, presented)
            if key is None:
                msg = "missing gateway key: send Authorization: Bearer <key> or x-api-key" if presented is None else "invalid gateway key"
                ex.fail(GatewayError(401, msg))
                return
        ex.key = key
        if key is not None and key.rate_limit_rpm > 0:
            wait, ex.extra_headers = self.limiter.check(key)
            if wait > 0:
                self.recorder.metrics.rate_limited[key.name] += 1
                ex.fail(
                    GatewayError(
                        429,
                        f"rate limit of key '{key.name}' exceeded ({key.rate_limit_rpm} requests per minute)",
                        headers=[retry_after_header(wait)],
                        kind="rate_limited",
                    )
                )
                return
        kind = endpoint.kind
        if kind == "local":
            self.local.handle(ex)
            return
        if kind == "unknown":
            ex.fail(GatewayError(404, f"unknown path {endpoint.path}", code="unknown_path"))
            return
        if kind == "models" and method in (b"GET", b"HEAD"):
            self.local.models(ex)
            return
        if kind == "routed":
            if method != b"POST":
                ex.fail(GatewayError(405, f"{endpoint.path} accepts POST only", headers=[(b"allow", b"POST")]))
                return
            ctype = get_header(hdrs, b"content-type")
            if ctype is not None and b"json" not in ctype.lower():
                ex.fail(GatewayError(415, "Content-Type must be application/json"))
                return
        timeout = self.config.server.request_timeout_s
        asked = get_header(hdrs, b"x-rawgw-timeout")
        if asked is not None:
            try:
                value = float(asked)
            except ValueError:
                value = 0.0
            if value > 0:
                timeout = min(timeout, value)
        ex.deadline = t0 + timeout
        client.sink = ex
        client.send_continue()
        ex.task = self.loop.create_task(ex.run())

    # ---- response cache (non-streaming chat completions) --------------------

    def cache_lookup(self, ex: Exchange, plan: Plan) -> bool:
        """Answer from the cache (True) or arrange for the answer to be stored."""
        cache = self.cache
        if cache is None or plan.endpoint.rest != "chat/completions" or plan.stream or plan.parsed is None:
            return False
        scope = ex.key.name if ex.key is not None else ""
        try:
            key = cache.key(scope, plan.upstream_model, plan.parsed, plan.endpoint.rest)
        except TypeError:  # integers beyond 64 bits: not cacheable, still served
            return False
        cc = get_header(ex.headers, b"cache-control")
        bypass = cc is not None and b"no-cache" in cc.lower()
        entry = None if bypass else cache.get(key)
        if entry is None:
            self.recorder.metrics.cache["miss"] += 1
            ex.cache_key = key
            ex.cache_status = b"MISS"
            if ex.collected is None:
                ex.collected = []
            return False
        self.recorder.metrics.cache["hit"] += 1
        ex.cache_status = b"HIT"
        ex.provider = entry.provider
        ex.status = entry.status
        ex.bytes_out = len(entry.body)
        headers = list(entry.headers)
        headers.extend(self.response_extras(ex, routed=True))
        ex.client.send_response(entry.status, headers, entry.body)
        ex._finish("ok")
        return True

    def cache_store(self, ex: Exchange, body: bytes) -> None:
        if self.cache is not None and ex.cache_key is not None:
            # a cached answer carries no provider rate-limit state: it would be stale
            headers = filter_headers(ex.response_headers, self.response_drop_limited)
            self.cache.put(ex.cache_key, ex.status, headers, body, ex.provider)

    # ---- headers added to every response ------------------------------------

    def response_extras(self, ex: Exchange, routed: bool) -> list[Header]:
        now = perf_counter()
        out: list[Header] = [(b"x-request-id", ex.request_id)]
        if ex.extra_headers:
            out.extend(ex.extra_headers)
        if ex.cache_status is not None:
            out.append((b"x-cache", ex.cache_status))
        if routed:
            if ex.provider:
                out.append((b"x-rawgw-provider", ex.provider.encode()))
            out.append((b"x-rawgw-attempts", str(ex.attempts).encode()))
        if ex.t_sent and ex.t_head:
            upstream_ms = (ex.t_head - ex.t_sent) * 1000
            gw_ms = (now - ex.t0) * 1000 - upstream_ms
            out.append((b"server-timing", f"gw;dur={gw_ms:.3f}, upstream;dur={upstream_ms:.3f}".encode()))
        else:
            out.append((b"server-timing", f"gw;dur={(now - ex.t0) * 1000:.3f}".encode()))
        out.extend(self.cors_headers(get_header(ex.headers, b"origin")))
        return out

    def cors_headers(self, origin: bytes | None) -> list[Header]:
        origins = self.cors_origins
        if not origins:
            return []
        if "*" in origins:
            return [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", b"*")]
        if origin is not None and origin.decode("latin-1") in origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin"), (b"access-control-expose-headers", b"*")]
        return []

    def extra_error_headers(self) -> list[Header]:
        """For errors written before a request could be parsed (400/408/431)."""
        if self.cors_origins and "*" in self.cors_origins:
            return [(b"access-control-allow-origin", b"*")]
        return []

    def _preflight_headers(self, origin: bytes, hdrs: list[Header]) -> list[Header]:
        headers = self.cors_headers(origin)
        if not headers:
            return []
        asked = get_header(hdrs, b"access-control-request-headers")
        allow = CORS_ALLOW_HEADERS
        if asked:
            allow = allow + b", " + asked
        headers += [
            (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS"),
            (b"access-control-allow-headers", allow),
            (b"access-control-max-age", b"600"),
        ]
        return headers

    # ---- observation ---------------------------------------------------------

    def note_upstream_failure(self, ex: Exchange, provider: Provider, err: Exception, status: int | None = None) -> None:
        self.recorder.upstream_failure(ex, provider.name, err, status)

    def record(self, ex: Exchange) -> None:
        self.recorder.request_done(ex)

    def version_info(self) -> bytes:
        return orjson.dumps(
            {
                "name": "rawgw",
                "version": __version__,
                "endpoints": [
                    "POST /v1/chat/completions",
                    "POST /v1/completions",
                    "POST /v1/embeddings",
                    "POST /v1/responses",
                    "POST /v1/messages",
                    "POST /v1/messages/count_tokens",
                    "GET /v1/models",
                    "/v1/{rest}",
                    "/{provider}/{rest}",
                    "GET /health",
                    "GET /health/providers",
                    "GET /metrics",
                    "GET /dashboard",
                ],
            }
        )

    def close(self) -> None:
        self.pools.close()
        self.recorder.close()
