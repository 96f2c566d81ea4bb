"""Wire conformance rows of issue 10 (points 0, 1, 10a, 11, 15, 16): pooled upstream
connections never carry leftover bytes to the next client, HEAD gets the GET head with no
body, gateway-made responses carry a reason phrase, control characters in header values
are refused on both legs, header names with "_" are not forwarded, the 204 preflight has no
Content-Length and the provider's own request id stays visible."""

from __future__ import annotations

import pytest
from conftest import (
    CHAT_BODY,
    Gateway,
    StartGateway,
    assert_gateway_error,
    base_config,
    chat_request,
    parse_response,
    raw_connection,
)
from mock_upstream import Json, MockUpstream, Raw

REAL = b'{"real":1}'
FORGED = b'{"forged":true}'
FORGED_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(FORGED), FORGED)
PLAIN = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(REAL), REAL)
SSE_EVENT = b"data: " + REAL + b"\n\n"
STREAMED = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (
    len(SSE_EVENT),
    SSE_EVENT,
)


# --------------------------------------------------------------------------- point 0


@pytest.mark.parametrize("answer", [PLAIN, STREAMED], ids=["plain", "streamed"])
async def test_leftover_upstream_bytes_never_reach_the_next_client(
    start_gateway: StartGateway, mock_upstream: MockUpstream, answer: bytes
) -> None:
    """A rogue upstream writes its answer plus a complete forged response in one write and
    keeps the connection: the connection must not go back to the pool."""
    mock_upstream.handler = lambda req: Raw(answer + FORGED_RESPONSE, then="keep")
    gw = await start_gateway(base_config(mock_upstream))
    for _ in range(3):
        async with await raw_connection(gw.port) as c:  # keep-alive client, one per turn
            r = await c.request(chat_request())
            assert r.status == 200, r.body
            assert FORGED not in r.raw_body and REAL in r.body, r.body
    assert len(mock_upstream.requests) == 3
    assert len({id(q.conn) for q in mock_upstream.requests}) == 3  # each dirty connection dropped


async def test_head_with_a_body_from_upstream_does_not_poison_the_next_request(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """MockUpstream's Json writes its body even for HEAD (a wrong upstream)."""
    mock_upstream.enqueue(Json(body=b'{"x":"12345"}', headers=[("X-Thing", "a")]))
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(method="HEAD", path="/v1/things"))
        r = await c.read_response(request_method="HEAD")
        assert r.status == 200 and r.header("content-length") == "13" and r.header("x-thing") == "a"
        assert r.body == b""
        # the same client connection (and the gateway's pool) serve the next request
        ok = await c.request(chat_request())
    assert ok.status == 200, ok.body
    assert ok.body == mock_upstream.default.body_bytes()  # type: ignore[union-attr]
    assert mock_upstream.requests[0].method == b"HEAD"
    assert mock_upstream.requests[1].conn is not mock_upstream.requests[0].conn


# --------------------------------------------------------------------------- point 1


@pytest.mark.parametrize("path", ["/health", "/", "/metrics", "/v1/models", "/metrics.json"])
async def test_head_on_local_endpoints_gets_the_get_head_without_body(gateway: Gateway, path: str) -> None:
    async with await raw_connection(gateway.port) as c:
        got = await c.request(chat_request(method="GET", path=path))
        await c.send(chat_request(method="HEAD", path=path))
        head = await c.read_response(request_method="HEAD")
        # the connection stays usable and nothing followed the HEAD answer
        again = await c.request(chat_request(method="GET", path=path))
    assert got.status == head.status == again.status == 200
    assert head.header("content-type") == got.header("content-type")
    assert head.header("content-length") is not None
    if path in ("/health", "/"):
        assert head.header("content-length") == got.header("content-length") == str(len(got.body))
    assert again.body and again.header("content-length") == str(len(again.body))
    assert head.reason == "OK", head.raw_head


async def test_head_with_error_status_has_no_body(gateway: Gateway) -> None:
    async with await raw_connection(gateway.port) as c:
        await c.send(chat_request(method="HEAD", path="/nope", key="wrong-key"))
        r = await c.read_response(request_method="HEAD")
        ok = await c.request(chat_request(method="GET", path="/health"))
    assert r.status == 401 and int(r.header("content-length") or 0) > 0
    assert ok.status == 200 and ok.json() == {"status": "ok"}


# --------------------------------------------------------------------------- point 10a


async def test_gateway_made_responses_carry_reason_phrases(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra={"cache": {"enabled": True}}))
    async with await raw_connection(gw.port) as c:
        health = await c.request(chat_request(method="GET", path="/health"))
        miss = await c.request(chat_request())
        hit = await c.request(chat_request())
        full = chat_request(headers=[("Expect", "100-continue")], body=CHAT_BODY.replace(b'"m"', b'"m2"'))
        head, body = full.split(b"\r\n\r\n", 1)
        await c.send(head + b"\r\n\r\n")
        r100 = await c.read_response(skip_1xx=False)
        await c.send(body)
        await c.read_response()
    assert health.raw_head.startswith(b"HTTP/1.1 200 OK\r\n"), health.raw_head
    assert miss.header("x-cache") == "MISS" and hit.header("x-cache") == "HIT"
    assert hit.raw_head.startswith(b"HTTP/1.1 200 OK\r\n"), hit.raw_head
    assert r100.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n"), r100.raw_head


# --------------------------------------------------------------------------- point 11


async def test_legal_value_bytes_htab_and_obs_text_forwarded(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(headers=[("X-A", "a\tb\xe9\xff")]))
    assert r.status == 200
    assert mock_upstream.requests[0].header("x-a") == b"a\tb\xe9\xff"


@pytest.mark.parametrize("ctl", [b"\x01", b"\x08", b"\x0e", b"\x1f", b"\x7f"], ids=lambda b: b.hex())
async def test_upstream_response_header_with_control_character_is_502(gateway: Gateway, mock_upstream: MockUpstream, ctl: bytes) -> None:
    mock_upstream.enqueue(Raw(b"HTTP/1.1 200 OK\r\nX-Bad: a" + ctl + b"b\r\nContent-Length: 2\r\n\r\n{}", then="keep"))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
        ok = await c.request(chat_request())
    err = assert_gateway_error(r, 502)
    assert ctl.decode("latin-1") not in err["message"] and b"X-Bad" not in r.raw_head
    assert ok.status == 200


# --------------------------------------------------------------------------- point 15


async def test_header_names_with_underscore_not_forwarded(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(headers=[("X_Foo", "1"), ("Transfer_Encoding", "chunked"), ("X-Foo", "2")]))
    assert r.status == 200
    (req,) = mock_upstream.requests
    names = req.header_names()
    assert not [n for n in names if "_" in n], names
    assert req.header("x-foo") == b"2" and req.body == CHAT_BODY


async def test_valid_chunk_extensions_accepted(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    head = chat_request(headers=[("Transfer-Encoding", "chunked")], body=b"").replace(b"Content-Length: 0\r\n", b"")
    a, b = CHAT_BODY[:10], CHAT_BODY[10:]
    body = b'%x;name=value\r\n%s\r\n%x; q = "a \\"b\\"";x\r\n%s\r\n0\r\n\r\n' % (len(a), a, len(b), b)
    async with await raw_connection(gateway.port) as c:
        r = await c.request(head + body)
    assert r.status == 200, r.body
    assert mock_upstream.requests[0].body == CHAT_BODY


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/things"], ids=["buffered", "streamed"])
async def test_malformed_chunk_line_in_a_later_read_refused(gateway: Gateway, mock_upstream: MockUpstream, path: str) -> None:
    """The head was taken (the 100 Continue says so) before the bad chunk line arrives."""
    head = chat_request(path=path, headers=[("Transfer-Encoding", "chunked"), ("Expect", "100-continue")], body=b"")
    async with await raw_connection(gateway.port) as c:
        await c.send(head.replace(b"Content-Length: 0\r\n", b""))
        r100 = await c.read_response(skip_1xx=False)
        assert r100.status == 100
        await c.send(b"2\r\n{}\r\n5;bad[=x\r\nhello\r\n0\r\n\r\n")
        data = await c.read_until_close()
    r = parse_response(data)
    assert_gateway_error(r, 400)
    assert all(q.body != b"{}hello" for q in mock_upstream.requests)


async def test_http_10_and_host_with_port_accepted(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(version="HTTP/1.0", host=f"127.0.0.1:{gateway.port}"))
    assert r.status == 200
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(host="[::1]:80"))
    assert r.status == 200


# --------------------------------------------------------------------------- point 16


async def test_preflight_204_has_no_content_length(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"cors_origins": ["*"]}))
    raw = (
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://app.example\r\n"
        b"Access-Control-Request-Method: POST\r\n\r\n"
    )
    async with await raw_connection(gw.port) as c:
        r = await c.request(raw)
        ok = await c.request(chat_request(method="GET", path="/health"))
    assert r.status == 204 and r.raw_head.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert r.count("content-length") == 0 and r.count("transfer-encoding") == 0
    assert ok.status == 200


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_provider_request_id_kept_as_x_upstream_request_id(gateway: Gateway, mock_upstream: MockUpstream, stream: bool) -> None:
    if stream:
        mock_upstream.enqueue(Raw(STREAMED.replace(b"\r\n\r\n", b"\r\nX-Request-ID: req_up_1\r\n\r\n", 1), then="keep"))
    else:
        mock_upstream.enqueue(Json(body=REAL, headers=[("X-Request-ID", "req_up_1"), ("X-Upstream-Request-ID", "spoof")]))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(headers=[("X-Request-ID", "client-id-1")]))
    assert r.status == 200
    assert r.header("x-request-id") == "client-id-1"
    assert r.values("x-upstream-request-id") == ["req_up_1"]


async def test_anthropic_request_id_kept(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider_type="anthropic"))
    mock_upstream.enqueue(Json(body=b'{"type":"message"}', headers=[("request-id", "req_011abc")]))

    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(path="/v1/messages"))
    assert r.status == 200, r.body
    assert r.header("request-id") == "req_011abc"
    assert r.header("x-upstream-request-id") == "req_011abc"
    assert r.header("x-request-id") not in (None, "req_011abc")
