"""rawgw.state.shared against a real redis-server: key events stored + mirrored, the
cluster-wide probe lock, the response cache, per-minute counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from ops_helpers import wait_until
from redis_helpers import RedisServer, redis_server

from rawgw.state.client import StateClient, StateUnavailable
from rawgw.state.shared import KeyEvent, SharedState
from rawgw.state.url import parse_state_url

__all__ = ["redis_server"]


async def connected(url: str, **kw: object) -> StateClient:
    c = StateClient(parse_state_url(url), timeout_ms=2000, **kw)  # type: ignore[arg-type]
    c.start()
    assert await c.wait_up(5.0)
    return c


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[SharedState, SharedState]]:
    a, b = await connected(redis_server.url), await connected(redis_server.url)
    yield SharedState(a, origin="A"), SharedState(b, origin="B")
    await a.close()
    await b.close()


async def test_key_events_reach_another_process_fast_and_are_stored(pair: tuple[SharedState, SharedState]) -> None:
    a, b = pair
    got: list[tuple[float, KeyEvent]] = []
    subscribed = asyncio.Event()
    b.client.on_subscribed = subscribed.set
    await b.subscribe_key_events(lambda e: got.append((time.monotonic(), e)))
    await asyncio.wait_for(subscribed.wait(), 5)
    until = time.time() + 30
    sent = time.monotonic()
    event = await a.publish_key_event("openai", 2, "cooldown", until, strikes=1)
    await wait_until(lambda: got, what="event mirrored")
    latency = got[0][0] - sent
    assert got[0][1] == event and event.origin == "A" and event.key_index == 2
    assert latency < 0.1, f"cooldown reached the other process in {latency * 1000:.1f} ms"
    assert b.client.subscriber_up

    # A process starting later loads the current state from the hash
    await a.publish_key_event("openai", 0, "disabled")
    await a.publish_key_event("anthropic", 5, "breaker_open", time.time() + 10)
    await a.publish_key_event("openai", 1, "cooldown", time.time() - 1)  # already over
    states = {(e.provider, e.key_index, e.kind) for e in await b.load_key_states()}
    assert states == {("openai", 2, "cooldown"), ("openai", 0, "disabled"), ("anthropic", -1, "breaker_open")}
    # enabled / breaker_closed clear the stored state (and are published too)
    await a.publish_key_event("openai", 0, "enabled")
    await a.publish_key_event("anthropic", -1, "breaker_closed")
    assert {(e.provider, e.kind) for e in await b.load_key_states()} == {("openai", "cooldown")}
    await wait_until(lambda: len(got) == 6, what="all six events")
    assert [e.kind for _, e in got] == ["cooldown", "disabled", "breaker_open", "cooldown", "enabled", "breaker_closed"]
    with pytest.raises(ValueError, match="kind must be one of"):
        await a.publish_key_event("openai", 0, "paused")


async def test_no_key_secret_in_redis(pair: tuple[SharedState, SharedState]) -> None:
    a, _ = pair
    await a.publish_key_event("openai", 3, "cooldown", time.time() + 5, 2)
    stored = await a.client.call("HGETALL", a.states_key)
    assert stored[0] == b"k:openai:3"
    assert KeyEvent.decode(stored[1]).strikes == 2


async def test_probe_lock_is_one_holder_cluster_wide(pair: tuple[SharedState, SharedState]) -> None:
    a, b = pair
    results = await asyncio.gather(*(s.try_probe("openai") for s in (a, b, a, b)))
    assert sorted(results) == [False, False, False, True]
    holder, other = (a, b) if results[0] or results[2] else (b, a)
    assert not await other.release_probe("openai")  # not its lock: stays
    assert not await other.try_probe("openai")
    assert await holder.release_probe("openai")
    assert await other.try_probe("openai", ttl_ms=50)
    pttl = await a.client.call("PTTL", a.probe_key("openai"))
    assert 0 < pttl <= 50
    await wait_until(lambda: holder.try_probe("openai"), what="lock expired with its ttl")


async def test_cache_is_shared_and_expires(pair: tuple[SharedState, SharedState]) -> None:
    a, b = pair
    body = bytes(range(256)) * 10
    key = b"\x00digest\xff"
    assert await b.cache_get(key) is None
    await a.cache_set(key, body, ttl_s=30)
    assert await b.cache_get(key) == body
    assert 29_000 < await a.client.call("PTTL", a.cache_key(key)) <= 30_000
    await a.cache_set("short", b"x", ttl_s=0.05)
    await wait_until(lambda: _is_none(b.cache_get("short")), what="entry expired")


async def _is_none(coro: object) -> bool:
    return await coro is None  # type: ignore[misc]


async def test_counters_sum_the_last_hour_across_processes(pair: tuple[SharedState, SharedState]) -> None:
    a, b = pair
    now = 1_800_000_000.0  # a minute boundary + 0
    await a.incr_counters({"requests": 3, "tokens": 100, "zero": 0}, now=now)
    await b.incr_counters({"requests": 2, "provider:openai:requests": 2}, now=now + 30)
    await b.incr_counters({"requests": 1}, now=now + 60 * 59)
    await a.incr_counters({"requests": 1000}, now=now - 60)  # 61 minutes before the read
    totals = await b.read_counters(3600, now=now + 60 * 59)
    assert totals == {"requests": 6, "tokens": 100, "provider:openai:requests": 2}
    assert await a.read_counters(60, now=now + 60 * 59) == {"requests": 1}
    ttl = await a.client.call("TTL", a.counter_key(int(now // 60)))
    assert 3600 < ttl <= 3720


async def test_operations_fail_fast_when_the_server_is_down(redis_server: RedisServer) -> None:
    c = await connected(redis_server.url, backoff_max_ms=100)
    s = SharedState(c)
    redis_server.kill()
    await wait_until(lambda: not c.up, what="down")
    for op in (s.publish_key_event("p", 0, "cooldown", 1.0), s.try_probe("p"), s.cache_get("k"), s.read_counters()):
        with pytest.raises(StateUnavailable):
            await op
    await c.close()
