"""Resource limits on the client leg (issue 7 §1 "Resource limits"; SPEC 3 [server], 6):
server.max_connections, bounded pipelining, a slow reader of a big stream, deeply nested
JSON. Head/body size limits and header timers are in test_limits.py."""

from __future__ import annotations

import asyncio
import time

from conftest import (
    StartGateway,
    assert_gateway_error,
    assert_wire_invariants,
    base_config,
    chat_request,
    parse_response,
    parse_responses,
    raw_connection,
)
from hardening_helpers import parse_stream_statuses, sha, small_window_connection, stream_body
from mock_upstream import MockUpstream, Sse

HEALTH = b"GET /health HTTP/1.1\r\nHost:a\r\n\r\n"  # 32 bytes, answered by the gateway itself


# --------------------------------------------------------------------------- max_connections


async def test_max_connections_refuses_with_503_then_frees_the_slot(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"max_connections": 3}))
    idle = [await raw_connection(gw.port) for _ in range(3)]
    try:
        # the three are really accepted (served), and stay open idle
        assert (await idle[0].request(chat_request())).status == 200
        await asyncio.sleep(0.1)

        async def refused() -> None:
            async with await raw_connection(gw.port) as extra:
                t0 = time.monotonic()
                data = await extra.read_until_close(timeout=3)  # nothing sent: the 503 comes at accept
                took = time.monotonic() - t0
            assert took < 1.0, f"the refused connection stayed open {took:.2f} s"
            r = parse_response(data, eof=True)
            err = assert_gateway_error(r, 503)
            assert "connection" in err["message"].lower(), err
            assert_wire_invariants(r)
            assert r.complete and r.rest == b""

        await refused()
        n_up = len(mock_upstream.requests)
        # one idle connection leaves: its slot is free again for a new client
        idle.pop(2).close()
        deadline = time.monotonic() + 3
        while True:
            c = await raw_connection(gw.port)
            await c.send(chat_request())
            try:
                r = await c.read_response(timeout=3)
            except EOFError:
                r = None
            if r is not None and r.status == 200:
                idle.append(c)
                break
            c.writer.transport.abort()
            assert time.monotonic() < deadline, "a freed slot was never given to a new client"
            await asyncio.sleep(0.05)
        assert len(mock_upstream.requests) == n_up + 1
        # full again (2 old + 1 new): the next one is refused, the old ones still work
        await refused()
        assert (await idle[1].request(chat_request())).status == 200
    finally:
        for c in idle:
            c.writer.transport.abort()


# --------------------------------------------------------------------------- pipelining


async def test_pipelined_flood_without_reading_is_bounded(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """2 MB of pipelined requests from a client that never reads: meanwhile another
    client is served; what the flood gets is all 200s, in order. (How much memory the
    gateway holds meanwhile and how long the other client waits are measured by
    bench/memory.py ``flood``, not asserted here.)"""
    gw = await start_gateway(base_config(mock_upstream))
    flood = await small_window_connection(gw.port, rcvbuf=16384, timeout=10)
    sent = 0
    try:
        other_latency: list[float] = []

        async def other_client() -> None:
            # another client, one second into the flood: served promptly, not starved
            await asyncio.sleep(1.0)
            t1 = time.monotonic()
            try:
                async with await raw_connection(gw.port) as other:
                    r = await other.request(chat_request(), timeout=3)
                other_latency.append(time.monotonic() - t1 if r.status == 200 else float("inf"))
            except (TimeoutError, EOFError, ConnectionError):
                other_latency.append(float("inf"))

        other = asyncio.create_task(other_client())
        t0 = time.monotonic()
        while time.monotonic() - t0 < 4.0:
            if sent < 2_000_000:
                flood.writer.write(HEALTH * 1024)
                sent += len(HEALTH) * 1024
            try:
                await asyncio.wait_for(flood.writer.drain(), 0.1)
            except TimeoutError:
                pass
            if sent >= 2_000_000 and other.done():
                break
        await other
        assert other_latency[0] != float("inf"), (
            "another client was not served (a 200 within 3 s) while one connection's pipelined "
            "requests were being answered"
        )
        # whatever the flood receives when it finally reads: only 200s, in order
        received = bytearray()
        t2 = time.monotonic()
        while time.monotonic() - t2 < 2.0:
            try:
                chunk = await asyncio.wait_for(flood.reader.read(1 << 20), 0.5)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        statuses, _ = parse_stream_statuses(bytes(received))
        assert statuses, "the flood connection got no answer at all"
        bad = sorted({s for s in statuses if s != 200})
        assert bad == [], f"valid pipelined requests answered {bad} after {statuses.index(bad[0])} x 200"
    finally:
        flood.writer.transport.abort()


async def test_pipelined_requests_with_a_partial_head_all_served(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """Requests the gateway answers itself, pipelined, then the first part of a request
    with a large (but allowed) head: every one of them is answered 200 — the partial
    head must not be counted again for every request answered before it."""
    gw = await start_gateway(base_config(mock_upstream))
    big = chat_request(headers=[("X-Big", "b" * 5000)])  # head ~5.2 kB < max_header_bytes 16384
    cut = 3000
    async with await raw_connection(gw.port) as c:
        await c.send(HEALTH * 8 + big[:cut])
        await asyncio.sleep(0.3)
        await c.send(big[cut:])
        rs = []
        for _ in range(9):
            rs.append(await c.read_response(timeout=5))
    assert [r.status for r in rs] == [200] * 9, [(r.status, r.body[:100]) for r in rs]
    assert len(mock_upstream.requests) == 1
    assert mock_upstream.requests[0].header("x-big") == b"b" * 5000


async def test_refused_request_answer_survives_the_bytes_still_coming(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """A client that sends its whole (refused) request at once — an upload over
    max_body_bytes, or a smuggling head followed by more bytes — must get the 413/400,
    not a TCP reset that destroys it (RFC 9112 §9.6: close the sending side, drain, then
    close). Checked 3 times each: the loss is not a rare race."""
    gw = await start_gateway(base_config(mock_upstream, server={"max_body_bytes": 1000}))
    smuggle = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    cases = {"upload_413": (chat_request(b"x" * 200_000), 413), "te_cl_400": (smuggle + b"y" * 200_000, 400)}
    got = []
    for name, (raw, _status) in cases.items():
        for _ in range(3):
            c = await raw_connection(gw.port, timeout=5)
            try:
                c.writer.write(raw)
                # like curl: finish sending the body, only then read the answer
                try:
                    await asyncio.wait_for(c.writer.drain(), 2)
                except (ConnectionError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)
                try:
                    r = await c.read_response(timeout=3)
                    got.append((name, r.status, r.header("connection")))
                except (EOFError, TimeoutError) as exc:
                    got.append((name, "reset" if c.reset else type(exc).__name__, None))
            finally:
                c.writer.transport.abort()
    assert got == [(name, status, "close") for name, (_, status) in cases.items() for _ in range(3)], got
    assert mock_upstream.requests == []


# --------------------------------------------------------------------------- slow reader


async def test_slow_reader_of_a_20mb_stream_keeps_memory_bounded(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """The upstream is paused while the client does not read, and the 20 MB arrive
    byte-exact. (The gateway's RSS meanwhile: bench/memory.py ``slow_reader``.)"""
    gw = await start_gateway(base_config(mock_upstream, provider={"read_timeout_s": 30}))
    async with await raw_connection(gw.port) as warm:
        assert (await warm.request(chat_request())).status == 200
    piece = 32 * 1024
    pieces = [(b"data: %06d " % i) + bytes([65 + i % 26]) * (piece - 15) + b"\n\n" for i in range(640)]  # 20 MiB
    body = b"".join(pieces)
    mock_upstream.enqueue(Sse(pieces=pieces))
    c = await small_window_connection(gw.port, rcvbuf=65536, timeout=20)
    try:
        await c.send(chat_request(stream_body()))
        await asyncio.sleep(2.0)  # the client reads nothing for 2 s: that is the scenario
        req = mock_upstream.requests[-1]
        sent_while_stalled = len(req.pieces_sent_at)
        # then read slowly: 64 kB at a time with pauses
        deadline = time.monotonic() + 20
        while True:
            got = await c.read_some(timeout=5)
            if not got:
                break
            await asyncio.sleep(0.001)
            r = None
            if c.received.endswith(b"0\r\n\r\n"):
                r = parse_response(bytes(c.received), eof=False)
                if r.complete:
                    break
            assert time.monotonic() < deadline, "stream not delivered in time"
        r = parse_response(bytes(c.received), eof=c.eof)
    finally:
        c.writer.transport.abort()
    assert r.status == 200 and r.complete
    assert len(r.body) == len(body) and sha(r.body) == sha(body)
    assert sent_while_stalled < len(pieces), "the upstream was never paused while the client did not read"


# --------------------------------------------------------------------------- JSON nesting


async def test_deeply_nested_json_is_a_clean_400(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    depth = 100_000
    bodies = {
        "arrays_in_messages": b'{"model":"m","messages":' + b"[" * depth + b"]" * depth + b"}",
        "objects_in_content": b'{"model":"m","messages":[{"role":"user","content":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}]}",
        "unclosed_arrays": b'{"model":"m","messages":' + b"[" * depth,
    }
    for name, body in bodies.items():
        async with await raw_connection(gw.port, timeout=10) as c:
            t0 = time.monotonic()
            r = await c.request(chat_request(body), timeout=10)
            took = time.monotonic() - t0
        err = assert_gateway_error(r, 400)
        assert "json" in err["message"].lower(), (name, err)
        assert took < 3.0, (name, took)
    assert mock_upstream.requests == [] and mock_upstream.connections == []
    assert gw.proc.returncode is None
    async with await raw_connection(gw.port) as c:
        assert (await c.request(chat_request())).status == 200


async def test_nesting_on_a_keep_alive_connection_does_not_break_it(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """After the 400 for a deeply nested body the same connection still serves (the
    refusal is about the body, not the framing)."""
    gw = await start_gateway(base_config(mock_upstream))
    deep = b'{"model":"m","messages":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    async with await raw_connection(gw.port, timeout=10) as c:
        await c.send(chat_request(deep) + chat_request())
        data = await c.read_until(b'"chatcmpl-mock"', timeout=10)
    rs = parse_responses(data, eof=False)
    assert [r.status for r in rs] == [400, 200]
    assert len(mock_upstream.requests) == 1
