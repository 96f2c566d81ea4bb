"""The pass-through body relay (issue 15): upstream bytes forwarded as they are, framing
still validated, the connection pooled only after a complete response (SPEC 6/8)."""

from __future__ import annotations

import pytest
from conftest import Gateway, assert_wire_invariants, chat_request, parse_response, raw_connection
from mock_upstream import MockUpstream, Raw

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EV1 = b'data: {"n":1}\n\n'
EV2 = b'data: {"n":2}\n\n'
PLAIN_CHUNKS = b"%x\r\n%s\r\n%x\r\n%s\r\n" % (len(EV1), EV1, len(EV2), EV2)


async def test_chunked_body_reaches_the_client_byte_for_byte(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """Plain chunk framing passes as the upstream wrote it, even cut mid size line."""
    wire = PLAIN_CHUNKS + b"0\r\n\r\n"
    cut = PLAIN_CHUNKS.index(b"\r\n", len(EV1) + 5) - 1  # inside the second size line
    mock_upstream.enqueue(Raw([SSE_HEAD + wire[:7], wire[7:cut], wire[cut:]], delay=0.05, then="keep"))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
        r2 = await c.request(chat_request())
    assert r.status == 200 and r.chunked and r.complete
    assert r.raw_body == wire
    assert r2.status == 200
    assert mock_upstream.requests[0].conn is mock_upstream.requests[1].conn, "a complete chunked answer is pooled"
    assert_wire_invariants(r)


async def test_chunk_extensions_and_trailers_are_reframed(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    wire = b"%x;ext=1\r\n%s\r\n%x \r\n%s\r\n0;last\r\nX-Checksum: abc\r\n\r\n" % (len(EV1), EV1, len(EV2), EV2)
    mock_upstream.enqueue(Raw(SSE_HEAD + wire, then="keep"))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
        r2 = await c.request(chat_request())
    assert r.status == 200 and r.complete
    assert r.raw_body == PLAIN_CHUNKS + b"0\r\n\r\n"  # no extension, no OWS, no trailer
    assert r.body == EV1 + EV2
    assert r2.status == 200
    assert mock_upstream.requests[0].conn is mock_upstream.requests[1].conn


@pytest.mark.parametrize(
    "bad",
    [b"zz\r\n", b"%x\r\n%sXY" % (len(EV2), EV2), b"111111111111111111111\r\n", b"0\r\nnot a field\r\n\r\n"],
    ids=["size-not-hex", "data-without-crlf", "size-21-digits", "bad-trailer"],
)
async def test_malformed_chunk_framing_in_a_later_read_truncates(gateway: Gateway, mock_upstream: MockUpstream, bad: bytes) -> None:
    first = b"%x\r\n%s\r\n" % (len(EV1), EV1)
    mock_upstream.enqueue(Raw([SSE_HEAD + first, bad], delay=0.05, then="hang"))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request())
        data = await c.read_until_close(timeout=5)
    r = parse_response(data, eof=True)
    assert r.status == 200 and r.chunked and not r.complete
    assert r.body.startswith(EV1) and not data.endswith(b"0\r\n\r\n")
    (req,) = mock_upstream.requests
    await mock_upstream.wait_peer_closed(req.conn, timeout=2)


async def test_body_longer_than_content_length_is_cut_and_not_pooled(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    body = b'{"ok":1}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    mock_upstream.enqueue(Raw([head + body[:3], body[3:] + b"EXTRA"], delay=0.05, then="keep"))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
        r2 = await c.request(chat_request())
    assert r.body == body and r.rest == b""
    assert r2.status == 200 and b"EXTRA" not in r2.raw_body
    assert mock_upstream.requests[0].conn is not mock_upstream.requests[1].conn


async def test_http10_client_gets_the_dechunked_body(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Raw(SSE_HEAD + b"%x;e\r\n%s\r\n" % (len(EV1), EV1) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(EV2), EV2), then="keep"))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(version="HTTP/1.0"))
        data = await c.read_until_close(timeout=5)
    r = parse_response(data, eof=True)
    assert r.status == 200 and not r.chunked
    assert r.body == EV1 + EV2


async def test_usage_is_found_across_chunk_boundaries(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """Usage accounting reads the content, not the framing: a chunk boundary inside the
    usage object does not hide it."""
    ev = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":11}}\n\ndata: [DONE]\n\n'
    a, b = ev[:40], ev[40:]
    wire = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(a), a, len(b), b)
    mock_upstream.enqueue(Raw(SSE_HEAD + wire, then="keep"))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
        m = await c.request(chat_request(method="GET", path="/metrics", body=b""))
    assert r.raw_body == wire
    text = m.body.decode()
    assert any(line.startswith("rawgw_tokens_total") and line.endswith(" 11") for line in text.splitlines()), text[:2000]
