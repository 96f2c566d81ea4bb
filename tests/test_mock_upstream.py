"""The mock upstream on its own, over raw sockets (no gateway): the harness must be right
before it can judge the gateway."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest
from conftest import CHAT_BODY, parse_response, raw_connection
from mock_upstream import (
    Chunked,
    CloseDelimited,
    CloseWithoutResponse,
    Json,
    MockUpstream,
    Raw,
    RecordedRequest,
    ResetMidBody,
    Sse,
    Stall,
)


def req(body: bytes = CHAT_BODY, path: str = "/v1/chat/completions", extra: bytes = b"") -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: up\r\nX-Dup: 1\r\nx-dup: 2\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_json_records_request_and_keeps_alive(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Json(body=b'{"a": 1}', headers=[("X-Up", "1")]), Json(status=201, body={"b": 2}))
    async with await raw_connection(mock_upstream.port) as c:
        r1 = await c.request(req())
        r2 = await c.request(req(b"{}", path="/other?q=1"))
    assert (r1.status, r1.body, r1.header("content-length"), r1.header("x-up")) == (200, b'{"a": 1}', "8", "1")
    assert (r2.status, r2.json()) == (201, {"b": 2})
    a, b = mock_upstream.requests
    assert a.conn is b.conn
    assert (a.method, a.target, a.body) == (b"POST", b"/v1/chat/completions", CHAT_BODY)
    assert a.header_values("x-dup") == [b"1", b"2"]
    assert [k for k, _ in a.headers][:3] == [b"Host", b"X-Dup", b"x-dup"]
    assert b.path == "/other" and b.body == b"{}"
    assert bytes(a.conn.raw_received) == req() + req(b"{}", path="/other?q=1")


async def test_chunked_request_decoded(mock_upstream: MockUpstream) -> None:
    raw = (
        b"POST /x HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n1\r\nd\r\n0\r\nX-T: 1\r\n\r\n"
    )
    async with await raw_connection(mock_upstream.port) as c:
        r = await c.request(raw)
    assert r.status == 200
    (rq,) = mock_upstream.requests
    assert rq.chunked and rq.body == b"abcd"
    assert rq.raw_body == raw.split(b"\r\n\r\n", 1)[1]


async def test_expect_continue(mock_upstream: MockUpstream) -> None:
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(b"POST /x HTTP/1.1\r\nHost: up\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        await c.read_until(b"HTTP/1.1 100 Continue\r\n\r\n")
        await c.send(b"{}")
        r = await c.read_response()
    assert r.status == 200 and mock_upstream.requests[0].body == b"{}"


async def test_sse_pieces_and_timing(mock_upstream: MockUpstream) -> None:
    pieces = [b"data: h\xc3", b"\xa9\r\n\r\nda", b"ta: [DONE]\n\n"]
    mock_upstream.enqueue(Sse(pieces=pieces, delay=[0.3, 0.0], headers=[("Cache-Control", "no-cache")]))
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(req())
        t0 = time.monotonic()
        await c.read_until(b"h\xc3")
        t_first = time.monotonic()
        r = await c.read_response()
    assert t_first - t0 < 0.25
    assert r.chunked and r.complete and r.body == b"".join(pieces)
    assert r.header("content-type") == "text/event-stream"
    rq = mock_upstream.requests[0]
    assert len(rq.pieces_sent_at) == 3
    assert rq.pieces_sent_at[1] - rq.pieces_sent_at[0] >= 0.28


@pytest.mark.parametrize("framing", ["close", "http10", "length"])
async def test_sse_other_framings(mock_upstream: MockUpstream, framing: str) -> None:
    pieces = [b"data: 1\n\n", b"data: 2\n\n"]
    mock_upstream.enqueue(Sse(pieces=pieces, delay=0.01, framing=framing))  # type: ignore[arg-type]
    async with await raw_connection(mock_upstream.port) as c:
        r = await c.request(req())
        if framing != "length":
            assert c.eof
    assert r.body == b"".join(pieces) and r.complete
    assert not r.chunked
    assert r.version == ("HTTP/1.0" if framing == "http10" else "HTTP/1.1")
    assert (r.content_length is not None) == (framing == "length")


async def test_close_delimited(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(CloseDelimited(pieces=[b'{"a"', b":1}"], delay=0.05))
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(req())
        data = await c.read_until_close()
    r = parse_response(data)
    assert (r.version, r.body, r.content_length, r.chunked) == ("HTTP/1.0", b'{"a":1}', None, False)


async def test_raw_hostile_bytes(mock_upstream: MockUpstream) -> None:
    hostile = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n"
        b"Date: a\r\nDate: b\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    mock_upstream.enqueue(Raw(hostile))
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(req())
        data = await c.read_until_close()
    assert data == hostile


async def test_chunked_with_trailers(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Chunked(pieces=[b"ab", b"", b"c"], trailers=[("X-T", "1")]))
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(req())
        await c.read_until(b"0\r\nX-T: 1\r\n\r\n")
    r = parse_response(bytes(c.received))
    assert r.body == b"abc" and r.complete


async def test_stall_until_peer_closes_records_time(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Stall())
    c = await raw_connection(mock_upstream.port)
    await c.send(req())
    (rq,) = await mock_upstream.wait_for_requests(1)
    await asyncio.sleep(0.1)
    t_close = time.monotonic()
    c.close()
    t_seen = await mock_upstream.wait_peer_closed(rq.conn, timeout=2)
    assert 0 <= t_seen - t_close < 0.5
    assert rq.response_started_at is None


async def test_stall_then_answer(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Stall(0.3, then=Json(body=b"{}")))
    async with await raw_connection(mock_upstream.port) as c:
        t0 = time.monotonic()
        r = await c.request(req())
    assert r.body == b"{}" and time.monotonic() - t0 >= 0.28


async def test_reset_mid_body_content_length(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(ResetMidBody(body_prefix=b'{"partial":', content_length=100, settle=0.05))
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(req())
        data = await c.read_until_close()
    r = parse_response(data, eof=True)
    assert r.content_length == 100 and r.body == b'{"partial":' and not r.complete
    assert c.reset  # RST, not FIN


async def test_reset_mid_chunked(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Sse(pieces=[b"data: 1\n\n"], end="reset"))
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(req())
        data = await c.read_until_close()
    r = parse_response(data)
    assert r.chunked and not r.complete and r.body == b"data: 1\n\n"
    assert not data.endswith(b"0\r\n\r\n")


async def test_hang_after_head(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Chunked(pieces=[b"x"], end="hang"))
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(req())
        await c.read_until(b"1\r\nx\r\n")
        with pytest.raises(asyncio.TimeoutError):
            await c.read_until_close(timeout=0.3)


async def test_close_without_response(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(CloseWithoutResponse(), CloseWithoutResponse(reset=True))
    for _ in range(2):
        async with await raw_connection(mock_upstream.port) as c:
            await c.send(req())
            assert await c.read_until_close() == b""


async def test_status_with_headers_and_handler(mock_upstream: MockUpstream) -> None:
    seen: list[bytes] = []

    async def handler(r: RecordedRequest) -> Json:
        seen.append(r.body)
        return Json(status=429, headers=[("Retry-After", "7")], body={"error": "slow down"})

    mock_upstream.handler = handler
    async with await raw_connection(mock_upstream.port) as c:
        r = await c.request(req(b'{"n":1}'))
    assert (r.status, r.header("retry-after"), r.json()) == (429, "7", {"error": "slow down"})
    assert seen == [b'{"n":1}']


async def test_pipelined_requests_answered_in_order(mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Json(body=b"1", delay_before=0.1), Json(body=b"2"))
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(req() + req())
        r1 = await c.read_response()
        r2 = await c.read_response()
    assert (r1.body, r2.body) == (b"1", b"2")


async def test_tls(upstream_ssl_context: ssl.SSLContext, ca_pem: object) -> None:
    import trustme  # noqa: F401

    mock = await MockUpstream.start(ssl=upstream_ssl_context)
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca_pem))
        reader, writer = await asyncio.open_connection("127.0.0.1", mock.port, ssl=client_ctx)
        writer.write(req())
        await writer.drain()
        data = b""
        while b"chatcmpl-mock" not in data or not parse_response(data, eof=False).complete:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk
            data += chunk
        assert parse_response(data).status == 200
        assert mock.origin.startswith("https://")
        writer.close()
        (rq,) = mock.requests
        await mock.wait_peer_closed(rq.conn, timeout=2)
    finally:
        await mock.close()


async def test_parse_error_gets_400(mock_upstream: MockUpstream) -> None:
    async with await raw_connection(mock_upstream.port) as c:
        await c.send(b"NONSENSE\r\n\r\n")
        data = await c.read_until_close()
    assert data.startswith(b"HTTP/1.1 400 ")
    assert mock_upstream.connections[0].parse_error
