"""Issue 13 point 2, level 1: the same-provider retry decisions as pure functions of an
injected clock, jitter source, key states and reported outcomes (no sockets).

The chain (relay/attempts.py) reports each failed attempt with ``Outcome`` and asks for
the next ``Attempt``; these tests play the chain's part.
"""

from __future__ import annotations

from typing import Any

import pytest

from rawgw.config import parse_config
from rawgw.routing import policy
from rawgw.routing.policy import Attempt, Outcome, retry_after, retry_wait
from rawgw.routing.router import Endpoint, Plan, Router

NOW = 1_800_000_000.0
K1 = "sk-retry-key-one-000011"
K2 = "sk-retry-key-two-000022"


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def router(**providers: dict[str, Any]) -> Router:
    doc = {"providers": {name: {"type": "openai", "base_url": "http://127.0.0.1:9/v1", **p} for name, p in providers.items()}}
    return Router(parse_config(doc, {}))


def plan(r: Router, *names: str) -> Plan:
    return Plan(Endpoint("routed", "/v1/chat/completions", "chat/completions"), [r.providers[n] for n in names], b"{}")


def answer(r: Router, step: Attempt, status: int | None, clock: Clock, *, headers: list[tuple[bytes, bytes]] | None = None, remaining: float = 600.0) -> Outcome:
    """What the chain does with an answer: account it against the key, then report it."""
    hdrs = headers or []
    if status is None:
        step.pool.on_failure(step.key, clock())
    else:
        policy.account(step.pool, step.key, status, hdrs, clock())
    return Outcome(status, retry_after(hdrs, clock()), remaining)


def run(r: Router, p: Plan, statuses: list[int | None], clock: Clock, rand: float = 0.0, **kw: Any) -> list[Attempt]:
    """Answer each attempt with the next status; advance the clock by each wait."""
    seq = r.attempts(p, clock=clock, rand=lambda: rand)
    out: list[Attempt] = []
    for step in seq:
        clock.t += step.wait_s
        out.append(step)
        status = statuses[len(out) - 1] if len(out) <= len(statuses) else 200
        if status == 200:
            break
        seq.report(answer(r, step, status, clock, **kw))
    return out


def test_one_key_and_max_retries_2_is_three_attempts_on_the_same_key() -> None:
    r = router(a={"keys": [K1], "max_retries": 2, "retry_backoff_s": 1.0})
    clock = Clock()
    steps = run(r, plan(r, "a"), [500, 502, 503], clock)
    assert [(s.key, s.retry) for s in steps] == [(K1, 0), (K1, 1), (K1, 2)]
    # exponential: 1 s then 2 s, times the jitter factor (rand 0 -> half)
    assert [s.wait_s for s in steps] == [0.0, 0.5, 1.0]
    assert clock.t == NOW + 1.5


def test_jitter_stays_between_half_and_all_of_the_backoff() -> None:
    for rand, first in ((0.0, 1.0), (0.5, 1.5), (0.999, 1.999)):
        r = router(a={"keys": [K1], "max_retries": 3, "retry_backoff_s": 2.0})  # a fresh breaker each time
        steps = run(r, plan(r, "a"), [500, 500, 500, 500], Clock(), rand=rand)
        assert [s.wait_s for s in steps] == pytest.approx([0.0, first, first * 2, first * 4])


def test_without_max_retries_the_sequence_is_spec_5_3() -> None:
    r = router(a={"keys": [K1, K2], "key_strategy": "first"}, b={"keys": [K1]})
    steps = run(r, plan(r, "a", "b"), [500, 500, 500], Clock())
    assert [(s.provider.name, s.key, s.wait_s) for s in steps] == [("a", K1, 0.0), ("a", K2, 0.0), ("b", K1, 0.0)]
    # and iterated without any report, each pair exactly once
    r2 = router(a={"keys": [K1, K2], "key_strategy": "first", "max_retries": 5}, b={"keys": [K1]})
    assert [(s.provider.name, s.key) for s in r2.attempts(plan(r2, "a", "b"), clock=Clock())] == [("a", K1), ("a", K2), ("b", K1)]


def test_retries_come_after_each_key_had_its_turn_and_rotate_from_the_last() -> None:
    r = router(a={"keys": [K1, K2], "key_strategy": "first", "max_retries": 2, "retry_backoff_s": 0.1}, b={"keys": [K1]})
    steps = run(r, plan(r, "a", "b"), [500, 500, 500, 500, 500], Clock())
    assert [(s.provider.name, s.key, s.retry) for s in steps] == [("a", K1, 0), ("a", K2, 0), ("a", K1, 1), ("a", K2, 2), ("b", K1, 0)]


def test_retry_after_under_the_deadline_is_honoured_and_the_429_rests_the_key_first() -> None:
    r = router(a={"keys": [K1], "max_retries": 1, "retry_backoff_s": 0.1}, b={"keys": [K2]})
    clock = Clock()
    seq = r.attempts(plan(r, "a", "b"), clock=clock, rand=lambda: 0.0)
    first = next(seq)
    seq.report(answer(r, first, 429, clock, headers=[(b"retry-after", b"3")], remaining=10.0))
    # the key rests before any retry is decided: it is not available now
    assert not first.pool.states[K1].available(clock())
    second = next(seq)
    assert (second.provider.name, second.key, second.wait_s, second.retry) == ("a", K1, 3.0, 1)
    clock.t += second.wait_s
    assert second.pool.states[K1].available(clock())  # back exactly when the retry goes


def test_retry_after_as_an_http_date() -> None:
    from email.utils import formatdate

    assert retry_after([(b"retry-after", formatdate(NOW + 7, usegmt=True).encode())], NOW) == pytest.approx(7.0)
    assert retry_after([(b"retry-after", b"soon")], NOW) is None
    assert retry_after([], NOW) is None


def test_retry_after_beyond_the_deadline_fails_over_instead() -> None:
    r = router(a={"keys": [K1], "max_retries": 3}, b={"keys": [K2]})
    clock = Clock()
    seq = r.attempts(plan(r, "a", "b"), clock=clock)
    first = next(seq)
    seq.report(answer(r, first, 503, clock, headers=[(b"retry-after", b"30")], remaining=20.0))
    second = next(seq)
    assert (second.provider.name, second.wait_s) == ("b", 0.0)


def test_backoff_is_capped_by_the_deadline() -> None:
    r = router(a={"keys": [K1], "max_retries": 3, "retry_backoff_s": 1.0}, b={"keys": [K2]})
    clock = Clock()
    seq = r.attempts(plan(r, "a", "b"), clock=clock, rand=lambda: 0.0)
    first = next(seq)
    seq.report(answer(r, first, 500, clock, remaining=0.4))  # a 0.5 s backoff would not fit
    assert next(seq).provider.name == "b"


def test_a_429_without_a_short_reset_fails_over_rather_than_wait_hours() -> None:
    r = router(a={"keys": [K1], "max_retries": 2, "cooldown_s": 3600}, b={"keys": [K2]})
    clock = Clock()
    steps = run(r, plan(r, "a", "b"), [429, 200], clock, remaining=600.0)
    assert [s.provider.name for s in steps] == ["a", "b"]


def test_a_short_rate_limit_reset_is_waited_for() -> None:
    """x-ratelimit-reset-requests: 200ms puts the key to rest that long; the retry waits
    for whichever is later, its backoff or the key's return."""
    r = router(a={"keys": [K1], "max_retries": 1, "retry_backoff_s": 0.1})
    clock = Clock()
    steps = run(r, plan(r, "a"), [429, 200], clock, headers=[(b"x-ratelimit-reset-requests", b"200ms")])
    assert len(steps) == 2 and steps[1].wait_s == pytest.approx(0.2)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_not_retried(status: int) -> None:
    r = router(a={"keys": [K1], "max_retries": 3}, b={"keys": [K2]})
    steps = run(r, plan(r, "a", "b"), [status, 200], Clock())
    assert [s.provider.name for s in steps] == ["a", "b"]


def test_no_answer_at_all_is_retried() -> None:
    r = router(a={"keys": [K1], "max_retries": 1, "retry_backoff_s": 0.2})
    steps = run(r, plan(r, "a"), [None, 200], Clock(), rand=0.0)
    assert [(s.key, s.wait_s) for s in steps] == [(K1, 0.0), (K1, 0.1)]


def test_an_open_breaker_stops_the_retries() -> None:
    r = router(a={"keys": [K1], "max_retries": 10, "retry_backoff_s": 0.01}, b={"keys": [K2]})
    steps = run(r, plan(r, "a", "b"), [500] * 20, Clock())
    # five 5xx within 30 s open the breaker (SPEC 8): then the chain moves on
    assert [s.provider.name for s in steps] == ["a"] * 5 + ["b"]


def test_retry_wait_function() -> None:
    r = router(a={"keys": [K1], "max_retries": 2, "retry_backoff_s": 4.0})
    p = r.providers["a"]
    assert retry_wait(p, 1, Outcome(500, None, 100.0), 0.0) == 2.0
    assert retry_wait(p, 2, Outcome(None, None, 100.0), 0.0) == 4.0
    assert retry_wait(p, 3, Outcome(500, None, 100.0), 0.0) is None  # beyond max_retries
    assert retry_wait(p, 1, Outcome(400, None, 100.0), 0.0) is None  # not retryable
    assert retry_wait(p, 1, Outcome(429, 1.5, 100.0), 0.0) == 1.5  # Retry-After instead of backoff
    assert retry_wait(p, 1, Outcome(429, 100.0, 100.0), 0.0) is None  # not before the deadline
