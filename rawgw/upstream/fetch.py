"""A whole small upstream exchange for the gateway's own needs (model lists).

Not for the relay hot path: it collects the body in memory (bounded).
"""

from __future__ import annotations

import asyncio

import h11

from rawgw.upstream.connection import UpstreamError
from rawgw.upstream.pool import OriginPool

MAX_FETCH_BYTES = 8 * 1024 * 1024


class BodyCollector:
    """A body sink that keeps the whole (bounded) body and resolves a future at its end."""

    def __init__(self, limit: int = MAX_FETCH_BYTES) -> None:
        self.limit = limit
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def cork(self) -> None:
        pass

    def uncork(self) -> None:
        pass

    def on_upstream_data(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.done():
                self.done.set_exception(UpstreamError("protocol", "upstream answer too large"))
            return
        self.parts.append(data)

    def on_upstream_raw(self, raw: bytes | list[bytes]) -> None:
        pass  # never asked for: stream_to(raw=False)

    def on_upstream_end(self) -> None:
        if not self.done.done():
            self.done.set_result(b"".join(self.parts))

    def on_upstream_error(self, err: UpstreamError) -> None:
        if not self.done.done():
            self.done.set_exception(err)


async def fetch(
    pool: OriginPool, request: h11.Request, connect_timeout: float, timeout: float
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Send ``request`` (no body) and return status, headers and the whole body."""
    conn = await pool.acquire(connect_timeout)
    try:
        async with asyncio.timeout(timeout):
            head = await conn.start(request, b"", timeout)
            collector = BodyCollector()
            conn.stream_to(collector)
            body = await collector.done
    except BaseException:
        conn.detach()
        raise
    return head.status_code, list(head.headers), body
