"""/metrics of a ``--workers N`` gateway: the answering worker asks its siblings.

Each worker listens on a unix socket ``<dir>/w<index>.sock`` (``dir`` made by the
supervisor, private to the process group) that answers every connection with one
JSON snapshot of its counters, histograms and gauges, then closes. A scrape of
``/metrics``, ``/metrics.json`` (the dashboard) reaching any worker connects to every
other socket in ``dir`` at once, adds what they send to its own numbers and renders
the sum: counters and histograms summed, gauges summed (open connections, active
streams, pool connections), the way prometheus_client's multiprocess mode presents them.

Why ask at scrape time rather than share files (prometheus_client's mmap files): a
request costs nothing more (no file write per increment, no periodic flush), and the
answer is exact at the moment of the scrape, not up to a flush interval behind. The
cost is a scrape's: N-1 local connections, each bounded by ``PEER_TIMEOUT_S``; a
worker that does not answer in time (busy, restarting) is left out of that scrape and
``rawgw_workers_answered`` says how many were summed. A worker that died takes its
counts with it (a restarted worker starts from zero, like a restarted process: Prometheus'
``rate()`` treats the drop as a counter reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("rawgw")

PEER_TIMEOUT_S = 1.0
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024


class Siblings:
    """This worker's snapshot socket, and the gathering of the others' snapshots."""

    def __init__(self, directory: str, index: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.dir = Path(directory)
        self.index = index
        self.path = self.dir / f"w{index}.sock"
        self.snapshot = snapshot
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by this worker's dead predecessor
        self.server = await asyncio.start_unix_server(self._answer, str(self.path))
        os.chmod(self.path, 0o600)

    async def _answer(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(orjson.dumps(self.snapshot()))
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def gather(self) -> list[dict[str, Any]]:
        """Every other worker's snapshot that arrived within PEER_TIMEOUT_S."""
        try:
            peers = [p for p in self.dir.glob("w*.sock") if p != self.path]
        except OSError:
            return []
        results = await asyncio.gather(*(self._ask(p) for p in peers))
        return [r for r in results if r is not None]

    async def _ask(self, path: Path) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_SNAPSHOT_BYTES)
                try:
                    data = await reader.read(-1)
                finally:
                    writer.close()
            doc = orjson.loads(data)
        except (OSError, TimeoutError, orjson.JSONDecodeError):
            return None  # gone, restarting or busy: left out of this scrape
        return doc if isinstance(doc, dict) else None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        with contextlib.suppress(OSError):
            self.path.unlink()
