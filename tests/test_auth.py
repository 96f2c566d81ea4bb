"""Gateway keys (SPEC 3 [[keys]], 4, 5.1)."""

from __future__ import annotations

import pytest
from conftest import (
    GW_KEY,
    Gateway,
    assert_gateway_error,
    assert_wire_invariants,
    chat_request,
    raw_connection,
)
from mock_upstream import MockUpstream

WRONG = "wrong-key-zzzz-98765"


async def test_no_key_401(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(key=None))
    assert_gateway_error(r, 401)
    assert_wire_invariants(r)
    assert mock_upstream.requests == []


@pytest.mark.parametrize(
    "header",
    [
        ("Authorization", f"Bearer {WRONG}"),
        ("x-api-key", WRONG),
        ("Authorization", f"Basic {WRONG}"),
        ("Authorization", WRONG),
        ("Authorization", f"Bearer {GW_KEY}x"),
        ("Authorization", f"Bearer {GW_KEY[:-1]}"),
    ],
)
async def test_wrong_key_401_never_echoed(gateway: Gateway, mock_upstream: MockUpstream, header: tuple[str, str]) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(key=None, headers=[header]))
    assert_gateway_error(r, 401)
    secret = header[1].split()[-1].encode()
    assert secret not in r.raw_head and secret not in r.body
    assert WRONG.encode() not in r.raw_head + r.body
    assert mock_upstream.requests == []


@pytest.mark.parametrize("auth", ["bearer", "x-api-key"])
async def test_good_key_accepted(gateway: Gateway, mock_upstream: MockUpstream, auth: str) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(auth=auth))
    assert r.status == 200
    assert len(mock_upstream.requests) == 1


async def test_bearer_scheme_case_insensitive(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """RFC 9110 §11.1: the auth scheme is case-insensitive."""
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(key=None, headers=[("Authorization", f"bearer {GW_KEY}")]))
    assert r.status == 200


async def test_health_needs_no_key(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    async with await raw_connection(gateway.port) as c:
        r = await c.request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert r.status == 200
    assert r.json() == {"status": "ok"}
    assert (r.header("content-type") or "").startswith("application/json")
    assert_wire_invariants(r)
    assert mock_upstream.requests == []


async def test_401_then_good_request_same_connection(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """An auth error is an ordinary response: the connection stays usable."""
    async with await raw_connection(gateway.port) as c:
        r1 = await c.request(chat_request(key=WRONG))
        r2 = await c.request(chat_request())
    assert (r1.status, r2.status) == (401, 200)


# --------------------------------------------------------------------------- RFC 9110 rows (issue 10.12)


@pytest.mark.parametrize("key", [None, WRONG])
async def test_401_carries_www_authenticate(gateway: Gateway, mock_upstream: MockUpstream, key: str | None) -> None:
    """RFC 9110 §15.5.2: a 401 MUST carry WWW-Authenticate with a challenge."""
    for request in (chat_request(key=key), chat_request(b"", path="/metrics.json", method="GET", key=key)):
        async with await raw_connection(gateway.port) as c:
            r = await c.request(request)
        assert_gateway_error(r, 401)
        assert r.values("www-authenticate") == ['Bearer realm="rawgw"'], r.raw_head


async def test_405_message_agrees_with_allow(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    for path in ("/health", "/metrics.json", "/health/providers"):
        async with await raw_connection(gateway.port) as c:
            r = await c.request(chat_request(b"{}", path=path, method="POST"))
        err = assert_gateway_error(r, 405)
        allowed = [m.strip() for m in (r.header("allow") or "").split(",")]
        assert allowed == ["GET", "HEAD"], r.raw_head
        for method in allowed:
            assert method in err["message"], err
    async with await raw_connection(gateway.port) as c:
        r = await c.request(chat_request(b"", method="GET"))
    err = assert_gateway_error(r, 405)
    assert r.header("allow") == "POST" and "POST" in err["message"]


async def test_per_key_answers_are_not_stored_by_shared_caches(gateway: Gateway, mock_upstream: MockUpstream) -> None:
    """A shared cache must not hand one key's /v1/models or key states to another client."""
    for path in ("/v1/models", "/health/providers", "/metrics.json", "/metrics"):
        async with await raw_connection(gateway.port) as c:
            r = await c.request(chat_request(b"", path=path, method="GET"))
        assert r.status == 200, (path, r.status)
        cc = {t.strip() for t in (r.header("cache-control") or "").split(",")}
        assert "no-store" in cc and "private" in cc, (path, r.raw_head)
        assert len(r.values("cache-control")) == 1
