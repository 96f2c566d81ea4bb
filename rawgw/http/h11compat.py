"""Every use of h11's private API, in one place (tests/test_h11compat.py fails loudly
if h11 changes any of them).

- ``h11.Request/Response(..., _parsed=True)``: skips h11's per-header regex
  re-validation for heads whose names and values were already validated (parsed
  by h11 from a peer, checked by the config loader, or our constants). Framing
  checks (Content-Length/Transfer-Encoding) still run.
- ``Headers._full_items``: h11's backing list of (raw name, lower name, value);
  scanning it is ~6× faster than ``Sequence.__iter__`` over ``Headers``.
- ``h11._headers.Headers`` and ``object.__setattr__`` on a (frozen) ``h11.Request``:
  the server leg drops header fields with "_" in their names and rewrites an
  absolute-form target in place, so the request the gateway dispatches is the one
  h11 parsed (no second validation pass).
- ``ServerConnection`` overrides ``Connection._clean_up_response_headers_for_sending``
  (and reads ``_request_method``, ``_cstate.keep_alive``, ``_body_framing``): h11's own
  version rebuilds every response it sends without ``_parsed``, i.e. runs its header
  regexes once more over every head (three times for a chunked one). Ours takes the
  same decisions on the already-validated head; tests/test_h11compat.py checks that
  both write the same bytes for every framing, method, version and keep-alive case.
- ``Connection._reader`` / ``_writer`` types (h11's body framing decision),
  ``_receive_buffer._extract`` and ``_process_event``: the body relay forwards body
  bytes without h11 (``rawgw.http.body``) while h11 keeps owning heads and the
  connection state machine, so a connection is cycled (keep-alive) the public way.

rawgw does not monkeypatch h11: strict chunk lines are checked by
``rawgw.http.strict.ChunkLines`` (client leg) and ``rawgw.http.body`` (upstream leg).
"""

from __future__ import annotations

from collections.abc import Iterable

import h11
from h11._connection import _body_framing
from h11._headers import Headers, get_comma_header
from h11._readers import ChunkedReader, ContentLengthReader
from h11._writers import ChunkedWriter, ContentLengthWriter

from rawgw.http.body import CHUNKED, CLOSE, LENGTH

Header = tuple[bytes, bytes]


class ServerConnection(h11.Connection):
    """h11's server side; the response head's framing clean-up without re-validation."""

    def _clean_up_response_headers_for_sending(self, response: h11.Response) -> h11.Response:
        # h11's decisions, step by step (see h11._connection): HEAD answers carry the
        # GET framing headers; an unknown-length body is chunked to an HTTP/1.1 peer
        # and close-delimited (no framing headers) otherwise; Connection: close when
        # the connection will not be kept alive. Changed fields go to the end, in
        # h11's order and title case.
        method = self._request_method
        framing, _ = _body_framing(b"GET" if method == b"HEAD" else method, response)  # type: ignore[arg-type]
        drop: tuple[bytes, ...] = ()
        added: list[Header] = []
        need_close = False
        if framing == "chunked" or framing == "http/1.0":
            drop = (b"content-length", b"transfer-encoding")
            their = self.their_http_version
            if their is None or their < b"1.1":
                need_close = method != b"HEAD"
            else:
                added.append((b"Transfer-Encoding", b"chunked"))
        if not self._cstate.keep_alive or need_close:
            connection = set(get_comma_header(response.headers, b"connection"))
            connection.discard(b"keep-alive")
            connection.add(b"close")
            drop += (b"connection",)
            added.extend((b"Connection", v) for v in sorted(connection))
        if not drop:
            return response  # nothing to change: h11 would rebuild the same head
        items = [(raw, v) for raw, low, v in response.headers._full_items if low not in drop]
        items.extend(added)
        return h11.Response(
            headers=items,
            status_code=response.status_code,
            http_version=response.http_version,
            reason=response.reason,
            _parsed=True,
        )


def trusted_request(method: bytes, target: bytes, headers: list[Header]) -> h11.Request:
    """An h11 Request built from already-validated parts (no per-header regexes)."""
    return h11.Request(method=method, target=target, headers=headers, _parsed=True)


def trusted_response(status: int, headers: list[Header], reason: bytes) -> h11.Response:
    """An h11 Response built from already-validated parts (no per-header regexes)."""
    return h11.Response(status_code=status, headers=headers, reason=reason, _parsed=True)


def plain_headers(headers: Iterable[Header]) -> list[Header]:
    """h11's Headers as a plain (lowercase name, value) list, once per message."""
    items = getattr(headers, "_full_items", None)
    if items is not None:
        return [(name, value) for _, name, value in items]
    return list(headers)


def full_items(request: h11.Request) -> list[tuple[bytes, bytes, bytes]]:
    """h11's (raw name, lowercase name, value) list: no Sequence iteration in Python."""
    items = getattr(request.headers, "_full_items", None)
    return items if items is not None else [(n, n, v) for n, v in request.headers]


def replace_headers(request: h11.Request, items: list[tuple[bytes, bytes, bytes]]) -> None:
    """Give a parsed request a subset of its own ``full_items`` (already validated)."""
    object.__setattr__(request, "headers", Headers(items))


def replace_target(request: h11.Request, target: bytes) -> None:
    """Rewrite a parsed request's target (absolute-form to origin-form)."""
    object.__setattr__(request, "target", target)


def response_framing(conn: h11.Connection) -> tuple[int, int]:
    """Right after h11 returned a Response: (framing, length) of the body it would read.

    h11 decided it from the head and the request method (HEAD, 204, 304: length 0).
    """
    reader = conn._reader
    if isinstance(reader, ContentLengthReader):
        return LENGTH, reader._remaining
    if isinstance(reader, ChunkedReader):
        return CHUNKED, 0
    return CLOSE, 0


def take_received(conn: h11.Connection) -> bytes:
    """The bytes h11 holds past the last event it returned, removed from h11."""
    buf = conn._receive_buffer
    return bytes(buf._extract(len(buf))) if len(buf) else b""


def finish_response(conn: h11.Connection) -> bool:
    """The body read without h11 ended exactly at its framing's end: tell h11's state
    machine (their side → DONE). False when h11's state does not allow it."""
    try:
        conn._process_event(conn.their_role, h11.EndOfMessage())
    except h11.LocalProtocolError:
        return False
    return True


def writer_framing(conn: h11.Connection) -> int:
    """After a Response head was sent: how h11 frames its body (the client's framing)."""
    writer = conn._writer
    if isinstance(writer, ContentLengthWriter):
        return LENGTH
    if isinstance(writer, ChunkedWriter):
        return CHUNKED
    return CLOSE


def body_sent_raw(conn: h11.Connection) -> None:
    """The whole body went out without h11 (exactly the announced length or a complete
    chunked body): let ``send(EndOfMessage())`` finish the message."""
    writer = conn._writer
    if isinstance(writer, ContentLengthWriter):
        writer._length = 0
