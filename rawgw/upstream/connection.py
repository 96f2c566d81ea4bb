"""The provider leg: one asyncio.Protocol per upstream connection driving h11.CLIENT.

An ``UpstreamConnection`` carries one exchange at a time. The response head is
delivered through a future (the relay awaits it to decide on failover); after
that, body bytes are pushed to the exchange's callbacks straight from
``data_received`` — no task, queue or await per chunk. h11 parses the head and
decides the body's framing; the body itself is followed by ``rawgw.http.body``
(counted, or chunk lines scanned) and never parsed by h11, so a chunked client can
be given the upstream's reads as they are. h11's state machine is told where the
body ended (``h11compat.finish_response``), so pooling stays h11's DONE/DONE rule.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

import h11

from rawgw.http.body import BodyError, Raw, ResponseBody
from rawgw.http.flow import FlowControl
from rawgw.http.h11compat import finish_response, response_framing, take_received
from rawgw.http.strict import has_control
from rawgw.http.tcp import set_nodelay

Header = tuple[bytes, bytes]


class UpstreamError(Exception):
    """The upstream broke the exchange: ``kind`` is connect, tls, protocol, reset or timeout."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class BodySink(Protocol):
    def cork(self) -> None: ...

    def uncork(self) -> None: ...

    def on_upstream_data(self, data: bytes | memoryview) -> None:
        """Body content (de-chunked): whole reads as bytes, parts of reads as memoryviews."""
        ...

    def on_upstream_raw(self, raw: Raw) -> None:
        """With ``stream_to(raw=True)``: the bytes a client of the same framing gets."""
        ...

    def on_upstream_end(self) -> None: ...

    def on_upstream_error(self, err: UpstreamError) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """h11 client state plus the silence timer for one upstream socket."""

    def __init__(self, on_done: Callable[[UpstreamConnection, bool], None], max_header_bytes: int) -> None:
        # The pool's callback: (conn, reusable) when an exchange ends or the socket
        # dies — reusable=True puts it back in the pool, False forgets it.
        self.on_done = on_done
        self.loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.transport: asyncio.Transport | None = None
        self.head_waiter: asyncio.Future[h11.Response] | None = None
        self.sink: BodySink | None = None
        self.streaming = False  # body events go to the sink (after the relay took the head)
        self.body: ResponseBody | None = None  # the body's framing, while streaming
        self.framed = True  # the sink re-frames the payload (cork each read into one write)
        self.eof = False  # the upstream half-closed
        self.closed = False
        self.flow = FlowControl()  # this socket's reading (paused by a slow client)
        self.peer: FlowControl | None = None  # the client's reading, paused by our write buffer
        self.busy = False
        self.last_read = 0.0
        self.read_timeout = 300.0
        self.silence_timer: asyncio.TimerHandle | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0  # loop time it went back to the pool (the pool reaps)

    # ---- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.flow.transport = transport
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # httpcore's rule: an idle connection that turns readable is dead.
            self.abort()
            return
        self.last_read = self.loop.time()
        if self.body is not None:
            self._feed(data)
            return
        self.h11.receive_data(data)
        self._process()

    def _feed(self, data: bytes) -> None:
        body = self.body
        sink = self.sink
        assert body is not None and sink is not None
        framed = self.framed
        if framed:
            # One read from upstream becomes one write to the client (data + chunk
            # framing + a possible end), never split into several syscalls.
            sink.cork()
        try:
            raw = body.feed(data, sink.on_upstream_data)
        except BodyError as exc:
            if exc.raw and not framed:
                sink.on_upstream_raw(exc.raw)  # the chunks before the break still reach the client
            self._fail(UpstreamError("protocol", f"malformed upstream response: {exc}"))
            if framed:
                sink.uncork()
            return
        if raw is not None and not framed:
            sink.on_upstream_raw(raw)
        if body.done:
            self._on_end()
        if framed:
            sink.uncork()

    def _body_eof(self) -> None:
        body = self.body
        assert body is not None
        try:
            body.eof()
        except BodyError as exc:
            self._fail(UpstreamError("reset", str(exc)))
            return
        self._on_end()

    def eof_received(self) -> bool:
        self.eof = True
        if self.busy:
            if self.body is not None:
                self._body_eof()
            else:
                self.h11.receive_data(b"")
                self._process()
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timers()
        self.on_done(self, False)
        if self.busy:
            self._fail(UpstreamError("reset", "upstream closed the connection" + (f": {exc}" if exc else "")))

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()  # request body: stop reading the client

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    # ---- one exchange -------------------------------------------------------

    def start(
        self, request: h11.Request, body: bytes | None, read_timeout: float, head_timeout: float | None = None
    ) -> asyncio.Future[h11.Response]:
        """Send the request head (and a known body); return the head's future.

        With ``head_timeout`` the future fails with TimeoutError when no head came
        in time: one timer handle, no wait_for wrapper per attempt.
        """
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            fut: asyncio.Future[h11.Response] = self.loop.create_future()
            fut.set_exception(UpstreamError("reset", "upstream connection closed before the request was sent"))
            return fut
        self.busy = True
        self.streaming = False
        self.body = None
        self.peer = None
        self.read_timeout = read_timeout
        self.head_waiter = self.loop.create_future()
        if head_timeout is not None:
            self.head_timer = self.loop.call_later(head_timeout, self._head_timeout)
        data = self.h11.send(request) or b""
        if body is None:
            self.transport.write(data)
        else:
            pieces = [data]
            if body:
                pieces.extend(self.h11.send_with_data_passthrough(h11.Data(data=body)) or ())
            pieces.append(self.h11.send(h11.EndOfMessage()) or b"")
            self.transport.writelines(pieces)
        return self.head_waiter

    def send_body(self, data: bytes) -> None:
        """Stream a piece of request body (body passed as None to ``start``)."""
        if self.closed or self.transport is None:
            return
        self.transport.writelines(self.h11.send_with_data_passthrough(h11.Data(data=data)) or ())

    def send_body_end(self) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(self.h11.send(h11.EndOfMessage()) or b"")

    def stream_to(self, sink: BodySink, raw: bool = False) -> None:
        """The relay took the head: from now on the body goes to ``sink``.

        ``raw``: the sink forwards the upstream's bytes (``on_upstream_raw``) to a client
        whose framing is the upstream's; else it gets the content only.
        """
        self.sink = sink
        self.streaming = True
        self.last_read = self.loop.time()
        kind, length = response_framing(self.h11)
        body = self.body = ResponseBody(kind, length, raw, self.max_header_bytes)
        self.framed = not raw
        # The start of the body arrived with the head: h11 holds it, we take it.
        leftover = take_received(self.h11)
        if leftover:
            self._feed(leftover)
        elif body.done:
            self._on_end()
        if self.body is not body:
            # ended (or failed) already; a pooled connection reads again (idle check)
            if not self.closed and self.transport is not None and not self.flow.read_paused:
                self.transport.resume_reading()
            return
        if self.eof:
            self._body_eof()
            return
        if self.closed:
            self._fail(UpstreamError("reset", "upstream closed the connection"))
            return
        self.silence_timer = self.loop.call_at(self.last_read + self.read_timeout, self._silence_check)
        if self.transport is not None and not self.flow.read_paused:
            self.transport.resume_reading()

    def _process(self) -> None:
        conn = self.h11
        while not self.closed:
            if self.head_waiter is not None and not self.streaming and self.head_waiter.done():
                # Head delivered, relay not yet streaming: leave the rest buffered.
                return
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # The reason only: h11's message quotes the bytes, which must not be echoed.
                self._fail(UpstreamError("protocol", f"malformed upstream response: {str(exc).split(':')[0]}"))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            etype = type(event)
            if etype is h11.Response:
                self._on_head(event)  # type: ignore[arg-type]
            elif etype is h11.InformationalResponse:
                continue  # SPEC 8: 1xx from upstream are consumed, not forwarded
            elif etype is h11.ConnectionClosed:
                self._fail(UpstreamError("reset", "upstream closed the connection"))
                return

    def _head_timeout(self) -> None:
        self.head_timer = None
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def _on_head(self, response: h11.Response) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        te = cl = False
        size = 15 + len(response.reason)
        values = [response.reason]
        for name, value in response.headers:
            size += len(name) + len(value) + 4
            values.append(value)
            if name == b"transfer-encoding":
                te = True
            elif name == b"content-length":
                cl = True
        if has_control(b"".join(values)):
            # RFC 9110 §5.5 (h11 accepts these): never relay what a client may split on.
            self._fail(UpstreamError("protocol", "upstream response head holds a control character"))
            return
        if te and cl:
            # RFC 9112 §6.3: both TE and CL is a smuggling vector; never forward it.
            self._fail(UpstreamError("protocol", "upstream response has both Transfer-Encoding and Content-Length"))
            return
        if size > self.max_header_bytes:
            # h11 only bounds incomplete heads; a complete one in one read passes.
            self._fail(UpstreamError("protocol", f"upstream response head exceeds {self.max_header_bytes} bytes"))
            return
        waiter = self.head_waiter
        if waiter is not None and not waiter.done():
            # Hold further bytes until the relay decides what to do with this head.
            if self.transport is not None and not self.closed:
                self.transport.pause_reading()
            waiter.set_result(response)

    def _on_end(self) -> None:
        sink = self.sink
        body = self.body
        self.sink = None
        self.body = None
        self.busy = False
        self.streaming = False
        self.head_waiter = None
        self._cancel_timers()
        self.peer = None
        conn = self.h11
        # httpcore's rule, plus: the response ended exactly where its framing said.
        # Bytes h11 still holds (a second response in the same read, a body sent
        # to a HEAD) would be served to the next, unrelated client: close instead.
        reusable = (
            body is not None
            and not body.extra
            and not self.closed
            and finish_response(conn)
            and conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and conn.trailing_data == (b"", False)
        )
        if reusable:
            self.h11.start_next_cycle()
            self.on_done(self, True)
        else:
            self.abort()
        if sink is not None:
            sink.on_upstream_end()

    def _fail(self, err: UpstreamError) -> None:
        # Not only when busy: a body the relay took after the socket died is failed here.
        self.busy = False
        sink = self.sink
        self.sink = None
        self.body = None
        waiter = self.head_waiter
        self.head_waiter = None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(err)
        elif sink is not None:
            sink.on_upstream_error(err)

    def _silence_check(self) -> None:
        # One timer per connection, re-armed lazily: no timer churn per chunk.
        self.silence_timer = None
        if not self.streaming or self.closed:
            return
        now = self.loop.time()
        deadline = self.last_read + self.read_timeout
        if self.flow.read_paused:
            # The client is slow, not the upstream: silence does not count.
            self.last_read = now
            deadline = now + self.read_timeout
        if now >= deadline:
            self._fail(UpstreamError("timeout", f"upstream silent for {self.read_timeout:g} s"))
            return
        self.silence_timer = self.loop.call_at(deadline, self._silence_check)

    def _cancel_timers(self) -> None:
        if self.silence_timer is not None:
            self.silence_timer.cancel()
            self.silence_timer = None
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def abort(self) -> None:
        """Close at once (RST-free abort of the transport); never pooled again."""
        if not self.closed:
            self.closed = True
        self._cancel_timers()
        self.peer = None
        self.on_done(self, False)
        if self.transport is not None:
            self.transport.abort()

    def detach(self) -> None:
        """The client left or the relay gave up on this exchange: close, never reuse."""
        self.sink = None
        self.body = None
        self.busy = False
        if self.head_waiter is not None and not self.head_waiter.done():
            self.head_waiter.cancel()
        self.head_waiter = None
        self.abort()

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and not self.busy
            and self.transport is not None
            and not self.transport.is_closing()
            and self.h11.our_state is h11.IDLE
            and self.h11.their_state is h11.IDLE
            and self.h11.trailing_data == (b"", False)
        )
