"""A client that leaves while its upstream connection is being made (component level).

Python 3.11's ``asyncio.wait_for`` returns the awaited result when the cancel lands just
as that result arrives (gh-86296): the exchange of a client that already left then went
on — a request sent upstream for nobody (billed), and ``rawgw_active_streams`` counted
up and never down (seen as a flaky ``test_mixed_traffic_leaves_no_leak``). The pool must
raise ``CancelledError`` whenever the cancel came before ``acquire`` returned.
"""

from __future__ import annotations

import asyncio

import pytest

from rawgw.upstream.pool import Origin, OriginPool


class _Conn:
    reusable = True

    def abort(self) -> None:
        pass


def _pool(connect: object) -> OriginPool:
    pool = OriginPool(Origin("http", "127.0.0.1", 9), max_connections=1, idle_s=30, max_header_bytes=16384)
    pool._connect = connect  # type: ignore[method-assign,assignment]
    return pool


@pytest.mark.parametrize("yields", [0, 1, 2, 3])
async def test_cancel_as_the_connect_completes(yields: int) -> None:
    gate: asyncio.Future[_Conn] = asyncio.get_running_loop().create_future()

    async def connect() -> _Conn:
        return await gate

    pool = _pool(connect)
    task = asyncio.ensure_future(pool.acquire(5.0))
    await asyncio.sleep(0)  # acquire now waits on the connect
    conn = _Conn()
    gate.set_result(conn)
    for _ in range(yields):
        await asyncio.sleep(0)
    pending = not task.done()
    task.cancel()
    if pending:
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.connecting == 0 and not pool.open
    else:
        assert await task is conn


@pytest.mark.parametrize("yields", [0, 1, 2, 3])
async def test_cancel_as_a_slot_frees(yields: int) -> None:
    connects = 0

    async def connect() -> _Conn:
        nonlocal connects
        connects += 1
        return _Conn()

    pool = _pool(connect)
    busy = _Conn()
    pool.open.add(busy)  # type: ignore[arg-type]  # the one slot is taken
    task = asyncio.ensure_future(pool.acquire(5.0))
    await asyncio.sleep(0)  # acquire now waits for a free slot
    assert pool.waiters
    pool.open.discard(busy)  # type: ignore[arg-type]
    pool._wake()
    for _ in range(yields):
        await asyncio.sleep(0)
    pending = not task.done()
    task.cancel()
    if pending:
        with pytest.raises(asyncio.CancelledError):
            await task
        assert connects == 0 or pool.connecting == 0
    else:
        await task
