"""Limits and timers on the client leg (SPEC 3 [server], 6, 8)."""

from __future__ import annotations

import asyncio
import time

from conftest import (
    CHAT_BODY,
    GW_KEY,
    StartGateway,
    assert_gateway_error,
    assert_wire_invariants,
    base_config,
    chat_request,
    parse_response,
    raw_connection,
)
from mock_upstream import MockUpstream

AUTH = b"Authorization: Bearer " + GW_KEY.encode() + b"\r\n"


async def test_head_too_large_431(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"max_header_bytes": 4096}))
    raw = chat_request(headers=[("X-Big", "a" * 6000)])
    async with await raw_connection(gw.port) as c:
        await c.send(raw)
        r = await c.read_response(timeout=5)
        assert_gateway_error(r, 431)
        assert_wire_invariants(r)
        await c.read_until_close(timeout=5)
    assert mock_upstream.requests == []


async def test_head_just_under_limit_served(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"max_header_bytes": 4096}))
    raw = chat_request(headers=[("X-Big", "a" * 3000)])
    async with await raw_connection(gw.port) as c:
        r = await c.request(raw)
    assert r.status == 200
    assert mock_upstream.requests[0].header("x-big") == b"a" * 3000


async def test_content_length_over_limit_413_without_reading_body(
    start_gateway: StartGateway, mock_upstream: MockUpstream
) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"max_body_bytes": 1000}))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    async with await raw_connection(gw.port) as c:
        await c.send(head)  # the body is never sent: the answer must not wait for it
        t0 = time.monotonic()
        r = await c.read_response(timeout=3)
        assert time.monotonic() - t0 < 2.5
        assert_gateway_error(r, 413)
        await c.read_until_close(timeout=3)  # cannot resync without reading the body
    assert mock_upstream.requests == [] and mock_upstream.connections == []


async def test_content_length_at_limit_served(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"max_body_bytes": len(CHAT_BODY)}))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request())
    assert r.status == 200


async def test_expect_continue_over_limit_gets_413_not_100(
    start_gateway: StartGateway, mock_upstream: MockUpstream
) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"max_body_bytes": 1000}))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    )
    async with await raw_connection(gw.port) as c:
        await c.send(head)
        r = await c.read_response(timeout=3, skip_1xx=False)
    assert_gateway_error(r, 413)


async def test_chunked_body_over_limit_413(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"max_body_bytes": 1000}))
    chunk = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 450 + b'"}]}'
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    async with await raw_connection(gw.port) as c:
        await c.send(head + body)
        r = await c.read_response(timeout=5)
        assert_gateway_error(r, 413)
        await c.read_until_close(timeout=3)
    assert mock_upstream.requests == []


async def test_incomplete_head_408_after_header_timeout(
    start_gateway: StartGateway, mock_upstream: MockUpstream
) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"header_timeout_s": 1}))
    async with await raw_connection(gw.port) as c:
        await c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        data = await c.read_until_close(timeout=5)
        elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 3.0, elapsed
    r = parse_response(data)
    assert_gateway_error(r, 408)
    assert_wire_invariants(r)
    assert mock_upstream.requests == []


async def test_trickled_head_still_408(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """The header timer runs from the first byte; trickling bytes does not re-arm it."""
    gw = await start_gateway(base_config(mock_upstream, server={"header_timeout_s": 1}))
    async with await raw_connection(gw.port) as c:
        await c.send(b"POST /v1/chat/completions HTTP/1.1\r\n")
        t0 = time.monotonic()

        async def trickle() -> None:
            for i in range(40):
                await asyncio.sleep(0.1)
                try:
                    await c.send(b"X-T%d: 1\r\n" % i)
                except (ConnectionError, OSError):
                    return

        task = asyncio.create_task(trickle())
        try:
            data = await c.read_until_close(timeout=5)
        finally:
            task.cancel()
        elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 3.0, elapsed
    # The lingering close (RFC 9112 §9.6) keeps reading what we still send, so the 408
    # and the FIN arrive before any reset could destroy them.
    r = parse_response(data)
    assert_gateway_error(r, 408)
    assert r.header("connection") == "close"


async def test_idle_keepalive_closed_silently(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"keepalive_timeout_s": 1}))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request())
        assert r.status == 200
        t0 = time.monotonic()
        rest = await c.read_until_close(timeout=5)
        elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 3.5, elapsed
    assert rest == b"", rest  # an idle close sends nothing (no unsolicited 408)


async def test_keepalive_timer_not_armed_during_slow_response(
    start_gateway: StartGateway, mock_upstream: MockUpstream
) -> None:
    from mock_upstream import Json

    gw = await start_gateway(base_config(mock_upstream, server={"keepalive_timeout_s": 1}))
    mock_upstream.enqueue(Json(body=b"{}", delay_before=1.8))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(), timeout=5)
    assert (r.status, r.body) == (200, b"{}")


async def test_gateway_serves_after_limit_errors(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(
        base_config(mock_upstream, server={"max_body_bytes": 1000, "max_header_bytes": 4096})
    )
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(b"x" * 2000))
        assert (await c.read_response()).status == 413
    async with await raw_connection(gw.port) as c:
        assert (await c.request(chat_request())).status == 200
