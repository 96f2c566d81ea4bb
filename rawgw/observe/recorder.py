"""What happened to each request: console line, access/error logs, metrics.

Log records are built on the loop (a dict, cheap) and written by a thread
(``LogWriter``), so file I/O never blocks a request.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING

from rawgw.config import Config
from rawgw.observe.chatlog import chat_record, write_chat_file
from rawgw.observe.logwriter import LogWriter
from rawgw.observe.metrics import Metrics

if TYPE_CHECKING:
    from rawgw.relay import Exchange

log = logging.getLogger("rawgw.access")

RECENT_ERRORS = 50


class Recorder:
    def __init__(self, config: Config) -> None:
        self.metrics = Metrics()
        self.recent_errors: deque[dict[str, object]] = deque(maxlen=RECENT_ERRORS)
        self.writer = LogWriter(config.logging)
        self.config = config

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.writer.reconfigure(config.logging)

    def request_done(self, ex: Exchange) -> None:
        now = perf_counter()
        duration = now - ex.t0
        status = ex.status or (499 if ex.outcome == "client_closed" else 0)
        upstream_s = (ex.t_head - ex.t_sent) if ex.t_head and ex.t_sent else None
        key_name = ex.key.name if ex.key else ""
        self.metrics.request(ex.endpoint.kind, ex.provider, status, duration, upstream_s, ex.attempts, key_name)
        usage = ex.usage
        if usage is not None:
            model = ex.upstream_model or ""
            self.metrics.tokens[(ex.provider, model, key_name, "prompt")] += usage[0]
            self.metrics.tokens[(ex.provider, model, key_name, "completion")] += usage[1]
        if ex.overhead_s is not None:
            self.metrics.overhead(max(0.0, ex.overhead_s))
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %s %d %.1fms provider=%s attempts=%d %s",
                ex.request_id.decode(),
                ex.request.method.decode(),
                ex.request.target.decode("latin-1"),
                status,
                duration * 1000,
                ex.provider or "-",
                ex.attempts,
                ex.outcome,
            )
        if self.config.logging.access:
            self.writer.access(
                {
                    "time": time.time(),
                    "request_id": ex.request_id.decode(),
                    "method": ex.request.method.decode(),
                    "path": ex.endpoint.path,
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "upstream_ttfb_ms": round(upstream_s * 1000, 3) if upstream_s is not None else None,
                    "provider": ex.provider or None,
                    "key_name": ex.key.name if ex.key else None,
                    "client_model": ex.client_model,
                    "upstream_model": ex.upstream_model,
                    "attempts": ex.attempts,
                    "bytes_in": ex.bytes_in,
                    "bytes_out": ex.bytes_out,
                    "stream": ex.stream,
                    "prompt_tokens": usage[0] if usage else None,
                    "completion_tokens": usage[1] if usage else None,
                    "cache": ex.cache_status.decode() if ex.cache_status else None,
                    "outcome": ex.outcome,
                    "error": ex.error or None,
                }
            )
        if self.config.logging.chat and ex.endpoint.kind == "routed" and ex.request_body:
            body = ex.response_body()
            if body is not None:
                record = chat_record(
                    ex.request_id.decode(),
                    ex.endpoint.path,
                    ex.headers,
                    ex.request_body,
                    status,
                    ex.response_headers,
                    body,
                    ex.stream,
                    {
                        "provider": ex.provider,
                        "key_name": key_name or None,
                        "client_model": ex.client_model,
                        "upstream_model": ex.upstream_model,
                        "attempts": ex.attempts,
                        "outcome": ex.outcome,
                        "cache": ex.cache_status.decode() if ex.cache_status else None,
                    },
                )
                rid = ex.request_id.decode()
                self.writer.put("__call__", lambda cfg: write_chat_file(cfg, rid, record))
        if ex.error:
            self.recent_errors.append(
                {
                    "time": time.time(),
                    "request_id": ex.request_id.decode(),
                    "status": status,
                    "provider": ex.provider or None,
                    "message": ex.error,
                }
            )
        if ex.error and self.config.logging.errors:
            self.writer.error(
                {
                    "time": time.time(),
                    "request_id": ex.request_id.decode(),
                    "path": ex.endpoint.path,
                    "status": status,
                    "outcome": ex.outcome,
                    "message": ex.error,
                }
            )

    def upstream_failure(self, ex: Exchange, provider: str, err: Exception, status: int | None = None) -> None:
        self.metrics.failover(provider)
        message = getattr(err, "message", str(err))
        self.recent_errors.append(
            {"time": time.time(), "request_id": ex.request_id.decode(), "status": status, "provider": provider, "message": message}
        )
        log.warning("%s upstream %s failed: %s", ex.request_id.decode(), provider, message)
        if self.config.logging.errors:
            self.writer.error(
                {
                    "time": time.time(),
                    "request_id": ex.request_id.decode(),
                    "provider": provider,
                    "attempt": ex.attempts,
                    "upstream_status": status,
                    "kind": getattr(err, "kind", "error"),
                    "message": message,
                }
            )

    def close(self) -> None:
        self.writer.close()
