"""Upstream name resolution: once per origin and TTL, one lookup for a burst (issue 15).

Pure tests inject the lookup and the clock; the pool tests connect for real to a
server on loopback named ``localhost`` (the system resolver answers from /etc/hosts).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from rawgw.upstream.connection import UpstreamError
from rawgw.upstream.pool import Origin, OriginPool
from rawgw.upstream.resolve import Address, Resolver, system_lookup


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    """A resolver that answers when told to, and counts the questions."""

    def __init__(self, answer: list[Address] | None = None) -> None:
        self.answer = answer if answer is not None else [(socket.AF_INET, "127.0.0.1", 80)]
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.fail: OSError | None = None

    async def __call__(self, host: str, port: int) -> list[Address]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.answer


async def test_a_burst_shares_one_lookup() -> None:
    lookups = Lookups()
    lookups.gate = asyncio.Event()
    r = Resolver("api.example", 80, lookup=lookups, clock=Clock())
    waiters = [asyncio.ensure_future(r.addresses()) for _ in range(50)]
    await asyncio.sleep(0)
    lookups.gate.set()
    results = await asyncio.gather(*waiters)
    assert lookups.calls == 1
    assert all(res == [(socket.AF_INET, "127.0.0.1", 80)] for res in results)


async def test_the_answer_is_kept_for_the_ttl_then_asked_again() -> None:
    clock = Clock()
    lookups = Lookups()
    r = Resolver("api.example", 80, ttl_s=10.0, lookup=lookups, clock=clock)
    await r.addresses()
    clock.now += 9.9
    await r.addresses()
    assert lookups.calls == 1
    clock.now += 0.2
    await r.addresses()
    assert lookups.calls == 2


async def test_a_failed_lookup_is_not_kept() -> None:
    lookups = Lookups()
    lookups.fail = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    r = Resolver("nowhere.example", 80, lookup=lookups, clock=Clock())
    with pytest.raises(socket.gaierror):
        await r.addresses()
    lookups.fail = None
    assert await r.addresses() == lookups.answer
    assert lookups.calls == 2


async def test_one_waiter_leaving_does_not_cancel_the_others_lookup() -> None:
    lookups = Lookups()
    lookups.gate = asyncio.Event()
    r = Resolver("api.example", 80, lookup=lookups, clock=Clock())
    leaving = asyncio.ensure_future(r.addresses())
    staying = asyncio.ensure_future(r.addresses())
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    lookups.gate.set()
    assert await staying == lookups.answer
    assert leaving.cancelled() and lookups.calls == 1


async def test_forget_makes_the_next_connect_ask_again() -> None:
    lookups = Lookups()
    r = Resolver("api.example", 80, lookup=lookups, clock=Clock())
    await r.addresses()
    r.forget()
    await r.addresses()
    assert lookups.calls == 2


async def test_ip_literals_are_never_looked_up() -> None:
    lookups = Lookups()
    for host, family in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
        r = Resolver(host, 8080, lookup=lookups, clock=Clock())
        assert await r.addresses() == [(family, host, 8080)]
        r.forget()
        assert await r.addresses() == [(family, host, 8080)]
    assert lookups.calls == 0


async def test_system_lookup_answers_localhost_with_ip_literals() -> None:
    found = await system_lookup("localhost", 8080)
    assert found and all(port == 8080 for _, _, port in found)
    assert any(ip in ("127.0.0.1", "::1") for _, ip, _ in found)


async def _server() -> tuple[asyncio.base_events.Server, int, list[object]]:
    accepted: list[object] = []

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(transport)

    server = await asyncio.get_running_loop().create_server(Accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], accepted


async def test_pool_burst_to_a_named_origin_resolves_once() -> None:
    server, port, _accepted = await _server()
    pool = OriginPool(Origin("http", "localhost", port), 100, 30.0, 65536)
    asked: list[str] = []
    real = pool.resolver.lookup

    async def counting(host: str, p: int) -> list[Address]:
        asked.append(host)
        # only the IPv4 answer: the test server listens on 127.0.0.1
        return [a for a in await real(host, p) if a[0] == socket.AF_INET]

    pool.resolver.lookup = counting
    conns = await asyncio.gather(*[pool.acquire(5.0) for _ in range(30)])
    try:
        assert asked == ["localhost"]
        assert len({id(c) for c in conns}) == 30
        assert all(c.transport.get_extra_info("peername")[0] == "127.0.0.1" for c in conns)  # type: ignore[union-attr]
    finally:
        for c in conns:
            c.abort()
        server.close()


async def test_pool_tries_the_next_address_and_forgets_an_answer_that_all_failed() -> None:
    server, port, _accepted = await _server()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    pool = OriginPool(Origin("http", "gw.example", port), 10, 30.0, 65536)
    lookups = Lookups([(socket.AF_INET, "127.0.0.1", dead), (socket.AF_INET, "127.0.0.1", port)])
    pool.resolver.lookup = lookups
    conn = await pool.acquire(5.0)
    assert conn.transport.get_extra_info("peername")[1] == port  # type: ignore[union-attr]
    conn.abort()
    lookups.answer = [(socket.AF_INET, "127.0.0.1", dead)]
    pool.resolver.forget()
    with pytest.raises(UpstreamError) as err:
        await pool.acquire(5.0)
    assert err.value.message.startswith(f"cannot connect to gw.example:{port}: ")
    assert pool.resolver.answer == [] and lookups.calls == 2
    server.close()
