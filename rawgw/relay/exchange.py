"""One proxied request: the attempt chain, then the response relay, then one record.

Before the first response byte goes to the client, an ``Exchange`` runs as one
task: plan, cache, the attempt chain (``relay.attempts``). Once a head is
accepted, the body flows by callbacks only — ``UpstreamConnection.data_received``
→ ``ResponseBody.feed`` (framing followed, ``rawgw.http.body``) → ``on_upstream_raw``
→ ``ClientConnection.write_raw`` → ``transport.write`` of the very bytes read (or, when
the client's framing differs, ``on_upstream_data`` → ``send_body``: h11 frames the
content) — with no task, queue, copy or parse per chunk. The end builds one
``RequestRecord`` for ``observe/``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter
from typing import TYPE_CHECKING

import h11

from rawgw.cache import Entry, decode_entry, encode_entry
from rawgw.errors import REASONS, GatewayError, retry_after_header
from rawgw.http.body import Raw
from rawgw.http.headers import filter_headers, get_header, plain_headers, upstream_request_id
from rawgw.observe.record import RequestRecord
from rawgw.observe.usage import extract_usage
from rawgw.relay.attempts import Accepted, AttemptChain
from rawgw.request import response_extras
from rawgw.routing.ratelimit import estimate_tokens
from rawgw.upstream.connection import UpstreamConnection, UpstreamError

if TYPE_CHECKING:
    from rawgw.config import Provider
    from rawgw.relay.context import RelayConfig, RelayHooks
    from rawgw.request import Incoming
    from rawgw.routing.router import Plan
    from rawgw.server.connection import ClientConnection

log = logging.getLogger("rawgw.relay")

Header = tuple[bytes, bytes]

# Usage sits in the last JSON object / last SSE events: keep this much of the end.
TAIL_BYTES = 8192

# Bound on a response body kept for the cache or a chat log.
MAX_COLLECT_BYTES = 16 * 1024 * 1024


class Exchange:
    """One request relayed: the client leg's sink and the upstream body's sink."""

    __slots__ = (
        "bytes_out",
        "cache_key",
        "cache_status",
        "cfg",
        "chain",
        "client",
        "client_model",
        "collected",
        "collected_size",
        "draining",
        "error",
        "finished",
        "first_piece",
        "hooks",
        "inc",
        "on_disconnect",
        "outcome",
        "overhead_s",
        "provider",
        "raw",
        "request_body",
        "reserved",
        "response_headers",
        "status",
        "stream",
        "streaming",
        "tail",
        "tail_size",
        "task",
        "upstream",
        "usage",
    )

    def __init__(self, cfg: RelayConfig, hooks: RelayHooks, client: ClientConnection, inc: Incoming) -> None:
        self.cfg = cfg
        self.hooks = hooks
        self.client = client
        self.inc = inc
        self.chain = AttemptChain(cfg, hooks, client, inc)
        self.upstream: UpstreamConnection | None = None  # the response being relayed
        self.task: asyncio.Task[None] | None = None
        self.streaming = False
        self.raw = False  # the upstream's body bytes go to the client as they are
        self.finished = False
        self.provider = ""
        self.status = 0
        self.outcome = ""
        self.bytes_out = 0
        self.client_model: str | None = None
        self.stream = False
        self.error = ""
        self.response_headers: list[Header] = []
        self.overhead_s: float | None = None
        # references to body pieces (no copies) for usage accounting at the end
        self.first_piece: bytes | memoryview = b""
        self.tail: list[bytes | memoryview] = []
        self.tail_size = 0
        self.collected: list[bytes | memoryview] | None = None  # whole body, only for cache/chat log
        self.collected_size = 0
        self.cache_key: bytes | None = None
        self.cache_status: bytes | None = None
        self.usage: tuple[int, int] | None = None
        self.request_body = b""
        self.reserved = 0  # TPM tokens reserved for this request (refunded at the end)
        self.on_disconnect = "close"  # the route's; "drain": a client hang-up does not end the upstream
        self.draining = False  # the client left; the upstream response is read and discarded

    def start(self) -> None:
        self.client.sink = self
        self.client.send_continue()
        self.task = self.client.loop.create_task(self.run())  # not get_running_loop(): a getpid(2) each

    # ---- client leg (server.connection.Sink) --------------------------------

    def on_body(self, data: bytes) -> None:
        self.chain.on_body(data)

    def on_body_end(self) -> None:
        self.chain.on_body_end()

    def on_client_gone(self) -> None:
        """SPEC 6: the client left — close the upstream at once, never pool it.

        Unless the route says ``on_disconnect = "drain"`` and a whole request is already
        upstream: then the response is read to its end and discarded (memory: the
        usage tail only), its usage recorded, the connection pooled again.
        """
        if self.finished:
            return
        if self.on_disconnect == "drain" and not self.draining:
            if self.upstream is not None:
                self._drain()
                return
            if self.chain.awaiting_head:
                # the chain takes whatever head comes, then _run drains it
                self.draining = True
                self.chain.client_gone = True
                return
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._drop_upstream()
        self._finish("client_closed")

    # ---- upstream leg (upstream.connection.BodySink) -------------------------

    def cork(self) -> None:
        self.client.cork()

    def uncork(self) -> None:
        self.client.uncork()

    def on_upstream_raw(self, raw: Raw) -> None:
        if not self.draining:
            self.client.write_raw(raw)

    def on_upstream_data(self, data: bytes | memoryview) -> None:
        self.bytes_out += len(data)
        if not self.raw and not self.draining:
            self.client.send_body(data)
        if not self.first_piece:
            self.first_piece = data
        else:
            # References to the last pieces covering TAIL_BYTES: no copies.
            tail = self.tail
            tail.append(data)
            self.tail_size += len(data)
            while self.tail_size - len(tail[0]) >= TAIL_BYTES:
                self.tail_size -= len(tail.pop(0))
        collected = self.collected
        if collected is not None:
            self.collected_size += len(data)
            if self.collected_size <= MAX_COLLECT_BYTES:
                collected.append(data)
            else:
                self.collected = None

    def on_upstream_end(self) -> None:
        self.upstream = None
        if self.draining:
            self.usage = self._usage()
            self._finish("drained")
            return
        self.client.send_end(self.raw)
        self.usage = self._usage()
        cache = self.cfg.cache
        if cache is not None and self.cache_key is not None and self.collected is not None:
            # a cached answer carries no provider rate-limit state: it would be stale
            headers = filter_headers(self.response_headers, self.cfg.response_drop_limited)
            body = b"".join(self.collected)
            cache.put(self.cache_key, self.status, headers, body, self.provider)
            state = self.cfg.state
            if state.shared and 200 <= self.status < 300:
                state.cache_put(self.cache_key, encode_entry(self.status, headers, body, self.provider), cache.ttl_s)
        self._finish("ok")

    def on_upstream_error(self, err: UpstreamError) -> None:
        # SPEC 6: truncate visibly — no terminating chunk, no short body presented as complete.
        self.upstream = None
        self.error = err.message
        if self.draining:
            self.usage = self._usage()  # what the part read says, if anything
            self._finish("client_closed")
            return
        self.client.abort_response()
        self._finish("timeout" if err.kind == "timeout" else "upstream_error")

    def _usage(self) -> tuple[int, int] | None:
        """Tokens from the end of the body (and the first piece, for Anthropic's input)."""
        tail = b"".join(self.tail)
        found = extract_usage(tail) if tail else None
        if self.first_piece and (found is None or found[0] == 0):
            first = bytes(self.first_piece)
            head = extract_usage(first + tail if len(first) < 65536 else first)
            if head is not None:
                found = (head[0], found[1] if found else head[1])
        return found

    # ---- before the first byte -----------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except GatewayError as err:
            self.fail(err)
        except asyncio.CancelledError:
            if not self.finished:
                self._finish("client_closed")
        except Exception as exc:  # a bug must not take the connection's peers down
            log.exception("request %s failed inside the gateway", self.inc.request_id.decode())
            self.fail(GatewayError(500, f"internal gateway error: {type(exc).__name__}"))

    async def _run(self) -> None:
        cfg = self.cfg
        inc = self.inc
        buffered = inc.endpoint.kind == "routed"
        body = await self.chain.wait_body() if buffered else b""
        plan = cfg.router.plan(inc.endpoint, inc.key, body)
        self.client_model = plan.client_model
        self.chain.upstream_model = plan.upstream_model
        self.stream = plan.stream
        self.request_body = body
        if plan.route is not None:
            self.on_disconnect = plan.route.on_disconnect
        if inc.limit_deferred:
            await self._rate_limit(len(body), plan.parsed)
        if cfg.cache is not None and await self._from_cache(plan):
            return
        if cfg.chat_logging and buffered:
            self.collected = []
        result = await self.chain.run(plan, buffered)
        if self.finished:
            # Already recorded as client_closed (a cancel the event loop lost): the
            # answer is for nobody; close its connection, never count a stream.
            if isinstance(result, Accepted):
                result.conn.detach()
            return
        if self.draining:
            # the client left while the request was upstream (on_disconnect = "drain")
            if isinstance(result, Accepted):
                self._drain_response(*result)
            else:
                self._finish("client_closed")
            return
        if isinstance(result, Accepted):
            self._start_response(*result)
        else:
            self._send_saved(*result)

    async def _rate_limit(self, body_size: int, parsed: dict[str, object] | None) -> None:
        """The gateway key's limits, decided here (before the first upstream byte) when it
        needs the body (TPM) or the state server (one round trip, or the deny-cache)."""
        key = self.inc.key
        if key is None:
            return
        tokens = estimate_tokens(body_size, parsed) if key.rate_limit_tpm > 0 else 0
        wait, self.inc.rate_headers = await self.cfg.state.reserve(key, tokens)
        if wait == 0.0:
            self.reserved = tokens
            return
        self.inc.key_limited = True
        if wait is None:
            raise GatewayError(
                429,
                f"request of key '{key.name}' needs about {tokens} tokens, more than its limit of {key.rate_limit_tpm} tokens per minute",
                code="tokens_exceed_limit",
                kind="rate_limited",
            )
        limits = []
        if key.rate_limit_rpm > 0:
            limits.append(f"{key.rate_limit_rpm} requests")
        if key.rate_limit_tpm > 0:
            limits.append(f"{key.rate_limit_tpm} tokens")
        raise GatewayError(
            429,
            f"rate limit of key '{key.name}' exceeded ({' and '.join(limits)} per minute)",
            headers=[retry_after_header(wait)],
            kind="rate_limited",
        )

    def _refund(self) -> None:
        """TPM: give back what the response did not use (all of it when nothing answered)."""
        reserved = self.reserved
        key = self.inc.key
        if reserved <= 0 or key is None:
            return
        self.reserved = 0
        usage = self.usage
        if usage is not None:
            unused = reserved - usage[0] - usage[1]
        elif 200 <= self.status < 300 and self.outcome == "ok":
            unused = 0  # answered, usage unknown (a stream without usage): keep it spent
        else:
            unused = reserved
        if unused > 0:
            self.cfg.state.refund(key, unused)

    async def _from_cache(self, plan: Plan) -> bool:
        """Answer from the response cache (True), or arrange for the answer to be stored."""
        cache = self.cfg.cache
        if cache is None or plan.endpoint.rest != "chat/completions" or plan.stream or plan.parsed is None:
            return False
        try:
            key = cache.key(self.inc.key_name, plan.upstream_model, plan.parsed, plan.endpoint.rest)
        except TypeError:  # integers beyond 64 bits: not cacheable, still served
            return False
        cc = get_header(self.inc.headers, b"cache-control")
        no_cache = cc is not None and b"no-cache" in cc.lower()
        entry = None if no_cache else cache.get(key)
        state = self.cfg.state
        if entry is None and not no_cache and state.shared:
            # one GET, only for a cacheable request this process has not cached itself
            raw = await state.cache_get(key)
            found = decode_entry(raw) if raw is not None else None
            if found is not None:
                entry = Entry(found[0], tuple(found[1]), found[2], found[3], 0.0)
        if entry is None:
            self.cache_key = key
            self.cache_status = b"MISS"
            if self.collected is None:
                self.collected = []
            return False
        self.cache_status = b"HIT"
        self.provider = entry.provider
        self.status = entry.status
        self.bytes_out = len(entry.body)
        headers = list(entry.headers)
        headers.extend(self._extras())
        self.client.send_response(entry.status, headers, entry.body)
        self._finish("ok")
        return True

    def _extras(self) -> list[Header]:
        chain = self.chain
        return response_extras(
            self.inc,
            self.cfg.cors,
            routed=True,
            provider=self.provider,
            attempts=chain.attempts,
            cache=self.cache_status,
            t_sent=chain.t_sent,
            t_head=chain.t_head,
        )

    def _passable(self, upstream_headers: list[Header]) -> list[Header]:
        """The upstream's end-to-end headers minus those the gateway sets itself, plus the
        provider's request id: the gateway's id stays X-Request-ID; the provider's is what
        its support asks for."""
        cfg = self.cfg
        headers = filter_headers(upstream_headers, cfg.response_drop_limited if self.inc.rate_headers else cfg.response_drop)
        rid = upstream_request_id(upstream_headers)
        if rid is not None:
            headers.append((b"x-upstream-request-id", rid))
        return headers

    def _send_saved(self, head: h11.Response, body: bytes, provider: Provider) -> None:
        """Answer with an upstream response read earlier in the chain, unchanged."""
        name = provider.name
        self.provider = name
        self.status = head.status_code
        self.response_headers = plain_headers(head.headers)
        headers = self._passable(self.response_headers)
        headers.extend(self._extras())
        self.bytes_out = len(body)
        self.error = f"every attempt failed; the last upstream answer ({head.status_code} from '{name}') was returned"
        self.client.send_response(head.status_code, headers, body)
        self._finish("upstream_error")

    def _start_response(self, head: h11.Response, conn: UpstreamConnection, provider: Provider) -> None:
        """Write the accepted head to the client and switch the body to callbacks."""
        self.provider = provider.name
        self.status = head.status_code
        self.upstream = conn
        upstream_headers = plain_headers(head.headers)
        headers = self._passable(upstream_headers)
        cl = get_header(upstream_headers, b"content-length")
        if cl is not None:
            # SPEC 6: the body passes unchanged, so its length stays.
            headers.append((b"content-length", cl))
        ctype = get_header(upstream_headers, b"content-type")
        if ctype is not None and ctype.startswith(b"text/event-stream"):
            # SPEC 8: so that an nginx in front does not buffer the stream.
            headers.append((b"x-accel-buffering", b"no"))
            if get_header(upstream_headers, b"cache-control") is None:
                headers.append((b"cache-control", b"no-cache"))
        headers.extend(self._extras())
        self.response_headers = upstream_headers
        client = self.client
        client.cork()  # head and whatever body already arrived leave in one write
        client.send_head(head.status_code, headers, head.reason or REASONS.get(head.status_code, b""))
        self.streaming = True
        self.hooks.stream_opened()
        chain = self.chain
        self.overhead_s = perf_counter() - self.inc.t0 - (chain.t_head - chain.t_sent) - chain.connect_s
        client.peer = conn.flow  # a slow client pauses the upstream
        if not client.writable:
            conn.flow.pause_reading()
        self.raw = client.passes_raw(get_header(upstream_headers, b"transfer-encoding") is not None)
        conn.stream_to(self, self.raw)
        client.uncork()

    # ---- on_disconnect = "drain" ---------------------------------------------

    def _drain(self) -> None:
        """The client left mid-response: keep reading the upstream, discard the bytes."""
        self.draining = True
        self.collected = None  # neither cached nor chat-logged: nobody saw it whole
        self.cache_key = None
        self.client.peer = None
        up = self.upstream
        if up is not None:
            up.flow.resume_reading()  # a slow client may have paused it; nothing waits now

    def _drain_response(self, head: h11.Response, conn: UpstreamConnection, provider: Provider) -> None:
        """The head came after the client left: read its body to the end, discarded."""
        self.provider = provider.name
        self.status = head.status_code
        self.response_headers = plain_headers(head.headers)
        self.upstream = conn
        self.collected = None
        self.cache_key = None
        self.streaming = True
        self.hooks.stream_opened()
        conn.stream_to(self)

    # ---- endings -------------------------------------------------------------

    def _drop_upstream(self) -> None:
        up = self.upstream
        self.upstream = None
        if up is not None:
            up.detach()
        self.chain.detach()

    def fail(self, err: GatewayError) -> None:
        """Answer with the gateway's own error, or cut a started response."""
        if self.finished:
            return
        self._drop_upstream()
        client = self.client
        if client.closed:
            if not self.draining:  # a drained request's end is no error of the gateway's
                self.status = err.status
                self.error = err.message
            self._finish("client_closed")
            return
        self.status = err.status
        self.error = err.message
        if client.response_started:
            client.abort_response()
            self._finish(err.kind)
            return
        if self.chain.attempts > 0:
            extras = self._extras()
        else:
            extras = response_extras(self.inc, self.cfg.cors, cache=self.cache_status)
        client.send_error(err, extras)
        self._finish(err.kind)

    def _finish(self, outcome: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.outcome = outcome
        if self.client.peer is not None and self.streaming:
            self.client.peer = None
        if self.streaming:
            self.hooks.stream_closed()
        if self.reserved:
            self._refund()
        self.hooks.record(self._record())

    def _record(self) -> RequestRecord:
        inc = self.inc
        chain = self.chain
        usage = self.usage
        status = self.status or (499 if self.outcome == "client_closed" else 0)
        chat = self.cfg.chat_logging and inc.endpoint.kind == "routed" and bool(self.request_body) and self.collected is not None
        return RequestRecord(
            request_id=inc.request_id.decode(),
            method=inc.method.decode(),
            target=inc.request.target.decode("latin-1"),
            path=inc.endpoint.path,
            kind=inc.endpoint.kind,
            status=status,
            outcome=self.outcome,
            duration_s=perf_counter() - inc.t0,
            wall_time=time.time(),
            provider=self.provider,
            key_name=inc.key_name,
            key_limited=inc.key_limited,
            client_model=self.client_model,
            upstream_model=chain.upstream_model,
            attempts=chain.attempts,
            bytes_in=chain.body_size if chain.body_done else 0,
            bytes_out=self.bytes_out,
            stream=self.stream,
            upstream_ttfb_s=(chain.t_head - chain.t_sent) if chain.t_head and chain.t_sent else None,
            overhead_s=self.overhead_s,
            prompt_tokens=usage[0] if usage else None,
            completion_tokens=usage[1] if usage else None,
            cache=self.cache_status.decode() if self.cache_status else None,
            error=self.error,
            session_id=inc.session_id.decode() if inc.session_id is not None else None,
            request_headers=tuple(inc.headers) if chat else (),
            request_body=self.request_body if chat else b"",
            response_headers=tuple(self.response_headers) if chat else (),
            response_body=b"".join(self.collected) if chat and self.collected is not None else None,
        )

