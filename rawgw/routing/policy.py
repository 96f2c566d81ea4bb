"""What an upstream answer means for the attempt chain and the key that carried it.

SPEC 5.3 (which outcomes move on to the next key/provider) and SPEC 8 (cooldown,
disable, breaker) as plain functions over a ``KeyPool``: the relay reports, this
module decides. ``now`` is always passed in, so every rule is testable with an
injected clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from rawgw.routing.keys import KeyPool, KeyState

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
