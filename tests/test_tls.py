"""TLS to the upstream verifies certificates against the system store (SPEC 6); tests make
the gateway trust a trustme CA through SSL_CERT_FILE."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from conftest import (
    CHAT_BODY,
    UPSTREAM_KEY,
    StartGateway,
    assert_gateway_error,
    base_config,
    chat_request,
    raw_connection,
)
from mock_upstream import Json, MockUpstream, Sse


async def test_tls_upstream_trusted(
    start_gateway: StartGateway, mock_upstream_tls: MockUpstream, ca_pem: Path
) -> None:
    assert mock_upstream_tls.origin.startswith("https://127.0.0.1:")
    gw = await start_gateway(base_config(mock_upstream_tls), env={"SSL_CERT_FILE": str(ca_pem)})
    mock_upstream_tls.enqueue(
        Json(body=b'{"tls":true}'), Sse(pieces=[b"data: a\n\n", b"data: [DONE]\n\n"], delay=0.05)
    )
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(), timeout=8)
        r2 = await c.request(chat_request(), timeout=8)
    assert (r.status, r.body) == (200, b'{"tls":true}')
    assert (r2.status, r2.body) == (200, b"data: a\n\ndata: [DONE]\n\n")
    req = mock_upstream_tls.requests[0]
    assert req.body == CHAT_BODY
    assert req.header_values("authorization") == [b"Bearer " + UPSTREAM_KEY.encode()]
    assert req.header_values("host") == [f"127.0.0.1:{mock_upstream_tls.port}".encode()]


async def test_tls_upstream_untrusted_502(
    start_gateway: StartGateway, mock_upstream_tls: MockUpstream, other_ca_pem: Path
) -> None:
    gw = await start_gateway(base_config(mock_upstream_tls), env={"SSL_CERT_FILE": str(other_ca_pem)})
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(), timeout=8)
    err = assert_gateway_error(r, 502)
    msg = err["message"].lower()
    assert "certificate" in msg and "verif" in msg, err
    assert mock_upstream_tls.requests == []


async def test_tls_hostname_checked(
    start_gateway: StartGateway, upstream_ssl_context: ssl.SSLContext, ca_pem: Path
) -> None:
    """A trusted certificate for 127.0.0.1/localhost does not cover 127.0.0.2 (still
    loopback on Linux): the name is checked, not only the chain."""
    try:
        mock = await MockUpstream.start(ssl=upstream_ssl_context, host="127.0.0.2")
    except OSError:
        pytest.skip("cannot bind 127.0.0.2")
    try:
        gw = await start_gateway(base_config(mock), env={"SSL_CERT_FILE": str(ca_pem)})
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(), timeout=8)
        assert_gateway_error(r, 502)
        assert mock.requests == []
    finally:
        await mock.close()
