"""Render the gateway's counters as Prometheus text format 0.0.4 and as JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from rawgw.observe import process
from rawgw.observe.metrics import LATENCY_BUCKETS, Histogram, Metrics, _esc


@dataclass(frozen=True, slots=True)
class Stats:
    """What /metrics and /metrics.json show, gathered by the gateway at scrape time."""

    metrics: Metrics
    started: float  # time.time() at start
    open_connections: int
    active_streams: int
    pools: dict[str, tuple[int, int]]  # origin label -> (open, idle)
    providers: dict[str, Any]  # /health/providers' "providers"
    recent_errors: list[dict[str, object]]
    log_dropped: int
    extra_lines: list[str] = dataclasses.field(default_factory=list)  # rawgw_state_*, rawgw_workers_answered
    cluster: dict[str, int] | None = None  # cluster-wide counters of the last hour ([state] url)


def render(stats: Stats) -> str:
    m = stats.metrics
    out: list[str] = []

    def head(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    head("rawgw_requests_total", "counter", "Requests answered, by endpoint kind, provider and status.")
    for (kind, provider, status), n in sorted(m.requests.items()):
        out.append(f'rawgw_requests_total{{route="{_esc(kind)}",provider="{_esc(provider)}",status="{status}"}} {n}')
    head("rawgw_request_duration_seconds", "histogram", "Time from request head to the end of the response.")
    for (kind, provider), h in sorted(m.latency.items()):
        out.extend(h.render("rawgw_request_duration_seconds", f'route="{_esc(kind)}",provider="{_esc(provider)}"'))
    head("rawgw_upstream_ttfb_seconds", "histogram", "Upstream time from request sent to response head.")
    for provider, h in sorted(m.ttfb.items()):
        out.extend(h.render("rawgw_upstream_ttfb_seconds", f'provider="{_esc(provider)}"'))
    head("rawgw_overhead_seconds", "histogram", "The gateway's own time per proxied request (excluding upstream time).")
    out.extend(m.overhead_hist.render("rawgw_overhead_seconds", ""))
    head("rawgw_upstream_attempts_total", "counter", "Upstream attempts, by provider of the answering attempt.")
    for provider, n in sorted(m.attempts.items()):
        out.append(f'rawgw_upstream_attempts_total{{provider="{_esc(provider)}"}} {n}')
    head("rawgw_failovers_total", "counter", "Failed upstream attempts that moved on, by provider.")
    for provider, n in sorted(m.failovers.items()):
        out.append(f'rawgw_failovers_total{{provider="{_esc(provider)}"}} {n}')
    head("rawgw_tokens_total", "counter", "Tokens reported in upstream usage, by provider, model, key name and kind.")
    for (provider, model, key_name, kind), n in sorted(m.tokens.items()):
        out.append(f'rawgw_tokens_total{{provider="{_esc(provider)}",model="{_esc(model)}",key_name="{_esc(key_name)}",kind="{kind}"}} {n}')
    head("rawgw_rate_limited_total", "counter", "Requests refused by a gateway key's rate limit.")
    for key_name, n in sorted(m.rate_limited.items()):
        out.append(f'rawgw_rate_limited_total{{key_name="{_esc(key_name)}"}} {n}')
    head("rawgw_cache_total", "counter", "Response cache look-ups by result.")
    for result, n in sorted(m.cache.items()):
        out.append(f'rawgw_cache_total{{result="{result}"}} {n}')
    head("rawgw_provider_keys", "gauge", "Provider keys by state (active, cooling, disabled).")
    for name, provider in stats.providers.items():
        counts = {"active": 0, "cooling": 0, "disabled": 0}
        for k in provider["keys"]:
            counts[k["state"]] += 1
        for state, n in counts.items():
            out.append(f'rawgw_provider_keys{{provider="{_esc(name)}",state="{state}"}} {n}')
    head("rawgw_open_connections", "gauge", "Open client connections.")
    out.append(f"rawgw_open_connections {stats.open_connections}")
    head("rawgw_active_streams", "gauge", "Responses being relayed right now.")
    out.append(f"rawgw_active_streams {stats.active_streams}")
    head("rawgw_upstream_pool_connections", "gauge", "Upstream connections per origin (open, idle).")
    for authority, (open_n, idle_n) in sorted(stats.pools.items()):
        out.append(f'rawgw_upstream_pool_connections{{origin="{_esc(authority)}",state="open"}} {open_n}')
        out.append(f'rawgw_upstream_pool_connections{{origin="{_esc(authority)}",state="idle"}} {idle_n}')
    proc = process.read()  # one /proc read for both families
    head("rawgw_process_open_fds", "gauge", "File descriptors open in this process (leak check).")
    out.append(f"rawgw_process_open_fds {proc.open_fds if proc is not None else -1}")
    head("rawgw_asyncio_tasks", "gauge", "asyncio tasks alive in this process (leak check).")
    out.append(f"rawgw_asyncio_tasks {len(asyncio.all_tasks())}")
    head("rawgw_log_records_dropped_total", "counter", "Log records dropped because the log queue was full.")
    out.append(f"rawgw_log_records_dropped_total {stats.log_dropped}")
    out.extend(stats.extra_lines)
    process.render(out, proc)
    return "\n".join(out) + "\n"


def _quantile(h: Histogram, q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (what Prometheus would estimate)."""
    if h.count == 0:
        return None
    target = q * h.count
    cumulative = 0
    for bound, n in zip(h.buckets, h.counts):
        cumulative += n
        if cumulative >= target:
            return bound
    return h.buckets[-1]


def snapshot(stats: Stats) -> dict[str, Any]:
    """What /dashboard shows; the page computes rates from successive snapshots."""
    m = stats.metrics
    by_status: dict[str, int] = {}
    by_provider: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for (kind, provider, status), n in m.requests.items():
        by_kind[kind] = by_kind.get(kind, 0) + n
        if kind == "local":
            continue  # the dashboard's own polls are not traffic
        by_status[str(status)] = by_status.get(str(status), 0) + n
        if provider:
            by_provider[provider] = by_provider.get(provider, 0) + n
    merged = Histogram(LATENCY_BUCKETS)
    for (kind, _), h in m.latency.items():
        if kind == "local":
            continue
        merged.add(h.counts, h.sum, h.count)
    proc = process.read()
    tokens: dict[str, dict[str, int]] = {}
    for (provider, model, _key, kind), n in m.tokens.items():
        entry = tokens.setdefault(f"{provider}/{model}", {"prompt": 0, "completion": 0})
        entry[kind] = entry.get(kind, 0) + n
    return {
        "time": time.time(),
        "uptime_s": round(time.time() - stats.started, 3),
        "requests_total": merged.count,
        "by_status": by_status,
        "by_kind": by_kind,
        "by_provider": by_provider,
        "latency_ms": {
            "mean": round(merged.sum / merged.count * 1000, 3) if merged.count else None,
            "p50": _ms(_quantile(merged, 0.5)),
            "p99": _ms(_quantile(merged, 0.99)),
        },
        "overhead_ms": {"p50": _ms(_quantile(m.overhead_hist, 0.5)), "p99": _ms(_quantile(m.overhead_hist, 0.99))},
        "tokens": tokens,
        "tokens_total": {"prompt": sum(v["prompt"] for v in tokens.values()), "completion": sum(v["completion"] for v in tokens.values())},
        "cache": dict(m.cache),
        "rate_limited": sum(m.rate_limited.values()),
        "failovers": sum(m.failovers.values()),
        "open_connections": stats.open_connections,
        "active_streams": stats.active_streams,
        "providers": stats.providers,
        "recent_errors": stats.recent_errors[-20:],
        "process": None if proc is None else dataclasses.asdict(proc),
        "cluster": cluster_view(stats.cluster),
    }


def cluster_view(counters: dict[str, int] | None) -> dict[str, Any] | None:
    """The state server's counters of the last hour, summed over every process and
    instance sharing it (None without a state server, or before the first read)."""
    if counters is None:
        return None
    by_status: dict[str, int] = {}
    by_provider: dict[str, int] = {}
    tokens = {"prompt": 0, "completion": 0}
    for name, n in counters.items():
        kind, _, rest = name.partition(":")
        if kind == "status":
            by_status[rest] = n
        elif kind == "provider":
            provider, _, what = rest.rpartition(":")
            if what == "requests":
                by_provider[provider] = n
            elif what == "prompt_tokens":
                tokens["prompt"] += n
            elif what == "completion_tokens":
                tokens["completion"] += n
    return {
        "window_s": 3600,
        "requests_total": counters.get("requests", 0),
        "by_status": by_status,
        "by_provider": by_provider,
        "tokens_total": tokens,
        "rate_limited": counters.get("rate_limited", 0),
        "cache": {"hit": counters.get("cache:hit", 0), "miss": counters.get("cache:miss", 0)},
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
