"""The attempt chain of one request: the body upload and the provider/key attempts.

SPEC 5.3: try each provider/key pair the router yields, in order, until one
answers with a head worth relaying; a retryable answer is kept (to return as it
was if nothing better comes) and the chain moves on. What an answer means for the
key and the breaker is ``routing.policy``'s call; this module only drives sockets.
"""

from __future__ import annotations

import asyncio
import time
from time import perf_counter
from typing import TYPE_CHECKING, NamedTuple

import h11

from rawgw.errors import GatewayError
from rawgw.http.h11compat import trusted_request
from rawgw.http.headers import REQUEST_DROP, filter_headers, get_header, plain_headers
from rawgw.observe.record import FailedAttempt
from rawgw.routing import policy
from rawgw.routing.upstream_auth import auth_headers
from rawgw.upstream.connection import UpstreamConnection, UpstreamError
from rawgw.upstream.fetch import BodyCollector

if TYPE_CHECKING:
    from rawgw.config import Provider
    from rawgw.relay.context import RelayConfig, RelayHooks
    from rawgw.request import Incoming
    from rawgw.routing.router import Plan
    from rawgw.server.connection import ClientConnection

Header = tuple[bytes, bytes]

# A failed-over answer is kept (to return if nothing better comes) up to this size.
MAX_SAVED_ERROR_BYTES = 256 * 1024
ERROR_BODY_WAIT_S = 5.0


class Accepted(NamedTuple):
    """A head to relay: the body follows on ``conn``."""

    head: h11.Response
    conn: UpstreamConnection
    provider: Provider


class Saved(NamedTuple):
    """Every later attempt failed to answer: this earlier answer goes back as it was."""

    head: h11.Response
    body: bytes
    provider: Provider


class AttemptChain:
    """Upload of the client's body and the attempts that carry it upstream."""

    __slots__ = (
        "attempts",
        "awaiting_head",
        "body_done",
        "body_parts",
        "body_size",
        "body_waiter",
        "cfg",
        "client",
        "client_gone",
        "conn",
        "connect_s",
        "hooks",
        "inc",
        "probe",
        "t_head",
        "t_sent",
        "upload",
        "upstream_model",
    )

    def __init__(self, cfg: RelayConfig, hooks: RelayHooks, client: ClientConnection, inc: Incoming) -> None:
        self.cfg = cfg
        self.hooks = hooks
        self.client = client
        self.inc = inc
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.body_done = False
        self.body_waiter: asyncio.Future[None] | None = None
        self.upload: UpstreamConnection | None = None  # request body streaming into it
        self.conn: UpstreamConnection | None = None  # the attempt in progress
        self.attempts = 0
        self.t_sent = 0.0
        self.t_head = 0.0
        self.connect_s = 0.0
        self.upstream_model: str | None = None
        self.probe: str | None = None  # provider whose cluster-wide probe lock this request holds
        # on_disconnect = "drain": the client left while a request was upstream; the
        # chain ends with whatever head comes (no failover, no retry for nobody).
        self.client_gone = False
        self.awaiting_head = False  # a whole request is upstream and its head is awaited

    # ---- the client's body -----------------------------------------------

    def on_body(self, data: bytes) -> None:
        self.body_parts.append(data)
        self.body_size += len(data)
        if self.upload is not None:
            self.upload.send_body(data)

    def on_body_end(self) -> None:
        self.body_done = True
        if self.upload is not None:
            self.upload.send_body_end()
            self.upload = None
        waiter = self.body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_body(self) -> bytes:
        if not self.body_done:
            self.body_waiter = asyncio.get_running_loop().create_future()
            try:
                # the request deadline covers a body that stops arriving, too
                # asyncio.timeout: unlike 3.11's wait_for, it never swallows a cancel
                async with asyncio.timeout(max(0.0, self.inc.deadline - perf_counter())):
                    await self.body_waiter
            except TimeoutError:
                raise GatewayError(408, "request body not received in time", close=True, kind="timeout") from None
        parts = self.body_parts
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def detach(self) -> None:
        """Give up on the attempt in progress: close its connection, never pool it."""
        conn = self.conn
        self.conn = self.upload = None
        if conn is not None:
            conn.detach()

    # ---- the chain ------------------------------------------------------------

    async def run(self, plan: Plan, buffered: bool) -> Accepted | Saved:
        """The first acceptable head, or the last answer kept; raises GatewayError."""
        cfg = self.cfg
        router = cfg.router
        deadline = self.inc.deadline
        last_error: UpstreamError | None = None
        last_response: Saved | None = None
        attempts = router.attempts(plan)
        step = next(attempts, None)
        state = cfg.state
        refused: str | None = None  # a provider whose half-open probe another process holds
        while step is not None:
            if self.client_gone:
                raise GatewayError(499, "client closed the connection", kind="client_closed")
            provider, pool, key = step.provider, step.pool, step.key
            if provider.name == refused:
                step = next(attempts, None)
                continue
            if state.shared and pool.breaker.probing and pool.breaker.state(time.time()) == "half-open":
                # This attempt is the breaker's half-open probe: one probe cluster-wide
                # (one round trip, only while a breaker is half-open).
                if not await state.claim_probe(provider.name):
                    refused = provider.name
                    step = next(attempts, None)
                    continue
                self.probe = provider.name
            if step.wait_s > 0:
                # A same-provider retry's backoff (routing.policy decided it fits before
                # the deadline). Asynchronous: a client that leaves cancels this task.
                await asyncio.sleep(step.wait_s)
            self.attempts += 1
            t_start = perf_counter()
            remaining = deadline - t_start
            if remaining <= 0:
                raise deadline_error()
            # timeout_s bounds this whole attempt, connect to response head
            attempt_end = t_start + provider.timeout_s if provider.timeout_s else deadline
            link = cfg.links[provider.name]
            try:
                conn = await link.pool.acquire(min(provider.connect_timeout_s, remaining, attempt_end - t_start))
            except UpstreamError as err:
                pool.on_failure(None, time.time())
                self._probed(provider)
                last_error = err
                self._failed(provider, err)
                attempts.report(policy.Outcome(None, None, deadline - perf_counter()))
                step = next(attempts, None)
                continue
            self.connect_s = perf_counter() - t_start
            self.conn = conn
            if buffered:
                self.upstream_model = router.model_for(plan, provider)
            self.t_sent = perf_counter()
            head_bound = min(provider.first_byte_timeout_s, deadline - self.t_sent)
            wait = max(0.0, min(head_bound, attempt_end - self.t_sent))
            head_future = self._send(conn, provider, key, wait, router.body_for(plan, provider) if buffered else None)
            self.awaiting_head = self.upload is None  # a body still streaming in cannot be drained
            try:
                head = await head_future
            except (TimeoutError, UpstreamError) as exc:
                self.awaiting_head = False
                self.detach()
                pool.on_failure(key, time.time())
                self._probed(provider)
                if isinstance(exc, UpstreamError):
                    last_error = exc
                else:
                    if perf_counter() >= deadline:
                        raise deadline_error() from None
                    if wait < head_bound:  # timeout_s was the bound that ended it
                        message = f"upstream '{provider.name}' did not answer within its timeout_s of {provider.timeout_s:g} s"
                    else:
                        message = f"upstream '{provider.name}' sent no response head within {wait:g} s"
                    last_error = UpstreamError("timeout", message)
                self._failed(provider, last_error)
                attempts.report(policy.Outcome(None, None, deadline - perf_counter()))
                step = next(attempts, None)
                continue
            self.awaiting_head = False
            self.t_head = perf_counter()
            status = head.status_code
            now = time.time()
            # only a 4xx/5xx answer's headers matter here (Retry-After, cooldown): a 2xx head
            # goes on to the exchange, which reads its headers once
            headers = plain_headers(head.headers) if status >= 400 else []
            policy.account(pool, key, status, headers, now)
            self._probed(provider)
            if policy.moves_on(status) and not self.client_gone:
                attempts.report(policy.Outcome(status, policy.retry_after(headers, now), deadline - self.t_head))
                following = next(attempts, None)
                if following is not None:
                    self._failed(provider, UpstreamError("status", f"upstream '{provider.name}' answered {status}"), status)
                    # Keep this answer: if every later attempt fails to answer at
                    # all, the client gets it as it was (SPEC 5.3).
                    saved = await self._read_error_body(conn)
                    self.conn = self.upload = None
                    if saved is not None:
                        last_response = Saved(head, saved, provider)
                    step = following
                    continue
            self.conn = None  # the exchange owns it from here
            return Accepted(head, conn, provider)
        if last_response is not None:
            return last_response
        if last_error is None and refused is not None:
            raise GatewayError(
                503,
                f"no usable key or provider available ({refused}): circuit half-open, its probe runs elsewhere",
                code="no_available_provider",
            )
        if last_error is None:
            raise GatewayError(502, "no upstream attempt could be made")
        if last_error.kind == "timeout":
            raise GatewayError(504, last_error.message, kind="timeout")
        raise GatewayError(502, last_error.message)

    def _probed(self, provider: Provider) -> None:
        """The probe's outcome is accounted (and published): free the cluster-wide lock."""
        if self.probe == provider.name:
            self.probe = None
            self.cfg.state.release_probe(provider.name)

    def _failed(self, provider: Provider, err: UpstreamError, status: int | None = None) -> None:
        self.hooks.failed_attempt(FailedAttempt(self.inc.request_id.decode(), provider.name, self.attempts, err.kind, err.message, status))

    async def _read_error_body(self, conn: UpstreamConnection) -> bytes | None:
        """The (small) body of a response we fail over from; None when too big or slow."""
        collector = BodyCollector(MAX_SAVED_ERROR_BYTES)
        conn.stream_to(collector)
        try:
            async with asyncio.timeout(max(0.0, min(ERROR_BODY_WAIT_S, self.inc.deadline - perf_counter()))):
                return await collector.done
        except (TimeoutError, UpstreamError):
            conn.detach()
            return None

    def _send(
        self, conn: UpstreamConnection, provider: Provider, key: str, head_timeout: float, plan_body: bytes | None
    ) -> asyncio.Future[h11.Response]:
        """Build the upstream request (SPEC 5.4) and send it; a known body goes in one write."""
        inc = self.inc
        link = self.cfg.links[provider.name]
        client_headers = inc.headers
        headers = filter_headers(client_headers, REQUEST_DROP)
        headers.append((b"host", link.authority))
        headers += auth_headers(provider.type, key, get_header(client_headers, b"anthropic-version") is not None)
        headers.extend(link.headers)
        headers.append((b"x-request-id", inc.request_id))
        target = self.cfg.router.upstream_path(inc.endpoint, provider)
        method = inc.method
        if plan_body is not None:
            headers.append((b"content-length", str(len(plan_body)).encode()))
            return conn.start(trusted_request(method, target, headers), plan_body, provider.read_timeout_s, head_timeout)
        # Streamed body: same framing as the client used.
        cl = get_header(client_headers, b"content-length")
        chunked = get_header(client_headers, b"transfer-encoding") is not None
        if cl is not None:
            headers.append((b"content-length", cl))
        elif chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        upstream_request = trusted_request(method, target, headers)
        if cl is None and not chunked:
            return conn.start(upstream_request, b"", provider.read_timeout_s, head_timeout)
        if self.body_done:
            return conn.start(upstream_request, b"".join(self.body_parts), provider.read_timeout_s, head_timeout)
        fut = conn.start(upstream_request, None, provider.read_timeout_s, head_timeout)
        for part in self.body_parts:
            conn.send_body(part)
        self.upload = conn
        conn.peer = self.client.flow  # the upstream's write buffer paces reading the client
        return fut


def deadline_error() -> GatewayError:
    return GatewayError(504, "request timed out before any upstream answered", kind="timeout")
