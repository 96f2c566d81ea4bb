"""SOCKS5 egress (provider `proxy = "socks5[h]://..."`), issue 13 point 3.

Pure helpers of rawgw/upstream/socks.py first; then the whole gateway through REAL
SOCKS5 servers started here: Dante (`danted`, no authentication; the one that answers
refusals with RFC 1928 reply codes) and pproxy (username/password, RFC 1929; its
verbose log says which address each client asked for).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from conftest import (
    CHAT_BODY,
    STREAM_BODY,
    Gateway,
    StartGateway,
    assert_gateway_error,
    base_config,
    chat_request,
    free_port,
    raw_connection,
)
from mock_upstream import Json, MockUpstream, Sse

from rawgw.config import ConfigError, parse_config
from rawgw.config_commands import summarize
from rawgw.upstream import socks
from rawgw.upstream.socks import SocksError, SocksProxy, parse_proxy_url

USER = "alice"
PASSWORD = "pa:ss-7f3e9c1d"  # a ':' inside: percent-encoded in the URL
PASSWORD_URL = "pa%3Ass-7f3e9c1d"
WRONG = "wrong-pw-5b2a9e0c"
AWKWARD = [b"da", b"ta: {\"a\":1}\n", b"\ndata: {\"b\":", b"2}\n\n: ping\n\n", b"data: [DONE]\n\n"]


# --------------------------------------------------------------------------- pure helpers


def test_parse_proxy_url_and_label_hides_password() -> None:
    p = parse_proxy_url(f"socks5h://{USER}:{PASSWORD_URL}@proxy.internal:1080")
    assert isinstance(p, SocksProxy)
    assert (p.scheme, p.host, p.port, p.username, p.password) == ("socks5h", "proxy.internal", 1080, b"alice", PASSWORD.encode())
    assert p.remote_dns
    assert p.label == "socks5h://alice@proxy.internal:1080"
    assert PASSWORD not in repr(p)
    q = parse_proxy_url("SOCKS5://[::1]:9050")
    assert isinstance(q, SocksProxy) and not q.remote_dns and q.label == "socks5://[::1]:9050" and q.username == b""


@pytest.mark.parametrize(
    "url, reason",
    [
        ("socks4://h:1080", "scheme must be socks5 or socks5h"),
        ("socks5://h", "must include a host and a port"),
        ("socks5://:1080", "must include a host and a port"),
        ("socks5://h:99999", "has an invalid port"),
        ("socks5://h:1080/x", "must not have a path, query or fragment"),
        ("socks5://u@h:1080", "credentials must be user:pass"),
        ("socks5://" + "u" * 256 + ":p@h:1080", "user and password must each be 1 to 255 bytes"),
    ],
)
def test_parse_proxy_url_errors(url: str, reason: str) -> None:
    assert parse_proxy_url(url) == reason


def test_greeting_offers_userpass_only_with_credentials() -> None:
    anon = SocksProxy("socks5", "h", 1)
    auth = SocksProxy("socks5", "h", 1, b"u", b"p")
    assert socks.greeting(anon) == b"\x05\x01\x00"
    assert socks.greeting(auth) == b"\x05\x02\x00\x02"


def test_method_choice() -> None:
    anon = SocksProxy("socks5", "h", 1)
    auth = SocksProxy("socks5", "h", 1, b"u", b"p")
    assert socks.parse_method_choice(b"\x05\x00", anon) == 0
    assert socks.parse_method_choice(b"\x05\x02", auth) == 2
    with pytest.raises(SocksError, match="requires credentials"):
        socks.parse_method_choice(b"\x05\xff", anon)
    with pytest.raises(SocksError, match="no acceptable authentication method"):
        socks.parse_method_choice(b"\x05\xff", auth)
    with pytest.raises(SocksError, match="none is configured"):
        socks.parse_method_choice(b"\x05\x02", anon)
    with pytest.raises(SocksError, match="not offered"):
        socks.parse_method_choice(b"\x05\x01", auth)
    with pytest.raises(SocksError, match="not a SOCKS5 server"):
        socks.parse_method_choice(b"HT", anon)


def test_auth_request_and_reply() -> None:
    assert socks.auth_request(b"bob", b"pw") == b"\x01\x03bob\x02pw"
    socks.parse_auth_reply(b"\x01\x00")
    with pytest.raises(SocksError, match="wrong username or password"):
        socks.parse_auth_reply(b"\x01\x01")
    with pytest.raises(SocksError, match="bad username/password reply"):
        socks.parse_auth_reply(b"\x05\x00")


def test_connect_request_address_types() -> None:
    assert socks.connect_request("10.1.2.3", 443) == b"\x05\x01\x00\x01\x0a\x01\x02\x03\x01\xbb"
    assert socks.connect_request("::1", 80) == b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01" + b"\x00\x50"
    assert socks.connect_request("api.example", 443) == b"\x05\x01\x00\x03\x0bapi.example\x01\xbb"
    with pytest.raises(SocksError, match="not usable in SOCKS5"):
        socks.connect_request("a" * 256, 443)


@pytest.mark.parametrize(
    "code, message",
    [
        (1, "general SOCKS server failure"),
        (2, "connection not allowed by the proxy's rules"),
        (3, "network unreachable"),
        (4, "host unreachable"),
        (5, "connection refused by target"),
        (6, "TTL expired"),
        (7, "command not supported"),
        (8, "address type not supported"),
        (9, "unknown reply code 0x09"),
    ],
)
def test_reply_codes(code: int, message: str) -> None:
    with pytest.raises(SocksError) as info:
        socks.reply_length(bytes((5, code, 0, 1, 0)))
    assert str(info.value) == message


def test_reply_length() -> None:
    assert socks.reply_length(b"\x05\x00\x00\x01\x7f") == 10
    assert socks.reply_length(b"\x05\x00\x00\x04\x00") == 22
    assert socks.reply_length(b"\x05\x00\x00\x03\x09") == 16
    with pytest.raises(SocksError, match="bad address type"):
        socks.reply_length(b"\x05\x00\x00\x07\x00")
    with pytest.raises(SocksError, match="not a SOCKS5 server"):
        socks.reply_length(b"HTTP/")


# --------------------------------------------------------------------------- config


def _provider(proxy: str) -> dict[str, object]:
    return {"providers": {"x": {"type": "openai", "keys": ["k" * 16], "base_url": "https://h/v1", "proxy": proxy}}}


@pytest.mark.parametrize("proxy", ["socks5://127.0.0.1:1080", f"socks5h://{USER}:{PASSWORD_URL}@proxy.internal:1080", "socks5h://[::1]:9050"])
def test_config_accepts_socks_proxies(proxy: str) -> None:
    assert parse_config(_provider(proxy), {}).providers["x"].proxy == proxy


@pytest.mark.parametrize(
    "proxy, reason",
    [
        ("socks4://h:1080", "scheme must be socks5 or socks5h"),
        ("socks5://h", "must include a host and a port"),
        (f"socks5://{USER}@h:1080", "credentials must be user:pass"),
        ("socks5://h:1080/path", "must not have a path, query or fragment"),
    ],
)
def test_config_rejects_bad_socks_proxies(proxy: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_provider(proxy), {})
    assert info.value.errors == [f"providers.x.proxy: {reason}: must be socks5://[user:pass@]host:port or socks5h://[user:pass@]host:port"]


def test_config_proxy_from_env_and_check_masks_it() -> None:
    url = f"socks5h://{USER}:{PASSWORD_URL}@127.0.0.1:1080"
    doc = _provider("env:SOCKS_URL")
    cfg = parse_config(doc, {"SOCKS_URL": url})
    assert cfg.providers["x"].proxy == url
    text = "\n".join(summarize(cfg))
    assert "proxy:" in text and PASSWORD_URL not in text and PASSWORD not in text
    with pytest.raises(ConfigError) as info:
        parse_config(_provider("env:SOCKS_URL"), {"SOCKS_URL": f"socks5://{USER}:{PASSWORD_URL}@h"})
    assert PASSWORD_URL not in str(info.value) and "providers.x.proxy: must include a host and a port" in str(info.value)


# --------------------------------------------------------------------------- real SOCKS5 servers


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    """Poll until the port accepts connections (or the server died: fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"SOCKS5 server exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)  # polling the port, not waiting for an event
    proc.kill()
    pytest.fail(f"SOCKS5 server not listening on {port} after {timeout} s:\n{log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


DANTED = shutil.which("danted") or ("/usr/sbin/danted" if os.access("/usr/sbin/danted", os.X_OK) else None)


def _start_dante(directory: Path, socksmethod: str = "none") -> tuple[subprocess.Popen[bytes], int, Path]:
    if DANTED is None:
        pytest.skip("danted not installed (apt-get install dante-server); .ci/run installs it")
    port = free_port()
    me = pwd.getpwuid(os.getuid()).pw_name  # unprivileged runs need both set to the current user
    log = directory / "danted.log"
    conf = directory / "danted.conf"
    conf.write_text(
        f"logoutput: {log}\n"
        f"internal: 127.0.0.1 port = {port}\n"
        "external: 127.0.0.1\n"
        "clientmethod: none\n"
        f"socksmethod: {socksmethod}\n"
        f"user.privileged: {me}\n"
        f"user.unprivileged: {me}\n"
        "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }\n"
        "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect error }\n"
    )
    out = directory / "danted.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([DANTED, "-f", str(conf), "-p", str(directory / "danted.pid"), "-N", "1"], stdout=f, stderr=subprocess.STDOUT)
    _wait_listening(port, proc, out if not log.exists() else log)
    return proc, port, log


class SocksServer:
    """A running SOCKS5 server: its port and the log where it records each CONNECT."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log

    async def wait_line(self, fragment: str, timeout: float = 5.0) -> str:
        """The first log line containing ``fragment`` (polled: the server writes it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if fragment in line:
                    return line
            await asyncio.sleep(0.02)
        raise AssertionError(f"{fragment!r} not in {self.log.name}:\n{self.log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def dante(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SocksServer]:
    """A Dante SOCKS5 server without authentication on a free loopback port."""
    proc, port, log = _start_dante(tmp_path_factory.mktemp("dante"))
    yield SocksServer(port, log)
    _stop(proc)


PPROXY_MAIN = """
import asyncio, sys
import pproxy

async def main():
    server = pproxy.Server(sys.argv[1])
    await server.start_server({"rserver": [], "verbose": lambda line: print(line, flush=True)})
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def pproxy_auth(tmp_path: Path) -> Iterator[SocksServer]:
    """pproxy as a SOCKS5 server requiring USER:PASSWORD (one per test: it remembers authed IPs)."""
    try:
        import pproxy  # noqa: F401
    except ImportError:
        pytest.skip("pproxy not installed (pip install -e '.[test]')")
    port = free_port()
    log = tmp_path / "pproxy.log"
    script = tmp_path / "pproxy_main.py"
    script.write_text(PPROXY_MAIN)
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, str(script), f"socks5://127.0.0.1:{port}#{USER}:{PASSWORD}"], stdout=f, stderr=subprocess.STDOUT)
    _wait_listening(port, proc, log)
    yield SocksServer(port, log)
    _stop(proc)


def _no_secret_anywhere(gw: Gateway, *secrets: str) -> None:
    texts = [gw.stderr_text(), gw.stdout_text()]
    if gw.logs_dir.exists():
        texts += [p.read_text(errors="replace") for p in gw.logs_dir.rglob("*") if p.is_file()]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def _localhost_base(mock: MockUpstream, scheme: str = "http") -> str:
    return f"{scheme}://localhost:{mock.port}/v1"


# ---- Dante, no authentication


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_plain_http_through_dante(start_gateway: StartGateway, mock_upstream: MockUpstream, dante: SocksServer, scheme: str) -> None:
    cfg = base_config(_localhost_base(mock_upstream), provider={"proxy": f"{scheme}://127.0.0.1:{dante.port}"})
    gw = await start_gateway(cfg)
    mock_upstream.enqueue(Json(body={"via": scheme}))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    assert r.status == 200 and r.json() == {"via": scheme}
    (req,) = await mock_upstream.wait_for_requests(1)
    assert req.body == CHAT_BODY
    # The mock's peer is Dante's outgoing socket: Dante logged exactly that tunnel.
    assert req.conn.peer is not None
    await dante.wait_line(f"-> 127.0.0.1.{req.conn.peer[1]} 127.0.0.1.{mock_upstream.port}")


async def test_pooled_reuse_one_tunnel(start_gateway: StartGateway, mock_upstream: MockUpstream, dante: SocksServer) -> None:
    cfg = base_config(mock_upstream, provider={"proxy": f"socks5://127.0.0.1:{dante.port}"})
    gw = await start_gateway(cfg)
    mock_upstream.enqueue(Json(body={"n": 1}), Json(body={"n": 2}))
    for n in (1, 2):
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(CHAT_BODY))
        assert r.status == 200 and r.json() == {"n": n}
    await mock_upstream.wait_for_requests(2)
    assert len(mock_upstream.connections) == 1, "the second request must reuse the pooled tunnel"


async def test_sse_through_dante_byte_exact(start_gateway: StartGateway, mock_upstream: MockUpstream, dante: SocksServer) -> None:
    cfg = base_config(_localhost_base(mock_upstream), provider={"proxy": f"socks5h://127.0.0.1:{dante.port}"})
    gw = await start_gateway(cfg)
    mock_upstream.enqueue(Sse(pieces=AWKWARD, delay=0.02))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(STREAM_BODY), timeout=5)
    assert r.status == 200 and r.complete and r.chunked
    assert r.body == b"".join(AWKWARD)
    assert r.header("content-type") == "text/event-stream"


async def test_tls_through_dante_checks_upstream_hostname(
    start_gateway: StartGateway, mock_upstream_tls: MockUpstream, dante: SocksServer, ca_pem: Path
) -> None:
    cfg = base_config(_localhost_base(mock_upstream_tls, "https"), provider={"proxy": f"socks5h://127.0.0.1:{dante.port}"})
    gw = await start_gateway(cfg, env={"SSL_CERT_FILE": str(ca_pem)})
    mock_upstream_tls.enqueue(Json(body={"tls": True}))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    assert r.status == 200 and r.json() == {"tls": True}
    (req,) = await mock_upstream_tls.wait_for_requests(1)
    assert req.header("host") == f"localhost:{mock_upstream_tls.port}".encode()


async def test_tls_certificate_for_another_name_is_502(
    start_gateway: StartGateway, tls_ca: trustme.CA, dante: SocksServer, ca_pem: Path
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("other.example").configure_cert(ctx)
    async with await MockUpstream.start(ssl=ctx) as mock:
        cfg = base_config(_localhost_base(mock, "https"), provider={"proxy": f"socks5h://127.0.0.1:{dante.port}"})
        gw = await start_gateway(cfg, env={"SSL_CERT_FILE": str(ca_pem)})
        mock.enqueue(Json(body={"must": "not arrive"}))
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(CHAT_BODY))
        err = assert_gateway_error(r, 502)
        assert "certificate verification failed for localhost" in err["message"], err
        assert mock.requests == []


async def test_target_refused_is_502_with_reply_code(start_gateway: StartGateway, dante: SocksServer) -> None:
    closed = free_port()
    cfg = base_config(f"http://127.0.0.1:{closed}/v1", provider={"proxy": f"socks5://127.0.0.1:{dante.port}"})
    gw = await start_gateway(cfg)
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    err = assert_gateway_error(r, 502)
    assert err["message"] == f"SOCKS5 proxy socks5://127.0.0.1:{dante.port} could not open 127.0.0.1:{closed}: connection refused by target"


async def test_proxy_port_closed_is_502_naming_proxy_without_password(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    port = free_port()
    cfg = base_config(mock_upstream, provider={"proxy": f"socks5h://{USER}:{PASSWORD_URL}@127.0.0.1:{port}"})
    gw = await start_gateway(cfg)
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    err = assert_gateway_error(r, 502)
    assert err["message"].startswith(f"cannot connect to SOCKS5 proxy socks5h://{USER}@127.0.0.1:{port}: "), err
    assert PASSWORD_URL.encode() not in r.body and b"7f3e9c1d" not in r.body
    assert mock_upstream.requests == []
    _no_secret_anywhere(gw, PASSWORD_URL, PASSWORD)


async def test_proxy_requiring_auth_without_credentials_is_502(
    start_gateway: StartGateway, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """Dante with socksmethod username answers 0xFF (no acceptable methods) to an anonymous client."""
    proc, port, _ = _start_dante(tmp_path, socksmethod="username")
    try:
        cfg = base_config(mock_upstream, provider={"proxy": f"socks5://127.0.0.1:{port}"})
        gw = await start_gateway(cfg)
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(CHAT_BODY))
    finally:
        _stop(proc)
    err = assert_gateway_error(r, 502)
    assert err["message"] == (
        f"SOCKS5 proxy socks5://127.0.0.1:{port} could not open 127.0.0.1:{mock_upstream.port}: "
        "no acceptable authentication method (it requires credentials: socks5://user:pass@host:port)"
    )


# ---- pproxy, username/password


@pytest.mark.parametrize("scheme, seen", [("socks5", "127.0.0.1"), ("socks5h", "localhost")])
async def test_auth_and_name_resolution_through_pproxy(
    start_gateway: StartGateway, mock_upstream: MockUpstream, pproxy_auth: SocksServer, scheme: str, seen: str
) -> None:
    """socks5: the gateway resolves the name and sends the IP; socks5h: the proxy gets the name.
    The proxy URL comes from the environment (env:NAME) like other secrets."""
    url = f"{scheme}://{USER}:{PASSWORD_URL}@127.0.0.1:{pproxy_auth.port}"
    cfg = base_config(_localhost_base(mock_upstream), provider={"proxy": "env:SOCKS_URL"})
    gw = await start_gateway(cfg, env={"SOCKS_URL": url})
    mock_upstream.enqueue(Json(body={"auth": "ok"}))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    assert r.status == 200 and r.json() == {"auth": "ok"}
    line = await pproxy_auth.wait_line(f"-> {seen}:{mock_upstream.port}")
    assert line.startswith("socks5 ")


async def test_wrong_password_is_502_naming_proxy_without_password(
    start_gateway: StartGateway, mock_upstream: MockUpstream, pproxy_auth: SocksServer
) -> None:
    cfg = base_config(mock_upstream, provider={"proxy": f"socks5://{USER}:{WRONG}@127.0.0.1:{pproxy_auth.port}"})
    gw = await start_gateway(cfg)
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    err = assert_gateway_error(r, 502)
    assert err["message"].startswith(f"SOCKS5 proxy socks5://{USER}@127.0.0.1:{pproxy_auth.port} could not open 127.0.0.1:{mock_upstream.port}: ")
    assert "authentication rejected" in err["message"], err
    assert WRONG.encode() not in r.body
    assert mock_upstream.requests == []
    _no_secret_anywhere(gw, WRONG)


async def test_silent_proxy_times_out_within_connect_timeout_and_closes(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """A proxy that accepts TCP and never answers the greeting: the provider's connect
    timeout bounds the handshake, the error names the proxy, and the socket is closed."""
    greeted: asyncio.Queue[bytes] = asyncio.Queue()
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await greeted.put(await reader.readexactly(4))
        await reader.read()  # until the gateway gives up
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = base_config(mock_upstream, provider={"proxy": f"socks5://{USER}:{WRONG}@127.0.0.1:{port}", "connect_timeout_s": 0.5})
        gw = await start_gateway(cfg)
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(CHAT_BODY))
        assert await asyncio.wait_for(greeted.get(), 1) == b"\x05\x02\x00\x02"
        await asyncio.wait_for(closed.wait(), 2)
    finally:
        server.close()
    err = assert_gateway_error(r, 502)
    assert err["message"] == (
        f"connect to 127.0.0.1:{mock_upstream.port} via SOCKS5 proxy socks5://{USER}@127.0.0.1:{port} timed out after 0.5 s"
    )
    _no_secret_anywhere(gw, WRONG)


async def test_pool_keyed_by_proxy_too(start_gateway: StartGateway, mock_upstream: MockUpstream, dante: SocksServer) -> None:
    """Same origin, one provider direct and one through the proxy: never one shared connection."""
    direct = {"type": "openai", "base_url": mock_upstream.url("/v1"), "keys": ["sk-direct-0123456789"]}
    cfg = base_config(mock_upstream, extra={"providers": {"direct": direct}}, provider={"proxy": f"socks5://127.0.0.1:{dante.port}"})
    gw = await start_gateway(cfg)
    mock_upstream.enqueue(Json(body={"n": 1}), Json(body={"n": 2}), Json(body={"n": 3}))
    for path in ("/direct/chat/completions", "/mock/chat/completions", "/direct/chat/completions"):
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(CHAT_BODY, path=path))
        assert r.status == 200, r.body
    first, tunnelled, again = await mock_upstream.wait_for_requests(3)
    assert first.conn is again.conn and tunnelled.conn is not first.conn
    assert tunnelled.header("authorization") == b"Bearer sk-upstream-key-aaaa1111"
    assert tunnelled.conn.peer is not None and first.conn.peer is not None
    await dante.wait_line(f"-> 127.0.0.1.{tunnelled.conn.peer[1]} 127.0.0.1.{mock_upstream.port}")
    assert f"-> 127.0.0.1.{first.conn.peer[1]} " not in dante.log.read_text()


async def test_socks5_burst_resolves_target_and_proxy_once(mock_upstream: MockUpstream, dante: SocksServer) -> None:
    """socks5:// resolves the upstream's name here: a burst of new tunnels shares one
    lookup of it and one of the proxy's name (rawgw.upstream.resolve)."""
    from rawgw.upstream.pool import Origin, OriginPool
    from rawgw.upstream.resolve import Address

    pool = OriginPool(Origin("http", "localhost", mock_upstream.port, f"socks5://localhost:{dante.port}"), 50, 30.0, 65536)
    asked: list[str] = []

    def counting(real):  # type: ignore[no-untyped-def]
        async def lookup(host: str, port: int) -> list[Address]:
            asked.append(host)
            return [a for a in await real(host, port) if a[0] == socket.AF_INET]  # both listen on 127.0.0.1

        return lookup

    assert pool.proxy_resolver is not None
    pool.resolver.lookup = counting(pool.resolver.lookup)
    pool.proxy_resolver.lookup = counting(pool.proxy_resolver.lookup)
    conns = await asyncio.gather(*[pool.acquire(10.0) for _ in range(8)])
    try:
        assert sorted(asked) == ["localhost", "localhost"]  # one for the target, one for the proxy
        assert len({id(c) for c in conns}) == 8
    finally:
        for c in conns:
            c.abort()
