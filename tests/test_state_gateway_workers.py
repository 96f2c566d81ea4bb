"""A `--workers 3` gateway (issue 12): /metrics sums every worker (no state server
needed), and with a real redis-server the workers share rate limits and key states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import UPSTREAM_KEY, base_config
from mock_upstream import Json, MockUpstream, RecordedRequest
from ops_helpers import ProcGateway, call, chat_body, completion, parse_metrics, wait_until
from redis_helpers import RedisServer, redis_server

__all__ = ["redis_server"]

SECOND_KEY = "sk-upstream-key-bbbb2222"
LIMITED = "gw-limited-key-777777"


async def metrics_of(port: int, key: str | None = None) -> Any:
    r = await call(port, b"", path="/metrics", method="GET", **({"key": key} if key else {}))
    assert r.status == 200, r.body
    return parse_metrics(r.body.decode())


async def test_metrics_of_three_workers_count_every_request(tmp_path: Path, mock_upstream: MockUpstream) -> None:
    mock_upstream.default = Json(body=completion(prompt=2, completion_tokens=3))
    gw = await ProcGateway.start(tmp_path / "w", base_config(mock_upstream), ["--workers", "3"])
    try:
        for _ in range(30):  # a fresh connection each: the kernel spreads them over the workers
            assert (await call(gw.port, chat_body())).status == 200
        for _ in range(3):  # whichever worker answers the scrape, the sum is the same
            m = await metrics_of(gw.port)
            assert m.get("rawgw_workers_answered") == 3
            assert m.get("rawgw_requests_total", route="routed", provider="mock", status="200") == 30
            assert m.get("rawgw_request_duration_seconds_count", route="routed", provider="mock") == 30
            assert m.total("rawgw_tokens_total", kind="completion") == 90
        r = await call(gw.port, b"", path="/metrics.json", method="GET")
        assert r.status == 200 and r.json()["requests_total"] == 30
    finally:
        await gw.close()


async def test_three_workers_share_limits_and_key_states(tmp_path: Path, mock_upstream: MockUpstream, redis_server: RedisServer) -> None:
    def handler(req: RecordedRequest) -> Json:
        if req.header("authorization") == f"Bearer {UPSTREAM_KEY}".encode():
            return Json(status=429, body={"error": {"message": "slow down"}}, headers=[("Retry-After", "30")])
        return Json(body=completion())

    mock_upstream.handler = handler
    keys = [
        {"key": LIMITED, "name": "team", "rate_limit_rpm": 10, "rate_limit_burst": 10},
        {"key": "gw-free-key-888888", "name": "free"},
    ]
    cfg = base_config(
        mock_upstream,
        keys=keys,
        provider={"keys": [UPSTREAM_KEY, SECOND_KEY], "key_strategy": "first"},
        extra={"state": {"url": redis_server.url}},
    )
    gw = await ProcGateway.start(tmp_path / "w", cfg, ["--workers", "3"])
    free = "gw-free-key-888888"
    try:

        async def all_up() -> bool:
            m = await metrics_of(gw.port, free)
            return m.get("rawgw_state_up") == 1 and m.get("rawgw_workers_answered") == 3

        for _ in range(6):  # each scrape lands on some worker: every one must be connected
            await wait_until(all_up, timeout=10, what="state up on every worker")
        r = await call(gw.port, chat_body(), key=free)
        assert r.status == 200 and r.header("x-rawgw-attempts") == "2"
        streak = 0

        async def cooling_everywhere() -> bool:
            nonlocal streak
            resp = await call(gw.port, b"", path="/health/providers", method="GET", key=free)
            streak = streak + 1 if resp.json()["providers"]["mock"]["keys"][0]["state"] == "cooling" else 0
            return streak >= 12

        await wait_until(cooling_everywhere, what="12 answers in a row (any worker) with the key cooling")
        n = len(mock_upstream.requests)
        for _ in range(15):
            assert (await call(gw.port, chat_body(), key=free)).status == 200
        assert all(req.header("authorization") == f"Bearer {SECOND_KEY}".encode() for req in mock_upstream.requests[n:])
        statuses = [(await call(gw.port, chat_body(), key=LIMITED)).status for _ in range(30)]
        assert statuses.count(200) == 10 and statuses.count(429) == 20, statuses
        m = await metrics_of(gw.port, free)
        assert m.get("rawgw_requests_total", route="routed", provider="mock", status="200") == 1 + 15 + 10
        assert m.get("rawgw_rate_limited_total", key_name="team") == 20
    finally:
        await gw.close()
