"""rawgw.control.admin_api with a fake context: every endpoint, validation errors with
field paths, 401/403/404/405/409, the generated secret shown once, audit without secrets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from rawgw.config import Config
from rawgw.configfile import load_config
from rawgw.control import overlay as ov
from rawgw.control.admin_api import AdminAPI, AuditLog, Principal
from rawgw.http.reply import Reply

ADMIN_KEY = "gw-admin-7d3c1f0e9b8a6d5c4b3a2f1e0d9c8b7a"
USER_KEY = "gw-user-0d9c8b7a7d3c1f0e9b8a6d5c4b3a2f1e"
POOL_KEY = "sk-or-v1-3f1e9c0d7a4b2e8f6c5d1a0b9e8f7c6d5a4b3c2d1e0f9a8b7c6d5e4f"
ENV = {"ADMIN": ADMIN_KEY, "USER": USER_KEY, "OR1": POOL_KEY}
MAIN = """
[[keys]]
name = "root"
key = "env:ADMIN"
admin = true
[[keys]]
name = "team"
key = "env:USER"
[providers.openrouter]
keys = ["env:OR1"]
proxy = "http://u:hunter2@127.0.0.1:3128"
headers = { "X-Secret" = "s3cr3t-header" }
[providers.groq]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
keys = ["env:OR1", "env:OR1"]
[[routes]]
match = "*"
providers = ["openrouter"]
"""
ROOT = Principal("key", "root", True)


@dataclass
class FakeCtx:
    cfg: Config
    applied: int = 0
    enabled: list[tuple[str, int]] = field(default_factory=list)
    audits: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def config(self) -> Config:
        return self.cfg

    def apply(self, config: Config) -> None:
        self.cfg = config
        self.applied += 1

    async def clear_cache(self) -> int:
        return 3

    def enable_key(self, provider: str, index: int) -> bool:
        self.enabled.append((provider, index))
        return True

    def providers(self) -> dict[str, Any]:
        return {"providers": {"groq": {"keys": [{"key": "…c0d", "state": "disabled"}]}}}

    def usage(self, window_s: float) -> dict[str, Any]:
        return {"keys": {"team": {"requests": int(window_s)}}}

    def audit(self, who: str, action: str, detail: Mapping[str, Any]) -> None:
        self.audits.append((who, action, dict(detail)))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[AdminAPI, FakeCtx, Path]:
    path = tmp_path / "gateway.toml"
    path.write_text(MAIN)
    path.chmod(0o600)
    ctx = FakeCtx(load_config(str(path), ENV))
    return AdminAPI(ctx, ENV), ctx, path


async def call(api: AdminAPI, method: str, target: str, body: Any = None, who: Principal | None = ROOT) -> tuple[int, Any]:
    raw = b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
    reply = await api.handle(who, method.encode(), target, raw)
    assert isinstance(reply, Reply) and reply.content_type == b"application/json"
    return reply.status, orjson.loads(reply.body)


def assert_error(status: int, doc: Any, expected: int, code: str) -> dict[str, Any]:
    assert status == expected, doc
    assert set(doc) == {"error"} and doc["error"]["code"] == code, doc
    assert isinstance(doc["error"]["message"], str) and doc["error"]["type"]
    err: dict[str, Any] = doc["error"]
    return err


async def test_who_may_call(setup: tuple[AdminAPI, FakeCtx, Path]) -> None:
    api, _, _ = setup
    assert_error(*await call(api, "GET", "/admin/config", who=None), 401, "invalid_api_key")
    assert_error(*await call(api, "GET", "/admin/config", who=Principal("key", "team")), 403, "not_admin")
    assert_error(*await call(api, "GET", "/admin/nope"), 404, "unknown_path")
    reply = await api.handle(ROOT, b"PUT", "/admin/config", b"")
    assert reply.status == 405 and (b"allow", b"GET") in reply.headers


async def test_config_is_masked(setup: tuple[AdminAPI, FakeCtx, Path]) -> None:
    api, _, _ = setup
    status, doc = await call(api, "GET", "/admin/config")
    assert status == 200
    text = orjson.dumps(doc).decode()
    for secret in (ADMIN_KEY, USER_KEY, POOL_KEY, "hunter2", "s3cr3t-header"):
        assert secret not in text
    assert doc["keys"][0] == {
        "name": "root", "key": "…8b7a", "admin": True, "providers": [], "models": [], "rate_limit_rpm": 0, "rate_limit_burst": 0,
        "rate_limit_tpm": 0,
    }  # fmt: skip
    assert doc["providers"]["openrouter"]["proxy"] == "http://u:***@127.0.0.1:3128"  # as `rawgw check` masks URLs
    assert doc["providers"]["openrouter"]["headers"] == {"X-Secret": "…"}


async def test_route_create_replace_delete(setup: tuple[AdminAPI, FakeCtx, Path]) -> None:
    api, ctx, path = setup
    status, doc = await call(api, "POST", "/admin/routes", {"match": "openai/fast", "providers": ["groq"], "model": "llama"})
    assert status == 201 and doc["match"] == "openai/fast" and doc["origin"] == "admin"
    assert [r.match for r in ctx.cfg.routes] == ["openai/fast", "*"] and ctx.applied == 1
    assert_error(*await call(api, "POST", "/admin/routes", {"match": "openai/fast"}), 409, "route_exists")
    status, doc = await call(api, "GET", "/admin/routes/openai%2Ffast")
    assert status == 200 and doc["model"] == "llama"
    status, doc = await call(api, "POST", "/admin/routes/openai%2Ffast", {"providers": ["openrouter"]})
    assert status == 200 and doc["providers"] == ["openrouter"] and doc["model"] is None
    assert_error(*await call(api, "POST", "/admin/routes/missing", {}), 404, "route_not_found")
    status, doc = await call(api, "GET", "/admin/routes")
    assert [(r["match"], r["origin"]) for r in doc["routes"]] == [("openai/fast", "admin"), ("*", "file")]
    # the main file's route: tombstoned, the main file untouched
    assert (await call(api, "DELETE", "/admin/routes/*"))[0] == 200
    assert (await call(api, "DELETE", "/admin/routes/openai%2Ffast"))[0] == 200
    assert ctx.cfg.routes == ()
    assert_error(*await call(api, "DELETE", "/admin/routes/*"), 404, "route_not_found")
    assert path.read_text() == MAIN
    assert load_config(str(path), ENV).routes == ()  # survives a reload / restart
    assert [a[1] for a in ctx.audits] == ["route.create", "route.replace", "route.delete", "route.delete"]


async def test_validation_errors_name_fields(setup: tuple[AdminAPI, FakeCtx, Path]) -> None:
    api, ctx, path = setup
    status, doc = await call(api, "POST", "/admin/routes", {"match": "x", "providers": ["grok"], "force_provider_order": "yes", "bogus": 1})
    err = assert_error(status, doc, 400, "invalid_config")
    assert err["errors"] == [
        "bogus: unknown setting",
        "providers[0]: unknown provider 'grok' (did you mean groq?)",
        "force_provider_order: must be true or false",
    ]
    assert_error(*await call(api, "POST", "/admin/routes", {"providers": []}), 400, "invalid_config")
    assert_error(*await call(api, "POST", "/admin/routes", b"[1]"), 400, "invalid_json")
    assert_error(*await call(api, "POST", "/admin/routes", b"{"), 400, "invalid_json")
    err = assert_error(*await call(api, "POST", "/admin/keys", {"name": "k", "rate_limit_rpm": -2, "models": "all"}), 400, "invalid_config")
    assert err["errors"] == ["models: must be a list of strings", "rate_limit_rpm: must be an integer >= 0"]
    assert ctx.applied == 0 and not ov.overlay_path(str(path)).endswith("x") and ctx.audits == []
    assert ov.read_overlay(ov.overlay_path(str(path))) is None


async def test_key_secret_shown_once_then_masked(setup: tuple[AdminAPI, FakeCtx, Path], tmp_path: Path) -> None:
    api, ctx, path = setup
    status, doc = await call(api, "POST", "/admin/keys", {"name": "alice", "providers": ["groq"], "rate_limit_rpm": 30})
    assert status == 201
    secret = doc["secret"]
    assert secret.startswith("rgw_") and len(secret) > 40 and doc["key"]["key"] == "…" + secret[-4:]
    assert any(k.name == "alice" and k.key == secret for k in ctx.cfg.keys)  # usable on the next request
    for target in ("/admin/keys", "/admin/keys/alice", "/admin/config"):
        assert secret not in orjson.dumps((await call(api, "GET", target))[1]).decode()
    assert secret not in orjson.dumps(ctx.audits).decode()
    assert_error(*await call(api, "POST", "/admin/keys", {"name": "alice"}), 409, "key_exists")
    assert_error(*await call(api, "POST", "/admin/keys", {"name": "bob", "key": "chosen"}), 400, "invalid_config")
    status, doc = await call(api, "POST", "/admin/keys/alice", {"models": ["gpt-*"]})
    assert status == 200 and doc["key"]["models"] == ["gpt-*"] and "secret" not in doc
    assert next(k for k in ctx.cfg.keys if k.name == "alice").key == secret  # a change keeps the secret
    status, doc = await call(api, "DELETE", "/admin/keys/alice")
    assert status == 200 and all(k.name != "alice" for k in ctx.cfg.keys)
    # the main file's key: patched, then revoked by tombstone
    assert (await call(api, "POST", "/admin/keys/team", {"rate_limit_rpm": 5}))[0] == 200
    assert next(k for k in ctx.cfg.keys if k.name == "team").key == USER_KEY
    assert (await call(api, "DELETE", "/admin/keys/team"))[0] == 200
    assert [k.name for k in load_config(str(path), ENV).keys] == ["root"]
    assert_error(*await call(api, "GET", "/admin/keys/team"), 404, "key_not_found")
    assert [a[1] for a in ctx.audits] == ["key.create", "key.change", "key.revoke", "key.change", "key.revoke"]
    assert ctx.audits[0][0] == "key:root"


async def test_last_admin_cannot_be_removed(setup: tuple[AdminAPI, FakeCtx, Path]) -> None:
    api, ctx, path = setup
    assert_error(*await call(api, "DELETE", "/admin/keys/root"), 409, "last_admin")
    assert_error(*await call(api, "POST", "/admin/keys/root", {"admin": False}), 409, "last_admin")
    assert ctx.cfg.keys[0].admin and ov.read_overlay(ov.overlay_path(str(path))) is None


async def test_reload_cache_enable_usage_providers(setup: tuple[AdminAPI, FakeCtx, Path]) -> None:
    api, ctx, path = setup
    path.write_text(MAIN.replace('match = "*"', 'match = "m-*"'))
    status, doc = await call(api, "POST", "/admin/reload")
    assert status == 200 and doc["reloaded"] and ctx.cfg.routes[0].match == "m-*"
    path.write_text(MAIN + "\n[bogus]\n")
    err = assert_error(*await call(api, "POST", "/admin/reload"), 400, "invalid_config")
    assert err["errors"] == ["bogus: unknown setting"] and ctx.cfg.routes[0].match == "m-*"
    assert await call(api, "POST", "/admin/cache/clear") == (200, {"cleared": 3})
    assert (await call(api, "POST", "/admin/providers/groq/keys/1/enable"))[0] == 200 and ctx.enabled == [("groq", 1)]
    assert_error(*await call(api, "POST", "/admin/providers/groq/keys/2/enable"), 404, "key_not_found")
    assert_error(*await call(api, "POST", "/admin/providers/nope/keys/0/enable"), 404, "provider_not_found")
    assert (await call(api, "GET", "/admin/usage?window=day"))[1]["keys"]["team"]["requests"] == 86400
    assert_error(*await call(api, "GET", "/admin/usage?window=year"), 400, "invalid_window")
    assert (await call(api, "GET", "/admin/providers"))[1]["providers"]["groq"]["keys"][0]["state"] == "disabled"
    audit = [(a[1], a[2]) for a in ctx.audits]
    assert audit == [("reload", {}), ("cache.clear", {"entries": 3}), ("provider_key.enable", {"provider": "groq", "index": 1, "key": "sk-or-…5e4f"})]


async def test_no_config_file_means_409(setup: tuple[AdminAPI, FakeCtx, Path]) -> None:
    api, ctx, _ = setup
    import dataclasses

    ctx.cfg = dataclasses.replace(ctx.cfg, path=None)
    assert_error(*await call(api, "POST", "/admin/routes", {"match": "a"}), 409, "no_config_file")


def test_audit_log_line() -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    AuditLog(lambda name, rec: lines.append((name, rec)), clock=lambda: 0.0)("key:root", "key.revoke", {"name": "x"})
    assert lines == [("admin.jsonl", {"ts": "1970-01-01T00:00:00Z", "who": "key:root", "action": "key.revoke", "name": "x"})]
