"""Pure pieces of the shared-state integration (issue 12), with injected clocks: the
in-process TPM limiter, key-pool events, worker metric sums, cached-entry encoding."""

from __future__ import annotations

import math

from rawgw.cache import decode_entry, encode_entry
from rawgw.config import GatewayKey
from rawgw.observe.metrics import Metrics
from rawgw.routing.keys import BREAKER_FAILURES, KeyPool
from rawgw.routing.ratelimit import RateLimiter, estimate_tokens

KEY = GatewayKey(key="gw-secret", name="k", rate_limit_rpm=60, rate_limit_burst=5, rate_limit_tpm=1000)


def test_tpm_reserve_is_all_or_nothing_and_refund_is_capped() -> None:
    lim = RateLimiter()
    wait, headers = lim.reserve(KEY, 600, now=0.0)
    assert wait == 0.0
    assert dict(headers)[b"x-ratelimit-remaining-tokens"] == b"400"
    assert dict(headers)[b"x-ratelimit-remaining-requests"] == b"4"
    wait, headers = lim.reserve(KEY, 600, now=0.0)
    assert wait is not None and math.isclose(wait, 200 / (1000 / 60)), wait
    assert dict(headers)[b"x-ratelimit-remaining-requests"] == b"4"  # the request token was not taken
    lim.refund(KEY, 5000, now=0.0)
    assert dict(lim.peek(KEY, now=0.0))[b"x-ratelimit-remaining-tokens"] == b"1000"
    assert lim.reserve(KEY, 1001, now=0.0)[0] is None  # can never fit: no wait helps


def test_tpm_is_divided_between_workers() -> None:
    lim = RateLimiter(workers=4)
    assert lim.reserve(KEY, 250, now=0.0)[0] == 0.0
    assert lim.reserve(KEY, 1, now=0.0)[0] is not None


def test_estimate_is_prompt_bytes_over_four_plus_the_completion_cap() -> None:
    assert estimate_tokens(400, {"max_tokens": 50}) == 150
    assert estimate_tokens(400, {"max_completion_tokens": 7}) == 107
    assert estimate_tokens(400, {"max_tokens": True}) == 100
    assert estimate_tokens(3, None) == 0


def test_key_pool_tells_its_own_changes_but_not_applied_ones() -> None:
    told: list[tuple[str, int, float, int]] = []
    pool = KeyPool(["a", "b"], "first", cooldown_s=10.0)
    pool.listener = pool.breaker.listener = lambda *e: told.append(e)
    pool.on_429("b", [], now=100.0)
    pool.on_auth_failure("a")
    pool.on_auth_failure("a")  # already disabled: nothing new to tell
    for i in range(BREAKER_FAILURES):
        pool.on_failure(None, now=200.0 + i)
    pool.on_success("b")
    assert told == [("cooldown", 1, 110.0, 1), ("disabled", 0, 0.0, 0), ("breaker_open", -1, 214.0, 0), ("breaker_closed", -1, 0.0, 0)]
    told.clear()
    pool.apply("enabled", 0, 0.0, 0)
    pool.apply("cooldown", 0, 500.0, 3)
    pool.apply("breaker_open", -1, 600.0, 0)
    pool.apply("cooldown", 7, 500.0, 3)  # an index this config does not have: ignored
    assert told == []
    assert pool.states["a"].cooldown_until == 500.0 and pool.states["a"].strikes == 3
    assert pool.breaker.state(599.0) == "open"
    assert pool.local_events(400.0) == [("cooldown", 0, 500.0, 3), ("breaker_open", -1, 600.0, 0)]


def test_reload_remembers_which_disabled_keys_it_brought_back() -> None:
    old = KeyPool(["a", "b"], "first", cooldown_s=1.0)
    old.on_auth_failure("b")
    new = KeyPool(["b", "a"], "first", cooldown_s=1.0, states=old.states)
    assert new.reenabled == [0] and not new.states["b"].disabled


def test_worker_metrics_sum() -> None:
    a, b = Metrics(), Metrics()
    a.request("routed", "p", 200, 0.01, 0.005, 1, "k")
    b.request("routed", "p", 200, 0.02, 0.005, 2, "k")
    b.request("routed", "p", 500, 0.5, None, 1, "k")
    b.rate_limited["k"] += 2
    total = Metrics()
    total.add_doc(a.to_doc())
    total.add_doc(b.to_doc())
    assert total.requests == {("routed", "p", 200): 2, ("routed", "p", 500): 1}
    assert total.latency[("routed", "p")].count == 3
    assert math.isclose(total.latency[("routed", "p")].sum, 0.53)
    assert total.attempts["p"] == 4 and total.rate_limited["k"] == 2


def test_cached_entry_round_trip() -> None:
    headers = [(b"content-type", b"application/json"), (b"x-odd", "\u00e9".encode("latin-1"))]
    data = encode_entry(200, headers, b'{"a":"\x00"}', "mock")
    assert decode_entry(data) == (200, headers, b'{"a":"\x00"}', "mock")
    assert decode_entry(b"garbage") is None


def test_check_shows_the_state_server_masked() -> None:
    from rawgw.config import parse_config
    from rawgw.config_commands import summarize

    base = {"providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": ["env:K"]}}}
    env = {"K": "sk-upstream-0123456789", "S": "redis://rawgw:hunter2-secret@valkey:6379/1"}
    cfg = parse_config({**base, "state": {"url": "env:S", "prefix": "gw1:", "timeout_ms": 40}}, env)
    text = "\n".join(summarize(cfg))
    assert "state: shared on redis://rawgw:***@valkey:6379/1 (prefix 'gw1:', timeout 40 ms)" in text
    assert "hunter2" not in text
    assert "state: in this process" in "\n".join(summarize(parse_config(base, env)))
