"""Routing policy as plain functions over the config: which endpoint, which providers,
which keys, which body. Nothing here touches a socket.

Data flow: ``classify`` (path → Endpoint) → ``plan`` (endpoint + key + body → Plan)
→ ``attempts`` (Plan → provider/key pairs in failover order, live key state).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import orjson

from rawgw.config import Config, GatewayKey, Provider, Route
from rawgw.errors import GatewayError, retry_after_header
from rawgw.routing.keys import KeyPool, KeyState
from rawgw.routing.rewrite import RawJSON, member_span, rewrite_body
from rawgw.routing.validate import validate_body

# Endpoints routed by the body's ``model`` (SPEC 4); value: Anthropic-only?
ROUTED: dict[str, bool] = {
    "chat/completions": False,
    "completions": False,
    "embeddings": False,
    "responses": False,
    "messages": True,
    "messages/count_tokens": True,
}

LOCAL_PATHS = frozenset({"/", "/health", "/health/providers", "/metrics", "/metrics.json", "/dashboard"})
# The control plane (rawgw.control): admin page and API, sign-in, sessions. Their names are
# reserved provider names (config.RESERVED_PROVIDER_NAMES), so no provider route is shadowed.
CONTROL_PREFIXES = ("/admin/", "/auth/", "/session/")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a request target names. ``kind``: routed, models, passthrough, provider, local, control, unknown."""

    kind: str
    path: str
    rest: str = ""  # after /v1/ (or after /{provider}/)
    query: str = ""
    provider: str = ""  # for kind == "provider"
    anthropic_only: bool = False


@dataclass(slots=True)
class Plan:
    """The routing decision for one request."""

    endpoint: Endpoint
    candidates: list[Provider]
    body: bytes
    client_model: str | None = None
    upstream_model: str | None = None
    route: Route | None = None
    parsed: dict[str, object] | None = None
    bodies: dict[tuple[str | None, bool], bytes] = field(default_factory=dict)  # see body_for
    stream: bool = False


class Router:
    """Routing policy for one loaded config, plus the key state carried across reloads."""

    def __init__(self, config: Config, old: Router | None = None) -> None:
        self.config = config
        self.providers = config.providers
        self.by_priority = sorted(config.providers.values(), key=lambda p: p.priority)
        # Key state carries over per (provider, key value): two providers sharing a key
        # value keep separate cooldowns across a reload, as before it.
        prior: dict[str, dict[str, KeyState]] = {}
        if old is not None:
            prior = {name: pool.states for name, pool in old.pools.items()}
        self.pools: dict[str, KeyPool] = {
            name: KeyPool(p.keys, p.key_strategy, p.cooldown_s, prior.get(name)) for name, p in config.providers.items()
        }
        if old is not None:
            for name, pool in self.pools.items():
                old_pool = old.pools.get(name)
                if old_pool is not None:
                    pool.breaker = old_pool.breaker
                    pool.next_index = old_pool.next_index

    # ---- endpoints ----------------------------------------------------------

    def classify(self, target: bytes) -> Endpoint:
        raw = target.decode("latin-1")
        path, _, query = raw.partition("?")
        if path in LOCAL_PATHS:
            return Endpoint("local", path, query=query)
        if path == "/admin" or path.startswith(CONTROL_PREFIXES):
            return Endpoint("control", path, query=query)
        rest: str | None = None
        if path.startswith("/v1/"):
            rest = path[4:]
        elif path.startswith("/api/v1/"):
            rest = path[8:]
        elif path in ("/chat/completions", "/completions", "/embeddings", "/responses"):
            rest = path[1:]
        if rest is not None:
            if rest in ROUTED:
                return Endpoint("routed", path, rest, query, anthropic_only=ROUTED[rest])
            if rest == "models":
                return Endpoint("models", path, rest, query)
            return Endpoint("passthrough", path, safe_rest(rest), query)
        name, sep, rest = path[1:].partition("/")
        if name in self.providers and sep:
            return Endpoint("provider", path, safe_rest(rest), query, provider=name)
        return Endpoint("unknown", path, query=query)

    # ---- the decision -------------------------------------------------------

    def plan(self, endpoint: Endpoint, key: GatewayKey | None, body: bytes) -> Plan:
        if endpoint.kind == "routed":
            return self._plan_routed(endpoint, key, body)
        if endpoint.kind == "provider":
            provider = self.providers[endpoint.provider]
            if key is not None and key.providers and provider.name not in key.providers:
                raise GatewayError(403, f"key '{key.name}' may not use provider '{provider.name}'", code="provider_not_allowed")
            return Plan(endpoint, [provider], body)
        # passthrough and models: the highest-priority provider allowed for the key
        allowed = [p for p in self.by_priority if key is None or not key.providers or p.name in key.providers]
        if not allowed:
            raise GatewayError(403, f"key '{key.name if key else ''}' may not use any provider", code="provider_not_allowed")
        return Plan(endpoint, allowed[:1], body)

    def _plan_routed(self, endpoint: Endpoint, key: GatewayKey | None, body: bytes) -> Plan:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            parsed = _parse_wide(body, exc)
        if not isinstance(parsed, dict):
            raise GatewayError(400, "request body must be a JSON object", code="invalid_json")
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            raise GatewayError(400, "model: required, a non-empty string", code="invalid_model")
        validate_body(endpoint.rest, parsed)
        if key is not None and key.models and not any(fnmatchcase(model, g) for g in key.models):
            raise GatewayError(403, f"key '{key.name}' may not use model '{model}'", code="model_not_allowed")
        route, upstream_model, candidates = self.candidates(model, endpoint.anthropic_only)
        if key is not None and key.providers:
            narrowed = [p for p in candidates if p.name in key.providers]
            if candidates and not narrowed:
                raise GatewayError(403, f"key '{key.name}' may not use the providers serving model '{model}'", code="provider_not_allowed")
            candidates = narrowed
        if not candidates:
            raise GatewayError(404, f"no provider serves model '{model}'", code="model_not_found")
        return Plan(
            endpoint,
            candidates,
            body,
            client_model=model,
            upstream_model=upstream_model,
            route=route,
            parsed=parsed,
            stream=parsed.get("stream") is True,
        )

    def candidates(self, model: str, anthropic_only: bool) -> tuple[Route | None, str, list[Provider]]:
        """SPEC 5.2: the first route fitting ``model``, the upstream model, and the providers
        that may serve it, before a virtual key narrows them (also what /v1/models lists)."""
        route = next((r for r in self.config.routes if fnmatchcase(model, r.match)), None)
        upstream_model = route.model if route is not None and route.model else model
        if route is not None and route.providers:
            # dict.fromkeys: a provider named twice is still one candidate (SPEC 5.3)
            candidates = [self.providers[n] for n in dict.fromkeys(route.providers)]
            if anthropic_only:
                candidates = [p for p in candidates if p.type == "anthropic"]
        else:
            candidates = [
                p
                for p in self.by_priority
                if (p.type == "anthropic") == anthropic_only and any(fnmatchcase(upstream_model, g) for g in p.models)
            ]
        return route, upstream_model, candidates

    def serves(self, provider: Provider, model: str) -> bool:
        """Would a request for ``model`` be sent to ``provider``? (its own endpoint family)"""
        name = provider.name
        return any(p.name == name for p in self.candidates(model, provider.type == "anthropic")[2])

    def body_for(self, plan: Plan, provider: Provider) -> bytes:
        """SPEC 5.5: rewrite only when needed; otherwise the exact bytes received."""
        route = plan.route
        upstream_model = self.model_for(plan, provider)
        # The body depends on exactly these two: providers that agree on both share it.
        cache_key = (upstream_model, provider.type == "openrouter")
        cached = plan.bodies.get(cache_key)
        if cached is not None:
            return cached
        body = plan.body
        parsed = plan.parsed
        if parsed is not None:
            changes: dict[str, object] = {}
            if upstream_model != plan.client_model:
                changes["model"] = upstream_model
            if provider.type == "openrouter" and route is not None and route.provider_order:
                prov = parsed.get("provider")
                has_order = isinstance(prov, dict) and "order" in prov
                if not has_order or route.force_provider_order:
                    order = list(route.provider_order)
                    span = member_span(body, "provider") if isinstance(prov, dict) else None
                    if span is not None:
                        # splice inside the client's provider object: its other fields stay as sent
                        changes["provider"] = RawJSON(rewrite_body(body[span[0] : span[1]], {"order": order}))
                    else:
                        changes["provider"] = {"order": order}
            if changes:
                body = rewrite_body(body, changes)
        plan.bodies[cache_key] = body
        return body

    def model_for(self, plan: Plan, provider: Provider) -> str | None:
        """The model sent to ``provider``: the route's per-provider model, else its model."""
        route = plan.route
        if route is not None and route.provider_models:
            for name, model in route.provider_models:
                if name == provider.name:
                    return model
        return plan.upstream_model

    def upstream_path(self, endpoint: Endpoint, provider: Provider) -> bytes:
        """SPEC 5.4 URL joining."""
        base = provider.base_path
        if endpoint.kind == "provider":
            path = f"{base}/{endpoint.rest}"
        elif provider.type == "anthropic":
            path = f"{base}/v1/{endpoint.rest}"
        else:
            path = f"{base}/{endpoint.rest}"
        if endpoint.query:
            path += "?" + endpoint.query
        return path.encode("latin-1")

    # ---- attempts -----------------------------------------------------------

    def attempts(self, plan: Plan, clock: Callable[[], float] = time.time) -> Iterator[tuple[Provider, KeyPool, str]]:
        """Provider/key pairs in failover order; each pair at most once per request.

        ``clock`` gives wall time (injectable for tests). Availability is checked lazily, so a 429 on one attempt makes later
        attempts skip that key. When nothing at all is available because keys
        are resting, raises 429 with the soonest return (never hammers a resting key).
        """
        yielded = False
        now = clock()
        soonest: float | None = None
        for provider in plan.candidates:
            pool = self.pools[provider.name]
            if not pool.breaker.allow(clock()):
                continue
            for key in pool.order():
                now = clock()
                if not pool.states[key].available(now):
                    continue
                yielded = True
                yield provider, pool, key
            wait = pool.soonest_return(now)
            if wait is not None and (soonest is None or wait < soonest):
                soonest = wait
        if not yielded:
            if soonest is not None:
                raise GatewayError(
                    429,
                    "every key of every candidate provider is cooling down after rate limits",
                    code="keys_cooling_down",
                    headers=[retry_after_header(soonest)],
                    kind="rate_limited",
                )
            names = ", ".join(p.name for p in plan.candidates)
            raise GatewayError(
                503, f"no usable key or provider available ({names}): keys disabled or circuit open", code="no_available_provider"
            )


def _parse_wide(body: bytes, exc: Exception) -> Any:
    """orjson refuses integers beyond 64 bits, which JSON allows: fall back to json."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise GatewayError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None


def safe_rest(rest: str) -> str:
    """A path tail that cannot escape the provider's base path (``..``, ``//``, ``\\``).

    Checked after percent-decoding, since the upstream may decode ``%2e%2e%2f``.
    """
    decoded = urllib.parse.unquote(rest)
    if "\\" in decoded or rest.startswith("/") or decoded.startswith("/") or "\x00" in decoded:
        raise GatewayError(400, "invalid path", code="invalid_path")
    for seg in decoded.split("/"):
        if seg in (".", ".."):
            raise GatewayError(400, "invalid path: dot segments are not allowed", code="invalid_path")
    if "//" in decoded:
        raise GatewayError(400, "invalid path: empty segments are not allowed", code="invalid_path")
    return rest
