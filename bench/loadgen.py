"""Bench load client: raw keep-alive HTTP/1.1 over asyncio (uvloop when importable).

Modes (each prints ``RESULT {json}`` as its last stdout line):

``rps``   C keep-alive connections send a small POST back to back for D seconds; every
          completed request's latency is recorded. With ``--sync`` it prints ``START``
          when the measured window opens (after ``--warmup``) and ``END`` when it closes,
          so an orchestrator can sample the server's CPU exactly over the window.
          Result: requests, rps, p50/p90/p99/max latency (ms), errors, statuses.
``sse``   S concurrent streams (one connection each, starts spread over one interval),
          N events at I ms asked of the mock via x-bench-events / x-bench-interval-ms.
          Per stream: time to first event; per event: delay = receive time − the "t" the
          mock stamped right before writing it; coalescing = events that arrived in one
          read together with an event sent ≥ 5 ms later; byte-exactness = the sha256 of
          every de-chunked body byte before the mock's sha256 event equals the one it
          announces, followed by exactly ``data: [DONE]``, with all N events in order.
``hold``  N slow streams (the mock sends one event per ``--interval-ms``), opened at most
          ``--concurrency`` at a time; prints ``READY {json}`` once each got its first
          event (or failed), then holds them until stdin says ``CLOSE`` (or EOF, or
          ``--hold`` seconds), aborts them all and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import sys
import time
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ChunkedDecoder, install_uvloop, percentile, raise_nofile, rnd

DEFAULT_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'


def build_request(args: argparse.Namespace, body: bytes, extra: list[tuple[str, str]] = ()) -> bytes:  # type: ignore[assignment]
    lines = [
        f"POST {args.path} HTTP/1.1",
        f"Host: {args.host}:{args.port}",
        "User-Agent: rawgw-bench/1",
        f"Authorization: Bearer {args.key}",
        "Content-Type: application/json",
        "Accept: */*",
        f"Content-Length: {len(body)}",
    ]
    for h in args.header or ():
        lines.append(h)
    for name, value in extra:
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ResponseReader:
    """Incremental reader of one response at a time: head, then CL or chunked body."""

    __slots__ = ("body_cb", "buf", "chunked", "cl", "decoder", "head_done", "status")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.cl = -1
        self.chunked = False
        self.decoder: ChunkedDecoder | None = None
        self.head_done = False

    def feed(self, data: bytes, pieces: list[bytes] | None) -> int:
        """Consume ``data``; return 1 when a response completed (leftover kept), 0 if not.

        Body pieces go to ``pieces`` when it is a list. Raises ValueError on bad framing.
        """
        buf = self.buf
        if data:
            buf += data
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    raise ValueError("response head too large")
                return 0
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            self.status = int(head[9:12])
            if head[9:10] == b"1":  # 1xx: skip, read the next head
                return self.feed(b"", pieces)
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                self.cl = int(head[i + 17 : j if j >= 0 else len(head)])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.chunked = True
                self.decoder = ChunkedDecoder()
            else:
                self.cl = 0
            self.head_done = True
        if self.chunked:
            dec = self.decoder
            assert dec is not None
            if not buf:
                return 0
            out: list[bytes] = [] if pieces is None else pieces
            used = dec.feed(bytes(buf), out)
            del buf[:used]
            if dec.done:
                return 1
            return 0
        if len(buf) < self.cl:
            return 0
        if pieces is not None and self.cl:
            pieces.append(bytes(buf[: self.cl]))
        del buf[: self.cl]
        return 1


# ---- rps ------------------------------------------------------------------------------


class RpsRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.request = build_request(args, args.body.encode() if args.body else DEFAULT_BODY)
        self.running = True
        self.measuring = False
        self.latencies: list[float] = []
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.error_samples: list[str] = []
        self.inflight = 0
        self.reconnects = 0
        self.idle = asyncio.Event()

    def note_error(self, msg: str) -> None:
        if self.measuring:
            self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(msg)


class RpsConn(asyncio.Protocol):
    __slots__ = ("busy", "lost", "reader", "run", "t0", "transport")

    def __init__(self, run: RpsRun) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader()
        self.t0 = 0.0
        self.busy = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def fire(self) -> None:
        run = self.run
        if not run.running or self.transport is None or self.transport.is_closing():
            return
        self.busy = True
        run.inflight += 1
        self.t0 = perf_counter()
        self.transport.write(run.request)

    def data_received(self, data: bytes) -> None:
        run = self.run
        try:
            done = self.reader.feed(data, None)
            while done:
                t1 = perf_counter()
                self.busy = False
                run.inflight -= 1
                status = self.reader.status
                if run.measuring:
                    run.latencies.append(t1 - self.t0)
                    run.statuses[status] = run.statuses.get(status, 0) + 1
                    if status != 200:
                        run.errors += 1
                self.reader.reset()
                if run.running:
                    self.fire()
                elif run.inflight == 0:
                    run.idle.set()
                done = self.reader.feed(b"", None) if self.reader.buf else 0
        except ValueError as exc:
            run.note_error(f"framing: {exc}")
            self.transport.abort()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        if self.busy:
            self.busy = False
            run.inflight -= 1
            run.note_error(f"connection lost mid-request: {exc}")
            if run.inflight == 0 and not run.running:
                run.idle.set()
        if not self.lost.done():
            self.lost.set_result(None)


async def rps_main(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    run = RpsRun(args)
    conns: list[RpsConn] = []

    async def one_connection() -> None:
        # A connection the server closes is reopened while the run lasts (bounded).
        while run.running and run.reconnects < 100000:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: RpsConn(run), args.host, args.port), 10
                )
            except (TimeoutError, OSError) as exc:
                run.note_error(f"connect: {exc!r}")
                run.reconnects += 1
                await asyncio.sleep(0.05)
                continue
            conns.append(proto)  # type: ignore[arg-type]
            await ready.wait()
            proto.fire()  # type: ignore[attr-defined]
            await proto.lost  # type: ignore[attr-defined]
            run.reconnects += 1

    ready = asyncio.Event()
    tasks = [loop.create_task(one_connection()) for _ in range(args.connections)]
    t_conn = perf_counter()
    while len(conns) < args.connections and perf_counter() - t_conn < 15:
        await asyncio.sleep(0.01)
    ready.set()
    await asyncio.sleep(args.warmup)
    run.latencies.clear()
    run.measuring = True
    if args.sync:
        print("START", flush=True)
    t_start = perf_counter()
    await asyncio.sleep(args.duration)
    run.running = False
    elapsed = perf_counter() - t_start
    run.measuring = False
    if args.sync:
        print("END", flush=True)
    if run.inflight > 0:
        try:
            await asyncio.wait_for(run.idle.wait(), 5)
        except TimeoutError:
            pass
    for c in conns:
        if c.transport is not None:
            c.transport.abort()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(run.latencies)
    n = len(lat)
    return {
        "mode": "rps",
        "connections": args.connections,
        "duration_s": rnd(elapsed),
        "requests": n,
        "ok": run.statuses.get(200, 0),
        "rps": rnd(n / elapsed if elapsed > 0 else 0.0, 1),
        "p50_ms": rnd(percentile(lat, 50) * 1000, 4) if n else None,
        "p90_ms": rnd(percentile(lat, 90) * 1000, 4) if n else None,
        "p99_ms": rnd(percentile(lat, 99) * 1000, 4) if n else None,
        "max_ms": rnd(lat[-1] * 1000, 4) if n else None,
        "errors": run.errors,
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "reconnects": max(0, run.reconnects - 0),
        "error_samples": run.error_samples,
    }


# ---- sse ------------------------------------------------------------------------------


class StreamConn(asyncio.Protocol):
    """One SSE stream on its own connection; checks timing and byte-exactness."""

    def __init__(self, request: bytes, expect_events: int, keep_body: bool = True) -> None:
        self.request = request
        self.expect = expect_events
        self.keep_body = keep_body
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader()
        self.body = bytearray()
        self.scan = 0
        self.ev_start = 0
        self.t_send = 0.0
        self.ttfe: float | None = None
        self.delays: list[float] = []
        self.coalesced = 0
        self.next_i = 0
        self.order_ok = True
        self.sha: bytes | None = None
        self.sha_offset = -1
        self.done_seen = False
        self.complete = False
        self.status = 0
        self.error = ""
        self.first_event: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport)

    def send(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self._finish("connection closed before the request was sent")
            return
        self.t_send = perf_counter()
        self.transport.write(self.request)

    def _finish(self, error: str = "") -> None:
        if error and not self.error:
            self.error = error
        if not self.first_event.done():
            self.first_event.set_result(None)
        if not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        t_perf = perf_counter()
        pieces: list[bytes] = []
        try:
            done = self.reader.feed(data, pieces)
        except ValueError as exc:
            self._finish(f"framing: {exc}")
            self.transport.abort()  # type: ignore[union-attr]
            return
        if self.reader.head_done and not self.head_seen:
            self.head_seen = True
            self.status = self.reader.status
            if self.status != 200:
                self._finish(f"status {self.status}")
        if not pieces and not done:
            return
        if not self.keep_body:
            if pieces and not self.first_event.done():
                self.ttfe = t_perf - self.t_send
                self.first_event.set_result(None)
            if done:
                self._finish("stream ended while held")
            return
        body = self.body
        for p in pieces:
            body += p
        stamps: list[float] = []
        while True:
            idx = body.find(b"\n\n", self.scan)
            if idx < 0:
                self.scan = max(self.ev_start, len(body) - 1)
                break
            ev = bytes(body[self.ev_start : idx])
            start = self.ev_start
            self.ev_start = self.scan = idx + 2
            if ev.startswith(b'data: {"id"'):
                k = ev.rindex(b',"t":')
                t = float(ev[k + 5 : -1])
                i = int(ev[ev.rindex(b'"i":', 0, k) + 4 : k])
                if i != self.next_i:
                    self.order_ok = False
                self.next_i = i + 1
                stamps.append(t)
                self.delays.append(now - t)
                if self.ttfe is None:
                    self.ttfe = t_perf - self.t_send
                    if not self.first_event.done():
                        self.first_event.set_result(None)
            elif ev.startswith(b'data: {"sha256":"'):
                self.sha = ev[17:81]
                self.sha_offset = start
            elif ev == b"data: [DONE]":
                self.done_seen = True
        if len(stamps) > 1:
            latest = max(stamps)
            for t in stamps:
                if latest - t >= 0.005:
                    self.coalesced += 1
        if done:
            self.complete = True
            self._finish()
            self.transport.close()  # type: ignore[union-attr]

    def exact(self) -> bool:
        if not (self.complete and self.sha is not None and self.done_seen and self.order_ok):
            return False
        if self.next_i != self.expect or len(self.delays) != self.expect:
            return False
        body = bytes(self.body)
        head = body[: self.sha_offset]
        tail = body[self.sha_offset :]
        return (
            hashlib.sha256(head).hexdigest().encode() == self.sha
            and tail == b'data: {"sha256":"' + self.sha + b'"}\n\n' + b"data: [DONE]\n\n"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.complete:
            self._finish(f"connection lost before the stream ended ({exc or 'EOF'})")


async def open_streams(
    args: argparse.Namespace, n: int, make: callable, concurrency: int, deadline: float  # type: ignore[valid-type]
) -> list[StreamConn | None]:
    """Open ``n`` connections, at most ``concurrency`` connecting at once."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    out: list[StreamConn | None] = [None] * n

    async def one(k: int) -> None:
        async with sem:
            left = deadline - perf_counter()
            if left <= 0:
                return
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(make, args.host, args.port), min(left, 10))
            except (TimeoutError, OSError):
                return
            out[k] = proto  # type: ignore[assignment]

    await asyncio.gather(*(one(k) for k in range(n)))
    return out


async def sse_main(args: argparse.Namespace) -> dict:
    extra = [("x-bench-events", str(args.events)), ("x-bench-interval-ms", f"{args.interval_ms:g}")]
    request = build_request(args, STREAM_BODY, extra)
    budget = args.events * args.interval_ms / 1000.0 + args.timeout
    deadline = perf_counter() + budget
    streams = await open_streams(args, args.streams, lambda: StreamConn(request, args.events), args.concurrency, deadline)
    live = [s for s in streams if s is not None]
    # Spread the starts over one interval: streams do not all tick in the same millisecond.
    spread = args.interval_ms / 1000.0
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k, s in enumerate(live):
        loop.call_at(t0 + spread * k / max(1, len(live)), s.send)
    if live:
        try:
            await asyncio.wait_for(asyncio.gather(*(s.finished for s in live)), max(0.1, deadline - perf_counter()))
        except TimeoutError:
            pass
    for s in live:
        if s.transport is not None:
            s.transport.abort()
    ttfe = sorted(s.ttfe for s in live if s.ttfe is not None)
    delays = sorted(d for s in live for d in s.delays)
    events = len(delays)
    coalesced = sum(s.coalesced for s in live)
    exact = sum(1 for s in live if s.exact())
    errors = [s.error for s in live if s.error]
    return {
        "mode": "sse",
        "streams": args.streams,
        "events_per_stream": args.events,
        "interval_ms": args.interval_ms,
        "connected": len(live),
        "complete": sum(1 for s in live if s.complete),
        "exact": exact,
        "exact_pct": rnd(100.0 * exact / args.streams if args.streams else 0.0, 2),
        "events": events,
        "events_expected": args.streams * args.events,
        "ttfe_p50_ms": rnd(percentile(ttfe, 50) * 1000, 3) if ttfe else None,
        "ttfe_p99_ms": rnd(percentile(ttfe, 99) * 1000, 3) if ttfe else None,
        "delay_p50_ms": rnd(percentile(delays, 50) * 1000, 3) if delays else None,
        "delay_p99_ms": rnd(percentile(delays, 99) * 1000, 3) if delays else None,
        "delay_max_ms": rnd(delays[-1] * 1000, 3) if delays else None,
        "coalesced": coalesced,
        "coalesced_pct": rnd(100.0 * coalesced / events if events else 0.0, 3),
        "errors": len(errors) + (args.streams - len(live)),
        "error_samples": errors[:5] + (["connect failed"] if len(live) < args.streams else []),
    }


# ---- hold -----------------------------------------------------------------------------


async def hold_main(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    extra = [("x-bench-events", str(args.events)), ("x-bench-interval-ms", f"{args.interval_ms:g}")]
    request = build_request(args, STREAM_BODY, extra)
    t_begin = perf_counter()
    deadline = t_begin + args.timeout
    sem = asyncio.Semaphore(args.concurrency)
    streams: list[StreamConn] = []

    async def one() -> None:
        async with sem:
            left = deadline - perf_counter()
            if left <= 0:
                return
            try:
                _, s = await asyncio.wait_for(
                    loop.create_connection(lambda: StreamConn(request, args.events, keep_body=False), args.host, args.port),
                    min(left, 10),
                )
            except (TimeoutError, OSError):
                return
            streams.append(s)  # type: ignore[arg-type]
            s.send()  # type: ignore[attr-defined]
            try:
                await asyncio.wait_for(asyncio.shield(s.first_event), max(0.1, deadline - perf_counter()))  # type: ignore[attr-defined]
            except TimeoutError:
                pass

    await asyncio.gather(*(one() for _ in range(args.streams)))
    up = sum(1 for s in streams if s.ttfe is not None and not s.error)
    ready = {"up": up, "failed": args.streams - up, "open_s": rnd(perf_counter() - t_begin)}
    print("READY " + json.dumps(ready), flush=True)
    closed = loop.create_future()

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if (not line or line.strip() == "CLOSE") and not closed.done():
            closed.set_result(None)

    try:
        loop.add_reader(sys.stdin.fileno(), on_stdin)
    except (OSError, ValueError, NotImplementedError):
        pass
    try:
        await asyncio.wait_for(closed, args.hold)
    except TimeoutError:
        pass
    still = sum(1 for s in streams if not s.finished.done())
    for s in streams:
        if s.transport is not None:
            s.transport.abort()
    ttfe = sorted(s.ttfe for s in streams if s.ttfe is not None)
    return {
        "mode": "hold",
        **ready,
        "still_open_at_close": still,
        "ttfe_p50_ms": rnd(percentile(ttfe, 50) * 1000, 3) if ttfe else None,
        "ttfe_p99_ms": rnd(percentile(ttfe, 99) * 1000, 3) if ttfe else None,
        "error_samples": [s.error for s in streams if s.error][:5],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("rps", "sse", "hold"):
        s = sub.add_parser(name)
        s.add_argument("--host", default="127.0.0.1")
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--path", default="/v1/chat/completions")
        s.add_argument("--key", default="bench-key", help="sent as Authorization: Bearer KEY")
        s.add_argument("--header", action="append", help="extra request header 'Name: value' (repeatable)")
        if name == "rps":
            s.add_argument("--connections", "-c", type=int, default=64)
            s.add_argument("--duration", "-d", type=float, default=10.0)
            s.add_argument("--warmup", type=float, default=0.5)
            s.add_argument("--body", default="")
            s.add_argument("--sync", action="store_true", help="print START/END around the measured window")
        elif name == "sse":
            s.add_argument("--streams", "-s", type=int, default=10)
            s.add_argument("--events", type=int, default=100)
            s.add_argument("--interval-ms", type=float, default=10.0)
            s.add_argument("--concurrency", type=int, default=200, help="connections opening at once")
            s.add_argument("--timeout", type=float, default=30.0, help="seconds allowed beyond events × interval")
        else:
            s.add_argument("--streams", "-s", type=int, default=1000)
            s.add_argument("--events", type=int, default=1_000_000)
            s.add_argument("--interval-ms", type=float, default=1000.0)
            s.add_argument("--concurrency", type=int, default=200)
            s.add_argument("--timeout", type=float, default=120.0, help="seconds allowed to open every stream")
            s.add_argument("--hold", type=float, default=300.0, help="longest hold before closing by itself")
    args = p.parse_args()
    raise_nofile()
    install_uvloop()
    fn = {"rps": rps_main, "sse": sse_main, "hold": hold_main}[args.mode]
    result = asyncio.run(fn(args))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
