"""A request whose body stops arriving is bounded by request_timeout_s (408, then close)."""

from __future__ import annotations

import time

from conftest import GW_KEY, StartGateway, assert_gateway_error, base_config, parse_response, raw_connection
from mock_upstream import MockUpstream


async def test_stalled_body_gets_408_within_the_request_deadline(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, server={"request_timeout_s": 1}))
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + GW_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":"
    )
    async with await raw_connection(gw.port, timeout=6) as c:
        t0 = time.monotonic()
        await c.send(head)
        data = await c.read_until_close(timeout=5)
        elapsed = time.monotonic() - t0
    r = parse_response(data, eof=True)
    assert_gateway_error(r, 408)
    assert 0.8 <= elapsed < 3.5, elapsed
    assert mock_upstream.requests == []
