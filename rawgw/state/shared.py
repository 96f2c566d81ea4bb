"""The shared-state operations the gateway needs, on top of ``StateClient``.

Each method is one round trip (a pipeline where it sends several commands) bounded by
``timeout_ms`` (the client's default unless given) and raises ``StateError`` when the
server is down, slow or answers an error; the caller then keeps using its in-process
state. Nothing here ever holds a provider key's value: keys are named by provider name +
index, gateway keys by their config ``name``.

Layout on the server (``prefix`` default ``rawgw:``, so several gateways share one
server; every name in braces is a Redis Cluster hash tag):

    {rawgw:keys}              hash: one field per provider key / breaker with a state
                              ("k:<provider>:<index>", "b:<provider>") → JSON event
    rawgw:key-events          pub/sub channel: every event, as the same JSON
    {rawgw:probe:<provider>}  string, SET NX PX: the one half-open probe of a breaker
    {rawgw:cache}:<key>       string with PX: a cached response (the caller's bytes)
    {rawgw:ctr}:<minute>      hash, field → count for that minute (epoch // 60), EXPIRE
                              a little over an hour: the dashboard's cluster-wide counts
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from rawgw.cache import MODELS_CACHE_PREFIX
from rawgw.state.client import Arg, StateClient, StateReplyError

__all__ = ["KEY_EVENT_KINDS", "KeyEvent", "SharedState"]

log = logging.getLogger("rawgw.state")

# cooldown: until_epoch is when the key may be used again (strikes: consecutive 429s);
# disabled: 401/403, until an "enabled" (config reload, admin); breaker_*: key_index -1,
# until_epoch of breaker_open is when the half-open probe may run.
# revoked: a gateway key refused everywhere at once; ``provider`` holds the SHA-256 hex of
# the key's value (never the value), key_index -1; it has no end (a key given a new value
# has a new digest).
KEY_EVENT_KINDS = ("cooldown", "disabled", "enabled", "breaker_open", "breaker_closed", "revoked", "cache_cleared", "overlay_changed")
_PUBLISH_ONLY = frozenset({"cache_cleared", "overlay_changed"})  # news, not a state to store
_CLEARING = frozenset({"enabled", "breaker_closed"})
_BREAKER = frozenset({"breaker_open", "breaker_closed"})

COUNTER_BUCKET_S = 60
COUNTER_KEEP_S = 3600 + 2 * COUNTER_BUCKET_S  # the last hour is always complete

# Delete the probe lock only if this process still holds it (it may have expired and
# been taken by another process since).
_RELEASE_SCRIPT = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


@dataclass(frozen=True, slots=True)
class KeyEvent:
    """A provider key's (or a provider breaker's) state change, as stored and published.

    ``key_index`` is the key's position in the provider's ``keys`` list (-1 for breaker
    events: breakers are per provider); ``until_epoch`` is wall-clock (time.time()) and 0
    when the state has no end; ``origin`` is the publishing SharedState's id, so a
    process can skip its own events; ``at`` is when it was published.
    """

    provider: str
    key_index: int
    kind: str
    until_epoch: float = 0.0
    strikes: int = 0
    origin: str = ""
    at: float = 0.0

    def field(self) -> str:
        if self.kind == "revoked":
            return f"r:{self.provider}"
        return f"b:{self.provider}" if self.kind in _BREAKER else f"k:{self.provider}:{self.key_index}"

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "provider": self.provider,
                "key_index": self.key_index,
                "kind": self.kind,
                "until": self.until_epoch,
                "strikes": self.strikes,
                "origin": self.origin,
                "at": self.at,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> KeyEvent:
        """ValueError on anything that is not a well-formed event."""
        try:
            doc: Any = orjson.loads(data)
            event = cls(
                str(doc["provider"]),
                int(doc["key_index"]),
                str(doc["kind"]),
                float(doc["until"]),
                int(doc["strikes"]),
                str(doc["origin"]),
                float(doc["at"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad key event: {exc}") from None
        if event.kind not in KEY_EVENT_KINDS:
            raise ValueError(f"bad key event kind {event.kind!r}")
        return event


class SharedState:
    """Key events, the probe lock, the response cache and usage counters (module docstring)."""

    def __init__(self, client: StateClient, prefix: str = "rawgw:", origin: str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.origin = origin or f"{os.getpid()}-{os.urandom(4).hex()}"
        self.channel = f"{prefix}key-events"
        self.states_key = "{" + prefix + "keys}"
        self._cache_prefix = b"{" + prefix.encode() + b"cache}:"  # once, not per cached request

    # key events -------------------------------------------------------------------
    async def publish_key_event(
        self,
        provider: str,
        key_index: int,
        kind: str,
        until_epoch: float = 0.0,
        strikes: int = 0,
        *,
        timeout_ms: float | None = None,
    ) -> KeyEvent:
        """Store the key's (or breaker's) new state and tell every subscribed process.

        ``enabled`` and ``breaker_closed`` remove the stored state (back to normal);
        the others replace it. Store and publish go in one pipeline (one round trip).
        """
        if kind not in KEY_EVENT_KINDS:
            raise ValueError(f"key event kind must be one of {', '.join(KEY_EVENT_KINDS)}, got {kind!r}")
        event = KeyEvent(provider, -1 if kind in _BREAKER or kind == "revoked" else key_index, kind, until_epoch, strikes, self.origin, time.time())
        payload = event.encode()
        publish: tuple[Arg, ...] = ("PUBLISH", self.channel, payload)
        if kind in _PUBLISH_ONLY:
            _raise_errors(await self.client.pipeline([publish], timeout_ms=timeout_ms))
            return event
        store: tuple[Arg, ...] = (
            ("HDEL", self.states_key, event.field()) if kind in _CLEARING else ("HSET", self.states_key, event.field(), payload)
        )
        replies = await self.client.pipeline([store, publish], timeout_ms=timeout_ms)
        _raise_errors(replies)
        return event

    async def load_key_states(self, *, now: float | None = None, timeout_ms: float | None = None) -> list[KeyEvent]:
        """The current states, for a process that starts (or resubscribes) later.

        Cooldowns and open breakers whose ``until_epoch`` has passed are left out (they
        are over); disabled keys stay until an ``enabled`` event.
        """
        now = time.time() if now is None else now
        reply = await self.client.call("HGETALL", self.states_key, timeout_ms=timeout_ms)
        events = []
        for i in range(1, len(reply), 2):
            try:
                event = KeyEvent.decode(reply[i])
            except ValueError as exc:
                log.warning("state: ignoring stored %s: %s", self.states_key, exc)
                continue
            if event.kind in ("cooldown", "breaker_open") and 0 < event.until_epoch <= now:
                continue
            events.append(event)
        return events

    async def subscribe_key_events(self, callback: Callable[[KeyEvent], None], *, timeout_ms: float | None = None) -> None:
        """Call ``callback(event)`` on the loop for every published event (own ones too:
        compare ``event.origin`` with ``self.origin``). Survives reconnects; events sent
        while disconnected are missed, so reload with ``load_key_states()`` from the
        client's ``on_subscribed`` hook."""

        def on_message(_channel: bytes, payload: bytes) -> None:
            try:
                event = KeyEvent.decode(payload)
            except ValueError as exc:
                log.warning("state: ignoring message on %s: %s", self.channel, exc)
                return
            callback(event)

        await self.client.subscribe(self.channel, on_message, timeout_ms=timeout_ms)

    # breaker probe ----------------------------------------------------------------
    def probe_key(self, provider: str) -> str:
        return "{" + f"{self.prefix}probe:{provider}" + "}"

    async def try_probe(self, provider: str, ttl_ms: int = 10_000, *, timeout_ms: float | None = None) -> bool:
        """True for exactly one caller cluster-wide until ``release_probe`` or ``ttl_ms``.

        The TTL frees the lock if its holder dies mid-probe; make it longer than a probe
        request may take.
        """
        reply = await self.client.call("SET", self.probe_key(provider), self.origin, "NX", "PX", ttl_ms, timeout_ms=timeout_ms)
        return bool(reply == b"OK")

    async def release_probe(self, provider: str, *, timeout_ms: float | None = None) -> bool:
        """Drop the probe lock if this process holds it; True when it did."""
        reply = await self.client.call("EVAL", _RELEASE_SCRIPT, 1, self.probe_key(provider), self.origin, timeout_ms=timeout_ms)
        return bool(reply)

    # response cache ---------------------------------------------------------------
    def cache_key(self, key: str | bytes) -> bytes:
        raw = key.encode() if isinstance(key, str) else key
        return self._cache_prefix + raw

    async def cache_get(self, key: str | bytes, *, timeout_ms: float | None = None) -> bytes | None:
        """The bytes stored under ``key`` or None (missing or expired).

        ``key`` is the caller's cache key (rawgw.cache.ResponseCache.key: a digest, no
        secret in it)."""
        reply = await self.client.call("GET", self.cache_key(key), timeout_ms=timeout_ms)
        return reply if reply is None else bytes(reply)

    async def cache_set(self, key: str | bytes, value: bytes, ttl_s: float, *, timeout_ms: float | None = None) -> None:
        """Store ``value`` for ``ttl_s`` seconds (at least 1 ms)."""
        await self.client.call("SET", self.cache_key(key), value, "PX", max(1, int(ttl_s * 1000)), timeout_ms=timeout_ms)

    async def cache_clear(self, *, timeout_ms: float | None = None) -> int:
        """Drop every shared cached response (SCAN + UNLINK in batches); return how many.

        SCAN, not KEYS: the server keeps serving everybody else while it runs."""
        pattern = b"{" + self.prefix.encode() + b"cache}:*"
        models = self.cache_key(MODELS_CACHE_PREFIX)  # model lists are not responses: they stay
        cursor = b"0"
        removed = 0
        while True:
            reply = await self.client.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000, timeout_ms=timeout_ms)
            cursor = bytes(reply[0])
            keys = [k for k in (bytes(k) for k in reply[1]) if not k.startswith(models)]
            if keys:
                removed += int(await self.client.call("UNLINK", *keys, timeout_ms=timeout_ms))
            if cursor == b"0":
                return removed

    # admin overlay ----------------------------------------------------------------
    def overlay_key(self) -> str:
        return "{" + self.prefix + "overlay}"

    async def put_overlay(self, text: bytes, *, timeout_ms: float | None = None) -> None:
        """The admin overlay (gateway.d/admin.toml) of the cluster: the last change wins."""
        await self.client.call("SET", self.overlay_key(), text, timeout_ms=timeout_ms)

    async def get_overlay(self, *, timeout_ms: float | None = None) -> bytes | None:
        reply = await self.client.call("GET", self.overlay_key(), timeout_ms=timeout_ms)
        return None if reply is None else bytes(reply)

    # counters ---------------------------------------------------------------------
    def counter_key(self, minute: int) -> str:
        # one hash tag for all buckets: read_counters' pipeline stays in one cluster slot
        return "{" + self.prefix + "ctr}:" + str(minute)

    async def incr_counters(self, counts: Mapping[str, int], *, now: float | None = None, timeout_ms: float | None = None) -> None:
        """Add ``counts`` (field → increment) to the current minute's bucket.

        Meant to be called with a process's batched deltas (e.g. once a second), not per
        request. Fields are names like ``requests`` or ``provider:<name>:tokens``; never
        a key's value. The minute is this process's clock (time.time() // 60).
        """
        items = [(f, n) for f, n in counts.items() if n]
        if not items:
            return
        minute = int((time.time() if now is None else now) // COUNTER_BUCKET_S)
        key = self.counter_key(minute)
        commands: list[tuple[Arg, ...]] = [("HINCRBY", key, f, n) for f, n in items]
        commands.append(("EXPIRE", key, COUNTER_KEEP_S))
        _raise_errors(await self.client.pipeline(commands, timeout_ms=timeout_ms))

    async def read_counters(self, window_s: int = 3600, *, now: float | None = None, timeout_ms: float | None = None) -> dict[str, int]:
        """Every field summed over the minute buckets of the last ``window_s`` seconds
        (the current minute included), across all processes and instances."""
        last = int((time.time() if now is None else now) // COUNTER_BUCKET_S)
        n = max(1, min(window_s, COUNTER_KEEP_S) // COUNTER_BUCKET_S)
        replies = await self.client.pipeline([("HGETALL", self.counter_key(m)) for m in range(last - n + 1, last + 1)], timeout_ms=timeout_ms)
        _raise_errors(replies)
        totals: dict[str, int] = {}
        for reply in replies:
            for i in range(0, len(reply), 2):
                name = reply[i].decode()
                totals[name] = totals.get(name, 0) + int(reply[i + 1])
        return totals


def _raise_errors(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, StateReplyError):
            raise reply
