"""The client leg: one asyncio.Protocol per client connection driving h11.SERVER.

This module knows HTTP framing, limits, timers and flow control — nothing about
models, keys or providers. Each complete request head becomes an ``Exchange``
handed to ``handler.on_request``; the exchange answers through the ``send_*``
methods here, which are the only place that writes to the client socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol, cast

import h11

from rawgw.errors import REASONS, GatewayError
from rawgw.http.body import CHUNKED, LENGTH, Raw
from rawgw.http.date import http_date
from rawgw.http.flow import FlowControl
from rawgw.http.h11compat import (
    ServerConnection,
    body_sent_raw,
    full_items,
    replace_headers,
    replace_target,
    trusted_response,
    writer_framing,
)
from rawgw.http.strict import ChunkLines, chunked_not_final, head_violation, valid_host
from rawgw.http.tcp import set_nodelay

if TYPE_CHECKING:
    from rawgw.config import ServerConfig

log = logging.getLogger("rawgw.server")

Header = tuple[bytes, bytes]

# Pipelined bytes buffered beyond the request being answered before the client
# socket stops being read (bounded pipelining depth).
PIPELINE_BUFFER_LIMIT = 256 * 1024
# Pipelined requests answered in one go before yielding to other connections.
PIPELINE_BATCH = 16
# How long a refused client may keep sending before the socket is closed (RFC 9112 §9.6).
LINGER_S = 2.0
# ...closing earlier once nothing arrived for this long.
LINGER_QUIET_S = 0.25


class Handler(Protocol):
    """What the server leg calls into (the gateway's dispatch)."""

    def on_request(self, client: ClientConnection, request: h11.Request) -> None: ...

    def early_error_headers(self) -> list[Header]:
        """Headers for errors written before a request could be parsed (400/408/431)."""
        ...


class Sink(Protocol):
    """The current exchange, as the server leg sees it."""

    def on_body(self, data: bytes) -> None: ...

    def on_body_end(self) -> None: ...

    def on_client_gone(self) -> None: ...


class ClientConnection(asyncio.Protocol):
    """h11 server state, header/keep-alive timers and back-pressure for one socket."""

    def __init__(self, handler: Handler, server: ServerConfig, registry: set[ClientConnection]) -> None:
        self.handler = handler
        self.config = server
        self.registry = registry
        self.loop = asyncio.get_running_loop()
        self.h11 = ServerConnection(h11.SERVER, max_incomplete_event_size=server.max_header_bytes)
        self.transport: asyncio.Transport | None = None
        self.sink: Sink | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.writable = True
        self.flow = FlowControl()  # this socket's reading (pipelining bound, slow upstream)
        self.peer: FlowControl | None = None  # the upstream's reading, paused by our write buffer
        self.closed = False
        self.draining = False  # server shutting down: close after the current response
        # Whether the current request / response is complete is h11's own state
        # (request_done / response_done below), not a flag of ours.
        self.in_flight = False  # a request head was received and not fully answered
        self.pipelined = 0
        self.body_seen = 0
        self.head_buf: bytearray | None = bytearray()  # raw head while awaiting one
        self.corked: list[bytes] | None = None  # writes gathered into one writelines
        self.processing = False  # inside _process: a cycle continues the same loop
        self.cycles = 0  # requests answered in the current _process run (fairness)
        self.lingering = False  # answered and half-closed; draining input until close
        self.head_request = False  # the current request is HEAD: its answer has no body
        self.chunk_lines: ChunkLines | None = None  # checks a chunked request body's lines
        self.last_head: bytearray | None = None  # a complete head h11 has not parsed yet

    # ---- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.flow.transport = transport
        self.registry.add(self)
        set_nodelay(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.linger_last = self.loop.time()
            return  # RFC 9112 §9.6: read and discard until the client is quiet or closes
        if self.head_buf is not None and not self._scan_head(data):
            return
        # A new head began while the keep-alive timer ran: the header timeout applies
        # from now, unless the head is complete in this read (then no timer is needed).
        head_begun = False
        if self.in_flight and self.request_done:
            # Pipelined bytes while we answer: keep reading (a FIN must still be
            # seen) but stop once the backlog is large.
            self.pipelined += len(data)
            if self.pipelined > PIPELINE_BUFFER_LIMIT:
                self._pause_reading()
        elif not self.in_flight and self.timer is not None and not self._header_timer_armed:
            head_begun = True
        chunks = self.chunk_lines
        if chunks is not None and not chunks.done:
            problem = chunks.feed(data)
            if problem is not None:
                self._protocol_error(h11.RemoteProtocolError(problem, error_status_hint=400))
                return
        self.h11.receive_data(data)
        self._process()
        if (
            head_begun
            and not self.in_flight
            and not self.closed
            and not self.lingering
            and not self._header_timer_armed
            and (self.head_buf or self._has_partial_request())
        ):
            self._arm_header_timer()

    def _scan_head(self, data: bytes | bytearray) -> bool:
        """Check the raw bytes of a request head h11 would accept too leniently."""
        buf = self.head_buf
        assert buf is not None
        if buf or self.h11.their_state is h11.IDLE:
            scanned = len(buf)
            buf += data
            end = buf.find(b"\r\n\r\n", max(0, scanned - 3))
            head = buf if end < 0 else buf[: end + 4]
            problem = head_violation(head, scanned)
            if problem is not None:
                self.head_buf = None
                self._write_error_and_close(400, f"malformed request: {problem}")
                return False
            if len(head) > self.config.max_header_bytes:
                # h11 bounds only incomplete heads; one that arrived whole passes it.
                self.head_buf = None
                self._write_error_and_close(431, f"request head exceeds {self.config.max_header_bytes} bytes")
                return False
            if end >= 0:
                self.head_buf = None
                self.last_head = head  # for the reason of a refusal by h11 (_protocol_error)
        return True

    def eof_received(self) -> bool:
        if self.lingering:
            self.close()
            return False
        # SPEC 6: a FIN before the response is complete counts as disconnecting.
        if self.in_flight:
            self._client_gone()
            return False
        self.h11.receive_data(b"")
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.registry.discard(self)
        self._cancel_timer()
        if self.in_flight:
            self._client_gone()

    def pause_writing(self) -> None:
        self.writable = False
        if self.peer is not None:
            self.peer.pause_reading()  # a slow client pauses the upstream response

    def resume_writing(self) -> None:
        self.writable = True
        if not self.in_flight and not self.closed:
            # pipelined requests waited for the client to read our answers
            self.loop.call_soon(self._process_pipelined)
        if self.peer is not None:
            self.peer.resume_reading()

    # ---- reading requests -------------------------------------------------

    def _process(self) -> None:
        if self.processing:
            return
        self.processing = True
        self.cycles = 0
        try:
            self._process_events()
        finally:
            self.processing = False

    def _process_events(self) -> None:
        conn = self.h11
        while not self.closed and not self.lingering:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            etype = type(event)
            if etype is h11.Data:
                self._on_body(event.data)  # type: ignore[union-attr]
            elif etype is h11.Request:
                self._on_request(event)  # type: ignore[arg-type]
            elif etype is h11.EndOfMessage:
                self.chunk_lines = None
                if self.sink is not None:
                    self.sink.on_body_end()
                self._maybe_cycle()
                if not self.in_flight and self._break_batch():
                    return
            elif etype is h11.ConnectionClosed:
                self.close()
                return

    def _on_request(self, request: h11.Request) -> None:
        if not self._keepalive_armed:
            # a pending keep-alive timer stays: it ignores a connection in flight
            self._cancel_timer()
        self.in_flight = True
        self.pipelined = 0
        self.body_seen = 0
        self.last_head = None
        self.head_request = request.method == b"HEAD"
        self.chunk_lines = None
        if request.http_version[:1] != b"1":
            # RFC 9112 §2.3: only major version 1 is spoken here (1.x answered as 1.1).
            self.send_error(GatewayError(505, "HTTP version not supported: use HTTP/1.1", close=True))
            return
        bad, underscore, chunked = check_request_framing(request, self.config.max_body_bytes)
        bad = bad or self._check_target(request)
        if bad is not None:
            self.send_error(bad)
            return
        if underscore:
            # As nginx does (underscores_in_headers off): a name with "_" may be read as
            # the "-" one by a back end (Transfer_Encoding), so such fields are dropped.
            replace_headers(request, [item for item in full_items(request) if b"_" not in item[1]])
        if chunked:
            chunks = self.chunk_lines = ChunkLines(self.config.max_header_bytes)
            problem = chunks.feed(self.h11.trailing_data[0])
            if problem is not None:
                self._protocol_error(h11.RemoteProtocolError(problem, error_status_hint=400))
                return
        self.handler.on_request(self, request)

    def _check_target(self, request: h11.Request) -> GatewayError | None:
        """RFC 9112 §3.2: only origin-form, or absolute-form naming this gateway."""
        target = request.target
        if request.method == b"CONNECT":
            return GatewayError(400, "CONNECT is not supported: rawgw is not a forward proxy", close=True)
        if target.startswith(b"/") or (target == b"*" and request.method == b"OPTIONS"):
            return None
        lower = target.lower()
        if not (lower.startswith(b"http://") or lower.startswith(b"https://")):
            return GatewayError(400, "malformed request target", close=True)
        rest = target.split(b"://", 1)[1]
        authority, slash, path = rest.partition(b"/")
        host = None
        for name, value in request.headers:
            if name == b"host":
                host = value.lower()
        sockname = self.transport.get_extra_info("sockname") if self.transport is not None else None
        local = f"{sockname[0]}:{sockname[1]}".encode() if sockname else b""
        if authority.lower() not in (host, local):
            return GatewayError(400, "absolute-form target names another host: rawgw is not a forward proxy", close=True)
        replace_target(request, b"/" + path if slash else b"/")
        return None

    def _on_body(self, data: bytes) -> None:
        self.body_seen += len(data)
        if self.body_seen > self.config.max_body_bytes:
            if self.sink is not None:
                self.sink.on_client_gone()
                self.sink = None
            if not self.response_started:
                self.send_error(GatewayError(413, f"request body exceeds {self.config.max_body_bytes} bytes", close=True))
            else:
                self.close()
            return
        if self.sink is not None:
            self.sink.on_body(data)

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint
        if status == 501 and "multiple" in str(exc):
            status = 400  # TE.TE smuggling: not an unknown coding, a refused duplicate
        chunked_misplaced = status == 501 and self.last_head is not None and chunked_not_final(self.last_head)
        if chunked_misplaced:
            status = 400  # RFC 9112 §6.3: chunked not final, the length cannot be known
        if self.in_flight and self.response_started:
            self.close()
            return
        if self.sink is not None:
            self.sink.on_client_gone()
            self.sink = None
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.close()
            return
        if status == 431:
            msg = f"request head exceeds {self.config.max_header_bytes} bytes"
        elif chunked_misplaced:
            msg = "malformed request: chunked must be the final transfer coding, applied once"
        elif status == 501:
            msg = "unsupported transfer coding: only chunked is supported"
        else:
            # The reason only: h11's message may quote header bytes (credentials).
            msg = f"malformed request: {str(exc).split(':')[0]}"
        self._write_error_and_close(status, msg)

    # ---- timers -------------------------------------------------------------

    _header_timer_armed = False
    _keepalive_armed = False
    idle_deadline = 0.0

    def _arm_header_timer(self) -> None:
        self._cancel_timer()
        self._header_timer_armed = True
        self.timer = self.loop.call_later(self.config.header_timeout_s, self._header_timeout)

    def _arm_keepalive_timer(self) -> None:
        # One handle per connection, re-armed lazily when it fires: no timer churn per
        # request on a busy keep-alive connection (the handle fires early at most).
        self.idle_deadline = self.loop.time() + self.config.keepalive_timeout_s
        if self._keepalive_armed and self.timer is not None:
            return
        self._cancel_timer()
        self._keepalive_armed = True
        self.timer = self.loop.call_at(self.idle_deadline, self._keepalive_timeout)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._header_timer_armed = False
        self._keepalive_armed = False

    def _header_timeout(self) -> None:
        # Slowloris: a head not complete in time gets 408 and the socket closes.
        self.timer = None
        if self.closed or self.in_flight:
            return
        if self.h11.their_state is h11.IDLE and self.h11.our_state is h11.IDLE and not self._has_partial_request():
            self.close()
            return
        self._write_error_and_close(408, f"request head not received within {self.config.header_timeout_s:g} s")

    def _has_partial_request(self) -> bool:
        return bool(self.h11.trailing_data[0])

    def _keepalive_timeout(self) -> None:
        self.timer = None
        self._keepalive_armed = False
        if self.in_flight or self.closed:
            return
        if self.loop.time() < self.idle_deadline:
            self._keepalive_armed = True
            self.timer = self.loop.call_at(self.idle_deadline, self._keepalive_timeout)
            return
        if self._has_partial_request():
            self._write_error_and_close(408, "request head not received in time")
        else:
            self.close()

    # ---- writing responses --------------------------------------------------

    @property
    def request_done(self) -> bool:
        """The current request's body was fully received (h11 saw its end)."""
        return self.h11.their_state in _ENDED

    @property
    def response_done(self) -> bool:
        """The current response was sent to its end."""
        return self.h11.our_state in _ENDED

    @property
    def response_started(self) -> bool:
        return self.h11.our_state is not h11.SEND_RESPONSE and self.in_flight

    def send_continue(self) -> None:
        """Answer ``Expect: 100-continue`` once the request was accepted."""
        if self.h11.they_are_waiting_for_100_continue and self.transport is not None:
            self.transport.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))

    def send_head(self, status: int, headers: list[Header], reason: bytes = b"") -> None:
        """Write the response head; ``headers`` must not hold Date or Server."""
        if self.closed or self.transport is None:
            return
        headers.append((b"date", http_date()))
        headers.append((b"server", b"rawgw"))
        if self.draining:
            headers.append((b"connection", b"close"))
        # _parsed=True skips h11's per-header regexes: names and values come from
        # h11-parsed upstream heads, the validated config, or our own constants.
        data = self.h11.send(trusted_response(status, headers, reason or REASONS.get(status, b"")))
        assert data is not None
        if self.corked is not None:
            self.corked.append(data)
        else:
            self.transport.write(data)

    def send_body(self, data: bytes | memoryview) -> None:
        if self.closed or self.transport is None or self.head_request:
            return  # RFC 9110 §9.3.2: the answer to HEAD is the GET head, no body
        pieces = self.h11.send_with_data_passthrough(h11.Data(data=data)) or []  # type: ignore[arg-type]
        if self.corked is not None:
            self.corked.extend(pieces)
        elif pieces:
            self.transport.writelines(pieces)

    def passes_raw(self, upstream_chunked: bool) -> bool:
        """After ``send_head``: whether the upstream body's own bytes are this response's
        body bytes — the same Content-Length, or chunked to a chunked client (SPEC 8:
        an HTTP/1.0 client or a close-delimited upstream needs h11's framing instead)."""
        framing = writer_framing(self.h11)
        return framing == LENGTH or (framing == CHUNKED and upstream_chunked)

    def write_raw(self, raw: Raw) -> None:
        """Body bytes already framed for this response (``passes_raw``), as they are."""
        if self.closed or self.transport is None or self.head_request:
            return
        if type(raw) is list:
            if self.corked is not None:
                self.corked.extend(raw)
            else:
                self.transport.writelines(raw)
        elif self.corked is not None:
            self.corked.append(raw)  # type: ignore[arg-type]
        else:
            self.transport.write(raw)  # type: ignore[arg-type]

    def cork(self) -> None:
        """Gather the following writes (one response's head, body pieces, end) into one."""
        if self.corked is None:
            self.corked = []

    def uncork(self) -> None:
        pending = self.corked
        self.corked = None
        # after write_eof (lingering) nothing more may be written: the answer already left
        if pending and self.transport is not None and not self.lingering and not self.transport.is_closing():
            self.transport.writelines(pending)

    def send_end(self, raw: bool = False) -> None:
        """Finish the response cleanly and move to the next request (keep-alive).

        ``raw``: the whole body went out by ``write_raw``, its end included.
        """
        if self.closed or self.transport is None:
            return
        if raw:
            body_sent_raw(self.h11)
            self.h11.send(h11.EndOfMessage())  # the upstream's last chunk already went out
            data = None
        else:
            data = self.h11.send(h11.EndOfMessage())
        if data:
            if self.corked is not None:
                self.corked.append(data)
            else:
                self.transport.write(data)
        self.sink = None
        if self.h11.our_state is h11.MUST_CLOSE:
            # Connection: close (HTTP/1.0 client, refused framing, draining).
            self.in_flight = False
            if self.request_done:
                self.close()
            else:
                self.linger()  # the rest of a refused body may still be on its way
            return
        self._maybe_cycle()

    def send_response(self, status: int, headers: list[Header], body: bytes) -> None:
        """A whole response with a known body, in one write."""
        if self.closed or self.transport is None:
            return
        if status != 204:  # RFC 9110 §8.6: a 204 carries no Content-Length
            headers.append((b"content-length", str(len(body)).encode()))
        corked = self.corked is not None
        self.cork()
        self.send_head(status, headers)
        if body and self.h11.our_state is h11.SEND_BODY and not self.head_request:
            self.send_body(body)
        self.send_end()
        if not corked:
            self.uncork()

    def send_error(self, err: GatewayError, headers: list[Header] | None = None) -> None:
        hdrs: list[Header] = [(b"content-type", b"application/json")]
        hdrs.extend(err.headers)
        if headers:
            hdrs.extend(headers)
        if err.close:
            hdrs.append((b"connection", b"close"))
        self.send_response(err.status, hdrs, err.body())

    def abort_response(self) -> None:
        """End a started response WITHOUT a clean end, so the client sees truncation."""
        self.sink = None
        self.close()

    def _write_error_and_close(self, status: int, message: str) -> None:
        """Answer a request h11 could not parse: raw bytes, since h11 is in ERROR."""
        if self.transport is None or self.closed:
            return
        err = GatewayError(status, message)
        body = err.body()
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\ndate: %s\r\nserver: rawgw\r\nconnection: close\r\n"
            % (
                status,
                REASONS.get(status, b"Error"),
                len(body),
                http_date(),
            )
        )
        for name, value in self.handler.early_error_headers():
            head += name + b": " + value + b"\r\n"
        self.transport.write(head + b"\r\n" + body)
        self.linger()

    # ---- keep-alive cycle ---------------------------------------------------

    def _maybe_cycle(self) -> None:
        conn = self.h11
        ours = conn.our_state
        if ours not in _ENDED:
            return  # the response is still under way (the usual case at the request's end)
        theirs = conn.their_state
        if theirs not in _ENDED:
            return  # the rest of the request body is still to come
        if ours is not h11.DONE or theirs is not h11.DONE or self.draining:
            self.close()  # MUST_CLOSE on either side (Connection: close, HTTP/1.0), or shutdown
            return
        self.h11.start_next_cycle()
        self.in_flight = False
        self.sink = None
        self._arm_keepalive_timer()
        # Pipelined bytes already buffered were never scanned as a head: do it now,
        # once, before h11 hands them out (and reset the scan for what comes next).
        self.head_buf = bytearray()
        pending = self.h11.trailing_data[0]
        if pending and not self._scan_head(pending):
            return
        if not self.processing:
            self.cycles = 0
        self.cycles += 1
        if not self.writable or self.cycles >= PIPELINE_BATCH:
            # Bounded pipelining: the client must read our answers first
            # (resume_writing continues), and other connections get their turn.
            self._pause_reading()
            if self.writable:
                self.loop.call_soon(self._process_pipelined)
            return
        if self.flow.read_paused:
            self._resume_reading()
        if not self.processing:
            self.loop.call_soon(self._process_pipelined)

    def _process_pipelined(self) -> None:
        if self.closed or self.in_flight or self.lingering or not self.writable:
            return
        if self.flow.read_paused:
            self._resume_reading()
        self._process()

    def _break_batch(self) -> bool:
        """True when _process must stop handing out pipelined requests for now."""
        return not self.writable or self.cycles >= PIPELINE_BATCH

    def _client_gone(self) -> None:
        sink = self.sink
        self.sink = None
        self.in_flight = False
        if sink is not None:
            sink.on_client_gone()
        self.close()

    def _pause_reading(self) -> None:
        if not self.closed:
            self.flow.pause_reading()

    def _resume_reading(self) -> None:
        if not self.closed:
            self.flow.resume_reading()

    def linger(self) -> None:
        """Close after an answer while the client may still be sending.

        RFC 9112 §9.6: closing with unread input makes the kernel send a RST that
        can destroy our answer before the client reads it. So: half-close, read and
        discard for a moment, then close.
        """
        if self.closed or self.transport is None:
            return
        self.uncork()
        self._cancel_timer()
        self.lingering = True
        self.sink = None
        self.in_flight = False
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        now = self.loop.time()
        self.linger_last = now
        self.linger_until = now + LINGER_S
        self.timer = self.loop.call_later(LINGER_QUIET_S, self._linger_check)

    linger_last = 0.0
    linger_until = 0.0

    def _linger_check(self) -> None:
        """Close once the client went quiet (or at the cap), like nginx's lingering_timeout."""
        self.timer = None
        now = self.loop.time()
        if now - self.linger_last >= LINGER_QUIET_S or now >= self.linger_until:
            self.close()
            return
        self.timer = self.loop.call_at(min(self.linger_last + LINGER_QUIET_S, self.linger_until), self._linger_check)

    def close(self) -> None:
        if not self.closed:
            self.uncork()  # what was gathered still goes out before the FIN
            self.closed = True
            self._cancel_timer()
            if self.transport is not None:
                self.transport.close()

    def drain(self) -> None:
        """Shutdown: idle connections close now, busy ones after their response."""
        self.draining = True
        if not self.in_flight:
            self.close()


# h11 states in which one side's message is complete.
_ENDED = frozenset((h11.DONE, h11.MUST_CLOSE))


def check_request_framing(request: h11.Request, max_body_bytes: int) -> tuple[GatewayError | None, bool, bool]:
    """Refusals h11 itself lets through (RFC 9112 §3.2, §6.1, §6.3).

    Also tells whether a header name holds "_" and whether the body is chunked.
    """
    te = cl = host = None
    underscore = False
    for _, name, value in full_items(request):
        if name == b"transfer-encoding":
            te = value
        elif name == b"content-length":
            cl = value
        elif name == b"host":
            host = value
        elif b"_" in name:
            underscore = True
    if host is not None and not valid_host(host) and (host or request.http_version != b"1.0"):
        # The reason only: the value may hold userinfo (a credential).
        return GatewayError(400, "malformed Host header: must be host[:port]", close=True), underscore, False
    if te is not None:
        if cl is not None:
            # RFC 9112 §6.3: a message with both TE and CL is a smuggling vector.
            return GatewayError(400, "request has both Transfer-Encoding and Content-Length", close=True), underscore, True
        if request.http_version == b"1.0":
            return GatewayError(400, "Transfer-Encoding is not allowed in HTTP/1.0 requests", close=True), underscore, True
    if cl is not None and int(cl) > max_body_bytes:
        return GatewayError(413, f"request body exceeds {max_body_bytes} bytes", close=True), underscore, False
    return None, underscore, te is not None

