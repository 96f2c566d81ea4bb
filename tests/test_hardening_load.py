"""Leaks, billing and signals under load (issue 7 §5): ~300 mixed requests leave fds,
tasks and pooled connections at their baseline (RSS drift under the same kind of mix:
bench/soak.py); 50 aborted streams close 50
upstream sockets at once; SIGTERM with 20 streams in flight refuses new connections and
finishes all 20; SIGHUP during 200 requests fails none. Single-stream SIGTERM/SIGHUP
cases are in test_signals_workers.py."""

from __future__ import annotations

import asyncio
import random
import signal
import time

from conftest import StartGateway, base_config, chat_body, chat_request, raw_connection, wait_until
from hardening_helpers import fd_count, gauges, sse_pieces, stream_body
from mock_upstream import (
    CloseWithoutResponse,
    Json,
    MockUpstream,
    RecordedRequest,
    ResetMidBody,
    Sse,
)


def kind_body(kind: str, stream: bool = False) -> bytes:
    return chat_body(content=kind, **({"stream": True} if stream else {}))


def mixed_handler(req: RecordedRequest) -> object:
    kind = req.json()["messages"][0]["content"]
    if kind == "stream":
        return Sse(pieces=sse_pieces(5, 80), delay=0.01)
    if kind == "long_stream":
        return Sse(pieces=sse_pieces(60, 80), delay=0.02)
    if kind == "slow_head":
        return Json(body=b'{"late":1}', delay_before=0.3)
    if kind == "err500":
        return Json(status=500, body=b'{"error":{"message":"boom"}}')
    if kind == "reset_mid":
        return ResetMidBody(body_prefix=b'{"partial":', content_length=100, settle=0.02)
    if kind == "reset_before":
        return CloseWithoutResponse(reset=True)
    return Json(body=b'{"plain":1}')


KINDS = [
    "plain", "plain", "plain", "stream", "stream", "long_stream", "slow_head", "err500", "reset_mid", "reset_before",
]  # fmt: skip


async def one_mixed(port: int, rnd: random.Random) -> str:
    kind = rnd.choice(KINDS)
    abort_after = rnd.choice([None, None, 0.0, 0.02, 0.08, 0.15]) if kind in ("long_stream", "slow_head", "stream") else None
    how = rnd.choice(["close", "reset", "fin"])
    c = await raw_connection(port, timeout=5)
    try:
        await c.send(chat_request(kind_body(kind, stream=kind.endswith("stream"))))
        if abort_after is None:
            try:
                await c.read_response(timeout=5)
            except EOFError:
                pass  # a reset upstream may leave a truncated answer: that is fine here
            return kind
        await asyncio.sleep(abort_after)
        if how == "close":
            c.close()
        elif how == "reset":
            c.abort()
        else:
            await c.shutdown_write()
            try:
                await c.read_until_close(timeout=5)
            except TimeoutError as exc:
                raise AssertionError("the gateway kept a connection open after the client's FIN") from exc
        return kind + "/aborted"
    finally:
        c.writer.transport.abort()


async def settled(port: int, pid: int, timeout: float = 6.0) -> dict[str, float]:
    """Gauges once nothing is in flight: no stream, no busy upstream connection, only
    the scraping client connection."""

    seen: list[dict[str, float]] = []

    async def quiet() -> bool:
        seen.append(await gauges(port))
        g = seen[-1]
        return g["active_streams"] == 0 and g["pool_open"] == g["pool_idle"] and g["open_connections"] == 1

    try:
        await wait_until(quiet, timeout, "the gateway to settle", 0.1)
    except AssertionError:
        raise AssertionError(f"the gateway never settled: {seen[-1]}") from None
    g = seen[-1]
    g["proc_fds"] = fd_count(pid)
    return g


async def test_mixed_traffic_leaves_no_leak(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider={"read_timeout_s": 5, "first_byte_timeout_s": 3}))
    pid = gw.proc.pid
    mock_upstream.handler = mixed_handler  # type: ignore[assignment]
    rnd = random.Random(7)
    # warm-up: every code path once, so lazy allocations are in the baseline
    for kind in dict.fromkeys(KINDS):
        c = await raw_connection(gw.port)
        await c.send(chat_request(kind_body(kind, stream=kind.endswith("stream"))))
        try:
            await c.read_response(timeout=5)
        except EOFError:
            pass
        c.writer.transport.abort()
    base = await settled(gw.port, pid)

    sem = asyncio.Semaphore(20)

    async def limited() -> str:
        async with sem:
            return await one_mixed(gw.port, rnd)

    t0 = time.monotonic()
    done = await asyncio.gather(*(limited() for _ in range(300)))
    assert len(done) == 300 and time.monotonic() - t0 < 20
    after = await settled(gw.port, pid)

    # every upstream connection is either idle in the pool or closed
    still_open = [cr for cr in mock_upstream.connections if cr.closed_at is None]
    assert len(still_open) == after["pool_idle"], (len(still_open), after)
    slack_fds = after["pool_idle"] - base["pool_idle"]
    assert after["proc_fds"] <= base["proc_fds"] + max(0, slack_fds) + 1, (base, after)
    assert after["tasks"] <= base["tasks"] + 2, (base, after)
    # and it still serves
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(kind_body("plain")))
    assert (r.status, r.body) == (200, b'{"plain":1}')


async def test_fifty_aborted_streams_close_fifty_upstream_sockets_at_once(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    n = 50
    mock_upstream.handler = lambda req: Sse(pieces=sse_pieces(200, 60), delay=0.05)  # type: ignore[assignment]
    conns = [await raw_connection(gw.port) for _ in range(n)]
    try:
        for c in conns:
            await c.send(chat_request(stream_body()))
        await asyncio.gather(*(c.read_until(b"data: 00000000", timeout=5) for c in conns))
        await mock_upstream.wait_for_requests(n, timeout=5)
        t_abort = time.monotonic()
        for i, c in enumerate(conns):
            c.abort() if i % 2 else c.close()
        closed_at = await asyncio.gather(*(mock_upstream.wait_peer_closed(q.conn, timeout=3) for q in mock_upstream.requests[:n]))
    finally:
        for c in conns:
            c.writer.transport.abort()
    delays = sorted(t - t_abort for t in closed_at)
    assert delays[-1] < 1.0, f"slowest upstream close {delays[-1] * 1000:.0f} ms after the clients left"
    assert len({q.conn.id for q in mock_upstream.requests[:n]}) == n
    assert all(len(q.pieces_sent_at) < 100 for q in mock_upstream.requests[:n])


async def test_sigterm_with_twenty_streams_in_flight(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"shutdown_grace_s": 5}))
    pieces = sse_pieces(6, 60)
    mock_upstream.handler = lambda req: Sse(pieces=pieces, delay=0.2)  # type: ignore[assignment]
    conns = [await raw_connection(gw.port, timeout=6) for _ in range(20)]
    try:
        for c in conns:
            await c.send(chat_request(stream_body()))
        await asyncio.gather(*(c.read_until(b"data: 00000000", timeout=5) for c in conns))
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        outcomes = []
        for _ in range(3):
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 1)
            except ConnectionRefusedError:
                outcomes.append("refused")
            else:
                outcomes.append("accepted")
                w.transport.abort()
            await asyncio.sleep(0.1)
        assert outcomes == ["refused"] * 3, f"new connections during shutdown: {outcomes}"
        assert gw.proc.returncode is None, "exited before the streams were done"
        results = await asyncio.gather(*(c.read_response(timeout=6) for c in conns))
        t_last = time.monotonic()
    finally:
        for c in conns:
            c.writer.transport.abort()
    for r in results:
        assert r.status == 200 and r.complete and r.chunked
        assert r.body == b"".join(pieces)
    assert t_last - t0 < 3.0
    rc = await asyncio.wait_for(gw.proc.wait(), 5)
    assert rc == 0
    assert time.monotonic() - t_last < 2.0


async def test_sighup_during_200_requests_fails_none(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    mock_upstream.handler = lambda req: (  # type: ignore[assignment]
        Sse(pieces=sse_pieces(3, 40), delay=0.01) if req.json().get("stream") else Json(body=b'{"ok":1}', delay_before=0.01)
    )
    failures: list[object] = []
    count = 0

    async def worker(i: int) -> None:
        nonlocal count
        c = None
        for j in range(20):
            stream = (i + j) % 4 == 0
            try:
                if c is None or j % 3 == 0:  # some requests on new connections, some kept alive
                    if c is not None:
                        c.writer.transport.abort()
                    c = await raw_connection(gw.port, timeout=5)
                r = await c.request(chat_request(stream_body() if stream else kind_body("plain")), timeout=5)
                expected = b"".join(sse_pieces(3, 40)) if stream else b'{"ok":1}'
                if (r.status, r.body, r.complete) != (200, expected, True):
                    failures.append((i, j, r.status, r.body[:100]))
                count += 1
            except Exception as exc:
                failures.append((i, j, repr(exc)))
                c = None
        if c is not None:
            c.writer.transport.abort()

    async def reloader() -> None:
        for _ in range(6):
            await asyncio.sleep(0.1)
            gw.proc.send_signal(signal.SIGHUP)

    await asyncio.gather(reloader(), *(worker(i) for i in range(10)))
    assert failures == [], failures[:10]
    assert count == 200
    assert "reload failed" not in gw.stderr_text()
    assert gw.proc.returncode is None
