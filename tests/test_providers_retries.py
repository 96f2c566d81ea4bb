"""Issue 13 point 2 through the real gateway (subprocess, MockUpstreams as providers):
``max_retries``, ``retry_backoff_s``, Retry-After honoured under the deadline,
``timeout_s`` per attempt, and a retry wait cancelled when the client leaves."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import StartGateway, chat_request, raw_connection, to_toml
from mock_upstream import Json, MockUpstream
from ops_helpers import access_record, jsonl_records
from providers_helpers import rawgw_cli
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    KEY_A,
    bearer_key,
    call,
    cfg,
    chat,
    prov,
    routed_by,
    settle,
    ups_fixture,
)


async def test_one_key_max_retries_2_makes_three_attempts_with_the_same_key(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    a = ups[0]
    a.enqueue(Json(status=500, body={"error": "x"}), Json(status=503, body={"error": "y"}))
    a.default = Json(body={"who": "a"})
    gw = await start_gateway(cfg({"a": prov(a, keys=[KEY_A], max_retries=2, retry_backoff_s=0.05)}))
    r = await call(gw, chat("m"))
    assert r.status == 200 and r.json() == {"who": "a"}
    assert routed_by(r) == ("a", "3")
    assert [bearer_key(q) for q in a.requests] == [KEY_A] * 3
    # waits of 25-50 ms, then 50-100 ms (exponential backoff with jitter)
    gaps = [a.requests[i + 1].received_at - a.requests[i].received_at for i in range(2)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05, gaps


async def test_retries_exhausted_then_the_chain_moves_on(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    ups[0].default = Json(status=502, body={"error": "bad"})
    gw = await start_gateway(cfg({"a": prov(ups[0], max_retries=1, retry_backoff_s=0.01), "b": prov(ups[1], priority=2)}))
    r = await call(gw, chat("m"))
    assert r.json() == {"who": "up1"}
    assert routed_by(r) == ("b", "3")  # 2 on a (1 + 1 retry), then b
    assert len(ups[0].requests) == 2


async def test_retry_after_under_the_deadline_is_honoured_instead_of_failing_over(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    a = ups[0]
    a.enqueue(Json(status=429, headers=[("Retry-After", "1")], body={"error": "slow down"}))
    a.default = Json(body={"who": "a"})
    gw = await start_gateway(cfg({"a": prov(a, keys=[KEY_A], max_retries=1), "b": prov(ups[1], priority=2)}))
    r = await call(gw, chat("m"), timeout=10.0)
    assert routed_by(r) == ("a", "2") and r.json() == {"who": "a"}
    assert not ups[1].requests  # waited for a, did not fail over to b
    gap = a.requests[1].received_at - a.requests[0].received_at
    assert 0.95 <= gap < 3.0, gap  # the rested key got its request only after Retry-After


async def test_retry_after_beyond_the_deadline_fails_over(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    ups[0].enqueue(Json(status=503, headers=[("Retry-After", "30")], body={"error": "later"}))
    config = cfg({"a": prov(ups[0], max_retries=3), "b": prov(ups[1], priority=2)}, server={"request_timeout_s": 5})
    gw = await start_gateway(config)
    r = await call(gw, chat("m"))
    assert routed_by(r) == ("b", "2") and r.json() == {"who": "up1"}
    assert len(ups[0].requests) == 1


async def test_timeout_s_ends_one_attempt_and_the_retry_answers(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    a = ups[0]
    a.enqueue(Json(body={"who": "late"}, delay_before=3.0))
    a.default = Json(body={"who": "a"})
    gw = await start_gateway(cfg({"a": prov(a, timeout_s=0.3, max_retries=1, retry_backoff_s=0.01)}))
    r = await call(gw, chat("m"))
    assert r.json() == {"who": "a"}
    assert routed_by(r) == ("a", "2")
    await a.wait_peer_closed(a.requests[0].conn, timeout=2.0)  # the slow attempt was closed
    errors = await jsonl_records(gw.logs_dir / "errors.jsonl", lambda rs: any(x.get("attempt") == 1 for x in rs))
    (first,) = [x for x in errors if x.get("attempt") == 1]
    assert first["kind"] == "timeout" and "timeout_s" in first["message"]


async def test_a_client_that_leaves_during_the_retry_wait_gets_no_retry(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    a = ups[0]
    a.enqueue(Json(status=503, headers=[("Retry-After", "1")], body={"error": "later"}))
    gw = await start_gateway(cfg({"a": prov(a, max_retries=1)}))
    conn = await raw_connection(gw.port)
    await conn.send(chat_request(chat("m"), headers=[("X-Request-ID", "leaver-1")]))
    # the fact that the chain decided to retry: its failed first attempt is logged
    await jsonl_records(gw.logs_dir / "errors.jsonl", lambda rs: any(x.get("request_id") == "leaver-1" and x.get("attempt") == 1 for x in rs))
    conn.abort()
    rec = await access_record(gw.logs_dir, "leaver-1")
    assert rec["outcome"] == "client_closed"
    await settle(1.5)  # past the 1 s the retry would have waited
    assert len(a.requests) == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_retries", -1, "providers.a.max_retries: must be an integer between 0 and 100"),
        ("retry_backoff_s", -0.5, "providers.a.retry_backoff_s:"),
        ("timeout_s", "x", "providers.a.timeout_s:"),
    ],
)
def test_bad_retry_settings_are_refused_by_check(tmp_path: Path, field: str, value: object, message: str) -> None:
    (tmp_path / "gateway.toml").write_text(to_toml(cfg({"a": prov("http://127.0.0.1:9/v1", **{field: value})})))
    done = rawgw_cli("check", "-c", "gateway.toml", cwd=tmp_path)
    assert done.returncode == 1
    assert message in done.stdout


async def test_connect_failures_are_retried_and_counted(start_gateway: StartGateway) -> None:
    from conftest import assert_gateway_error
    from routing_helpers import dead_url

    gw = await start_gateway(cfg({"a": prov(dead_url(), max_retries=2, retry_backoff_s=0.01)}))
    r = await call(gw, chat("m"))
    assert_gateway_error(r, 502)
    assert r.header("x-rawgw-attempts") == "3"
