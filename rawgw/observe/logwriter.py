"""JSON-lines logs written by a thread, so file I/O never blocks the event loop.

The loop only puts ``(file, record)`` on a queue; the thread serialises with
orjson and appends. The queue is bounded: when the disk cannot keep up, records
are dropped and counted rather than growing memory.
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

import orjson

from rawgw.config import LoggingConfig

QUEUE_LIMIT = 100_000
_STOP = ("", None)


class LogWriter:
    def __init__(self, config: LoggingConfig) -> None:
        self.config = config
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue(QUEUE_LIMIT)
        self.dropped = 0
        self.thread: threading.Thread | None = None
        self.files: dict[str, Any] = {}

    def reconfigure(self, config: LoggingConfig) -> None:
        self.queue.put(("__reopen__", config))

    def _start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="rawgw-logwriter", daemon=True)
        self.thread.start()

    def put(self, name: str, record: Any) -> None:
        if self.thread is None:
            self._start()
        try:
            self.queue.put_nowait((name, record))
        except queue.Full:
            self.dropped += 1

    def access(self, record: dict[str, Any]) -> None:
        self.put("access.jsonl", record)

    def error(self, record: dict[str, Any]) -> None:
        self.put("errors.jsonl", record)

    def _file(self, name: str) -> Any:
        f = self.files.get(name)
        if f is None:
            os.makedirs(self.config.dir, exist_ok=True)
            f = self.files[name] = open(os.path.join(self.config.dir, name), "ab", buffering=0)  # noqa: SIM115 - kept open
        return f

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < 512:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            pending: dict[str, list[bytes]] = {}
            for name, record in batch:
                if name in ("", "__reopen__", "__call__"):
                    self._write(pending)
                    pending = {}
                    if name == "":
                        return
                    if name == "__reopen__":
                        self._close_files()
                        self.config = record
                    else:
                        record(self.config)
                    continue
                pending.setdefault(name, []).append(orjson.dumps(record) + b"\n")
            self._write(pending)

    def _write(self, pending: dict[str, list[bytes]]) -> None:
        for name, lines in pending.items():
            try:
                self._file(name).write(b"".join(lines))
            except OSError:
                self.dropped += len(lines)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until what was queued so far is on disk (tests, shutdown)."""
        if self.thread is None:
            return
        done = threading.Event()
        self.put("__call__", lambda _cfg: done.set())
        done.wait(timeout)

    def _close_files(self) -> None:
        for f in self.files.values():
            try:
                f.close()
            except OSError:
                pass
        self.files.clear()

    def close(self) -> None:
        if self.thread is not None:
            self.queue.put(_STOP)
            self.thread.join(5)
            self.thread = None
        self._close_files()
