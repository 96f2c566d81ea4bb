"""Console logging set up once per process (the CLI, the demo, each pre-forked worker)."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys


def setup_logging(level: str) -> None:
    """Console logging through a queue: the event loop never blocks on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, handler)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(q)]
    root.setLevel(getattr(logging, level.upper()))
