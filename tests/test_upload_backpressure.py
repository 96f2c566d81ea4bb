"""A slow upstream paces a streamed client upload (SPEC 6, one flow-control object).

A passthrough request whose body is still arriving when the attempt starts is streamed
upstream. When the upstream does not read, the gateway's write buffer to it fills and
the gateway must stop reading the client (``UpstreamConnection.peer`` = the client's
flow control); otherwise it reads the whole upload into memory. The upstream here
accepts and never reads, on a socket with a small receive buffer.
"""

from __future__ import annotations

import asyncio
import socket

from conftest import GW_KEY, StartGateway, base_config

TOTAL = 64 << 20  # what the client would send if nothing stopped it
PIECE = 256 << 10


class _Deaf(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]  # accept, never read


async def test_a_deaf_upstream_stops_the_gateway_reading_a_streamed_upload(start_gateway: StartGateway) -> None:
    loop = asyncio.get_running_loop()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)  # inherited by accepted sockets
    lsock.bind(("127.0.0.1", 0))
    server = await loop.create_server(_Deaf, sock=lsock)
    port = lsock.getsockname()[1]
    try:
        gw = await start_gateway(base_config(f"http://127.0.0.1:{port}/v1", server={"max_body_bytes": 2 * TOTAL}))
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", gw.port))
        _, writer = await asyncio.open_connection(sock=s)
        writer.write(
            b"POST /v1/files HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n" % GW_KEY.encode()
        )
        chunk = b"%x\r\n%s\r\n" % (PIECE, b"u" * PIECE)
        sent = 0
        while sent < TOTAL:
            writer.write(chunk)
            try:
                # the fact waited for: the gateway stopped taking bytes (drain does not finish)
                await asyncio.wait_for(writer.drain(), 1.0)
            except TimeoutError:
                break
            sent += PIECE
        writer.transport.abort()
        # kernel buffers on both gateway sockets hold a few MB at most; the rest would
        # have been read into the gateway's memory
        assert sent < TOTAL // 2, f"the gateway read {sent >> 20} MB of the upload past a deaf upstream"
    finally:
        server.close()
