"""The admin API: ``/admin/...`` JSON endpoints over an injected :class:`AdminContext`.

Wiring (for the dispatcher):

- paths: every ``/admin/...`` except ``/admin`` itself (the page, rawgw.control.admin_page)
  goes to ``await AdminAPI(ctx).handle(principal, method, target, body)``; the reply is
  written as is. ``target`` is the request target (query included: ``/admin/usage?window=day``).
- principal: a gateway key with ``admin = true`` -> ``Principal("key", key.name, True)``; a
  signed-in GitHub session (rawgw.control.cookies) -> ``Principal("github", login, admin)``
  (the cookie only after the CSRF rule, see cookies.py); any other key -> admin False (403
  here); no credential -> None (401 here). The handler checks again: defence in depth.
- the body is read whole (``server.max_body_bytes`` bounds it) before calling.
- path parameters are percent-decoded per segment: a route match with a ``/`` in it
  (``openai/gpt-4o``) is sent as ``/admin/routes/openai%2Fgpt-4o``.

Endpoints::

    GET    /admin/config                          running config, every secret masked
    POST   /admin/reload                          = SIGHUP (config file + overlay re-read)
    GET    /admin/routes[/{match}]                routes, each with origin "file" | "admin"
    POST   /admin/routes                          create (409 if the match exists)     -> 201
    POST   /admin/routes/{match}                  replace (404 if absent)              -> 200
    DELETE /admin/routes/{match}                  remove (a main-file route: tombstone)
    GET    /admin/keys[/{name}]                   keys, masked
    POST   /admin/keys                            create: the secret is generated and returned ONCE
    POST   /admin/keys/{name}                     change providers/models/limits/admin (secret kept)
    DELETE /admin/keys/{name}                     revoke (next request with it: 401)
    POST   /admin/cache/clear
    POST   /admin/providers/{name}/keys/{i}/enable  bring back a disabled or cooling pool key
    GET    /admin/providers                       providers and their key states (masked)
    GET    /admin/usage?window=hour|day           requests and tokens per key, provider, model

Writes go through rawgw.control.overlay.update (off the loop, file-locked), are validated
by the config validator with ``path.to.field: message`` errors (400, listed in
``error.errors``), then swapped in with ``ctx.apply(config)`` so the next request sees them;
each is reported to ``ctx.audit(who, action, detail)`` — never with a secret.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote

import orjson

from rawgw.config import Config, ConfigError, GatewayKey, Provider, Route, mask_key
from rawgw.configfile import load_config
from rawgw.control import overlay
from rawgw.errors import GatewayError
from rawgw.http.reply import Reply
from rawgw.state.url import mask_url

KEY_PREFIX: Final = "rgw_"
WINDOWS: Final = {"hour": 3600.0, "1h": 3600.0, "day": 86400.0, "24h": 86400.0}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: ``kind`` "key" (gateway key name) or "github" (login)."""

    kind: str
    name: str
    admin: bool = False

    @property
    def who(self) -> str:
        return f"{self.kind}:{self.name}"


class AdminContext(Protocol):
    """What the admin API needs from the running gateway (all calls on the loop)."""

    def config(self) -> Config: ...

    def apply(self, config: Config) -> None:
        """Swap in a validated config the way SIGHUP does (Gateway.reload)."""

    async def clear_cache(self) -> int:
        """Drop every cached response (and, with [state], the shared ones); return how many."""

    def enable_key(self, provider: str, index: int) -> bool:
        """Clear disabled/cooldown of pool key ``index``; False if there is no such key."""

    def providers(self) -> dict[str, Any]:
        """LocalEndpoints.providers_status(): keys masked."""

    def usage(self, window_s: float) -> dict[str, Any]:
        """Requests and tokens over the last ``window_s``, from the recorder:
        ``{"keys": {name: {"requests", "tokens"}}, "providers": {...}, "models": {...}}``
        (the admin page reads ``keys``)."""

    def audit(self, who: str, action: str, detail: Mapping[str, Any]) -> None: ...


class AuditLog:
    """``logs/admin.jsonl``: one line per change, through the existing LogWriter thread.

    Wire as ``AuditLog(gw.recorder.writer.put)`` and pass its ``__call__`` as ctx.audit.
    """

    def __init__(self, put: Callable[[str, dict[str, Any]], None], clock: Callable[[], float] = time.time) -> None:
        self.put = put
        self.clock = clock

    def __call__(self, who: str, action: str, detail: Mapping[str, Any]) -> None:
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        self.put("admin.jsonl", {"ts": ts, "who": who, "action": action, **detail})


# --------------------------------------------------------------------------- views (masked)


def key_view(k: GatewayKey, origin: str | None = None) -> dict[str, Any]:
    view = dataclasses.asdict(k)  # every field, so a new one (rate_limit_tpm) is not forgotten
    view["key"] = mask_key(k.key)
    if origin is not None:
        view["origin"] = origin
    return view


def route_view(r: Route, origin: str | None = None) -> dict[str, Any]:
    view = dataclasses.asdict(r)
    view["provider_models"] = dict(r.provider_models)
    if origin is not None:
        view["origin"] = origin
    return view


def provider_view(p: Provider) -> dict[str, Any]:
    view = dataclasses.asdict(p)
    view["keys"] = [mask_key(k) for k in p.keys]
    # header values may be credentials of their own (x-goog-api-key ...): names only
    view["headers"] = {name: "…" for name, _ in p.headers}
    view["proxy"] = mask_url(p.proxy) if p.proxy else ""
    return view


def config_view(cfg: Config) -> dict[str, Any]:
    gh = cfg.auth.github
    return {
        "path": cfg.path,
        "server": dataclasses.asdict(cfg.server),
        "keys": [key_view(k) for k in cfg.keys],
        "providers": {name: provider_view(p) for name, p in cfg.providers.items()},
        "routes": [route_view(r) for r in cfg.routes],
        "logging": dataclasses.asdict(cfg.logging),
        "cache": dataclasses.asdict(cfg.cache),
        "metrics": dataclasses.asdict(cfg.metrics),
        "auth": {
            "github": None
            if gh is None
            else {**dataclasses.asdict(gh), "client_secret": mask_key(gh.client_secret)},
        },
        "warnings": list(cfg.warnings),
    }


# --------------------------------------------------------------------------- errors


def error(status: int, message: str, code: str | None = None, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Reply:
    return Reply(status, GatewayError(status, message, code=code).body(), headers=headers)


def config_error(errors: list[str]) -> Reply:
    err = GatewayError(400, "invalid change: " + "; ".join(errors), code="invalid_config")
    body = {"error": {"message": err.message, "type": err.type, "code": err.code, "errors": errors}}
    return Reply.json(400, body)


class _Refused(Exception):
    """Raised inside an overlay change to answer ``reply`` instead of writing."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise _Refused(error(400, "body must be a JSON object", "invalid_json")) from None
    if not isinstance(value, dict):
        raise _Refused(error(400, "body must be a JSON object", "invalid_json"))
    return value


def _still_admin(cfg: Config) -> None:
    if not any(k.admin for k in cfg.keys) and not (cfg.auth.github and cfg.auth.github.admins):
        raise _Refused(error(409, "refused: no admin key (and no [auth.github] admins) would remain", "last_admin"))


# --------------------------------------------------------------------------- handler


class AdminAPI:
    def __init__(self, ctx: AdminContext, env: Mapping[str, str] | None = None) -> None:
        self.ctx = ctx
        self.env = env
        self.lock = asyncio.Lock()  # one write at a time in this process (the file lock spans processes)

    async def handle(self, principal: Principal | None, method: bytes, target: str, body: bytes) -> Reply:
        if principal is None:
            return error(401, "an admin key or an admin sign-in is required", "invalid_api_key")
        if not principal.admin:
            return error(403, f"{principal.who} is not an admin", "not_admin")
        path, _, query = target.partition("?")
        parts = [unquote(p) for p in path.split("/")[2:]]  # after "", "admin"
        try:
            return await self._route(principal, method, parts, query, body)
        except _Refused as exc:
            return exc.reply

    async def _route(self, who: Principal, method: bytes, parts: list[str], query: str, body: bytes) -> Reply:
        head = parts[0] if parts else ""
        n = len(parts)
        if head == "config" and n == 1:
            return self._only(method, b"GET") or Reply.json(200, config_view(self.ctx.config()))
        if head == "reload" and n == 1:
            return self._only(method, b"POST") or await self.reload(who)
        if head == "routes" and n in (1, 2):
            return await self.routes(who, method, parts[1] if n == 2 else None, body)
        if head == "keys" and n in (1, 2):
            return await self.keys(who, method, parts[1] if n == 2 else None, body)
        if head == "cache" and parts[1:] == ["clear"]:
            if bad := self._only(method, b"POST"):
                return bad
            cleared = await self.ctx.clear_cache()
            self.ctx.audit(who.who, "cache.clear", {"entries": cleared})
            return Reply.json(200, {"cleared": cleared})
        if head == "providers" and n == 1:
            return self._only(method, b"GET") or Reply.json(200, self.ctx.providers())
        if head == "providers" and n == 5 and parts[2] == "keys" and parts[4] == "enable":
            return self._only(method, b"POST") or self.enable(who, parts[1], parts[3])
        if head == "usage" and n == 1:
            return self._only(method, b"GET") or self.usage(query)
        return error(404, "unknown admin path /admin/" + "/".join(parts), "unknown_path")

    @staticmethod
    def _only(method: bytes, *allowed: bytes) -> Reply | None:
        if method in allowed:
            return None
        allow = b", ".join(allowed)
        return error(405, f"use {allow.decode()}", "method_not_allowed", ((b"allow", allow),))

    def _config_path(self) -> str:
        path = self.ctx.config().path
        if path is None:
            raise _Refused(error(409, "runtime changes need a config file (the gateway runs without one)", "no_config_file"))
        return path

    async def _write(
        self,
        change: Callable[[overlay.Overlay, dict[str, Any]], Any],
        focus: tuple[str, str] | None = None,
        check: Callable[[Config], None] | None = None,
    ) -> Any:
        path = self._config_path()
        async with self.lock:
            try:
                cfg, result = await asyncio.to_thread(overlay.update, path, change, self.env, focus, check)
            except ConfigError as exc:
                raise _Refused(config_error(exc.errors)) from None
            self.ctx.apply(cfg)
        return result

    async def _current_overlay(self) -> overlay.Overlay:
        path = self.ctx.config().path
        if path is None:
            return {}
        try:
            return await asyncio.to_thread(overlay.read_overlay, overlay.overlay_path(path)) or {}
        except ConfigError:
            return {}

    # ---------------------------------------------------------------- reload

    async def reload(self, who: Principal) -> Reply:
        path = self._config_path()
        try:
            cfg = await asyncio.to_thread(load_config, path, self.env)
        except ConfigError as exc:
            return config_error(exc.errors)
        self.ctx.apply(cfg)
        self.ctx.audit(who.who, "reload", {})
        return Reply.json(200, {"reloaded": True, "warnings": list(cfg.warnings)})

    # ---------------------------------------------------------------- routes

    async def routes(self, who: Principal, method: bytes, match: str | None, body: bytes) -> Reply:
        if method == b"GET":
            ov = await self._current_overlay()
            routes = self.ctx.config().routes
            if match is None:
                return Reply.json(200, {"routes": [route_view(r, overlay.origin_of(ov, "routes", r.match)) for r in routes]})
            for r in routes:
                if r.match == match:
                    return Reply.json(200, route_view(r, overlay.origin_of(ov, "routes", r.match)))
            return error(404, f"no route with match '{match}'", "route_not_found")
        if method == b"DELETE" and match is not None:
            return await self.delete_route(who, match)
        if method != b"POST":
            return self._only(method, b"GET", b"POST", b"DELETE") or error(405, "DELETE needs /admin/routes/{match}", "method_not_allowed")
        fields = _parse_body(body)
        if match is None:
            target = fields.get("match")
            if not isinstance(target, str) or not target:
                return config_error(["match: required (a model name or glob)"])
        else:
            target = match
            if fields.setdefault("match", match) != match:
                return config_error([f"match: must be '{match}' (the path's) or absent"])
        create = match is None

        def change(ov: overlay.Overlay, main: dict[str, Any]) -> None:
            exists = overlay.route_exists(ov, main, target)
            if create and exists:
                raise _Refused(error(409, f"a route with match '{target}' exists; POST /admin/routes/{{match}} replaces it", "route_exists"))
            if not create and not exists:
                raise _Refused(error(404, f"no route with match '{target}'", "route_not_found"))
            overlay.set_route(ov, fields)

        await self._write(change, ("routes", target))
        route = next(r for r in self.ctx.config().routes if r.match == target)
        self.ctx.audit(who.who, "route.create" if create else "route.replace", {"route": route_view(route)})
        return Reply.json(201 if create else 200, route_view(route, "admin"))

    async def delete_route(self, who: Principal, match: str) -> Reply:
        def change(ov: overlay.Overlay, main: dict[str, Any]) -> None:
            if not overlay.route_exists(ov, main, match) or not overlay.remove_route(ov, main, match):
                raise _Refused(error(404, f"no route with match '{match}'", "route_not_found"))

        await self._write(change)
        self.ctx.audit(who.who, "route.delete", {"match": match})
        return Reply.json(200, {"deleted": match})

    # ---------------------------------------------------------------- keys

    async def keys(self, who: Principal, method: bytes, name: str | None, body: bytes) -> Reply:
        if method == b"GET":
            ov = await self._current_overlay()
            keys = self.ctx.config().keys
            if name is None:
                return Reply.json(200, {"keys": [key_view(k, overlay.origin_of(ov, "keys", k.name)) for k in keys]})
            for k in keys:
                if k.name == name:
                    return Reply.json(200, key_view(k, overlay.origin_of(ov, "keys", k.name)))
            return error(404, f"no key named '{name}'", "key_not_found")
        if method == b"DELETE" and name is not None:
            return await self.delete_key(who, name)
        if method != b"POST":
            return self._only(method, b"GET", b"POST", b"DELETE") or error(405, "DELETE needs /admin/keys/{name}", "method_not_allowed")
        fields = _parse_body(body)
        if "key" in fields:
            return config_error(["key: set by the gateway (a new key's secret is generated and shown once)"])
        if name is None:
            target = fields.pop("name", None)
            if not isinstance(target, str) or not target:
                return config_error(["name: required (what logs show for this key)"])
            secret = KEY_PREFIX + secrets.token_urlsafe(32)
            view = await self.put_key(target, {**fields, "key": secret}, create=True)
            self.ctx.audit(who.who, "key.create", {"key": view})
            return Reply.json(201, {"secret": secret, "key": view, "note": "the secret is shown only this once"})
        if fields.pop("name", name) != name:
            return config_error([f"name: must be '{name}' (the path's) or absent"])
        view = await self.put_key(name, fields, create=False)
        self.ctx.audit(who.who, "key.change", {"key": view})
        return Reply.json(200, {"key": view})

    async def put_key(self, name: str, fields: dict[str, Any], *, create: bool) -> dict[str, Any]:
        """Create (409 if the name is taken) or patch (404 if absent) a key in the overlay;
        returns its masked view. Also used by the GitHub device flow."""

        def change(ov: overlay.Overlay, main: dict[str, Any]) -> None:
            exists = overlay.key_exists(ov, main, name)
            if create and exists:
                raise _Refused(error(409, f"a key named '{name}' exists; POST /admin/keys/{{name}} changes it", "key_exists"))
            if not create and not exists:
                raise _Refused(error(404, f"no key named '{name}'", "key_not_found"))
            overlay.set_key(ov, name, fields)

        await self._write(change, ("keys", name), _still_admin)
        key = next(k for k in self.ctx.config().keys if k.name == name)
        return key_view(key, "admin")

    async def upsert_key(self, who: str, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Create or update ``name`` with ``fields`` without existence checks (the GitHub
        device flow: a new sign-in gives the same personal key a fresh secret)."""
        await self._write(lambda ov, main: overlay.set_key(ov, name, fields), ("keys", name))
        key = next(k for k in self.ctx.config().keys if k.name == name)
        view = key_view(key, "admin")
        self.ctx.audit(who, "key.issue", {"key": view})
        return view

    async def delete_key(self, who: Principal, name: str) -> Reply:
        def change(ov: overlay.Overlay, main: dict[str, Any]) -> None:
            if not overlay.key_exists(ov, main, name) or not overlay.remove_key(ov, main, name):
                raise _Refused(error(404, f"no key named '{name}'", "key_not_found"))

        await self._write(change, None, _still_admin)
        self.ctx.audit(who.who, "key.revoke", {"name": name})
        return Reply.json(200, {"revoked": name})

    # ---------------------------------------------------------------- the rest

    def enable(self, who: Principal, provider: str, index: str) -> Reply:
        p = self.ctx.config().providers.get(provider)
        if p is None:
            return error(404, f"no provider named '{provider}'", "provider_not_found")
        if not index.isdigit() or int(index) >= len(p.keys) or not self.ctx.enable_key(provider, int(index)):
            return error(404, f"provider '{provider}' has no key {index} (keys are 0..{len(p.keys) - 1})", "key_not_found")
        self.ctx.audit(who.who, "provider_key.enable", {"provider": provider, "index": int(index), "key": mask_key(p.keys[int(index)])})
        return Reply.json(200, {"provider": provider, "index": int(index), "state": "active"})

    def usage(self, query: str) -> Reply:
        window = (parse_qs(query).get("window") or ["hour"])[0]
        seconds = WINDOWS.get(window)
        if seconds is None:
            return error(400, "window must be hour or day", "invalid_window")
        return Reply.json(200, {"window": window, "window_s": seconds, **self.ctx.usage(seconds)})
