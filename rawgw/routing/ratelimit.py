"""Per gateway key token buckets (rate_limit_rpm / rate_limit_burst).

With N pre-forked workers each process holds its own buckets, so the configured
rate and burst are divided by N: together the workers allow what the config says.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from rawgw.config import GatewayKey

# The headers the gateway sets on every response of a limited key; the provider's
# of the same name are dropped so that each appears once.
RATE_LIMIT_HEADERS = frozenset({b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests"})


@dataclass(slots=True)
class Bucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self.buckets: dict[str, Bucket] = {}

    def limits(self, key: GatewayKey) -> tuple[float, float]:
        rate = key.rate_limit_rpm / 60.0 / self.workers
        capacity = max(1.0, (key.rate_limit_burst or 1) / self.workers)
        return rate, capacity

    def peek(self, key: GatewayKey, now: float | None = None) -> list[tuple[bytes, bytes]]:
        """The x-ratelimit-* headers without taking a token (gateway-local reads, issue 10.3)."""
        now = time.monotonic() if now is None else now
        rate, capacity = self.limits(key)
        bucket = self.buckets.get(key.name)
        if bucket is None or bucket.rate != rate or bucket.capacity != capacity:
            tokens = capacity
        else:
            tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * rate)
        return [
            (b"x-ratelimit-limit-requests", str(key.rate_limit_rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(math.floor(tokens)).encode()),
        ]

    def check(self, key: GatewayKey, now: float | None = None) -> tuple[float, list[tuple[bytes, bytes]]]:
        """(seconds to wait or 0, the x-ratelimit-* headers for the response)."""
        now = time.monotonic() if now is None else now
        rate, capacity = self.limits(key)
        bucket = self.buckets.get(key.name)
        if bucket is None or bucket.rate != rate or bucket.capacity != capacity:
            bucket = self.buckets[key.name] = Bucket(capacity, rate, capacity, now)
        wait = bucket.take(now)
        headers = [
            (b"x-ratelimit-limit-requests", str(key.rate_limit_rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(math.floor(bucket.tokens)).encode()),
        ]
        return wait, headers
