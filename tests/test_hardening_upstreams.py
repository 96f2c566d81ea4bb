"""Broken upstreams not covered by test_failures.py / test_tls.py (issue 7 §2): a real
TCP half-close mid-head and mid-body, a head that drips one byte at a time, pooled
connections the upstream closed (or wrote to) while idle, the idle reaper, and TLS
failures that must name their cause (wrong host, expired, not TLS at all)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from pathlib import Path

import pytest
import trustme
from conftest import (
    StartGateway,
    assert_gateway_error,
    assert_wire_invariants,
    base_config,
    chat_request,
    parse_response,
    raw_connection,
)
from hardening_helpers import stream_body
from mock_upstream import Json, MockUpstream, Raw

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def json_response(body: bytes) -> bytes:
    return OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


# --------------------------------------------------------------------------- half-close


def half_close(up: MockUpstream, first: bytes, rest: bytes = json_response(b'{"fresh":true}')) -> None:
    """First request: write ``first``, then FIN (write_eof) while still reading; every
    later one is answered ``rest`` on a connection that stays open."""
    up.enqueue(Raw(first, then="half_close"))
    up.default = Raw(rest, then="keep")


@pytest.mark.parametrize("kind", ["content_length", "chunked_stream"])
async def test_upstream_half_close_mid_body_truncates_visibly(start_gateway: StartGateway, mock_upstream: MockUpstream, kind: str) -> None:
    if kind == "content_length":
        first = OK_HEAD + b"Content-Length: 100\r\n\r\n" + b'{"id":"partial",'
        body = chat_request()
    else:
        first = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
        body = chat_request(stream_body())
    up = mock_upstream
    half_close(up, first)
    gw = await start_gateway(base_config(up))
    async with await raw_connection(gw.port) as c:
        await c.send(body)
        data = await c.read_until_close(timeout=5)
    r = parse_response(data, eof=True)
    assert r.status == 200
    assert not r.complete, "a half-closed upstream body must not look complete"
    if kind == "content_length":
        assert r.header("content-length") == "100" and r.body == b'{"id":"partial",'
    else:
        assert r.chunked and r.body == b"data: 1\n\n" and not data.endswith(b"0\r\n\r\n")
    # the gateway closed its side of that upstream connection (never pooled)
    rec = up.connections[0]
    t_closed = await up.wait_peer_closed(rec, timeout=2)
    assert rec.half_closed_at is not None and t_closed - rec.half_closed_at < 1.0
    # the next request goes to a new upstream connection and is served whole
    async with await raw_connection(gw.port) as c:
        r2 = await c.request(chat_request())
    assert (r2.status, r2.body) == (200, b'{"fresh":true}')
    assert len(up.connections) == 2


async def test_upstream_half_close_mid_head_is_502_with_nothing_forwarded(
    start_gateway: StartGateway, mock_upstream: MockUpstream
) -> None:
    half_close(mock_upstream, b"HTTP/1.1 200 OK\r\nX-Leak: SECRT\r\nContent-Le")
    gw = await start_gateway(base_config(mock_upstream))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(), timeout=5)
    assert_gateway_error(r, 502)
    assert_wire_invariants(r)
    assert b"SECRT" not in r.raw_head + r.body
    await mock_upstream.wait_peer_closed(mock_upstream.connections[0], timeout=2)


# --------------------------------------------------------------------------- slow drip


@pytest.mark.parametrize("which", ["first_byte_timeout", "request_timeout"])
async def test_head_dripping_one_byte_at_a_time_is_cut_by_the_head_deadline(
    start_gateway: StartGateway, mock_upstream: MockUpstream, which: str
) -> None:
    """Bytes trickling in do not re-arm the head timer: a head that takes 8 s to arrive
    gets 504 after the 1 s first-byte (or request) deadline, not never."""
    if which == "first_byte_timeout":
        cfg = base_config(mock_upstream, provider={"first_byte_timeout_s": 1, "read_timeout_s": 30})
    else:
        cfg = base_config(mock_upstream, server={"request_timeout_s": 1}, provider={"first_byte_timeout_s": 30, "read_timeout_s": 30})
    gw = await start_gateway(cfg)
    head = json_response(b'{"late":true}')
    mock_upstream.enqueue(Raw([bytes([b]) for b in head], delay=0.2, then="hang"))
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request())
        t0 = time.monotonic()
        r = await c.read_response(timeout=6)
        took = time.monotonic() - t0
    assert_gateway_error(r, 504)
    assert 0.8 <= took <= 2.0, took
    assert b"late" not in r.body
    (req,) = mock_upstream.requests
    closed = await mock_upstream.wait_peer_closed(req.conn, timeout=2)
    assert closed - t0 < took + 0.5
    assert 3 <= len(req.pieces_sent_at) <= 12, len(req.pieces_sent_at)  # it was dripping, and was stopped


# --------------------------------------------------------------------------- pooled connections


@pytest.mark.parametrize("how", ["fin_right_after", "fin_while_idle", "bytes_while_idle"])
async def test_dead_pooled_connection_is_never_reused(start_gateway: StartGateway, mock_upstream: MockUpstream, how: str) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    first = json_response(b'{"n":1}')  # no Connection: close: looks reusable
    if how == "fin_right_after":
        mock_upstream.enqueue(Raw(first, then="close"))
    elif how == "fin_while_idle":
        mock_upstream.enqueue(Raw([first, b""], delay=0.3, then="close"))
    else:
        stale = b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"STALE"'
        mock_upstream.enqueue(Raw([first, stale], delay=0.2, then="hang"))
    mock_upstream.default = Json(body=b'{"n":2}')
    async with await raw_connection(gw.port) as c:
        r1 = await c.request(chat_request())
        assert (r1.status, r1.body) == (200, b'{"n":1}')
        await asyncio.sleep(0.1 if how == "fin_right_after" else 0.6)
        r2 = await c.request(chat_request())
    assert (r2.status, r2.body) == (200, b'{"n":2}'), (r2.status, r2.body)
    assert r2.header("x-rawgw-attempts") == "1", "no attempt may be wasted on the dead connection"
    first_conn, second_conn = mock_upstream.requests[0].conn, mock_upstream.requests[1].conn
    assert second_conn is not first_conn
    assert first_conn.requests == [mock_upstream.requests[0]]
    if how == "bytes_while_idle":
        await mock_upstream.wait_peer_closed(first_conn, timeout=2)


async def test_idle_pooled_connection_reaped_after_pool_idle_s(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider={"pool_idle_s": 0.5}))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request())
        t0 = time.monotonic()
        assert r.status == 200
        conn = mock_upstream.requests[0].conn
        closed = await mock_upstream.wait_peer_closed(conn, timeout=3)
        assert 0.3 <= closed - t0 <= 2.0, closed - t0
        r2 = await c.request(chat_request())
    assert r2.status == 200 and r2.header("x-rawgw-attempts") == "1"
    assert mock_upstream.requests[1].conn is not conn


# --------------------------------------------------------------------------- TLS


async def _tls_mock(ca: trustme.CA, *identities: str, **kw: object) -> MockUpstream:
    cert = ca.issue_cert(*identities, **kw)  # type: ignore[arg-type]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return await MockUpstream.start(ssl=ctx)


async def test_tls_certificate_for_another_host_is_502_naming_the_host(
    start_gateway: StartGateway, tls_ca: trustme.CA, ca_pem: Path
) -> None:
    mock = await _tls_mock(tls_ca, "other.example")
    try:
        gw = await start_gateway(base_config(mock), env={"SSL_CERT_FILE": str(ca_pem)})
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(), timeout=8)
        err = assert_gateway_error(r, 502)
        msg = err["message"].lower()
        assert "127.0.0.1" in msg and ("hostname" in msg or "mismatch" in msg or "not valid for" in msg), err
        assert mock.requests == []
    finally:
        await mock.close()


async def test_tls_expired_certificate_is_502_saying_expired(start_gateway: StartGateway, tls_ca: trustme.CA, ca_pem: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    mock = await _tls_mock(
        tls_ca,
        "127.0.0.1",
        "localhost",
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    try:
        gw = await start_gateway(base_config(mock), env={"SSL_CERT_FILE": str(ca_pem)})
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(), timeout=8)
        err = assert_gateway_error(r, 502)
        assert "expired" in err["message"].lower(), err
        assert mock.requests == []
    finally:
        await mock.close()


async def test_tls_self_signed_certificate_is_502_saying_self_signed(
    start_gateway: StartGateway, tmp_path: Path, other_ca_pem: Path
) -> None:
    """The server presents a self-signed certificate (a CA certificate used as leaf)."""
    own = trustme.CA()
    cert, key = tmp_path / "self.pem", tmp_path / "self.key"
    own.cert_pem.write_to_path(str(cert))
    own.private_key_pem.write_to_path(str(key))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    mock = await MockUpstream.start(ssl=ctx)
    try:
        gw = await start_gateway(base_config(mock), env={"SSL_CERT_FILE": str(other_ca_pem)})
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(), timeout=8)
        err = assert_gateway_error(r, 502)
        assert "self-signed" in err["message"].lower() or "self signed" in err["message"].lower(), err
        assert mock.requests == []
    finally:
        await mock.close()
