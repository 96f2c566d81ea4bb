"""The gateway on the wire (SPEC 4, 5.1, 5.4, 6): what the client gets and what the upstream
gets, asserted on raw bytes over real TCP."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from conftest import (
    CHAT_BODY,
    GW_KEY,
    UPSTREAM_KEY,
    Gateway,
    StartGateway,
    assert_wire_invariants,
    base_config,
    chat_request,
    parse_response,
    raw_connection,
    raw_request,
)
from mock_upstream import Json, MockUpstream, Raw, RecordedRequest

UPSTREAM_DATE = "Mon, 01 Jan 2001 00:00:00 GMT"
COMPLETION = (
    b'{"id":"chatcmpl-1",  "object":"chat.completion","model":"m",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"caf\xc3\xa9 \\u00e9"},'
    b'"finish_reason":"stop"}]}'
)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade"}


def assert_no_gateway_secret(req: RecordedRequest) -> None:
    raw = bytes(req.conn.raw_received)
    assert GW_KEY.encode() not in raw, raw[:2000]


# --------------------------------------------------------------------------- client side


async def test_plain_json_body_exact_and_wire_invariants(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(
        Json(
            body=COMPLETION,
            headers=[("Date", UPSTREAM_DATE), ("Server", "upstream-srv/9.9"), ("X-Upstream-Thing", "kept")],
        )
    )
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
    assert r.status == 200
    assert r.body == COMPLETION
    assert r.header("content-length") == str(len(COMPLETION))  # upstream CL kept
    assert r.count("transfer-encoding") == 0
    assert_wire_invariants(r)
    assert len([ln for ln in r.raw_header_lines if ln.lower().startswith(b"date:")]) == 1
    assert len([ln for ln in r.raw_header_lines if ln.lower().startswith(b"server:")]) == 1
    assert b"upstream-srv" not in r.raw_head
    assert r.header("x-upstream-thing") == "kept"
    assert r.header("content-type") == "application/json"


async def test_upstream_duplicate_date_and_server_collapsed(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    body = b'{"ok":true}'
    mock_upstream.enqueue(
        Raw(
            b"HTTP/1.1 200 OK\r\nDate: " + UPSTREAM_DATE.encode() + b"\r\nServer: a\r\n"
            b"Date: Tue, 02 Jan 2001 00:00:00 GMT\r\nServer: b\r\nContent-Type: application/json\r\n"
            b"Content-Length: 11\r\n\r\n" + body,
            then="keep",
        )
    )
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
    assert (r.status, r.body) == (200, body)
    assert_wire_invariants(r)
    assert r.header("content-length") == "11"


async def test_response_hop_by_hop_headers_not_copied(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    body = b'{"hop":"by hop"}'
    mock_upstream.enqueue(
        Raw(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: application/json\r\n"
            b"Connection: X-Foo, keep-alive\r\n"
            b"X-Foo: secret-hop-value\r\n"
            b"Keep-Alive: timeout=5, max=100\r\n"
            b"Proxy-Authenticate: Basic realm=\"up\"\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"Trailer: X-Checksum\r\n"
            b"Upgrade: h2c\r\n"
            b"X-End-To-End: yes\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body,
            then="keep",
        )
    )
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
    assert (r.status, r.body) == (200, body)
    names = r.names()
    for name in ("x-foo", "keep-alive", "proxy-authenticate", "proxy-connection", "trailer", "upgrade"):
        assert name not in names, (name, r.raw_head)
    assert b"secret-hop-value" not in r.raw_head
    for v in r.values("connection"):  # the gateway's own Connection header only
        assert "x-foo" not in v.lower(), r.raw_head
    assert r.header("x-end-to-end") == "yes"
    assert r.header("content-length") == str(len(body))
    assert_wire_invariants(r)


# --------------------------------------------------------------------------- upstream side


async def test_request_hop_by_hop_headers_dropped_end_to_end_kept(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    extra = [
        ("Connection", "keep-alive, X-Bar"),
        ("X-Bar", "hop-value-123"),
        ("Keep-Alive", "timeout=30"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNzd29yZA=="),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("X-Title", "my-app"),
        ("HTTP-Referer", "https://example.test/app"),
        ("User-Agent", "rawgw-tests/1.0"),
        ("anthropic-beta", "tools-2024-04-04"),
        ("X-Custom-E2E", "v1"),
    ]
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(headers=extra))
    assert r.status == 200
    (req,) = mock_upstream.requests
    names = req.header_names()
    for name in ("x-bar", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "upgrade"):
        assert name not in names, (name, req.raw_head)
    for v in req.header_values("connection"):
        assert b"x-bar" not in v.lower(), req.raw_head
    raw = bytes(req.conn.raw_received)
    assert b"hop-value-123" not in raw and b"dXNlcjpwYXNzd29yZA" not in raw
    assert req.header("x-title") == b"my-app"
    assert req.header("http-referer") == b"https://example.test/app"
    assert req.header("user-agent") == b"rawgw-tests/1.0"
    assert req.header("anthropic-beta") == b"tools-2024-04-04"
    assert req.header("x-custom-e2e") == b"v1"
    assert req.body == CHAT_BODY


async def test_request_upgrade_header_not_forwarded(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(headers=[("Connection", "Upgrade"), ("Upgrade", "h2c")]))
    assert r.status == 200, r.raw_head
    (req,) = mock_upstream.requests
    assert "upgrade" not in req.header_names(), req.raw_head
    for v in req.header_values("connection"):
        assert b"upgrade" not in v.lower(), req.raw_head


async def test_upstream_auth_host_body_and_no_gateway_key(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
    assert r.status == 200
    (req,) = mock_upstream.requests
    assert (req.method, req.target) == (b"POST", b"/v1/chat/completions")
    assert req.header_values("authorization") == [b"Bearer " + UPSTREAM_KEY.encode()]
    assert req.header("x-api-key") is None
    assert req.header_values("host") == [f"127.0.0.1:{mock_upstream.port}".encode()]
    assert req.body == CHAT_BODY  # forwarded byte-exact: no model rewrite needed
    cl = req.header("content-length")
    assert cl is None or cl == str(len(CHAT_BODY)).encode()
    assert not (req.header_values("content-length") and req.header_values("transfer-encoding"))
    rid = req.header("x-request-id")
    assert rid and re.fullmatch(rb"[\x21-\x7e]{1,128}", rid)
    assert_no_gateway_secret(req)


async def test_client_x_api_key_never_forwarded(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(auth="x-api-key"))
    assert r.status == 200
    (req,) = mock_upstream.requests
    assert req.header("x-api-key") is None
    assert req.header_values("authorization") == [b"Bearer " + UPSTREAM_KEY.encode()]
    assert_no_gateway_secret(req)


@pytest.mark.parametrize(
    ("base_path", "client_path", "upstream_path"),
    [
        ("/v1", "/v1/chat/completions", "/v1/chat/completions"),
        ("/api/v1", "/v1/chat/completions", "/api/v1/chat/completions"),
        ("/v1", "/chat/completions", "/v1/chat/completions"),
        ("/v1", "/api/v1/chat/completions", "/v1/chat/completions"),
        ("/api/v1", "/v1/embeddings", "/api/v1/embeddings"),
        ("/openai/v1", "/v1/completions", "/openai/v1/completions"),
    ],
)
async def test_upstream_url_joining(
    start_gateway: StartGateway, mock_upstream: MockUpstream, base_path: str, client_path: str, upstream_path: str
) -> None:
    gw = await start_gateway(base_config(mock_upstream, base_path=base_path))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(path=client_path))
    assert r.status == 200, r.body
    (req,) = mock_upstream.requests
    assert req.target == upstream_path.encode()


async def test_other_v1_path_forwarded_with_query(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Json(body=b'{"object":"list","data":[]}'))
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(path="/v1/files?purpose=batch&limit=2", method="GET"), timeout=5)
    assert (r.status, r.body) == (200, b'{"object":"list","data":[]}')
    (req,) = mock_upstream.requests
    assert (req.method, req.target) == (b"GET", b"/v1/files?purpose=batch&limit=2")
    assert req.header_values("authorization") == [b"Bearer " + UPSTREAM_KEY.encode()]


async def test_routed_response_names_provider_and_attempts(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request())
    assert r.status == 200
    assert r.header("x-rawgw-provider") == "mock"
    assert r.header("x-rawgw-attempts") == "1"


ANTHROPIC_BODY = b'{"model":"claude-test","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}'


@pytest.mark.parametrize("client_auth", ["x-api-key", "bearer"])
async def test_anthropic_upstream_auth_and_default_version(
    start_gateway: StartGateway, mock_upstream: MockUpstream, client_auth: str
) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider_type="anthropic"))
    mock_upstream.enqueue(Json(body=b'{"type":"message","content":[]}'))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(ANTHROPIC_BODY, path="/v1/messages", auth=client_auth))
    assert (r.status, r.body) == (200, b'{"type":"message","content":[]}')
    (req,) = mock_upstream.requests
    assert req.target == b"/v1/messages"
    assert req.header_values("x-api-key") == [UPSTREAM_KEY.encode()]
    assert req.header_values("anthropic-version") == [b"2023-06-01"]
    assert req.header("authorization") is None
    assert req.body == ANTHROPIC_BODY
    assert_no_gateway_secret(req)


async def test_anthropic_client_version_kept(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider_type="anthropic"))
    async with await raw_connection(gw.port) as c:
        r = await c.request(
            chat_request(
                ANTHROPIC_BODY,
                path="/v1/messages",
                auth="x-api-key",
                headers=[("anthropic-version", "2024-10-22"), ("anthropic-beta", "prompt-caching-2024-07-31")],
            )
        )
    assert r.status == 200
    (req,) = mock_upstream.requests
    assert req.header_values("anthropic-version") == [b"2024-10-22"]
    assert req.header_values("anthropic-beta") == [b"prompt-caching-2024-07-31"]
    assert req.header_values("x-api-key") == [UPSTREAM_KEY.encode()]


# --------------------------------------------------------------------------- X-Request-ID


@pytest.mark.parametrize("rid", ["abc-123_XYZ", "x", "!" + "a" * 126 + "~", "req:{1}/[2]"])
async def test_request_id_kept_when_valid(gateway: Gateway, mock_upstream: MockUpstream, rid: str) -> None:
    assert 1 <= len(rid) <= 128
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(headers=[("X-Request-ID", rid)]))
    assert r.status == 200
    assert r.values("x-request-id") == [rid]
    (req,) = mock_upstream.requests
    assert req.header_values("x-request-id") == [rid.encode()]


@pytest.mark.parametrize("rid", ["a" * 129, "a" * 200, "has space", "tab\there", "caf\xe9"])
async def test_request_id_replaced_when_invalid(gateway: Gateway, mock_upstream: MockUpstream, rid: str) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(headers=[("X-Request-ID", rid)]))
    assert r.status == 200, r.raw_head
    got = r.values("x-request-id")
    assert len(got) == 1 and got[0] != rid
    assert re.fullmatch(r"[\x21-\x7e]{1,128}", got[0]), got
    (req,) = mock_upstream.requests
    assert req.header_values("x-request-id") == [got[0].encode()]
    assert rid.encode("latin-1") not in bytes(req.conn.raw_received)


async def test_request_id_generated_and_unique(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r1 = await c.request(chat_request())
        r2 = await c.request(chat_request())
    ids = [r1.header("x-request-id"), r2.header("x-request-id")]
    assert all(ids) and ids[0] != ids[1]
    assert [q.header("x-request-id") for q in mock_upstream.requests] == [i.encode() for i in ids if i]


async def test_request_id_in_access_log_without_secrets(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    rid = "log-me-req-0001"
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(headers=[("X-Request-ID", rid)]))
    assert r.status == 200
    log = gateway.logs_dir / "access.jsonl"
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if rid in text:
            break
        await asyncio.sleep(0.05)
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(rid in json.dumps(line) for line in lines), text
    assert GW_KEY not in text and UPSTREAM_KEY not in text


# --------------------------------------------------------------------------- connections


async def test_keep_alive_two_requests_one_connection(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Json(body=b'{"n":1}'), Json(body=b'{"n":2}'))
    second = b'{"model":"m","messages":[{"role":"user","content":"2nd"}],"second":true}'
    async with await raw_connection(gateway.port) as c:
        r1 = await c.request(chat_request())
        r2 = await c.request(chat_request(second))
        assert not c.eof
    assert (r1.status, r1.body) == (200, b"{\"n\":1}"), r1.body
    assert (r2.status, r2.body) == (200, b"{\"n\":2}"), r2.body
    assert [q.body for q in mock_upstream.requests] == [CHAT_BODY, second]
    for r in (r1, r2):
        assert_wire_invariants(r)


async def test_upstream_connection_reused(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        for _ in range(3):
            assert (await c.request(chat_request())).status == 200
    assert len(mock_upstream.requests) == 3
    assert len(mock_upstream.connections) == 1, "upstream connections are pooled (SPEC 6)"


async def test_pipelined_requests_answered_in_order(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    def handler(req: RecordedRequest) -> Json:
        n = req.json()["n"]
        # the first answer is the slowest: order must still follow the requests
        return Json(body=b'{"r":%d}' % n, delay_before=0.3 if n == 1 else 0.0)

    mock_upstream.handler = handler
    reqs = b"".join(
        chat_request(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"n":%d}' % n) for n in (1, 2, 3)
    )
    async with await raw_connection(gateway.port) as c:
        await c.send(reqs)  # one write
        rs = [await c.read_response() for _ in range(3)]
    assert [(r.status, r.body) for r in rs] == [(200, b'{"r":1}'), (200, b'{"r":2}'), (200, b'{"r":3}')]


async def test_http10_client(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Json(body=COMPLETION))
    data = await raw_request(gateway.port, chat_request(version="HTTP/1.0"), read_until_close=True, timeout=5)
    r = parse_response(data, eof=True)
    assert r.status == 200
    assert r.count("transfer-encoding") == 0, r.raw_head  # HTTP/1.0 has no chunked
    assert r.body == COMPLETION and r.complete
    if r.content_length is not None:
        assert r.content_length == len(COMPLETION)
    assert_wire_invariants(r)


async def test_expect_100_continue(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    full = chat_request(headers=[("Expect", "100-continue")])
    head, body = full.split(b"\r\n\r\n", 1)
    async with await raw_connection(gateway.port) as c:
        await c.send(head + b"\r\n\r\n")
        r100 = await c.read_response(timeout=3, skip_1xx=False)
        assert r100.status == 100 and r100.raw_head.startswith(b"HTTP/1.1 100"), r100.raw_head
        assert mock_upstream.requests == []
        await c.send(body)
        r = await c.read_response()
    assert (r.status, r.body) == (200, mock_upstream.default.body_bytes())  # type: ignore[union-attr]
    (req,) = mock_upstream.requests
    assert req.body == CHAT_BODY


async def test_chunked_request_body_forwarded(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    body = CHAT_BODY
    parts = [body[:7], body[7:8], body[8:40], body[40:]]
    chunks = b"".join(
        (b"%X;ext=v\r\n" % len(p) if i == 0 else b"%X\r\n" % len(p)) + p + b"\r\n" for i, p in enumerate(parts)
    )
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + GW_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    async with await raw_connection(gateway.port) as c:
        await c.send(head + chunks[:20])
        await asyncio.sleep(0.05)
        await c.send(chunks[20:] + b"0\r\n\r\n")
        r = await c.read_response()
    assert r.status == 200, r.body
    (req,) = mock_upstream.requests
    assert req.body == body
    assert not (req.header_values("content-length") and req.header_values("transfer-encoding"))
    if req.header_values("content-length"):
        assert req.header_values("content-length") == [str(len(body)).encode()]
    else:
        assert req.chunked


async def test_head_line_with_ows_and_mixed_case_served(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """Legal forms (SPEC 8): optional whitespace around values, transfer-coding in any case."""
    body = CHAT_BODY
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization:   Bearer " + GW_KEY.encode() + b" \t\r\n"
        b"Content-Type:\tapplication/json\r\n"
        b"Transfer-Encoding: Chunked\r\n\r\n"
        + b"%x;a=b;c\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    )
    async with await raw_connection(gateway.port) as c:
        r = await c.request(raw)
    assert r.status == 200, r.body
    assert mock_upstream.requests[0].body == body


async def test_absolute_form_naming_the_gateway_served(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    raw = chat_request(path=f"http://127.0.0.1:{gateway.port}/v1/chat/completions", host=f"127.0.0.1:{gateway.port}")
    async with await raw_connection(gateway.port) as c:
        r = await c.request(raw)
    assert r.status == 200, r.body
    assert mock_upstream.requests[0].target == b"/v1/chat/completions"


async def test_health_and_error_responses_carry_wire_invariants(gateway: Gateway) -> None:
    async with await raw_connection(gateway.port) as c:
        h = await c.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        e = await c.request(chat_request(key=None))
    assert h.status == 200 and e.status == 401
    for r in (h, e):
        assert_wire_invariants(r)
        assert not ({k for k, _ in r.headers} & (HOP_BY_HOP - {"connection", "transfer-encoding"}))
