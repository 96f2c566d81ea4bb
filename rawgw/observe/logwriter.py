"""JSON-lines logs written by a thread, so file I/O never blocks the event loop.

The loop only appends ``(file, record)`` to a list; at the end of the loop
iteration (or at ``BATCH`` records, or with the next record that is not an access
line) the list goes on a queue as one item, and the thread serialises
with orjson and appends each file's lines in one write. So a busy gateway pays one
queue hand-off, one thread wake-up and one write() per batch, not per request.
What waits is bounded: when the disk cannot keep up, records are dropped and counted
rather than growing memory.

Rotation (``[logging] max_bytes``, ``backups``) happens on that thread too, between
whole lines: before a write would take a file past ``max_bytes`` it becomes NAME.1
(NAME.1 becomes NAME.2 …, the oldest beyond ``backups`` is dropped). Pre-forked workers
append to the same files, so a rotation is done under an flock on the log directory,
and a writer whose open file is no longer the one at the path (another worker rotated,
or logrotate moved it) reopens the path before writing.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import threading
from typing import Any

import orjson

from rawgw.config import LoggingConfig

QUEUE_LIMIT = 100_000  # records handed to the thread and not yet written
BATCH = 512
_STOP = ("", None)


class LogWriter:
    def __init__(self, config: LoggingConfig) -> None:
        self.config = config
        self.queue: queue.Queue[list[tuple[str, Any]]] = queue.Queue()
        self.dropped = 0
        self.pending: list[tuple[str, Any]] = []  # gathered on the loop, not yet queued
        self.flush_armed = False
        # Written by one side each (no lock): records queued by the loop / taken by the thread.
        self.sent = 0
        self.taken = 0
        self.thread: threading.Thread | None = None
        self.files: dict[str, Any] = {}

    def reconfigure(self, config: LoggingConfig) -> None:
        self.pending.append(("__reopen__", config))
        self._hand_off()

    def _start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="rawgw-logwriter", daemon=True)
        self.thread.start()

    def put(self, name: str, record: Any) -> None:
        pending = self.pending
        pending.append((name, record))
        if len(pending) >= BATCH or name != "access.jsonl":
            # only the per-request access lines wait for a batch; an error, an audit
            # line or a chat log goes at once (with the access lines before it, in order)
            self._hand_off()
        elif not self.flush_armed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (start-up, shutdown, tests): at once
                self._hand_off()
                return
            self.flush_armed = True
            loop.call_soon(self._hand_off)

    def _hand_off(self) -> None:
        """Queue what was gathered as one item for the thread."""
        self.flush_armed = False
        batch = self.pending
        if not batch:
            return
        self.pending = []
        if self.thread is None:
            self._start()
        if self.sent - self.taken + len(batch) > QUEUE_LIMIT:
            self.dropped += len(batch)
            return
        self.sent += len(batch)
        self.queue.put(batch)

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
            batch = self.queue.get()
            while len(batch) < BATCH:
                try:
                    batch += self.queue.get_nowait()
                except queue.Empty:
                    break
            self.taken += len(batch)
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
                if self.config.max_bytes:
                    self._write_rotating(name, lines)
                else:
                    self._file(name).write(b"".join(lines))
            except OSError:
                self.dropped += len(lines)

    def _write_rotating(self, name: str, lines: list[bytes]) -> None:
        limit = self.config.max_bytes
        f = self._current(name)
        size = os.fstat(f.fileno()).st_size
        start = 0
        chunk = 0
        for i, line in enumerate(lines):
            if size + chunk + len(line) > limit and size + chunk > 0:
                if i > start:
                    f.write(b"".join(lines[start:i]))
                f = self._rotate(name, f)
                size, chunk, start = os.fstat(f.fileno()).st_size, 0, i
            chunk += len(line)
        if start < len(lines):
            f.write(b"".join(lines[start:]))

    def _current(self, name: str) -> Any:
        """The open file, reopened if the path now names another file (or none)."""
        f = self._file(name)
        try:
            moved = os.stat(os.path.join(self.config.dir, name)).st_ino != os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            moved = True
        if moved:
            self._reopen(name)
            f = self._file(name)
        return f

    def _reopen(self, name: str) -> None:
        f = self.files.pop(name, None)
        if f is not None:
            f.close()

    def _rotate(self, name: str, f: Any) -> Any:
        path = os.path.join(self.config.dir, name)
        lock = os.open(self.config.dir, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:  # nobody rotated it meanwhile
                if self.config.backups == 0:
                    os.unlink(path)
                else:
                    for n in range(self.config.backups - 1, 0, -1):
                        try:
                            os.replace(f"{path}.{n}", f"{path}.{n + 1}")
                        except FileNotFoundError:
                            pass
                    os.replace(path, f"{path}.1")
            self._reopen(name)
            return self._file(name)
        finally:
            os.close(lock)  # releases the flock

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until what was queued so far is on disk (tests, shutdown)."""
        if self.thread is None and not self.pending:
            return
        done = threading.Event()
        self.put("__call__", lambda _cfg: done.set())
        self._hand_off()
        done.wait(timeout)

    def _close_files(self) -> None:
        for f in self.files.values():
            try:
                f.close()
            except OSError:
                pass
        self.files.clear()

    def close(self) -> None:
        self._hand_off()
        if self.thread is not None:
            self.queue.put([_STOP])
            self.thread.join(5)
            self.thread = None
        self._close_files()
