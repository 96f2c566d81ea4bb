"""SOCKS5 egress: the client side of RFC 1928 (CONNECT only) and RFC 1929 (username/password).

The handshake runs on a plain non-blocking socket with the loop's ``sock_*`` calls;
once the proxy says the tunnel is up, the socket is handed to
``loop.create_connection(sock=...)`` (with TLS and the upstream's own host name as
``server_hostname`` for https), so the upstream leg is the same as without a proxy.
The parsing and framing helpers are pure functions over bytes.

Every error names the proxy as ``socks5://user@host:port``: never its password.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass, field

from rawgw.http.netloc import authority
from rawgw.upstream.connection import UpstreamError
from rawgw.upstream.resolve import Resolver

VERSION = 0x05
METHOD_NONE = 0x00
METHOD_USERPASS = 0x02
METHOD_UNACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04
SCHEMES = ("socks5", "socks5h")

# RFC 1928 §6: the REP field of the server's reply.
REPLY_MESSAGES: dict[int, str] = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by the proxy's rules",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused by target",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


class SocksError(Exception):
    """A handshake step failed; the message is safe to show (no credentials)."""


@dataclass(frozen=True, slots=True)
class SocksProxy:
    """A parsed ``socks5://`` or ``socks5h://`` proxy URL (``h``: the proxy resolves names)."""

    scheme: str
    host: str
    port: int
    username: bytes = b""
    password: bytes = field(default=b"", repr=False)

    @property
    def remote_dns(self) -> bool:
        return self.scheme == "socks5h"

    @property
    def label(self) -> str:
        """How errors and logs name the proxy: user, host and port, never the password."""
        user = urllib.parse.quote(self.username.decode("utf-8", "replace"), safe="") + "@" if self.username else ""
        return f"{self.scheme}://{user}{authority(self.host, self.port)}"


def parse_proxy_url(url: str) -> SocksProxy | str:
    """The proxy, or why the URL is not ``socks5[h]://[user:pass@]host:port``."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        return "scheme must be socks5 or socks5h"
    try:
        port = parts.port
    except ValueError:
        return "has an invalid port"
    if not parts.hostname or port is None or port == 0:
        return "must include a host and a port"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must not have a path, query or fragment"
    if (parts.username is None) != (parts.password is None):
        return "credentials must be user:pass"
    user = urllib.parse.unquote_to_bytes(parts.username or "")
    password = urllib.parse.unquote_to_bytes(parts.password or "")
    if parts.username is not None and not (1 <= len(user) <= 255 and 1 <= len(password) <= 255):
        # RFC 1929 §2: ULEN and PLEN are one byte, each 1..255.
        return "user and password must each be 1 to 255 bytes"
    return SocksProxy(scheme, parts.hostname, port, user, password)


# ---- framing (pure) -----------------------------------------------------------


def greeting(proxy: SocksProxy) -> bytes:
    """RFC 1928 §3: the methods we offer; username/password only when configured."""
    if proxy.username:
        return bytes((VERSION, 2, METHOD_NONE, METHOD_USERPASS))
    return bytes((VERSION, 1, METHOD_NONE))


def parse_method_choice(data: bytes, proxy: SocksProxy) -> int:
    """The method the server picked (2 bytes: VER METHOD)."""
    if len(data) != 2 or data[0] != VERSION:
        raise SocksError("not a SOCKS5 server (bad method reply)")
    method = data[1]
    if method == METHOD_UNACCEPTABLE:
        if proxy.username:
            raise SocksError("no acceptable authentication method (offered none and username/password)")
        raise SocksError("no acceptable authentication method (it requires credentials: socks5://user:pass@host:port)")
    if method == METHOD_USERPASS and not proxy.username:
        raise SocksError("asked for username/password, but none is configured")
    if method not in (METHOD_NONE, METHOD_USERPASS):
        raise SocksError(f"chose an authentication method not offered (0x{method:02x})")
    return method


def auth_request(username: bytes, password: bytes) -> bytes:
    """RFC 1929 §2: VER=1 ULEN UNAME PLEN PASSWD."""
    return bytes((1, len(username))) + username + bytes((len(password),)) + password


def parse_auth_reply(data: bytes) -> None:
    """RFC 1929 §2: STATUS 0 is success; anything else is a rejection."""
    if len(data) != 2 or data[0] != 1:
        raise SocksError("bad username/password reply")
    if data[1] != 0:
        raise SocksError("authentication rejected (wrong username or password)")


def encode_address(host: str) -> bytes:
    """ATYP + address: an IP literal as such, any other name as a domain (socks5h)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            name = host.encode("idna")
        except UnicodeError:
            name = b""
        if not 1 <= len(name) <= 255:
            raise SocksError(f"host name not usable in SOCKS5 (empty, too long or invalid): {host[:64]}") from None
        return bytes((ATYP_DOMAIN, len(name))) + name
    return bytes((ATYP_IPV4 if ip.version == 4 else ATYP_IPV6,)) + ip.packed


def connect_request(host: str, port: int) -> bytes:
    """RFC 1928 §4: VER CMD=CONNECT RSV ATYP DST.ADDR DST.PORT."""
    return bytes((VERSION, CMD_CONNECT, 0)) + encode_address(host) + port.to_bytes(2, "big")


def reply_length(head: bytes) -> int:
    """The whole reply's length from its first 5 bytes (VER REP RSV ATYP and one more)."""
    if len(head) < 5 or head[0] != VERSION:
        raise SocksError("not a SOCKS5 server (bad CONNECT reply)")
    rep = head[1]
    if rep != 0:
        raise SocksError(REPLY_MESSAGES.get(rep, f"unknown reply code 0x{rep:02x}"))
    atyp = head[3]
    if atyp == ATYP_IPV4:
        return 4 + 4 + 2
    if atyp == ATYP_IPV6:
        return 4 + 16 + 2
    if atyp == ATYP_DOMAIN:
        return 4 + 1 + head[4] + 2
    raise SocksError(f"bad address type 0x{atyp:02x} in CONNECT reply")


# ---- the handshake (I/O) ----------------------------------------------------------


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int, step: str) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise SocksError(f"closed the connection during {step}")
        buf += chunk
    return buf


async def _target_address(proxy: SocksProxy, host: str, target: Resolver) -> str:
    """socks5h: the name goes to the proxy; socks5: resolved here (once per origin and
    TTL, rawgw.upstream.resolve), the IP is sent."""
    if proxy.remote_dns:
        return host
    try:
        return (await target.addresses())[0][1]
    except OSError as exc:
        raise UpstreamError("connect", f"cannot resolve {host} (for SOCKS5 proxy {proxy.label}): {exc.strerror or exc}") from None


async def _open_proxy_socket(loop: asyncio.AbstractEventLoop, proxy: SocksProxy, via: Resolver) -> socket.socket:
    try:
        addresses = await via.addresses()
    except OSError as exc:
        raise UpstreamError("connect", f"cannot resolve SOCKS5 proxy {proxy.label}: {exc.strerror or exc}") from None
    last: OSError | None = None
    for family, ip, port in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (ip, port))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    via.forget()
    reason = (last.strerror or str(last)) if last is not None else "no address"
    raise UpstreamError("connect", f"cannot connect to SOCKS5 proxy {proxy.label}: {reason}")


async def open_tunnel(proxy: SocksProxy, host: str, port: int, target: Resolver, via: Resolver) -> socket.socket:
    """A connected socket whose bytes reach ``host:port`` through the proxy; ``target``
    and ``via`` are the pool's resolvers of the upstream and of the proxy.

    The caller bounds this with the provider's connect timeout; a cancellation
    closes the socket.
    """
    loop = asyncio.get_running_loop()
    address = await _target_address(proxy, host, target)
    sock = await _open_proxy_socket(loop, proxy, via)
    try:
        await loop.sock_sendall(sock, greeting(proxy))
        method = parse_method_choice(await _recv_exactly(loop, sock, 2, "method negotiation"), proxy)
        if method == METHOD_USERPASS:
            await loop.sock_sendall(sock, auth_request(proxy.username, proxy.password))
            try:
                reply = await _recv_exactly(loop, sock, 2, "authentication")
            except (SocksError, ConnectionResetError):
                # Some servers (pproxy) just hang up on bad credentials.
                raise SocksError("authentication rejected (the proxy closed the connection)") from None
            parse_auth_reply(reply)
        await loop.sock_sendall(sock, connect_request(address, port))
        head = await _recv_exactly(loop, sock, 5, "CONNECT")
        rest = reply_length(head) - 5
        if rest:
            await _recv_exactly(loop, sock, rest, "CONNECT")
    except SocksError as exc:
        sock.close()
        raise UpstreamError("connect", f"SOCKS5 proxy {proxy.label} could not open {authority(host, port)}: {exc}") from None
    except OSError as exc:
        sock.close()
        raise UpstreamError("connect", f"SOCKS5 proxy {proxy.label}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock
