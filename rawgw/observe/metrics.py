"""Counters and histograms kept as plain dicts on the loop; rendered on scrape.

Prometheus text format 0.0.4. Nothing here formats text on the request path:
the hot path only increments numbers.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        out = []
        cumulative = 0
        sep = "," if labels else ""
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound}"}} {cumulative}')
        cumulative += self.counts[-1]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {cumulative}')
        lb = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{lb} {self.sum}")
        out.append(f"{name}_count{lb} {self.count}")
        return out


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], Histogram] = {}
        self.ttfb: dict[str, Histogram] = {}
        self.overhead_hist = Histogram(OVERHEAD_BUCKETS)
        self.attempts: dict[str, int] = defaultdict(int)
        self.failovers: dict[str, int] = defaultdict(int)
        self.tokens: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self.rate_limited: dict[str, int] = defaultdict(int)
        self.cache: dict[str, int] = defaultdict(int)

    def request(
        self, kind: str, provider: str, status: int, duration: float, upstream_s: float | None, attempts: int, key_name: str
    ) -> None:
        self.requests[(kind, provider, status)] += 1
        h = self.latency.get((kind, provider))
        if h is None:
            h = self.latency[(kind, provider)] = Histogram(LATENCY_BUCKETS)
        h.observe(duration)
        if upstream_s is not None and provider:
            t = self.ttfb.get(provider)
            if t is None:
                t = self.ttfb[provider] = Histogram(LATENCY_BUCKETS)
            t.observe(upstream_s)
        if attempts:
            self.attempts[provider] += attempts

    def overhead(self, seconds: float | None) -> None:
        if seconds is not None:
            self.overhead_hist.observe(seconds)

    def failover(self, provider: str) -> None:
        self.failovers[provider] += 1
