"""A real ``redis-server`` for the shared-state tests (issue 12): no mock, no fake.

Each server runs on a free loopback port (or a unix socket) with its own temporary
directory and no persistence (``--save '' --appendonly no``); readiness is a PING over
the socket (polled, no fixed sleep). The process is stopped at teardown.

fixtures (async, function scope)
    redis_server        -> RedisServer on 127.0.0.1:<free port>
    redis_unix          -> RedisServer listening on a unix socket only (``port 0``)
    redis_auth          -> RedisServer with ``requirepass`` and an ACL user (see AUTH_*)
    redis_tls           -> RedisServer speaking only TLS (cert for 127.0.0.1/localhost from
                           conftest's tls_ca; trust it with SSL_CERT_FILE=ca_pem)
class
    RedisServer(tmp, *, unix=False, password=None, acl_user=None, tls=None)
        .url (redis://, rediss:// or unix:// with credentials), .port, .socket_path
        await .start()      start (again on the same port/socket) and wait for PING
        .kill()             SIGKILL, wait for the process to be gone
        await .stop()       SIGTERM, wait
constants
    AUTH_PASSWORD (requirepass, the ``default`` user), AUTH_USER / AUTH_USER_PASSWORD
If ``redis-server`` is not on PATH every test using these fixtures is skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from conftest import free_port

REDIS_SERVER = shutil.which("redis-server")
AUTH_PASSWORD = "s3cret-default-pw"
AUTH_USER = "rawgw"
AUTH_USER_PASSWORD = "s3cret-user-pw"


class RedisServer:
    def __init__(
        self,
        tmp: Path,
        *,
        unix: bool = False,
        password: str | None = None,
        acl_user: tuple[str, str] | None = None,
        tls: trustme.CA | None = None,
    ) -> None:
        self.dir = tmp
        self.tls = tls
        self.unix = unix
        self.password = password
        self.acl_user = acl_user
        self.port = 0 if unix else free_port()
        self.socket_path = str(tmp / "redis.sock") if unix else ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "redis.log"

    @property
    def url(self) -> str:
        auth = ""
        if self.acl_user is not None:
            auth = f"{self.acl_user[0]}:{self.acl_user[1]}@"
        elif self.password is not None:
            auth = f":{self.password}@"
        if self.unix:
            return f"unix://{auth}{self.socket_path}"
        return f"{'rediss' if self.tls else 'redis'}://{auth}127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        assert REDIS_SERVER is not None
        argv = [REDIS_SERVER, "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        if self.tls is not None:
            cert = self.tls.issue_cert("127.0.0.1", "localhost")
            cert.cert_chain_pems[0].write_to_path(str(self.dir / "cert.pem"))
            cert.private_key_pem.write_to_path(str(self.dir / "key.pem"))
            self.tls.cert_pem.write_to_path(str(self.dir / "ca.pem"))
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            argv += ["--tls-cert-file", str(self.dir / "cert.pem"), "--tls-key-file", str(self.dir / "key.pem")]
            argv += ["--tls-ca-cert-file", str(self.dir / "ca.pem")]
        else:
            argv += ["--port", str(self.port)]
        argv += ["--bind", "127.0.0.1", "--logfile", str(self.log), "--enable-debug-command", "yes"]
        if self.unix:
            argv += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if self.password is not None and self.acl_user is None:
            argv += ["--requirepass", self.password]
        if self.acl_user is not None:
            name, pw = self.acl_user
            acl = self.dir / "users.acl"
            acl.write_text(f"user default on >{self.password or 'unused-default'} ~* &* +@all\nuser {name} on >{pw} ~* &* +@all\n")
            argv += ["--aclfile", str(acl)]
        return argv

    async def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {err}\n{log[-2000:]}")
            if await self._pings():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING within {timeout} s")
            await asyncio.sleep(0.01)  # poll interval while it binds, not a synchronisation

    async def _pings(self) -> bool:
        try:
            if self.unix:
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
            elif self.tls is not None:
                ctx = ssl.create_default_context(cadata=self.tls.cert_pem.bytes().decode())
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=ctx)
            else:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except (OSError, ssl.SSLError):
            return False
        try:
            writer.write(b"PING\r\n")
            line = await asyncio.wait_for(reader.readline(), 2.0)
            # +PONG, or -NOAUTH when a password is required: either way it is serving
            return line[:1] in (b"+", b"-") and not line.startswith(b"-LOADING")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        if self.unix and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


def _require_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH (apt-get install redis-server; .ci/run installs it)")


async def _serve(server: RedisServer) -> AsyncIterator[RedisServer]:
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    _require_redis()
    async for s in _serve(RedisServer(tmp_path)):
        yield s


@pytest.fixture
async def redis_unix(tmp_path: Path) -> AsyncIterator[RedisServer]:
    _require_redis()
    async for s in _serve(RedisServer(tmp_path, unix=True)):
        yield s


@pytest.fixture
async def redis_auth(tmp_path: Path) -> AsyncIterator[RedisServer]:
    _require_redis()
    async for s in _serve(RedisServer(tmp_path, password=AUTH_PASSWORD, acl_user=(AUTH_USER, AUTH_USER_PASSWORD))):
        yield s


@pytest.fixture
async def redis_tls(tmp_path: Path, tls_ca: trustme.CA) -> AsyncIterator[RedisServer]:
    _require_redis()
    async for s in _serve(RedisServer(tmp_path, tls=tls_ca)):
        yield s
