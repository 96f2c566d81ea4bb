"""Endpoints the gateway answers itself: /, /health, /health/providers, /metrics,
/dashboard and the merged /v1/models list."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import h11
import orjson

from rawgw.config import Provider, mask_key
from rawgw.errors import GatewayError
from rawgw.http.headers import get_header
from rawgw.relay import Exchange
from rawgw.upstream.fetch import fetch

if TYPE_CHECKING:
    from rawgw.app import Gateway
    from rawgw.server.connection import ClientConnection

log = logging.getLogger("rawgw.local")

MODELS_TTL_S = 300.0
GLOB_CHARS = frozenset("*?[")


class LocalEndpoints:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        # provider name -> (fetched at, list of model objects)
        self.model_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    def _reply(self, client: ClientConnection, ex: Exchange, status: int, body: bytes, ctype: bytes = b"application/json") -> None:
        headers = [(b"content-type", ctype)]
        headers.extend(self.gw.response_extras(ex, routed=False))
        ex.status = status
        client.send_response(status, headers, body)
        ex._finish("ok")

    def handle(self, ex: Exchange) -> None:
        client, request, endpoint = ex.client, ex.request, ex.endpoint
        if request.method not in (b"GET", b"HEAD"):
            ex.fail(GatewayError(405, f"{endpoint.path} accepts GET only", headers=[(b"allow", b"GET, HEAD")]))
            return
        path = endpoint.path
        if path == "/health":
            self._reply(client, ex, 200, b'{"status":"ok"}')
        elif path == "/":
            self._reply(client, ex, 200, self.gw.version_info())
        elif path == "/health/providers":
            self._reply(client, ex, 200, orjson.dumps(self.providers_status()))
        elif path in ("/metrics", "/metrics.json", "/dashboard") and not self.gw.config.metrics.enabled:
            ex.fail(GatewayError(404, "metrics are disabled ([metrics] enabled = false)", code="unknown_path"))
        elif path == "/metrics":
            from rawgw.observe.prometheus import render

            self._reply(client, ex, 200, render(self.gw).encode(), b"text/plain; version=0.0.4; charset=utf-8")
        elif path == "/metrics.json":
            from rawgw.observe.prometheus import snapshot

            self._reply(client, ex, 200, orjson.dumps(snapshot(self.gw)))
        elif path == "/dashboard":
            from rawgw.observe.dashboard import PAGE

            self._reply(client, ex, 200, PAGE, b"text/html; charset=utf-8")
        else:
            ex.fail(GatewayError(404, f"unknown path {path}", code="unknown_path"))

    def providers_status(self) -> dict[str, Any]:
        now = time.time()
        out: dict[str, Any] = {}
        for name, provider in self.gw.config.providers.items():
            pool = self.gw.router.pools[name]
            keys = []
            for k in pool.keys:
                st = pool.states[k]
                state = "disabled" if st.disabled else "cooling" if st.cooldown_until > now else "active"
                entry: dict[str, Any] = {
                    "key": mask_key(k),
                    "state": state,
                    "requests": st.requests,
                    "rate_limited": st.rate_limited,
                    "failures": st.failures,
                }
                if state == "cooling":
                    entry["cooldown_s"] = round(st.cooldown_until - now, 1)
                keys.append(entry)
            out[name] = {
                "type": provider.type,
                "base_url": provider.base_url,
                "priority": provider.priority,
                "breaker": pool.breaker.state(now),
                "keys": keys,
            }
        return {"providers": out}

    # ---- /v1/models ----------------------------------------------------------

    def models(self, ex: Exchange) -> None:
        ex.client.sink = ex
        ex.task = asyncio.get_running_loop().create_task(self._models(ex))

    async def _models(self, ex: Exchange) -> None:
        try:
            anthropic = get_header(ex.headers, b"anthropic-version") is not None
            providers = [
                p
                for p in self.gw.config.providers.values()
                if (ex.key is None or not ex.key.providers or p.name in ex.key.providers) and (not anthropic or p.type == "anthropic")
            ]
            lists = await asyncio.gather(*(self._provider_models(p, ex.request_id) for p in providers))
            aliases = [r.match for r in self.gw.config.routes if not GLOB_CHARS & set(r.match)]
            if ex.key is not None and ex.key.models:
                from fnmatch import fnmatchcase

                aliases = [a for a in aliases if any(fnmatchcase(a, g) for g in ex.key.models)]
            body = anthropic_list(lists, aliases) if anthropic else openai_list(lists, aliases)
            if ex.client.closed:
                return
            self._reply(ex.client, ex, 200, orjson.dumps(body))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("models listing failed")
            ex.fail(GatewayError(502, f"could not list models: {type(exc).__name__}"))

    async def _provider_models(self, provider: Provider, request_id: bytes) -> list[dict[str, Any]]:
        now = time.time()
        cached = self.model_cache.get(provider.name)
        if cached is not None and now - cached[0] < MODELS_TTL_S:
            return cached[1]
        pool = self.gw.router.pools[provider.name]
        keys = pool.available(now)
        if not keys:
            return cached[1] if cached else []
        key = keys[0]
        if provider.type == "anthropic":
            path = f"{provider.base_path}/v1/models?limit=1000"
            auth = [(b"x-api-key", key.encode()), (b"anthropic-version", b"2023-06-01")]
        else:
            path = f"{provider.base_path}/models"
            auth = [(b"authorization", b"Bearer " + key.encode())]
        headers = [(b"host", self.gw.authority(provider)), (b"accept", b"application/json"), (b"x-request-id", request_id)]
        headers += auth + self.gw.provider_headers(provider)
        request = h11.Request(method=b"GET", target=path.encode(), headers=headers)
        try:
            status, _, body = await fetch(
                self.gw.origin_pool(provider), request, provider.connect_timeout_s, min(provider.first_byte_timeout_s, 30.0)
            )
            if status != 200:
                raise ValueError(f"status {status}")
            data = orjson.loads(body)
            items = data.get("data") if isinstance(data, dict) else data
            if not isinstance(items, list):
                raise ValueError("no data list")
            models = [m for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except Exception as exc:
            # SPEC 4 / issue 3: a provider that fails is left out, not fatal.
            log.warning("model list of provider %s unavailable: %s", provider.name, getattr(exc, "message", exc))
            return cached[1] if cached else []
        for m in models:
            m.setdefault("_provider", provider.name)
        self.model_cache[provider.name] = (now, models)
        return models


def _first_seen(lists: list[list[dict[str, Any]]], seen: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each model id once, from the first provider that lists it (priority order)."""
    for models in lists:
        for m in models:
            mid = m["id"]
            if mid not in seen:
                seen.add(mid)
                yield mid, m


def openai_list(lists: list[list[dict[str, Any]]], aliases: list[str]) -> dict[str, Any]:
    seen: set[str] = set()
    data: list[dict[str, Any]] = []
    for mid, m in _first_seen(lists, seen):
        item = {k: v for k, v in m.items() if k != "_provider"}
        if m.get("type") == "model" and "object" not in m:
            # an Anthropic-shaped entry read into the OpenAI shape
            item = {"id": mid, "object": "model", "created": _epoch(m.get("created_at")), "owned_by": "anthropic", **item}
        item.setdefault("object", "model")
        item.setdefault("created", 0)
        item.setdefault("owned_by", m.get("_provider", "rawgw"))
        data.append(item)
    for alias in aliases:
        if alias not in seen:
            seen.add(alias)
            data.append({"id": alias, "object": "model", "created": 0, "owned_by": "rawgw"})
    return {"object": "list", "data": data}


def anthropic_list(lists: list[list[dict[str, Any]]], aliases: list[str]) -> dict[str, Any]:
    seen: set[str] = set()
    data: list[dict[str, Any]] = []
    for mid, m in _first_seen(lists, seen):
        data.append(
            {
                "type": "model",
                "id": mid,
                "display_name": m.get("display_name") or m.get("name") or mid,
                "created_at": m.get("created_at") or _rfc3339(m.get("created")),
            }
        )
    for alias in aliases:
        if alias not in seen:
            seen.add(alias)
            data.append({"type": "model", "id": alias, "display_name": alias, "created_at": _rfc3339(0)})
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _rfc3339(epoch: Any) -> str:
    try:
        t = float(epoch)
    except (TypeError, ValueError):
        t = 0.0
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _epoch(text: Any) -> int:
    if not isinstance(text, str):
        return 0
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
