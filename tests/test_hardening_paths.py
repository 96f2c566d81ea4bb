"""Paths and headers (issue 7 §1 "Paths and headers"): escapes from a provider's base
path that test_routing_endpoints.py does not try yet (encoded backslashes, encoded
leading slashes, /api/v1 and /v1 passthrough forms, NUL), request ids carrying CR/LF,
client model names never written into a response header, and strict head checks on
every pipelined request, not only the first of a read."""

from __future__ import annotations

import asyncio

import pytest
from conftest import (
    CHAT_BODY,
    GW_KEY,
    StartGateway,
    assert_gateway_error,
    assert_wire_invariants,
    base_config,
    chat_request,
    merge,
    parse_response,
    parse_responses,
    raw_connection,
)
from mock_upstream import MockUpstream

# Not in test_routing_endpoints.ESCAPES (which has ../, %2e%2e/, %2E%2E/, .%2e, \\, //).
NEW_ESCAPES = [
    "/p2/%5c..%5cadmin",
    "/p2/..%5cadmin",
    "/p2/%5C%2e%2e%5Cadmin",
    "/p2/%5cadmin",
    "/p2/%2fadmin",
    "/p2/%2F%2Fevil.example/x",
    "/p2/%2e%2e",
    "/p2/a/%2e%2e%2f%2e%2e%2fadmin",
    "/p2/./admin",
    "/p2/%2e/admin",
    "/p2/a%00/admin",
    "/v1/..%5cadmin",
    "/v1//evil.example/x",
    "/v1/%2f%2fevil.example/x",
    "/v1/a/%2e%2e/%2e%2e/x",
    "/api/v1/../admin",
    "/api/v1/%2e%2e/admin",
    "/api/v1/%5c%5cevil.example/x",
]


async def test_more_path_escapes_never_forwarded(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider_name="p2"))
    wrong = []
    for path in NEW_ESCAPES:
        for method in ("GET", "POST"):
            body = b"" if method == "GET" else CHAT_BODY
            async with await raw_connection(gw.port) as c:
                r = await c.request(chat_request(body, path=path, method=method), timeout=5)
            if r.status != 400:
                wrong.append((method, path, r.status, r.header("x-rawgw-provider")))
            else:
                assert_gateway_error(r, 400)
    # protocol-relative and backslash request targets: refused or unknown, never forwarded
    for target in ("//evil.example/v1/chat/completions", "/\\evil.example/v1/models", "//127.0.0.1/v1/models"):
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(CHAT_BODY, path=target), timeout=5)
        if r.status not in (400, 404):
            wrong.append(("POST", target, r.status, r.header("x-rawgw-provider")))
    await asyncio.sleep(0.15)
    assert wrong == []
    assert mock_upstream.requests == [] and mock_upstream.connections == []
    # the clean forms through the same provider still work
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(b"", path="/p2/models", method="GET"))
    assert r.status == 200 and mock_upstream.requests[0].target == b"/v1/models"


# --------------------------------------------------------------------------- X-Request-ID


REFUSED_IDS = {
    "bare_cr": b"X-Request-ID: abc\rX-Injected: 1\r\n",
    "bare_lf": b"X-Request-ID: abc\nX-Injected: 1\r\n",
    "folded": b"X-Request-ID: abc\r\n X-Injected: 1\r\n",
    "nul": b"X-Request-ID: abc\x00X-Injected: 1\r\n",
    "del": b"X-Request-ID: abc\x7fX-Injected\r\n",  # control character (issue 10 point 11)
}
REPLACED_IDS = {
    "nel": b"X-Request-ID: abc\xc2\x85X-Injected: 1\r\n",
    "line_separator": b"X-Request-ID: abc\xe2\x80\xa8X-Injected: 1\r\n",
}


def _with_header(extra: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
        + GW_KEY.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % len(CHAT_BODY)
        + extra
        + b"\r\n"
        + CHAT_BODY
    )


async def test_request_id_cannot_inject_header_lines(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    for name, line in REFUSED_IDS.items():
        async with await raw_connection(gw.port) as c:
            await c.send(_with_header(line))
            data = await c.read_until_close(timeout=5)
        r = parse_response(data, eof=True)
        assert_gateway_error(r, 400)
        assert b"injected" not in r.raw_head.lower(), (name, r.raw_head)
        assert r.count("x-injected") == 0 and r.count("x-request-id") <= 1, name
    assert mock_upstream.requests == []
    for name, line in REPLACED_IDS.items():
        async with await raw_connection(gw.port) as c:
            r = await c.request(_with_header(line))
        assert r.status == 200, (name, r.body)
        rid = r.header("x-request-id")
        # a fresh id replaces it (a random hex id may contain "abc" by chance: check the start)
        assert rid is not None and "njected" not in rid and not rid.startswith("abc"), (name, rid)
        assert b"injected" not in r.raw_head.lower(), (name, r.raw_head)
        req = mock_upstream.requests[-1]
        assert req.header_values("x-request-id") == [rid.encode()], name
        assert "x-injected" not in req.header_names(), name
    # percent-encoded CR/LF are visible ASCII: kept verbatim, and still only one line
    literal = "abc%0d%0aX-Injected:%201"
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(headers=[("X-Request-ID", literal)]))
    assert r.status == 200 and r.values("x-request-id") == [literal]
    assert r.count("x-injected") == 0


# --------------------------------------------------------------------------- model names


ODD_MODELS = {
    "long": "m" * 60_000,
    "crlf": "m\r\nX-Evil: 1",
    "nul_and_controls": "m\u0000\u0007\u001b[31m",
    "unicode_separators": "m\u2028\u0085X-Evil: 2",
    "quote_and_backslash": 'm"\\X-Evil: 3',
}


@pytest.mark.parametrize("served", [True, False], ids=["routed", "no_provider_404"])
async def test_model_names_never_reach_a_response_header(start_gateway: StartGateway, mock_upstream: MockUpstream, served: bool) -> None:
    import json

    cfg = base_config(mock_upstream)
    if not served:
        cfg = merge(cfg, {"providers": {"mock": {"models": ["gpt-*"]}}})
    gw = await start_gateway(cfg)
    for name, model in ODD_MODELS.items():
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]}).encode()
        async with await raw_connection(gw.port, timeout=5) as c:
            r = await c.request(chat_request(body), timeout=5)
        if served:
            assert r.status == 200, (name, r.status, r.body[:200])
            assert mock_upstream.requests[-1].json()["model"] == model  # forwarded as sent
        else:
            assert_gateway_error(r, 404)
        assert_wire_invariants(r)
        head = r.raw_head.lower()
        assert b"x-evil" not in head and b"\x1b" not in head and b"\x00" not in head, (name, r.raw_head[:500])
        assert len(r.raw_head) < 2048, (name, len(r.raw_head))
        assert all(model[:20] not in v for _, v in r.headers if len(model) > 3), name
    if not served:
        assert mock_upstream.requests == []


# --------------------------------------------------------------------------- pipelined strictness


PIPELINED_BAD = {
    "bare_lf": b"POST /v1/chat/completions HTTP/1.1\nHost: a\nAuthorization: Bearer "
    + GW_KEY.encode()
    + b"\nContent-Type: application/json\nContent-Length: %d\n\n" % len(CHAT_BODY)
    + CHAT_BODY,
    "obs_fold": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
    + GW_KEY.encode()
    + b"\r\nX-Folded: a\r\n b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(CHAT_BODY)
    + CHAT_BODY,
}
FIRST = {
    "local": b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n",
    "refused_401": b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n",
}


async def test_strict_head_checks_apply_to_pipelined_requests(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """SPEC 8: bare LF and obs-fold are refused and never forwarded — also when the
    request is the second of a read and the first was answered at once by the gateway
    (a local endpoint, or a 401)."""
    gw = await start_gateway(base_config(mock_upstream))
    wrong = []
    for first, first_bytes in FIRST.items():
        for bad, bad_bytes in PIPELINED_BAD.items():
            n0 = len(mock_upstream.requests)
            async with await raw_connection(gw.port) as c:
                await c.send(first_bytes + bad_bytes)
                try:
                    data = await c.read_until_close(timeout=1.5)
                except TimeoutError:
                    data = bytes(c.received)
            await asyncio.sleep(0.05)
            statuses = [r.status for r in parse_responses(data)]
            forwarded = [q.raw_head for q in mock_upstream.requests[n0:]]
            if statuses != [200 if first == "local" else 401, 400] or forwarded or not c.eof:
                wrong.append((first, bad, statuses, "closed" if c.eof else "kept open", forwarded))
    assert wrong == [], "\n".join(map(repr, wrong))
