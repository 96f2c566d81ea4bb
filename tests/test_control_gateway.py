"""The control plane through the real gateway (issue 14): admin keys and API, the overlay
surviving SIGHUP and restart, revocation on the very next request, the cookie/CSRF rules,
GitHub web and device flow against tests/mock_github.py, sessions, and no secret anywhere.

Every test runs ``python -m rawgw serve`` as a subprocess and talks HTTP over loopback.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from conftest import GW_KEY, UPSTREAM_KEY, Gateway, Response, StartGateway, base_config, chat_request, raw_connection
from mock_github import CLIENT_ID, CLIENT_SECRET, MockGithub
from mock_upstream import Json, MockUpstream
from ops_helpers import ProcGateway, call, completion, read_jsonl, wait_until

ADMIN_KEY = "gw-admin-key-9f8e7d6c5b4a39281706"
COOKIE = "rawgw_session"


def admin_config(mock: MockUpstream, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    keys = [{"key": ADMIN_KEY, "name": "root", "admin": True}, {"key": GW_KEY, "name": "tester"}]
    return base_config(mock, keys=keys, extra=extra)


def github_extra(gh: MockGithub, **fields: Any) -> dict[str, Any]:
    return {
        "auth": {
            "github": {
                "client_id": CLIENT_ID,
                "client_secret": "env:GITHUB_CLIENT_SECRET",
                "oauth_base": gh.url,
                "api_base": gh.url,
                "allowed_users": ["alice"],
                "admins": ["octocat"],
                "key_defaults": {"providers": ["mock"], "models": ["gpt-*"], "rate_limit_rpm": 60, "rate_limit_burst": 10},
                **fields,
            }
        }
    }


GH_ENV = {"GITHUB_CLIENT_SECRET": CLIENT_SECRET}


async def api(
    port: int, method: str, path: str, body: Any = None, *, key: str | None = ADMIN_KEY, headers: list[tuple[str, str]] | None = None
) -> Response:
    raw = b"" if body is None else orjson.dumps(body)
    return await call(port, raw, path=path, method=method, key=key, headers=headers or [])


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
async def github() -> Any:
    gh = await MockGithub.start()
    try:
        yield gh
    finally:
        await gh.close()


# --------------------------------------------------------------------------- admin keys


async def test_admin_paths_need_an_admin_key(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(admin_config(mock_upstream))
    r = await api(gw.port, "GET", "/admin/config", key=None)
    assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key", r.body
    assert r.header("www-authenticate") == 'Bearer realm="rawgw"'
    r = await api(gw.port, "GET", "/admin/config", key="wrong-key")
    assert r.status == 401, r.body
    r = await api(gw.port, "GET", "/admin/config", key=GW_KEY)
    assert r.status == 403 and r.json()["error"]["code"] == "not_admin", r.body
    r = await api(gw.port, "GET", "/admin/config")
    assert r.status == 200, r.body
    doc = r.json()
    assert [k["name"] for k in doc["keys"]] == ["root", "tester"]
    for secret in (ADMIN_KEY, GW_KEY, UPSTREAM_KEY):
        assert secret not in r.body.decode()
    # the page itself is public and self-contained; it holds no data
    r = await call(gw.port, path="/admin", method="GET", key=None)
    assert r.status == 200 and b"rawgw admin" in r.body
    assert r.header("content-type") == "text/html; charset=utf-8"


async def test_route_change_applies_on_the_same_connection_and_survives_sighup_and_restart(
    mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    mock_upstream.default = Json(body=completion(model="real-model"))
    cwd = tmp_path / "gw"
    gw = await ProcGateway.start(cwd, admin_config(mock_upstream))
    try:
        async with await raw_connection(gw.port) as c:
            r = await c.request(chat_request(chat("fast"), key=GW_KEY))
            assert r.status == 200  # no route: passes "fast" through unchanged
            assert mock_upstream.requests[-1].json()["model"] == "fast"
            body = orjson.dumps({"match": "fast", "providers": ["mock"], "model": "real-model"})
            r = await c.request(chat_request(body, path="/admin/routes", key=ADMIN_KEY))
            assert r.status == 201, r.body
            assert r.json()["origin"] == "admin"
            r = await c.request(chat_request(chat("fast"), key=GW_KEY))  # same connection, next request
            assert r.status == 200, r.body
            assert mock_upstream.requests[-1].json()["model"] == "real-model"
        overlay = (cwd / "gateway.d" / "admin.toml").read_text()
        assert 'match = "fast"' in overlay
        assert (cwd / "gateway.d" / "admin.toml").stat().st_mode & 0o777 == 0o600
        assert "fast" not in (cwd / "gateway.toml").read_text()  # the user's file is never rewritten

        gw.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "config reloaded" in gw.stderr_text(), what="reload log line")
        r = await call(gw.port, chat("fast"))
        assert r.status == 200 and mock_upstream.requests[-1].json()["model"] == "real-model"
    finally:
        await gw.close()
    gw = await ProcGateway.start(cwd, admin_config(mock_upstream))
    try:
        r = await call(gw.port, chat("fast"))
        assert r.status == 200 and mock_upstream.requests[-1].json()["model"] == "real-model"
        r = await api(gw.port, "GET", "/admin/routes/fast")
        assert r.status == 200 and r.json()["origin"] == "admin", r.body
        r = await api(gw.port, "DELETE", "/admin/routes/fast")
        assert r.status == 200, r.body
        r = await call(gw.port, chat("fast"))
        assert mock_upstream.requests[-1].json()["model"] == "fast"
    finally:
        await gw.close()
    lines = read_jsonl(cwd / "logs" / "admin.jsonl")
    assert [x["action"] for x in lines] == ["route.create", "route.delete"], lines
    assert all(x["who"] == "key:root" and x["ts"] for x in lines)


async def test_key_created_shown_once_and_revoked_on_the_next_request(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.default = Json(body=completion())
    gw = await start_gateway(admin_config(mock_upstream))
    r = await api(gw.port, "POST", "/admin/keys", {"name": "alice", "models": ["m"], "rate_limit_rpm": 600, "rate_limit_burst": 20})
    assert r.status == 201, r.body
    secret = r.json()["secret"]
    assert secret.startswith("rgw_") and r.json()["key"]["key"] != secret
    r = await api(gw.port, "POST", "/admin/keys", {"name": "bad", "providers": ["nope"]})
    err = r.json()["error"]
    assert r.status == 400 and any(e.startswith("providers[0]: ") for e in err["errors"]), err
    async with await raw_connection(gw.port) as c:
        r = await c.request(chat_request(chat("m"), key=secret))
        assert r.status == 200, r.body
        r = await c.request(chat_request(chat("other"), key=secret))
        assert r.status == 403, r.body  # the key's model list applies
        r = await c.request(chat_request(b"", path="/admin/keys/alice", method="DELETE", key=ADMIN_KEY))
        assert r.status == 200, r.body
        r = await c.request(chat_request(chat("m"), key=secret))
        assert r.status == 401, r.body  # the very next request
    r = await api(gw.port, "GET", "/admin/keys")
    assert secret not in r.body.decode()
    # the last admin key cannot be removed
    r = await api(gw.port, "DELETE", "/admin/keys/root")
    assert r.status == 409, r.body
    r = await api(gw.port, "GET", "/admin/usage?window=hour")
    assert r.json()["keys"]["alice"]["requests"] == 1, r.body
    assert r.json()["keys"]["alice"]["tokens"] == 2, r.body
    admin_log = gw.logs_dir / "admin.jsonl"

    def both_logged() -> str | None:
        # the writer thread appends line by line: wait for the fact, not for the file
        text = admin_log.read_text() if admin_log.exists() else ""
        return text if "key.create" in text and "key.revoke" in text else None

    log = await wait_until(both_logged, what="key.create and key.revoke in admin.jsonl")
    everything = log + gw.stderr_text() + gw.stdout_text()
    for p in gw.logs_dir.glob("*.jsonl"):
        everything += p.read_text()
    r = await call(gw.port, path="/metrics", method="GET", key=ADMIN_KEY)
    everything += r.body.decode()
    assert secret not in everything and ADMIN_KEY not in everything and UPSTREAM_KEY not in everything


async def test_cache_clear_reload_and_reenable(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    gw = await start_gateway(admin_config(mock_upstream))
    mock_upstream.enqueue(Json(status=401, body={"error": {"message": "bad key"}}))
    r = await call(gw.port, chat("m"))
    r = await api(gw.port, "GET", "/admin/providers")
    assert r.json()["providers"]["mock"]["keys"][0]["state"] == "disabled", r.body
    r = await api(gw.port, "POST", "/admin/providers/mock/keys/0/enable")
    assert r.status == 200, r.body
    r = await api(gw.port, "GET", "/admin/providers")
    assert r.json()["providers"]["mock"]["keys"][0]["state"] == "active", r.body
    r = await api(gw.port, "POST", "/admin/providers/mock/keys/7/enable")
    assert r.status == 404
    r = await api(gw.port, "POST", "/admin/cache/clear")
    assert r.status == 200 and r.json() == {"cleared": 0}, r.body
    r = await api(gw.port, "POST", "/admin/reload")
    assert r.status == 200 and r.json()["reloaded"] is True, r.body
    r = await api(gw.port, "GET", "/admin/reload")
    assert r.status == 405 and r.header("allow") == "POST"


# --------------------------------------------------------------------------- GitHub web flow


async def web_login(gw: Gateway, gh: MockGithub) -> tuple[str, str]:
    """/auth/github/login -> the mock's authorize -> /auth/github/callback: (cookie, csrf)."""
    r = await call(gw.port, path="/auth/github/login", method="GET", key=None)
    assert r.status == 302, r.body
    state_cookie = r.header("set-cookie").split(";")[0]  # type: ignore[union-attr]
    loc = urlsplit(r.header("location") or "")
    assert f"{loc.scheme}://{loc.netloc}" == gh.url
    q = parse_qs(loc.query)
    assert q["client_id"] == [CLIENT_ID] and "client_secret" not in q
    redirect = urlsplit(q["redirect_uri"][0])
    assert redirect.path == "/auth/github/callback"
    # the browser follows the redirect to (mock) GitHub, which sends it back with a code
    r = await call(gh.port, path=f"{loc.path}?{loc.query}", method="GET", key=None)
    assert r.status == 302, r.body
    back = urlsplit(r.header("location") or "")
    assert back.path == "/auth/github/callback"
    r = await call(gw.port, path=f"/auth/github/callback?{back.query}", method="GET", key=None, headers=[("Cookie", state_cookie)])
    assert r.status == 200, r.body
    cookies = [v for v in r.values("set-cookie") if v.startswith(COOKIE + "=")]
    assert cookies, r.headers
    attrs = cookies[0].split("; ")
    assert "HttpOnly" in attrs and "SameSite=Strict" in attrs and "Secure" not in attrs
    cookie = attrs[0]
    me = await call(gw.port, path="/auth/me", method="GET", key=None, headers=[("Cookie", cookie)])
    assert me.status == 200, me.body
    return cookie, me.json()["csrf_token"]


async def test_github_web_flow_cookie_rules_and_csrf(start_gateway: StartGateway, mock_upstream: MockUpstream, github: MockGithub) -> None:
    mock_upstream.default = Json(body=completion())
    gw = await start_gateway(admin_config(mock_upstream, github_extra(github)), env=GH_ENV)
    cookie, csrf = await web_login(gw, github)
    hdr = [("Cookie", cookie)]
    r = await api(gw.port, "GET", "/admin/keys", key=None, headers=hdr)
    assert r.status == 200, r.body
    # the cookie is never a credential for model traffic
    r = await call(gw.port, chat("m"), key=None, headers=hdr)
    assert r.status == 401, r.body
    r = await call(gw.port, path="/v1/models", method="GET", key=None, headers=hdr)
    assert r.status == 401, r.body
    r = await call(gw.port, chat("m"), path="/mock/v1/chat/completions", key=None, headers=hdr)
    assert r.status == 401, r.body  # nor for a provider's own path
    assert len(mock_upstream.requests) == 0
    # writes with the cookie: no Origin and no token -> 403; a foreign Origin -> 403
    route = {"match": "web", "providers": ["mock"]}
    r = await api(gw.port, "POST", "/admin/routes", route, key=None, headers=hdr)
    assert r.status == 403 and r.json()["error"]["code"] == "csrf_failed", r.body
    r = await api(gw.port, "POST", "/admin/routes", route, key=None, headers=[*hdr, ("Origin", "http://evil.example")])
    assert r.status == 403 and r.json()["error"]["code"] == "csrf_failed", r.body
    r = await api(gw.port, "POST", "/admin/routes", route, key=None, headers=[*hdr, ("X-CSRF-Token", "0" * 64)])
    assert r.status == 403, r.body
    r = await api(gw.port, "POST", "/admin/routes", route, key=None, headers=[*hdr, ("X-CSRF-Token", csrf)])
    assert r.status == 201, r.body
    # same origin as the Host the request names (the raw client sends "Host: 127.0.0.1")
    r = await api(gw.port, "DELETE", "/admin/routes/web", key=None, headers=[*hdr, ("Origin", "http://127.0.0.1")])
    assert r.status == 200, r.body
    # a signed-in user may read the dashboard's numbers
    r = await call(gw.port, path="/metrics.json", method="GET", key=None, headers=hdr)
    assert r.status == 200, r.body
    # a forged or tampered cookie is nobody
    name, _, value = cookie.partition("=")
    forged = value.replace("|0|", "|1|") if "|0|" in value else value[:-1] + ("0" if value[-1] != "0" else "1")
    r = await api(gw.port, "GET", "/admin/keys", key=None, headers=[("Cookie", f"{name}={forged}")])
    assert r.status == 401, r.body
    log = (gw.logs_dir / "admin.jsonl").read_text()
    assert '"who":"github:octocat"' in log.replace(" ", ""), log
    # logout clears the cookie
    r = await call(gw.port, b"", path="/auth/logout", method="POST", key=None, headers=[*hdr, ("Origin", "http://127.0.0.1")])
    assert r.status == 200 and any("Max-Age=0" in v for v in r.values("set-cookie")), r.headers
    everything = gw.stderr_text() + gw.stdout_text() + "".join(p.read_text() for p in gw.logs_dir.glob("*.jsonl"))
    assert CLIENT_SECRET not in everything and value not in everything
    key_file = gw.cwd / "gateway.d" / "session.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


async def test_github_non_admin_user_gets_403_on_admin(start_gateway: StartGateway, mock_upstream: MockUpstream, github: MockGithub) -> None:
    github.login = "alice"  # allowed to sign in, not an admin
    gw = await start_gateway(admin_config(mock_upstream, github_extra(github)), env=GH_ENV)
    cookie, _ = await web_login(gw, github)
    me = await call(gw.port, path="/auth/me", method="GET", key=None, headers=[("Cookie", cookie)])
    assert me.json()["login"] == "alice" and me.json()["admin"] is False
    r = await api(gw.port, "GET", "/admin/keys", key=None, headers=[("Cookie", cookie)])
    assert r.status == 403 and r.json()["error"]["code"] == "not_admin", r.body


async def test_github_refusals_state_replay_allow_list(start_gateway: StartGateway, mock_upstream: MockUpstream, github: MockGithub) -> None:
    gw = await start_gateway(admin_config(mock_upstream, github_extra(github)), env=GH_ENV)

    async def begin() -> tuple[str, str]:
        r = await call(gw.port, path="/auth/github/login", method="GET", key=None)
        state_cookie = (r.header("set-cookie") or "").split(";")[0]
        loc = urlsplit(r.header("location") or "")
        r = await call(github.port, path=f"{loc.path}?{loc.query}", method="GET", key=None)
        return state_cookie, urlsplit(r.header("location") or "").query

    def no_session(r: Response) -> None:
        assert not any(v.startswith(COOKIE + "=") and "Max-Age=0" not in v for v in r.values("set-cookie")), r.headers

    # state mismatch: a callback without the browser's state cookie (login CSRF)
    state_cookie, query = await begin()
    r = await call(gw.port, path=f"/auth/github/callback?{query}", method="GET", key=None)
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_state", r.body
    no_session(r)
    # another browser's state cookie
    other_cookie, _ = await begin()
    r = await call(gw.port, path=f"/auth/github/callback?{query}", method="GET", key=None, headers=[("Cookie", other_cookie)])
    assert r.status == 400 and r.json()["error"]["code"] == "invalid_state", r.body
    # replayed: the right state, used a second time
    state_cookie, query = await begin()
    r = await call(gw.port, path=f"/auth/github/callback?{query}", method="GET", key=None, headers=[("Cookie", state_cookie)])
    assert r.status == 200, r.body
    r = await call(gw.port, path=f"/auth/github/callback?{query}", method="GET", key=None, headers=[("Cookie", state_cookie)])
    assert r.status == 400, r.body
    no_session(r)
    # a user outside the allow-list
    github.login = "mallory"
    state_cookie, query = await begin()
    r = await call(gw.port, path=f"/auth/github/callback?{query}", method="GET", key=None, headers=[("Cookie", state_cookie)])
    assert r.status == 403 and r.json()["error"]["code"] == "not_allowed", r.body
    no_session(r)
    # without [auth.github] the sign-in paths do not exist (the page then hides the button)
    plain = await start_gateway(admin_config(mock_upstream))
    r = await call(plain.port, path="/auth/me", method="GET", key=None)
    assert r.status == 404, r.body
    assert CLIENT_SECRET not in gw.stderr_text() + gw.stdout_text()


# --------------------------------------------------------------------------- device flow


async def test_device_flow_issues_a_personal_key(start_gateway: StartGateway, mock_upstream: MockUpstream, github: MockGithub) -> None:
    mock_upstream.default = Json(body=completion(model="gpt-4o"))
    github.login = "alice"
    github.device_script = ["authorization_pending"]
    gw = await start_gateway(admin_config(mock_upstream, github_extra(github)), env=GH_ENV)
    r = await call(gw.port, b"", path="/auth/device/request", method="POST", key=None)
    assert r.status == 200, r.body
    start = r.json()
    assert start["user_code"] == "ABCD-1234" and "device_code" not in start
    device_id = start["device_id"]
    body = orjson.dumps({"device_id": device_id})
    # too early: RFC 8628 slow_down (the gateway enforces the interval itself)
    r = await call(gw.port, body, path="/auth/device/poll", method="POST", key=None)
    assert r.status == 400 and r.json()["error"]["code"] == "slow_down", r.body
    assert r.json()["error"]["interval"] == 10
    assert not any(req[1].startswith("/login/oauth/access_token") for req in github.requests)
    r = await call(gw.port, b'{"device_id": "unknown"}', path="/auth/device/poll", method="POST", key=None)
    assert r.status == 400 and r.json()["error"]["code"] == "expired_token", r.body
    # a device code GitHub says has expired, and one whose lifetime ran out at the gateway
    github.device_interval = 0
    github.device_script = ["expired_token"]
    r = await call(gw.port, b"", path="/auth/device/request", method="POST", key=None)
    body = orjson.dumps({"device_id": r.json()["device_id"]})
    r = await call(gw.port, body, path="/auth/device/poll", method="POST", key=None)
    assert r.status == 400 and r.json()["error"]["code"] == "expired_token", r.body
    r = await call(gw.port, body, path="/auth/device/poll", method="POST", key=None)
    assert r.status == 400 and r.json()["error"]["code"] == "expired_token", r.body  # gone for good
    github.device_expires_in = 0
    r = await call(gw.port, b"", path="/auth/device/request", method="POST", key=None)
    r = await call(gw.port, orjson.dumps({"device_id": r.json()["device_id"]}), path="/auth/device/poll", method="POST", key=None)
    assert r.status == 400 and r.json()["error"]["code"] == "expired_token", r.body
    # the user denies at GitHub
    github.device_expires_in = 900
    github.device_script = ["access_denied"]
    r = await call(gw.port, b"", path="/auth/device/request", method="POST", key=None)
    r = await call(gw.port, orjson.dumps({"device_id": r.json()["device_id"]}), path="/auth/device/poll", method="POST", key=None)
    assert r.status == 403 and r.json()["error"]["code"] == "access_denied", r.body
    # pending, then success: a personal key gh-alice with [auth.github] key_defaults
    github.device_script = ["authorization_pending"]
    r = await call(gw.port, b"", path="/auth/device/request", method="POST", key=None)
    body = orjson.dumps({"device_id": r.json()["device_id"]})
    r = await call(gw.port, body, path="/auth/device/poll", method="POST", key=None)
    assert r.status == 400 and r.json()["error"]["code"] == "authorization_pending", r.body
    r = await call(gw.port, body, path="/auth/device/poll", method="POST", key=None)
    assert r.status == 200, r.body
    issued = r.json()
    assert issued["name"] == "gh-alice" and issued["key"].startswith("rgw_")
    secret = issued["key"]
    r = await call(gw.port, body, path="/auth/device/poll", method="POST", key=None)
    assert r.status == 400 and r.json()["error"]["code"] == "expired_token", r.body  # single use
    r = await call(gw.port, chat("gpt-4o"), key=secret)
    assert r.status == 200, r.body
    r = await call(gw.port, chat("claude-3"), key=secret)
    assert r.status == 403, r.body  # key_defaults.models = ["gpt-*"]
    r = await api(gw.port, "GET", "/admin/keys/gh-alice")
    view = r.json()
    assert view["models"] == ["gpt-*"] and view["rate_limit_rpm"] == 60 and view["admin"] is False, view
    assert secret not in r.body.decode()
    # revocable from the admin API: the next request fails
    r = await api(gw.port, "DELETE", "/admin/keys/gh-alice")
    assert r.status == 200, r.body
    r = await call(gw.port, chat("gpt-4o"), key=secret)
    assert r.status == 401, r.body
    log = (gw.logs_dir / "admin.jsonl").read_text()
    assert "key.issue" in log and "github:alice" in log
    everything = log + gw.stderr_text() + gw.stdout_text() + "".join(p.read_text() for p in gw.logs_dir.glob("*.jsonl"))
    assert secret not in everything and CLIENT_SECRET not in everything
    assert not any(t.startswith("gho_") and t in everything for t in github.tokens)


# --------------------------------------------------------------------------- sessions


async def test_sessions_counted_echoed_and_private(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.default = Json(body=completion(model="m", prompt=3, completion_tokens=4))
    other = "gw-other-key-55aa66bb77cc"
    cfg = admin_config(mock_upstream)
    cfg["keys"].append({"key": other, "name": "other"})
    gw = await start_gateway(cfg)
    sid = [("X-Session-ID", "chat-42/é".encode().decode("latin-1"))]  # not visible ASCII: ignored
    r = await call(gw.port, chat("m"), headers=sid)
    assert r.status == 200 and r.header("x-session-id") is None
    upstream_body = r.body  # as the mock sent it
    r = await call(gw.port, chat("m"), headers=[("X-Session-ID", "x" * 129)])
    assert r.header("x-session-id") is None
    for _ in range(2):
        r = await call(gw.port, chat("m"), headers=[("X-Session-ID", "chat-42")])
        assert r.status == 200 and r.header("x-session-id") == "chat-42"
        assert r.body == upstream_body  # the id is never injected into the body
    r = await api(gw.port, "GET", "/session/status", key=GW_KEY)
    assert r.status == 200, r.body
    (s,) = r.json()["sessions"]
    assert (s["id"], s["key_name"], s["requests"], s["prompt_tokens"], s["completion_tokens"]) == ("chat-42", "tester", 2, 6, 8), s
    assert s["models"] == ["m"] and s["first_seen"] <= s["last_seen"]
    r = await api(gw.port, "GET", "/session/chat-42", key=GW_KEY)
    assert r.status == 200 and r.json()["requests"] == 2
    # another key neither sees nor confirms it; an admin sees it
    r = await api(gw.port, "GET", "/session/status", key=other)
    assert r.json() == {"sessions": []}
    r = await api(gw.port, "GET", "/session/chat-42", key=other)
    assert r.status == 404, r.body
    r = await api(gw.port, "DELETE", "/session/chat-42", key=other)
    assert r.status == 404, r.body
    r = await api(gw.port, "GET", "/session/chat-42", key=ADMIN_KEY)
    assert r.status == 200, r.body
    r = await api(gw.port, "GET", "/session/status", key=None)
    assert r.status == 401, r.body
    r = await api(gw.port, "DELETE", "/session/chat-42", key=GW_KEY)
    assert r.status == 200, r.body
    r = await api(gw.port, "GET", "/session/chat-42", key=GW_KEY)
    assert r.status == 404, r.body


async def test_session_ttl_and_bound(start_gateway: StartGateway, mock_upstream: MockUpstream) -> None:
    mock_upstream.default = Json(body=completion())
    gw = await start_gateway(admin_config(mock_upstream, {"server": {"max_sessions": 2}}))
    for sid in ("a", "b", "c"):
        r = await call(gw.port, chat("m"), headers=[("X-Session-ID", sid)])
        assert r.status == 200
    r = await api(gw.port, "GET", "/session/status", key=GW_KEY)
    assert sorted(s["id"] for s in r.json()["sessions"]) == ["b", "c"], r.body  # least recently seen dropped


# --------------------------------------------------------------------------- workers


async def test_admin_change_reaches_every_worker(mock_upstream: MockUpstream, tmp_path: Path) -> None:
    """With --workers 2 the worker that took the change signals the supervisor, which sends
    SIGHUP to every worker: a revoked key then fails on whichever worker answers."""
    mock_upstream.default = Json(body=completion())
    gw = await ProcGateway.start(tmp_path / "gw", admin_config(mock_upstream), args=("--workers", "2"))
    try:
        r = await api(gw.port, "POST", "/admin/keys", {"name": "temp"})
        assert r.status == 201, r.body
        secret = r.json()["secret"]
        await wait_until(lambda: gw.stderr_text().count("config reloaded") >= 2, what="both workers reloaded")
        for _ in range(8):  # new connections spread over both workers (SO_REUSEPORT)
            r = await call(gw.port, chat("m"), key=secret)
            assert r.status == 200, r.body
        r = await api(gw.port, "DELETE", "/admin/keys/temp")
        assert r.status == 200, r.body
        await wait_until(lambda: gw.stderr_text().count("config reloaded") >= 4, what="both workers reloaded again")
        for _ in range(8):
            r = await call(gw.port, chat("m"), key=secret)
            assert r.status == 401, r.body
    finally:
        await gw.close()


async def test_cookies_are_secure_behind_https(start_gateway: StartGateway, mock_upstream: MockUpstream, github: MockGithub) -> None:
    """TLS terminated in front (redirect_url is https): every cookie the gateway sets is Secure."""
    extra = github_extra(github, redirect_url="https://gw.example.com/auth/github/callback")
    gw = await start_gateway(admin_config(mock_upstream, extra), env=GH_ENV)
    r = await call(gw.port, path="/auth/github/login", method="GET", key=None)
    assert r.status == 302
    assert "redirect_uri=https%3A%2F%2Fgw.example.com%2Fauth%2Fgithub%2Fcallback" in (r.header("location") or "")
    assert (r.header("set-cookie") or "").endswith("; Secure"), r.headers
    r = await call(gw.port, b"", path="/auth/logout", method="POST", key=None)
    assert (r.header("set-cookie") or "").endswith("; Secure"), r.headers
