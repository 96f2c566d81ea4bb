"""Flow control between the two legs (uvicorn's FlowControl, for a relay).

Each connection owns the ``FlowControl`` of its own reading side. When a
connection's write buffer fills (``pause_writing``), it pauses its *peer's*
reading: a slow client pauses the upstream response, a slow upstream pauses the
client's request body. One object, one rule, both directions.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    __slots__ = ("read_paused", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.read_paused = False

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.transport.is_closing():
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()
