"""Helpers for the hardening tests (issue 7): process gauges from /proc and /metrics,
and small request builders (the one mock upstream is tests/mock_upstream.py).

Nothing here imports rawgw: the gateway stays a black box.

functions
    rss_kb(pid) -> int                       VmRSS of a process, in KiB (/proc/<pid>/status)
    fd_count(pid) -> int                     open file descriptors (/proc/<pid>/fd)
    await gauges(port) -> dict               rawgw_asyncio_tasks, pool open/idle, open connections,
                                             active streams, fds (from /metrics, gateway key)
    stream_body(model="m") -> bytes          a chat completion body with "stream": true
    sse_pieces(n, size) -> list[bytes]       n SSE events of about ``size`` bytes, distinct
    sha(data) -> str                         sha256 hex
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import chat_body, wait_until
from ops_helpers import scrape


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def gauges(port: int) -> dict[str, float]:
    """The leak-relevant gauges of one /metrics scrape (the scrape's own connection
    counts in ``open_connections``)."""
    _, m = await scrape(port)
    pool_open = sum(v for (n, lbl), v in m.samples.items() if n == "rawgw_upstream_pool_connections" and ("state", "open") in lbl)
    pool_idle = sum(v for (n, lbl), v in m.samples.items() if n == "rawgw_upstream_pool_connections" and ("state", "idle") in lbl)
    return {
        "tasks": m.get("rawgw_asyncio_tasks") or 0.0,
        "pool_open": pool_open,
        "pool_idle": pool_idle,
        "open_connections": m.get("rawgw_open_connections") or 0.0,
        "active_streams": m.get("rawgw_active_streams") or 0.0,
        "fds": m.get("rawgw_process_open_fds") or 0.0,
    }


def stream_body(model: str = "m") -> bytes:
    """A compact streaming chat body (conftest.chat_body, the one body builder)."""
    return chat_body(model, stream=True)


def sse_pieces(n: int, size: int = 100) -> list[bytes]:
    """``n`` SSE events, each about ``size`` bytes and different from its neighbours."""
    out = []
    for i in range(n):
        pad = bytes([97 + i % 26]) * max(0, size - 20)
        out.append(b"data: %08d %s\n\n" % (i, pad))
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- raw upstream


async def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """The old name of conftest.wait_until (the one poller)."""
    return await wait_until(pred, timeout, what, interval)


async def small_window_connection(port: int, rcvbuf: int = 32768, timeout: float = 5.0) -> Any:
    """A RawConn whose socket has a small receive buffer, set before connecting so the
    TCP window stays small: a client that does not read then really stops the bytes
    (loopback autotuning would otherwise soak up tens of MB in the kernel)."""
    import socket

    from conftest import RawConn

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), timeout)
    except BaseException:
        s.close()
        raise
    reader, writer = await asyncio.open_connection(sock=s, limit=1 << 20)
    return RawConn(reader, writer, timeout)


def parse_stream_statuses(data: bytes) -> tuple[list[int], bytes]:
    """Statuses of the complete Content-Length-framed responses at the start of
    ``data`` (the gateway's own answers are all CL-framed) and the unparsed rest."""
    statuses: list[int] = []
    pos = 0
    n = len(data)
    while pos < n:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = data[pos:end]
        first, _, rest = head.partition(b"\r\n")
        parts = first.split(b" ", 2)
        assert parts[0] == b"HTTP/1.1" and len(parts) >= 2, first
        cl = 0
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                cl = int(value.strip())
        if end + 4 + cl > n:
            break
        statuses.append(int(parts[1]))
        pos = end + 4 + cl
    return statuses, data[pos:]
