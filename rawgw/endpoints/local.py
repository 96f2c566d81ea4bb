"""/, /health, /health/providers, /metrics, /metrics.json and /dashboard."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from rawgw.config import mask_keys
from rawgw.errors import GatewayError
from rawgw.http.reply import Reply
from rawgw.routing.policy import key_state

if TYPE_CHECKING:
    from rawgw.config import Config
    from rawgw.observe.prometheus import Stats
    from rawgw.routing.keys import KeyPool

PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
HTML = b"text/html; charset=utf-8"
# Answers that depend on the gateway key (its providers, its models, key states, its
# counters): a shared cache must never hand them to another client.
PRIVATE = ((b"cache-control", b"private, no-store"),)


class LocalContext(Protocol):
    @property
    def config(self) -> Config: ...

    def stats(self) -> Stats: ...

    def version_info(self) -> bytes: ...

    def providers_status(self) -> dict[str, Any]: ...


def answer(ctx: LocalContext, method: bytes, path: str) -> Reply:
    """The reply for a local path (raises GatewayError for 404/405)."""
    if method not in (b"GET", b"HEAD"):
        raise GatewayError(405, f"{path} accepts GET and HEAD only", headers=[(b"allow", b"GET, HEAD")])
    if path == "/health":
        return Reply(200, b'{"status":"ok"}')
    if path == "/":
        return Reply(200, ctx.version_info())
    if path == "/health/providers":
        return Reply.json(200, ctx.providers_status(), PRIVATE)
    if path in ("/metrics", "/metrics.json", "/dashboard") and not ctx.config.metrics.enabled:
        raise GatewayError(404, "metrics are disabled ([metrics] enabled = false)", code="unknown_path")
    if path == "/metrics":
        from rawgw.observe.prometheus import render

        return Reply(200, render(ctx.stats()).encode(), PROMETHEUS_TEXT, PRIVATE)
    if path == "/metrics.json":
        from rawgw.observe.prometheus import snapshot

        return Reply.json(200, snapshot(ctx.stats()), PRIVATE)
    if path == "/dashboard":
        from rawgw.observe.dashboard import PAGE

        return Reply(200, PAGE, HTML)
    raise GatewayError(404, f"unknown path {path}", code="unknown_path")


def providers_status(
    config: Config, pools: dict[str, KeyPool], now: float | None = None, cluster: dict[str, int] | None = None
) -> dict[str, Any]:
    """Each provider's breaker and keys (masked) with their state: /health/providers.

    With a state server, key states are the cluster's (mirrored) and ``cluster`` (its
    counters of the last hour) adds each key's requests over every process and instance.
    """
    now = time.time() if now is None else now
    out: dict[str, Any] = {}
    for name, provider in config.providers.items():
        pool = pools[name]
        keys = []
        for index, (k, masked) in enumerate(zip(pool.keys, mask_keys(pool.keys), strict=True)):
            st = pool.states[k]
            state = key_state(st, now)
            entry: dict[str, Any] = {
                "index": index,  # in the provider's keys = [...], as config errors name them
                "key": masked,
                "state": state,
                "requests": st.requests,
                "rate_limited": st.rate_limited,
                "failures": st.failures,
            }
            if state == "cooling":
                entry["cooldown_s"] = round(st.cooldown_until - now, 1)
            if cluster is not None:
                field = f"key:{name}:{index}:"
                entry["cluster"] = {
                    "requests": cluster.get(field + "requests", 0),
                    "rate_limited": cluster.get(field + "rate_limited", 0),
                    "failures": cluster.get(field + "failures", 0),
                }
            keys.append(entry)
        out[name] = {
            "type": provider.type,
            "base_url": provider.base_url,
            "priority": provider.priority,
            "breaker": pool.breaker.state(now),
            "keys": keys,
        }
    return {"providers": out}


def version_info(version: str) -> bytes:
    return orjson.dumps(
        {
            "name": "rawgw",
            "version": version,
            "endpoints": [
                "POST /v1/chat/completions",
                "POST /v1/completions",
                "POST /v1/embeddings",
                "POST /v1/responses",
                "POST /v1/messages",
                "POST /v1/messages/count_tokens",
                "GET /v1/models",
                "/v1/{rest}",
                "/{provider}/{rest}",
                "GET /health",
                "GET /health/providers",
                "GET /metrics",
                "GET /dashboard",
            ],
        }
    )
