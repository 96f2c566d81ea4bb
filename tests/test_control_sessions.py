"""rawgw.control.sessions: id validation, counters, TTL and LRU with an injected clock,
who may see or delete a session."""

from __future__ import annotations

from typing import Any

import orjson

from rawgw.control.admin_api import Principal
from rawgw.control.sessions import SessionTracker, valid_session_id

ALICE = Principal("key", "alice")
BOB = Principal("key", "bob")
ADMIN = Principal("key", "root", admin=True)


def get(t: SessionTracker, who: Principal | None, method: str, path: str) -> tuple[int, Any]:
    r = t.handle(who, method.encode(), path)
    return r.status, orjson.loads(r.body)


def test_valid_session_id() -> None:
    assert valid_session_id(b"abc-123_X.y") == "abc-123_X.y"
    assert valid_session_id(b"x" * 128) == "x" * 128
    for bad in (None, b"", b"x" * 129, b"has space", b"tab\t", b"caf\xc3\xa9", b"nul\x00"):
        assert valid_session_id(bad) is None, bad


def test_counters_ttl_and_lru() -> None:
    now = [0.0]
    t = SessionTracker(ttl_s=10, max_sessions=2, clock=lambda: now[0])
    t.record("s1", "alice", "gpt-4o", 3, 5)
    now[0] = 4
    st = t.record("s1", "alice", "claude", 1, 1)
    assert (st.requests, st.prompt_tokens, st.completion_tokens, st.models, st.first_seen, st.last_seen) == (
        2, 4, 6, {"gpt-4o", "claude"}, 0, 4,
    )  # fmt: skip
    t.record("s2", "alice", None)
    t.record("s3", "alice", None)  # over max_sessions: s1 (least recently seen) goes
    assert [s.id for s in t.visible(ALICE)] == ["s2", "s3"]
    now[0] = 14
    assert t.visible(ALICE) == []  # idle for ttl_s
    st = t.record("s2", "alice", None)
    assert st.requests == 1 and st.first_seen == 14  # a fresh session after expiry


def test_who_sees_and_deletes() -> None:
    t = SessionTracker(clock=lambda: 5.0)
    t.record("shared", "alice", "m", 1, 2)
    t.record("shared", "bob", "m")
    t.record("mine", "alice", "m")
    status, doc = get(t, ALICE, "GET", "/session/status")
    assert status == 200 and [(s["id"], s["key_name"]) for s in doc["sessions"]] == [("mine", "alice"), ("shared", "alice")]
    status, doc = get(t, ALICE, "GET", "/session/shared")
    assert status == 200 and doc["total_tokens"] == 3 and doc["key_name"] == "alice"
    assert get(t, BOB, "GET", "/session/mine")[0] == 404
    assert get(t, BOB, "DELETE", "/session/mine")[0] == 404
    assert get(t, None, "GET", "/session/status")[0] == 401
    assert len(get(t, ADMIN, "GET", "/session/shared")[1]["sessions"]) == 2
    assert get(t, ALICE, "DELETE", "/session/shared") == (200, {"deleted": "shared"})
    assert [s.key_name for s in t.visible(ADMIN) if s.id == "shared"] == ["bob"]
    assert get(t, ADMIN, "DELETE", "/session/mine")[0] == 200
    assert get(t, ALICE, "POST", "/session/status")[0] == 405
