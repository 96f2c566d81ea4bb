"""Signals (SPEC 7, README "Signals") and pre-forked workers (issue 4.9, README
"Rate limits, cache, CORS, workers")."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from conftest import GW_KEY, Gateway, StartGateway, base_config, chat_request, merge, raw_connection
from mock_upstream import Json, MockUpstream, Sse
from ops_helpers import (
    ProcGateway,
    call,
    chat_body,
    child_pids,
    listening_sockets,
    pid_alive,
    sse_chat,
    wait_until,
    write_config,
)

KEY_A = "sk-pool-key-alpha-0000aaaa"
KEY_B = "sk-pool-key-bravo-1111bbbb"
KEY_C = "sk-pool-key-charl-2222cccc"


def upstream_models(mock: MockUpstream, start: int = 0) -> list[str]:
    return [q.json()["model"] for q in mock.requests[start:]]


def bearer(mock: MockUpstream, i: int) -> str:
    v = mock.requests[i].header("authorization")
    assert v is not None
    return v.decode().removeprefix("Bearer ")


async def reload(gw: Gateway | ProcGateway, cfg: dict[str, Any] | str) -> None:
    write_config(gw.config_path, cfg)
    gw.proc.send_signal(signal.SIGHUP)


async def routed_model_now(port: int, mock: MockUpstream, model: str = "newalias") -> str:
    n = len(mock.requests)
    r = await call(port, chat_body(model))
    assert r.status == 200, r.body
    return upstream_models(mock, n)[0]


# --------------------------------------------------------------------------- SIGHUP


async def test_sighup_applies_new_route_and_keeps_connections(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    cfg = base_config(mock_upstream)
    gw = await start_gateway(cfg)
    async with await raw_connection(gw.port) as kept:
        assert (await kept.request(chat_request(chat_body("newalias")))).status == 200
        assert upstream_models(mock_upstream) == ["newalias"]
        await reload(gw, merge(cfg, {"routes": [{"match": "newalias", "model": "real-model"}]}))

        async def applied() -> bool:
            return await routed_model_now(gw.port, mock_upstream) == "real-model"

        await wait_until(applied, timeout=3, what="the new route to apply")
        # the connection opened before the reload is still served, with the new config
        n = len(mock_upstream.requests)
        r = await kept.request(chat_request(chat_body("newalias")))
        assert r.status == 200 and not kept.eof
        assert upstream_models(mock_upstream, n) == ["real-model"]
    assert gw.proc.returncode is None


async def test_sighup_with_broken_config_keeps_the_old_one(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    cfg = base_config(mock_upstream, extra={"routes": [{"match": "newalias", "model": "one"}]})
    gw = await start_gateway(cfg)
    assert await routed_model_now(gw.port, mock_upstream) == "one"
    await reload(gw, merge(cfg, {"server": {"bogus": 1}, "routes": [{"match": "newalias", "model": "two"}]}))
    await wait_until(lambda: re.search(r"^server\.bogus: \S.*$", gw.stderr_text(), re.M), timeout=3, what="the `path: message` line")
    assert gw.proc.returncode is None
    assert await routed_model_now(gw.port, mock_upstream) == "one"
    # a TOML syntax error too
    await reload(gw, "[server\nport = 0\n")
    await wait_until(lambda: gw.stderr_text().count("TOML") >= 1, timeout=3, what="the TOML error line")
    assert await routed_model_now(gw.port, mock_upstream) == "one"
    # a good config afterwards is taken
    await reload(gw, merge(cfg, {"routes": [{"match": "newalias", "model": "three"}]}))

    async def applied() -> bool:
        return await routed_model_now(gw.port, mock_upstream) == "three"

    await wait_until(applied, timeout=3, what="the fixed config to apply")


async def test_sighup_keeps_cooldowns_and_revives_disabled_keys(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    cfg = base_config(mock_upstream, provider={"keys": [KEY_A, KEY_B, KEY_C], "key_strategy": "first"})
    gw = await start_gateway(cfg)
    mock_upstream.enqueue(
        Json(status=429, body=b"{}", headers=[("Retry-After", "30")]),  # A rests 30 s
        Json(status=401, body=b"{}"),  # B disabled until reload
    )
    r = await call(gw.port, chat_body())
    assert (r.status, r.header("x-rawgw-attempts")) == (200, "3")
    assert [bearer(mock_upstream, i) for i in range(3)] == [KEY_A, KEY_B, KEY_C]
    r = await call(gw.port, chat_body())
    assert bearer(mock_upstream, 3) == KEY_C  # A and B both skipped before the reload

    # a changed config (a new route), same key values
    await reload(gw, merge(cfg, {"routes": [{"match": "other", "model": "x"}]}))

    async def b_back() -> bool:
        n = len(mock_upstream.requests)
        resp = await call(gw.port, chat_body())
        assert resp.status == 200
        return bearer(mock_upstream, n) == KEY_B

    await wait_until(b_back, timeout=3, what="key B back after the reload")
    n = len(mock_upstream.requests)
    for _ in range(3):
        resp = await call(gw.port, chat_body())
        assert (resp.status, resp.header("x-rawgw-attempts")) == (200, "1")
    assert [bearer(mock_upstream, i) for i in range(n, n + 3)] == [KEY_B] * 3  # A still resting


# --------------------------------------------------------------------------- SIGTERM


async def test_sigterm_lets_a_stream_finish_then_exits_0(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"shutdown_grace_s": 5}))
    pieces = sse_chat([f"p{i}" for i in range(6)])
    mock_upstream.enqueue(Sse(pieces=pieces, delay=0.2))  # ~1.2 s
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(chat_body(stream=True)))
        await c.read_until(b'"p0"')
        gw.proc.send_signal(signal.SIGTERM)
        r = await c.read_response(timeout=5)
        t_end = time.monotonic()
        assert r.status == 200 and r.complete and r.chunked, r.raw_body[-80:]
        assert r.body == b"".join(pieces)
    rc = await asyncio.wait_for(gw.proc.wait(), 5)
    exit_delay = time.monotonic() - t_end
    assert rc == 0
    assert exit_delay < 1.5, f"exited {exit_delay:.2f} s after the last stream ended (grace 5 s)"


async def test_sigterm_stops_accepting(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"shutdown_grace_s": 5}))
    mock_upstream.enqueue(Sse(pieces=sse_chat([f"p{i}" for i in range(5)]), delay=0.25))
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(chat_body(stream=True)))
        await c.read_until(b'"p0"')
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        assert gw.proc.returncode is None  # still draining the stream
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 2)
        except ConnectionRefusedError:
            pass  # the listening socket is closed
        else:
            writer.write(chat_request(chat_body()))
            try:
                data = await asyncio.wait_for(reader.read(), 3)
            except ConnectionResetError:
                data = b""
            writer.close()
            assert data == b"", f"a new connection was served during shutdown: {data[:80]!r}"
        r = await c.read_response(timeout=5)
        assert r.complete
    assert await asyncio.wait_for(gw.proc.wait(), 5) == 0
    assert len(mock_upstream.requests) == 1


async def test_sigterm_closes_idle_connections_at_once(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"shutdown_grace_s": 10}))
    async with await raw_connection(gw.port) as idle:
        assert (await idle.request(chat_request(chat_body()))).status == 200
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        await idle.read_until_close(timeout=3)
        rc = await asyncio.wait_for(gw.proc.wait(), 5)
        assert rc == 0
        assert time.monotonic() - t0 < 1.5


async def test_shutdown_grace_cuts_a_longer_stream(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"shutdown_grace_s": 1}))
    pieces = sse_chat([f"p{i}" for i in range(25)])
    mock_upstream.enqueue(Sse(pieces=pieces, delay=0.2))  # ~5 s
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(chat_body(stream=True)))
        await c.read_until(b'"p0"')
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(gw.proc.wait(), 5)
        took = time.monotonic() - t0
        data = await c.read_until_close(timeout=2)
    assert rc == 0
    assert 0.9 <= took <= 2.2, took
    assert not data.endswith(b"0\r\n\r\n"), "the cut stream must not look complete"
    assert b'"p24"' not in data
    # the upstream leg was closed too
    await mock_upstream.wait_peer_closed(mock_upstream.requests[0].conn, timeout=2)


# --------------------------------------------------------------------------- workers


def worker_cfg(mock: MockUpstream, **extra: Any) -> dict[str, Any]:
    return base_config(mock, extra=extra or None)


async def fresh_requests(port: int, n: int, body: bytes | None = None, key: str = GW_KEY) -> list[int]:
    return [(await call(port, body or chat_body(), key=key)).status for _ in range(n)]


async def test_workers_listening_line_is_the_spec_line(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    """SPEC 2: one line `rawgw listening on http://HOST:PORT` — with workers too (scripts
    and the test harness take the URL from it)."""
    gw = await ProcGateway.start(tmp_path / "w", worker_cfg(mock_upstream), ["--workers", "2"])
    try:
        assert await fresh_requests(gw.port, 4) == [200] * 4
        await asyncio.sleep(0.3)
        listening = [line for line in gw.stdout_lines if line.startswith("rawgw listening on ")]
        assert listening == [f"rawgw listening on http://127.0.0.1:{gw.port}\n"], gw.stdout_lines
    finally:
        await gw.close()


async def test_workers_serve_restart_and_stop(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    gw = await ProcGateway.start(tmp_path / "w", worker_cfg(mock_upstream), ["--workers", "2"])
    try:
        sup = gw.proc.pid
        first = await wait_until(lambda: len(child_pids(sup)) == 2 and child_pids(sup), what="2 workers")
        assert listening_sockets(gw.port) == 2
        assert await fresh_requests(gw.port, 6) == [200] * 6
        for victim in first:  # kill each original worker in turn

            def gone(v: int = victim) -> bool:
                return not pid_alive(v)

            def replaced(v: int = victim) -> bool:
                now = child_pids(sup)
                return len(now) == 2 and v not in now

            os.kill(victim, signal.SIGKILL)
            await wait_until(gone, what=f"worker {victim} gone")
            # A thread-group leader shows as a zombie while its other threads (log
            # writers) still hold the fd table: wait until its socket has really closed.
            await wait_until(lambda: listening_sockets(gw.port) == 1, timeout=5, what="the dead worker's socket closed")
            # the other worker keeps serving while the dead one is replaced
            assert await fresh_requests(gw.port, 3) == [200] * 3
            await wait_until(replaced, timeout=5, what="a replacement worker")
            await wait_until(lambda: listening_sockets(gw.port) == 2, timeout=5, what="the replacement listening")
        now = child_pids(sup)
        assert not set(now) & set(first), (first, now)
        assert await fresh_requests(gw.port, 6) == [200] * 6
        listening = [line for line in gw.stdout_lines if line.startswith("rawgw listening on ")]
        assert len(listening) == 1, gw.stdout_lines
        gw.proc.send_signal(signal.SIGTERM)
        assert await gw.wait(5) == 0
        await wait_until(lambda: not any(pid_alive(p) for p in now), timeout=3, what="workers gone")
        assert "Traceback" not in gw.stderr_text(), gw.stderr_text()
    finally:
        await gw.close()


async def test_workers_pass_sighup_on(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    cfg = worker_cfg(mock_upstream)
    gw = await ProcGateway.start(tmp_path / "w", cfg, ["--workers", "2"])
    try:
        await wait_until(lambda: len(child_pids(gw.proc.pid)) == 2, what="2 workers")
        assert await routed_model_now(gw.port, mock_upstream) == "newalias"
        await reload(gw, merge(cfg, {"routes": [{"match": "newalias", "model": "real-model"}]}))

        async def applied() -> bool:
            return await routed_model_now(gw.port, mock_upstream) == "real-model"

        await wait_until(applied, timeout=3, what="the reload in a worker")
        await asyncio.sleep(0.3)  # let the other worker finish its reload too
        seen = {await routed_model_now(gw.port, mock_upstream) for _ in range(16)}
        assert seen == {"real-model"}
        assert child_pids(gw.proc.pid) and len(child_pids(gw.proc.pid)) == 2  # reloaded, not restarted
    finally:
        await gw.close()


async def test_workers_divide_the_rate_limit(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    """README: with N workers each allows burst/N, so together they allow the burst."""
    # 1 rpm: no token comes back while the test runs, however slow the machine
    keys = [{"key": GW_KEY, "name": "tester", "rate_limit_rpm": 1, "rate_limit_burst": 4}]
    gw = await ProcGateway.start(tmp_path / "w", base_config(mock_upstream, keys=keys), ["--workers", "2"])
    try:
        await wait_until(lambda: len(child_pids(gw.proc.pid)) == 2, what="2 workers")
        statuses = await fresh_requests(gw.port, 12)
        assert set(statuses) <= {200, 429}, statuses
        # 2 per worker: 2 if every connection reached one worker, 4 if both were used
        assert statuses.count(200) in (2, 4), statuses
        assert len(mock_upstream.requests) == statuses.count(200)
    finally:
        await gw.close()


# --------------------------------------------------------------------------- issue 10.13


def thread_count(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads: line for {pid}")


async def _load(port: int, stop: asyncio.Event, served: list[int]) -> None:
    """Requests back to back on fresh connections until ``stop``; refusals during the
    shutdown are expected, so only the statuses of complete answers are kept."""
    while not stop.is_set():
        try:
            r = await call(port, chat_body(), timeout=3)
            served.append(r.status)
        except (OSError, AssertionError, TimeoutError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.01)


async def test_workers_sigterm_after_a_worker_restart_always_drains_and_exits_0(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    """Issue 10.13: --workers 2, a worker SIGKILLed and replaced, requests served, then
    SIGTERM to the supervisor (with SIGHUPs arriving while it restarts a worker and
    just before the SIGTERM), under request load: every round drains the streams in
    flight and exits 0. (The supervisor takes signals with sigtimedwait, which only sees
    a signal no thread of the process accepts: it must stay single-threaded.)"""
    pieces = sse_chat([f"p{i}" for i in range(4)])
    mock_upstream.handler = lambda req: Sse(pieces=pieces, delay=0.15) if b'"stream"' in req.body else mock_upstream.default
    cfg = base_config(mock_upstream, server={"shutdown_grace_s": 4})
    for rnd in range(5):
        gw = await ProcGateway.start(tmp_path / f"round{rnd}", cfg, ["--workers", "2"])
        try:
            await _restart_then_stop(gw, rnd, b"".join(pieces))
        finally:
            await gw.close()


async def _restart_then_stop(gw: ProcGateway, rnd: int, stream_body: bytes) -> None:
    sup = gw.proc.pid
    first = await wait_until(lambda: len(child_pids(sup)) == 2 and child_pids(sup), what="2 workers")
    assert thread_count(sup) == 1, "a second thread in the supervisor can swallow SIGCHLD or die of SIGTERM"
    stop = asyncio.Event()
    served: list[int] = []
    loaders = [asyncio.create_task(_load(gw.port, stop, served)) for _ in range(3)]
    try:
        victim = first[rnd % 2]
        os.kill(victim, signal.SIGKILL)
        # a reload asked while the supervisor is replacing the worker
        await wait_until(lambda: "restarting" in gw.stderr_text(), timeout=5, what="the restart message")
        gw.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: len(child_pids(sup)) == 2 and victim not in child_pids(sup), timeout=5, what="a replacement")
        await wait_until(lambda: listening_sockets(gw.port) == 2, timeout=5, what="the replacement listening")
        assert await fresh_requests(gw.port, 20) == [200] * 20
        workers = child_pids(sup)
        streams = []
        for _ in range(2):
            c = await raw_connection(gw.port)
            await c.send(chat_request(chat_body(stream=True)))
            await c.read_until(b'"p0"')
            streams.append(c)
        # a stop that arrives while the supervisor is still passing a reload on
        gw.proc.send_signal(signal.SIGHUP)
        gw.proc.send_signal(signal.SIGTERM)
        for c in streams:
            r = await c.read_response(timeout=5)
            assert r.status == 200 and r.complete and r.body == stream_body, (rnd, r.raw_body[-80:])
            c.close()
        rc = await gw.wait(8)
        assert rc == 0, (rnd, rc, gw.stderr_text())
        assert not any(pid_alive(p) for p in workers), (rnd, workers)
        assert set(served) <= {200}, served
        assert "Traceback" not in gw.stderr_text(), gw.stderr_text()
    finally:
        stop.set()
        for t in loaders:
            t.cancel()
        await asyncio.gather(*loaders, return_exceptions=True)
