"""Streaming (SPEC 6, 8): bytes reach the client as they arrive, byte-for-byte, with
awkward boundaries, whatever the upstream's framing."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from conftest import (
    STREAM_BODY,
    Gateway,
    StartGateway,
    assert_wire_invariants,
    base_config,
    chat_request,
    parse_response,
    raw_connection,
    raw_request,
)
from mock_upstream import Chunked, CloseDelimited, MockUpstream, Raw, Sse

# Boundaries fall mid UTF-8 sequence, between \r and \n, mid "data:", inside a comment.
AWKWARD = [
    b'data: {"choices":[{"delta":{"content":"caf\xc3',
    b'\xa9 \xe2\x82',
    b'\xac"}}]}\r\n\r',
    b"\n: keep-alive comment\n\nda",
    b'ta: {"choices":[{"delta":{"content":"x"}}]}\n',
    b"\nevent: ping\r\ndata: 1\r\n\r\n",
    b"data: [DONE]\n\n",
]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.mark.parametrize("framing", ["chunked", "close", "http10"])
async def test_sse_byte_identical(gateway: Gateway, mock_upstream: MockUpstream, framing: str) -> None:
    mock_upstream.enqueue(Sse(pieces=AWKWARD, delay=0.02, framing=framing))  # type: ignore[arg-type]
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(STREAM_BODY), timeout=5)
    assert r.status == 200
    assert r.complete
    assert sha(r.body) == sha(b"".join(AWKWARD))
    assert r.body == b"".join(AWKWARD)
    # A body without length goes to an HTTP/1.1 client chunked (SPEC 8)
    assert r.chunked, r.raw_head
    assert r.header("content-type") == "text/event-stream"
    assert_wire_invariants(r)


async def test_sse_with_content_length_keeps_it(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Sse(pieces=AWKWARD, delay=0.02, framing="length"))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(STREAM_BODY))
    assert r.body == b"".join(AWKWARD)
    assert r.header("content-length") == str(len(b"".join(AWKWARD)))
    assert r.count("transfer-encoding") == 0


async def test_first_event_arrives_before_upstream_sends_last(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    first, last = b"data: first\n\n", b"data: last\n\ndata: [DONE]\n\n"
    mock_upstream.enqueue(Sse(pieces=[first, last], delay=1.0))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(STREAM_BODY))
        await c.read_until(b"data: first\n\n", timeout=5)
        t_first = time.monotonic()
        r = await c.read_response(timeout=5)
    (req,) = mock_upstream.requests
    sent_first, sent_last = req.pieces_sent_at
    assert t_first - sent_first < 0.3, "the first event was held back"
    assert t_first < sent_last - 0.5, "the first event only arrived with the last"
    assert r.body == first + last


async def test_partial_event_not_held_for_line_end(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """No line splitting or reassembly: half an event is forwarded as it is."""
    mock_upstream.enqueue(Sse(pieces=[b'data: {"a":"h\xc3', b'\xa9"}\n\n'], delay=0.8))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(STREAM_BODY))
        await c.read_until(b'data: {"a":"h\xc3', timeout=5)
        t_half = time.monotonic()
        r = await c.read_response(timeout=5)
    req = mock_upstream.requests[0]
    assert t_half < req.pieces_sent_at[1] - 0.4
    assert r.body == b'data: {"a":"h\xc3\xa9"}\n\n'


@pytest.mark.parametrize("kind", ["chunked-json", "content-length", "close-delimited"])
async def test_non_sse_bodies_also_flow(gateway: Gateway, mock_upstream: MockUpstream, kind: str) -> None:
    a, b = b'{"part":"one",', b'"rest":"two"}'
    if kind == "chunked-json":
        mock_upstream.enqueue(Chunked(pieces=[a, b], delay=0.8, content_type="application/x-ndjson"))
    elif kind == "content-length":
        mock_upstream.enqueue(
            Raw(
                [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(a + b) + a, b],
                delay=0.8,
                then="keep",
            )
        )
    else:
        mock_upstream.enqueue(CloseDelimited(pieces=[a, b], delay=0.8))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request())
        await c.read_until(a, timeout=5)
        t_a = time.monotonic()
        r = await c.read_response(timeout=5)
    req = mock_upstream.requests[0]
    assert t_a < req.pieces_sent_at[-1] - 0.4
    assert r.body == a + b and r.complete
    if kind == "content-length":
        assert r.header("content-length") == str(len(a + b))
    else:
        assert r.chunked


async def test_sse_headers_defaults(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Sse(pieces=[b"data: 1\n\n"]))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(STREAM_BODY))
    assert r.values("x-accel-buffering") == ["no"]
    assert r.values("cache-control") == ["no-cache"]


async def test_sse_headers_upstream_values_not_duplicated(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(
        Sse(
            pieces=[b"data: 1\n\n"],
            content_type="text/event-stream; charset=utf-8",
            headers=[("Cache-Control", "no-store, no-transform"), ("X-Accel-Buffering", "no")],
        )
    )
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(STREAM_BODY))
    assert r.values("x-accel-buffering") == ["no"]
    assert r.values("cache-control") == ["no-store, no-transform"]
    assert r.values("content-type") == ["text/event-stream; charset=utf-8"]


async def test_sse_to_http10_client_is_close_delimited(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Sse(pieces=AWKWARD, delay=0.01))
    data = await raw_request(gateway.port, chat_request(STREAM_BODY, version="HTTP/1.0"), timeout=5)
    r = parse_response(data, eof=True)
    assert r.status == 200
    assert r.count("transfer-encoding") == 0 and r.count("content-length") == 0, r.raw_head
    assert r.body == b"".join(AWKWARD)


async def test_large_stream_to_slow_reader_is_complete(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """4 MiB through a client that reads slowly at first: nothing lost, nothing reordered."""
    pieces = [(b"data: %06d " % i) + bytes([65 + i % 26]) * 4080 + b"\n\n" for i in range(1024)]
    mock_upstream.enqueue(Sse(pieces=pieces))
    async with await raw_connection(gateway.port, timeout=10) as c:
        await c.send(chat_request(STREAM_BODY))
        await c.read_until(b"data: 000000", timeout=5)
        await asyncio.sleep(0.5)  # let the pipes fill up while we do not read
        r = await c.read_response(timeout=10)
    assert r.complete and sha(r.body) == sha(b"".join(pieces))


async def test_stream_survives_read_timeout_while_bytes_flow(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """read_timeout_s is silence, not total time (SPEC 8)."""
    gw = await start_gateway(base_config(mock_upstream, provider={"read_timeout_s": 0.6, "first_byte_timeout_s": 5}))
    pieces = [b"data: %d\n\n" % i for i in range(8)]
    mock_upstream.enqueue(Sse(pieces=pieces, delay=0.3))  # 2.1 s in all, gaps of 0.3 s
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(STREAM_BODY), timeout=8)
    assert r.complete and r.body == b"".join(pieces)
