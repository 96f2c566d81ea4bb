"""The state seam: where rate limits, key events, the caches and usage counters live.

``LocalState`` is the default: everything in this process, no network (as before
issue 12). ``RedisState`` (``[state] url`` set) shares them through a Redis/Valkey
server and keeps ``LocalState``'s behaviour as its fallback: every call to the server
is bounded by ``timeout_ms`` and any ``StateError`` means "decide locally".

What costs a round trip, and only then (the hot path rule):
- a request of a gateway key with a rate limit: one ``EVALSHA`` (skipped while the key
  is in the local deny-cache, i.e. known to be over its limit until its next token);
- a cacheable request missing the local cache: one ``GET``; its answer: one ``SET``;
- a /v1/models listing missing the local cache; a half-open breaker's probe (SET NX).
Key cooldowns, disabled keys and breakers are mirrored in each process through pub/sub
(applied on the loop when the message arrives), never read per request. Usage counters
are batched once a second.

Built once by the Gateway at start; the relay reaches it through ``RelayConfig.state``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rawgw.routing.ratelimit import RateLimiter, limit_headers
from rawgw.state.client import StateClient, StateError
from rawgw.state.limiter import SharedLimiter
from rawgw.state.shared import KeyEvent, SharedState
from rawgw.state.url import parse_state_url

if TYPE_CHECKING:
    from rawgw.config import GatewayKey, StateConfig
    from rawgw.observe.record import RequestRecord
    from rawgw.routing.keys import KeyPool
    from rawgw.routing.router import Router

log = logging.getLogger("rawgw.state")

Header = tuple[bytes, bytes]
# (seconds to wait: 0 allowed, None never fits; x-ratelimit-* headers)
Verdict = tuple[float | None, list[Header]]

FLUSH_INTERVAL_S = 1.0
# A dashboard or /health/providers read within this long keeps the cluster totals fresh.
CLUSTER_WANTED_S = 60.0
CLUSTER_WINDOW_S = 3600
PROBE_TTL_MS = 30_000
CLEAR_TIMEOUT_MS = 5000.0  # SCAN + UNLINK of the shared cache, from the admin API


class LocalState:
    """In-process state (the default): no server, no round trip, nothing shared."""

    shared = False

    def __init__(self, workers: int = 1) -> None:
        self.limiter = RateLimiter(workers)
        self.errors = 0  # fallbacks to in-process state (RedisState)
        # SHA-256 hex digests of gateway keys revoked at run time (admin), here or on
        # any instance sharing the state server; checked per request only when not empty
        self.revoked: set[str] = set()
        # set by the gateway: drop the local response cache (another instance's admin cleared it)
        self.on_cache_cleared: Callable[[], None] | None = None
        # set by the gateway: another instance's admin changed the overlay (its TOML text)
        self.on_overlay_changed: Callable[[bytes], None] | None = None

    # lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        pass

    def attach(self, router: Router) -> None:
        """A (new) router: its key pools are the state mirrored (RedisState)."""

    async def close(self) -> None:
        pass

    @property
    def up(self) -> bool:
        return False

    # rate limits --------------------------------------------------------------------
    def peek(self, key: GatewayKey) -> list[Header]:
        return self.limiter.peek(key)

    async def reserve(self, key: GatewayKey, tokens: int) -> Verdict:
        return self.limiter.reserve(key, tokens)

    def refund(self, key: GatewayKey, tokens: int) -> None:
        self.limiter.refund(key, tokens)

    # gateway keys -------------------------------------------------------------------
    def revoke(self, key_value: str) -> None:
        """Refuse this gateway key from now on (here; with a state server, everywhere)."""
        self.revoked.add(key_digest(key_value))

    # breaker probe ------------------------------------------------------------------
    async def claim_probe(self, provider: str) -> bool:
        """May this process send the half-open probe of ``provider``'s breaker?"""
        return True

    def release_probe(self, provider: str) -> None:
        pass

    # caches ---------------------------------------------------------------------------
    async def cache_get(self, key: bytes) -> bytes | None:
        return None

    def cache_put(self, key: bytes, value: bytes, ttl_s: float) -> None:
        pass

    async def cache_clear(self) -> int:
        return 0

    async def share_overlay(self, text: bytes) -> None:
        pass

    # usage ----------------------------------------------------------------------------
    def count(self, rec: RequestRecord) -> None:
        pass

    def cluster(self) -> dict[str, int] | None:
        """Cluster-wide counters of the last hour (None: in-process, or not known yet)."""
        return None

    def want_cluster(self) -> None:
        """A reader of the cluster counters came (/metrics.json, /health/providers)."""

    def metric_lines(self) -> list[str]:
        return []


class RedisState(LocalState):
    """Shared through a Redis/Valkey server; falls back to ``LocalState`` behaviour."""

    shared = True

    def __init__(self, config: StateConfig, workers: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(workers)
        self.config = config
        self.timeout_ms = float(config.timeout_ms)
        self.clock = clock
        self.client = StateClient(
            parse_state_url(config.url),
            timeout_ms=self.timeout_ms,
            on_up=self._on_up,
            on_subscribed=self._on_subscribed,
        )
        self.shared_limiter = SharedLimiter(self.client, config.prefix)
        self.state = SharedState(self.client, config.prefix)
        self.router: Router | None = None
        # key name -> clock() until which the key is known to be over its RPM limit
        self.denied: dict[str, float] = {}
        self.remaining: dict[str, list[Header]] = {}  # last shared x-ratelimit-* per key
        self.deltas: dict[str, int] = {}  # counter field -> increment not yet sent
        self._counts: dict[tuple[int, str, bool, str | None], int] = {}
        self._tokens: dict[str, list[int]] = {}
        self._flushed_keys: dict[str, tuple[int, int, int]] = {}
        self._cluster: dict[str, int] | None = None
        self._cluster_wanted = -CLUSTER_WANTED_S
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flusher: asyncio.Task[None] | None = None

    # lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.client.start()
        loop = asyncio.get_running_loop()
        self._spawn(self.state.subscribe_key_events(self._on_event))
        self._flusher = loop.create_task(self._flush_loop(), name="rawgw-state-flush")

    def attach(self, router: Router) -> None:
        self.router = router
        for name, pool in router.pools.items():
            pool.listener = self._key_listener(name)
            pool.breaker.listener = pool.listener
            for index in pool.reenabled:
                self._publish(name, index, "enabled", 0.0, 0)
            pool.reenabled = []

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.client.close()

    @property
    def up(self) -> bool:
        return self.client.up

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, StateError):
            self.errors += 1
        elif exc is not None:
            log.error("state: background call failed", exc_info=exc)

    # key events -----------------------------------------------------------------------
    def _key_listener(self, provider: str) -> Callable[[str, int, float, int], None]:
        def listener(kind: str, index: int, until: float, strikes: int) -> None:
            self._publish(provider, index, kind, until, strikes)

        return listener

    def _publish(self, provider: str, index: int, kind: str, until: float, strikes: int) -> None:
        if self.client.up:
            self._spawn(self.state.publish_key_event(provider, index, kind, until, strikes))
        # while down the change stays local; _on_up republishes what is still in force

    def _on_event(self, event: KeyEvent) -> None:
        if event.origin == self.state.origin:
            return
        self._apply(event)

    def _apply(self, event: KeyEvent) -> None:
        if event.kind == "revoked":
            self.revoked.add(event.provider)
            return
        if event.kind == "cache_cleared":
            if self.on_cache_cleared is not None:
                self.on_cache_cleared()  # another instance's admin cleared the cache
            return
        if event.kind == "overlay_changed":
            self._spawn(self._fetch_overlay())
            return
        router = self.router
        pool: KeyPool | None = router.pools.get(event.provider) if router is not None else None
        if pool is not None:
            pool.apply(event.kind, event.key_index, event.until_epoch, event.strikes)

    def _on_subscribed(self) -> None:
        # (Re)subscribed: events sent while we were away are lost, so read the stored ones.
        self._spawn(self._load())

    async def _load(self) -> None:
        for event in await self.state.load_key_states(timeout_ms=max(self.timeout_ms, 1000.0)):
            if event.origin != self.state.origin:
                self._apply(event)
        await self._fetch_overlay()  # admin changes made while this process was away

    async def _fetch_overlay(self) -> None:
        try:
            text = await self.state.get_overlay(timeout_ms=max(self.timeout_ms, 1000.0))
        except StateError:
            self.errors += 1
            return
        if text is not None and self.on_overlay_changed is not None:
            self.on_overlay_changed(text)

    async def share_overlay(self, text: bytes) -> None:
        """This process's admin changed the overlay: store it and tell every instance."""
        if not self.client.up:
            return  # documented: an admin change made during an outage stays local
        try:
            await self.state.put_overlay(text, timeout_ms=CLEAR_TIMEOUT_MS)
            await self.state.publish_key_event("", -1, "overlay_changed", timeout_ms=CLEAR_TIMEOUT_MS)
        except StateError:
            self.errors += 1

    def _on_up(self) -> None:
        # The server is (back) up, maybe restarted empty: what this process still knows
        # (cooldowns in force, disabled keys, open breakers) is published again.
        for digest in self.revoked:
            self._publish(digest, -1, "revoked", 0.0, 0)
        router = self.router
        if router is None:
            return
        now = time.time()
        for name, pool in router.pools.items():
            for kind, index, until, strikes in pool.local_events(now):
                self._publish(name, index, kind, until, strikes)

    def revoke(self, key_value: str) -> None:
        digest = key_digest(key_value)
        self.revoked.add(digest)
        self._publish(digest, -1, "revoked", 0.0, 0)
        # while the server is down the revocation is published by _on_up

    # rate limits ------------------------------------------------------------------------
    def peek(self, key: GatewayKey) -> list[Header]:
        return self.remaining.get(key.name) or self.limiter.peek(key)

    async def reserve(self, key: GatewayKey, tokens: int) -> Verdict:
        now = self.clock()
        denied_until = self.denied.get(key.name)
        if denied_until is not None:
            if now < denied_until:
                # Envoy's trick: known to be over the limit until its next token; no
                # round trip, the same answer the server would give.
                return denied_until - now, limit_headers(key, 0, 0) if key.rate_limit_tpm <= 0 else self.peek(key)
            del self.denied[key.name]
        if not self.client.up:
            self.errors += 1
            return self.limiter.reserve(key, tokens)
        try:
            d = await self.shared_limiter.reserve(
                key.name,
                rpm=key.rate_limit_rpm,
                rpm_burst=key.rate_limit_burst,
                tpm=key.rate_limit_tpm,
                tokens=tokens,
            )
        except StateError:
            self.errors += 1
            return self.limiter.reserve(key, tokens)
        headers = limit_headers(key, d.remaining_requests, d.remaining_tokens)
        self.remaining[key.name] = headers
        if d.allowed:
            return 0.0, headers
        if d.reason == "rpm" and d.retry_after_s is not None:
            self.denied[key.name] = self.clock() + d.retry_after_s
        return d.retry_after_s, headers

    def refund(self, key: GatewayKey, tokens: int) -> None:
        if tokens <= 0 or key.rate_limit_tpm <= 0:
            return
        if self.client.up:
            self._spawn(self.shared_limiter.refund(key.name, tokens, tpm=key.rate_limit_tpm))
        self.limiter.refund(key, tokens)

    # breaker probe ------------------------------------------------------------------------
    async def claim_probe(self, provider: str) -> bool:
        if not self.client.up:
            return True  # no server: the in-process breaker alone decides
        try:
            return await self.state.try_probe(provider, PROBE_TTL_MS)
        except StateError:
            self.errors += 1
            return True

    def release_probe(self, provider: str) -> None:
        if self.client.up:
            self._spawn(self.state.release_probe(provider))

    # caches -------------------------------------------------------------------------------
    async def cache_get(self, key: bytes) -> bytes | None:
        if not self.client.up:
            return None
        try:
            return await self.state.cache_get(key)
        except StateError:
            self.errors += 1
            return None

    def cache_put(self, key: bytes, value: bytes, ttl_s: float) -> None:
        if self.client.up:
            self._spawn(self.state.cache_set(key, value, ttl_s))

    async def cache_clear(self) -> int:
        """The admin's clear reaches every instance: the shared entries go (an admin
        call, so it may take longer than a request's timeout_ms)."""
        if not self.client.up:
            return 0
        try:
            removed = await self.state.cache_clear(timeout_ms=CLEAR_TIMEOUT_MS)
            await self.state.publish_key_event("", -1, "cache_cleared", timeout_ms=CLEAR_TIMEOUT_MS)
            return removed
        except StateError:
            self.errors += 1
            return 0

    # usage --------------------------------------------------------------------------------
    def count(self, rec: RequestRecord) -> None:
        if rec.kind == "local":
            return  # the dashboard's own polls are not traffic
        # plain tuples per request; the field names are formatted once a second (flush)
        k = (rec.status, rec.provider, rec.key_limited, rec.cache)
        self._counts[k] = self._counts.get(k, 0) + 1
        if rec.prompt_tokens is not None:
            t = self._tokens.get(rec.provider)
            if t is None:
                t = self._tokens[rec.provider] = [0, 0]
            t[0] += rec.prompt_tokens
            t[1] += rec.completion_tokens or 0

    def _record_deltas(self) -> None:
        counts, self._counts = self._counts, {}
        tokens, self._tokens = self._tokens, {}
        d = self.deltas
        for (status, provider, limited, cache), n in counts.items():
            names = ["requests", f"status:{status}"]
            if provider:
                names.append(f"provider:{provider}:requests")
            if limited:
                names.append("rate_limited")
            if cache is not None:
                names.append("cache:hit" if cache == "HIT" else "cache:miss")
            for name in names:
                d[name] = d.get(name, 0) + n
        for provider, (prompt, completion) in tokens.items():
            for name, n in ((f"provider:{provider}:prompt_tokens", prompt), (f"provider:{provider}:completion_tokens", completion)):
                d[name] = d.get(name, 0) + n

    def _key_deltas(self) -> None:
        """Per provider key counters, from the pools' own numbers (nothing on the hot path)."""
        router = self.router
        if router is None:
            return
        d = self.deltas
        for name, pool in router.pools.items():
            for i, k in enumerate(pool.keys):
                st = pool.states[k]
                field = f"key:{name}:{i}"
                now = (st.requests, st.rate_limited, st.failures)
                before = self._flushed_keys.get(field, (0, 0, 0))
                if now == before:
                    continue
                if any(a < b for a, b in zip(now, before)):
                    before = (0, 0, 0)  # a new state object (reload with a changed key)
                for label, a, b in zip(("requests", "rate_limited", "failures"), now, before):
                    if a > b:
                        d[f"{field}:{label}"] = d.get(f"{field}:{label}", 0) + a - b
                self._flushed_keys[field] = now

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def flush(self) -> None:
        """Send the batched counter deltas; refresh the cluster totals if someone looks."""
        self._record_deltas()
        self._key_deltas()
        if not self.client.up:
            return  # the deltas wait (bounded by the number of distinct fields)
        deltas, self.deltas = self.deltas, {}
        try:
            if deltas:
                await self.state.incr_counters(deltas, timeout_ms=max(self.timeout_ms, 500.0))
        except StateError:
            self.errors += 1
            for name, n in deltas.items():  # not lost: sent with the next batch
                self.deltas[name] = self.deltas.get(name, 0) + n
            return
        if self.clock() - self._cluster_wanted < CLUSTER_WANTED_S:
            try:
                self._cluster = await self.state.read_counters(CLUSTER_WINDOW_S, timeout_ms=max(self.timeout_ms, 500.0))
            except StateError:
                self.errors += 1

    def cluster(self) -> dict[str, int] | None:
        return self._cluster

    def want_cluster(self) -> None:
        # flush() reads the cluster counters while this is recent (CLUSTER_WANTED_S)
        self._cluster_wanted = self.clock()

    def metric_lines(self) -> list[str]:
        return [
            "# HELP rawgw_state_up Whether the state server ([state] url) is connected (1) or not (0).",
            "# TYPE rawgw_state_up gauge",
            f"rawgw_state_up {1 if self.client.up else 0}",
            "# HELP rawgw_state_errors_total State server calls that failed or timed out (the request was decided in-process).",
            "# TYPE rawgw_state_errors_total counter",
            f"rawgw_state_errors_total {self.client.errors + self.errors}",
        ]


def key_digest(key_value: str) -> str:
    """How a gateway key is named on the state server: a digest, never the value."""
    return hashlib.sha256(key_value.encode()).hexdigest()


def build_state(config: StateConfig, workers: int = 1) -> LocalState:
    """The backend for ``[state]``: in-process when ``url`` is empty."""
    return RedisState(config, workers) if config.shared else LocalState(workers)
