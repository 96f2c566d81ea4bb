"""What happened to each request: console line, access/error logs, metrics.

Log records are built on the loop (a dict, cheap) and written by a thread
(``LogWriter``), so file I/O never blocks a request.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from rawgw.config import Config
from rawgw.observe.chatlog import chat_record, write_chat_file
from rawgw.observe.logwriter import LogWriter
from rawgw.observe.metrics import Metrics
from rawgw.observe.record import FailedAttempt, RequestRecord

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

    def reopen(self) -> None:
        """Close the log files; the next record opens them again at their configured path
        (after an external logrotate has moved them away)."""
        self.writer.reconfigure(self.config.logging)

    def request_done(self, rec: RequestRecord) -> None:
        m = self.metrics
        status = rec.status
        m.request(rec.kind, rec.provider, status, rec.duration_s, rec.upstream_ttfb_s, rec.attempts, rec.key_name)
        if rec.cache is not None:
            m.cache["hit" if rec.cache == "HIT" else "miss"] += 1
        if rec.key_limited:
            m.rate_limited[rec.key_name] += 1
        if rec.prompt_tokens is not None:
            model = rec.upstream_model or ""
            m.tokens[(rec.provider, model, rec.key_name, "prompt")] += rec.prompt_tokens
            m.tokens[(rec.provider, model, rec.key_name, "completion")] += rec.completion_tokens or 0
        if rec.overhead_s is not None:
            m.overhead(max(0.0, rec.overhead_s))
        if log.isEnabledFor(logging.INFO):
            log.info(
                "%s %s %s %d %.1fms provider=%s attempts=%d %s",
                rec.request_id,
                rec.method,
                rec.target,
                status,
                rec.duration_s * 1000,
                rec.provider or "-",
                rec.attempts,
                rec.outcome,
            )
        if self.config.logging.access:
            self.writer.access(
                {
                    "time": rec.wall_time,
                    "request_id": rec.request_id,
                    "method": rec.method,
                    "path": rec.path,
                    "status": status,
                    "duration_ms": round(rec.duration_s * 1000, 3),
                    "upstream_ttfb_ms": round(rec.upstream_ttfb_s * 1000, 3) if rec.upstream_ttfb_s is not None else None,
                    "provider": rec.provider or None,
                    "key_name": rec.key_name or None,
                    "client_model": rec.client_model,
                    "upstream_model": rec.upstream_model,
                    "attempts": rec.attempts,
                    "bytes_in": rec.bytes_in,
                    "bytes_out": rec.bytes_out,
                    "stream": rec.stream,
                    "prompt_tokens": rec.prompt_tokens,
                    "completion_tokens": rec.completion_tokens,
                    "cache": rec.cache,
                    "outcome": rec.outcome,
                    "error": rec.error or None,
                }
            )
        if rec.response_body is not None and self.config.logging.chat:
            record = chat_record(
                rec.request_id,
                rec.path,
                list(rec.request_headers),
                rec.request_body,
                status,
                list(rec.response_headers),
                rec.response_body,
                rec.stream,
                {
                    "provider": rec.provider,
                    "key_name": rec.key_name or None,
                    "client_model": rec.client_model,
                    "upstream_model": rec.upstream_model,
                    "attempts": rec.attempts,
                    "outcome": rec.outcome,
                    "cache": rec.cache,
                },
            )
            rid = rec.request_id
            self.writer.put("__call__", lambda cfg: write_chat_file(cfg, rid, record))
        if rec.error:
            self.recent_errors.append(
                {"time": rec.wall_time, "request_id": rec.request_id, "status": status, "provider": rec.provider or None, "message": rec.error}
            )
            if self.config.logging.errors:
                self.writer.error(
                    {
                        "time": rec.wall_time,
                        "request_id": rec.request_id,
                        "path": rec.path,
                        "status": status,
                        "outcome": rec.outcome,
                        "message": rec.error,
                    }
                )

    def upstream_failure(self, f: FailedAttempt) -> None:
        self.metrics.failover(f.provider)
        now = time.time()
        self.recent_errors.append(
            {"time": now, "request_id": f.request_id, "status": f.upstream_status, "provider": f.provider, "message": f.message}
        )
        log.warning("%s upstream %s failed: %s", f.request_id, f.provider, f.message)
        if self.config.logging.errors:
            self.writer.error(
                {
                    "time": now,
                    "request_id": f.request_id,
                    "provider": f.provider,
                    "attempt": f.attempt,
                    "upstream_status": f.upstream_status,
                    "kind": f.kind,
                    "message": f.message,
                }
            )

    def close(self) -> None:
        self.writer.close()
