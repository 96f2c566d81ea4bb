"""Shared fixtures for the black-box tests: a mock upstream, the gateway as a subprocess,
raw-socket helpers that keep the wire visible, and trustme certificates.

Reusable API (see each docstring):

fixtures
    mock_upstream        -> MockUpstream on 127.0.0.1, plain HTTP, closed after the test
    mock_upstream_tls    -> MockUpstream serving TLS with a trustme cert (127.0.0.1, localhost)
    start_gateway        -> async factory: await start_gateway(config, env=None, args=(),
                            allow_traceback=False) -> Gateway; every gateway stopped at teardown
    gateway              -> Gateway in front of mock_upstream with base_config()
    tls_ca               -> trustme.CA (session)
    ca_pem               -> Path of that CA's PEM (give it to the gateway as SSL_CERT_FILE)
    other_ca_pem         -> Path of an unrelated CA's PEM (the gateway will not trust the mock)
    upstream_ssl_context -> ssl.SSLContext for a server, cert for 127.0.0.1/localhost
functions
    base_config(upstream, *, provider_type="openai", base_path=None, server=None,
                provider=None, extra=None, keys=...) -> dict
    merge(a, b) -> dict (deep merge, b wins)
    to_toml(dict) -> str
    free_port() -> int (a port with nothing listening)
    await raw_request(port, data, read_until_close=True, timeout=5.0) -> bytes
    await raw_connection(port, timeout=5.0) -> RawConn (async context manager too)
    parse_response(data, *, request_method="GET", eof=True) -> Response
    parse_responses(data, *, eof=True) -> list[Response]
    chat_body(model="m", *, content="hi", compact=True, **fields) -> bytes (the body builder)
    await wait_until(fn, timeout=5.0, what="") -> fn's first truthy value (the poller)
    await launch_gateway(cwd, config, *, env, args, new_session=False) -> Gateway (the
                 launcher behind start_gateway and ops_helpers.ProcGateway)
    chat_request(body=None, *, path="/v1/chat/completions", headers=(), key=GW_KEY,
                 auth="bearer", version="HTTP/1.1", close=False) -> bytes
    assert_gateway_error(response, status) -> error dict (OpenAI-shaped, status checked)
    assert_wire_invariants(response) (one Date, one Server: rawgw, no TE+CL, no hop-by-hop)
constants
    GW_KEY, UPSTREAM_KEY, CHAT_BODY, STREAM_BODY
environment
    RAWGW_TEST_SRC   run the gateway subprocess from another source tree (mutation checks)
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_upstream import MockUpstream

REPO_ROOT = Path(__file__).resolve().parent.parent
GW_KEY = "gw-test-key-123456"
UPSTREAM_KEY = "sk-upstream-key-aaaa1111"
# Odd spacing, key order and escapes: any re-serialisation by the gateway shows.
CHAT_BODY = b'{"model":"m",  "messages":[{"role":"user","content":"h\\u00e9llo \xc3\xa9"}],"zeta":1.0,"alpha":null}'
STREAM_BODY = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


# --------------------------------------------------------------------------- config


def merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two config dicts; ``b`` wins; nested tables merge, lists replace."""
    out: dict[str, Any] = dict(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def base_config(
    upstream: MockUpstream | str | None,
    *,
    provider_type: str = "openai",
    base_path: str | None = None,
    server: Mapping[str, Any] | None = None,
    provider: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    keys: Sequence[Mapping[str, Any]] | None = None,
    provider_name: str = "mock",
) -> dict[str, Any]:
    """A minimal config: one gateway key (GW_KEY), one provider ``mock`` with one key
    (UPSTREAM_KEY) pointing at ``upstream`` (a MockUpstream, or a base_url string).

    ``base_path`` defaults to "/v1" for openai/openrouter and "" for anthropic (bare
    origin, SPEC 5.4). ``server``/``provider``/``extra`` are deep-merged on top."""
    if base_path is None:
        base_path = "" if provider_type == "anthropic" else "/v1"
    if isinstance(upstream, MockUpstream):
        base_url = upstream.url(base_path)
    elif upstream is None:
        base_url = f"http://127.0.0.1:{free_port()}{base_path}"
    else:
        base_url = upstream
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "keys": list(keys) if keys is not None else [{"key": GW_KEY, "name": "tester"}],
        "providers": {
            provider_name: {
                "type": provider_type,
                "base_url": base_url,
                "keys": [UPSTREAM_KEY],
            }
        },
        "logging": {"dir": "logs"},
    }
    if server:
        cfg["server"] = merge(cfg["server"], server)
    if provider:
        cfg["providers"][provider_name] = merge(cfg["providers"][provider_name], provider)
    if extra:
        cfg = merge(cfg, extra)
    return cfg


def to_toml(cfg: Mapping[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(dict(cfg))


def free_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- bodies, polling


def chat_body(model: str = "m", *, content: str = "hi", compact: bool = True, **fields: Any) -> bytes:
    """The one chat body builder: ``{"model", "messages": [one user message], **fields}``.

    ``compact``: separators "," and ":" (as SDKs send); False gives json.dumps'
    default ", " and ": " (for tests that check the bytes are forwarded as sent)."""
    doc: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    doc.update(fields)
    return json.dumps(doc, separators=(",", ":") if compact else None).encode()


async def wait_until(fn: Callable[[], Any], timeout: float = 5.0, what: str = "", interval: float = 0.03) -> Any:
    """The one poller: call ``fn`` (sync or async) until it returns something truthy;
    return it. Fails with the last value seen after ``timeout`` seconds.

    Poll for a fact the gateway exposes (a log line, a metric, a socket state), never
    for time to pass."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or fn}: last {last!r}")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------- gateway


@dataclass
class Gateway:
    proc: asyncio.subprocess.Process
    host: str
    port: int
    cwd: Path
    config_path: Path
    stderr_path: Path
    stdout_lines: list[str] = field(default_factory=list)
    allow_traceback: bool = False
    _stdout_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def logs_dir(self) -> Path:
        return self.cwd / "logs"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self) -> str:
        return "".join(self.stdout_lines)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait; SIGKILL after STOP_TIMEOUT. Returns the exit code."""
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._stdout_task is not None:
            try:
                await asyncio.wait_for(self._stdout_task, 2)
            except (TimeoutError, asyncio.CancelledError):
                self._stdout_task.cancel()
        assert self.proc.returncode is not None
        return self.proc.returncode


async def _launch(
    tmp_path: Path,
    config: str | Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    allow_traceback: bool = False,
) -> Gateway:
    cwd = tmp_path / f"gw{len(list(tmp_path.glob('gw*')))}"
    return await launch_gateway(cwd, config, env=env, args=args, allow_traceback=allow_traceback)


G = TypeVar("G", bound="Gateway")


async def launch_gateway(
    cwd: Path,
    config: str | Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    allow_traceback: bool = False,
    new_session: bool = False,
    timeout: float = STARTUP_TIMEOUT,
    cls: type[G] = Gateway,  # type: ignore[assignment]
) -> G:
    """The one gateway launcher: ``python -m rawgw serve -c CONFIG --port 0 ARGS...`` with
    cwd ``cwd`` (created), returned once it printed its listening line (the port).

    ``new_session``: its own process group, so it and its workers can be killed
    together (ops_helpers.ProcGateway). The caller stops it (``gw.stop()``)."""
    cwd.mkdir(parents=True, exist_ok=True)
    config_path = cwd / "gateway.toml"
    config_path.write_text(config if isinstance(config, str) else to_toml(config))
    stderr_path = cwd / "stderr.txt"
    full_env = dict(os.environ)
    # RAWGW_TEST_SRC: run the gateway from another source tree (e.g. a mutated copy,
    # to check that the tests can fail).
    src = os.environ.get("RAWGW_TEST_SRC") or str(REPO_ROOT)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [src] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])
    )
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.pop("RAWGW_CONFIG", None)
    if env:
        full_env.update(env)
    with open(stderr_path, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rawgw",
            "serve",
            "-c",
            str(config_path),
            "--port",
            "0",
            *args,
            cwd=str(cwd),
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            start_new_session=new_session,
        )
    gw = cls(
        proc=proc,
        host="127.0.0.1",
        port=0,
        cwd=cwd,
        config_path=config_path,
        stderr_path=stderr_path,
        allow_traceback=allow_traceback,
    )

    async def give_up() -> None:
        if new_session:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        await gw.stop(signal.SIGKILL)

    assert proc.stdout is not None
    stdout = proc.stdout
    first_line = ""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            await give_up()
            pytest.fail(f"gateway did not print its listening line in time;\nstderr:\n{gw.stderr_text()}")
        try:
            line_b = await asyncio.wait_for(stdout.readline(), remaining)
        except TimeoutError:
            continue
        except BaseException:
            await give_up()
            raise
        if not line_b:
            rc = await gw.stop()
            pytest.fail(
                f"gateway exited ({rc}) before listening;\nstdout:\n{gw.stdout_text()}\n"
                f"stderr:\n{gw.stderr_text()}"
            )
        line = line_b.decode(errors="replace")
        gw.stdout_lines.append(line)
        if line.startswith("rawgw listening on "):
            first_line = line
            break
    url = first_line.strip().removeprefix("rawgw listening on ")
    assert url.startswith("http://"), first_line
    hostport = url.removeprefix("http://").rstrip("/")
    host, _, port = hostport.rpartition(":")
    gw.host = host.strip("[]")
    gw.port = int(port)
    assert gw.port > 0, first_line

    async def drain_stdout() -> None:
        while True:
            chunk = await stdout.readline()
            if not chunk:
                return
            gw.stdout_lines.append(chunk.decode(errors="replace"))

    gw._stdout_task = asyncio.create_task(drain_stdout())
    return gw


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_gateway(tmp_path: Path) -> AsyncIterator[StartGateway]:
    """``await start_gateway(config, env=None, args=(), allow_traceback=False)``:
    ``config`` is TOML text or a dict (see base_config). The process runs with cwd = a
    fresh dir under tmp_path (its logs go to ``gw.logs_dir``). At teardown every gateway
    started is stopped (SIGTERM, then SIGKILL), and the test fails if one printed a
    Python traceback to stderr (unless allow_traceback)."""
    started: list[Gateway] = []

    async def factory(
        config: str | Mapping[str, Any],
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        allow_traceback: bool = False,
    ) -> Gateway:
        gw = await _launch(tmp_path, config, env, args, allow_traceback)
        started.append(gw)
        return gw

    yield factory
    problems = []
    for gw in started:
        await gw.stop()
        err = gw.stderr_text()
        if "Traceback (most recent call last)" in err and not gw.allow_traceback:
            problems.append(err)
    if problems:
        pytest.fail("gateway printed a traceback to stderr:\n" + "\n----\n".join(problems))


@pytest.fixture
async def mock_upstream() -> AsyncIterator[MockUpstream]:
    mock = await MockUpstream.start()
    try:
        yield mock
    finally:
        await mock.close()


@pytest.fixture
async def gateway(start_gateway: StartGateway, mock_upstream: MockUpstream) -> Gateway:
    """A gateway with base_config(mock_upstream): openai provider at {mock}/v1."""
    return await start_gateway(base_config(mock_upstream))


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(p))
    return p


@pytest.fixture(scope="session")
def other_ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("otherca") / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(p))
    return p


@pytest.fixture(scope="session")
def upstream_ssl_context(tls_ca: trustme.CA) -> ssl.SSLContext:
    cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
async def mock_upstream_tls(upstream_ssl_context: ssl.SSLContext) -> AsyncIterator[MockUpstream]:
    mock = await MockUpstream.start(ssl=upstream_ssl_context)
    try:
        yield mock
    finally:
        await mock.close()


# --------------------------------------------------------------------------- raw client


def chat_request(
    body: bytes | None = None,
    *,
    path: str = "/v1/chat/completions",
    method: str = "POST",
    headers: Iterable[tuple[str, str]] = (),
    key: str | None = GW_KEY,
    auth: str = "bearer",
    version: str = "HTTP/1.1",
    close: bool = False,
    host: str = "127.0.0.1",
) -> bytes:
    """Bytes of one request with Content-Length. ``auth``: "bearer" or "x-api-key"."""
    if body is None:
        body = CHAT_BODY if method == "POST" else b""
    lines = [f"{method} {path} {version}", f"Host: {host}"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}" if auth == "bearer" else f"x-api-key: {key}")
    if method == "POST" or body:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Response:
    version: str
    status: int
    reason: str
    raw_head: bytes
    raw_header_lines: list[bytes]  # exactly as received, duplicates kept
    headers: list[tuple[str, str]]  # (lowercased name, value)
    body: bytes  # de-chunked when chunked
    raw_body: bytes  # as on the wire
    complete: bool  # framing says the body is complete (CL reached / 0-chunk seen / EOF)
    chunked: bool
    content_length: int | None
    rest: bytes  # bytes after this message (pipelined responses)

    def count(self, name: str) -> int:
        n = name.lower()
        return sum(1 for k, _ in self.headers if k == n)

    def values(self, name: str) -> list[str]:
        n = name.lower()
        return [v for k, v in self.headers if k == n]

    def header(self, name: str) -> str | None:
        """The value of a header that must not be repeated (asserts so)."""
        vals = self.values(name)
        assert len(vals) <= 1, f"{name} repeated: {vals}"
        return vals[0] if vals else None

    def json(self) -> Any:
        return json.loads(self.body)

    def names(self) -> set[str]:
        return {k for k, _ in self.headers}


class IncompleteHead(Exception):
    pass


def parse_response(data: bytes, *, request_method: str = "POST", eof: bool = True) -> Response:
    """Parse one response from the start of ``data``. Raises IncompleteHead if the head
    is not all there. ``eof``: the data ended with the connection closing (a body without
    length is then complete). A truncated body gives ``complete=False``."""
    i = data.find(b"\r\n\r\n")
    if i < 0:
        raise IncompleteHead(data[:200])
    raw_head = data[: i + 4]
    lines = raw_head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    status_s, _, reason = rest.partition(b" ")
    status = int(status_s)
    header_lines = lines[1:]
    headers: list[tuple[str, str]] = []
    for line in header_lines:
        name, sep, value = line.partition(b":")
        assert sep, f"malformed header line {line!r}"
        headers.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))
    after = data[i + 4 :]
    te = [v for k, v in headers if k == "transfer-encoding"]
    cls = [v for k, v in headers if k == "content-length"]
    chunked = bool(te) and te[-1].lower().split(",")[-1].strip() == "chunked"
    cl = int(cls[0]) if cls and not chunked else None
    no_body = status < 200 or status in (204, 304) or request_method.upper() == "HEAD"
    body = b""
    raw_body = b""
    rest_b = b""
    complete = True
    if no_body:
        rest_b = after
    elif chunked:
        pos = 0
        body_parts: list[bytes] = []
        complete = False
        while True:
            j = after.find(b"\r\n", pos)
            if j < 0:
                break
            size_s = after[pos:j].split(b";", 1)[0].strip()
            try:
                size = int(size_s, 16)
            except ValueError:
                break
            if size == 0:
                k = after.find(b"\r\n\r\n", j)  # trailers end
                if after[j : j + 4] == b"\r\n\r\n":
                    end = j + 4
                elif k >= 0:
                    end = k + 4
                else:
                    break
                raw_body = after[:end]
                rest_b = after[end:]
                complete = True
                break
            if len(after) < j + 2 + size + 2:
                body_parts.append(after[j + 2 : j + 2 + size])
                break
            body_parts.append(after[j + 2 : j + 2 + size])
            pos = j + 2 + size + 2
        body = b"".join(body_parts)
        if not complete:
            raw_body = after
    elif cl is not None:
        body = after[:cl]
        raw_body = body
        rest_b = after[cl:]
        complete = len(body) == cl
    else:
        body = raw_body = after
        complete = eof
    return Response(
        version=version.decode("latin-1"),
        status=status,
        reason=reason.decode("latin-1"),
        raw_head=raw_head,
        raw_header_lines=header_lines,
        headers=headers,
        body=body,
        raw_body=raw_body,
        complete=complete,
        chunked=chunked,
        content_length=cl,
        rest=rest_b,
    )


def parse_responses(data: bytes, *, eof: bool = True) -> list[Response]:
    """Every response in ``data`` in order (1xx included)."""
    out = []
    while data:
        r = parse_response(data, eof=eof)
        out.append(r)
        if not r.complete or r.rest == data:
            break
        data = r.rest
    return out


class RawConn:
    """One client TCP connection with bounded reads. Everything received is kept in
    ``received``; ``eof``/``reset`` tell how the connection ended, ``eof_at`` when."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.received = bytearray()
        self._consumed = 0  # bytes of `received` already returned by read_response
        self.eof = False
        self.reset = False
        self.eof_at: float | None = None

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _read_more(self, timeout: float) -> bool:
        """Read once; False on EOF/reset. Raises asyncio.TimeoutError."""
        if self.eof:
            return False
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionResetError, BrokenPipeError):
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            self.eof_at = time.monotonic()
            return False
        self.received += data
        return True

    async def read_some(self, timeout: float | None = None) -> bytes:
        """Whatever arrives next (b"" on EOF). Raises asyncio.TimeoutError."""
        before = len(self.received)
        await self._read_more(self.timeout if timeout is None else timeout)
        return bytes(self.received[before:])

    async def read_until(self, marker: bytes, timeout: float | None = None) -> bytes:
        """Read until ``marker`` is in the unconsumed data; returns that data (all of it)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while marker not in self.received[self._consumed :]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{marker!r} not received: {bytes(self.received)!r}")
            if not await self._read_more(remaining):
                raise EOFError(f"closed before {marker!r}: {bytes(self.received)!r}")
        return bytes(self.received[self._consumed :])

    async def read_until_close(self, timeout: float | None = None) -> bytes:
        """Read until EOF/reset; returns everything not yet consumed. Raises
        asyncio.TimeoutError if the peer keeps the connection open."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"connection not closed; got {bytes(self.received)!r}")
            await self._read_more(remaining)
        return bytes(self.received[self._consumed :])

    async def read_response(
        self, timeout: float | None = None, request_method: str = "POST", skip_1xx: bool = True
    ) -> Response:
        """Read one complete response (by its framing; a body without length is read to
        close). 1xx responses are skipped unless ``skip_1xx`` is False."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            data = bytes(self.received[self._consumed :])
            try:
                r = parse_response(data, request_method=request_method, eof=self.eof)
            except IncompleteHead:
                r = None
            if r is not None:
                length_known = r.chunked or r.content_length is not None or r.status < 200 or r.status in (204, 304)
                done = r.complete and (length_known or self.eof)
                if done or self.eof:
                    self._consumed = len(self.received) - len(r.rest)
                    if r.status < 200 and skip_1xx:
                        continue
                    return r
            elif self.eof:
                raise EOFError(f"connection closed before a response head: {data!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete response; got {data!r}")
            await self._read_more(remaining)

    async def request(self, data: bytes, timeout: float | None = None) -> Response:
        await self.send(data)
        return await self.read_response(timeout)

    async def shutdown_write(self) -> None:
        """Half-close: send FIN, keep reading."""
        if self.writer.can_write_eof():
            self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def __aenter__(self) -> RawConn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.transport.abort()


async def raw_connection(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> RawConn:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return RawConn(reader, writer, timeout)


async def raw_request(
    port: int, data: bytes, read_until_close: bool = True, timeout: float = 5.0
) -> bytes:
    """Send ``data`` on a new connection; return the bytes received until the gateway
    closes (``read_until_close``) or until one complete response arrived. A reset counts
    as a close. Raises asyncio.TimeoutError if nothing ends it within ``timeout``."""
    async with await raw_connection(port, timeout) as c:
        await c.send(data)
        if read_until_close:
            return await c.read_until_close()
        r = await c.read_response()
        return r.raw_head + r.raw_body


def assert_gateway_error(r: Response, status: int) -> dict[str, Any]:
    """Assert an OpenAI-shaped gateway error with ``status``; return the error object."""
    assert r.status == status, (r.status, r.body[:500])
    ctype = r.header("content-type") or ""
    assert ctype.startswith("application/json"), ctype
    doc = r.json()
    assert set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err, dict)
    assert isinstance(err.get("message"), str) and err["message"], err
    assert "type" in err and "code" in err, err
    return err


def assert_wire_invariants(r: Response) -> None:
    """SPEC 6: one Date, one Server: rawgw, never TE together with CL, and no
    hop-by-hop header other than the gateway's own Connection."""
    assert r.count("date") == 1, r.raw_head
    assert r.values("server") == ["rawgw"], r.raw_head
    assert not (r.count("transfer-encoding") and r.count("content-length")), r.raw_head
    for name in ("keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer", "upgrade"):
        assert r.count(name) == 0, (name, r.raw_head)


# --------------------------------------------------------------------------- safety net


@pytest.fixture(autouse=True)
def _hard_timeout() -> Iterable[None]:
    """A test that hangs despite the bounded helpers fails after 30 s instead of
    stalling the suite (SIGALRM raises inside the event loop)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError("test exceeded 30 s (hard timeout in conftest)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
