"""The gateway: the composition root, and the dispatch of each request head.

Holds what lives across requests — the config, the router (with key state), the
upstream pools, the open client connections and the recorder — and swaps the
config on reload without dropping connections. Each request head is answered by
a local endpoint (a ``Reply`` value), or handed to a relay ``Exchange`` built on
the frozen ``RelayConfig`` of the config it arrived under.

Only ``serve.py`` (and through it the CLI) imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any

import h11

from rawgw import __version__, gctune
from rawgw.cache import ResponseCache
from rawgw.config import Config, GatewayKey
from rawgw.endpoints import local
from rawgw.endpoints.control import ControlPlane, session_header
from rawgw.endpoints.models import ModelLister
from rawgw.errors import GatewayError, retry_after_header
from rawgw.http.cors import CORS_RESPONSE_HEADERS, Cors
from rawgw.http.headers import RESPONSE_DROP, get_header, plain_headers
from rawgw.http.reply import Reply
from rawgw.observe.metrics import Metrics
from rawgw.observe.prometheus import Stats
from rawgw.observe.record import FailedAttempt, RequestRecord
from rawgw.observe.recorder import Recorder
from rawgw.observe.siblings import Siblings
from rawgw.relay.context import ProviderLink, RelayConfig
from rawgw.relay.exchange import Exchange
from rawgw.request import Incoming, new_request_id, response_extras, valid_request_id
from rawgw.routing.auth import authenticate, presented_key
from rawgw.routing.ratelimit import RATE_LIMIT_HEADERS
from rawgw.routing.router import Endpoint, Router
from rawgw.server.connection import ClientConnection
from rawgw.state.backend import build_state, key_digest
from rawgw.upstream.pool import Origin, Pools

log = logging.getLogger("rawgw")

Header = tuple[bytes, bytes]

# local paths that show the cluster's counters ([state]): /metrics (Prometheus scrapes
# each instance) does not, so a scraper does not keep the once-a-second read going
CLUSTER_READERS = frozenset({"/metrics.json", "/health/providers"})
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="rawgw"')


class Gateway:
    """Request dispatch plus the state shared by every connection of one process."""

    def __init__(self, config: Config, workers: int = 1, siblings_dir: str | None = None, worker_index: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        self.workers = workers
        # --workers N: /metrics sums every worker's numbers (rawgw.observe.siblings)
        self.siblings = Siblings(siblings_dir, worker_index, self._snapshot_doc) if siblings_dir else None
        # The state seam: in-process unless [state] url is set; a change of [state]
        # takes a restart (a reload keeps the backend it started with).
        self.state = build_state(config.state, workers)
        self.limiter = self.state.limiter
        self.cache: ResponseCache | None = None
        self.clients: set[ClientConnection] = set()
        self.pools = Pools(config.server.max_header_bytes)
        self.router = Router(config)
        self.state.attach(self.router)
        self.state.on_cache_cleared = self._clear_local_cache
        self.state.start()
        self.recorder = Recorder(config)
        self.models = ModelLister()
        self.started = time.time()
        self.active_streams = 0
        self._version = local.version_info(__version__)
        self._apply(config)
        self.control = ControlPlane(self, self.recorder.writer.put)
        self.state.on_overlay_changed = self.control.from_cluster

    def _apply(self, config: Config) -> None:
        """Everything derived from one config, computed once (never per request)."""
        self.config = config
        self.keys: tuple[GatewayKey, ...] = config.keys
        self.encoded_keys = [k.key.encode() for k in config.keys]
        self.key_digests = {k.name: key_digest(k.key) for k in config.keys}
        self.public_paths = frozenset(config.server.public_paths)
        self.cors = cors = Cors(config.server.cors_origins)
        c = config.cache
        if not c.enabled:
            self.cache = None
        elif self.cache is None or (self.cache.ttl_s, self.cache.max_entries) != (c.ttl_s, c.max_entries):
            self.cache = ResponseCache(c.ttl_s, c.max_entries)
        drop = RESPONSE_DROP | CORS_RESPONSE_HEADERS if cors.enabled else RESPONSE_DROP
        links = {}
        for name, p in config.providers.items():
            origin = Origin(p.scheme, p.host, p.port, p.proxy)
            links[name] = ProviderLink(
                authority=origin.authority.encode(),
                headers=tuple((k.lower().encode(), v.encode()) for k, v in p.headers),
                pool=self.pools.get(origin, p.max_connections, p.pool_idle_s),
            )
        self.relay = RelayConfig(
            router=self.router,
            links=links,
            cors=cors,
            response_drop=frozenset(drop),
            response_drop_limited=frozenset(drop | RATE_LIMIT_HEADERS),
            cache=self.cache,
            chat_logging=config.logging.chat,
            state=self.state,
        )

    async def start(self) -> None:
        """What needs the loop running before the first connection is accepted."""
        if self.siblings is not None:
            await self.siblings.start()

    def reload(self, config: Config) -> None:
        """SIGHUP: new routing and limits; key state carried over (SPEC 7)."""
        self.router = Router(config, old=self.router)
        self.state.attach(self.router)
        if self.state.shared:
            # A gateway key this config drops (admin revoke, or an edited file) is refused
            # by every instance at once, not only by those that reload (LiteLLM #1775).
            kept = {k.key for k in config.keys}
            for k in self.keys:
                if k.key not in kept:
                    self.state.revoke(k.key)
        self.recorder.reconfigure(config)
        self._apply(config)
        self.control.configure(config)
        gctune.settle()

    # ---- dispatch (server.connection.Handler) -------------------------------

    def on_request(self, client: ClientConnection, request: h11.Request) -> None:
        t0 = perf_counter()
        hdrs = plain_headers(request.headers)  # scanned several times: a plain list, once
        rid = get_header(hdrs, b"x-request-id")
        request_id = rid if rid is not None and valid_request_id(rid) else new_request_id()
        path = request.target.decode("latin-1").partition("?")[0]
        inc = Incoming(request, hdrs, request_id, t0, Endpoint("unknown", path))
        inc.session_id = session_header(hdrs)
        method = request.method
        try:
            inc.endpoint = endpoint = self.router.classify(request.target)
            if method == b"OPTIONS" and self.cors.enabled and inc.origin is not None:
                client.send_response(204, self.cors.preflight(inc.origin), b"")
                return
            if endpoint.kind == "control":  # admin, sign-in, sessions: their own principal rules
                self._local_async(client, inc, self.control.answer)
                return
            if endpoint.path not in self.public_paths and self.keys:
                presented = presented_key(hdrs)
                inc.key = authenticate(self.keys, self.encoded_keys, presented)
                # a signed-in user may read the dashboard's numbers; /v1/... never takes a cookie
                if inc.key is None and not (presented is None and self.control.lets_in(inc)):
                    msg = "missing gateway key: send Authorization: Bearer <key> or x-api-key" if presented is None else "invalid gateway key"
                    # RFC 9110 §15.5.2: a 401 MUST carry a challenge
                    raise GatewayError(401, msg, headers=[WWW_AUTHENTICATE])
                if inc.key is not None and self.state.revoked and self.key_digests.get(inc.key.name) in self.state.revoked:
                    # revoked at run time on this or another instance (issue 12)
                    inc.key = None
                    raise GatewayError(401, "gateway key revoked", headers=[WWW_AUTHENTICATE])
            key = inc.key
            kind = endpoint.kind
            # Gateway-local reads (health, metrics, dashboard, the models list) do not spend the
            # key's budget: a dashboard polling every 2 s must not starve proxied requests.
            local_read = kind == "local" or (kind == "models" and method in (b"GET", b"HEAD"))
            limited = key is not None and (key.rate_limit_rpm > 0 or key.rate_limit_tpm > 0)
            if key is not None and limited and local_read:
                inc.rate_headers = self.state.peek(key)
            elif key is not None and limited and (self.state.shared or key.rate_limit_tpm > 0):
                # Decided in the Exchange before the first upstream byte (TPM needs the
                # body, a shared bucket a round trip); until then the last known headers.
                inc.limit_deferred = True
                inc.rate_headers = self.state.peek(key)
            elif key is not None and limited:
                wait, inc.rate_headers = self.limiter.check(key)
                if wait > 0:
                    inc.key_limited = True
                    raise GatewayError(
                        429,
                        f"rate limit of key '{key.name}' exceeded ({key.rate_limit_rpm} requests per minute)",
                        headers=[retry_after_header(wait)],
                        kind="rate_limited",
                    )
            if kind == "local":
                if endpoint.path in CLUSTER_READERS:
                    self.state.want_cluster()  # the cluster counters are read only while someone looks
                if self.siblings is not None and endpoint.path in AGGREGATED and method in (b"GET", b"HEAD") and self.config.metrics.enabled:
                    self._aggregated(client, inc)
                    return
                self._reply(client, inc, local.answer(self, method, endpoint.path))
                return
            if kind == "unknown":
                raise GatewayError(404, f"unknown path {endpoint.path}", code="unknown_path")
            if kind == "models" and method in (b"GET", b"HEAD"):
                self._models(client, inc)
                return
            if kind == "routed":
                if method != b"POST":
                    raise GatewayError(405, f"{endpoint.path} accepts POST only", headers=[(b"allow", b"POST")])
                ctype = get_header(hdrs, b"content-type")
                if ctype is not None and b"json" not in ctype.lower():
                    raise GatewayError(415, "Content-Type must be application/json")
        except GatewayError as err:
            self._error(client, inc, err)
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
        inc.deadline = t0 + timeout
        Exchange(self.relay, self, client, inc).start()

    def early_error_headers(self) -> list[Header]:
        return self.cors.early_error_headers()

    # ---- answers the gateway makes itself ------------------------------------

    def _reply(self, client: ClientConnection, inc: Incoming, reply: Reply, outcome: str = "ok") -> None:
        headers: list[Header] = [(b"content-type", reply.content_type)]
        headers.extend(reply.headers)
        headers.extend(response_extras(inc, self.cors))
        client.send_response(reply.status, headers, reply.body)
        self._record_local(inc, reply.status, outcome, len(reply.body))

    def _error(self, client: ClientConnection, inc: Incoming, err: GatewayError) -> None:
        if not client.closed:
            client.send_error(err, response_extras(inc, self.cors))
        self._record_local(inc, err.status, err.kind, 0, err.message)

    def _record_local(self, inc: Incoming, status: int, outcome: str, bytes_out: int, error: str = "") -> None:
        self.record(
            RequestRecord(
                request_id=inc.request_id.decode(),
                method=inc.method.decode(),
                target=inc.request.target.decode("latin-1"),
                path=inc.endpoint.path,
                kind=inc.endpoint.kind,
                status=status,
                outcome=outcome,
                duration_s=perf_counter() - inc.t0,
                wall_time=time.time(),
                key_name=inc.key_name,
                bytes_out=bytes_out,
                error=error,
                key_limited=inc.key_limited,
                session_id=inc.session_id.decode() if inc.session_id is not None else None,
            )
        )

    def _models(self, client: ClientConnection, inc: Incoming) -> None:
        """GET /v1/models (or /v1/models-by-provider): an async listing; a client that leaves cancels it."""
        anthropic = get_header(inc.headers, b"anthropic-version") is not None
        relay = self.relay
        config = self.config
        by_provider = inc.endpoint.rest == "models-by-provider"
        task = self.loop.create_task(self.models.listing(config, relay, inc.key, anthropic, inc.request_id, by_provider))
        client.sink = _Waiting(task)

        def done(t: asyncio.Task[Reply]) -> None:
            if t.cancelled():
                self._record_local(inc, 499, "client_closed", 0)
                return
            exc = t.exception()
            if exc is not None:
                log.error("models listing failed", exc_info=exc)
                self._error(client, inc, GatewayError(502, f"could not list models: {type(exc).__name__}"))
                return
            if client.closed:
                self._record_local(inc, 499, "client_closed", 0)
                return
            self._reply(client, inc, t.result())

        task.add_done_callback(done)

    def _aggregated(self, client: ClientConnection, inc: Incoming) -> None:
        """/metrics or /metrics.json of a multi-worker gateway: the sum over every worker."""
        assert self.siblings is not None
        task = self.loop.create_task(self.siblings.gather())
        client.sink = _Waiting(task)

        def done(t: asyncio.Task[list[dict[str, Any]]]) -> None:
            if t.cancelled() or client.closed:
                self._record_local(inc, 499, "client_closed", 0)
                return
            exc = t.exception()
            peers = [] if exc is not None else t.result()
            try:
                reply = local.answer(_Summed(self, self.stats(peers)), inc.method, inc.endpoint.path)
            except GatewayError as err:
                self._error(client, inc, err)
                return
            self._reply(client, inc, reply)

        task.add_done_callback(done)

    def _snapshot_doc(self) -> dict[str, Any]:
        """This worker's numbers, as a sibling asks for them."""
        return {
            "metrics": self.recorder.metrics.to_doc(),
            "open_connections": len(self.clients),
            "active_streams": self.active_streams,
            "pools": {k: list(v) for k, v in self.pools.stats().items()},
            "log_dropped": self.recorder.writer.dropped,
        }

    def _local_async(self, client: ClientConnection, inc: Incoming, answer: Callable[[Incoming, bytes], Coroutine[Any, Any, Reply]]) -> None:
        """A local answer that needs the whole (bounded) request body, computed off the head."""
        sink = client.sink = _Collect()
        client.send_continue()

        def start() -> None:
            task = sink.task = self.loop.create_task(answer(inc, b"".join(sink.parts)))
            task.add_done_callback(done)

        def done(t: asyncio.Task[Reply]) -> None:
            if t.cancelled() or client.closed:
                self._record_local(inc, 499, "client_closed", 0)
                return
            exc = t.exception()
            if isinstance(exc, GatewayError):
                self._error(client, inc, exc)
            elif exc is not None:
                log.error("%s failed", inc.endpoint.path, exc_info=exc)
                self._error(client, inc, GatewayError(500, f"internal error: {type(exc).__name__}"))
            else:
                self._reply(client, inc, t.result())

        sink.start = start

    # ---- local.LocalContext ---------------------------------------------------

    def version_info(self) -> bytes:
        return self._version

    def providers_status(self) -> dict[str, Any]:
        return local.providers_status(self.config, self.router.pools, cluster=self.state.cluster())

    def stats(self, peers: list[dict[str, Any]] | None = None) -> Stats:
        """This process's numbers; with ``peers`` (sibling workers' snapshots) their sum."""
        metrics = self.recorder.metrics
        pools = self.pools.stats()
        open_connections = len(self.clients)
        active_streams = self.active_streams
        dropped = self.recorder.writer.dropped
        extra = self.state.metric_lines()
        if peers is not None:
            metrics = Metrics()
            metrics.add_doc(self.recorder.metrics.to_doc())
            pools = dict(pools)
            for doc in peers:
                metrics.add_doc(doc["metrics"])
                open_connections += doc["open_connections"]
                active_streams += doc["active_streams"]
                dropped += doc["log_dropped"]
                for origin, (o, i) in doc["pools"].items():
                    mine = pools.get(origin, (0, 0))
                    pools[origin] = (mine[0] + o, mine[1] + i)
            extra = extra + [
                "# HELP rawgw_workers_answered Workers whose numbers this scrape sums (--workers N).",
                "# TYPE rawgw_workers_answered gauge",
                f"rawgw_workers_answered {1 + len(peers)}",
            ]
        return Stats(
            metrics=metrics,
            started=self.started,
            open_connections=open_connections,
            active_streams=active_streams,
            pools=pools,
            providers=self.providers_status()["providers"],
            recent_errors=list(self.recorder.recent_errors),
            log_dropped=dropped,
            extra_lines=extra,
            cluster=self.state.cluster(),
        )

    # ---- relay.RelayHooks -----------------------------------------------------

    def record(self, rec: RequestRecord) -> None:
        self.recorder.request_done(rec)
        self.state.count(rec)
        self.control.observe(rec)

    def failed_attempt(self, failure: FailedAttempt) -> None:
        self.recorder.upstream_failure(failure)

    def stream_opened(self) -> None:
        self.active_streams += 1

    def stream_closed(self) -> None:
        self.active_streams -= 1

    def _clear_local_cache(self) -> None:
        if self.cache is not None:
            self.cache.entries.clear()

    @property
    def shares_state(self) -> bool:
        return self.state.shared

    async def share_overlay(self, text: bytes) -> None:
        await self.state.share_overlay(text)

    async def clear_shared_cache(self) -> int:
        """The admin's cache clear, for every instance ([state]); 0 in-process."""
        return await self.state.cache_clear()

    def close(self) -> None:
        if self.siblings is not None:
            self.siblings.close()
        self.control.close()
        self.pools.close()
        self.recorder.close()


AGGREGATED = frozenset({"/metrics", "/metrics.json"})


class _Summed:
    """The gateway as a local.LocalContext whose stats are the sum over its workers."""

    __slots__ = ("gateway", "summed")

    def __init__(self, gateway: Gateway, summed: Stats) -> None:
        self.gateway = gateway
        self.summed = summed

    @property
    def config(self) -> Config:
        return self.gateway.config

    def stats(self) -> Stats:
        return self.summed

    def version_info(self) -> bytes:
        return self.gateway.version_info()

    def providers_status(self) -> dict[str, Any]:
        return self.gateway.providers_status()


class _Waiting:
    """The client leg's sink while a local answer is computed: a client that leaves cancels it."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task

    def on_body(self, data: bytes) -> None:
        pass  # a body on GET /v1/models is read and ignored

    def on_body_end(self) -> None:
        pass

    def on_client_gone(self) -> None:
        self.task.cancel()


class _Collect:
    """The client leg's sink for a local answer that reads the body first (admin writes)."""

    __slots__ = ("parts", "start", "task")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.start: Callable[[], None] | None = None
        self.task: asyncio.Task[Reply] | None = None

    def on_body(self, data: bytes) -> None:
        self.parts.append(data)  # bounded by server.max_body_bytes (the client leg enforces it)

    def on_body_end(self) -> None:
        if self.start is not None:
            self.start()

    def on_client_gone(self) -> None:
        if self.task is not None:
            self.task.cancel()
