"""/metrics (issue 4.3, README "Metrics"): Prometheus text 0.0.4, parsed by
prometheus_client's own parser, with exact values after known traffic."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from conftest import GW_KEY, StartGateway, assert_gateway_error, base_config, chat_request, raw_connection
from mock_upstream import Json, MockUpstream, Sse
from ops_helpers import call, chat_body, completion, scrape, sse_chat, wait_until

KEY2 = "sk-upstream-key-bbbb2222"
LIMITED_KEY = "gw-limited-key-987654"

FAMILIES = {
    "rawgw_requests": "counter",
    "rawgw_request_duration_seconds": "histogram",
    "rawgw_upstream_ttfb_seconds": "histogram",
    "rawgw_overhead_seconds": "histogram",
    "rawgw_upstream_attempts": "counter",
    "rawgw_failovers": "counter",
    "rawgw_tokens": "counter",
    "rawgw_rate_limited": "counter",
    "rawgw_cache": "counter",
    "rawgw_provider_keys": "gauge",
    "rawgw_open_connections": "gauge",
    "rawgw_active_streams": "gauge",
    "rawgw_upstream_pool_connections": "gauge",
}


def lbl(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


async def test_metrics_format_and_families(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    assert (await call(gw.port, chat_body())).status == 200
    r, m = await scrape(gw.port)
    ctype = r.header("content-type") or ""
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    assert {name: m.types.get(name) for name in FAMILIES} == FAMILIES, m.types
    assert r.body.endswith(b"\n")


async def test_metrics_after_traffic(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    keys: list[dict[str, Any]] = [
        {"key": GW_KEY, "name": "tester"},
        {"key": LIMITED_KEY, "name": "limited", "rate_limit_rpm": 60, "rate_limit_burst": 1},
    ]
    gw = await start_gateway(
        base_config(
            mock_upstream,
            keys=keys,
            provider={"keys": ["sk-upstream-key-aaaa1111", KEY2], "key_strategy": "first"},
            extra={"routes": [{"match": "alias", "model": "up-model"}], "cache": {"enabled": True}},
        )
    )
    mock_upstream.enqueue(
        Json(status=429, body=b'{"error":"slow down"}', headers=[("Retry-After", "30")]),
        Json(body=completion(prompt=10, completion_tokens=20)),
        Json(body=completion(prompt=1, completion_tokens=2)),
        Json(body=completion(prompt=100, completion_tokens=200)),
    )
    a = await call(gw.port, chat_body("alias"))
    assert (a.status, a.header("x-rawgw-attempts")) == (200, "2")
    b_body = chat_body("alias", temperature=0.1)
    assert (await call(gw.port, b_body)).status == 200
    assert (await call(gw.port, chat_body("alias"), key=LIMITED_KEY)).status == 200
    assert (await call(gw.port, chat_body("alias"), key=LIMITED_KEY)).status == 429
    hit = await call(gw.port, b_body)
    assert (hit.status, hit.header("x-cache")) == (200, "HIT")
    assert len(mock_upstream.requests) == 4

    _, m = await scrape(gw.port)
    assert m.get("rawgw_requests_total", route="routed", provider="mock", status="200") == 4
    assert m.total("rawgw_requests_total", status="429") == 1
    assert m.series("rawgw_tokens_total") == {
        lbl(provider="mock", model="up-model", key_name="tester", kind="prompt"): 11,
        lbl(provider="mock", model="up-model", key_name="tester", kind="completion"): 22,
        lbl(provider="mock", model="up-model", key_name="limited", kind="prompt"): 100,
        lbl(provider="mock", model="up-model", key_name="limited", kind="completion"): 200,
    }
    assert m.series("rawgw_failovers_total") == {lbl(provider="mock"): 1}
    assert m.series("rawgw_upstream_attempts_total") == {lbl(provider="mock"): 4}
    assert m.series("rawgw_rate_limited_total") == {lbl(key_name="limited"): 1}
    assert m.series("rawgw_cache_total") == {lbl(result="hit"): 1, lbl(result="miss"): 3}
    assert m.series("rawgw_provider_keys") == {
        lbl(provider="mock", state="active"): 1,
        lbl(provider="mock", state="cooling"): 1,
        lbl(provider="mock", state="disabled"): 0,
    }
    # the gateway's own time: one observation per proxied response (not the cache hit)
    assert m.get("rawgw_overhead_seconds_count") == 3
    assert m.get("rawgw_overhead_seconds_bucket", le="+Inf") == 3
    assert 0 < m.get("rawgw_overhead_seconds_sum") < 1  # type: ignore[operator]
    assert m.get("rawgw_upstream_ttfb_seconds_count", provider="mock") == 3
    assert m.get("rawgw_request_duration_seconds_count", route="routed", provider="mock") == 4


async def test_metrics_key_disabled_after_401(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, provider={"keys": ["sk-upstream-key-aaaa1111", KEY2], "key_strategy": "first"}))
    mock_upstream.enqueue(Json(status=401, body=b'{"error":"bad key"}'))
    r = await call(gw.port, chat_body())
    assert (r.status, r.header("x-rawgw-attempts")) == (200, "2")
    _, m = await scrape(gw.port)
    assert m.series("rawgw_provider_keys") == {
        lbl(provider="mock", state="active"): 1,
        lbl(provider="mock", state="cooling"): 0,
        lbl(provider="mock", state="disabled"): 1,
    }
    assert m.series("rawgw_failovers_total") == {lbl(provider="mock"): 1}


async def test_metrics_open_connections(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    idle = [await raw_connection(gw.port) for _ in range(2)]
    try:
        await idle[0].send(chat_request(chat_body()))
        assert (await idle[0].read_response()).status == 200  # kept alive, idle now

        async def open_now() -> float | None:
            return (await scrape(gw.port))[1].get("rawgw_open_connections")

        # the two idle connections plus the scraping one
        await wait_until(lambda: _eq(open_now(), 3), what="rawgw_open_connections == 3")
    finally:
        for c in idle:
            c.close()
    await wait_until(lambda: _eq(open_now(), 1), what="rawgw_open_connections back to 1")


async def _eq(value: Awaitable[float | None], expected: float) -> bool:
    return (await value) == expected


async def test_metrics_active_streams(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    mock_upstream.enqueue(Sse(pieces=sse_chat(["a", "b", "c", "d"]), delay=0.3))
    async with await raw_connection(gw.port) as c:
        await c.send(chat_request(chat_body(stream=True)))
        await c.read_until(b'"a"')
        _, m = await scrape(gw.port)
        assert m.get("rawgw_active_streams") == 1
        r = await c.read_response()
        assert r.status == 200 and r.complete
    _, m = await scrape(gw.port)
    assert m.get("rawgw_active_streams") == 0


async def test_metrics_label_values_escaped(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream))
    model = 'we"ird\\mo\ndel'
    mock_upstream.enqueue(Json(body=completion(prompt=4, completion_tokens=6)))
    r = await call(gw.port, json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]}).encode())
    assert r.status == 200
    _, m = await scrape(gw.port)
    assert m.series("rawgw_tokens_total") == {
        lbl(provider="mock", model=model, key_name="tester", kind="prompt"): 4,
        lbl(provider="mock", model=model, key_name="tester", kind="completion"): 6,
    }


async def test_metrics_disabled(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(base_config(mock_upstream, extra={"metrics": {"enabled": False}}))
    assert (await call(gw.port, chat_body())).status == 200
    for path in ("/metrics", "/metrics.json"):
        r = await call(gw.port, b"", path=path, method="GET")
        assert_gateway_error(r, 404)
        assert b"rawgw_" not in r.body


async def test_metrics_json_matches_counters(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """The dashboard's JSON source agrees with /metrics after the same traffic."""
    gw = await start_gateway(base_config(mock_upstream))
    mock_upstream.enqueue(Json(body=completion(prompt=7, completion_tokens=8)), Json(status=400, body=b'{"error":"x"}'))
    assert (await call(gw.port, chat_body())).status == 200
    assert (await call(gw.port, chat_body())).status == 400
    r = await call(gw.port, b"", path="/metrics.json", method="GET")
    assert r.status == 200
    doc = r.json()
    assert doc["by_status"]["200"] == 1 and doc["by_status"]["400"] == 1, doc
    assert doc["tokens_total"] == {"prompt": 7, "completion": 8}, doc
    await asyncio.sleep(0)


PROCESS_FAMILIES = {
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
}


def _proc_status_kb(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field_name} not in /proc/{pid}/status")


def _proc_soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files")


async def test_metrics_process_families(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """Issue 13.6: Prometheus' standard process_* families, per process, with values that
    agree with what the kernel says about the gateway's pid (read here from /proc)."""
    before = time.time()
    gw = await start_gateway(base_config(mock_upstream))
    pid = gw.proc.pid
    _, m = await scrape(gw.port)
    assert {name: m.types.get(name) for name in PROCESS_FAMILIES} == PROCESS_FAMILIES, m.types
    for name in PROCESS_FAMILIES:  # unlabelled: one series per process, summable over workers
        series = m.series(name + ("_total" if name == "process_cpu_seconds" else ""))
        assert list(series) == [frozenset()], (name, series)

    cpu = m.get("process_cpu_seconds_total")
    assert cpu is not None and 0 < cpu < (time.time() - before) * (os.cpu_count() or 1) + 1, cpu
    rss = m.get("process_resident_memory_bytes")
    vms = m.get("process_virtual_memory_bytes")
    assert rss is not None and vms is not None
    # VmRSS/VmSize from /proc/<pid>/status, read now: same process, a few pages apart at most.
    assert abs(rss - _proc_status_kb(pid, "VmRSS") * 1024) < 16 << 20, rss
    # Virtual size moves by whole thread stacks (8 MiB+ each) as the default executor and the
    # log writer start threads after the scrape: it may only have grown since, within reason.
    assert vms <= _proc_status_kb(pid, "VmSize") * 1024 + (64 << 20), vms
    assert 4 << 20 < rss < vms, (rss, vms)
    fds = m.get("process_open_fds")
    assert fds is not None and abs(fds - len(os.listdir(f"/proc/{pid}/fd"))) <= 4, fds
    assert m.get("process_max_fds") == _proc_soft_nofile(pid)
    start = m.get("process_start_time_seconds")
    assert start is not None and before - 1 <= start <= time.time(), (before, start)

    # A counter: it never goes back, and work moves it (no cache of the first reading).
    for _ in range(200):
        assert (await call(gw.port, chat_body())).status == 200
    _, m2 = await scrape(gw.port)
    cpu2 = m2.get("process_cpu_seconds_total")
    assert cpu2 is not None and cpu2 > cpu, (cpu, cpu2)
    assert m2.get("process_start_time_seconds") == start


async def test_metrics_json_process(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    """The dashboard's CPU/memory panel reads these from /metrics.json."""
    gw = await start_gateway(base_config(mock_upstream))
    doc = (await call(gw.port, b"", path="/metrics.json", method="GET")).json()
    p = doc["process"]
    assert set(p) == {"cpu_seconds", "resident_memory_bytes", "virtual_memory_bytes", "open_fds", "max_fds", "start_time"}, p
    assert p["cpu_seconds"] > 0 and p["resident_memory_bytes"] > 4 << 20 and p["open_fds"] > 0, p
    assert p["max_fds"] == _proc_soft_nofile(gw.proc.pid)
