"""Provider key pools: strategy order, cooldown after 429, disable after 401/403, breakers.

Pure state, no sockets: the relay reports outcomes (``on_success``, ``on_429``,
``on_auth_failure``, ``on_failure``) and asks for the next keys to try.
State is kept per (provider, key value) so it survives a config reload (SIGHUP)
for keys whose value did not change in the same provider.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# A state change worth telling other processes (issue 12): (kind, key index or -1 for the
# breaker, until as wall time or 0, strikes). Kinds as rawgw.state.shared.KEY_EVENT_KINDS.
Listener = Callable[[str, int, float, int], None]

MAX_BACKOFF_FACTOR = 16
BREAKER_FAILURES = 5
BREAKER_WINDOW_S = 30.0
BREAKER_OPEN_S = 10.0


@dataclass(slots=True)
class KeyState:
    """Runtime state of one provider key (never holds anything printed unmasked)."""

    cooldown_until: float = 0.0  # monotonic-free wall time (time.time())
    strikes: int = 0  # consecutive 429s without Retry-After info: doubles cooldown_s
    disabled: bool = False  # 401/403 from upstream; cleared by reload
    requests: int = 0
    failures: int = 0
    rate_limited: int = 0

    def available(self, now: float) -> bool:
        return not self.disabled and self.cooldown_until <= now


@dataclass(slots=True)
class Breaker:
    """Per provider circuit breaker (SPEC 8): 5 failures in 30 s → open 10 s → half-open probe."""

    failures: list[float] = field(default_factory=list)
    open_until: float = 0.0
    probing: bool = False
    probe_started: float = 0.0
    # told of every open/close decided here (not of those applied from elsewhere)
    listener: Listener | None = None

    def state(self, now: float) -> str:
        if self.open_until > now:
            return "open"
        if self.open_until:
            return "half-open"
        return "closed"

    def allow(self, now: float) -> bool:
        st = self.state(now)
        if st == "closed":
            return True
        if st == "half-open" and (not self.probing or now - self.probe_started > BREAKER_WINDOW_S):
            # One probe at a time; a probe that never reported (client left) expires.
            self.probing = True
            self.probe_started = now
            return True
        return False

    def record_failure(self, now: float) -> None:
        if self.open_until and self.open_until <= now:
            # The half-open probe failed: open again.
            self.open_until = now + BREAKER_OPEN_S
            self.probing = False
            self._tell("breaker_open")
            return
        self.failures = [t for t in self.failures if now - t < BREAKER_WINDOW_S]
        self.failures.append(now)
        if len(self.failures) >= BREAKER_FAILURES:
            self.open_until = now + BREAKER_OPEN_S
            self.failures.clear()
            self.probing = False
            self._tell("breaker_open")

    def record_success(self) -> None:
        was_open = bool(self.open_until)
        self.failures.clear()
        self.open_until = 0.0
        self.probing = False
        if was_open:
            self._tell("breaker_closed")

    def _tell(self, kind: str) -> None:
        if self.listener is not None:
            self.listener(kind, -1, self.open_until if kind == "breaker_open" else 0.0, 0)

    def apply(self, kind: str, until: float) -> None:
        """A breaker state decided by another process (issue 12); not told back."""
        self.failures.clear()
        self.probing = False
        self.open_until = until if kind == "breaker_open" else 0.0


class KeyPool:
    """One provider's keys in strategy order, skipping resting and disabled ones."""

    def __init__(self, keys: Iterable[str], strategy: str, cooldown_s: float, states: Mapping[str, KeyState] | None = None) -> None:
        self.keys = list(keys)
        self.strategy = strategy
        self.cooldown_s = cooldown_s
        self.states: dict[str, KeyState] = {}
        # indices of keys a reload brought back from disabled: other processes are told
        self.reenabled: list[int] = []
        old = states or {}
        for i, k in enumerate(self.keys):
            st = old.get(k)
            if st is not None:
                if st.disabled:
                    self.reenabled.append(i)
                st.disabled = False  # SPEC 7: a reload brings disabled keys back
                self.states[k] = st
            else:
                self.states[k] = KeyState()
        self.next_index = 0
        self.breaker = Breaker()
        # Told of each cooldown / disable / enable decided in this process, so that a
        # shared-state backend can publish it; None in the in-process default.
        self.listener: Listener | None = None

    def order(self) -> list[str]:
        """Every key in the order this request should try them (advances the round-robin)."""
        keys = self.keys
        if self.strategy == "first" or len(keys) == 1:
            return list(keys)
        if self.strategy == "random":
            out = list(keys)
            random.shuffle(out)
            return out
        i = self.next_index % len(keys)
        self.next_index = i + 1
        return keys[i:] + keys[:i]

    def available(self, now: float) -> list[str]:
        """The usable keys, the next request's first; a read: the rotation does not move
        (a /v1/models listing must not shift which key the next request uses)."""
        keys = self.keys
        if self.strategy == "round-robin" and len(keys) > 1:
            i = self.next_index % len(keys)
            keys = keys[i:] + keys[:i]
        return [k for k in keys if self.states[k].available(now)]

    def soonest_return(self, now: float) -> float | None:
        """Seconds until the first cooling key is back (None when none is cooling)."""
        waits = [st.cooldown_until - now for st in self.states.values() if not st.disabled and st.cooldown_until > now]
        return min(waits) if waits else None

    def on_success(self, key: str) -> None:
        st = self.states[key]
        st.requests += 1
        st.strikes = 0
        self.breaker.record_success()

    def on_429(self, key: str, headers: Iterable[tuple[bytes, bytes]], now: float | None = None) -> float:
        """Put ``key`` to rest; return the rest in seconds."""
        now = time.time() if now is None else now
        st = self.states[key]
        st.requests += 1
        st.rate_limited += 1
        rest = cooldown_from_headers(headers, now)
        if rest is None:
            rest = self.cooldown_s * min(MAX_BACKOFF_FACTOR, 2**st.strikes)
            st.strikes += 1
        st.cooldown_until = now + rest
        if self.listener is not None:
            self.listener("cooldown", self.keys.index(key), st.cooldown_until, st.strikes)
        return rest

    def on_auth_failure(self, key: str) -> None:
        st = self.states[key]
        st.requests += 1
        st.failures += 1
        was = st.disabled
        st.disabled = True
        if not was and self.listener is not None:
            self.listener("disabled", self.keys.index(key), 0.0, 0)

    def enable(self, index: int) -> bool:
        """Bring key ``index`` back from disabled or cooling (admin); False if none."""
        if not 0 <= index < len(self.keys):
            return False
        st = self.states[self.keys[index]]
        st.disabled = False
        st.cooldown_until = 0.0
        st.strikes = 0
        if self.listener is not None:
            self.listener("enabled", index, 0.0, 0)
        return True

    def apply(self, kind: str, index: int, until: float, strikes: int) -> None:
        """A key state decided by another process (issue 12); not told back."""
        if kind in ("breaker_open", "breaker_closed"):
            self.breaker.apply(kind, until)
            return
        if not 0 <= index < len(self.keys):
            return  # that process has a different config: nothing to map it to
        st = self.states[self.keys[index]]
        if kind == "cooldown":
            st.cooldown_until = until
            st.strikes = strikes
        elif kind == "disabled":
            st.disabled = True
        elif kind == "enabled":
            st.disabled = False
            st.cooldown_until = 0.0
            st.strikes = 0

    def local_events(self, now: float) -> list[tuple[str, int, float, int]]:
        """The states worth republishing (a state server that restarted empty)."""
        out: list[tuple[str, int, float, int]] = []
        for i, k in enumerate(self.keys):
            st = self.states[k]
            if st.disabled:
                out.append(("disabled", i, 0.0, 0))
            elif st.cooldown_until > now:
                out.append(("cooldown", i, st.cooldown_until, st.strikes))
        if self.breaker.open_until > now:
            out.append(("breaker_open", -1, self.breaker.open_until, 0))
        return out

    def on_failure(self, key: str | None, now: float | None = None) -> None:
        """Connect error or 5xx: counts toward the provider's breaker, not the key."""
        if key is not None:
            st = self.states[key]
            st.requests += 1
            st.failures += 1
        self.breaker.record_failure(time.time() if now is None else now)

    def on_client_error(self, key: str) -> None:
        """4xx other than 401/403/429: the key is fine, the breaker does not count it."""
        st = self.states[key]
        st.requests += 1


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """OpenAI's ``x-ratelimit-reset-*`` durations: ``1m30s``, ``20s``, ``6ms``, ``0.5s``."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        value = float(m.group(1))
        unit = m.group(2)
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = m.end()
    if pos != len(text) or pos == 0:
        return None
    return total


_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(text: str, now: float) -> float | None:
    """RFC 9110 §10.2.3 ``Retry-After``: delta-seconds (a fraction tolerated) or an
    HTTP date, as seconds from ``now``; None when it is neither. Strict on purpose:
    Python's float() would take ``inf`` (a key resting forever), ``nan``, ``-5``, ``1e9``."""
    text = text.strip()
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def cooldown_from_headers(headers: Iterable[tuple[bytes, bytes]], now: float) -> float | None:
    """SPEC 8 cooldown sources, first found wins; None when none is usable."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name not in found:
            found[name] = value.decode("latin-1").strip()
    ra = found.get(b"retry-after")
    if ra:
        rest = parse_retry_after(ra, now)
        if rest is not None:
            return rest
    for name in (b"x-ratelimit-reset-requests", b"x-ratelimit-reset-tokens"):
        v = found.get(name)
        if v:
            d = parse_duration(v)
            if d is not None:
                return d
    v = found.get(b"x-ratelimit-reset")
    if v:
        try:
            ms = float(v)
            # OpenRouter: milliseconds since the epoch.
            return max(0.0, ms / 1000.0 - now)
        except ValueError:
            pass
    v = found.get(b"anthropic-ratelimit-requests-reset")
    if v:
        try:
            when = datetime.fromisoformat(v.replace("Z", "+00:00"))
            return max(0.0, when.timestamp() - now)
        except ValueError:
            pass
    return None
