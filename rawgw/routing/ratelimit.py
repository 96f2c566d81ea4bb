"""Per gateway key token buckets (rate_limit_rpm / rate_limit_burst / rate_limit_tpm).

RPM: one request token per request, capacity ``rate_limit_burst`` (at least 1).
TPM: the request's estimated tokens (prompt estimate + ``max_tokens``) are reserved up
front from a bucket holding one minute of tokens, all or nothing together with the RPM
token, and what the response did not use is refunded at its end (``refund``).

With N pre-forked workers and no state server each process holds its own buckets, so
the configured rates and capacities are divided by N: together the workers allow what
the config says. With ``[state] url`` the buckets live on the state server
(rawgw.state.limiter) and this limiter is the fallback while it is unreachable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from rawgw.config import GatewayKey

Header = tuple[bytes, bytes]

# The headers the gateway sets on every response of a limited key; the provider's
# of the same name are dropped so that each appears once.
RATE_LIMIT_HEADERS = frozenset(
    {
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-tokens",
    }
)

# Bytes of request body counted as one prompt token in the up-front estimate: a
# deliberate over-estimate for English text (about 4 characters a token); the
# difference is refunded from the response's real usage.
BYTES_PER_TOKEN = 4


def estimate_tokens(body_size: int, parsed: dict[str, Any] | None) -> int:
    """Tokens to reserve for one request: the prompt estimate plus its completion cap."""
    cap = 0
    if parsed is not None:
        for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = parsed.get(name)
            if type(value) is int and value > 0:
                cap = value
                break
    return body_size // BYTES_PER_TOKEN + cap


def limit_headers(key: GatewayKey, remaining_requests: float, remaining_tokens: float) -> list[Header]:
    out: list[Header] = []
    if key.rate_limit_rpm > 0:
        out.append((b"x-ratelimit-limit-requests", str(key.rate_limit_rpm).encode()))
        out.append((b"x-ratelimit-remaining-requests", str(max(0, math.floor(remaining_requests))).encode()))
    if key.rate_limit_tpm > 0:
        out.append((b"x-ratelimit-limit-tokens", str(key.rate_limit_tpm).encode()))
        out.append((b"x-ratelimit-remaining-tokens", str(max(0, math.floor(remaining_tokens))).encode()))
    return out


@dataclass(slots=True)
class Bucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self.buckets: dict[str, Bucket] = {}
        self.token_buckets: dict[str, Bucket] = {}

    def limits(self, key: GatewayKey) -> tuple[float, float]:
        rate = key.rate_limit_rpm / 60.0 / self.workers
        capacity = max(1.0, (key.rate_limit_burst or 1) / self.workers)
        return rate, capacity

    def _bucket(self, key: GatewayKey, now: float) -> Bucket | None:
        if key.rate_limit_rpm <= 0:
            return None
        rate, capacity = self.limits(key)
        bucket = self.buckets.get(key.name)
        if bucket is None or bucket.rate != rate or bucket.capacity != capacity:
            bucket = self.buckets[key.name] = Bucket(capacity, rate, capacity, now)
        return bucket

    def _token_bucket(self, key: GatewayKey, now: float) -> Bucket | None:
        if key.rate_limit_tpm <= 0:
            return None
        rate = key.rate_limit_tpm / 60.0 / self.workers
        capacity = max(1.0, key.rate_limit_tpm / self.workers)
        bucket = self.token_buckets.get(key.name)
        if bucket is None or bucket.rate != rate or bucket.capacity != capacity:
            bucket = self.token_buckets[key.name] = Bucket(capacity, rate, capacity, now)
        return bucket

    def peek(self, key: GatewayKey, now: float | None = None) -> list[Header]:
        """The x-ratelimit-* headers without taking a token (gateway-local reads, issue 10.3)."""
        now = time.monotonic() if now is None else now
        r = self._bucket(key, now)
        t = self._token_bucket(key, now)
        if r is not None:
            r.refill(now)
        if t is not None:
            t.refill(now)
        return limit_headers(key, r.tokens if r else 0, t.tokens if t else 0)

    def check(self, key: GatewayKey, now: float | None = None) -> tuple[float, list[Header]]:
        """(seconds to wait or 0, the x-ratelimit-* headers for the response): one request."""
        wait, headers = self.reserve(key, 0, now)
        return (math.inf if wait is None else wait), headers

    def reserve(self, key: GatewayKey, tokens: int, now: float | None = None) -> tuple[float | None, list[Header]]:
        """Take one request token and ``tokens`` TPM tokens, all or nothing.

        Returns (0.0 when taken, else seconds until both fit, or None when ``tokens``
        exceeds the TPM bucket itself and no wait helps; the x-ratelimit-* headers).
        """
        now = time.monotonic() if now is None else now
        r = self._bucket(key, now)
        t = self._token_bucket(key, now)
        wait: float | None = 0.0
        if r is not None:
            r.refill(now)
            if r.tokens < 1.0:
                wait = (1.0 - r.tokens) / r.rate
        if t is not None:
            t.refill(now)
            if tokens > t.capacity:
                wait = None
            elif tokens > t.tokens and wait is not None:
                wait = max(wait, (tokens - t.tokens) / t.rate)
        if wait == 0.0:
            if r is not None:
                r.tokens -= 1.0
            if t is not None:
                t.tokens -= tokens
        return wait, limit_headers(key, r.tokens if r else 0, t.tokens if t else 0)

    def refund(self, key: GatewayKey, tokens: int, now: float | None = None) -> None:
        """Give back reserved TPM tokens the response did not use (capped at capacity)."""
        if tokens <= 0:
            return
        now = time.monotonic() if now is None else now
        t = self._token_bucket(key, now)
        if t is not None:
            t.refill(now)
            t.tokens = min(t.capacity, t.tokens + tokens)
