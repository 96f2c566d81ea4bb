"""Strict request parsing (SPEC 6, 8): hostile or ambiguous framing is refused with 400
(501 for an unknown transfer coding), the connection is closed, nothing is forwarded, and
the gateway goes on serving other connections."""

from __future__ import annotations

import pytest
from conftest import (
    CHAT_BODY,
    GW_KEY,
    Gateway,
    assert_gateway_error,
    chat_request,
    parse_response,
    raw_connection,
)
from mock_upstream import MockUpstream

PATH = b"POST /v1/chat/completions HTTP/1.1\r\n"
BASE = b"Host: 127.0.0.1\r\nAuthorization: Bearer " + GW_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
BODY5 = b'{"a":'  # 5 bytes; the rest never matters: the request must be refused


def req(headers: bytes, body: bytes = b"", line: bytes = PATH) -> bytes:
    return line + BASE + headers + b"\r\n" + body


HOSTILE: dict[str, tuple[bytes, tuple[int, ...]]] = {
    "te_and_cl": (req(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), (400,)),
    "cl_and_te": (req(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), (400,)),
    "bad_chunk_size": (req(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), (400,)),
    "chunk_size_17_hex_digits": (
        req(b"Transfer-Encoding: chunked\r\n", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
        (400,),
    ),
    "chunk_size_negative": (req(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"), (400,)),
    "chunk_missing_crlf": (req(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"), (400,)),
    "malformed_request_line": (b"GARBAGE\r\n\r\n", (400,)),
    "request_line_no_version": (b"POST /v1/chat/completions\r\nHost: x\r\n\r\n", (400,)),
    "differing_content_lengths": (req(b"Content-Length: 5\r\nContent-Length: 6\r\n", BODY5 + b"x"), (400,)),
    "content_length_list_differing": (req(b"Content-Length: 5, 6\r\n", BODY5 + b"x"), (400,)),
    "content_length_malformed": (req(b"Content-Length: 5x\r\n", BODY5), (400,)),
    "content_length_plus_sign": (req(b"Content-Length: +5\r\n", BODY5), (400,)),
    "obs_fold": (req(b"Content-Length: 5\r\nX-Folded: a\r\n b\r\n", BODY5), (400,)),
    "bare_lf": (
        b"POST /v1/chat/completions HTTP/1.1\nHost: 127.0.0.1\nAuthorization: Bearer "
        + GW_KEY.encode() + b"\nContent-Length: 5\n\n" + BODY5,
        (400,),
    ),
    "nul_in_value": (req(b"Content-Length: 5\r\nX-A: a\x00b\r\n", BODY5), (400,)),
    "cr_in_value": (req(b"Content-Length: 5\r\nX-A: a\rb\r\n", BODY5), (400,)),
    "space_before_colon": (req(b"Content-Length : 5\r\n", BODY5), (400,)),
    "te_on_http10": (
        req(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", line=b"POST /v1/chat/completions HTTP/1.0\r\n"),
        (400,),
    ),
    "unknown_transfer_coding": (req(b"Transfer-Encoding: foo, chunked\r\n", b"0\r\n\r\n"), (501,)),
    "chunked_not_last": (req(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), (400,)),
    "chunked_twice": (req(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), (400,)),
    # issue 10 point 15: chunk lines h11 accepts
    "chunk_ext_empty": (req(b"Transfer-Encoding: chunked\r\n", b"5;\r\nhello\r\n0\r\n\r\n"), (400,)),
    "chunk_ext_bad_name": (req(b"Transfer-Encoding: chunked\r\n", b"5;bad[=x\r\nhello\r\n0\r\n\r\n"), (400,)),
    "chunk_size_trailing_space": (req(b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n"), (400,)),
    "chunk_line_bad_after_good": (
        req(b"Transfer-Encoding: chunked\r\n", b"2;a=b\r\n{}\r\n3;x=\"unterminated\r\nabc\r\n0\r\n\r\n"),
        (400,),
    ),
    "http_version_9_9": (req(b"Content-Length: 5\r\n", BODY5, line=b"POST /v1/chat/completions HTTP/9.9\r\n"), (505,)),
    "http_version_2_0": (req(b"Content-Length: 5\r\n", BODY5, line=b"POST /v1/chat/completions HTTP/2.0\r\n"), (505,)),
    "host_userinfo": (req(b"Content-Length: 5\r\n", BODY5).replace(b"Host: 127.0.0.1", b"Host: user:pw@127.0.0.1"), (400,)),
    "host_path": (req(b"Content-Length: 5\r\n", BODY5).replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1/v1"), (400,)),
    "host_list": (req(b"Content-Length: 5\r\n", BODY5).replace(b"Host: 127.0.0.1", b"Host: a, b"), (400,)),
    "host_empty": (req(b"Content-Length: 5\r\n", BODY5).replace(b"Host: 127.0.0.1", b"Host: "), (400,)),
    # issue 10 point 11: control characters h11 accepts in a value
    **{
        f"ctl_{c:02x}_in_value": (req(b"Content-Length: 5\r\nX-A: a" + bytes([c]) + b"Transfer-Encoding: chunked\r\n", BODY5), (400,))
        for c in (0x01, 0x04, 0x08, 0x0E, 0x1F, 0x7F)
    },
    "connect": (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nAuthorization: Bearer " + GW_KEY.encode() + b"\r\n\r\n", (400, 405)),
    "absolute_form_other_host": (
        req(b"Content-Length: 5\r\n", BODY5, line=b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\n"),
        (400,),
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_request_refused_and_closed(gateway: Gateway, mock_upstream: MockUpstream, name: str) -> None:
    raw, statuses = HOSTILE[name]
    async with await raw_connection(gateway.port) as c:
        await c.send(raw)
        data = await c.read_until_close(timeout=5)  # refused → the connection is closed
    r = parse_response(data, eof=True)
    assert r.status in statuses, (r.status, r.body)
    assert_gateway_error(r, r.status)
    assert r.values("server") == ["rawgw"] and r.count("date") == 1
    assert mock_upstream.requests == [], "nothing refused is ever forwarded"
    # the gateway goes on serving
    async with await raw_connection(gateway.port) as c:
        ok = await c.request(chat_request())
    assert ok.status == 200
    assert [q.body for q in mock_upstream.requests] == [CHAT_BODY]


async def test_bad_framing_on_second_pipelined_request(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """The first request is served, the second (bad) is refused and ends the connection."""
    bad = req(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request() + bad)
        first = await c.read_response(timeout=5)
        rest = await c.read_until_close(timeout=5)
    assert first.status == 200
    assert parse_response(rest).status == 400
    assert len(mock_upstream.requests) == 1
