"""rawgw.state.client against a real redis-server (tests/redis_helpers.py) and against
plain asyncio servers that misbehave on purpose (silent, accept-then-mute)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvloop
from ops_helpers import wait_until
from redis_helpers import AUTH_PASSWORD, AUTH_USER, AUTH_USER_PASSWORD, RedisServer, redis_auth, redis_server, redis_tls, redis_unix

from rawgw.state.client import StateClient, StateError, StateReplyError, StateTimeout, StateUnavailable
from rawgw.state.url import parse_state_url

__all__ = ["redis_auth", "redis_server", "redis_tls", "redis_unix"]  # fixtures, re-exported for pytest


async def connected(url: str, **kw: float) -> StateClient:
    client = StateClient(parse_state_url(url), timeout_ms=kw.pop("timeout_ms", 1000), **kw)  # type: ignore[arg-type]
    client.start()
    assert await client.wait_up(5.0), f"no connection to {url}"
    return client


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[StateClient]:
    c = await connected(redis_server.url)
    yield c
    await c.close()


async def test_pipelining_keeps_order_under_1000_concurrent_calls(client: StateClient) -> None:
    n = 1000
    assert await asyncio.gather(*(client.call("SET", f"k{i}", i) for i in range(n))) == [b"OK"] * n
    # mixed commands and reply types, all in flight at once: each caller gets its own reply
    calls = []
    for i in range(n):
        calls.append(client.call("GET", f"k{i}"))
        calls.append(client.call("INCR", "counter"))
    replies = await asyncio.gather(*calls)
    assert replies[0::2] == [str(i).encode() for i in range(n)]
    assert replies[1::2] == list(range(1, n + 1))


async def test_pipeline_returns_replies_in_order_with_errors_in_place(client: StateClient) -> None:
    replies = await client.pipeline([("SET", "a", "x"), ("INCR", "a"), ("GET", "a"), ("GET", "missing")])
    assert replies[0] == b"OK"
    assert isinstance(replies[1], StateReplyError) and "not an integer" in str(replies[1])
    assert replies[2:] == [b"x", None]
    assert await client.pipeline([("PING",)]) == [b"PONG"]
    (alone,) = await client.pipeline([("INCR", "a")])  # a pipeline of one: still a value
    assert isinstance(alone, StateReplyError)
    with pytest.raises(StateReplyError):
        await client.call("INCR", "a")
    assert client.errors == 0  # an error reply is an answer, not a state failure


async def test_late_reply_after_timeout_is_not_given_to_the_next_caller(client: StateClient) -> None:
    await client.call("SET", "k", "value")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(StateTimeout):
        await client.call("DEBUG", "SLEEP", "0.3", timeout_ms=50)
    assert loop.time() - start < 0.25
    # issued while the server still sleeps: DEBUG's late "+OK" must be dropped, not ours
    assert await client.call("GET", "k", timeout_ms=2000) == b"value"
    assert client.timeouts == 1 and client.errors == 1 and client.up


PONG = (b"PING", b"+PONG\r\n")


async def mute_server(*script: tuple[bytes, bytes]) -> tuple[asyncio.Server, int, list[int]]:
    """Accepts connections; on each, for every (seen, reply) of ``script`` in turn waits
    until ``seen`` was received and answers ``reply``; then never sends another byte."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        data = b""
        for seen, reply in script:
            while seen not in data:
                chunk = await reader.read(65536)
                if not chunk:
                    writer.close()
                    return
                data += chunk
            data = data[data.index(seen) + len(seen) :]
            writer.write(reply)
        while await reader.read(65536):  # swallow everything, answer nothing
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], accepted


async def test_timeout_against_a_server_that_stops_answering() -> None:
    server, port, accepted = await mute_server(PONG)
    client = StateClient(parse_state_url(f"redis://127.0.0.1:{port}"), timeout_ms=50, stuck_ms=300)
    client.start()
    try:
        assert await client.wait_up(5.0)
        loop = asyncio.get_running_loop()
        for _ in range(3):
            start = loop.time()
            with pytest.raises(StateTimeout):
                await client.call("GET", "k")
            assert loop.time() - start < 0.05 + 0.1
        assert client.timeouts == 3
        # past stuck_ms the connection is considered dead and made again
        await asyncio.sleep(0.3)
        with pytest.raises(StateTimeout):
            await client.call("GET", "k")
        await wait_until(lambda: len(accepted) >= 2, what="reconnect after stuck_ms")
    finally:
        await client.close()
        server.close()


async def test_pubsub_connection_that_goes_silent_is_made_again() -> None:
    # answers the handshake and confirms SUBSCRIBE, then never a byte: the connection
    # looks like a quiet channel; only the heartbeat can tell that it is dead
    confirm = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nevents\r\n:1\r\n"
    server, port, accepted = await mute_server(PONG, (b"SUBSCRIBE", confirm))
    client = StateClient(parse_state_url(f"redis://127.0.0.1:{port}"), timeout_ms=50, stuck_ms=200, heartbeat_ms=50)
    try:
        subscribed: list[int] = []
        client.on_subscribed = lambda: subscribed.append(1)
        await client.subscribe("events", lambda _c, _d: None)
        await wait_until(lambda: subscribed, what="subscription confirmed")
        await wait_until(lambda: len(subscribed) >= 2 and len(accepted) >= 2, what="reconnected and resubscribed after a silent peer")
        assert client.timeouts >= 1
    finally:
        await client.close()
        server.close()


async def test_server_that_never_answers_is_never_up_and_calls_fail_fast() -> None:
    server, port, accepted = await mute_server()
    client = StateClient(parse_state_url(f"redis://127.0.0.1:{port}"), timeout_ms=50, connect_timeout_ms=100)
    client.start()
    try:
        await wait_until(lambda: accepted, what="connect")
        assert not await client.wait_up(0.2)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(StateUnavailable):
            await client.call("GET", "k")
        assert loop.time() - start < 0.01
        assert not client.up and client.errors >= 1
    finally:
        await client.close()
        server.close()


async def test_kill_mid_run_fails_fast_then_reconnects_on_restart(redis_server: RedisServer) -> None:
    events: list[str] = []
    client = StateClient(parse_state_url(redis_server.url), timeout_ms=200, backoff_max_ms=200, on_up=lambda: events.append("up"), on_down=lambda: events.append("down"))
    client.start()
    try:
        assert await client.wait_up(5.0)
        await client.call("SET", "k", "1")
        # calls in flight while the server dies fail with a state error, none hangs
        inflight = [asyncio.ensure_future(client.call("DEBUG", "SLEEP", "0.1")) for _ in range(5)]
        await asyncio.sleep(0)
        redis_server.kill()
        results = await asyncio.wait_for(asyncio.gather(*inflight, return_exceptions=True), 1.0)
        assert all(isinstance(r, StateError) for r in results), results
        await wait_until(lambda: events == ["up", "down"], what="on_down")
        assert not client.up
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(StateUnavailable):
            await client.call("GET", "k")
        assert loop.time() - start < 0.01
        await redis_server.start()  # same port, empty (no persistence)
        assert await client.wait_up(5.0)
        assert client.up and events == ["up", "down", "up"]
        assert await client.call("GET", "k") is None
        assert await client.call("SET", "k", "2") == b"OK"
    finally:
        await client.close()


async def test_auth_with_acl_user_and_with_requirepass(redis_auth: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    port = redis_auth.port
    for url in (f"redis://{AUTH_USER}:{AUTH_USER_PASSWORD}@127.0.0.1:{port}/2", f"redis://:{AUTH_PASSWORD}@127.0.0.1:{port}/0"):
        c = await connected(url)
        assert await c.call("SET", "x", url[-1]) == b"OK"
        await c.close()
    # /2 selected the database: db 0 does not see db 2's x written first
    c = await connected(f"redis://:{AUTH_PASSWORD}@127.0.0.1:{port}/2")
    assert await c.call("GET", "x") == b"2"
    await c.close()
    # a wrong password: never up, counted, one log line that does not show the password
    caplog.set_level(logging.WARNING, "rawgw.state")
    bad = StateClient(parse_state_url(f"redis://{AUTH_USER}:wrong-pw-XYZ@127.0.0.1:{port}"), backoff_base_ms=20)
    bad.start()
    await wait_until(lambda: bad.errors >= 3, what="failed connects counted")
    assert not bad.up
    await bad.close()
    text = caplog.text
    assert "WRONGPASS" in text and "wrong-pw-XYZ" not in text and f"{AUTH_USER}:***@" in text
    assert text.count("unreachable") == 1  # one line per outage, not per retry


async def test_rediss_verifies_against_ssl_cert_file(
    redis_tls: RedisServer, ca_pem: Path, other_ca_pem: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert redis_tls.url.startswith("rediss://")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    c = await connected(redis_tls.url)
    assert await c.call("SET", "t", "tls") == b"OK" and await c.call("GET", "t") == b"tls"
    await c.close()
    # a CA we do not trust: never up, the reason logged once
    caplog.set_level(logging.WARNING, "rawgw.state")
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca_pem))
    bad = StateClient(parse_state_url(redis_tls.url), backoff_base_ms=20)
    bad.start()
    await wait_until(lambda: bad.errors >= 2, what="failed TLS connects")
    assert not bad.up
    await bad.close()
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


async def test_unix_socket_and_db_query(redis_unix: RedisServer) -> None:
    c3 = await connected(f"unix://{redis_unix.socket_path}?db=3")
    c0 = await connected(f"unix://{redis_unix.socket_path}")
    try:
        await c3.call("SET", "only-in-3", "v")
        assert await c0.call("GET", "only-in-3") is None
        assert await c3.call("GET", "only-in-3") == b"v"
    finally:
        await c3.close()
        await c0.close()


async def test_pubsub_across_clients_and_resubscribe_after_restart(redis_server: RedisServer) -> None:
    subscribed: list[int] = []
    sub = StateClient(parse_state_url(redis_server.url), timeout_ms=1000, backoff_max_ms=200, on_subscribed=lambda: subscribed.append(1))
    pub = await connected(redis_server.url)
    got: list[tuple[bytes, bytes]] = []
    sub.start()
    try:
        await sub.subscribe("events", lambda ch, data: got.append((ch, data)))
        await wait_until(lambda: subscribed, what="subscribed")
        await sub.subscribe("other", lambda ch, data: got.append((ch, data)))  # while up: confirmed on return
        assert await pub.publish("events", b"one") == 1
        assert await pub.publish("other", b"two") == 1
        await wait_until(lambda: len(got) == 2, what="two messages")
        assert got == [(b"events", b"one"), (b"other", b"two")]

        redis_server.kill()
        await wait_until(lambda: not sub.subscriber_up and not pub.up, what="both down")
        await redis_server.start()
        await wait_until(lambda: len(subscribed) == 2 and pub.up, timeout=10, what="resubscribed")
        assert await pub.publish("events", b"three") == 1
        assert await pub.publish("other", b"four") == 1
        await wait_until(lambda: len(got) == 4, what="messages after restart")
        assert got[2:] == [(b"events", b"three"), (b"other", b"four")]
    finally:
        await sub.close()
        await pub.close()


def test_works_under_uvloop(tmp_path: Path) -> None:
    from redis_helpers import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH")

    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        server = RedisServer(tmp_path)
        await server.start()
        try:
            c = await connected(server.url)
            got: list[bytes] = []
            await c.subscribe("ch", lambda _ch, data: got.append(data))
            await wait_until(lambda: c.subscriber_up, what="subscriber")
            replies = await asyncio.gather(*(c.call("INCR", "n") for _ in range(500)))
            assert replies == list(range(1, 501))
            await wait_for_delivery(c, got)
            await c.close()
        finally:
            await server.stop()

    uvloop.run(main())


async def wait_for_delivery(c: StateClient, got: list[bytes]) -> None:
    async def published() -> bool:
        await c.publish("ch", b"x")
        return bool(got)

    await wait_until(published, what="pub/sub under uvloop")
