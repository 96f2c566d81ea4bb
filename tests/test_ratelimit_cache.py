"""Rate limits per gateway key and the response cache (issue 4.5/4.6, README
"Rate limits, cache, CORS, workers")."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from conftest import GW_KEY, StartGateway, assert_gateway_error, assert_wire_invariants, base_config
from mock_upstream import Json, MockUpstream, Sse
from ops_helpers import call, chat_body, completion, recorded, sse_chat

LIMITED = "gw-limited-key-555555"
OTHER = "gw-other-key-666666"

KEYS: list[dict[str, Any]] = [
    {"key": LIMITED, "name": "limited", "rate_limit_rpm": 60, "rate_limit_burst": 2},
    {"key": OTHER, "name": "other"},
]


def limit_headers(r) -> tuple[str | None, str | None]:  # type: ignore[no-untyped-def]
    return r.header("x-ratelimit-limit-requests"), r.header("x-ratelimit-remaining-requests")


# --------------------------------------------------------------------------- rate limits


async def test_burst_then_429_without_contacting_upstream(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, keys=KEYS))
    r1 = await call(gw.port, chat_body(), key=LIMITED)
    r2 = await call(gw.port, chat_body(), key=LIMITED)
    r3 = await call(gw.port, chat_body(), key=LIMITED)
    assert (r1.status, r2.status) == (200, 200)
    assert limit_headers(r1) == ("60", "1")
    assert limit_headers(r2) == ("60", "0")
    err = assert_gateway_error(r3, 429)
    assert "limited" in err["message"] and LIMITED not in r3.body.decode()
    assert_wire_invariants(r3)
    ra = r3.header("retry-after")
    assert ra is not None and re.fullmatch(r"[0-9]+", ra) and int(ra) >= 1, ra
    assert int(ra) <= 2, ra  # 60 rpm: one request a second
    assert limit_headers(r3) == ("60", "0")
    await recorded(gw, r3)
    assert len(mock_upstream.requests) == 2
    # another key is not affected
    r4 = await call(gw.port, chat_body(), key=OTHER)
    assert r4.status == 200
    assert len(mock_upstream.requests) == 3


async def test_bucket_refills_at_the_configured_rate(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    keys = [{"key": LIMITED, "name": "limited", "rate_limit_rpm": 120, "rate_limit_burst": 1}]
    gw = await start_gateway(base_config(mock_upstream, keys=keys))
    assert (await call(gw.port, chat_body(), key=LIMITED)).status == 200
    r = await call(gw.port, chat_body(), key=LIMITED)
    assert r.status == 429 and r.header("retry-after") == "1"
    await asyncio.sleep(0.55)  # 120 rpm: a token every 0.5 s
    r = await call(gw.port, chat_body(), key=LIMITED)
    assert r.status == 200, r.body
    assert limit_headers(r) == ("120", "0")
    assert (await call(gw.port, chat_body(), key=LIMITED)).status == 429


async def test_limit_headers_on_every_response_of_a_limited_key(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """README: every response of a limited key carries the x-ratelimit-* headers —
    local endpoints and the gateway's own errors included."""
    keys = [{"key": LIMITED, "name": "limited", "rate_limit_rpm": 600, "rate_limit_burst": 50}]
    gw = await start_gateway(base_config(mock_upstream, keys=keys))
    cases = [
        ("POST", "/v1/chat/completions", chat_body(), 200),
        ("GET", "/health/providers", b"", 200),
        ("POST", "/v1/chat/completions", b"{nope", 400),
        ("GET", "/no/such/path", b"", 404),
        ("GET", "/v1/chat/completions", b"", 405),
    ]
    got = []
    for method, path, body, _ in cases:
        r = await call(gw.port, body, path=path, method=method, key=LIMITED)
        got.append((method, path, r.status, r.header("x-ratelimit-limit-requests"), r.header("x-ratelimit-remaining-requests") is not None))
    assert got == [(m, p, s, "600", True) for m, p, _, s in cases]


async def test_gateway_local_reads_do_not_spend_the_budget(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """Issue 10.3: monitoring (the dashboard polls /metrics.json every 2 s) must not eat a
    key's proxied-request budget; the reads still show the budget left."""
    keys = [{"key": LIMITED, "name": "limited", "rate_limit_rpm": 1, "rate_limit_burst": 3}]
    gw = await start_gateway(base_config(mock_upstream, keys=keys))
    paths = ["/metrics.json"] * 4 + ["/metrics", "/health/providers", "/v1/models", "/api/v1/models", "/dashboard", "/"]
    got = []
    for path in paths:
        r = await call(gw.port, b"", path=path, method="GET", key=LIMITED)
        got.append((path, r.status, limit_headers(r)))
    assert got == [(p, 200, ("1", "3")) for p in paths]
    assert (await call(gw.port, b"", path="/metrics.json", method="GET", key=None)).status == 401  # still needs the key
    statuses = [(await call(gw.port, chat_body(), key=LIMITED)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    r = await call(gw.port, b"", path="/metrics.json", method="GET", key=LIMITED)
    assert (r.status, limit_headers(r)) == (200, ("1", "0"))  # an empty bucket does not block the reads


async def test_gateway_limit_headers_not_doubled_by_upstream_ones(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """OpenAI-style upstreams send their own x-ratelimit-*-requests headers: the client of
    a limited gateway key must get one value of each (the gateway's), not two."""
    keys = [{"key": LIMITED, "name": "limited", "rate_limit_rpm": 60, "rate_limit_burst": 5}]
    gw = await start_gateway(base_config(mock_upstream, keys=keys))
    mock_upstream.enqueue(
        Json(body=completion(), headers=[("x-ratelimit-limit-requests", "10000"), ("x-ratelimit-remaining-requests", "9999")])
    )
    r = await call(gw.port, chat_body(), key=LIMITED)
    assert r.status == 200
    assert r.values("x-ratelimit-limit-requests") == ["60"], r.raw_head
    assert r.values("x-ratelimit-remaining-requests") == ["4"], r.raw_head


async def test_cache_hit_of_a_limited_key_has_one_set_of_limit_headers(
    start_gateway: StartGateway, mock_upstream: MockUpstream
) -> None:
    """A cached answer replays the provider's headers: its x-ratelimit-* must not come back
    next to the gateway's own."""
    keys = [{"key": LIMITED, "name": "limited", "rate_limit_rpm": 60, "rate_limit_burst": 5}]
    gw = await start_gateway(base_config(mock_upstream, keys=keys, extra={"cache": {"enabled": True}}))
    mock_upstream.enqueue(
        Json(body=completion(), headers=[("x-ratelimit-limit-requests", "10000"), ("x-ratelimit-remaining-requests", "9999")])
    )
    await call(gw.port, chat_body(temperature=0), key=LIMITED)
    r = await call(gw.port, chat_body(temperature=0), key=LIMITED)
    assert (r.status, r.header("x-cache")) == (200, "HIT")
    assert r.values("x-ratelimit-limit-requests") == ["60"], r.raw_head
    assert r.values("x-ratelimit-remaining-requests") == ["3"], r.raw_head
    assert len(mock_upstream.requests) == 1


# --------------------------------------------------------------------------- cache

CACHE_ON = {"cache": {"enabled": True}}


async def test_identical_request_answered_from_cache(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra=CACHE_ON))
    answer = json.dumps(completion("cached answer", prompt=3, completion_tokens=2)).encode()
    mock_upstream.enqueue(Json(body=answer, headers=[("X-Upstream-Thing", "u1")]))
    r1 = await call(gw.port, chat_body(temperature=0))
    r2 = await call(gw.port, chat_body(temperature=0))
    assert (r1.status, r1.header("x-cache")) == (200, "MISS")
    assert (r2.status, r2.header("x-cache")) == (200, "HIT")
    assert r1.body == r2.body == answer
    assert r2.header("content-type") == "application/json" and r2.header("x-upstream-thing") == "u1"
    assert r2.header("content-length") == str(len(answer))
    assert r1.header("x-request-id") != r2.header("x-request-id")
    assert_wire_invariants(r2)
    assert (await recorded(gw, r2))["cache"] == "HIT"
    assert len(mock_upstream.requests) == 1


async def test_cache_key_is_canonical(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """Same request with other key order and spacing → HIT; two aliases mapped to the
    same upstream model share the entry (the key is the model after mapping)."""
    gw = await start_gateway(
        base_config(
            mock_upstream,
            extra={**CACHE_ON, "routes": [{"match": "alias-a", "model": "up"}, {"match": "alias-b", "model": "up"}]},
        )
    )
    a = b'{"model":"alias-a","messages":[{"role":"user","content":"q"}],"temperature":0}'
    b = b'{ "temperature" : 0 ,\n "messages":[{"content":"q","role":"user"}], "model":"alias-b"}'
    r1 = await call(gw.port, a)
    r2 = await call(gw.port, b)
    assert (r1.header("x-cache"), r2.header("x-cache")) == ("MISS", "HIT")
    assert r1.body == r2.body
    assert len(mock_upstream.requests) == 1


async def test_different_body_or_key_is_a_miss(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    keys = [{"key": GW_KEY, "name": "tester"}, {"key": OTHER, "name": "other"}]
    gw = await start_gateway(base_config(mock_upstream, keys=keys, extra=CACHE_ON))
    mock_upstream.handler = lambda req: Json(body=completion(f"answer {len(mock_upstream.requests)}"))
    r1 = await call(gw.port, chat_body(temperature=0))
    r2 = await call(gw.port, chat_body(temperature=0.5))
    r3 = await call(gw.port, chat_body(temperature=0), key=OTHER)
    r4 = await call(gw.port, chat_body(temperature=0), key=OTHER)
    assert [r.header("x-cache") for r in (r1, r2, r3, r4)] == ["MISS", "MISS", "MISS", "HIT"]
    assert len({r1.body, r2.body, r3.body}) == 3 and r4.body == r3.body
    assert len(mock_upstream.requests) == 3


async def test_streams_are_never_cached(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra=CACHE_ON))
    pieces = sse_chat(["x", "y"])
    mock_upstream.handler = lambda req: Sse(pieces=pieces)
    rs = [await call(gw.port, chat_body(stream=True)) for _ in range(2)]
    assert [r.status for r in rs] == [200, 200]
    assert all(r.body == b"".join(pieces) for r in rs)
    assert all(r.header("x-cache") != "HIT" for r in rs), [r.header("x-cache") for r in rs]
    assert len(mock_upstream.requests) == 2


async def test_no_cache_request_header_bypasses(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra=CACHE_ON))
    mock_upstream.handler = lambda req: Json(body=completion(f"answer {len(mock_upstream.requests)}"))
    r1 = await call(gw.port, chat_body())
    r2 = await call(gw.port, chat_body(), headers=[("Cache-Control", "no-cache")])
    assert r1.header("x-cache") == "MISS" and r2.header("x-cache") != "HIT"
    assert r2.body != r1.body
    assert len(mock_upstream.requests) == 2


async def test_error_answers_are_not_cached(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """Failover exhausted → the last upstream answer (a 500) goes to the client, and is
    not stored: the same request next time reaches the upstream again."""
    gw = await start_gateway(
        base_config(mock_upstream, provider={"keys": ["sk-upstream-key-aaaa1111", "sk-upstream-key-bbbb2222"]}, extra=CACHE_ON)
    )
    mock_upstream.enqueue(Json(status=500, body=b'{"error":"first"}'), Json(status=500, body=b'{"error":"second"}'))
    r1 = await call(gw.port, chat_body())
    assert (r1.status, r1.body, r1.header("x-rawgw-attempts")) == (500, b'{"error":"second"}', "2")
    assert r1.header("x-cache") != "HIT"
    answer = json.dumps(completion("fresh")).encode()
    mock_upstream.enqueue(Json(body=answer))
    r2 = await call(gw.port, chat_body())
    assert (r2.status, r2.body, r2.header("x-cache")) == (200, answer, "MISS")
    r3 = await call(gw.port, chat_body())
    assert (r3.status, r3.body, r3.header("x-cache")) == (200, answer, "HIT")
    assert len(mock_upstream.requests) == 3


async def test_single_attempt_4xx_is_not_cached(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra=CACHE_ON))
    mock_upstream.enqueue(Json(status=400, body=b'{"error":"bad"}'))
    r1 = await call(gw.port, chat_body())
    r2 = await call(gw.port, chat_body())
    assert (r1.status, r2.status) == (400, 200)
    assert r2.header("x-cache") == "MISS"
    assert len(mock_upstream.requests) == 2


async def test_ttl_expiry(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra={"cache": {"enabled": True, "ttl_s": 1}}))
    r1 = await call(gw.port, chat_body())
    r2 = await call(gw.port, chat_body())
    assert (r1.header("x-cache"), r2.header("x-cache")) == ("MISS", "HIT")
    await asyncio.sleep(1.1)
    r3 = await call(gw.port, chat_body())
    assert r3.header("x-cache") == "MISS"
    assert len(mock_upstream.requests) == 2


async def test_lru_max_entries(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra={"cache": {"enabled": True, "max_entries": 2}}))
    a, b, c = (chat_body(n=1, seed=i) for i in range(3))
    seq = [a, b, a, c, a, b]  # a refreshed before c arrives: b is the one evicted
    got = [(await call(gw.port, body)).header("x-cache") for body in seq]
    assert got == ["MISS", "MISS", "HIT", "MISS", "HIT", "MISS"]
    assert len(mock_upstream.requests) == 4


async def test_cache_off_by_default(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    rs = [await call(gw.port, chat_body()) for _ in range(2)]
    assert [r.header("x-cache") for r in rs] == [None, None]
    assert len(mock_upstream.requests) == 2


async def test_tpm_in_process_reserves_up_front_and_refunds_from_usage(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """rate_limit_tpm without a state server: max_tokens + the prompt estimate reserved
    before the request goes upstream, the unused part refunded from the usage."""
    mock_upstream.default = Json(body=completion(prompt=5, completion_tokens=5))
    keys = [{"key": LIMITED, "name": "tokens", "rate_limit_tpm": 1000}]
    gw = await start_gateway(base_config(mock_upstream, keys=keys))
    r1 = await call(gw.port, chat_body(max_tokens=600), key=LIMITED)
    assert r1.status == 200, r1.body
    assert r1.header("x-ratelimit-limit-tokens") == "1000"
    assert 300 <= int(r1.header("x-ratelimit-remaining-tokens") or 0) < 400
    assert r1.header("x-ratelimit-limit-requests") is None  # no RPM limit on this key
    # without the refund (600+ reserved, 10 used) this one would not fit
    r2 = await call(gw.port, chat_body(max_tokens=600), key=LIMITED)
    assert r2.status == 200, r2.body
    # an answer without usage keeps its whole reservation spent
    mock_upstream.enqueue(Json(body={"ok": True}))
    assert (await call(gw.port, chat_body(max_tokens=900), key=LIMITED)).status == 200
    r3 = await call(gw.port, chat_body(max_tokens=500), key=LIMITED)
    err = assert_gateway_error(r3, 429)
    assert "1000 tokens" in err["message"] and r3.header("retry-after") is not None
    assert r3.header("x-ratelimit-remaining-tokens") is not None
    r4 = await call(gw.port, chat_body(max_tokens=5000), key=LIMITED)
    assert assert_gateway_error(r4, 429)["code"] == "tokens_exceed_limit"
    assert len(mock_upstream.requests) == 3
