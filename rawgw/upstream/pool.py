"""Keep-alive pools per upstream origin: connect (TCP, TLS, CONNECT or SOCKS5 proxy), reuse, reap.

A connection goes back to the pool only when its exchange ended cleanly (both h11
sides DONE, and h11 holds no byte past the response: leftovers would be served to
the next client); one the upstream closed or that turned readable while idle is
dropped (httpcore's rule). The pool is bounded by the provider's
``max_connections``; callers past the bound wait for a slot.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import urllib.parse
from collections import deque
from dataclasses import dataclass

from rawgw.http.netloc import authority
from rawgw.upstream.connection import UpstreamConnection, UpstreamError
from rawgw.upstream.resolve import Resolver
from rawgw.upstream.socks import SocksProxy, open_tunnel, parse_proxy_url

_tls_context: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """System trust store (honours SSL_CERT_FILE / SSL_CERT_DIR), hostname checks on."""
    global _tls_context
    if _tls_context is None:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["http/1.1"])
        _tls_context = ctx
    return _tls_context


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    proxy: str = ""

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return authority(self.host, self.port, default)


class OriginPool:
    """Idle connections (LIFO) and a connection count for one origin."""

    def __init__(self, origin: Origin, max_connections: int, idle_s: float, max_header_bytes: int) -> None:
        self.origin = origin
        self.max_connections = max_connections
        self.idle_s = idle_s
        self.max_header_bytes = max_header_bytes
        self.idle: deque[UpstreamConnection] = deque()
        self.open: set[UpstreamConnection] = set()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.connecting = 0
        self.reaper: asyncio.TimerHandle | None = None  # one timer per pool, not per release
        # Parsed once per origin (config already validated it), not per connection.
        socks = parse_proxy_url(origin.proxy) if origin.proxy.lower().startswith("socks5") else None
        self.socks: SocksProxy | None = socks if isinstance(socks, SocksProxy) else None
        self.via = f" via SOCKS5 proxy {self.socks.label}" if self.socks is not None else ""
        # names resolved once per TTL (rawgw.upstream.resolve): the upstream's (direct and
        # socks5://), the SOCKS proxy's; an HTTP CONNECT proxy resolves the upstream itself
        self.resolver = Resolver(origin.host, origin.port)
        self.proxy_resolver = Resolver(self.socks.host, self.socks.port) if self.socks is not None else None

    @property
    def size(self) -> int:
        return len(self.open) + self.connecting

    async def acquire(self, connect_timeout: float) -> UpstreamConnection:
        """An idle live connection, else a new one (waiting while at the bound)."""
        while True:
            while self.idle:
                conn = self.idle.pop()
                if conn.reusable:
                    return conn
                conn.abort()
            if self.size < self.max_connections:
                break
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result
                # when a cancel (the client left) lands as the awaited thing completes
                # (gh-86296), and the exchange would go on for nobody. Here too.
                async with asyncio.timeout(connect_timeout):
                    await waiter
            except TimeoutError:
                raise UpstreamError("connect", f"no free connection to {self.origin.authority} within {connect_timeout:g} s") from None
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        self.connecting += 1
        try:
            async with asyncio.timeout(connect_timeout):
                conn = await self._connect()
        except TimeoutError:
            raise UpstreamError("connect", f"connect to {self.origin.authority}{self.via} timed out after {connect_timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            raise UpstreamError("tls", f"TLS certificate verification failed for {self.origin.host}: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise UpstreamError("tls", f"TLS handshake with {self.origin.authority} failed: {exc.reason or exc}") from None
        except UpstreamError:
            raise
        except OSError as exc:
            raise UpstreamError("connect", f"cannot connect to {self.origin.authority}: {exc.strerror or exc}") from None
        finally:
            self.connecting -= 1
            self._wake()
        self.open.add(conn)
        return conn

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        o = self.origin

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self._done, self.max_header_bytes)

        tls = tls_context() if o.scheme == "https" else None
        if not o.proxy:
            # Addresses from the origin's shared lookup (rawgw.upstream.resolve), tried in
            # the resolver's order like create_connection would; TLS checks the host name.
            error: OSError | None = None
            for _, ip, port in await self.resolver.addresses():
                try:
                    _, proto = await loop.create_connection(factory, ip, port, ssl=tls, server_hostname=o.host if tls else None)
                except ssl.SSLError:
                    raise
                except OSError as exc:
                    error = exc
                    continue
                return proto
            self.resolver.forget()
            assert error is not None
            raise error
        if self.socks is not None:
            assert self.proxy_resolver is not None
            sock = await open_tunnel(self.socks, o.host, o.port, self.resolver, self.proxy_resolver)
            try:
                # TLS inside the tunnel, the certificate checked against the upstream's name.
                _, proto = await loop.create_connection(factory, sock=sock, ssl=tls, server_hostname=o.host if tls else None)
            except BaseException:
                sock.close()
                raise
            return proto
        # Egress proxy: HTTP CONNECT, then TLS inside the tunnel.
        p = urllib.parse.urlsplit(o.proxy)
        transport, handshake = await loop.create_connection(_ConnectHandshake, p.hostname or "", p.port or 80)
        auth = b""
        if p.username:
            cred = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}".encode()
            auth = b"Proxy-Authorization: Basic " + base64.b64encode(cred) + b"\r\n"
        target = authority(o.host, o.port).encode()
        transport.write(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n" + auth + b"\r\n")
        try:
            head = await handshake.head
        except BaseException:
            transport.abort()
            raise
        status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[1].startswith(b"2"):
            transport.abort()
            reason = b" ".join(status_line[1:]).decode("latin-1")[:100]
            raise UpstreamError("connect", f"egress proxy refused CONNECT to {o.authority}: {reason}")
        proto = factory()
        if tls is not None:
            # start_tls wraps the tunnel and owns the raw transport's protocol slot.
            tls_transport = await loop.start_tls(transport, handshake, tls, server_hostname=o.host)
            assert tls_transport is not None
            tls_transport.set_protocol(proto)
            proto.connection_made(tls_transport)
        else:
            transport.set_protocol(proto)
            proto.connection_made(transport)
            transport.resume_reading()
        return proto

    def _done(self, conn: UpstreamConnection, reusable: bool) -> None:
        """The connection's callback (httpcore: the pool's stream hands it back)."""
        if reusable:
            self.release(conn)
        else:
            self.discard(conn)

    def release(self, conn: UpstreamConnection) -> None:
        """Back to the pool after a clean exchange."""
        if conn.reusable:
            conn.idle_since = conn.loop.time()
            self.idle.append(conn)
            if self.reaper is None:
                self.reaper = conn.loop.call_at(conn.idle_since + self.idle_s, self._reap)
            self._wake()
        else:
            conn.abort()

    def _reap(self) -> None:
        """Close connections idle for pool_idle_s; re-arm for the next one due."""
        self.reaper = None
        if not self.idle:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        # idle is LIFO: the oldest are at the left end
        while self.idle and now - self.idle[0].idle_since >= self.idle_s:
            self.idle.popleft().abort()
        if self.idle:
            self.reaper = loop.call_at(self.idle[0].idle_since + self.idle_s, self._reap)

    def discard(self, conn: UpstreamConnection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
            self._wake()

    def _wake(self) -> None:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def close(self) -> None:
        if self.reaper is not None:
            self.reaper.cancel()
            self.reaper = None
        for conn in list(self.open):
            conn.abort()


class _ConnectHandshake(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT, then gives the transport up."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            # A 2xx CONNECT answer has no body; nothing may follow before we speak.
            if self.transport is not None:
                self.transport.pause_reading()
            self.head.set_result(bytes(self.buf[: end + 4]))
        elif len(self.buf) > 16384:
            self.head.set_exception(UpstreamError("connect", "egress proxy answer too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(UpstreamError("connect", "egress proxy closed the connection during CONNECT"))


class Pools:
    """Every origin's pool, keyed by origin (scheme, host, port, proxy)."""

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes
        self.pools: dict[Origin, OriginPool] = {}

    def get(self, origin: Origin, max_connections: int, idle_s: float) -> OriginPool:
        pool = self.pools.get(origin)
        if pool is None:
            pool = self.pools[origin] = OriginPool(origin, max_connections, idle_s, self.max_header_bytes)
        else:
            pool.max_connections = max_connections
            pool.idle_s = idle_s
        return pool

    def stats(self) -> dict[str, tuple[int, int]]:
        # scheme and proxy in the label: the same host:port may be two origins
        return {
            f"{o.scheme}://{o.authority}" + (" via proxy" if o.proxy else ""): (len(p.open), len(p.idle)) for o, p in self.pools.items()
        }

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
