"""GET /v1/models: the merged model list of the providers a key may use (SPEC 4), and
GET /v1/models-by-provider: the same lists, grouped by provider name.

Each provider's list is fetched with one of its available keys and cached for
``[models] cache_ttl_s`` (300 s by default); a provider that fails is left out, not
fatal. A ``free_only`` provider lists only its free models.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from rawgw.cache import MODELS_CACHE_PREFIX
from rawgw.endpoints.local import PRIVATE
from rawgw.http.h11compat import trusted_request
from rawgw.http.reply import Reply
from rawgw.routing.upstream_auth import auth_headers
from rawgw.upstream.fetch import fetch

if TYPE_CHECKING:
    from rawgw.config import Config, GatewayKey, Provider
    from rawgw.relay.context import RelayConfig
    from rawgw.routing.router import Router

log = logging.getLogger("rawgw.local")

GLOB_CHARS = frozenset("*?[")


class ModelLister:
    """The merged listing, with each provider's upstream list cached across requests."""

    def __init__(self) -> None:
        # provider name -> (fetched at, list of model objects)
        self.cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        # provider name -> (router, upstream list, the part of it routing sends there):
        # recomputed only when the list was refetched or the config reloaded
        self._served: dict[str, tuple[Router, list[dict[str, Any]], list[dict[str, Any]]]] = {}

    async def listing(
        self, config: Config, relay: RelayConfig, key: GatewayKey | None, anthropic: bool, request_id: bytes, by_provider: bool = False
    ) -> Reply:
        import asyncio

        providers = [
            p
            for p in config.providers.values()
            if (key is None or not key.providers or p.name in key.providers) and (not anthropic or p.type == "anthropic")
        ]
        ttl = config.models.cache_ttl_s
        raw_lists = await asyncio.gather(*(self._provider_models(relay, p, request_id, ttl) for p in providers))
        router = relay.router
        lists = [self._served_models(router, p, models) for p, models in zip(providers, raw_lists)]
        if by_provider:
            return Reply(200, orjson.dumps(by_provider_list(providers, lists)), headers=PRIVATE)
        aliases = [r.match for r in config.routes if not GLOB_CHARS & set(r.match)]
        if key is not None and key.models:
            aliases = [a for a in aliases if any(fnmatchcase(a, g) for g in key.models)]
        # An alias is offered only where routing has a provider for it (Anthropic
        # shape: an anthropic one, as /v1/messages needs), allowed for the key.
        allowed = key.providers if key is not None and key.providers else None
        families = (True,) if anthropic else (False, True)
        aliases = [a for a in aliases if any(allowed is None or p.name in allowed for fam in families for p in router.candidates(a, fam)[2])]
        body = anthropic_list(lists, aliases) if anthropic else openai_list(lists, aliases)
        return Reply(200, orjson.dumps(body), headers=PRIVATE)

    def _served_models(self, router: Router, provider: Provider, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The entries of ``provider``'s upstream list that routing would send to it: its
        ``models`` globs applied, routes considered (nothing listed answers 404)."""
        memo = self._served.get(provider.name)
        if memo is not None and memo[0] is router and memo[1] is models:
            return memo[2]
        served = [m for m in models if router.serves(provider, m["id"])]
        zero = frozenset(m["id"] for m in models if zero_priced(m))
        if router.free_models.get(provider.name) != zero:
            router.free_models[provider.name] = zero
        if provider.free_only:
            served = [m for m in served if router.is_free(provider.name, m["id"])]
        self._served[provider.name] = (router, models, served)
        return served

    async def _provider_models(self, relay: RelayConfig, provider: Provider, request_id: bytes, ttl: float) -> list[dict[str, Any]]:
        now = time.time()
        cached = self.cache.get(provider.name)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        state = relay.state
        shared_key = MODELS_CACHE_PREFIX + hashlib.sha256(f"{provider.name}\0{provider.base_url}".encode()).digest()
        if state.shared and ttl > 0:
            # another process or instance may have listed it within the TTL: one GET
            raw = await state.cache_get(shared_key)
            if raw is not None:
                try:
                    found = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    found = None
                if isinstance(found, list):
                    self.cache[provider.name] = (now, found)
                    return found
        pool = relay.router.pools[provider.name]
        keys = pool.available(now)
        if not keys:
            return cached[1] if cached else []
        key = keys[0]
        if provider.type == "anthropic":
            path = f"{provider.base_path}/v1/models?limit=1000"
        else:
            path = f"{provider.base_path}/models"
        link = relay.links[provider.name]
        headers = [(b"host", link.authority), (b"accept", b"application/json"), (b"x-request-id", request_id)]
        headers += auth_headers(provider.type, key)
        headers.extend(link.headers)
        request = trusted_request(b"GET", path.encode(), headers)
        try:
            status, _, body = await fetch(link.pool, request, provider.connect_timeout_s, min(provider.first_byte_timeout_s, 30.0))
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
        self.cache[provider.name] = (now, models)
        if state.shared and ttl > 0:
            state.cache_put(shared_key, orjson.dumps(models), ttl)
        return models


def zero_priced(model: dict[str, Any]) -> bool:
    """OpenRouter's ``pricing`` object with every price zero (``"0"``); -1 means variable."""
    pricing = model.get("pricing")
    if not isinstance(pricing, dict) or not pricing:
        return False
    try:
        return all(float(v) == 0 for v in pricing.values())
    except (TypeError, ValueError):
        return False


def by_provider_list(providers: list[Provider], lists: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The Node gateway's shape: ``{NAME: {"name", "type", "models": [...]}}``, each
    provider's served models with all their upstream fields, in config order."""
    out: dict[str, Any] = {}
    for p, models in zip(providers, lists):
        out[p.name] = {"name": p.name, "type": p.type, "models": [{k: v for k, v in m.items() if k != "_provider"} for m in models]}
    return out


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
