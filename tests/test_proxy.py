"""Egress proxy (provider `proxy`): the gateway tunnels through HTTP CONNECT."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import CHAT_BODY, StartGateway, base_config, chat_request, raw_connection
from mock_upstream import Json, MockUpstream


class ConnectProxy:
    """A minimal CONNECT proxy that records the CONNECT heads it saw."""

    def __init__(self, require_auth: bytes | None = None) -> None:
        self.heads: list[bytes] = []
        self.require_auth = require_auth
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        if self.require_auth is not None and b"proxy-authorization: basic " + self.require_auth not in head.lower():
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        target = head.split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    p = ConnectProxy(require_auth=base64.b64encode(b"user:p%ss").lower())
    await p.start()
    yield p
    await p.close()


async def test_plain_upstream_through_connect_proxy(start_gateway: StartGateway, mock_upstream: MockUpstream, proxy: ConnectProxy) -> None:
    cfg = base_config(mock_upstream, provider={"proxy": f"http://user:p%25ss@127.0.0.1:{proxy.port}"})
    gw = await start_gateway(cfg)
    mock_upstream.enqueue(Json(body={"via": "proxy"}))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    assert r.status == 200 and r.json() == {"via": "proxy"}
    assert len(proxy.heads) == 1
    assert proxy.heads[0].startswith(f"CONNECT 127.0.0.1:{mock_upstream.port} HTTP/1.1\r\n".encode())
    (req,) = await mock_upstream.wait_for_requests(1)
    assert req.body == CHAT_BODY


async def test_tls_upstream_through_connect_proxy(
    start_gateway: StartGateway, mock_upstream_tls: MockUpstream, proxy: ConnectProxy, ca_pem: Path
) -> None:
    cfg = base_config(mock_upstream_tls, provider={"proxy": f"http://user:p%25ss@127.0.0.1:{proxy.port}"})
    gw = await start_gateway(cfg, env={"SSL_CERT_FILE": str(ca_pem)})
    mock_upstream_tls.enqueue(Json(body={"tls": True}))
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    assert r.status == 200 and r.json() == {"tls": True}
    assert proxy.heads and proxy.heads[0].startswith(b"CONNECT 127.0.0.1:")


async def test_proxy_refusing_connect_is_502(start_gateway: StartGateway, mock_upstream: MockUpstream, proxy: ConnectProxy) -> None:
    cfg = base_config(mock_upstream, provider={"proxy": f"http://wrong:creds@127.0.0.1:{proxy.port}"})
    gw = await start_gateway(cfg)
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(CHAT_BODY))
    assert r.status == 502
    assert "proxy" in r.json()["error"]["message"]
    assert b"creds" not in r.body
    assert mock_upstream.requests == []
