"""rawgw.http.h11compat uses h11 private API; these fail loudly if h11 changes it."""

from __future__ import annotations

import h11
import pytest

from rawgw.http.h11compat import full_items, plain_headers, replace_headers, replace_target, trusted_request, trusted_response


def test_parsed_flag_skips_header_validation() -> None:
    # A value h11 would refuse when validating proves the flag still skips validation.
    bad = [(b"x y", b"v")]  # a space is not a token character
    with pytest.raises(h11.LocalProtocolError):
        h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"h")] + bad)
    req = trusted_request(b"GET", b"/", [(b"host", b"h")] + bad)
    assert req.headers[1] == (b"x y", b"v")
    resp = trusted_response(200, bad, b"OK")
    assert resp.reason == b"OK" and resp.status_code == 200


def test_parsed_request_still_checks_framing() -> None:
    with pytest.raises(h11.LocalProtocolError):
        trusted_request(b"POST", b"/", [(b"host", b"h"), (b"content-length", b"1"), (b"content-length", b"2")])


def test_full_items_is_the_backing_list() -> None:
    req = h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"h"), (b"X-A", b"1")])
    items = getattr(req.headers, "_full_items", None)
    assert items is not None, "h11 dropped Headers._full_items: plain_headers falls back to slow iteration"
    assert [tuple(i) for i in items] == [(b"Host", b"host", b"h"), (b"X-A", b"x-a", b"1")]
    assert plain_headers(req.headers) == [(b"host", b"h"), (b"x-a", b"1")]


def test_replace_headers_and_target_on_a_parsed_request() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET http://h/x?y HTTP/1.1\r\nHost: h\r\nX_A: 1\r\nX-B: 2\r\n\r\n")
    req = conn.next_event()
    assert isinstance(req, h11.Request)
    items = full_items(req)
    assert [i[1] for i in items] == [b"host", b"x_a", b"x-b"]
    replace_headers(req, [i for i in items if b"_" not in i[1]])
    replace_target(req, b"/x?y")
    assert list(req.headers) == [(b"host", b"h"), (b"x-b", b"2")]
    assert req.headers.raw_items() == [(b"Host", b"h"), (b"X-B", b"2")]
    assert req.target == b"/x?y"


def test_rawgw_does_not_patch_h11() -> None:
    """Strict chunk lines are rawgw's own (ChunkLines): importing rawgw leaves h11 as it is.

    The chunk-size limit h11 ships (20 hex digits, anything after ';') is why
    ChunkLines exists; if h11 ever tightens it, this says so.
    """
    import h11._readers as readers

    import rawgw.http.strict
    import rawgw.server.connection  # noqa: F401

    assert b"{1,20}" in readers.chunk_header_re.pattern, readers.chunk_header_re.pattern
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005;x[\r\nhello\r\n0\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert conn.next_event() == h11.Data(data=b"hello", chunk_start=True, chunk_end=True)


def _head_bytes(conn_cls: type[h11.Connection], request: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    conn = conn_cls(h11.SERVER)
    conn.receive_data(request)
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            continue
        if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
            break
    return conn.send(h11.Response(status_code=status, headers=headers, reason=b"R")) or b""


_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]
_HEADS = [
    [(b"Content-Type", b"text/event-stream"), (b"X-A", b"1")],
    [(b"Content-Length", b"5"), (b"X-A", b"1")],
    [(b"X-A", b"1"), (b"Transfer-Encoding", b"chunked"), (b"X-B", b"2")],
    [(b"Connection", b"keep-alive, Foo"), (b"X-A", b"1")],
    [(b"X-A", b"1"), (b"connection", b"close"), (b"Content-Length", b"0")],
    [(b"Transfer-Encoding", b"chunked"), (b"Connection", b"Upgrade")],
]


@pytest.mark.parametrize("request_bytes", _REQUESTS)
@pytest.mark.parametrize("status", [200, 204, 304, 404])
@pytest.mark.parametrize("headers", _HEADS)
def test_server_connection_writes_what_h11_writes(request_bytes: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    """ServerConnection's clean-up (no second validation pass) equals h11's, byte for byte."""
    from rawgw.http.h11compat import ServerConnection

    if status in (204, 304) and any(n.lower() == b"transfer-encoding" for n, _ in headers):
        return  # h11 refuses these itself, before the clean-up
    ours = _head_bytes(ServerConnection, request_bytes, status, headers)
    assert ours == _head_bytes(h11.Connection, request_bytes, status, headers)


def test_server_connection_error_answer_without_a_request() -> None:
    """An answer to a request h11 could not parse (their version unknown): closed, unframed."""
    from rawgw.http.h11compat import ServerConnection

    outs = []
    for cls in (ServerConnection, h11.Connection):
        conn = cls(h11.SERVER)
        conn.receive_data(b"GARBAGE\r\n\r\n")
        with pytest.raises(h11.RemoteProtocolError):
            conn.next_event()
        outs.append(conn.send(h11.Response(status_code=400, headers=[(b"X-A", b"1")], reason=b"Bad")))
    assert outs[0] == outs[1]
    assert b"Connection: close" in outs[0]


def test_server_connection_skips_the_second_validation_pass() -> None:
    """The point of it: a trusted head is not regex-checked again on send."""
    from rawgw.http.h11compat import ServerConnection

    conn = ServerConnection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    conn.next_event()
    out = conn.send(trusted_response(200, [(b"x y", b"v"), (b"transfer-encoding", b"chunked")], b"OK"))
    assert out is not None and b"x y: v\r\n" in out
    plain = h11.Connection(h11.SERVER)
    plain.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    plain.next_event()
    with pytest.raises(h11.LocalProtocolError):
        plain.send(trusted_response(200, [(b"x y", b"v"), (b"transfer-encoding", b"chunked")], b"OK"))
