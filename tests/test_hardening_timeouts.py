"""Deadlines (issue 7 §3; SPEC 3, 8): server.request_timeout_s bounds the whole failover
chain up to the response head, X-Rawgw-Timeout can only lower it and only for its own
request, and no deadline cuts a stream once its head went out (only silence does).
Covered elsewhere: first_byte/read timeouts alone (test_failures.py), X-Rawgw-Timeout
ending a chain early (test_routing_failover.py)."""

from __future__ import annotations

import time

import pytest
from conftest import StartGateway, assert_gateway_error, chat_request, raw_connection
from hardening_helpers import sse_pieces, stream_body
from mock_upstream import Json, MockUpstream, Sse, Stall
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    KEY_B,
    cfg,
    chat,
    prov,
    ups_fixture,
)


def two_stalling(ups: list[MockUpstream], **server: float) -> dict:  # type: ignore[type-arg]
    p1, p2, _ = ups
    return cfg(
        {
            "p1": prov(p1, first_byte_timeout_s=0.7),
            "p2": prov(p2, keys=[KEY_B], first_byte_timeout_s=0.7),
        },
        routes=[{"match": "*", "providers": ["p1", "p2"]}],
        server=server,
    )


async def test_request_timeout_bounds_the_whole_failover_chain(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two_stalling(ups, request_timeout_s=1))
    p1.default = Stall()
    p2.default = Stall()
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(chat("m")))
        t0 = time.monotonic()
        r = await c.read_response(timeout=5)
        took = time.monotonic() - t0
    assert_gateway_error(r, 504)
    # 0.7 s on p1, then only the 0.3 s left for p2: never 1.4 s
    assert 0.9 <= took <= 1.3, took
    assert r.header("x-rawgw-attempts") == "2"
    assert len(p1.requests) == 1 and len(p2.requests) == 1
    assert p2.requests[0].received_at - p1.requests[0].received_at < 0.9
    t_closed = await p2.wait_peer_closed(p2.requests[0].conn, timeout=2)
    assert t_closed - t0 < took + 0.3, "the last attempt's connection is closed with the 504"


async def test_client_timeout_header_cannot_raise_the_limit(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(two_stalling(ups, request_timeout_s=1))
    p1.default = Stall()
    p2.default = Stall()
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(chat("m"), headers=[("X-Rawgw-Timeout", "30")]))
        t0 = time.monotonic()
        r = await c.read_response(timeout=5)
        took = time.monotonic() - t0
    assert_gateway_error(r, 504)
    assert took <= 1.3, took


async def test_client_timeout_header_applies_to_its_own_request_only(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}))
    p1.enqueue(Stall(), Json(body=b'{"slow":true}', delay_before=0.8))
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(chat("m"), headers=[("X-Rawgw-Timeout", "0.3")]))
        t0 = time.monotonic()
        r1 = await c.read_response(timeout=5)
        took = time.monotonic() - t0
        assert_gateway_error(r1, 504)
        assert 0.25 <= took <= 1.0, took
        if c.eof:  # a 504 may close; the next request then comes on a new connection
            c.writer.transport.abort()
            c = await raw_connection(gw.port)
        r2 = await c.request(chat_request(chat("m")), timeout=5)
        c.writer.transport.abort()
    assert (r2.status, r2.body) == (200, b'{"slow":true}')


async def test_unusable_client_timeout_values_are_ignored(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}, server={"request_timeout_s": 5}))
    values = ["abc", "-1", "0", "nan", "", "inf", "1e999", "0x10", "0.1 x", "-inf"]
    for _ in values:
        p1.enqueue(Json(body=b'{"ok":1}', delay_before=0.3))
    wrong = []
    for value in values:
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(chat("m"), headers=[("X-Rawgw-Timeout", value)]), timeout=6)
        if (r.status, r.body) != (200, b'{"ok":1}'):
            wrong.append((value, r.status, r.body[:100]))
    assert wrong == []
    assert all(q.header("x-rawgw-timeout") is None for q in p1.requests)


@pytest.mark.parametrize("client_header", [False, True], ids=["config_deadline", "client_deadline"])
async def test_stream_longer_than_the_deadline_is_not_cut(
    start_gateway: StartGateway, ups: list[MockUpstream], client_header: bool
) -> None:
    """request_timeout_s = 1 and read_timeout_s = 0.5; the stream sends every 0.2 s for
    2 s: the deadline stopped at the head, the silence timer never fires."""
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, read_timeout_s=0.5, first_byte_timeout_s=5)}, server={"request_timeout_s": 1}))
    pieces = sse_pieces(11, 60)
    p1.enqueue(Sse(pieces=pieces, delay=0.2))
    headers = [("X-Rawgw-Timeout", "0.5")] if client_header else []
    async with await raw_connection(gw.port, timeout=6) as c:
        await c.send(chat_request(stream_body(), headers=headers))
        t0 = time.monotonic()
        r = await c.read_response(timeout=6)
        took = time.monotonic() - t0
    assert r.status == 200 and r.complete and r.chunked
    assert r.body == b"".join(pieces)
    assert took >= 1.8, took
