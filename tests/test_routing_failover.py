"""Failover (SPEC 5.3, 8; issue 3): every retryable outcome moves on to the next key, then
the next provider, before any byte reached the client — streaming or not."""

from __future__ import annotations

import time

import pytest
from conftest import (
    GW_KEY,
    StartGateway,
    assert_gateway_error,
    assert_wire_invariants,
    raw_connection,
)
from mock_upstream import CloseWithoutResponse, Json, MockUpstream, Sse, Stall
from ops_helpers import recorded
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    ANT_KEY,
    KEY_A,
    KEY_B,
    KEY_C,
    MESSAGE,
    bearer_key,
    call,
    cfg,
    chat,
    dead_url,
    prov,
    routed_by,
    ups_fixture,
)

SSE_PIECES = [
    b'data: {"choices":[{"delta":{"content":"he"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"llo"}}]}\n\n',
    b"data: [DONE]\n\n",
]


def two(p1: MockUpstream | str, p2: MockUpstream, **p1_fields: object) -> dict[str, object]:
    """Route ``m*`` → [p1, p2]."""
    return cfg(
        {"p1": prov(p1, keys=[KEY_A], **p1_fields), "p2": prov(p2, keys=[KEY_B])},
        routes=[{"match": "m*", "providers": ["p1", "p2"]}],
    )


def answer(p2: MockUpstream, stream: bool) -> bytes:
    if stream:
        p2.enqueue(Sse(pieces=SSE_PIECES, delay=0.01))
        return b"".join(SSE_PIECES)
    p2.enqueue(Json(body=b'{"who":"p2"}'))
    return b'{"who":"p2"}'


def body(stream: bool) -> bytes:
    return chat("m1", stream=True) if stream else chat("m1")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 529])
async def test_retryable_status_fails_over_to_next_provider(
    start_gateway: StartGateway, ups: list[MockUpstream], status: int, stream: bool
) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2))
    p1.enqueue(Json(status=status, body=b'{"error":"p1 says %d"}' % status, headers=[("Retry-After", "1")]))
    expected = answer(p2, stream)
    r = await call(gw, body(stream))
    assert r.status == 200, r.body
    assert r.body == expected
    assert routed_by(r) == ("p2", "2")
    assert_wire_invariants(r)
    if stream:
        assert r.header("content-type") == "text/event-stream"
        assert r.header("x-accel-buffering") == "no"
        assert r.header("cache-control") == "no-cache"
    assert len(p1.requests) == 1 and len(p2.requests) == 1
    assert p1.requests[0].body == p2.requests[0].body == body(stream)
    assert bearer_key(p1.requests[0]) == KEY_A and bearer_key(p2.requests[0]) == KEY_B


@pytest.mark.parametrize("status", [429, 500, 503, 529])
async def test_retryable_status_fails_over_to_next_key_first(start_gateway: StartGateway, ups: list[MockUpstream], status: int) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"p1": prov(p1, keys=[KEY_A, KEY_B], key_strategy="first"), "p2": prov(p2, keys=[KEY_C])},
            routes=[{"match": "*", "providers": ["p1", "p2"]}],
        )
    )
    p1.enqueue(Json(status=status, body=b"{}", headers=[("Retry-After", "1")]))
    r = await call(gw, chat("m"))
    assert r.status == 200
    assert routed_by(r) == ("p1", "2")
    assert [bearer_key(q) for q in p1.requests] == [KEY_A, KEY_B]
    assert p2.requests == []


async def test_keys_then_providers_in_order(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, p3 = ups
    gw = await start_gateway(
        cfg(
            {
                "p1": prov(p1, keys=[KEY_A, KEY_B], key_strategy="first"),
                "p2": prov(p2, keys=[KEY_C]),
                "p3": prov(p3, keys=[KEY_A]),
            },
            routes=[{"match": "*", "providers": ["p1", "p2", "p3"]}],
        )
    )
    p1.enqueue(Json(status=502, body=b"a"), Json(status=500, body=b"b"))
    p2.enqueue(Json(status=503, body=b"c"))
    r = await call(gw, chat("m"), headers=[("X-Request-ID", "rid-failover-1")])
    assert r.status == 200
    assert r.json() == {"who": "up2"}
    assert routed_by(r) == ("p3", "4")
    assert r.header("x-request-id") == "rid-failover-1"
    for q in p1.requests + p2.requests + p3.requests:  # the same id on every attempt
        assert q.header_values("x-request-id") == [b"rid-failover-1"]
        assert q.body == chat("m")
    assert [bearer_key(q) for q in p1.requests] == [KEY_A, KEY_B]
    assert [bearer_key(q) for q in p2.requests] == [KEY_C]
    assert [bearer_key(q) for q in p3.requests] == [KEY_A]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_connect_refused_fails_over(start_gateway: StartGateway, ups: list[MockUpstream], stream: bool) -> None:
    _, p2, _ = ups
    gw = await start_gateway(two(dead_url(), p2))
    expected = answer(p2, stream)
    r = await call(gw, body(stream))
    assert r.status == 200, r.body
    assert r.body == expected
    assert routed_by(r) == ("p2", "2")  # the connect failure counts as an attempt


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_first_byte_timeout_fails_over(start_gateway: StartGateway, ups: list[MockUpstream], stream: bool) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2, first_byte_timeout_s=0.3))
    p1.enqueue(Stall(seconds=None))
    expected = answer(p2, stream)
    t0 = time.monotonic()
    r = await call(gw, body(stream))
    elapsed = time.monotonic() - t0
    assert r.status == 200, r.body
    assert r.body == expected
    assert routed_by(r) == ("p2", "2")
    assert 0.3 <= elapsed < 2.0, elapsed
    # the stalled attempt's connection was closed, not left waiting
    await p1.wait_peer_closed(p1.requests[0].conn, timeout=1.0)


async def test_close_without_response_fails_over(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2))
    p1.enqueue(CloseWithoutResponse())
    r = await call(gw, chat("m1"))
    assert r.status == 200
    assert r.json() == {"who": "up1"}
    assert routed_by(r) == ("p2", "2")


# --------------------------------------------------------------------------- exhausted


async def test_exhausted_gives_last_upstream_response_as_it_was(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2))
    p1.enqueue(Json(status=503, body=b'{"p":1}'))
    p2.enqueue(Json(status=502, body=b"upstream two broke\n", content_type="text/plain", headers=[("X-Upstream-Tag", "two")]))
    r = await call(gw, chat("m1"))
    assert r.status == 502
    assert r.body == b"upstream two broke\n"
    assert r.header("content-type") == "text/plain"
    assert r.header("x-upstream-tag") == "two"
    assert routed_by(r) == ("p2", "2")
    assert_wire_invariants(r)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_exhausted_by_connect_errors_is_502_json(start_gateway: StartGateway, ups: list[MockUpstream], stream: bool) -> None:
    gw = await start_gateway(
        cfg(
            {"p1": prov(dead_url()), "p2": prov(dead_url(), keys=[KEY_B])},
            routes=[{"match": "*", "providers": ["p1", "p2"]}],
        )
    )
    r = await call(gw, body(stream))
    assert_gateway_error(r, 502)
    assert r.header("x-rawgw-attempts") == "2"
    assert_wire_invariants(r)


async def test_exhausted_by_timeouts_is_504_json(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {
                "p1": prov(p1, first_byte_timeout_s=0.2),
                "p2": prov(p2, keys=[KEY_B], first_byte_timeout_s=0.2),
            },
            routes=[{"match": "*", "providers": ["p1", "p2"]}],
        )
    )
    p1.enqueue(Stall(seconds=None))
    p2.enqueue(Stall(seconds=None))
    t0 = time.monotonic()
    r = await call(gw, chat("m"))
    assert_gateway_error(r, 504)
    assert r.header("x-rawgw-attempts") == "2"
    assert 0.4 <= time.monotonic() - t0 < 2.0
    assert len(p1.requests) == 1 and len(p2.requests) == 1


@pytest.mark.parametrize("then", ["connect-refused", "first-byte-timeout"])
async def test_exhausted_after_an_answer_then_no_answer_gives_that_answer(
    start_gateway: StartGateway, ups: list[MockUpstream], then: str
) -> None:
    """SPEC 5.3 "All exhausted: the last upstream response, or 502/504": p1 answered 503,
    p2 gave no answer — the last upstream response is p1's 503, as it was."""
    p1, p2, _ = ups
    second = prov(dead_url(), keys=[KEY_B]) if then == "connect-refused" else prov(p2, keys=[KEY_B], first_byte_timeout_s=0.2)
    gw = await start_gateway(cfg({"p1": prov(p1), "p2": second}, routes=[{"match": "*", "providers": ["p1", "p2"]}]))
    p1.enqueue(Json(status=503, body=b'{"error":"p1 overloaded"}', headers=[("X-From", "p1")]))
    p2.enqueue(Stall(seconds=None))
    r = await call(gw, chat("m"))
    assert r.status == 503, (r.status, r.body)
    assert r.body == b'{"error":"p1 overloaded"}'
    assert r.header("x-from") == "p1"
    assert r.header("x-rawgw-provider") == "p1"
    assert r.header("x-rawgw-attempts") == "2"
    assert_wire_invariants(r)


# --------------------------------------------------------------------------- not retried


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_client_error_from_upstream_is_not_retried(start_gateway: StartGateway, ups: list[MockUpstream], status: int) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2))
    p1.enqueue(Json(status=status, body=b'{"error":{"message":"bad request from p1"}}', headers=[("X-P1", "yes")]))
    r = await call(gw, chat("m1"))
    assert r.status == status
    assert r.body == b'{"error":{"message":"bad request from p1"}}'
    assert r.header("x-p1") == "yes"
    assert routed_by(r) == ("p1", "1")
    await recorded(gw, r)
    assert p2.requests == []
    assert len(p1.requests) == 1


async def test_success_after_failover_has_no_leftover_from_failed_attempt(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2))
    p1.enqueue(Json(status=500, body=b"p1-error-body", headers=[("X-From-P1", "1")]))
    r = await call(gw, chat("m1"))
    assert r.status == 200
    assert b"p1-error-body" not in r.raw_head + r.body
    assert r.header("x-from-p1") is None
    assert r.json() == {"who": "up1"}
    assert r.header("content-length") == str(len(r.body))


# --------------------------------------------------------------------------- more


async def test_first_byte_timeout_defaults_to_read_timeout(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2, read_timeout_s=0.3))
    p1.enqueue(Stall(seconds=None))
    t0 = time.monotonic()
    r = await call(gw, chat("m1"))
    assert r.status == 200
    assert routed_by(r) == ("p2", "2")
    assert 0.3 <= time.monotonic() - t0 < 2.0


async def test_client_timeout_header_bounds_the_whole_chain(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2))  # first_byte_timeout_s: the default 300 s
    p1.enqueue(Stall(seconds=None))
    t0 = time.monotonic()
    r = await call(gw, chat("m1"), headers=[("X-Rawgw-Timeout", "0.5")])
    elapsed = time.monotonic() - t0
    assert_gateway_error(r, 504)
    assert 0.5 <= elapsed < 1.5, elapsed
    await recorded(gw, r)
    assert p2.requests == []  # no time left for another attempt
    assert p1.requests[0].header("x-rawgw-timeout") is None


async def test_chunked_client_body_is_resent_identically_on_failover(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two(p1, p2))
    p1.enqueue(Json(status=503, body=b"{}"))
    sent = b'{"model":"m1",  "messages":[{"role":"user","content":"chunked \\u00e9"}], "z":1.50}'
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {GW_KEY}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    a, b = sent[:20], sent[20:]
    data = head + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(a), a, len(b), b)
    async with await raw_connection(gw.port) as c:
        r = await c.request(data)
    assert r.status == 200, r.body
    assert routed_by(r) == ("p2", "2")
    assert p1.requests[0].body == sent
    assert p2.requests[0].body == sent


async def test_passthrough_post_key_failover_resends_the_body(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B], key_strategy="first")}))
    p1.enqueue(Json(status=429, body=b"{}", headers=[("Retry-After", "5")]))
    sent = b'{"input":"read this aloud",  "voice":"alloy"}'
    r = await call(gw, sent, path="/v1/audio/speech")
    assert r.status == 200, r.body
    assert routed_by(r) == ("p1", "2")
    assert [bearer_key(q) for q in p1.requests] == [KEY_A, KEY_B]
    assert [q.body for q in p1.requests] == [sent, sent]
    assert [q.target for q in p1.requests] == [b"/v1/audio/speech"] * 2


async def test_messages_fail_over_between_anthropic_providers(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    a1, a2, oa = ups
    gw = await start_gateway(
        cfg(
            {
                "oa": prov(oa, priority=1),
                "a1": prov(a1, type="anthropic", keys=[ANT_KEY], priority=2),
                "a2": prov(a2, type="anthropic", keys=[KEY_C], priority=3),
            }
        )
    )
    a1.enqueue(Json(status=529, body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    a2.enqueue(Json(body=MESSAGE))
    sent = b'{"model":"claude-sonnet-4","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
    r = await call(gw, sent, path="/v1/messages", auth="x-api-key", headers=[("anthropic-version", "2023-06-01")])
    assert r.status == 200, r.body
    assert r.json() == MESSAGE
    assert routed_by(r) == ("a2", "2")
    assert a1.requests[0].header_values("x-api-key") == [ANT_KEY.encode()]
    assert a2.requests[0].header_values("x-api-key") == [KEY_C.encode()]
    assert a1.requests[0].body == a2.requests[0].body == sent
    assert a2.requests[0].target == b"/v1/messages"
    await recorded(gw, r)
    assert oa.requests == []


async def test_provider_key_pair_tried_at_most_once_per_request(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """SPEC 5.3: a provider/key pair is tried at most once per request, even when a route
    names a provider twice."""
    p1, p2, _ = ups
    gw = await start_gateway(
        cfg(
            {"p1": prov(p1, keys=[KEY_A]), "p2": prov(p2, keys=[KEY_B])},
            routes=[{"match": "*", "providers": ["p1", "p2", "p1"]}],
        )
    )
    p1.default = Json(status=503, body=b"p1 busy")
    p2.enqueue(Json(status=503, body=b"p2 busy"))
    r = await call(gw, chat("m"))
    await recorded(gw, r)
    assert (len(p1.requests), len(p2.requests)) == (1, 1)
    assert routed_by(r) == ("p2", "2")
    assert r.status == 503
    assert r.body == b"p2 busy"
