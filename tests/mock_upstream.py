"""A scriptable HTTP/1.1 upstream for black-box tests of the gateway.

The mock is deliberately *not* built on h11 for its responses: tests need to send bytes
no well-behaved library would produce (both TE and CL, duplicate Date, a reset mid-body).
Requests are parsed by a small lenient parser that records everything exactly as received,
so tests can assert on what the gateway put on the wire.

Usage (inside a test's event loop)::

    mock = await MockUpstream.start()          # or start(ssl=server_context)
    mock.enqueue(Json(body={"ok": True}), Sse(pieces=[b"data: 1\\n\\n"], delay=0.1))
    ...
    req = mock.requests[0]                     # RecordedRequest
    await mock.wait_peer_closed(req.conn, timeout=1.0)
    await mock.close()

Each request takes the next behaviour from the queue; with the queue empty, ``handler``
(a callable ``RecordedRequest -> Behaviour``, sync or async) is called if set, else
``default`` is used.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

HeaderList: TypeAlias = Sequence[tuple[str | bytes, str | bytes]]
End: TypeAlias = Literal["clean", "close", "reset", "hang"]

_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _head(
    status: int,
    headers: HeaderList,
    *,
    version: bytes = b"HTTP/1.1",
    reason: str | bytes | None = None,
) -> bytes:
    reason_b = _b(reason) if reason is not None else _REASONS.get(status, "Status").encode()
    lines = [version + b" " + str(status).encode() + b" " + reason_b]
    lines += [_b(k) + b": " + _b(v) for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _has(headers: HeaderList, name: str) -> bool:
    n = name.lower().encode()
    return any(_b(k).lower() == n for k, _ in headers)


# --------------------------------------------------------------------------- behaviours


@dataclass
class Json:
    """A complete response with Content-Length. ``body``: dict/list → JSON, bytes as is."""

    body: Any = field(default_factory=lambda: {"ok": True})
    status: int = 200
    headers: HeaderList = ()
    content_type: str | None = "application/json"
    reason: str | None = None
    delay_before: float = 0.0  # seconds to wait before sending the head

    def body_bytes(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass
class Chunked:
    """A chunked body: one chunk per piece (empty pieces are skipped), ``delay`` seconds
    before each piece after the first (a float, or one float per gap).

    ``end``: "clean" sends ``0\\r\\n\\r\\n`` (plus ``trailers``); "close" FINs without it;
    "reset" aborts with RST; "hang" goes silent and waits for the peer to close."""

    pieces: Sequence[bytes]
    delay: float | Sequence[float] = 0.0
    status: int = 200
    headers: HeaderList = ()
    content_type: str | None = "application/octet-stream"
    trailers: HeaderList = ()
    end: End = "clean"
    delay_before: float = 0.0


@dataclass
class Sse:
    """An SSE stream: the pieces are sent *as given* (tests choose awkward boundaries).

    ``framing``: "chunked" (one chunk per piece), "close" (HTTP/1.1 without length,
    ``Connection: close``, body ends at close), "http10" (an HTTP/1.0 status line, body
    ends at close) or "length" (Content-Length of the joined pieces)."""

    pieces: Sequence[bytes]
    delay: float | Sequence[float] = 0.0
    status: int = 200
    headers: HeaderList = ()
    content_type: str | None = "text/event-stream"
    framing: Literal["chunked", "close", "http10", "length"] = "chunked"
    end: End = "clean"
    delay_before: float = 0.0

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


@dataclass
class CloseDelimited:
    """A body without length, ended by closing the connection (HTTP/1.0 style)."""

    pieces: Sequence[bytes]
    delay: float | Sequence[float] = 0.0
    status: int = 200
    headers: HeaderList = ()
    content_type: str | None = "application/json"
    version: bytes = b"HTTP/1.0"
    end: End = "clean"  # "clean" = FIN after the last piece
    delay_before: float = 0.0


@dataclass
class Raw:
    """Arbitrary bytes, written piece by piece; then ``then``: "close" (FIN), "reset"
    (RST), "keep" (read the next request on this connection), "hang" (wait for the
    peer to close) or "half_close" (a real TCP half-close: FIN while still reading
    until the peer closes; ``ConnRecord.half_closed_at`` says when)."""

    data: bytes | Sequence[bytes]
    delay: float | Sequence[float] = 0.0
    then: Literal["close", "reset", "keep", "hang", "half_close"] = "close"
    delay_before: float = 0.0


@dataclass
class Stall:
    """Send nothing for ``seconds`` (None: until the peer closes), then run ``then``
    (None: close)."""

    seconds: float | None = None
    then: Behaviour | None = None


@dataclass
class ResetMidBody:
    """Send a head and part of the body, then RST. ``content_length``: the length
    announced (None: chunked framing, ``body_prefix`` as one chunk)."""

    body_prefix: bytes
    content_length: int | None = None
    status: int = 200
    headers: HeaderList = ()
    content_type: str | None = "application/json"
    settle: float = 0.2  # pause between the prefix and the reset


@dataclass
class CloseWithoutResponse:
    """Read the request, answer nothing, close (FIN, or RST with ``reset=True``)."""

    reset: bool = False
    delay_before: float = 0.0


Behaviour: TypeAlias = (
    Json | Chunked | Sse | CloseDelimited | Raw | Stall | ResetMidBody | CloseWithoutResponse
)
Handler: TypeAlias = Callable[["RecordedRequest"], "Behaviour | Awaitable[Behaviour]"]


# --------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]  # in order, names as sent, values OWS-stripped
    body: bytes  # decoded (de-chunked) body
    raw_head: bytes  # request line + headers + CRLFCRLF as received
    raw_body: bytes  # body as on the wire (with chunk framing if chunked)
    chunked: bool
    conn: ConnRecord
    received_at: float  # time.monotonic() when the whole request had arrived
    # filled while answering:
    response_started_at: float | None = None
    pieces_sent_at: list[float] = field(default_factory=list)  # time of each body piece write

    def header_values(self, name: str) -> list[bytes]:
        n = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name: str) -> bytes | None:
        """The single value of ``name`` (None if absent). Asserts it is not repeated."""
        vals = self.header_values(name)
        assert len(vals) <= 1, f"header {name!r} repeated: {vals!r}"
        return vals[0] if vals else None

    def header_names(self) -> list[str]:
        return [k.decode("latin-1").lower() for k, _ in self.headers]

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ConnRecord:
    id: int
    opened_at: float
    peer: tuple[Any, ...] | None
    raw_received: bytearray = field(default_factory=bytearray)  # every byte the peer sent
    requests: list[RecordedRequest] = field(default_factory=list)
    peer_closed_at: float | None = None  # EOF or reset seen from the peer
    half_closed_at: float | None = None  # Raw(then="half_close") sent its FIN
    peer_reset: bool = False
    closed_at: float | None = None  # whoever closed first
    parse_error: str | None = None
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class _ParseError(Exception):
    pass


class _PeerGone(Exception):
    pass


# --------------------------------------------------------------------------- server


class MockUpstream:
    """See the module docstring."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.queue: deque[Behaviour] = deque()
        self.handler: Handler | None = None
        self.default: Behaviour = Json(
            body={
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": 1700000000,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
        self.auto_continue = True  # answer `Expect: 100-continue` with a 100 before the body
        self.connections: list[ConnRecord] = []
        self.requests: list[RecordedRequest] = []
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._new_request = asyncio.Condition()
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle

    @classmethod
    async def start(
        cls, ssl: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> MockUpstream:
        self = cls(ssl)
        self.host = host
        self._server = await asyncio.start_server(self._on_conn, host, 0, ssl=ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            _abort(w)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except (TimeoutError, Exception):
                pass

    async def __aenter__(self) -> MockUpstream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def origin(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def url(self, base_path: str = "/v1") -> str:
        return self.origin + base_path

    # -- scripting

    def enqueue(self, *behaviours: Behaviour) -> None:
        self.queue.extend(behaviours)

    # -- waiting

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        async def _wait() -> None:
            async with self._new_request:
                await self._new_request.wait_for(lambda: len(self.requests) >= n)

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"mock upstream got {len(self.requests)} request(s) in {timeout} s, wanted {n}"
            ) from None
        return self.requests

    async def wait_peer_closed(self, conn: ConnRecord, timeout: float = 5.0) -> float:
        """Wait until the gateway closed (FIN or RST) ``conn``; return that monotonic time."""
        try:
            await asyncio.wait_for(conn.peer_closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"upstream connection #{conn.id} still open after {timeout} s: the gateway "
                "did not close it"
            ) from None
        assert conn.peer_closed_at is not None
        return conn.peer_closed_at

    async def wait_closed(self, conn: ConnRecord, timeout: float = 5.0) -> float:
        """Wait until ``conn`` is closed by either side; return that monotonic time."""
        try:
            await asyncio.wait_for(conn.closed.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"upstream connection #{conn.id} still open after {timeout} s") from None
        assert conn.closed_at is not None
        return conn.closed_at

    # -- connection handling

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        conn = ConnRecord(
            id=len(self.connections),
            opened_at=time.monotonic(),
            peer=writer.get_extra_info("peername"),
        )
        self.connections.append(conn)
        requests: asyncio.Queue[RecordedRequest | None] = asyncio.Queue()
        reader_task = asyncio.create_task(self._read_loop(reader, writer, conn, requests))
        try:
            while True:
                req = await requests.get()
                if req is None:
                    break
                keep = await self._answer(req, writer, conn)
                if not keep:
                    break
        except (ConnectionError, _PeerGone, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)
            if not writer.is_closing():
                writer.close()
            _mark_closed(conn)
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _read_loop(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: ConnRecord,
        out: asyncio.Queue[RecordedRequest | None],
    ) -> None:
        buf = bytearray()

        async def more() -> None:
            try:
                data = await reader.read(65536)
            except (ConnectionError, ssl.SSLError, OSError) as e:
                conn.peer_reset = isinstance(e, ConnectionResetError)
                data = b""
            if not data:
                _mark_peer_closed(conn)
                raise _PeerGone
            conn.raw_received += data
            buf.extend(data)

        async def read_line() -> bytes:
            while True:
                i = buf.find(b"\r\n")
                if i >= 0:
                    line = bytes(buf[:i])
                    del buf[: i + 2]
                    return line
                await more()

        async def read_exact(n: int) -> bytes:
            while len(buf) < n:
                await more()
            data = bytes(buf[:n])
            del buf[:n]
            return data

        try:
            while True:
                while True:
                    i = buf.find(b"\r\n\r\n")
                    if i >= 0:
                        break
                    await more()
                raw_head = bytes(buf[: i + 4])
                del buf[: i + 4]
                lines = raw_head[:-4].split(b"\r\n")
                parts = lines[0].split(b" ")
                if len(parts) != 3:
                    raise _ParseError(f"bad request line {lines[0]!r}")
                method, target, version = parts
                headers: list[tuple[bytes, bytes]] = []
                for line in lines[1:]:
                    name, sep, value = line.partition(b":")
                    if not sep:
                        raise _ParseError(f"bad header line {line!r}")
                    headers.append((name, value.strip(b" \t")))
                lower = [(k.lower(), v) for k, v in headers]
                te = [v for k, v in lower if k == b"transfer-encoding"]
                cl = [v for k, v in lower if k == b"content-length"]
                expect = [v for k, v in lower if k == b"expect"]
                if self.auto_continue and any(v.lower() == b"100-continue" for v in expect):
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                chunked = bool(te) and te[-1].lower().split(b",")[-1].strip() == b"chunked"
                raw_body = bytearray()
                body = bytearray()
                if chunked:
                    while True:
                        size_line = await read_line()
                        raw_body += size_line + b"\r\n"
                        size = int(size_line.split(b";", 1)[0].strip(), 16)
                        if size == 0:
                            while True:  # trailers
                                t = await read_line()
                                raw_body += t + b"\r\n"
                                if not t:
                                    break
                            break
                        data = await read_exact(size + 2)
                        raw_body += data
                        body += data[:-2]
                elif cl:
                    n = int(cl[0])
                    data = await read_exact(n)
                    raw_body += data
                    body += data
                req = RecordedRequest(
                    method=method,
                    target=target,
                    version=version,
                    headers=headers,
                    body=bytes(body),
                    raw_head=raw_head,
                    raw_body=bytes(raw_body),
                    chunked=chunked,
                    conn=conn,
                    received_at=time.monotonic(),
                )
                conn.requests.append(req)
                self.requests.append(req)
                async with self._new_request:
                    self._new_request.notify_all()
                await out.put(req)
        except _PeerGone:
            await out.put(None)
        except (_ParseError, ValueError) as e:
            conn.parse_error = str(e)
            writer.write(_head(400, [("Content-Length", "0"), ("Connection", "close")]))
            await out.put(None)
        # After the peer is gone, keep nothing running: the answer loop sees None or
        # notices `peer_closed` while it waits.

    async def _pick(self, req: RecordedRequest) -> Behaviour:
        if self.queue:
            return self.queue.popleft()
        if self.handler is not None:
            b = self.handler(req)
            if inspect.isawaitable(b):
                b = await b
            return b
        return self.default

    async def _answer(
        self, req: RecordedRequest, writer: asyncio.StreamWriter, conn: ConnRecord
    ) -> bool:
        """Run the behaviour for ``req``; return True to keep the connection for more."""
        behaviour = await self._pick(req)
        wants_close = any(
            b"close" in v.lower() for v in req.header_values("connection")
        ) or req.version == b"HTTP/1.0"
        return await self._run(behaviour, req, writer, conn, wants_close)

    async def _run(
        self,
        b: Behaviour,
        req: RecordedRequest,
        writer: asyncio.StreamWriter,
        conn: ConnRecord,
        wants_close: bool,
    ) -> bool:
        async def sleep(seconds: float) -> None:
            """Sleep, but stop early (raising) if the peer leaves meanwhile."""
            if seconds <= 0:
                return
            try:
                await asyncio.wait_for(conn.peer_closed.wait(), seconds)
            except TimeoutError:
                return
            raise _PeerGone

        def write(data: bytes, piece: bool = False) -> None:
            if req.response_started_at is None:
                req.response_started_at = time.monotonic()
            if writer.is_closing():
                raise _PeerGone
            writer.write(data)
            if piece:
                req.pieces_sent_at.append(time.monotonic())

        async def send_pieces(
            pieces: Sequence[bytes], delay: float | Sequence[float], frame: bool
        ) -> None:
            for i, p in enumerate(pieces):
                if i:
                    await sleep(_gap(delay, i - 1))
                if frame:
                    if p:
                        write(b"%x\r\n" % len(p) + p + b"\r\n", piece=True)
                else:
                    write(p, piece=True)
                await writer.drain()

        async def finish(end: str) -> bool:
            await writer.drain()
            if end == "reset":
                await sleep(0.05)
                _reset(writer)
                raise _PeerGone
            if end == "hang":
                await conn.peer_closed.wait()
                raise _PeerGone
            return True

        close_hdr: list[tuple[str | bytes, str | bytes]] = (
            [("Connection", "close")] if wants_close else []
        )

        if isinstance(b, Json):
            await sleep(b.delay_before)
            body = b.body_bytes()
            hdrs: list[tuple[str | bytes, str | bytes]] = []
            if b.content_type and not _has(b.headers, "content-type"):
                hdrs.append(("Content-Type", b.content_type))
            hdrs += list(b.headers)
            if not _has(b.headers, "content-length"):
                hdrs.append(("Content-Length", str(len(body))))
            hdrs += close_hdr
            write(_head(b.status, hdrs, reason=b.reason) + body, piece=True)
            await writer.drain()
            return not wants_close

        if isinstance(b, Chunked):
            await sleep(b.delay_before)
            hdrs = []
            if b.content_type and not _has(b.headers, "content-type"):
                hdrs.append(("Content-Type", b.content_type))
            hdrs += list(b.headers) + [("Transfer-Encoding", "chunked")] + close_hdr
            write(_head(b.status, hdrs))
            await send_pieces(b.pieces, b.delay, frame=True)
            if b.end == "clean":
                tr = b"".join(_b(k) + b": " + _b(v) + b"\r\n" for k, v in b.trailers)
                write(b"0\r\n" + tr + b"\r\n")
                await writer.drain()
                return not wants_close
            if b.end == "close":
                await writer.drain()
                writer.close()
                return False
            return await finish(b.end)

        if isinstance(b, Sse):
            await sleep(b.delay_before)
            hdrs = []
            if b.content_type and not _has(b.headers, "content-type"):
                hdrs.append(("Content-Type", b.content_type))
            hdrs += list(b.headers)
            version = b"HTTP/1.1"
            if b.framing == "chunked":
                hdrs.append(("Transfer-Encoding", "chunked"))
                hdrs += close_hdr
            elif b.framing == "length":
                hdrs.append(("Content-Length", str(len(b.body))))
                hdrs += close_hdr
            elif b.framing == "close":
                hdrs.append(("Connection", "close"))
            else:
                version = b"HTTP/1.0"
            write(_head(b.status, hdrs, version=version))
            await send_pieces(b.pieces, b.delay, frame=b.framing == "chunked")
            if b.end == "clean":
                if b.framing == "chunked":
                    write(b"0\r\n\r\n")
                    await writer.drain()
                    return not wants_close
                if b.framing == "length":
                    return not wants_close
                await writer.drain()
                writer.close()
                return False
            if b.end == "close":
                await writer.drain()
                writer.close()
                return False
            return await finish(b.end)

        if isinstance(b, CloseDelimited):
            await sleep(b.delay_before)
            hdrs = []
            if b.content_type and not _has(b.headers, "content-type"):
                hdrs.append(("Content-Type", b.content_type))
            hdrs += list(b.headers)
            if b.version != b"HTTP/1.0" and not _has(b.headers, "connection"):
                hdrs.append(("Connection", "close"))
            write(_head(b.status, hdrs, version=b.version))
            await send_pieces(b.pieces, b.delay, frame=False)
            if b.end in ("clean", "close"):
                await writer.drain()
                writer.close()
                return False
            return await finish(b.end)

        if isinstance(b, Raw):
            await sleep(b.delay_before)
            pieces = [b.data] if isinstance(b.data, bytes) else list(b.data)
            await send_pieces(pieces, b.delay, frame=False)
            if b.then == "keep":
                return True
            if b.then == "half_close":
                await writer.drain()
                writer.write_eof()
                conn.half_closed_at = time.monotonic()
                await conn.peer_closed.wait()
                raise _PeerGone
            if b.then == "close":
                await writer.drain()
                writer.close()
                return False
            return await finish(b.then)

        if isinstance(b, Stall):
            if b.seconds is None:
                await conn.peer_closed.wait()
                raise _PeerGone
            await sleep(b.seconds)
            if b.then is None:
                writer.close()
                return False
            return await self._run(b.then, req, writer, conn, wants_close)

        if isinstance(b, ResetMidBody):
            hdrs = []
            if b.content_type and not _has(b.headers, "content-type"):
                hdrs.append(("Content-Type", b.content_type))
            hdrs += list(b.headers)
            if b.content_length is None:
                hdrs.append(("Transfer-Encoding", "chunked"))
                body = b"%x\r\n" % len(b.body_prefix) + b.body_prefix + b"\r\n"
            else:
                hdrs.append(("Content-Length", str(b.content_length)))
                body = b.body_prefix
            write(_head(b.status, hdrs))
            write(body, piece=True)
            await writer.drain()
            await sleep(b.settle)
            _reset(writer)
            raise _PeerGone

        if isinstance(b, CloseWithoutResponse):
            await sleep(b.delay_before)
            if b.reset:
                _reset(writer)
            else:
                writer.close()
            return False

        raise TypeError(f"unknown behaviour {b!r}")


def _gap(delay: float | Sequence[float], i: int) -> float:
    if isinstance(delay, (int, float)):
        return float(delay)
    return float(delay[i]) if i < len(delay) else 0.0


def _mark_peer_closed(conn: ConnRecord) -> None:
    if conn.peer_closed_at is None:
        conn.peer_closed_at = time.monotonic()
        conn.peer_closed.set()
    _mark_closed(conn)


def _mark_closed(conn: ConnRecord) -> None:
    if conn.closed_at is None:
        conn.closed_at = time.monotonic()
        conn.closed.set()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on, timeout 0, then abort (no FIN, no flushing)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def _abort(writer: asyncio.StreamWriter) -> None:
    try:
        writer.transport.abort()
    except Exception:
        pass
