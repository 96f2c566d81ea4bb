"""One client exchange glued to the upstream attempts that answer it.

Before the first response byte goes to the client, an ``Exchange`` runs as one
task: route, connect, send, await the head, fail over. Once a head is accepted,
the body flows by callbacks only — ``UpstreamConnection.data_received`` →
``on_upstream_data`` → ``ClientConnection.send_body`` → ``transport.writelines`` —
with no task, queue, copy or parse per chunk.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from time import perf_counter
from typing import TYPE_CHECKING

import h11

from rawgw.errors import GatewayError
from rawgw.http.headers import REQUEST_DROP, filter_headers, get_header, plain_headers
from rawgw.observe.usage import extract_usage
from rawgw.upstream.connection import UpstreamConnection, UpstreamError
from rawgw.upstream.fetch import BodyCollector

if TYPE_CHECKING:
    from rawgw.app import Gateway
    from rawgw.config import GatewayKey, Provider
    from rawgw.routing.keys import KeyPool
    from rawgw.routing.router import Endpoint
    from rawgw.server.connection import ClientConnection

log = logging.getLogger("rawgw.relay")

Header = tuple[bytes, bytes]

# SPEC 5.3: outcomes that move on to the next key/provider before any byte reached the client.
RETRYABLE = frozenset({429, 500, 502, 503, 504, 529})
KEY_DISABLING = frozenset({401, 403})

# Usage sits in the last JSON object / last SSE events: keep this much of the end.
TAIL_BYTES = 8192

# A failed-over answer is kept (to return if nothing better comes) up to this size.
MAX_SAVED_ERROR_BYTES = 256 * 1024
ERROR_BODY_WAIT_S = 5.0

# Bound on a response body kept for the cache or a chat log.
MAX_COLLECT_BYTES = 16 * 1024 * 1024


class Exchange:
    """One request: its body, its attempts, and the response relay (both sinks)."""

    __slots__ = (
        "attempts",
        "body_done",
        "body_parts",
        "body_size",
        "body_waiter",
        "bytes_in",
        "bytes_out",
        "cache_key",
        "cache_status",
        "client",
        "client_model",
        "collected",
        "collected_size",
        "connect_s",
        "deadline",
        "endpoint",
        "error",
        "extra_headers",
        "finished",
        "first_piece",
        "gw",
        "headers",
        "key",
        "outcome",
        "overhead_s",
        "provider",
        "request",
        "request_body",
        "request_id",
        "response_headers",
        "status",
        "stream",
        "streaming",
        "t0",
        "t_head",
        "t_sent",
        "tail",
        "tail_size",
        "task",
        "upload",
        "upstream",
        "upstream_model",
        "usage",
    )

    def __init__(
        self,
        gw: Gateway,
        client: ClientConnection,
        request: h11.Request,
        endpoint: Endpoint,
        key: GatewayKey | None,
        request_id: bytes,
        t0: float,
        timeout: float,
        headers: list[Header] | None = None,
    ) -> None:
        self.gw = gw
        self.client = client
        self.request = request
        self.endpoint = endpoint
        self.key = key
        self.request_id = request_id
        self.t0 = t0
        self.deadline = t0 + timeout
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.body_done = False
        self.body_waiter: asyncio.Future[None] | None = None
        self.upload: UpstreamConnection | None = None  # request body streaming into it
        self.upstream: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.streaming = False
        self.finished = False
        self.attempts = 0
        self.provider = ""
        self.status = 0
        self.outcome = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.t_sent = 0.0
        self.t_head = 0.0
        self.client_model: str | None = None
        self.upstream_model: str | None = None
        self.stream = False
        self.error = ""
        self.response_headers: list[Header] = []
        # scanned several times: a plain list, made once (by the dispatcher when it can)
        self.headers = headers if headers is not None else plain_headers(request.headers)
        self.connect_s = 0.0
        self.overhead_s: float | None = None
        # references to body pieces (no copies) for usage accounting at the end
        self.first_piece = b""
        self.tail: list[bytes] = []
        self.tail_size = 0
        self.collected: list[bytes] | None = None  # whole body, only for cache/chat log
        self.collected_size = 0
        self.cache_key: bytes | None = None
        self.cache_status: bytes | None = None
        self.extra_headers: list[Header] = []
        self.usage: tuple[int, int] | None = None
        self.request_body = b""

    # ---- client leg (server.connection.Sink) --------------------------------

    def on_body(self, data: bytes) -> None:
        self.body_parts.append(data)
        self.body_size += len(data)
        if self.upload is not None:
            self.upload.send_body(data)

    def on_body_end(self) -> None:
        self.body_done = True
        self.bytes_in = self.body_size
        if self.upload is not None:
            self.upload.send_body_end()
            self.upload = None
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_client_gone(self) -> None:
        """SPEC 6: the client left — close the upstream at once, never pool it."""
        if self.finished:
            return
        if self.task is not None and not self.task.done():
            self.task.cancel()
        up = self.upstream
        self.upstream = None
        self.upload = None
        if up is not None:
            up.detach()
        self._finish("client_closed")

    def on_writable(self, writable: bool) -> None:
        up = self.upstream
        if up is not None and self.streaming:
            up.set_reading(writable)

    # ---- upstream leg (upstream.connection.BodySink) -------------------------

    def cork(self) -> None:
        self.client.cork()

    def uncork(self) -> None:
        self.client.uncork()

    def on_upstream_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
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
        self.client.send_end()
        self.usage = self._usage()
        if self.cache_key is not None and self.collected is not None:
            self.gw.cache_store(self, b"".join(self.collected))
        self._finish("ok")

    def _usage(self) -> tuple[int, int] | None:
        """Tokens from the end of the body (and the first piece, for Anthropic's input)."""
        tail = b"".join(self.tail)
        found = extract_usage(tail) if tail else None
        if self.first_piece and (found is None or found[0] == 0):
            head = extract_usage(self.first_piece + tail if len(self.first_piece) < 65536 else self.first_piece)
            if head is not None:
                found = (head[0], found[1] if found else head[1])
        return found

    def response_body(self) -> bytes | None:
        return b"".join(self.collected) if self.collected is not None else None

    def on_upstream_error(self, err: UpstreamError) -> None:
        # SPEC 6 / issue 2: truncate visibly — no terminating chunk, no short body
        # presented as complete.
        self.upstream = None
        self.error = err.message
        self.client.abort_response()
        self._finish("timeout" if err.kind == "timeout" else "upstream_error")

    # ---- the attempt chain -------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except GatewayError as err:
            self.fail(err)
        except asyncio.CancelledError:
            if not self.finished:
                self._finish("client_closed")
        except Exception as exc:  # a bug must not take the connection's peers down
            log.exception("request %s failed inside the gateway", self.request_id.decode())
            self.fail(GatewayError(500, f"internal gateway error: {type(exc).__name__}"))

    async def _wait_body(self) -> bytes:
        if not self.body_done:
            self.body_waiter = asyncio.get_running_loop().create_future()
            try:
                # the request deadline covers a body that stops arriving, too
                await asyncio.wait_for(self.body_waiter, max(0.0, self.deadline - perf_counter()))
            except TimeoutError:
                raise GatewayError(408, "request body not received in time", close=True, kind="timeout") from None
        parts = self.body_parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _run(self) -> None:
        gw = self.gw
        router = gw.router
        buffered = self.endpoint.kind == "routed"
        body = await self._wait_body() if buffered else b""
        plan = router.plan(self.endpoint, self.key, body)
        self.client_model = plan.client_model
        self.upstream_model = plan.upstream_model
        self.stream = plan.stream
        self.request_body = body
        if gw.cache_lookup(self, plan):
            return
        if gw.chat_logging and buffered:
            self.collected = []
        last_error: UpstreamError | None = None
        last_response: tuple[h11.Response, bytes, Provider] | None = None
        attempts = router.attempts(plan)
        pair = next(attempts, None)
        while pair is not None:
            provider, pool, key = pair
            self.attempts += 1
            remaining = self.deadline - perf_counter()
            if remaining <= 0:
                raise self._deadline_error()
            origin_pool = gw.origin_pool(provider)
            t_pick = perf_counter()
            try:
                conn = await origin_pool.acquire(min(provider.connect_timeout_s, remaining))
            except UpstreamError as err:
                pool.on_failure(None)
                last_error = err
                gw.note_upstream_failure(self, provider, err)
                pair = next(attempts, None)
                continue
            self.connect_s = perf_counter() - t_pick
            self.upstream = conn
            if buffered:
                self.upstream_model = router.model_for(plan, provider)
            self.t_sent = perf_counter()
            wait = max(0.0, min(provider.first_byte_timeout_s, self.deadline - self.t_sent))
            head_future = self._send(conn, provider, key, wait, plan_body=router.body_for(plan, provider) if buffered else None)
            try:
                head = await head_future
            except (TimeoutError, UpstreamError) as exc:
                conn.detach()
                self.upstream = self.upload = None
                pool.on_failure(key)
                if isinstance(exc, UpstreamError):
                    last_error = exc
                else:
                    if perf_counter() >= self.deadline:
                        raise self._deadline_error() from None
                    last_error = UpstreamError("timeout", f"upstream '{provider.name}' sent no response head within {wait:g} s")
                gw.note_upstream_failure(self, provider, last_error)
                pair = next(attempts, None)
                continue
            self.t_head = perf_counter()
            status = head.status_code
            self._account(pool, key, status, head)
            if status in RETRYABLE or status in KEY_DISABLING:
                following = next(attempts, None)
                if following is not None:
                    gw.note_upstream_failure(
                        self, provider, UpstreamError("status", f"upstream '{provider.name}' answered {status}"), status
                    )
                    # Keep this answer: if every later attempt fails to answer at
                    # all, the client gets it as it was (SPEC 5.3).
                    saved = await self._read_error_body(conn)
                    self.upstream = self.upload = None
                    if saved is not None:
                        last_response = (head, saved, provider)
                    pair = following
                    continue
            self._start_response(head, conn, provider)
            return
        if last_response is not None:
            self._send_saved(*last_response)
            return
        if last_error is None:
            raise GatewayError(502, "no upstream attempt could be made")
        if last_error.kind == "timeout":
            raise GatewayError(504, last_error.message, kind="timeout")
        raise GatewayError(502, last_error.message)

    async def _read_error_body(self, conn: UpstreamConnection) -> bytes | None:
        """The (small) body of a response we fail over from; None when too big or slow."""
        collector = BodyCollector(MAX_SAVED_ERROR_BYTES)
        conn.stream_to(collector)
        try:
            return await asyncio.wait_for(collector.done, max(0.0, min(ERROR_BODY_WAIT_S, self.deadline - perf_counter())))
        except (TimeoutError, UpstreamError):
            conn.detach()
            return None

    def _send_saved(self, head: h11.Response, body: bytes, provider: Provider) -> None:
        """Answer with an upstream response read earlier in the chain, unchanged."""
        self.provider = provider.name
        self.status = head.status_code
        self.response_headers = plain_headers(head.headers)
        headers = self._passable(self.response_headers)
        headers.extend(self.gw.response_extras(self, routed=True))
        self.bytes_out = len(body)
        self.error = f"every attempt failed; the last upstream answer ({head.status_code} from '{provider.name}') was returned"
        self.client.send_response(head.status_code, headers, body)
        self._finish("upstream_error")

    def _deadline_error(self) -> GatewayError:
        return GatewayError(504, "request timed out before any upstream answered", kind="timeout")

    def _account(self, pool: KeyPool, key: str, status: int, head: h11.Response) -> None:
        if status == 429:
            pool.on_429(key, plain_headers(head.headers))
        elif status in KEY_DISABLING:
            pool.on_auth_failure(key)
        elif status >= 500:
            pool.on_failure(key)
        elif status >= 400:
            pool.on_client_error(key)
        else:
            pool.on_success(key)

    def _send(
        self, conn: UpstreamConnection, provider: Provider, key: str, head_timeout: float, plan_body: bytes | None
    ) -> asyncio.Future[h11.Response]:
        """Build the upstream request (SPEC 5.4) and send it; a known body goes in one write."""
        request = self.request
        headers = filter_headers(self.headers, REQUEST_DROP)
        headers.append((b"host", self.gw.authority(provider)))
        if provider.type == "anthropic":
            headers.append((b"x-api-key", key.encode()))
            if get_header(self.headers, b"anthropic-version") is None:
                headers.append((b"anthropic-version", b"2023-06-01"))
        else:
            headers.append((b"authorization", b"Bearer " + key.encode()))
        headers.extend(self.gw.provider_headers(provider))
        headers.append((b"x-request-id", self.request_id))
        if plan_body is not None:
            headers.append((b"content-length", str(len(plan_body)).encode()))
            upstream_request = _request(request.method, self.gw.router.upstream_path(self.endpoint, provider), headers)
            return conn.start(upstream_request, plan_body, provider.read_timeout_s, head_timeout)
        # Streamed body: same framing as the client used.
        cl = get_header(self.headers, b"content-length")
        chunked = get_header(self.headers, b"transfer-encoding") is not None
        if cl is not None:
            headers.append((b"content-length", cl))
        elif chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        has_body = cl is not None or chunked
        upstream_request = _request(request.method, self.gw.router.upstream_path(self.endpoint, provider), headers)
        if not has_body:
            return conn.start(upstream_request, b"", provider.read_timeout_s, head_timeout)
        if self.body_done:
            body = b"".join(self.body_parts)
            return conn.start(upstream_request, body, provider.read_timeout_s, head_timeout)
        fut = conn.start(upstream_request, None, provider.read_timeout_s, head_timeout)
        for part in self.body_parts:
            conn.send_body(part)
        self.upload = conn
        client = self.client
        conn.on_writable = lambda ok: client.resume_reading() if ok else client.pause_reading()
        self.client.send_continue()
        return fut

    def _passable(self, upstream_headers: list[Header]) -> list[Header]:
        """The upstream's end-to-end headers minus those the gateway sets itself."""
        gw = self.gw
        return filter_headers(upstream_headers, gw.response_drop_limited if self.extra_headers else gw.response_drop)

    def _start_response(self, head: h11.Response, conn: UpstreamConnection, provider: Provider) -> None:
        """Write the accepted head to the client and switch the body to callbacks."""
        self.provider = provider.name
        self.status = head.status_code
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
        headers.extend(self.gw.response_extras(self, routed=True))
        self.response_headers = upstream_headers
        client = self.client
        client.cork()  # head and whatever body already arrived leave in one write
        client.send_head(head.status_code, headers, head.reason or _reason(head.status_code))
        self.streaming = True
        self.gw.active_streams += 1
        self.overhead_s = perf_counter() - self.t0 - (self.t_head - self.t_sent) - self.connect_s
        if not client.writable:
            conn.set_reading(False)
        conn.stream_to(self)
        client.uncork()

    # ---- endings -------------------------------------------------------------

    def fail(self, err: GatewayError) -> None:
        """Answer with the gateway's own error, or cut a started response."""
        if self.finished:
            return
        up = self.upstream
        self.upstream = None
        self.upload = None
        if up is not None:
            up.detach()
        self.status = err.status
        self.error = err.message
        client = self.client
        if client.closed:
            self._finish("client_closed")
            return
        if client.response_started:
            client.abort_response()
            self._finish(err.kind)
            return
        client.send_error(err, self.gw.response_extras(self, routed=self.attempts > 0))
        self._finish(err.kind)

    def _finish(self, outcome: str) -> None:
        if self.finished:
            return
        self.finished = True
        self.outcome = outcome
        if self.streaming:
            self.gw.active_streams -= 1
        self.gw.record(self)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _request(method: bytes, target: bytes, headers: list[Header]) -> h11.Request:
    """An h11 Request without h11's per-header regex re-validation.

    Every name and value here was already validated: by h11 when it parsed the
    client's request, by the config loader (provider headers and keys), or is a
    constant of ours (request ids are checked in app.valid_request_id). The
    framing checks (Content-Length/Transfer-Encoding) still run.
    """
    return h11.Request(method=method, target=target, headers=headers, _parsed=True)
