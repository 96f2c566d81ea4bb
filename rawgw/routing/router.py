"""Routing policy as plain functions over the config: which endpoint, which providers,
which keys, which body. Nothing here touches a socket.

Data flow: ``classify`` (path → Endpoint) → ``plan`` (endpoint + key + body → Plan)
→ ``attempts`` (Plan → provider/key pairs in failover order, live key state).
"""

from __future__ import annotations

import json
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import orjson

from rawgw.config import Config, GatewayKey, Provider, Route
from rawgw.errors import GatewayError
from rawgw.routing.keys import KeyPool, KeyState
from rawgw.routing.policy import AttemptSequence
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

# Anthropic's OpenAI-compatible API serves these OpenAI endpoints (at {base_url}/v1/REST):
# anthropic providers are candidates there too, /v1/messages stays anthropic-only.
ANTHROPIC_COMPAT = frozenset({"chat/completions"})

LOCAL_PATHS = frozenset({"/", "/health", "/health/providers", "/metrics", "/metrics.json", "/dashboard"})
# The gateway's own lists under /v1/ (answered locally, never forwarded).
MODEL_LISTS = frozenset({"models", "models-by-provider"})
# Paths of the gateways rawgw replaces that no provider API has: forwarding them would only
# show the client an upstream's confusing 404 (or worse, a real endpoint of that name).
GATEWAY_ONLY = frozenset({"emulate"})
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
    provider: str = ""  # for kind == "provider", or the group / provider a named path names
    anthropic_only: bool = False
    # a named path /{group}/{rest} (or a free_only provider's): the providers it may use, in
    # config order; empty for every other endpoint
    members: tuple[str, ...] = ()


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
        # What an anthropic provider serves on the OpenAI endpoints it can take: its
        # models, except that "*" (the default) means claude-* there — it would
        # otherwise catch every OpenAI model name too. A key pinning it uses its models.
        self.compat_models: dict[str, tuple[str, ...]] = {
            p.name: ("claude-*",) if p.models == ("*",) else p.models for p in config.providers.values() if p.type == "anthropic"
        }
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
        # provider name -> model ids its last upstream list priced at zero (free_only)
        self.free_models: dict[str, frozenset[str]] = dict(old.free_models) if old is not None else {}

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
        elif path in ("/chat/completions", "/completions", "/embeddings", "/responses", "/models"):
            rest = path[1:]
        if rest is not None:
            if rest in ROUTED:
                return Endpoint("routed", path, rest, query, anthropic_only=ROUTED[rest])
            if rest in MODEL_LISTS:
                return Endpoint("models", path, rest, query)
            if rest in GATEWAY_ONLY:
                return Endpoint("unknown", path, query=query)
            return Endpoint("passthrough", path, safe_rest(rest), query)
        name, sep, rest = path[1:].partition("/")
        if not sep:
            return Endpoint("unknown", path, query=query)
        group = self.config.groups.get(name)
        provider = self.providers.get(name)
        if group is None and provider is None:
            return Endpoint("unknown", path, query=query)
        # /{name}/v1/chat/completions and /{name}/chat/completions are the same request
        tail = rest[3:] if rest.startswith("v1/") else rest
        if tail in ROUTED and (group is not None or (provider is not None and provider.free_only)):
            # routed among the named providers: the body's model is read, so keys' model
            # lists and free_only apply, and each member gets its own URL (SPEC 5.4)
            return Endpoint("routed", path, tail, query, provider=name, anthropic_only=ROUTED[tail], members=group or (name,))
        return Endpoint("provider", path, safe_rest(rest), query, provider=name, members=group or ())

    # ---- the decision -------------------------------------------------------

    def plan(self, endpoint: Endpoint, key: GatewayKey | None, body: bytes) -> Plan:
        if endpoint.kind == "routed":
            return self._plan_routed(endpoint, key, body)
        if endpoint.kind == "provider":
            if endpoint.members:  # a group: its providers by priority, failing over (SPEC 5.3)
                members = self._members(endpoint)
                allowed = [p for p in members if key is None or not key.providers or p.name in key.providers]
                if not allowed:
                    raise GatewayError(403, f"key '{key.name if key else ''}' may not use the providers of '{endpoint.provider}'", code="provider_not_allowed")
                return Plan(endpoint, allowed, body)
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
        if endpoint.members:
            # a named path: the client chose the providers, so no route applies and the
            # model goes as sent
            route, upstream_model = None, model
            candidates = self._members(endpoint)
            if endpoint.anthropic_only:
                candidates = [p for p in candidates if p.type == "anthropic"]
        else:
            pinned = key.providers if key is not None else ()
            route, upstream_model, candidates = self.candidates(model, endpoint.anthropic_only, endpoint.rest, pinned)
        if key is not None and key.providers:
            narrowed = [p for p in candidates if p.name in key.providers]
            if candidates and not narrowed:
                raise GatewayError(403, f"key '{key.name}' may not use the providers serving model '{model}'", code="provider_not_allowed")
            candidates = narrowed
        if any(p.free_only for p in candidates):
            free = [p for p in candidates if not p.free_only or self.is_free(p.name, _model_for(route, upstream_model, p))]
            if not free:
                p = candidates[0]
                raise GatewayError(
                    403,
                    f"model '{_model_for(route, upstream_model, p)}' is not free and provider '{p.name}' has free_only = true "
                    "(ask for a ':free' model, or set free_only = false)",
                    code="model_not_free",
                )
            candidates = free
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

    def candidates(
        self, model: str, anthropic_only: bool, rest: str = "chat/completions", pinned: tuple[str, ...] = ()
    ) -> tuple[Route | None, str, list[Provider]]:
        """SPEC 5.2: the first route fitting ``model``, the upstream model, and the providers
        that may serve it, before a virtual key narrows them (also what /v1/models lists).

        On the OpenAI endpoints Anthropic's compatibility API serves (``ANTHROPIC_COMPAT``),
        anthropic providers are candidates too: by ``compat_models``, or by their own
        ``models`` when ``pinned`` (the key's providers) names them.
        """
        route = next((r for r in self.config.routes if fnmatchcase(model, r.match)), None)
        upstream_model = route.model if route is not None and route.model else model
        if route is not None and route.providers:
            # dict.fromkeys: a provider named twice is still one candidate (SPEC 5.3)
            candidates = [self.providers[n] for n in dict.fromkeys(route.providers)]
            if anthropic_only:
                candidates = [p for p in candidates if p.type == "anthropic"]
        else:
            compat = not anthropic_only and rest in ANTHROPIC_COMPAT
            candidates = []
            for p in self.by_priority:
                if (p.type == "anthropic") == anthropic_only:
                    globs = p.models
                elif compat and p.type == "anthropic":
                    globs = p.models if p.name in pinned else self.compat_models[p.name]
                else:
                    continue
                if any(fnmatchcase(upstream_model, g) for g in globs):
                    candidates.append(p)
        return route, upstream_model, candidates

    def _members(self, endpoint: Endpoint) -> list[Provider]:
        """A named path's providers by priority (ties keep the group's order)."""
        return sorted((self.providers[n] for n in endpoint.members), key=lambda p: p.priority)

    def is_free(self, provider: str, model: str | None) -> bool:
        """free_only's test: an OpenRouter ``:free`` id, or one the provider's last model
        list priced at zero (learned by the /v1/models listing)."""
        return model is not None and (model.endswith(":free") or model in self.free_models.get(provider, ()))

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
        return _model_for(plan.route, plan.upstream_model, provider)

    def upstream_path(self, endpoint: Endpoint, provider: Provider) -> bytes:
        """SPEC 5.4 URL joining."""
        base = provider.base_path
        if endpoint.kind == "provider" and not (provider.type == "anthropic" and endpoint.rest in ROUTED):
            # (an anthropic base_url is a bare origin: /anthropic/chat/completions means
            # {origin}/v1/chat/completions, as on the routed endpoints; nothing of the API
            # lives at {origin}/chat/completions)
            path = f"{base}/{endpoint.rest}"
        elif provider.type == "anthropic":
            path = f"{base}/v1/{endpoint.rest}"
        else:
            path = f"{base}/{endpoint.rest}"
        if endpoint.query:
            path += "?" + endpoint.query
        return path.encode("latin-1")

    # ---- attempts -----------------------------------------------------------

    def attempts(
        self, plan: Plan, clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random
    ) -> AttemptSequence:
        """Provider/key attempts in failover order (SPEC 5.3, ``routing.policy``).

        ``clock`` gives wall time, ``rand`` the retry jitter (both injectable for tests).
        Availability is checked lazily, so a 429 on one attempt makes later attempts skip
        that key. When nothing at all is available because keys are resting, raises 429
        with the soonest return (never hammers a resting key).
        """
        return AttemptSequence(plan.candidates, self.pools, clock, rand)


def _model_for(route: Route | None, upstream_model: str | None, provider: Provider) -> str | None:
    """The model sent to ``provider``: the route's per-provider model, else its model."""
    if route is not None and route.provider_models:
        for name, model in route.provider_models:
            if name == provider.name:
                return model
    return upstream_model


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
