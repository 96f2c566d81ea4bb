"""An origin's addresses, looked up once per TTL and shared by every connect meanwhile.

Without it each new upstream connection resolves its host on its own: the event
loop's ``getaddrinfo`` runs in a small thread pool (libuv's: 4 threads), so a burst of
500 streams to a cold pool queued 500 lookups there, each a round trip to the resolver
(glibc caches nothing). Like nginx (which resolves at start) and aiohttp (a 10 s DNS
cache by default), rawgw resolves an origin once and reuses the answer for
``DNS_TTL_S``; concurrent connects wait for the one lookup in flight. A failed lookup
is not kept, and ``forget`` drops an answer none of whose addresses accepted a
connection, so the next connect asks again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable

DNS_TTL_S = 10.0

Address = tuple[int, str, int]  # (family, host as an IP literal, port)
Lookup = Callable[[str, int], Awaitable[list[Address]]]


async def system_lookup(host: str, port: int) -> list[Address]:
    """The event loop's getaddrinfo (the system resolver), TCP addresses in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[Address] = []
    for family, _, _, _, sockaddr in infos:
        addr = (int(family), str(sockaddr[0]), int(sockaddr[1]))
        if addr not in out:
            out.append(addr)
    return out


class Resolver:
    """One origin host's addresses (an IP literal is its own answer, never looked up)."""

    def __init__(self, host: str, port: int, ttl_s: float = DNS_TTL_S, lookup: Lookup = system_lookup, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.port = port
        self.ttl_s = ttl_s
        self.lookup = lookup
        self.clock = clock
        self.answer: list[Address] = []
        self.expires = 0.0
        self.pending: asyncio.Task[list[Address]] | None = None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self.literal = False
        else:
            self.literal = True
            self.answer = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, host, port)]

    async def addresses(self) -> list[Address]:
        if self.literal or (self.answer and self.clock() < self.expires):
            return self.answer
        pending = self.pending
        if pending is None:
            # A task of its own: one waiter leaving (its client hung up) must not cancel
            # the lookup the others wait for.
            pending = self.pending = asyncio.get_running_loop().create_task(self._lookup())
        return await asyncio.shield(pending)

    async def _lookup(self) -> list[Address]:
        try:
            found = await self.lookup(self.host, self.port)
        finally:
            self.pending = None
        if not found:
            raise OSError(f"no address for {self.host}")
        self.answer = found
        self.expires = self.clock() + self.ttl_s
        return found

    def forget(self) -> None:
        if not self.literal:
            self.answer = []
            self.expires = 0.0
