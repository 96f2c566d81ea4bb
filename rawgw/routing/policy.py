"""What an upstream answer means for the attempt chain and the key that carried it.

SPEC 5.3 (which outcomes move on to the next key/provider, and the order of the
attempts, same-provider retries included) and SPEC 8 (cooldown, disable, breaker) as
plain functions over a ``KeyPool``: the relay reports, this module decides. ``now`` is always passed in, so every rule is testable with an
injected clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rawgw.errors import GatewayError, retry_after_header
from rawgw.routing.keys import KeyPool, KeyState, parse_retry_after

if TYPE_CHECKING:
    from rawgw.config import Provider

Header = tuple[bytes, bytes]

# SPEC 5.3: outcomes that move on to the next key/provider before any byte reached the client.
RETRYABLE = frozenset({429, 500, 502, 503, 504, 529})
# SPEC 8: the provider refused the key itself: disable it until a reload or an admin enables it.
KEY_DISABLING = frozenset({401, 403})


def moves_on(status: int) -> bool:
    """Whether an answer with ``status`` is worth trying elsewhere (if anything is left)."""
    return status in RETRYABLE or status in KEY_DISABLING


def account(pool: KeyPool, key: str, status: int, headers: Iterable[Header], now: float) -> None:
    """Record an upstream answer's status against ``key`` and the provider's breaker."""
    if status == 429:
        pool.on_429(key, headers, now)
    elif status in KEY_DISABLING:
        pool.on_auth_failure(key)
    elif status >= 500:
        pool.on_failure(key, now)
    elif status >= 400:
        pool.on_client_error(key)
    else:
        pool.on_success(key)


def key_state(st: KeyState, now: float) -> str:
    """The one classification shown everywhere: active, cooling or disabled."""
    if st.disabled:
        return "disabled"
    if st.cooldown_until > now:
        return "cooling"
    return "active"


# ---- the attempt sequence (SPEC 5.3 plus same-provider retries) -------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One upstream attempt to make: after waiting ``wait_s`` (a retry's backoff)."""

    provider: Provider
    pool: KeyPool
    key: str
    wait_s: float = 0.0
    retry: int = 0  # 0: the provider's pass over its keys; n: its n-th retry


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the last attempt ended, as the relay reports it."""

    status: int | None  # None: no answer at all (connect error, timeout, reset)
    retry_after: float | None  # the answer's Retry-After, in seconds
    remaining: float  # seconds left until the request deadline


def retry_after(headers: Iterable[Header], now: float) -> float | None:
    """RFC 9110 §10.2.3: ``Retry-After`` as delta-seconds or an HTTP date; None if absent or bad."""
    for name, value in headers:
        if name == b"retry-after":
            return parse_retry_after(value.decode("latin-1"), now)
    return None


def retry_wait(provider: Provider, retry: int, outcome: Outcome, rand: float) -> float | None:
    """Seconds to wait before retry number ``retry`` (1-based) on ``provider``, or None:
    move on to the next provider.

    Worth a retry: no answer, or a retryable status (not 401/403: that key is disabled).
    The wait is the answer's Retry-After when it fits before the deadline (else the
    chain fails over), otherwise ``retry_backoff_s`` doubled per retry with jitter
    (``rand`` in [0, 1): between half and all of it); never reaching the deadline.
    """
    if retry > provider.max_retries:
        return None
    if outcome.status is not None and outcome.status not in RETRYABLE:
        return None
    if outcome.retry_after is not None:
        wait = outcome.retry_after
    else:
        wait = provider.retry_backoff_s * 2 ** (retry - 1) * (0.5 + rand / 2)
    return wait if wait < outcome.remaining else None


class AttemptSequence:
    """Provider/key attempts in failover order for one request (``Router.attempts``).

    Iterate it; after each attempt that failed, ``report`` how (the next step depends
    on it). Each provider's usable keys are tried once in pool order (SPEC 5.3); then,
    with ``max_retries``, up to that many more attempts on the same provider, each after
    ``retry_wait`` — a retry takes the key that is back soonest (the same one, with a
    single key), so a key resting after a 429 is never sent a request early. Without
    reports (or with ``max_retries = 0``) the sequence is exactly SPEC 5.3's.

    ``clock`` (wall time) and ``rand`` are injected: every decision is a pure function
    of them, the key states and the reports.
    """

    __slots__ = ("_clock", "_gen", "_outcome", "_pools", "_rand", "candidates")

    def __init__(
        self,
        candidates: list[Provider],
        pools: Mapping[str, KeyPool],
        clock: Callable[[], float],
        rand: Callable[[], float],
    ) -> None:
        self.candidates = candidates
        self._pools = pools
        self._clock = clock
        self._rand = rand
        self._outcome: Outcome | None = None
        self._gen = self._walk()

    def __iter__(self) -> Iterator[Attempt]:
        return self

    def __next__(self) -> Attempt:
        return next(self._gen)

    def report(self, outcome: Outcome) -> None:
        """How the attempt just yielded ended (a success needs no report: the chain stops)."""
        self._outcome = outcome

    def _walk(self) -> Iterator[Attempt]:
        clock = self._clock
        yielded = False
        now = clock()
        soonest: float | None = None
        for provider in self.candidates:
            pool = self._pools[provider.name]
            if not pool.breaker.allow(clock()):
                continue
            tried: str | None = None
            order = pool.order()
            for key in order:
                now = clock()
                if not pool.states[key].available(now):
                    continue
                yielded = True
                tried = key
                self._outcome = None
                yield Attempt(provider, pool, key)
            retry = 0
            while tried is not None and retry < provider.max_retries:
                outcome = self._outcome
                if outcome is None:
                    break
                retry += 1
                now = clock()
                wait = retry_wait(provider, retry, outcome, self._rand())
                if wait is None or pool.breaker.state(now) == "open":
                    break
                pick = _soonest_key(pool, order, tried, now)
                if pick is None:
                    break
                key, back_in = pick
                wait = max(wait, back_in)
                if wait >= outcome.remaining:
                    break
                tried = key
                self._outcome = None
                yield Attempt(provider, pool, key, wait, retry)
            wait_back = pool.soonest_return(now)
            if wait_back is not None and (soonest is None or wait_back < soonest):
                soonest = wait_back
        if not yielded:
            if soonest is not None:
                raise GatewayError(
                    429,
                    "every key of every candidate provider is cooling down after rate limits",
                    code="keys_cooling_down",
                    headers=[retry_after_header(soonest)],
                    kind="rate_limited",
                )
            names = ", ".join(p.name for p in self.candidates)
            raise GatewayError(
                503, f"no usable key or provider available ({names}): keys disabled or circuit open", code="no_available_provider"
            )


def _soonest_key(pool: KeyPool, order: list[str], last: str, now: float) -> tuple[str, float] | None:
    """The key a retry uses: the one back soonest (not disabled), the keys after ``last``
    in this request's order first; with the seconds until it is back (0: now)."""
    i = order.index(last) + 1 if last in order else 0
    best: tuple[str, float] | None = None
    for key in order[i:] + order[:i]:
        st = pool.states[key]
        if st.disabled:
            continue
        back_in = max(0.0, st.cooldown_until - now)
        if best is None or back_in < best[1]:
            best = (key, back_in)
    return best
