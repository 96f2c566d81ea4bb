"""Request validation before any upstream work (issue 4.7, SPEC 4) and CORS (issue 4.8,
SPEC 3 cors_origins, README "Rate limits, cache, CORS, workers")."""

from __future__ import annotations

import re

import pytest
from conftest import (
    GW_KEY,
    Gateway,
    StartGateway,
    assert_gateway_error,
    assert_wire_invariants,
    base_config,
    chat_request,
    raw_connection,
)
from mock_upstream import Json, MockUpstream, Sse
from ops_helpers import call, chat_body, raw_call, recorded, sse_chat

# --------------------------------------------------------------------------- validation

MSG = '"messages":[{"role":"user","content":"hi"}]'

# (body, words the error message must contain)
BAD_BODIES = [
    (b'{"model":"m", ' + MSG.encode(), ["JSON"]),  # truncated
    (b"model=m&messages=hi", ["JSON"]),
    (b"", ["JSON"]),
    (b'["model","m"]', ["JSON"]),  # JSON, not an object
    (b'{"messages":[{"role":"user","content":"hi"}]}', ["model"]),
    (b'{"model":42,' + MSG.encode() + b"}", ["model"]),
    (b'{"model":"m"}', ["messages"]),
    (b'{"model":"m","messages":[]}', ["messages"]),
    (b'{"model":"m","messages":"hi"}', ["messages"]),
    (b'{"model":"m","messages":[{"content":"hi"}]}', ["messages[0].role"]),
    (b'{"model":"m","messages":[{"role":"user","content":"a"},{"content":"b"}]}', ["messages[1].role"]),
    (b'{"model":"m","messages":["hi"]}', ["messages[0]"]),
    (b'{"model":"m",' + MSG.encode() + b',"temperature":3}', ["temperature"]),
    (b'{"model":"m",' + MSG.encode() + b',"temperature":-0.1}', ["temperature"]),
    (b'{"model":"m",' + MSG.encode() + b',"temperature":"1"}', ["temperature"]),
    (b'{"model":"m",' + MSG.encode() + b',"top_p":1.5}', ["top_p"]),
    (b'{"model":"m",' + MSG.encode() + b',"n":0}', ["n"]),
    (b'{"model":"m",' + MSG.encode() + b',"n":1.5}', ["n"]),
    (b'{"model":"m",' + MSG.encode() + b',"max_tokens":-1}', ["max_tokens"]),
    (b'{"model":"m",' + MSG.encode() + b',"max_tokens":"5"}', ["max_tokens"]),
    (b'{"model":"m",' + MSG.encode() + b',"max_tokens":true}', ["max_tokens"]),
]


def names(message: str, field: str) -> bool:
    """``field`` appears in ``message`` as a token of its own (``n`` is not the n of
    "invalid"; ``messages[0]`` is not ``messages[0].role``)."""
    return re.search(rf"(?<![\w.\[]){re.escape(field)}(?![\w\[.])", message) is not None


@pytest.fixture
async def plain_gw(start_gateway: StartGateway, mock_upstream: MockUpstream) -> Gateway:
    return await start_gateway(base_config(mock_upstream))


async def test_bad_bodies_get_400_naming_the_field(plain_gw: Gateway, mock_upstream: MockUpstream) -> None:
    """All cases on one keep-alive connection: a 400 for a bad body does not end it."""
    failures = []
    async with await raw_connection(plain_gw.port) as c:
        for body, words in BAD_BODIES:
            r = await c.request(chat_request(body))
            try:
                err = assert_gateway_error(r, 400)
                for w in words:
                    assert names(err["message"], w), (w, err["message"])
            except AssertionError as exc:
                failures.append((body, str(exc)[:200]))
        ok = await c.request(chat_request(chat_body()))
    assert failures == []
    assert ok.status == 200
    await recorded(plain_gw, ok)
    assert len(mock_upstream.requests) == 1  # only the last, valid one


async def test_valid_edge_values_pass(plain_gw: Gateway, mock_upstream: MockUpstream) -> None:
    bodies = [
        chat_body(temperature=0, top_p=1, n=1, max_tokens=1),
        chat_body(temperature=2, top_p=0),
        chat_body(temperature=None, max_tokens=None),
        chat_body(temperature=1.5, future_field={"x": [1, 2]}),
    ]
    for body in bodies:
        r = await call(plain_gw.port, body)
        assert r.status == 200, (body, r.body)
    assert [q.body for q in mock_upstream.requests] == bodies


async def test_messages_endpoint_validated_too(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider_type="anthropic"))
    r = await call(gw.port, b'{"model":"claude-x","max_tokens":10,"messages":[]}', path="/v1/messages")
    err = assert_gateway_error(r, 400)
    assert "messages" in err["message"]
    r = await call(gw.port, b'{"model":"claude-x","max_tokens":0,"messages":[{"role":"user","content":"x"}]}', path="/v1/messages")
    assert "max_tokens" in assert_gateway_error(r, 400)["message"]
    await recorded(gw, r)
    assert mock_upstream.requests == []


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
async def test_unsupported_content_type_415(plain_gw: Gateway, mock_upstream: MockUpstream, ctype: str) -> None:
    body = chat_body()
    data = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {GW_KEY}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    async with await raw_connection(plain_gw.port) as c:
        r = await c.request(data)
        assert_gateway_error(r, 415)
        assert_wire_invariants(r)
        # the refused body (its length is known) was consumed: the connection goes on
        assert r.header("connection") is None, r.raw_head
        await recorded(plain_gw, r)
        assert mock_upstream.requests == []
        r2 = await c.request(chat_request(chat_body()))
        assert r2.status == 200
        assert len(mock_upstream.requests) == 1


async def test_json_content_type_variants_accepted(plain_gw: Gateway, mock_upstream: MockUpstream) -> None:
    body = chat_body()
    for ctype in ("application/json; charset=utf-8", "Application/JSON"):
        data = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {GW_KEY}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        assert (await raw_call(plain_gw.port, data)).status == 200, ctype
    assert len(mock_upstream.requests) == 2


# --------------------------------------------------------------------------- CORS

ALLOW_HEADERS = [
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "http-referer",
    "x-title",
    "x-request-id",
]
ORIGIN = "https://app.example"


def preflight(path: str = "/v1/chat/completions", origin: str = ORIGIN, req_headers: str | None = "authorization,content-type") -> bytes:
    lines = [
        f"OPTIONS {path} HTTP/1.1",
        "Host: gw",
        f"Origin: {origin}",
        "Access-Control-Request-Method: POST",
    ]
    if req_headers:
        lines.append(f"Access-Control-Request-Headers: {req_headers}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


async def test_preflight_answered_without_auth(plain_gw: Gateway, mock_upstream: MockUpstream) -> None:
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/models"):
        r = await raw_call(plain_gw.port, preflight(path), method="OPTIONS")
        assert r.status == 204, (path, r.status, r.body)
        assert_wire_invariants(r)
        assert r.header("access-control-allow-origin") == "*", r.raw_head  # cors_origins = ["*"] (default)
        assert "post" in tokens(r.header("access-control-allow-methods")), r.raw_head
        missing = set(ALLOW_HEADERS) - tokens(r.header("access-control-allow-headers"))
        assert not missing, (path, missing)
    # a preflight is answered by the gateway alone (it has no X-Request-Id, no log line)
    assert mock_upstream.connections == []


async def test_preflight_allow_headers_is_the_fixed_list_not_an_echo(plain_gw: Gateway) -> None:
    """Issue 10.10b: the answer names the headers the gateway accepts, whatever was asked."""
    asked = "authorization, x-evil-probe, content-type"
    r = await raw_call(plain_gw.port, preflight(req_headers=asked), method="OPTIONS")
    plain = await raw_call(plain_gw.port, preflight(req_headers=None), method="OPTIONS")
    assert r.status == plain.status == 204
    allow = tokens(r.header("access-control-allow-headers"))
    assert "x-evil-probe" not in allow, r.raw_head
    assert allow == tokens(plain.header("access-control-allow-headers"))
    assert allow >= set(ALLOW_HEADERS) | {"x-session-id", "openai-beta", "x-stainless-retry-count"}, allow
    assert len(r.values("access-control-allow-headers")) == 1


async def test_allow_origin_on_success_and_errors(plain_gw: Gateway) -> None:
    hdr = [("Origin", ORIGIN)]
    ok = await call(plain_gw.port, chat_body(), headers=hdr)
    unauth = await call(plain_gw.port, chat_body(), headers=hdr, key=None)
    missing = await call(plain_gw.port, b"", path="/nowhere", method="GET", headers=hdr)
    bad = await call(plain_gw.port, b"{", headers=hdr)
    health = await call(plain_gw.port, b"", path="/health", method="GET", headers=hdr, key=None)
    got = [(r.status, r.header("access-control-allow-origin")) for r in (ok, unauth, missing, bad, health)]
    assert got == [(200, "*"), (401, "*"), (404, "*"), (400, "*"), (200, "*")]


async def test_allow_origin_on_stream(plain_gw: Gateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.enqueue(Sse(pieces=sse_chat(["a"])))
    r = await call(plain_gw.port, chat_body(stream=True), headers=[("Origin", ORIGIN)])
    assert r.status == 200 and r.header("access-control-allow-origin") == "*"


async def test_upstream_cors_headers_not_duplicated(plain_gw: Gateway, mock_upstream: MockUpstream) -> None:
    """Providers such as OpenRouter answer with their own Access-Control-Allow-Origin: a
    browser refuses a response with two values, so the client must see exactly one."""
    mock_upstream.enqueue(Json(body={"ok": True}, headers=[("Access-Control-Allow-Origin", "*")]))
    r = await call(plain_gw.port, chat_body(), headers=[("Origin", ORIGIN)])
    assert r.status == 200
    assert r.values("access-control-allow-origin") == ["*"], r.raw_head


async def test_cors_off_with_empty_list(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"cors_origins": []}))
    r = await raw_call(gw.port, preflight(), method="OPTIONS")
    # not special-cased: an OPTIONS without a key is refused like any request
    assert_gateway_error(r, 401)
    hdr = [("Origin", ORIGIN)]
    rs = [
        r,
        await call(gw.port, chat_body(), headers=hdr),
        await call(gw.port, chat_body(), headers=hdr, key=None),
        await call(gw.port, b"", path="/nowhere", method="GET", headers=hdr),
    ]
    assert [x.status for x in rs] == [401, 200, 401, 404]
    for x in rs:
        assert not any(name.startswith("access-control-") for name in x.names()), x.raw_head


async def test_specific_origins_echo_only_listed(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    good, other = "https://good.example", "https://evil.example"
    gw = await start_gateway(base_config(mock_upstream, server={"cors_origins": [good, "https://b.example"]}))
    r = await raw_call(gw.port, preflight(origin=good), method="OPTIONS")
    assert r.status == 204 and r.header("access-control-allow-origin") == good
    assert "origin" in tokens(r.header("vary")), r.raw_head
    r = await call(gw.port, chat_body(), headers=[("Origin", good)])
    assert r.status == 200 and r.header("access-control-allow-origin") == good
    assert "origin" in tokens(r.header("vary")), r.raw_head
    r = await call(gw.port, chat_body(), headers=[("Origin", good)], key=None)
    assert r.status == 401 and r.header("access-control-allow-origin") == good
    for resp in (
        await raw_call(gw.port, preflight(origin=other), method="OPTIONS"),
        await call(gw.port, chat_body(), headers=[("Origin", other)]),
    ):
        assert resp.header("access-control-allow-origin") is None, resp.raw_head
    r = await call(gw.port, chat_body())  # no Origin at all
    assert r.header("access-control-allow-origin") is None
