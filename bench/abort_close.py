"""Upstream billing stops: how fast the upstream sees the close when clients abort.

N concurrent SSE streams through the gateway (a slow upstream: one event per 100 ms);
once every stream got its first event, all clients reset their connections at once;
the upstream records when each of its connections saw EOF/reset. Prints the max and
p99 delay between the aborts and the upstream closes.

    python bench/abort_close.py [--streams 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'


class SlowSSE(asyncio.Protocol):
    closed_at: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport
        self.buf = b""
        self.task: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None and b"\r\n\r\n" in self.buf:
            self.task = asyncio.get_running_loop().create_task(self.stream())

    async def stream(self) -> None:
        self.t.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")  # type: ignore[attr-defined]
        while True:
            self.t.write(b"e\r\ndata: tick\n\n\r\n\r\n")  # type: ignore[attr-defined]
            await asyncio.sleep(0.1)

    def connection_lost(self, exc: Exception | None) -> None:
        SlowSSE.closed_at.append(time.monotonic())
        if self.task is not None:
            self.task.cancel()


async def main(streams: int) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * streams + 100)), hard))
    loop = asyncio.get_running_loop()
    up = await loop.create_server(SlowSSE, "127.0.0.1", 0, backlog=4096)
    uport = up.sockets[0].getsockname()[1]
    cfg = Path(tempfile.mkdtemp()) / "gw.toml"
    cfg.write_text(
        f'[server]\nport = 0\n[[keys]]\nkey = "k"\nname = "b"\n[providers.p]\ntype = "openai"\n'
        f'base_url = "http://127.0.0.1:{uport}/v1"\nkeys = ["sk-x"]\nmax_connections = {streams * 2}\n'
        "[logging]\naccess = false\nerrors = false\n"
    )
    gw = subprocess.Popen([sys.executable, "-m", "rawgw", "serve", "-c", str(cfg), "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
    try:
        assert gw.stdout is not None
        port = int(re.search(r":(\d+)$", gw.stdout.readline().strip()).group(1))  # type: ignore[union-attr]
        req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
        writers = []
        sem = asyncio.Semaphore(100)

        async def open_one() -> None:
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(req)
                await r.readuntil(b"data: tick")
                writers.append(w)

        await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(streams))), 60)
        SlowSSE.closed_at.clear()
        t_abort = time.monotonic()
        for w in writers:
            sock = w.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        aborted = time.monotonic() - t_abort
        deadline = time.monotonic() + 5
        while len(SlowSSE.closed_at) < streams and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        delays = sorted((t - t_abort) * 1000 for t in SlowSSE.closed_at)
        print(
            f"streams {streams}: upstream saw {len(delays)} closes; after the aborts began: "
            f"p50 {delays[len(delays) // 2]:.1f} ms, p99 {delays[int(len(delays) * 0.99) - 1]:.1f} ms, "
            f"max {delays[-1]:.1f} ms (issuing the {streams} aborts took {aborted * 1000:.1f} ms)"
        )
        return 0 if len(delays) == streams else 1
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(10)
        up.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=500)
    raise SystemExit(asyncio.run(main(ap.parse_args().streams)))
