"""A small pipelined RESP2 client for the shared-state server (Redis, Valkey, KeyDB …).

One command connection per process: every ``call()``/``pipeline()`` appends its reply
slot to a FIFO and its bytes to a write buffer flushed once per loop iteration, so 64
concurrent callers cost one ``send()`` and the server answers them in one go (Redis
answers in order, so replies are matched to slots first-in, first-out). Pub/sub uses a
second connection, opened on the first ``subscribe()``.

Every call is bounded: ``timeout_ms`` (per call or the client's default) raises
``StateTimeout``; a call while the server is down raises ``StateUnavailable`` at once
(no waiting for a reconnect). Both are ``StateError``: the caller falls back to
in-process state. Reconnection runs in the background with exponential backoff and
jitter; ``up`` tells the current state, ``errors`` counts failed calls and connects,
``on_up``/``on_down`` are called on each transition of the command connection and
``on_subscribed`` each time the pub/sub connection has (re)subscribed every channel (on
the loop; keep them short).

Parsing is hiredis's C ``Reader``; commands are packed by ``hiredis.pack_command``.
Nothing here blocks the loop; it runs under asyncio and uvloop alike.

Usage::

    client = StateClient(parse_state_url("redis://127.0.0.1:6379/0"), timeout_ms=50)
    client.start()
    await client.wait_up(1.0)
    await client.call("SET", "k", b"v", "PX", 1000)
    value = await client.call("GET", "k")
    ok, n = await client.pipeline([("SET", "a", 1), ("INCR", "a")])
    await client.subscribe("chan", lambda channel, payload: ...)
    await client.close()
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis

from rawgw.state.url import StateURL

__all__ = [
    "Arg",
    "StateClient",
    "StateError",
    "StateReplyError",
    "StateTimeout",
    "StateUnavailable",
]

log = logging.getLogger("rawgw.state")

Arg = str | bytes | int | float
Reply = Any  # bytes | int | list | None | StateReplyError (inside pipelines)
MessageCallback = Callable[[bytes, bytes], None]
Hook = Callable[[], None]

# hiredis's stub types the argument as a 1-tuple; it takes any tuple of these.
_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)

# Writes beyond this are not buffered: a server that stops reading must not make the
# process grow; calls fail fast with StateUnavailable until it drains.
WRITE_HIGH_WATER = 1 << 20


class StateError(Exception):
    """Any failure of the state server; the caller falls back to in-process state."""


class StateUnavailable(StateError):
    """Not connected (down, reconnecting, closed) or the connection was lost mid-call."""


class StateTimeout(StateError):
    """No reply within timeout_ms."""


class StateReplyError(StateError):
    """An error reply from the server (``-ERR …``, ``-NOSCRIPT …``, ``-WRONGPASS …``)."""


class _Slot:
    """One expected reply (or ``n`` replies for a pipeline) in the connection's FIFO."""

    __slots__ = ("fut", "n", "results", "sent", "timer")

    def __init__(self, fut: asyncio.Future[Reply], n: int, sent: float, many: bool) -> None:
        self.fut = fut
        self.n = n
        # a list for a pipeline (even of one): its error replies stay values in the list
        self.results: list[Reply] | None = [] if many else None
        self.sent = sent
        self.timer: asyncio.TimerHandle | None = None


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, push: MessageCallback | None) -> None:
        self.loop = loop
        # replyError: an error reply becomes a StateReplyError value (raised by call(),
        # kept in the list by pipeline()); protocol errors raise hiredis.ProtocolError.
        self.reader = hiredis.Reader(replyError=StateReplyError)
        self.pending: deque[_Slot] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        self.push = push
        self.wbuf: list[bytes] = []
        self.paused = False
        self.on_lost: Callable[[_Protocol], None] | None = None

    # asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A half-dead peer (host gone, no RST) is otherwise only noticed by the
            # pub/sub connection after hours; the command link notices via stuck_ms.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        push = self.push
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError:
                self.abort()
                return
            if reply is False:
                return
            if push is not None and type(reply) is list and reply and reply[0] == b"message":
                try:
                    push(reply[1], reply[2])
                except Exception:  # a subscriber's bug must not kill the connection
                    log.exception("state: pub/sub callback failed")
                continue
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.abort()
                return
            slot = pending[0]
            results = slot.results
            if results is not None:
                results.append(reply)
                if len(results) < slot.n:
                    continue
                reply = results
            pending.popleft()
            fut = slot.fut
            if fut.done():  # timed out earlier: its late reply is discarded right here
                continue
            if slot.timer is not None:
                slot.timer.cancel()
            if results is None and type(reply) is StateReplyError:
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.wbuf.clear()
        pending, self.pending = self.pending, deque()
        for slot in pending:
            if slot.timer is not None:
                slot.timer.cancel()
            if not slot.fut.done():
                slot.fut.set_exception(StateUnavailable("state server connection lost"))
        if not self.lost.done():
            self.lost.set_result(None)
        if self.on_lost is not None:
            self.on_lost(self)

    # writing ----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        # Coalesce every command issued in this loop iteration into one write (automatic
        # pipelining): N concurrent callers cost one syscall, not N.
        if not self.wbuf:
            self.loop.call_soon(self.flush)
        self.wbuf.append(data)

    def flush(self) -> None:
        if self.transport is not None and self.wbuf:
            self.transport.write(b"".join(self.wbuf))
        self.wbuf.clear()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Link:
    """One supervised connection: connect + handshake, reconnect with backoff, FIFO calls."""

    def __init__(
        self,
        client: StateClient,
        name: str,
        push: MessageCallback | None,
        on_up: Hook | None,
        on_down: Hook | None,
    ) -> None:
        self.client = client
        self.name = name
        self.push = push
        self.on_up = on_up
        self.on_down = on_down
        self.proto: _Protocol | None = None
        self.task: asyncio.Task[None] | None = None
        self.up_event = asyncio.Event()
        self.closed = False

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"rawgw-state-{self.name}")

    async def close(self) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        proto, self.proto = self.proto, None
        if proto is not None and proto.transport is not None:
            proto.on_lost = None
            proto.transport.close()
            proto.abort()
        self.up_event.clear()

    # calls ------------------------------------------------------------------------
    def submit(self, data: bytes, n: int, timeout_ms: float, many: bool = False) -> asyncio.Future[Reply]:
        proto = self.proto
        client = self.client
        if proto is None:
            client.errors += 1
            raise StateUnavailable(f"state server {client.url.masked()} is down")
        if proto.paused:
            client.errors += 1
            raise StateUnavailable("state server is not reading (write buffer full)")
        loop = proto.loop
        fut: asyncio.Future[Reply] = loop.create_future()
        now = loop.time()
        slot = _Slot(fut, n, now, many)
        proto.pending.append(slot)
        proto.send(data)
        slot.timer = loop.call_at(now + timeout_ms / 1000.0, self._expire, slot, proto)
        return fut

    def _expire(self, slot: _Slot, proto: _Protocol) -> None:
        # Timeout policy: the slot STAYS in the FIFO and its reply is discarded when it
        # arrives (data_received skips done futures), so later replies still match their
        # own callers. Dropping the connection instead would fail every call pipelined
        # behind a single slow one (a long EVAL, a fork stall) and turn one slow reply
        # into a reconnect storm. A server that stopped answering altogether is caught
        # by stuck_ms: when the oldest unanswered command is that old, the connection is
        # dropped and made again.
        if slot.fut.done():
            return
        client = self.client
        client.errors += 1
        client.timeouts += 1
        waited = (slot.timer.when() - slot.sent) * 1000 if slot.timer is not None else client.timeout_ms
        slot.fut.set_exception(StateTimeout(f"state server: no reply within {waited:.0f} ms"))
        pending = proto.pending
        if pending and proto.loop.time() - pending[0].sent >= client.stuck_ms / 1000.0:
            log.warning("state server %s: no reply for %d ms, reconnecting", client.url.masked(), client.stuck_ms)
            proto.abort()

    # connection -------------------------------------------------------------------
    async def _connect(self) -> _Protocol:
        client = self.client
        url = client.url
        loop = asyncio.get_running_loop()
        push = self.push

        def factory() -> _Protocol:
            return _Protocol(loop, push)

        async with asyncio.timeout(client.connect_timeout_ms / 1000.0):
            if url.scheme == "unix":
                _, proto = await loop.create_unix_connection(factory, url.path)
            else:
                ctx = client.ssl_context
                _, proto = await loop.create_connection(
                    factory, url.host, url.port, ssl=ctx, server_hostname=url.host if ctx is not None else None
                )
            try:
                # AUTH + SELECT + PING as one pipeline: the link is up only once the server
                # has answered, so a server that accepts but never answers is never "up".
                commands: list[tuple[Arg, ...]] = []
                if url.password is not None:
                    commands.append(("AUTH", url.username, url.password) if url.username else ("AUTH", url.password))
                if url.db and push is None:
                    commands.append(("SELECT", url.db))
                commands.append(("PING",))
                data = b"".join(_pack(c) for c in commands)
                fut: asyncio.Future[Reply] = loop.create_future()
                proto.pending.append(_Slot(fut, len(commands), loop.time(), True))
                proto.send(data)
                for reply in await fut:
                    if type(reply) is StateReplyError:
                        raise reply
            except BaseException:
                proto.abort()
                raise
        return proto

    async def _run(self) -> None:
        client = self.client
        attempt = 0
        reported = False
        # One clear line per outage: the command link tells; the pub/sub link (which
        # fails and recovers with it) only at debug level.
        level = logging.WARNING if self.push is None else logging.DEBUG
        while not self.closed:
            try:
                proto = await self._connect()
            except (OSError, StateError, TimeoutError) as exc:
                client.errors += 1
                if not reported:  # one line per outage, not one per retry
                    log.log(
                        level,
                        "state server %s (%s) unreachable: %s; retrying in the background",
                        client.url.masked(),
                        self.name,
                        _describe(exc),
                    )
                    reported = True
                delay = min(client.backoff_max_ms, client.backoff_base_ms * 2**attempt) / 1000.0
                attempt = min(attempt + 1, 30)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter: no herd
                continue
            if reported:
                log.log(level, "state server %s (%s) is back", client.url.masked(), self.name)
            attempt = 0
            reported = False
            proto.on_lost = self._lost
            self.proto = proto
            self.up_event.set()
            _fire(self.on_up)
            if self.push is not None:
                await self._heartbeat(proto)
            else:
                await proto.lost
            if not reported:
                log.log(level, "state server %s (%s): connection lost; reconnecting", client.url.masked(), self.name)
                reported = True

    async def _heartbeat(self, proto: _Protocol) -> None:
        # The pub/sub connection only ever reads: a peer gone without a FIN/RST (host
        # down, partition) would leave it "up" and deaf for good. A PING every
        # heartbeat_ms (answered ["pong", ""] in subscribed mode) that stays unanswered
        # past stuck_ms makes _expire drop the connection; the reconnect resubscribes.
        interval = self.client.heartbeat_ms / 1000.0
        while not proto.lost.done():
            try:
                async with asyncio.timeout(interval):
                    await asyncio.shield(proto.lost)
                return
            except TimeoutError:
                pass
            if self.proto is not proto:
                return
            fut = self.submit(_PING, 1, self.client.timeout_ms)
            fut.add_done_callback(_ignore)

    def _lost(self, proto: _Protocol) -> None:
        # Called from connection_lost, before the supervisor task runs again: calls made
        # from now on fail fast instead of being queued on a dead transport.
        if self.proto is proto:
            self.proto = None
            self.up_event.clear()
            _fire(self.on_down)


_PING = b"*1\r\n$4\r\nPING\r\n"


def _ignore(fut: asyncio.Future[Reply]) -> None:
    if not fut.cancelled():
        fut.exception()  # a missed heartbeat is counted by _expire


def _fire(hook: Hook | None) -> None:
    if hook is not None:
        try:
            hook()
        except Exception:
            log.exception("state: on_up/on_down callback failed")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    return str(exc) or type(exc).__name__


class StateClient:
    """The process's connection(s) to the state server; see the module docstring.

    ``timeout_ms`` bounds every call (default for ``call``/``pipeline``);
    ``connect_timeout_ms`` bounds one connect + handshake; ``stuck_ms`` (default
    ``max(1000, 20 * timeout_ms)``) is how long the oldest unanswered command may wait
    before the connection is considered dead; backoff doubles from ``backoff_base_ms``
    to ``backoff_max_ms``, each sleep drawn from [50 %, 100 %] of it; the pub/sub
    connection sends a PING every ``heartbeat_ms`` so that a silent peer is noticed
    within about ``heartbeat_ms + stuck_ms``.
    """

    def __init__(
        self,
        url: StateURL,
        *,
        timeout_ms: float = 50.0,
        connect_timeout_ms: float = 1000.0,
        stuck_ms: float | None = None,
        backoff_base_ms: float = 50.0,
        backoff_max_ms: float = 5000.0,
        heartbeat_ms: float = 1000.0,
        on_up: Hook | None = None,
        on_down: Hook | None = None,
        on_subscribed: Hook | None = None,
    ) -> None:
        self.url = url
        self.on_subscribed = on_subscribed
        self.timeout_ms = timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.stuck_ms = stuck_ms if stuck_ms is not None else max(1000.0, 20 * timeout_ms)
        self.backoff_base_ms = backoff_base_ms
        self.backoff_max_ms = backoff_max_ms
        self.heartbeat_ms = heartbeat_ms
        # made once: create_default_context() reads the trust store from disk, which
        # must not happen on the loop at every reconnect
        self.ssl_context = url.ssl_context()
        self.errors = 0  # failed calls (down, timeout, backpressure) + failed connects
        self.timeouts = 0
        self._cmd = _Link(self, "commands", None, on_up, on_down)
        self._sub: _Link | None = None
        self._channels: dict[bytes, list[MessageCallback]] = {}

    # lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting in the background (returns at once; see ``wait_up``)."""
        self._cmd.start()

    async def wait_up(self, timeout_s: float) -> bool:
        """True once the command connection is up, False after timeout_s."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._cmd.up_event.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close both connections; pending calls fail with StateUnavailable."""
        await self._cmd.close()
        if self._sub is not None:
            await self._sub.close()

    @property
    def up(self) -> bool:
        """The command connection is established and answered its handshake."""
        return self._cmd.proto is not None

    @property
    def subscriber_up(self) -> bool:
        """The pub/sub connection is up (its channels are (re)subscribed on each connect)."""
        return self._sub is not None and self._sub.proto is not None

    # commands ---------------------------------------------------------------------
    async def call(self, *args: Arg, timeout_ms: float | None = None) -> Reply:
        """Send one command; its reply (bytes, int, list or None).

        Raises StateReplyError for an error reply, StateTimeout, StateUnavailable.
        """
        return await self._cmd.submit(_pack(args), 1, self.timeout_ms if timeout_ms is None else timeout_ms)

    async def pipeline(self, commands: Sequence[Sequence[Arg]], *, timeout_ms: float | None = None) -> list[Reply]:
        """Send several commands back to back; their replies in order, one timeout for all.

        An error reply does not raise: it is a StateReplyError in the returned list.
        Not a transaction (other callers' commands may interleave); use a script for
        atomicity.
        """
        n = len(commands)
        if n == 0:
            return []
        data = b"".join([_pack(tuple(c)) for c in commands])
        reply: list[Reply] = await self._cmd.submit(data, n, self.timeout_ms if timeout_ms is None else timeout_ms, many=True)
        return reply

    async def publish(self, channel: str | bytes, payload: bytes, *, timeout_ms: float | None = None) -> int:
        """PUBLISH on the command connection; the number of subscribers that received it."""
        return int(await self.call("PUBLISH", channel, payload, timeout_ms=timeout_ms))

    # pub/sub ----------------------------------------------------------------------
    async def subscribe(self, channel: str | bytes, callback: MessageCallback, *, timeout_ms: float | None = None) -> None:
        """Call ``callback(channel, payload)`` (on the loop) for each message on channel.

        Opens the pub/sub connection on first use. The subscription survives reconnects
        (every channel is subscribed again on each connect). When the pub/sub connection
        is up this returns once the server confirmed; when it is down it returns at once
        and the subscription takes effect on connect. Messages published while the
        subscriber is disconnected are lost (pub/sub is fire and forget): reload the
        state from ``on_subscribed`` (called once every channel is subscribed again).
        """
        key = channel.encode() if isinstance(channel, str) else channel
        first = key not in self._channels
        self._channels.setdefault(key, []).append(callback)
        if self._sub is None:
            self._sub = _Link(self, "pubsub", self._dispatch, self._resubscribe, None)
            self._sub.start()
            return
        if first and self._sub.proto is not None:
            t = self.timeout_ms if timeout_ms is None else timeout_ms
            await self._sub.submit(_pack(("SUBSCRIBE", key)), 1, t)

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        for callback in self._channels.get(channel, ()):
            callback(channel, payload)

    def _resubscribe(self) -> None:
        sub = self._sub
        if sub is None or not self._channels:
            return
        data = b"".join([_pack(("SUBSCRIBE", c)) for c in self._channels])
        try:
            fut = sub.submit(data, len(self._channels), max(self.timeout_ms, self.connect_timeout_ms), many=True)
        except StateError:
            return
        fut.add_done_callback(self._subscribed)

    def _subscribed(self, fut: asyncio.Future[Reply]) -> None:
        # After the confirmations, not before: a state reload done from on_subscribed
        # then misses no event published in between.
        if fut.cancelled() or fut.exception() is not None:
            return  # counted by _expire / connection_lost; the next connect retries
        _fire(self.on_subscribed)
