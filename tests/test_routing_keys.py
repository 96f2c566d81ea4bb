"""Provider key pools (SPEC 3, 5.3, 8; issue 3): strategies, cooldown after 429, disable
after 401/403, all keys resting, /health/providers, the circuit breaker."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from conftest import StartGateway, assert_gateway_error, assert_wire_invariants
from mock_upstream import Json, MockUpstream
from ops_helpers import recorded, wait_until
from routing_helpers import (  # noqa: F401  (ups_fixture provides the `ups` fixture)
    KEY_A,
    KEY_B,
    KEY_C,
    bearer_key,
    call,
    cfg,
    chat,
    get_json,
    health_keys,
    prov,
    routed_by,
    ups_fixture,
)


def keys_seen(mock: MockUpstream, start: int = 0) -> list[str]:
    return [bearer_key(r) for r in mock.requests[start:]]


# --------------------------------------------------------------------------- strategies


async def test_round_robin_rotates_over_three_keys(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B, KEY_C], key_strategy="round-robin")}))
    for _ in range(6):
        r = await call(gw, chat("m"))
        assert r.status == 200
        assert routed_by(r) == ("p1", "1")
    seen = keys_seen(p1)
    assert sorted(seen[:3]) == sorted([KEY_A, KEY_B, KEY_C]), seen
    assert seen[3:] == seen[:3], seen


async def test_round_robin_is_the_default(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B])}))
    for _ in range(4):
        assert (await call(gw, chat("m"))).status == 200
    seen = keys_seen(p1)
    assert seen[0] != seen[1] and seen[2] != seen[3] and seen[:2] == seen[2:], seen


async def test_first_strategy_always_uses_the_first_key(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_B, KEY_A, KEY_C], key_strategy="first")}))
    for _ in range(4):
        assert (await call(gw, chat("m"))).status == 200
    assert keys_seen(p1) == [KEY_B] * 4


async def test_random_strategy_uses_every_key(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B], key_strategy="random")}))
    for _ in range(30):
        assert (await call(gw, chat("m"))).status == 200
    seen = keys_seen(p1)
    assert set(seen) == {KEY_A, KEY_B}  # chance of a false failure: 2 ** -29


# --------------------------------------------------------------------------- 429 cooldown


async def test_429_with_retry_after_rests_the_key_until_cooldown_ends(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B], key_strategy="first")}))
    p1.enqueue(Json(status=429, body={"error": "slow down"}, headers=[("Retry-After", "1")]))
    t429 = time.monotonic()
    r = await call(gw, chat("m"))
    assert r.status == 200, r.body
    assert routed_by(r) == ("p1", "2")
    assert keys_seen(p1) == [KEY_A, KEY_B]

    states = await health_keys(gw, "p1")
    assert [k["state"] for k in states] == ["cooling", "active"], states
    assert 0 < float(states[0]["cooldown_s"]) <= 1.0, states

    # while A rests, requests skip it: one attempt each, with B
    for _ in range(3):
        r = await call(gw, chat("m"))
        assert r.status == 200
        assert routed_by(r) == ("p1", "1")
    assert keys_seen(p1, 2) == [KEY_B] * 3

    await asyncio.sleep(max(0.0, t429 + 1.15 - time.monotonic()))
    r = await call(gw, chat("m"))
    assert r.status == 200
    assert routed_by(r) == ("p1", "1")
    assert keys_seen(p1, 5) == [KEY_A]  # back in use once its cooldown ended
    states = await health_keys(gw, "p1")
    assert [k["state"] for k in states] == ["active", "active"], states


async def test_429_round_robin_skips_resting_key(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B, KEY_C])}))
    p1.enqueue(Json(status=429, body=b"{}", headers=[("Retry-After", "30")]))
    r = await call(gw, chat("m"))
    assert r.status == 200
    assert routed_by(r) == ("p1", "2")
    resting = bearer_key(p1.requests[0])
    for _ in range(6):
        r = await call(gw, chat("m"))
        assert r.status == 200
        assert routed_by(r) == ("p1", "1")
    later = keys_seen(p1, 2)
    assert resting not in later, (resting, later)
    assert set(later) == {KEY_A, KEY_B, KEY_C} - {resting}


async def test_all_keys_resting_gives_429_at_once_without_contacting_upstream(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B])}))
    p1.enqueue(
        Json(status=429, body=b'{"error":"rl-a"}', headers=[("Retry-After", "1")]),
        Json(status=429, body=b'{"error":"rl-b"}', headers=[("Retry-After", "1"), ("X-Up", "b")]),
    )
    r = await call(gw, chat("m"))
    # exhausted: the last upstream response, as it was
    assert r.status == 429
    assert r.body == b'{"error":"rl-b"}'
    assert r.header("x-up") == "b"
    assert r.header("retry-after") == "1"
    assert routed_by(r) == ("p1", "2")
    assert sorted(keys_seen(p1)) == sorted([KEY_A, KEY_B])

    t0 = time.monotonic()
    r = await call(gw, chat("m"))
    elapsed = time.monotonic() - t0
    err = assert_gateway_error(r, 429)
    assert err["message"]
    assert r.header("retry-after") == "1", r.raw_head
    assert elapsed < 0.5
    assert_wire_invariants(r)
    await recorded(gw, r)
    assert len(p1.requests) == 2  # not contacted

    states = await health_keys(gw, "p1")
    assert [k["state"] for k in states] == ["cooling", "cooling"], states

    await asyncio.sleep(1.1)
    r = await call(gw, chat("m"))
    assert r.status == 200
    assert len(p1.requests) == 3


async def test_all_resting_retry_after_is_the_soonest_return_rounded_up(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, priority=1), "p2": prov(p2, priority=2, keys=[KEY_B])}))
    p1.enqueue(Json(status=429, body=b"{}", headers=[("Retry-After", "30")]))
    p2.enqueue(Json(status=429, body=b"{}", headers=[("Retry-After", "7")]))
    r = await call(gw, chat("m"))
    assert r.status == 429
    assert routed_by(r) == ("p2", "2")
    r = await call(gw, chat("m"))
    assert_gateway_error(r, 429)
    assert r.header("retry-after") == "7"  # ceil(6.9x)
    await recorded(gw, r)
    assert len(p1.requests) == 1 and len(p2.requests) == 1


async def test_resting_provider_is_skipped_for_the_next_one(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, priority=1), "p2": prov(p2, priority=2, keys=[KEY_B])}))
    p1.enqueue(Json(status=429, body=b"{}", headers=[("Retry-After", "30")]))
    r = await call(gw, chat("m"))
    assert r.status == 200
    assert routed_by(r) == ("p2", "2")
    for _ in range(3):
        r = await call(gw, chat("m"))
        assert r.status == 200
        assert routed_by(r) == ("p2", "1")
    assert len(p1.requests) == 1 and len(p2.requests) == 4
    (a,) = await health_keys(gw, "p1")
    assert a["state"] == "cooling" and 28 <= float(a["cooldown_s"]) <= 30, a
    assert a.get("rate_limited", 1) == 1


async def test_gateway_retry_after_is_at_least_one_second(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}))
    p1.enqueue(Json(status=429, body=b"{}", headers=[("x-ratelimit-reset-requests", "800ms")]))
    assert (await call(gw, chat("m"))).status == 429
    r = await call(gw, chat("m"))
    assert_gateway_error(r, 429)
    assert r.header("retry-after") == "1"
    assert len(p1.requests) == 1


def _http_date(seconds_ahead: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_ahead), usegmt=True)


def _rfc3339(seconds_ahead: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_ahead)).strftime("%Y-%m-%dT%H:%M:%SZ")


COOLDOWN_SOURCES = [
    # (name, headers of the 429, expected rest in seconds)
    ("retry-after-seconds", lambda: [("Retry-After", "7")], 7),
    ("retry-after-http-date", lambda: [("Retry-After", _http_date(60))], 60),
    ("x-ratelimit-reset-requests", lambda: [("x-ratelimit-reset-requests", "1m30s")], 90),
    ("x-ratelimit-reset-tokens", lambda: [("x-ratelimit-reset-tokens", "20s")], 20),
    ("x-ratelimit-reset-ms", lambda: [("X-RateLimit-Reset", str(int((time.time() + 45) * 1000)))], 45),
    ("anthropic-reset", lambda: [("anthropic-ratelimit-requests-reset", _rfc3339(50))], 50),
    ("cooldown_s", list, 33),
    ("retry-after-wins", lambda: [("x-ratelimit-reset-requests", "1m"), ("Retry-After", "7")], 7),
]


async def test_cooldown_sources(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """SPEC 8: the cooldown comes from the first source found; one provider per source,
    all on one mock, each reached through its own route."""
    p1, _, _ = ups
    providers = {f"s{i}": prov(p1, keys=[f"sk-source-key-{i:04d}-zzzz"], cooldown_s=33) for i in range(len(COOLDOWN_SOURCES))}
    routes = [{"match": f"model-{i}", "providers": [f"s{i}"]} for i in range(len(COOLDOWN_SOURCES))]
    gw = await start_gateway(cfg(providers, routes=routes))
    for i, (_, headers, _) in enumerate(COOLDOWN_SOURCES):
        p1.enqueue(Json(status=429, body=b"{}", headers=headers()))
        r = await call(gw, chat(f"model-{i}"))
        assert r.status == 429
        assert routed_by(r) == (f"s{i}", "1")
    wrong = []
    for i, (name, _, expected) in enumerate(COOLDOWN_SOURCES):
        (state,) = await health_keys(gw, f"s{i}")
        if state["state"] != "cooling" or abs(float(state["cooldown_s"]) - expected) > 2.0:
            wrong.append((name, expected, state))
    assert wrong == []


async def test_cooldown_doubles_on_repeated_429_and_resets_on_success(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A], cooldown_s=0.3)}))
    p1.enqueue(
        Json(status=429, body=b"{}"),
        Json(status=429, body=b"{}"),
        Json(status=200, body=b"{}"),
        Json(status=429, body=b"{}"),
    )
    assert (await call(gw, chat("m"))).status == 429
    (s,) = await health_keys(gw, "p1")
    assert s["state"] == "cooling" and 0.1 <= float(s["cooldown_s"]) <= 0.3, s
    await asyncio.sleep(0.35)
    assert (await call(gw, chat("m"))).status == 429
    (s,) = await health_keys(gw, "p1")
    assert s["state"] == "cooling" and 0.4 <= float(s["cooldown_s"]) <= 0.6, s  # 2 × 0.3
    await asyncio.sleep(0.65)
    assert (await call(gw, chat("m"))).status == 200  # a success resets the doubling
    assert (await call(gw, chat("m"))).status == 429
    (s,) = await health_keys(gw, "p1")
    assert s["state"] == "cooling" and 0.1 <= float(s["cooldown_s"]) <= 0.3, s
    assert len(p1.requests) == 4


# --------------------------------------------------------------------------- 401/403


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_disables_the_key(start_gateway: StartGateway, ups: list[MockUpstream], status: int) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B], key_strategy="first")}))
    p1.enqueue(Json(status=status, body={"error": {"message": "invalid key"}}))
    r = await call(gw, chat("m"))
    assert r.status == 200, r.body
    assert routed_by(r) == ("p1", "2")
    assert keys_seen(p1) == [KEY_A, KEY_B]
    for _ in range(3):
        r = await call(gw, chat("m"))
        assert r.status == 200
        assert routed_by(r) == ("p1", "1")
    assert keys_seen(p1, 2) == [KEY_B] * 3
    states = await health_keys(gw, "p1")
    assert [k["state"] for k in states] == ["disabled", "active"], states


async def test_auth_failure_of_only_key_is_passed_through_then_503(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A])}))
    p1.enqueue(Json(status=401, body=b'{"error":"bad upstream key"}'))
    r = await call(gw, chat("m"))
    assert r.status == 401
    assert r.body == b'{"error":"bad upstream key"}'
    assert routed_by(r) == ("p1", "1")
    # the key is disabled: no usable key left; the upstream is not hammered
    r = await call(gw, chat("m"))
    assert r.status in (502, 503), r.status
    assert_gateway_error(r, r.status)
    await recorded(gw, r)
    assert len(p1.requests) == 1


async def test_reload_brings_disabled_keys_back_and_keeps_cooldowns(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    """SPEC 7 / issue 3: 401/403 disables a key *until reload*; cooldowns survive a reload."""
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B, KEY_C], key_strategy="first")}))
    p1.enqueue(
        Json(status=401, body=b"{}"),
        Json(status=429, body=b"{}", headers=[("Retry-After", "30")]),
    )
    r = await call(gw, chat("m"))
    assert r.status == 200
    assert routed_by(r) == ("p1", "3")
    assert [k["state"] for k in await health_keys(gw, "p1")] == ["disabled", "cooling", "active"]

    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 2.0
    while True:
        states = await health_keys(gw, "p1")
        if states[0]["state"] == "active" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [k["state"] for k in states] == ["active", "cooling", "active"], states
    assert 27 <= float(states[1]["cooldown_s"]) <= 30, states
    r = await call(gw, chat("m"))
    assert r.status == 200
    assert routed_by(r) == ("p1", "1")
    assert keys_seen(p1, 3) == [KEY_A]


# --------------------------------------------------------------------------- /health/providers


async def test_health_providers_masks_keys_and_counts_requests(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    or_a = "sk-or-v1-0123456789abcdef0123456789abcdefa1b2"
    or_b = "sk-or-v1-fedcba9876543210fedcba9876543210c3d4"
    gw = await start_gateway(cfg({"or": prov(p1, type="openrouter", keys=[or_a, or_b]), "oa": prov(p2, keys=[KEY_C], priority=5)}))
    for _ in range(4):
        assert (await call(gw, chat("m"))).status == 200
    r = await call(gw, b"", path="/health/providers", method="GET")
    assert r.status == 200
    assert (r.header("content-type") or "").startswith("application/json")
    text = r.body.decode()
    for secret in (or_a, or_b, KEY_C):
        assert secret not in text
        assert secret[6:-4] not in text  # nothing of the middle either
    states = await health_keys(gw, "or")
    assert [s["state"] for s in states] == ["active", "active"]
    assert states[0]["key"].endswith("a1b2") and states[1]["key"].endswith("c3d4"), states
    assert [s["requests"] for s in states] == [2, 2], states
    (oa,) = await health_keys(gw, "oa")
    assert oa["state"] == "active" and oa["requests"] == 0 and oa["key"].endswith("cccc")


async def test_health_providers_needs_gateway_key(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1)}))
    r = await call(gw, b"", path="/health/providers", method="GET", key=None)
    assert_gateway_error(r, 401)
    r = await call(gw, b"", path="/health", method="GET", key=None)
    assert r.status == 200 and r.json() == {"status": "ok"}


# --------------------------------------------------------------------------- circuit breaker


async def test_circuit_breaker_opens_after_five_failures(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, priority=1), "p2": prov(p2, priority=2, keys=[KEY_B])}))
    p1.default = Json(status=500, body=b"boom")
    for i in range(5):
        r = await call(gw, chat("m"))
        assert r.status == 200
        assert routed_by(r) == ("p2", "2"), i
    assert len(p1.requests) == 5
    # open: p1 is skipped without being contacted
    for _ in range(2):
        r = await call(gw, chat("m"))
        assert r.status == 200
        assert routed_by(r) == ("p2", "1")
    await recorded(gw, r)
    assert len(p1.requests) == 5
    doc = await get_json(gw, "/health/providers")
    assert doc["providers"]["p1"]["breaker"] == "open", doc


async def test_4xx_never_opens_the_breaker(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, priority=1), "p2": prov(p2, priority=2, keys=[KEY_B])}))
    p1.default = Json(status=400, body=b'{"error":"bad"}')
    for _ in range(7):
        r = await call(gw, chat("m"))
        assert r.status == 400
        assert routed_by(r) == ("p1", "1")
    assert len(p1.requests) == 7 and p2.requests == []


# --------------------------------------------------------------------------- state bugs (issue 10.14)


async def test_models_listing_does_not_rotate_the_keys(start_gateway: StartGateway, ups: list[MockUpstream]) -> None:
    p1, _, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A, KEY_B], key_strategy="round-robin")}))
    assert (await call(gw, chat("m"))).status == 200
    # p1 answers /models with a non-list: nothing cached, every listing asks again
    for _ in range(3):
        assert (await call(gw, b"", path="/v1/models", method="GET")).status == 200
    assert (await call(gw, chat("m"))).status == 200
    assert len(p1.requests) == 5
    chats = [bearer_key(r) for r in p1.requests if r.method == b"POST"]
    assert sorted(chats) == sorted([KEY_A, KEY_B]), chats  # the listings did not move the rotation
    listings = [bearer_key(r) for r in p1.requests if r.method == b"GET"]
    assert listings == [chats[1]] * 3, listings  # they use the next request's key, without taking it


async def test_reload_does_not_share_a_cooldown_between_providers_with_one_key_value(
    start_gateway: StartGateway, ups: list[MockUpstream]
) -> None:
    p1, p2, _ = ups
    gw = await start_gateway(cfg({"p1": prov(p1, keys=[KEY_A], priority=1), "p2": prov(p2, keys=[KEY_A], priority=2)}))
    p1.enqueue(Json(status=429, body=b"{}", headers=[("Retry-After", "30")]))
    r = await call(gw, chat("m"))
    assert routed_by(r) == ("p2", "2")
    assert [k["state"] for k in await health_keys(gw, "p1")] == ["cooling"]
    assert [k["state"] for k in await health_keys(gw, "p2")] == ["active"]
    gw.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: "config reloaded" in gw.stderr_text(), what="reload log line")
    assert [k["state"] for k in await health_keys(gw, "p1")] == ["cooling"]
    assert [k["state"] for k in await health_keys(gw, "p2")] == ["active"]
    r = await call(gw, chat("m"))
    assert routed_by(r) == ("p2", "1")  # p1's key still rests; p2's never did
    assert len(p1.requests) == 1
