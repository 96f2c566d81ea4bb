"""Shared state across gateway instances (issue 12): real redis-server, real `rawgw serve`
subprocesses sharing it, a mock provider. Every wait is on a fact (a metric, a
/health/providers state, a key on the server), never a sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import GW_KEY, UPSTREAM_KEY, Gateway, StartGateway, base_config
from mock_upstream import Json, MockUpstream, RecordedRequest
from ops_helpers import call, chat_body, completion, scrape, wait_until
from redis_helpers import RedisServer, redis_server

from rawgw.state.client import StateClient
from rawgw.state.url import parse_state_url

__all__ = ["redis_server"]

SECOND_KEY = "sk-upstream-key-bbbb2222"
LIMITED = "gw-limited-key-777777"


def shared_config(upstream: MockUpstream, redis: RedisServer | str, **kw: Any) -> dict[str, Any]:
    url = redis if isinstance(redis, str) else redis.url
    extra = kw.pop("extra", {})
    extra = {**extra, "state": {"url": url, "timeout_ms": kw.pop("timeout_ms", 50)}}
    return base_config(upstream, extra=extra, **kw)


async def state_up(gw: Gateway, up: int = 1, timeout: float = 10.0) -> None:
    async def check() -> bool:
        _, m = await scrape(gw.port)
        return m.get("rawgw_state_up") == up

    await wait_until(check, timeout=timeout, what=f"rawgw_state_up {up} on :{gw.port}")


async def providers(gw: Gateway) -> dict[str, Any]:
    r = await call(gw.port, b"", path="/health/providers", method="GET")
    assert r.status == 200, r.body
    return r.json()["providers"]  # type: ignore[no-any-return]


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[StateClient]:
    c = StateClient(parse_state_url(redis_server.url), timeout_ms=2000)
    c.start()
    assert await c.wait_up(5.0)
    yield c
    await c.close()


# --------------------------------------------------------------------------- key events


async def test_provider_429_on_a_rests_the_key_on_b_and_c(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    def handler(req: RecordedRequest) -> Json:
        if req.header("authorization") == f"Bearer {UPSTREAM_KEY}".encode():
            return Json(status=429, body={"error": {"message": "slow down"}}, headers=[("Retry-After", "30")])
        return Json(body=completion())

    mock_upstream.handler = handler
    cfg = shared_config(mock_upstream, redis_server, provider={"keys": [UPSTREAM_KEY, SECOND_KEY], "key_strategy": "first"})
    a, b, c = [await start_gateway(cfg) for _ in range(3)]
    for gw in (a, b, c):
        await state_up(gw)
    r = await call(a.port, chat_body())
    assert r.status == 200 and r.header("x-rawgw-attempts") == "2", (r.status, r.body)
    t_429 = time.monotonic()

    async def cooling_on(gw: Gateway) -> bool:
        return (await providers(gw))["mock"]["keys"][0]["state"] == "cooling"

    await wait_until(lambda: cooling_on(b), what="first key cooling on B")
    reached = time.monotonic() - t_429
    await wait_until(lambda: cooling_on(c), what="first key cooling on C")
    n = len(mock_upstream.requests)
    for gw in (b, c, b, c):
        r = await call(gw.port, chat_body())
        assert r.status == 200 and r.header("x-rawgw-attempts") == "1", (r.status, r.body)
    later = mock_upstream.requests[n:]
    assert len(later) == 4
    assert all(req.header("authorization") == f"Bearer {SECOND_KEY}".encode() for req in later)
    cool = (await providers(b))["mock"]["keys"][0]
    assert 20 < cool["cooldown_s"] <= 30, cool
    assert reached < 1.0, f"cooldown took {reached:.3f} s to reach another instance"


async def test_breaker_opened_on_a_is_open_on_b(start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer) -> None:
    mock_upstream.default = Json(status=500, body={"error": {"message": "down"}})
    cfg = shared_config(mock_upstream, redis_server)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up(a)
    await state_up(b)
    for _ in range(5):
        assert (await call(a.port, chat_body())).status == 500
    assert (await providers(a))["mock"]["breaker"] == "open"

    async def open_on_b() -> bool:
        return (await providers(b))["mock"]["breaker"] == "open"

    await wait_until(open_on_b, what="breaker open on B")
    n = len(mock_upstream.requests)
    r = await call(b.port, chat_body())
    assert r.status == 503, (r.status, r.body)
    assert len(mock_upstream.requests) == n  # B never asked the provider


async def test_half_open_probe_is_one_probe_cluster_wide(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    """After the breaker's 10 s, every instance turns half-open at the same moment (one
    open_until for all): of requests arriving on both at once, one probe reaches the
    provider, the others are refused."""
    mock_upstream.default = Json(status=500, body={"error": {"message": "down"}}, delay_before=0.5)
    cfg = shared_config(mock_upstream, redis_server)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up(a)
    await state_up(b)
    await asyncio.gather(*(call(a.port, chat_body()) for _ in range(5)))

    async def breaker(gw: Gateway, state: str) -> bool:
        return (await providers(gw))["mock"]["breaker"] == state

    await wait_until(lambda: breaker(b, "open"), what="breaker open on B")
    await wait_until(lambda: breaker(a, "half-open"), timeout=15, interval=0.02, what="half-open on A")
    n = len(mock_upstream.requests)
    got = await asyncio.gather(*(call(gw.port, chat_body()) for gw in (a, b, a, b)))
    assert sorted(r.status for r in got) == [500, 503, 503, 503], [(r.status, r.body) for r in got]
    assert len(mock_upstream.requests) == n + 1  # one probe for the cluster
    await wait_until(lambda: breaker(b, "open"), what="the failed probe reopened the breaker on B")


# --------------------------------------------------------------------------- rate limits


async def test_ten_per_minute_across_two_instances_allows_exactly_10_of_30(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    keys = [{"key": LIMITED, "name": "team", "rate_limit_rpm": 10, "rate_limit_burst": 10}]
    cfg = shared_config(mock_upstream, redis_server, keys=keys)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    for gw in (a, b):
        await state_up_key(gw, LIMITED)
    results = []
    for i in range(30):
        results.append(await call((a if i % 2 else b).port, chat_body(), key=LIMITED))
    ok = [r for r in results if r.status == 200]
    limited = [r for r in results if r.status == 429]
    assert len(ok) == 10 and len(limited) == 20, [r.status for r in results]
    assert len(mock_upstream.requests) == 10
    for r in limited:
        ra = r.header("retry-after")
        assert ra is not None and 1 <= int(ra) <= 7, ra  # 10/min: a token every 6 s
        assert r.header("x-ratelimit-remaining-requests") == "0"
        assert r.json()["error"]["type"]
    remaining = sorted(int(r.header("x-ratelimit-remaining-requests") or -1) for r in ok)
    assert remaining == list(range(10))  # one bucket: each instance saw the other's requests


async def state_up_key(gw: Gateway, key: str) -> None:
    async def check() -> bool:
        _, m = await scrape(gw.port, key=key)
        return m.get("rawgw_state_up") == 1

    await wait_until(check, timeout=10, what=f"rawgw_state_up 1 on :{gw.port}")


async def evalsha_calls(redis_client: StateClient) -> int:
    info = (await redis_client.call("INFO", "commandstats")).decode()
    calls = 0
    for line in info.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


async def test_deny_cache_spares_the_round_trip_until_the_next_token(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer, redis_client: StateClient
) -> None:
    keys = [{"key": LIMITED, "name": "slow", "rate_limit_rpm": 1, "rate_limit_burst": 1}]
    gw = await start_gateway(shared_config(mock_upstream, redis_server, keys=keys))
    await state_up_key(gw, LIMITED)
    assert (await call(gw.port, chat_body(), key=LIMITED)).status == 200  # loads the script too
    before = await evalsha_calls(redis_client)
    statuses = [(await call(gw.port, chat_body(), key=LIMITED)).status for _ in range(9)]
    assert statuses == [429] * 9
    # the first refusal asked the server; the 8 after it did not
    assert await evalsha_calls(redis_client) - before == 1
    r = await call(gw.port, chat_body(), key=LIMITED)
    assert r.status == 429 and 50 <= int(r.header("retry-after") or 0) <= 60  # 1/min: the next token's time


async def test_tpm_is_shared_and_refunded(start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer) -> None:
    """rate_limit_tpm: prompt estimate + max_tokens reserved up front on one cluster-wide
    bucket, the unused part refunded from the response's usage."""
    mock_upstream.default = Json(body=completion(prompt=10, completion_tokens=10))
    keys = [{"key": LIMITED, "name": "tokens", "rate_limit_tpm": 1000}]
    cfg = shared_config(mock_upstream, redis_server, keys=keys)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up_key(a, LIMITED)
    await state_up_key(b, LIMITED)
    r = await call(a.port, chat_body(max_tokens=600), key=LIMITED)
    assert r.status == 200, r.body
    assert r.header("x-ratelimit-limit-tokens") == "1000"
    left = int(r.header("x-ratelimit-remaining-tokens") or 0)
    assert 300 <= left < 400, left  # 600 + the body's estimate reserved
    # the reservation of 600+ does not fit on B until A's refund (600+ - 20 unused) lands
    async def fits_on_b() -> bool:
        resp = await call(b.port, chat_body(max_tokens=600), key=LIMITED)
        assert resp.status in (200, 429), resp.body
        return resp.status == 200

    await wait_until(fits_on_b, timeout=5, what="refund visible on B")
    r = await call(a.port, chat_body(max_tokens=2000), key=LIMITED)
    assert r.status == 429 and r.json()["error"]["code"] == "tokens_exceed_limit", r.body
    assert r.header("retry-after") is None  # no wait makes it fit


# --------------------------------------------------------------------------- caches


async def test_cache_hit_on_b_for_a_request_answered_on_a(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer, redis_client: StateClient
) -> None:
    cfg = shared_config(mock_upstream, redis_server, extra={"cache": {"enabled": True, "ttl_s": 60}})
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up(a)
    await state_up(b)
    r1 = await call(a.port, chat_body())
    assert r1.status == 200 and r1.header("x-cache") == "MISS"

    async def stored() -> bool:
        return bool(await redis_client.call("KEYS", "{rawgw:cache}:*"))

    await wait_until(stored, what="A's answer on the state server")
    r2 = await call(b.port, chat_body())
    assert r2.status == 200 and r2.header("x-cache") == "HIT", r2.headers
    assert r2.body == r1.body
    assert r2.header("x-rawgw-provider") == "mock"
    assert len(mock_upstream.requests) == 1


async def test_models_list_fetched_once_for_the_cluster(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer, redis_client: StateClient
) -> None:
    mock_upstream.default = Json(body={"object": "list", "data": [{"id": "m", "object": "model"}]})
    cfg = shared_config(mock_upstream, redis_server)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up(a)
    await state_up(b)
    r = await call(a.port, b"", path="/v1/models", method="GET")
    assert r.status == 200 and [m["id"] for m in r.json()["data"]] == ["m"]

    async def stored() -> bool:
        return bool(await redis_client.call("KEYS", "{rawgw:cache}:models:*"))

    await wait_until(stored, what="A's model list on the state server")
    r = await call(b.port, b"", path="/v1/models", method="GET")
    assert r.status == 200 and [m["id"] for m in r.json()["data"]] == ["m"]
    assert len(mock_upstream.requests) == 1


async def test_usage_counters_show_the_cluster(start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer) -> None:
    mock_upstream.default = Json(body=completion(prompt=3, completion_tokens=4))
    cfg = shared_config(mock_upstream, redis_server)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up(a)
    await state_up(b)
    for gw in (a, a, b):
        assert (await call(gw.port, chat_body())).status == 200

    async def cluster_on(gw: Gateway) -> Any:
        r = await call(gw.port, b"", path="/metrics.json", method="GET")
        c = r.json()["cluster"]
        return c if c and c["requests_total"] == 3 else None

    for gw in (a, b):
        c = await wait_until(lambda gw=gw: cluster_on(gw), timeout=8, what="cluster totals")
        assert c["by_provider"] == {"mock": 3} and c["by_status"] == {"200": 3}
        assert c["tokens_total"] == {"prompt": 9, "completion": 12}

    async def key_requests() -> bool:
        k = (await providers(b))["mock"]["keys"][0]
        return k.get("cluster", {}).get("requests") == 3

    await wait_until(key_requests, timeout=8, what="per-key cluster requests on B")


# --------------------------------------------------------------------------- faults


async def test_state_server_down_at_start_serves_and_resumes_when_it_comes(
    start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Any
) -> None:
    server = RedisServer(tmp_path / "late")
    (tmp_path / "late").mkdir()
    cfg = shared_config(mock_upstream, server.url)
    gw = await start_gateway(cfg)
    t0 = time.monotonic()
    r = await call(gw.port, chat_body())
    assert r.status == 200 and time.monotonic() - t0 < 1.0
    _, m = await scrape(gw.port)
    assert m.get("rawgw_state_up") == 0
    assert gw.stderr_text().count("unreachable") == 1, gw.stderr_text()
    await server.start()
    try:
        await state_up(gw, timeout=15)
        assert "is back" in gw.stderr_text()
    finally:
        await server.stop()


async def test_sigkill_under_load_every_request_answered_then_sharing_resumes(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    def handler(req: RecordedRequest) -> Json:
        if req.header("authorization") == f"Bearer {UPSTREAM_KEY}".encode():
            return Json(status=429, body={"error": {"message": "slow down"}}, headers=[("Retry-After", "60")])
        return Json(body=completion())

    mock_upstream.handler = handler
    keys = [
        {"key": GW_KEY, "name": "busy", "rate_limit_rpm": 600000, "rate_limit_burst": 100000},
        {"key": LIMITED, "name": "tight", "rate_limit_rpm": 2, "rate_limit_burst": 2},
    ]
    cfg = shared_config(mock_upstream, redis_server, keys=keys, provider={"keys": [UPSTREAM_KEY, SECOND_KEY], "key_strategy": "first"})
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up(a)
    await state_up(b)
    # A's first request rests the first provider key (cooldown 60 s): a state to survive
    assert (await call(a.port, chat_body())).status == 200
    statuses: list[int] = []
    killed = asyncio.Event()

    async def load(gw: Gateway) -> None:
        for i in range(60):
            if i == 20 and gw is a:
                redis_server.kill()
                killed.set()
            r = await call(gw.port, chat_body(), timeout=5.0)
            statuses.append(r.status)

    await asyncio.gather(load(a), load(b), load(a), load(b))
    assert killed.is_set()
    assert statuses == [200] * 240, sorted(set(statuses))
    await state_up(a, 0)
    await state_up(b, 0)
    _, m = await scrape(a.port)
    assert m.get("rawgw_state_errors_total") is not None and m.get("rawgw_state_errors_total") >= 1
    # restarted empty: both reconnect, the rested key is published again, limits shared again
    await redis_server.start()
    await state_up(a, timeout=15)
    await state_up(b, timeout=15)
    c = await start_gateway(cfg)

    async def cooling_on_c() -> bool:
        return (await providers(c))["mock"]["keys"][0]["state"] == "cooling"

    await wait_until(cooling_on_c, timeout=10, what="the rested key republished to a new instance")
    await state_up_key(c, LIMITED)
    got = [(await call(gw.port, chat_body(), key=LIMITED)).status for gw in (a, b, c)]
    assert got == [200, 200, 429], got


async def test_slow_state_server_delays_requests_by_at_most_timeout(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer, redis_client: StateClient
) -> None:
    keys = [{"key": GW_KEY, "name": "busy", "rate_limit_rpm": 600000, "rate_limit_burst": 100000}]
    cfg = shared_config(mock_upstream, redis_server, keys=keys, timeout_ms=100, extra={"cache": {"enabled": True}})
    gw = await start_gateway(cfg)
    await state_up(gw)
    # the server stops answering for 3 s (it still accepts: the worst case)
    sleeper = asyncio.create_task(redis_client.call("DEBUG", "SLEEP", "3", timeout_ms=10_000))
    await asyncio.sleep(0.05)  # let the SLEEP reach the server before the requests (not a sync point)
    worst = 0.0
    for i in range(8):
        t0 = time.monotonic()
        r = await call(gw.port, chat_body(user=f"u{i}"))
        took = time.monotonic() - t0
        assert r.status == 200, r.body
        worst = max(worst, took)
    _, m = await scrape(gw.port)
    assert (m.get("rawgw_state_errors_total") or 0) >= 1  # the stalled calls were given up on
    await sleeper
    # a rate-limit EVALSHA and a cache GET, each bounded by timeout_ms (100 ms)
    assert worst < 0.2 + 0.8, f"a request waited {worst:.3f} s on a stalled state server"  # a hang: 3 s


async def test_server_that_accepts_and_never_answers(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    conns: list[asyncio.StreamWriter] = []

    async def mute(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)

    mute_server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = mute_server.sockets[0].getsockname()[1]
    keys = [{"key": GW_KEY, "name": "busy", "rate_limit_rpm": 6000, "rate_limit_burst": 100}]
    try:
        gw = await start_gateway(shared_config(mock_upstream, f"redis://127.0.0.1:{port}/0", keys=keys))
        await wait_until(lambda: conns, what="the gateway connected")
        for _ in range(5):
            t0 = time.monotonic()
            r = await call(gw.port, chat_body())
            assert r.status == 200 and time.monotonic() - t0 < 0.05 + 0.95
        _, m = await scrape(gw.port)
        assert m.get("rawgw_state_up") == 0
    finally:
        mute_server.close()
        for w in conns:
            w.close()


# --------------------------------------------------------------------------- gateway keys


async def test_a_revoked_gateway_key_is_refused_on_every_instance_at_once(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer, redis_client: StateClient
) -> None:
    """What an admin revoke on one instance publishes (RedisState.revoke): every
    instance refuses the key on its next request, no reload, no round trip per request."""
    from rawgw.state.backend import key_digest
    from rawgw.state.shared import SharedState

    other = "gw-other-key-999999"
    keys = [{"key": GW_KEY, "name": "tester"}, {"key": other, "name": "other"}]
    cfg = shared_config(mock_upstream, redis_server, keys=keys)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up(a)
    await state_up(b)
    assert (await call(b.port, chat_body(), key=other)).status == 200
    await SharedState(redis_client).publish_key_event(key_digest(other), -1, "revoked")

    async def refused(gw: Gateway) -> bool:
        r = await call(gw.port, chat_body(), key=other)
        assert r.status in (200, 401), r.body
        return r.status == 401

    for gw in (a, b):
        await wait_until(lambda gw=gw: refused(gw), what="revoked key refused")
    r = await call(a.port, chat_body(), key=other)
    assert r.json()["error"]["message"] == "gateway key revoked" and other not in r.body.decode()
    assert (await call(a.port, chat_body())).status == 200  # the other key is not affected
    c = await start_gateway(cfg)  # a later instance loads it from the server
    await state_up(c)
    await wait_until(lambda: refused(c), what="revoked key refused on a new instance")
    stored = await redis_client.call("HGETALL", "{rawgw:keys}")
    assert other.encode() not in b"".join(stored)  # a digest is stored, never the key


async def test_revoke_through_the_backend_reaches_the_other_backend(redis_server: RedisServer) -> None:
    from rawgw.config import StateConfig
    from rawgw.state.backend import RedisState, key_digest

    a, b = RedisState(StateConfig(url=redis_server.url)), RedisState(StateConfig(url=redis_server.url))
    a.start()
    b.start()
    try:
        # b learns it by pub/sub, or from the stored states when it (re)subscribes later
        await wait_until(lambda: a.client.up and b.client.subscriber_up, what="both connected")
        a.revoke("gw-secret-value-1234")
        await wait_until(lambda: key_digest("gw-secret-value-1234") in b.revoked, what="revocation on b")
    finally:
        await a.close()
        await b.close()


async def test_admin_revoke_on_a_is_refused_by_b_at_once(start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer) -> None:
    """DELETE /admin/keys/NAME on instance A: B (same config file contents, no reload)
    refuses the key on its next request (LiteLLM #1775 is the failure avoided)."""
    admin = "gw-admin-key-9f8e7d6c5b4a39281706"
    alice = "gw-alice-key-1a2b3c4d5e6f7a8b9c0d"
    keys = [{"key": admin, "name": "root", "admin": True}, {"key": alice, "name": "alice"}]
    cfg = shared_config(mock_upstream, redis_server, keys=keys)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up_key(a, admin)
    await state_up_key(b, admin)
    assert (await call(b.port, chat_body(), key=alice)).status == 200
    r = await call(a.port, b"", path="/admin/keys/alice", method="DELETE", key=admin)
    assert r.status == 200, r.body

    async def refused_on_b() -> bool:
        resp = await call(b.port, chat_body(), key=alice)
        return resp.status == 401

    await wait_until(refused_on_b, timeout=2, what="alice refused on B")
    assert (await call(b.port, chat_body(), key=admin)).status == 200


async def test_admin_cache_clear_on_a_clears_every_instance(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer, redis_client: StateClient
) -> None:
    """POST /admin/cache/clear on A: the shared entries go and B drops its local copy
    too, so the next request on B goes upstream (MISS) instead of a stale HIT."""
    admin = "gw-admin-key-9f8e7d6c5b4a39281706"
    keys = [{"key": admin, "name": "root", "admin": True}]
    cfg = shared_config(mock_upstream, redis_server, keys=keys, extra={"cache": {"enabled": True, "ttl_s": 60}})
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up_key(a, admin)
    await state_up_key(b, admin)
    assert (await call(b.port, chat_body(), key=admin)).header("x-cache") == "MISS"
    assert (await call(b.port, chat_body(), key=admin)).header("x-cache") == "HIT"  # B's local copy
    r = await call(a.port, b"", path="/admin/cache/clear", method="POST", key=admin)
    assert r.status == 200 and r.json()["cleared"] >= 1, r.body
    assert not await redis_client.call("KEYS", "{rawgw:cache}:*")

    async def miss_on_b() -> bool:
        return (await call(b.port, chat_body(), key=admin)).header("x-cache") == "MISS"

    await wait_until(miss_on_b, timeout=2, what="B's cached answer dropped")
    assert len(mock_upstream.requests) == 2


async def test_admin_route_on_a_reaches_b_and_a_later_instance(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    """Issue 14.2: with [state], an admin change on A reaches every instance: B (running,
    its own config dir) serves the new alias on its next requests and keeps it in its own
    gateway.d/admin.toml; C, started afterwards, picks it up when it joins."""
    admin = "gw-admin-key-9f8e7d6c5b4a39281706"
    keys = [{"key": admin, "name": "root", "admin": True}]
    cfg = shared_config(mock_upstream, redis_server, keys=keys)
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up_key(a, admin)
    await state_up_key(b, admin)
    alias = chat_body(model="team-fast")
    r = await call(a.port, b'{"match":"team-fast","model":"real-model"}', path="/admin/routes", method="POST", key=admin)
    assert r.status == 201, r.body

    async def served_on(gw: Gateway) -> bool:
        # without the route the mock answers too, but gets the model as the client sent it
        r = await call(gw.port, alias, key=admin)
        return r.status == 200 and mock_upstream.requests[-1].json()["model"] == "real-model"

    await wait_until(lambda: served_on(b), timeout=3, what="the admin route on B")
    assert "team-fast" in (b.config_path.parent / "gateway.d" / "admin.toml").read_text()
    c = await start_gateway(cfg)
    await state_up_key(c, admin)
    await wait_until(lambda: served_on(c), timeout=3, what="the admin route on C, started later")


async def test_key_disabled_by_401_on_a_is_disabled_on_b_and_a_reload_brings_it_back_everywhere(
    start_gateway: StartGateway, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    """A 401 for provider key 0 on A disables it on B too (B never sends it); SIGHUP on A
    (SPEC 7: a reload brings disabled keys back) re-enables it on B as well."""
    import signal

    bad = {"on": True}

    def handler(req: RecordedRequest) -> Json:
        if bad["on"] and req.header("authorization") == f"Bearer {UPSTREAM_KEY}".encode():
            return Json(status=401, body={"error": {"message": "invalid key"}})
        return Json(body=completion())

    mock_upstream.handler = handler
    cfg = shared_config(mock_upstream, redis_server, provider={"keys": [UPSTREAM_KEY, SECOND_KEY], "key_strategy": "first"})
    a, b = await start_gateway(cfg), await start_gateway(cfg)
    await state_up(a)
    await state_up(b)
    r = await call(a.port, chat_body())
    assert r.status == 200 and r.header("x-rawgw-attempts") == "2", (r.status, r.body)

    async def state_on(gw: Gateway, want: str) -> bool:
        return (await providers(gw))["mock"]["keys"][0]["state"] == want

    await wait_until(lambda: state_on(b, "disabled"), what="key 0 disabled on B")
    n = len(mock_upstream.requests)
    assert (await call(b.port, chat_body())).header("x-rawgw-attempts") == "1"
    assert mock_upstream.requests[n].header("authorization") == f"Bearer {SECOND_KEY}".encode()

    bad["on"] = False  # the user fixed the key upstream, then reloads A
    a.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: state_on(a, "active"), what="key 0 back on A after SIGHUP")
    await wait_until(lambda: state_on(b, "active"), what="key 0 back on B (told by A)")
    n = len(mock_upstream.requests)
    assert (await call(b.port, chat_body())).status == 200
    assert mock_upstream.requests[n].header("authorization") == f"Bearer {UPSTREAM_KEY}".encode()
