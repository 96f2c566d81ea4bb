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

    def add(self, counts: list[int], total: float, count: int) -> None:
        if len(counts) == len(self.counts):
            self.counts = [a + b for a, b in zip(self.counts, counts)]
            self.sum += total
            self.count += count

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

    # ---- multi-worker aggregation (rawgw.observe.siblings) --------------------------

    def to_doc(self) -> dict[str, object]:
        """Every counter and histogram as plain JSON-able lists (a worker's answer)."""
        return {
            "requests": [[k, p, s, n] for (k, p, s), n in self.requests.items()],
            "latency": [[k, p, h.counts, h.sum, h.count] for (k, p), h in self.latency.items()],
            "ttfb": [[p, h.counts, h.sum, h.count] for p, h in self.ttfb.items()],
            "overhead": [self.overhead_hist.counts, self.overhead_hist.sum, self.overhead_hist.count],
            "attempts": dict(self.attempts),
            "failovers": dict(self.failovers),
            "tokens": [[p, m, k, kind, n] for (p, m, k, kind), n in self.tokens.items()],
            "rate_limited": dict(self.rate_limited),
            "cache": dict(self.cache),
        }

    def add_doc(self, doc: dict[str, object]) -> None:
        """Add another worker's ``to_doc()`` into these numbers (counters and histograms sum)."""
        for k, p, s, n in doc["requests"]:  # type: ignore[attr-defined]
            self.requests[(k, p, s)] += n
        for k, p, counts, total, count in doc["latency"]:  # type: ignore[attr-defined]
            h = self.latency.get((k, p))
            if h is None:
                h = self.latency[(k, p)] = Histogram(LATENCY_BUCKETS)
            h.add(counts, total, count)
        for p, counts, total, count in doc["ttfb"]:  # type: ignore[attr-defined]
            t = self.ttfb.get(p)
            if t is None:
                t = self.ttfb[p] = Histogram(LATENCY_BUCKETS)
            t.add(counts, total, count)
        counts, total, count = doc["overhead"]  # type: ignore[misc]
        self.overhead_hist.add(counts, total, count)
        for name in ("attempts", "failovers", "rate_limited", "cache"):
            mine = getattr(self, name)
            for label, n in doc[name].items():  # type: ignore[attr-defined]
                mine[label] += n
        for p, m, k, kind, n in doc["tokens"]:  # type: ignore[attr-defined]
            self.tokens[(p, m, k, kind)] += n
