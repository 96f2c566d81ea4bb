"""rawgw.state.limiter against a real redis-server: same decisions as the in-process
limiter, exact across clients, TPM reservation + refund, NOSCRIPT, TTL."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from redis_helpers import RedisServer, redis_server

from rawgw.config import GatewayKey
from rawgw.routing.ratelimit import RateLimiter
from rawgw.state.client import StateClient
from rawgw.state.limiter import Decision, SharedLimiter
from rawgw.state.url import parse_state_url

__all__ = ["redis_server"]


async def connected(url: str) -> StateClient:
    c = StateClient(parse_state_url(url), timeout_ms=2000)
    c.start()
    assert await c.wait_up(5.0)
    return c


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[StateClient]:
    c = await connected(redis_server.url)
    yield c
    await c.close()


@pytest.mark.parametrize(("rpm", "burst"), [(60, 1), (10, 10), (600, 5), (7, 3)])
async def test_same_decisions_as_the_in_process_limiter(client: StateClient, rpm: int, burst: int) -> None:
    rng = random.Random(rpm * 1000 + burst)
    local = RateLimiter(workers=1)
    key = GatewayKey(key="sk-secret-never-stored", name="alice", rate_limit_rpm=rpm, rate_limit_burst=burst)
    shared = SharedLimiter(client, prefix=f"t{rpm}-{burst}:")
    t_ms = 1_000_000.0
    allowed = denied = 0
    for _ in range(150):
        t_ms += rng.expovariate(1.0) * 60_000 / rpm * rng.choice([0.1, 0.5, 1.0, 3.0])
        wait, headers = local.check(key, now=t_ms / 1000.0)
        d = await shared.reserve("alice", rpm=rpm, rpm_burst=burst, _now_ms=t_ms)
        assert d.allowed == (wait == 0.0), (t_ms, wait, d)
        assert str(d.remaining_requests).encode() == dict(headers)[b"x-ratelimit-remaining-requests"]
        if not d.allowed:
            assert d.reason == "rpm" and d.retry_after_s is not None
            assert abs(d.retry_after_s - wait) <= 0.0011
        allowed += d.allowed
        denied += not d.allowed
    assert allowed and denied  # the sequence exercised both outcomes


async def test_two_clients_sharing_a_key_allow_exactly_10_of_30(redis_server: RedisServer) -> None:
    a, b = await connected(redis_server.url), await connected(redis_server.url)
    try:
        la, lb = SharedLimiter(a), SharedLimiter(b)
        calls = [(la if i % 2 else lb).reserve("team", rpm=10, rpm_burst=10) for i in range(30)]
        decisions = await asyncio.gather(*calls)
        assert sum(d.allowed for d in decisions) == 10
        denied = [d for d in decisions if not d.allowed]
        assert all(d.reason == "rpm" and d.remaining_requests == 0 for d in denied)
        assert all(d.retry_after_s is not None and 0 < d.retry_after_s <= 6.0 for d in denied)
        assert sorted({d.remaining_requests for d in decisions if d.allowed}) == list(range(10))
    finally:
        await a.close()
        await b.close()


async def test_tpm_reservation_is_all_or_nothing_and_refund_gives_back(client: StateClient) -> None:
    lim = SharedLimiter(client)
    t = 5_000_000.0
    d = await lim.reserve("k", rpm=60, rpm_burst=5, tpm=1000, tokens=600, _now_ms=t)
    assert (d.allowed, d.remaining_requests, d.remaining_tokens) == (True, 4, 400)
    # 600 more tokens do not fit: denied on TPM, and the request token is NOT taken
    d = await lim.reserve("k", rpm=60, rpm_burst=5, tpm=1000, tokens=600, _now_ms=t)
    assert (d.allowed, d.reason, d.remaining_requests, d.remaining_tokens) == (False, "tpm", 4, 400)
    assert d.retry_after_s == pytest.approx(200 / (1000 / 60), abs=0.002)  # 200 tokens at 1000/min
    assert d.reset_tokens_s == pytest.approx(600 / (1000 / 60), abs=0.002)
    # the response used 100 of its 600: 500 come back
    await lim.refund("k", 500, tpm=1000)
    d = await lim.reserve("k", rpm=60, rpm_burst=5, tpm=1000, tokens=600, _now_ms=t)
    assert (d.allowed, d.remaining_requests, d.remaining_tokens) == (True, 3, 300)
    # a refund never lifts the bucket above its capacity
    await lim.refund("k", 10_000, tpm=1000)
    d = await lim.reserve("k", rpm=60, rpm_burst=5, tpm=1000, tokens=0, _now_ms=t)
    assert d.remaining_tokens == 1000
    # more than the bucket can ever hold: no wait helps
    d = await lim.reserve("k", rpm=60, rpm_burst=5, tpm=1000, tokens=1001, _now_ms=t)
    assert (d.allowed, d.reason, d.retry_after_s) == (False, "too_large", None)
    # RPM empty and TPM short together: neither is taken, the longer wait is reported
    lim2 = SharedLimiter(client, prefix="both:")
    assert (await lim2.reserve("k", rpm=1, tpm=600, tokens=500, _now_ms=t)).allowed
    d = await lim2.reserve("k", rpm=1, tpm=600, tokens=500, _now_ms=t)
    assert (d.allowed, d.reason, d.remaining_tokens) == (False, "rpm", 100)
    assert d.retry_after_s == pytest.approx(60.0, abs=0.002)


async def test_noscript_falls_back_to_eval_and_keys_expire(client: StateClient) -> None:
    lim = SharedLimiter(client, prefix="gw1:")
    assert (await lim.reserve("bob", rpm=60, rpm_burst=2)).allowed
    await client.call("SCRIPT", "FLUSH")  # as after a restart: the SHA is unknown
    assert (await lim.reserve("bob", rpm=60, rpm_burst=2)).allowed
    d = await lim.reserve("bob", rpm=60, rpm_burst=2)
    assert not d.allowed and d.retry_after_s is not None and 0 < d.retry_after_s <= 1.0
    key = lim.key("bob")
    assert key == "{gw1:rl:v1:bob}"  # hash tag, version, name; never the key's secret
    # PEXPIRE = time to full again (2 tokens at 1/s) + 1 s slack; then it vanishes
    pttl = await client.call("PTTL", key)
    assert 2000 < pttl <= 3000
    assert await client.call("HGETALL", key)
    fast = SharedLimiter(client, prefix="fast:")
    await fast.reserve("x", rpm=600_000, rpm_burst=1)  # full again after 0.1 ms
    assert 0 < await client.call("PTTL", fast.key("x")) <= 1001


def test_decision_headers() -> None:
    d = Decision(True, "", 60, 59, 1.0, 1000, 400, 36.0, 0.0)
    assert d.headers() == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-limit-tokens", b"1000"),
        (b"x-ratelimit-remaining-tokens", b"400"),
    ]
    denied = Decision(False, "rpm", 10, 0, 6.0, 0, 0, 0.0, 5.2)
    assert denied.headers() == [
        (b"x-ratelimit-limit-requests", b"10"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"retry-after", b"6"),
    ]
