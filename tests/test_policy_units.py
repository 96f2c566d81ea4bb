"""Pure policy functions, no sockets: cooldown sources, key pools, breaker, body splicing,
validation, usage extraction, strict head checks."""

from __future__ import annotations

import time
from email.utils import formatdate

import orjson
import pytest

from rawgw.config import Config, parse_config
from rawgw.errors import GatewayError, retry_after_header
from rawgw.http.strict import ChunkLines, chunked_not_final, head_violation, valid_host
from rawgw.observe.usage import extract_usage
from rawgw.routing.keys import MAX_BACKOFF_FACTOR, Breaker, KeyPool, cooldown_from_headers, parse_duration
from rawgw.routing.rewrite import RawJSON, rewrite_body
from rawgw.routing.router import Router
from rawgw.routing.validate import validate_body

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("20s", 20.0), ("6ms", 0.006), ("0.5s", 0.5), ("2h", 7200.0), ("1h2m3s", 3723.0), ("7", 7.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1x", "s", "1m 30s"])
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


def test_cooldown_sources_first_found_wins() -> None:
    assert cooldown_from_headers([(b"retry-after", b"12")], NOW) == 12.0
    http_date = formatdate(NOW + 30, usegmt=True).encode()
    assert cooldown_from_headers([(b"retry-after", http_date)], NOW) == pytest.approx(30.0)
    assert cooldown_from_headers([(b"x-ratelimit-reset-requests", b"1m30s")], NOW) == 90.0
    assert cooldown_from_headers([(b"x-ratelimit-reset-tokens", b"6ms")], NOW) == pytest.approx(0.006)
    ms = str(int((NOW + 45) * 1000)).encode()
    assert cooldown_from_headers([(b"x-ratelimit-reset", ms)], NOW) == pytest.approx(45.0)
    rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW + 60)).encode()
    assert cooldown_from_headers([(b"anthropic-ratelimit-requests-reset", rfc3339)], NOW) == pytest.approx(60.0)
    # Retry-After wins over the others, whatever their order
    both = [(b"x-ratelimit-reset-requests", b"5m"), (b"retry-after", b"3")]
    assert cooldown_from_headers(both, NOW) == 3.0
    assert cooldown_from_headers([(b"content-type", b"application/json")], NOW) is None
    assert cooldown_from_headers([(b"retry-after", b"soon")], NOW) is None


def test_cooldown_doubles_without_hints_up_to_16x_and_resets_on_success() -> None:
    pool = KeyPool(["k1"], "first", cooldown_s=10.0)
    rests = [pool.on_429("k1", [], now=NOW) for _ in range(7)]
    assert rests == [10.0, 20.0, 40.0, 80.0, 160.0, 160.0, 160.0]
    assert MAX_BACKOFF_FACTOR == 16
    pool.on_success("k1")
    assert pool.on_429("k1", [], now=NOW) == 10.0


def test_resting_key_skipped_and_back_after_cooldown() -> None:
    pool = KeyPool(["a", "b"], "first", cooldown_s=10.0)
    pool.on_429("a", [(b"retry-after", b"5")], now=NOW)
    assert pool.available(NOW + 1) == ["b"]
    assert pool.soonest_return(NOW + 1) == pytest.approx(4.0)
    assert pool.available(NOW + 5.01) == ["a", "b"]


def test_round_robin_rotates_and_disabled_keys_skipped() -> None:
    pool = KeyPool(["a", "b", "c"], "round-robin", cooldown_s=1.0)
    assert [pool.order()[0] for _ in range(4)] == ["a", "b", "c", "a"]
    pool.on_auth_failure("b")
    assert "b" not in pool.available(NOW)
    assert pool.soonest_return(NOW) is None  # disabled is not "cooling"


def test_state_survives_reload_for_unchanged_keys_and_disabled_come_back() -> None:
    old = KeyPool(["same", "gone", "bad"], "first", cooldown_s=100.0)
    old.on_429("same", [], now=time.time())
    old.on_auth_failure("bad")
    new = KeyPool(["same", "bad", "new"], "first", cooldown_s=100.0, states=old.states)
    now = time.time()
    assert not new.states["same"].available(now)
    assert new.states["bad"].available(now)
    assert new.states["new"].available(now)


def test_breaker_opens_after_five_failures_then_half_open_probe() -> None:
    b = Breaker()
    for i in range(4):
        b.record_failure(NOW + i)
        assert b.allow(NOW + i)
    b.record_failure(NOW + 4)
    assert b.state(NOW + 5) == "open" and not b.allow(NOW + 5)
    assert b.state(NOW + 14.1) == "half-open"
    assert b.allow(NOW + 14.1)  # the one probe
    assert not b.allow(NOW + 14.2)  # no second probe while the first runs
    b.record_failure(NOW + 14.3)  # the probe failed: open again
    assert b.state(NOW + 15) == "open"
    assert b.allow(NOW + 24.4)
    b.record_success()
    assert b.state(NOW + 25) == "closed" and b.allow(NOW + 25)


def test_breaker_failures_outside_window_do_not_count() -> None:
    b = Breaker()
    for i in range(5):
        b.record_failure(NOW + i * 10)  # 5 failures over 40 s: never 5 within 30 s
    assert b.state(NOW + 41) == "closed"


def test_retry_after_header_rounds_up_at_least_one() -> None:
    assert retry_after_header(0.2) == (b"retry-after", b"1")
    assert retry_after_header(1.0) == (b"retry-after", b"1")
    assert retry_after_header(1.01) == (b"retry-after", b"2")
    assert retry_after_header(0) == (b"retry-after", b"1")


def test_rewrite_splices_only_the_changed_values() -> None:
    body = b'{ "model" : "gpt-4o",\n "temperature":1.0, "n":1e0, "big":123456789012345678901234567890,"s":"\\u00e9\\"}" }'
    out = rewrite_body(body, {"model": "deepseek/deepseek-chat"})
    assert out == body.replace(b'"gpt-4o"', b'"deepseek/deepseek-chat"')


def test_rewrite_appends_missing_member_and_splices_raw_json() -> None:
    assert rewrite_body(b'{"model":"m"}', {"provider": {"order": ["A"]}}) == b'{"model":"m","provider":{"order":["A"]}}'
    assert rewrite_body(b"{}", {"model": "x"}) == b'{"model":"x"}'
    inner = b'{"allow_fallbacks":false , "order":["X"]}'
    body = b'{"model":"m","provider":' + inner + b"}"
    new_inner = rewrite_body(inner, {"order": ["A", "B"]})
    assert new_inner == b'{"allow_fallbacks":false , "order":["A","B"]}'
    assert rewrite_body(body, {"provider": RawJSON(new_inner)}) == b'{"model":"m","provider":' + new_inner + b"}"


def test_rewrite_result_is_valid_json_for_nested_values() -> None:
    body = b'{"messages":[{"role":"user","content":"{\\"model\\":1}"}],"model":"a","tools":[{"x":[1,{"y":"}"}]}]}'
    out = rewrite_body(body, {"model": "b"})
    assert orjson.loads(out)["model"] == "b"
    assert orjson.loads(out)["messages"] == orjson.loads(body)["messages"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}], "temperature": 2.5}, "temperature"),
        ({"model": "m", "messages": [{"role": "user"}], "temperature": "1"}, "temperature"),
        ({"model": "m", "messages": [{"role": "user"}], "top_p": 1.5}, "top_p"),
        ({"model": "m", "messages": [{"role": "user"}], "n": 0}, "n"),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "messages": [{"role": "user"}], "max_tokens": True}, "max_tokens"),
    ],
)
def test_validation_names_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(GatewayError) as info:
        validate_body("chat/completions", body)
    assert info.value.status == 400
    assert info.value.message.startswith(field + ":")


def test_validation_accepts_valid_and_other_endpoints() -> None:
    validate_body("chat/completions", {"model": "m", "messages": [{"role": "user"}], "temperature": 0, "top_p": 1, "n": 2})
    validate_body("embeddings", {"model": "m", "input": "x"})
    validate_body("responses", {"model": "m", "input": "x", "max_output_tokens": 5})


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":17}}\n\ndata: [DONE]\n\n', (9, 17)),
        (b'{"id":"x","usage":{"input_tokens":12,"output_tokens":5},"stop_reason":"end_turn"}', (12, 5)),
        (b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4, "details": {"usage": 1}}}', (3, 4)),
        (b'data: {"text":"\\"usage\\": {"}\n\n', None),
        (b"no usage", None),
    ],
)
def test_extract_usage(tail: bytes, expected: tuple[int, int] | None) -> None:
    assert extract_usage(tail) == expected


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost:\ta \r\n\r\n", None),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\n", "bare LF"),
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "folding"),
        (b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", "folding"),
        (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", "control"),
        (b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", "control"),
        (b"GET / HTTP/1.1\r\nX: a\tb\x80\xff\r\n\r\n", None),
    ],
)
def test_head_violation(head: bytes, problem: str | None) -> None:
    found = head_violation(head)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_head_violation_incremental_scan_catches_split_sequences() -> None:
    first = b"GET / HTTP/1.1\r\nX: a\r"
    assert head_violation(first) is None
    assert head_violation(first + b"\n b", len(first)) is not None  # obs-fold split across reads
    assert head_violation(first + b"\nY: b\r\n\r\n", len(first)) is None
    assert head_violation(first + b"\nY: \x1f\r\n\r\n", len(first)) is not None


CHUNKED = b'5;a=b\r\nhello\r\n3; q = "x \\"y\\"";z\r\nabc\r\n10\r\n' + b"x" * 16 + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 7, len(CHUNKED)])
def test_chunk_lines_follow_framing_across_any_split(step: int) -> None:
    c = ChunkLines(1024)
    for i in range(0, len(CHUNKED), step):
        assert c.feed(CHUNKED[i : i + step]) is None
    assert c.done


@pytest.mark.parametrize("line", [b"5;", b"5 ", b"5;bad[=x", b"5;a=", b'5;a="x', b"5\n", b"x", b"00000000000000005"])
def test_chunk_lines_refused(line: bytes) -> None:
    data = b"2\r\n{}\r\n" + line + b"\r\nhello\r\n0\r\n\r\n"
    assert ChunkLines(1024).feed(data) is not None
    c = ChunkLines(1024)
    assert any(c.feed(data[i : i + 1]) is not None for i in range(len(data)))


def test_chunk_line_bounded() -> None:
    assert ChunkLines(64).feed(b"5;" + b"a" * 100) is not None


@pytest.mark.parametrize(
    "host,ok",
    [(b"a", True), (b"api.example:8080", True), (b"[::1]:80", True), (b"a:", True), (b"ex%41.com", True),
     (b"user@h", False), (b"h/path", False), (b"a, b", False), (b"", False), (b"a:b", False), (b"a b", False)],
)  # fmt: skip
def test_valid_host(host: bytes, ok: bool) -> None:
    assert valid_host(host) is ok
    assert valid_host(host) is ok  # the second time from the cache of good hosts


def test_chunked_not_final() -> None:
    assert chunked_not_final(b"P / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
    assert chunked_not_final(b"P / HTTP/1.1\r\nTransfer-Encoding: chunked,chunked\r\n\r\n")
    assert not chunked_not_final(b"P / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n")


# --------------------------------------------------------------------------- router state (issue 10.14)


def _router_config(providers: dict[str, dict[str, object]], routes: list[dict[str, object]] | None = None) -> Config:
    data: dict[str, object] = {"keys": [{"key": "gw-unit-key-0000", "name": "t"}], "providers": providers}
    if routes:
        data["routes"] = routes
    return parse_config(data, env={})


def test_rewritten_body_cache_does_not_confuse_a_provider_name_with_a_type() -> None:
    # A provider *named* openrouter (type openai) with its own model, and a real openrouter
    # provider: the first body must not be served to the second (or the other way round).
    cfg = _router_config(
        {
            "openrouter": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": ["sk-unit-aaaa1111"]},
            "real": {"type": "openrouter", "base_url": "http://127.0.0.1:9/api/v1", "keys": ["sk-or-v1-" + "1" * 40]},
        },
        [
            {
                "match": "m",
                "model": "up",
                "providers": ["openrouter", "real"],
                "provider_order": ["Fast"],
                "provider_models": {"openrouter": "other"},
            }
        ],
    )
    for order in (("openrouter", "real"), ("real", "openrouter")):
        router = Router(cfg)
        plan = router.plan(router.classify(b"/v1/chat/completions"), None, b'{"model":"m","messages":[{"role":"user","content":"x"}]}')
        bodies = {name: orjson.loads(router.body_for(plan, cfg.providers[name])) for name in order}
        assert bodies["openrouter"]["model"] == "other" and "provider" not in bodies["openrouter"], (order, bodies)
        assert bodies["real"]["model"] == "up" and bodies["real"]["provider"] == {"order": ["Fast"]}, (order, bodies)


def test_reload_keeps_key_state_per_provider_not_per_key_value() -> None:
    shared = "sk-unit-shared-2222"
    cfg = _router_config(
        {
            "p1": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": [shared]},
            "p2": {"type": "openai", "base_url": "http://127.0.0.2:9/v1", "keys": [shared]},
        }
    )
    old = Router(cfg)
    now = time.time()
    old.pools["p1"].on_429(shared, [(b"retry-after", b"100")], now=now)
    assert not old.pools["p1"].states[shared].available(now + 1)
    assert old.pools["p2"].states[shared].available(now + 1)  # before a reload: separate
    new = Router(cfg, old=old)
    assert not new.pools["p1"].states[shared].available(now + 1)  # p1's cooldown carried over
    assert new.pools["p2"].states[shared].available(now + 1)  # p2 does not inherit it
    new.pools["p2"].on_429(shared, [(b"retry-after", b"5")], now=now)
    assert new.pools["p1"].states[shared].cooldown_until == pytest.approx(now + 100)


def test_available_does_not_advance_the_round_robin() -> None:
    pool = KeyPool(["a", "b", "c"], "round-robin", cooldown_s=1.0)
    assert pool.order()[0] == "a"
    for _ in range(5):
        assert pool.available(NOW) == ["b", "c", "a"]  # the next request's order, unchanged
    assert [pool.order()[0] for _ in range(3)] == ["b", "c", "a"]
    pool.on_429("c", [(b"retry-after", b"5")], now=NOW)
    assert pool.available(NOW) == ["b", "a"]
    assert pool.order()[0] == "b"



def test_request_ids_are_random_and_not_shared_with_a_forked_child() -> None:
    """24 hex digits; consecutive ids do not count up (they would tell a client the
    gateway's traffic), and a forked worker draws its own sequence."""
    import os

    from rawgw.request import new_request_id

    a, b = new_request_id(), new_request_id()
    assert len(a) == 24 and int(a, 16) >= 0 and a != b
    assert a[:16] != b[:16]  # a counter behind a fixed prefix would keep these equal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next id and leave without pytest's teardown
        os.write(w, new_request_id())
        os._exit(0)
    os.close(w)
    child = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    assert child != new_request_id() and len(child) == 24


@pytest.mark.parametrize("bad", [b"inf", b"nan", b"-5", b"1e9", b"1_000", b"+3", b"soon", b""])
def test_retry_after_that_is_not_delta_seconds_or_a_date_is_ignored(bad: bytes) -> None:
    """float() would take 'inf' (a key resting forever) or '-5': both parsers refuse them
    and fall back (the next cooldown source, or the provider's own cooldown)."""
    from rawgw.routing.policy import retry_after

    assert retry_after([(b"retry-after", bad)], NOW) is None
    assert cooldown_from_headers([(b"retry-after", bad)], NOW) is None
    assert cooldown_from_headers([(b"retry-after", bad), (b"x-ratelimit-reset-requests", b"20s")], NOW) == 20.0


def test_retry_after_forms_both_parsers_accept() -> None:
    from email.utils import formatdate

    from rawgw.routing.policy import retry_after

    for value, want in ((b"12", 12.0), (b" 7 ", 7.0), (b"1.5", 1.5), (formatdate(NOW + 30, usegmt=True).encode(), 30.0), (formatdate(NOW - 30, usegmt=True).encode(), 0.0)):
        assert retry_after([(b"retry-after", value)], NOW) == pytest.approx(want)
        assert cooldown_from_headers([(b"retry-after", value)], NOW) == pytest.approx(want)


@pytest.mark.parametrize(
    "tail",
    [
        b'{"usage":{"prompt_tokens":2,"completion_tokens":3}}',
        b'{"usage":{"prompt_tokens":2,"details":{"cached_tokens":1},"completion_tokens":3}}',
        b'{"usage":{"a":{"b":{"c":{"d":{"e":{}}}}},"prompt_tokens":2,"completion_tokens":3}}',  # past the fast tries
        b'{"usage":{"note":"}","prompt_tokens":2,"completion_tokens":3}}',  # a brace in a string
        b'{"usage":{"note":"' + b"{" * 500 + b'","prompt_tokens":2,"completion_tokens":3}}',
    ],
)
def test_usage_object_found_by_the_fast_path_or_the_scanner(tail: bytes) -> None:
    assert extract_usage(tail) == (2, 3)
