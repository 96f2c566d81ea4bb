"""Upstream failures and client disconnects (SPEC 5.3, 6, 8)."""

from __future__ import annotations

import time

import pytest
from conftest import (
    STREAM_BODY,
    Gateway,
    StartGateway,
    assert_gateway_error,
    assert_wire_invariants,
    base_config,
    chat_request,
    parse_response,
    raw_connection,
)
from mock_upstream import (
    Chunked,
    CloseDelimited,
    CloseWithoutResponse,
    Json,
    MockUpstream,
    Raw,
    ResetMidBody,
    Sse,
    Stall,
)
from ops_helpers import jsonl_records

# --------------------------------------------------------------------------- before the head


async def test_upstream_refuses_connection_502(start_gateway: StartGateway) -> None:
    gw = await start_gateway(base_config(None))  # a port nobody listens on
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(), timeout=8)
    assert_gateway_error(r, 502)
    assert_wire_invariants(r)
    assert r.header("x-rawgw-attempts") == "1"


async def test_upstream_closes_without_response_502(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(CloseWithoutResponse())
    mock_upstream.default = CloseWithoutResponse()  # a retry on a fresh connection fails too
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(), timeout=8)
    assert_gateway_error(r, 502)


async def test_first_byte_timeout_504(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider={"first_byte_timeout_s": 0.5}))
    mock_upstream.enqueue(Stall())
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request())
        t0 = time.monotonic()
        r = await c.read_response(timeout=5)
        t_resp = time.monotonic()
    assert 0.4 <= t_resp - t0 <= 3.0, t_resp - t0
    assert_gateway_error(r, 504)
    (req,) = mock_upstream.requests
    t_closed = await mock_upstream.wait_peer_closed(req.conn, timeout=2)
    assert t_closed - t_resp < 1.0, "the timed-out upstream connection is closed"


async def test_client_timeout_header_504(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Stall())
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(headers=[("X-Rawgw-Timeout", "0.5")]))
        t0 = time.monotonic()
        r = await c.read_response(timeout=5)
    assert time.monotonic() - t0 <= 3.0
    assert_gateway_error(r, 504)


async def test_upstream_500_passed_through_when_no_other_candidate(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    body = b'{"error":{"message":"upstream boom","type":"server_error"}}'
    mock_upstream.default = Json(status=500, body=body, headers=[("X-Upstream", "1")])
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(), timeout=8)
    assert (r.status, r.body) == (500, body)
    assert r.header("x-upstream") == "1"
    assert r.header("x-rawgw-attempts") == "1"
    assert len(mock_upstream.requests) == 1  # one provider/key pair: tried once


async def test_upstream_400_passed_through(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    body = b'{"error":{"message":"bad messages","type":"invalid_request_error"}}'
    mock_upstream.enqueue(Json(status=400, body=body))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
    assert (r.status, r.body) == (400, body)


async def test_upstream_429_then_key_cooling_answered_at_once(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    body = b'{"error":{"message":"rate limited"}}'
    mock_upstream.enqueue(Json(status=429, body=body, headers=[("Retry-After", "7")]))
    async with await raw_connection(gateway.port) as c:
        r1 = await c.request(chat_request())
        t0 = time.monotonic()
        r2 = await c.request(chat_request())
        elapsed = time.monotonic() - t0
    assert (r1.status, r1.body) == (429, body)
    assert r2.status == 429
    assert_gateway_error(r2, 429)
    ra = r2.header("retry-after")
    assert ra is not None and ra.isdigit() and 1 <= int(ra) <= 7, ra
    assert elapsed < 1.0
    assert len(mock_upstream.requests) == 1, "all keys resting: the upstream is not contacted"


# --------------------------------------------------------------------------- hostile upstream heads


BAD_UPSTREAM = {
    "te_and_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nSECRT\r\n0\r\n\r\n",
    "differing_cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nSECRT!",
    "malformed_status_line": b"HTTP/1.1 2OO OK\r\nContent-Length: 5\r\n\r\nSECRT",
    "garbage": b"SECRT garbage that is not http\r\n\r\n",
    "head_too_large": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 40000 + b"\r\nContent-Length: 5\r\n\r\nSECRT",
}


@pytest.mark.parametrize("name", list(BAD_UPSTREAM))
async def test_hostile_upstream_response_502(gateway: Gateway, mock_upstream: MockUpstream, name: str) -> None:
    mock_upstream.default = Raw(BAD_UPSTREAM[name], then="hang")
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(), timeout=8)
    assert_gateway_error(r, 502)
    assert b"SECRT" not in r.raw_head + r.body, "nothing of it is forwarded"
    assert mock_upstream.requests, "the request did reach the hostile upstream"
    for req in mock_upstream.requests:
        await mock_upstream.wait_peer_closed(req.conn, timeout=2)  # that connection closed


async def test_upstream_1xx_consumed(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.auto_continue = False
    mock_upstream.enqueue(
        Raw(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            then="keep",
        )
    )
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request())
        r = await c.read_response(timeout=5, skip_1xx=False)
    assert (r.status, r.body) == (200, b"{}")
    assert bytes(c.received).startswith(b"HTTP/1.1 200")


async def test_upstream_http10_body_forwarded_chunked(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(CloseDelimited(pieces=[b'{"a":', b'"close-delimited"}'], delay=0.05))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(), timeout=5)
        assert not c.eof  # the client connection stays usable
        r2 = await c.request(chat_request())
    assert r.status == 200 and r.chunked and r.complete
    assert r.body == b'{"a":"close-delimited"}'
    assert r2.status == 200
    assert_wire_invariants(r)


# --------------------------------------------------------------------------- upstream chunk lines
# rawgw no longer patches h11's chunk reader (rawgw/http/strict.py says why the
# upstream leg does not need ChunkLines); these prove the upstream leg stays strict
# where it matters. The client leg's refusals are in test_request_framing.py.

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_upstream_chunk_lines_never_reach_the_client(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """Sizes with 17 digits, extensions, odd spacing: h11 reads them; the client only
    ever gets the gateway's own minimal framing, and the upstream connection is reused."""
    odd = b"00000000000000005;x=1\r\nhello\r\n00000007;ext[odd \r\n world!\r\n0\r\n\r\n"
    mock_upstream.enqueue(Raw(CHUNKED_HEAD + odd, then="keep"))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(STREAM_BODY))
        first_response = await c.read_response(timeout=5)
        data = bytes(c.received)
        r = await c.request(chat_request())
    assert first_response.complete and first_response.body == b"hello world!"
    assert data.split(b"\r\n\r\n", 1)[1] == b"5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n"
    assert r.status == 200
    first, second = mock_upstream.requests
    assert second.conn is first.conn  # the response ended where its framing said: reusable


@pytest.mark.parametrize("line", [b"zz", b"-5", b"5 5", b"0x5"])
async def test_malformed_upstream_chunk_line_truncates_and_closes(gateway: Gateway, mock_upstream: MockUpstream, line: bytes) -> None:
    mock_upstream.enqueue(Raw(CHUNKED_HEAD + b"9\r\ndata: 1\n\n\r\n" + line + b"\r\nSECRT\r\n0\r\n\r\n", then="hang"))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(STREAM_BODY))
        data = await c.read_until_close(timeout=5)
    r = parse_response(data, eof=True)
    assert r.status == 200 and r.chunked and not r.complete
    assert r.body == b"data: 1\n\n" and b"SECRT" not in data
    (req,) = mock_upstream.requests
    await mock_upstream.wait_peer_closed(req.conn, timeout=2)  # never back in the pool


# --------------------------------------------------------------------------- after the head


async def test_upstream_reset_mid_body_with_content_length(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(ResetMidBody(body_prefix=b'{"id":"partial",', content_length=100))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request())
        data = await c.read_until_close(timeout=5)
    r = parse_response(data, eof=True)
    assert r.status == 200
    assert r.header("content-length") == "100"
    assert r.body == b'{"id":"partial",'
    assert not r.complete  # fewer bytes than announced, then closed: truncation is visible


@pytest.mark.parametrize("kind", ["sse", "chunked"])
async def test_upstream_reset_mid_chunked_no_terminator(gateway: Gateway, mock_upstream: MockUpstream, kind: str) -> None:
    if kind == "sse":
        mock_upstream.enqueue(Sse(pieces=[b"data: 1\n\n", b"data: 2\n\n"], delay=0.1, end="reset"))
    else:
        mock_upstream.enqueue(ResetMidBody(body_prefix=b'{"partial":', content_length=None))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(STREAM_BODY))
        data = await c.read_until_close(timeout=5)
    r = parse_response(data, eof=True)
    assert r.status == 200 and r.chunked
    assert not r.complete
    assert not data.endswith(b"0\r\n\r\n")
    assert r.body == (b"data: 1\n\ndata: 2\n\n" if kind == "sse" else b'{"partial":')


async def test_upstream_fin_mid_chunked_no_terminator(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Sse(pieces=[b"data: 1\n\n"], end="close"))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(STREAM_BODY))
        data = await c.read_until_close(timeout=5)
    r = parse_response(data, eof=True)
    assert r.chunked and not r.complete and r.body == b"data: 1\n\n"


async def test_read_timeout_silence_after_head(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider={"read_timeout_s": 0.5, "first_byte_timeout_s": 5}))
    mock_upstream.enqueue(Chunked(pieces=[b"data: 1\n\n"], content_type="text/event-stream", end="hang"))
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(STREAM_BODY))
        await c.read_until(b"data: 1\n\n", timeout=5)
        t0 = time.monotonic()
        data = await c.read_until_close(timeout=5)
        elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed <= 3.0, elapsed
    r = parse_response(bytes(c.received), eof=True)
    assert r.status == 200 and not r.complete
    assert not data.endswith(b"0\r\n\r\n")
    (req,) = mock_upstream.requests
    await mock_upstream.wait_peer_closed(req.conn, timeout=2)


# --------------------------------------------------------------------------- client disconnects


@pytest.mark.parametrize("how", ["close", "reset", "shutdown_write"])
async def test_client_disconnect_mid_stream_closes_upstream(
    gateway: Gateway, mock_upstream: MockUpstream, how: str
) -> None:
    pieces = [b"data: first\n\n"] + [b"data: more\n\n"] * 100
    mock_upstream.enqueue(Sse(pieces=pieces, delay=0.1))
    c = await raw_connection(gateway.port)
    try:
        await c.send(chat_request(STREAM_BODY))
        await c.read_until(b"data: first\n\n", timeout=5)
        t0 = time.monotonic()
        if how == "close":
            c.close()
        elif how == "reset":
            c.abort()
        else:
            await c.shutdown_write()
        (req,) = mock_upstream.requests
        t_closed = await mock_upstream.wait_peer_closed(req.conn, timeout=3)
        assert t_closed - t0 < 1.0
        assert len(req.pieces_sent_at) < 50, "the upstream stream was not cut"
    finally:
        c.writer.transport.abort()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_disconnect_while_upstream_stalls_closes_upstream(
    gateway: Gateway, mock_upstream: MockUpstream, how: str
) -> None:
    mock_upstream.enqueue(Stall())
    c = await raw_connection(gateway.port)
    try:
        await c.send(chat_request())
        (req,) = await mock_upstream.wait_for_requests(1, timeout=5)  # the gateway awaits its head
        t0 = time.monotonic()
        c.close() if how == "close" else c.abort()
        t_closed = await mock_upstream.wait_peer_closed(req.conn, timeout=3)
        assert t_closed - t0 < 1.0
    finally:
        c.writer.transport.abort()


async def test_disconnected_upstream_connection_not_reused(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Sse(pieces=[b"data: first\n\n"] + [b"data: more\n\n"] * 100, delay=0.1))
    c = await raw_connection(gateway.port)
    await c.send(chat_request(STREAM_BODY))
    await c.read_until(b"data: first\n\n", timeout=5)
    c.abort()
    first = mock_upstream.requests[0]
    await mock_upstream.wait_peer_closed(first.conn, timeout=3)
    async with await raw_connection(gateway.port) as c2:
        r = await c2.request(chat_request())
    assert r.status == 200
    assert mock_upstream.requests[1].conn is not first.conn


async def test_client_disconnect_mid_request_body(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    full = chat_request(
        b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 5000 + b'"}]}', headers=[("Expect", "100-continue")]
    )
    c = await raw_connection(gateway.port)
    head, body = full.split(b"\r\n\r\n", 1)
    await c.send(head + b"\r\n\r\n")
    await c.read_until(b"HTTP/1.1 100 Continue\r\n\r\n", timeout=5)  # the gateway took the head
    await c.send(body[:2000])
    c.abort()
    # barrier: the exchange ended and was recorded as the client's doing, before any attempt
    recs = await jsonl_records(gateway.logs_dir / "access.jsonl", lambda rs: any(r["status"] == 499 for r in rs))
    (rec,) = [r for r in recs if r["path"] == "/v1/chat/completions"]
    assert (rec["status"], rec["outcome"], rec["attempts"]) == (499, "client_closed", 0), rec
    assert mock_upstream.requests == [] and mock_upstream.connections == [], "an incomplete request is not forwarded"
    async with await raw_connection(gateway.port) as c2:
        assert (await c2.request(chat_request())).status == 200
