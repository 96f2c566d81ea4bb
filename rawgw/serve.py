"""Process lifecycle: listen, serve, reload on SIGHUP, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import cast

from rawgw import gctune
from rawgw.app import Gateway
from rawgw.config import Config, ConfigError
from rawgw.configfile import load_config
from rawgw.errors import GatewayError
from rawgw.http.date import http_date
from rawgw.http.netloc import authority
from rawgw.listen import ListenError
from rawgw.server.connection import ClientConnection

log = logging.getLogger("rawgw")


def install_event_loop_policy() -> None:
    """uvloop when importable; plain asyncio otherwise (SPEC 1)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class Server:
    """A listening gateway in this process."""

    def __init__(self, config: Config, workers: int = 1, siblings_dir: str | None = None, worker_index: int = 0) -> None:
        self.config = config
        self.workers = workers
        self.siblings_dir = siblings_dir
        self.worker_index = worker_index
        self.gateway: Gateway | None = None
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.host = config.server.host

    async def start(self, host: str | None = None, port: int | None = None, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.gateway = gw = Gateway(self.config, self.workers, self.siblings_dir, self.worker_index)
        await gw.start()
        cfg = self.config.server

        def factory() -> asyncio.Protocol:
            # Over server.max_connections: 503 at accept, then closed (SPEC 3).
            if len(gw.clients) >= gw.config.server.max_connections:
                return _Refuse()
            return ClientConnection(gw, gw.config.server, gw.clients)

        if sock is not None:
            self.server = await loop.create_server(factory, sock=sock, backlog=1024)
        else:
            host = host if host is not None else cfg.host
            port = port if port is not None else cfg.port
            try:
                self.server = await loop.create_server(factory, host, port, backlog=1024, reuse_address=True)
            except OSError as exc:  # in use, not permitted, no such address
                gw.close()
                raise ListenError(host, port, exc) from None
        addr = self.server.sockets[0].getsockname()
        self.host, self.port = addr[0], addr[1]

    @property
    def url(self) -> str:
        return f"http://{authority(self.host, self.port)}"

    def reload(self, path: str) -> bool:
        """SIGHUP: a bad config is reported and the old one kept."""
        try:
            config = load_config(path)
        except ConfigError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr, flush=True)
            print("rawgw: reload failed, keeping the previous config", file=sys.stderr, flush=True)
            # SIGHUP is also logrotate's "reopen your files": that must not depend on
            # the config file being valid right now.
            if self.gateway is not None:
                self.gateway.recorder.reopen()
            return False
        self.config = config
        if self.gateway is not None:
            self.gateway.reload(config)
        log.info("config reloaded from %s", path)
        return True

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting; let in-flight requests finish up to the grace period; close."""
        gw = self.gateway
        if self.server is not None:
            self.server.close()
        if gw is None:
            return
        grace = self.config.server.shutdown_grace_s if grace is None else grace
        for client in list(gw.clients):
            client.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while gw.clients and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for client in list(gw.clients):
            client.close()
        gw.close()
        await gw.state.close()


class _Refuse(asyncio.Protocol):
    """Answers 503 and closes: the connection limit is reached."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        err = GatewayError(503, "too many open connections", code="too_many_connections")
        body = err.body()
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"date: %s\r\nserver: rawgw\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(body), http_date(), body)
        )
        transport.close()


async def serve_forever(
    config: Config,
    config_path: str | None,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    announce: Callable[[Server], None] | None = None,
    workers: int = 1,
    log_warnings: bool = True,
    siblings_dir: str | None = None,
    worker_index: int = 0,
) -> int:
    """Serve until SIGTERM/SIGINT, then drain; raises :class:`ListenError` when the
    address cannot be bound. ``log_warnings=False``: the caller reports the config's
    warnings (the workers' supervisor, once for all). ``siblings_dir``/``worker_index``:
    a worker's metrics snapshot socket (rawgw.observe.siblings)."""
    server = Server(config, workers, siblings_dir, worker_index)
    await server.start(host, port, sock)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, server.reload, config_path)
    # The listening line first: a script reading the first line of `2>&1` gets the URL.
    if announce is not None:
        announce(server)
    for warning in config.warnings if config_path is not None and log_warnings else ():
        log.warning("%s", warning)
    gctune.enable()
    await stop
    await server.shutdown()
    return 0
