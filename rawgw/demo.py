"""`rawgw demo`: a built-in mock OpenAI-compatible upstream with a gateway in front.

Offline and keyless: the mock listens on an ephemeral loopback port, the gateway
on ``--port`` (default: ephemeral), and the printed curl commands name the real
ports. ``--once`` sends one plain and one streaming completion and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time

import h11
import orjson

from rawgw.config import parse_config

DEMO_KEY = "demo-gateway-key"
DEMO_WORDS = [
    "Hello!",
    "I",
    "am",
    "the",
    "rawgw",
    "demo",
    "model.",
    "Every",
    "byte",
    "of",
    "this",
    "answer",
    "passed",
    "through",
    "the",
    "gateway",
    "untouched.",
]


class MockUpstream(asyncio.Protocol):
    """Just enough of the OpenAI API: chat completions (plain and SSE) and models."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.conn = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._process()

    def _process(self) -> None:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                if self.transport:
                    self.transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
                self.body = bytearray()
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                asyncio.get_running_loop().create_task(self._answer())
                return
            elif isinstance(event, h11.ConnectionClosed):
                return

    async def _answer(self) -> None:
        assert self.request is not None and self.transport is not None
        path = self.request.target.split(b"?")[0]
        if path.endswith(b"/models"):
            body = orjson.dumps(
                {"object": "list", "data": [{"id": "demo-model", "object": "model", "created": 1700000000, "owned_by": "rawgw-demo"}]}
            )
            self._send(200, [(b"content-type", b"application/json")], [body])
        elif path.endswith(b"/chat/completions"):
            try:
                req = orjson.loads(bytes(self.body))
            except orjson.JSONDecodeError:
                req = {}
            model = req.get("model", "demo-model") if isinstance(req, dict) else "demo-model"
            if isinstance(req, dict) and req.get("stream"):
                await self._stream(model)
            else:
                self._send(200, [(b"content-type", b"application/json")], [completion(model)])
        else:
            self._send(404, [(b"content-type", b"application/json")], [b'{"error":{"message":"not found","type":"not_found"}}'])
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self._process()
        elif self.transport:
            self.transport.close()

    def _send(self, status: int, headers: list[tuple[bytes, bytes]], parts: list[bytes]) -> None:
        assert self.transport is not None
        body = b"".join(parts)
        headers = headers + [(b"content-length", str(len(body)).encode())]
        self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)) or b"")
        self.transport.write(self.conn.send(h11.Data(data=body)) or b"")
        self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")

    async def _stream(self, model: str) -> None:
        assert self.transport is not None
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        self.transport.write(self.conn.send(h11.Response(status_code=200, headers=headers)) or b"")
        created = int(time.time())
        for i, word in enumerate(DEMO_WORDS):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            chunk = {
                "id": "chatcmpl-demo",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            self.transport.write(self.conn.send(h11.Data(data=b"data: " + orjson.dumps(chunk) + b"\n\n")) or b"")
            await asyncio.sleep(self.delay)
        final = {
            "id": "chatcmpl-demo",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": len(DEMO_WORDS), "total_tokens": 9 + len(DEMO_WORDS)},
        }
        self.transport.write(self.conn.send(h11.Data(data=b"data: " + orjson.dumps(final) + b"\n\ndata: [DONE]\n\n")) or b"")
        self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")


def completion(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-demo",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(DEMO_WORDS)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": len(DEMO_WORDS), "total_tokens": 9 + len(DEMO_WORDS)},
        }
    )


def demo_config(upstream_port: int, port: int) -> dict[str, object]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "public_paths": ["/health", "/dashboard"]},
        "keys": [{"key": DEMO_KEY, "name": "demo"}],
        "providers": {
            "mock": {
                "type": "openai",
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "keys": ["sk-demo-upstream-key-0000"],
            }
        },
        "routes": [{"match": "gpt-4*", "model": "demo-model", "providers": ["mock"]}],
        "logging": {"access": False, "errors": False},
    }


async def _raw_post(port: int, body: bytes, on_bytes: object = None) -> tuple[bytes, bytes]:
    """A tiny HTTP/1.1 client: returns (head, body bytes as received)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (port, DEMO_KEY.encode(), len(body), body)
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    chunks = []
    while True:
        data = await reader.read(65536)
        if not data:
            break
        chunks.append(data)
        if callable(on_bytes):
            on_bytes(data)
    writer.close()
    return head, b"".join(chunks)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


async def _demo(port: int, once: bool) -> int:
    from rawgw.listen import announce_listening
    from rawgw.serve import serve_forever

    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(MockUpstream, "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    config = parse_config(demo_config(upstream_port, port))
    ready: asyncio.Future[int] = loop.create_future()

    def announce(server: object) -> None:
        ready.set_result(server.port)  # type: ignore[attr-defined]

    serving = loop.create_task(serve_forever(config, None, announce=announce))
    gw_port = await ready
    url = f"http://127.0.0.1:{gw_port}"
    announce_listening(url, f"  (demo: mock upstream on http://127.0.0.1:{upstream_port}/v1)")
    if not once:
        print(
            f"""
Try it (gateway key: {DEMO_KEY}):

  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \\
       -H 'Content-Type: application/json' -d '{{"model":"gpt-4","messages":[{{"role":"user","content":"hi"}}]}}'

  curl -sN {url}/v1/chat/completions -H 'Authorization: Bearer {DEMO_KEY}' \\
       -H 'Content-Type: application/json' -d '{{"model":"gpt-4","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'

  curl -s {url}/v1/models -H 'Authorization: Bearer {DEMO_KEY}'
  curl -s {url}/health/providers -H 'Authorization: Bearer {DEMO_KEY}'
  curl -s {url}/metrics -H 'Authorization: Bearer {DEMO_KEY}'

Dashboard (live, from /metrics.json): {url}/dashboard#key={DEMO_KEY}

Ctrl-C stops it.""",
            flush=True,
        )
        rc = await serving
        upstream.close()
        return rc
    sys.stdout.flush()
    plain = orjson.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "Say hello"}]})
    head, body = await _raw_post(gw_port, plain)
    print("\n--- POST /v1/chat/completions (model gpt-4 -> demo-model) ---")
    print(head.decode("latin-1").strip())
    print()
    print(body.decode())
    ok = head.startswith(b"HTTP/1.1 200")
    print('\n--- the same, with "stream": true (chunks printed as they arrive) ---')
    stream_req = orjson.dumps({"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
    shead, sbody = await _raw_post(gw_port, stream_req)
    print(shead.decode("latin-1").strip())
    print()
    events = _dechunk(sbody) if b"chunked" in shead.lower() else sbody
    print(events.decode(), end="")
    text = []
    for line in events.split(b"\n"):
        if line.startswith(b"data: {"):
            delta = orjson.loads(line[6:])["choices"][0]["delta"]
            text.append(delta.get("content", ""))
    print("assembled:", "".join(text))
    ok = ok and shead.startswith(b"HTTP/1.1 200") and events.endswith(b"data: [DONE]\n\n")
    serving.cancel()
    try:
        await serving
    except asyncio.CancelledError:
        pass
    upstream.close()
    return 0 if ok else 1


def run_demo(port: int = 0, once: bool = False) -> int:
    from rawgw.serve import install_event_loop_policy

    install_event_loop_policy()
    try:
        return asyncio.run(_demo(port, once))
    except KeyboardInterrupt:
        return 0
