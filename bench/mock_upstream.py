"""Bench mock upstream: an OpenAI-compatible /v1/chat/completions on a raw asyncio.Protocol.

A separate process (uvloop when importable) with precomputed answers, so that it costs as
little CPU per request as a Python server can:

- a plain POST gets a ~600 B chat completion JSON with Content-Length (keep-alive);
- a body containing ``"stream":true`` gets SSE chat chunks, chunked transfer coding:
  N events (``x-bench-events``, default ``--events``) one every ``x-bench-interval-ms``
  (default ``--interval-ms``), event i sent at start + i × interval (no drift). Each
  event is ``data: {...,"i":<index>,"t":<time.time() just before the write>}\\n\\n``; then
  ``data: {"sha256":"<hex of every body byte sent before this event>"}\\n\\n`` and
  ``data: [DONE]\\n\\n``. A client proves byte-exactness by hashing what it received
  before the sha256 event and comparing;
- ``x-bench-status: S`` answers status S with an OpenAI error JSON (upstream errors);
- ``x-bench-cut: K`` aborts the connection (TCP close, no terminating chunk) after K
  events (an upstream that breaks mid-stream).

Requests are parsed by hand: request line, headers, Content-Length body; keep-alive and
pipelining (one request at a time). Prints ``mock-upstream listening on http://HOST:PORT``
on stdout, flushed, once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import socket
import sys
import time
from email.utils import formatdate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import install_uvloop, raise_nofile

CONTENT = ("The quick brown fox jumps over the lazy dog. " * 12).strip()


def chat_completion_body(size: int = 600) -> bytes:
    doc = {
        "id": "chatcmpl-bench0000000000000000000000000",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 96, "total_tokens": 105},
    }
    base = len(json.dumps(doc, separators=(",", ":")))
    doc["choices"][0]["message"]["content"] = CONTENT[: max(0, size - base)]
    return json.dumps(doc, separators=(",", ":")).encode()


BODY = chat_completion_body()
EV_PREFIX = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}],"i":'
)
DONE_EVENT = b"data: [DONE]\n\n"
DONE_CHUNK = b"%x\r\n%s\r\n" % (len(DONE_EVENT), DONE_EVENT)
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 529: "Overloaded"}


class Answers:
    """Precomputed response bytes; the Date in them is refreshed once per second."""

    def __init__(self) -> None:
        self.date = b""
        self.plain = b""
        self.sse_head = b""
        self.errors: dict[int, bytes] = {}
        self.refresh()

    def refresh(self) -> None:
        self.date = formatdate(time.time(), usegmt=True).encode()
        self.plain = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"date: %s\r\nserver: bench-mock\r\nopenai-processing-ms: 1\r\n\r\n%s" % (len(BODY), self.date, BODY)
        )
        self.sse_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\ndate: %s\r\nserver: bench-mock\r\n\r\n" % self.date
        )
        self.errors.clear()

    def error(self, status: int) -> bytes:
        out = self.errors.get(status)
        if out is None:
            body = json.dumps({"error": {"message": f"bench mock status {status}", "type": "bench", "code": status}}).encode()
            out = self.errors[status] = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"date: %s\r\nserver: bench-mock\r\n\r\n%s" % (status, REASONS.get(status, "Status").encode(), len(body), self.date, body)
            )
        return out


class MockConn(asyncio.Protocol):
    __slots__ = ("ans", "buf", "busy", "closed", "cut", "defaults", "i", "interval", "loop", "n", "sha", "t0", "timer", "transport")

    def __init__(self, ans: Answers, defaults: tuple[int, float]) -> None:
        self.ans = ans
        self.defaults = defaults
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.sha = None
        self.i = self.n = 0
        self.interval = 0.0
        self.t0 = 0.0
        self.cut = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while not self.busy and not self.closed:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self.transport.abort()  # type: ignore[union-attr]
                return
            head = bytes(buf[:end]).lower()
            cl = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                cl = int(head[i + 17 : j if j >= 0 else len(head)])
            if b"\r\ntransfer-encoding:" in head:
                self.transport.write(self.ans.error(400))  # type: ignore[union-attr]
                self.transport.close()  # type: ignore[union-attr]
                self.closed = True
                return
            total = end + 4 + cl
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        status = 200
        events, interval = self.defaults
        cut = -1
        if b"\r\nx-bench-" in head:
            for line in head.split(b"\r\n")[1:]:
                if not line.startswith(b"x-bench-"):
                    continue
                name, _, value = line.partition(b":")
                value = value.strip()
                if name == b"x-bench-status":
                    status = int(value)
                elif name == b"x-bench-events":
                    events = int(value)
                elif name == b"x-bench-interval-ms":
                    interval = float(value) / 1000.0
                elif name == b"x-bench-cut":
                    cut = int(value)
        t = self.transport
        assert t is not None
        if status != 200:
            t.write(self.ans.error(status))
            return
        if b'"stream":true' in body or b'"stream": true' in body:
            self.busy = True
            self.sha = hashlib.sha256()
            self.i = 0
            self.n = events
            self.interval = interval
            self.cut = cut
            self.t0 = self.loop.time()
            t.write(self.ans.sse_head)
            self._tick()
            return
        t.write(self.ans.plain)

    def _tick(self) -> None:
        self.timer = None
        if self.closed:
            return
        t = self.transport
        assert t is not None and self.sha is not None
        out = b""
        if self.i < self.n:
            ev = EV_PREFIX + b'%d,"t":%.6f}\n\n' % (self.i, time.time())
            self.sha.update(ev)
            out = b"%x\r\n%s\r\n" % (len(ev), ev)
            self.i += 1
            if self.i == self.cut:
                t.write(out)
                t.abort()
                self.closed = True
                return
        if self.i >= self.n:
            fin = b'data: {"sha256":"%s"}\n\n' % self.sha.hexdigest().encode()
            t.write(out + b"%x\r\n%s\r\n" % (len(fin), fin) + DONE_CHUNK + b"0\r\n\r\n")
            self.busy = False
            self.sha = None
            if self.buf:
                self.loop.call_soon(self.data_received, b"")
            return
        t.write(out)
        self.timer = self.loop.call_at(self.t0 + self.i * self.interval, self._tick)


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    ans = Answers()
    defaults = (args.events, args.interval_ms / 1000.0)

    def refresh() -> None:
        ans.refresh()
        loop.call_later(1.0, refresh)

    loop.call_later(1.0, refresh)
    server = await loop.create_server(lambda: MockConn(ans, defaults), args.host, args.port, backlog=4096, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"mock-upstream listening on http://{args.host}:{port}", flush=True)
    await stop
    server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--events", type=int, default=100, help="SSE events per stream unless x-bench-events says")
    p.add_argument("--interval-ms", type=float, default=10.0, help="SSE interval unless x-bench-interval-ms says")
    args = p.parse_args()
    raise_nofile()
    install_uvloop()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
