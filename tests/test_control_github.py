"""rawgw.control.github against tests/mock_github.py over loopback (PoolHttp on
rawgw.upstream): web flow with state + cookie binding, replayed codes, allow-lists,
/auth/me and logout; device flow with pending, slow_down, expired, denied, success."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from mock_github import CLIENT_ID, CLIENT_SECRET, MockGithub

from rawgw.config import GithubAuth, KeyDefaults
from rawgw.control.cookies import COOKIE_NAME, SessionSigner
from rawgw.control.github import STATE_COOKIE, GithubSignIn, PoolHttp
from rawgw.http.reply import Reply

OWN = "http://127.0.0.1:8080"


class Env:
    def __init__(self, gh: MockGithub, **cfg: Any) -> None:
        self.gh = gh
        self.now = 1000.0
        self.http = PoolHttp(timeout_s=5)
        self.issued: list[tuple[str, dict[str, Any]]] = []
        conf = GithubAuth(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            oauth_base=gh.url,
            api_base=gh.url,
            key_defaults=KeyDefaults(providers=("openrouter",), rate_limit_rpm=20),
            **cfg,
        )
        self.signer = SessionSigner(b"s" * 32, clock=lambda: self.now)

        async def issue(login: str, fields: dict[str, Any]) -> str:
            self.issued.append((login, fields))
            return str(fields["key"])

        self.sign_in = GithubSignIn(conf, self.http, self.signer, issue, clock=lambda: self.now)

    async def call(self, method: str, target: str, cookie: str | None = None, body: Any = None) -> Reply:
        raw = b"" if body is None else orjson.dumps(body)
        return await self.sign_in.handle(method.encode(), target, cookie.encode() if cookie else None, raw, OWN, False)

    async def start_login(self) -> tuple[str, str]:
        """/auth/github/login, then the browser at GitHub: (callback target, state cookie)."""
        r = await self.call("GET", "/auth/github/login")
        assert r.status == 302
        location = dict(r.headers)[b"location"].decode()
        assert location.startswith(f"{self.gh.url}/login/oauth/authorize?")
        state_cookie = dict(r.headers)[b"set-cookie"].decode().split(";")[0]
        status, headers, _ = await self.http("GET", location, [], b"")
        assert status == 302
        back = dict(headers)[b"location"].decode()
        assert back.startswith(OWN + "/auth/github/callback?")
        return back[len(OWN) :], state_cookie


@pytest.fixture
async def gh() -> AsyncIterator[MockGithub]:
    mock = await MockGithub.start()
    yield mock
    await mock.close()


def session_of(env: Env, r: Reply) -> str:
    cookies = [v.decode() for k, v in r.headers if k == b"set-cookie"]
    mine = [c for c in cookies if c.startswith(COOKIE_NAME + "=")]
    assert len(mine) == 1 and "HttpOnly" in mine[0] and "SameSite=Strict" in mine[0], cookies
    return mine[0].split(";")[0]


def err(r: Reply) -> dict[str, Any]:
    doc = orjson.loads(r.body)
    assert set(doc) == {"error"}, doc
    e: dict[str, Any] = doc["error"]
    return e


async def test_web_flow_signs_in_an_admin(gh: MockGithub) -> None:
    env = Env(gh, admins=("OctoCat",))
    callback, state_cookie = await env.start_login()
    q = parse_qs(urlsplit(callback).query)
    assert set(q) == {"code", "state"}
    r = await env.call("GET", callback, state_cookie)
    assert r.status == 200 and b"/admin" in r.body
    cookie = session_of(env, r)
    me = await env.call("GET", "/auth/me", cookie)
    doc = orjson.loads(me.body)
    assert me.status == 200 and doc["login"] == "octocat" and doc["admin"] is True and doc["csrf_token"]
    # the token exchange carried the secret to GitHub, never back out
    exchange = next(req for req in gh.requests if req[1] == "/login/oauth/access_token")
    assert exchange[2]["accept"] == "application/json" and CLIENT_SECRET.encode() in exchange[3]
    assert CLIENT_SECRET.encode() not in r.body + me.body and not any(CLIENT_SECRET.encode() in v for _, v in r.headers)
    out = await env.call("POST", "/auth/logout", cookie)
    assert out.status == 200 and dict(out.headers)[b"set-cookie"].startswith(f"{COOKIE_NAME}=;".encode())
    assert (await env.call("GET", "/auth/me")).status == 401
    env.http.close()


async def test_replayed_code_and_state_mismatch_are_refused(gh: MockGithub) -> None:
    env = Env(gh, allowed_users=("octocat",))
    callback, state_cookie = await env.start_login()
    assert (await env.call("GET", callback, state_cookie)).status == 200
    again = await env.call("GET", callback, state_cookie)  # state already used
    assert again.status == 400 and err(again)["code"] == "invalid_state"
    assert not any(k == b"set-cookie" and v.startswith(COOKIE_NAME.encode()) for k, v in again.headers)
    # a fresh state but a code GitHub has already redeemed: GitHub's refusal is reported
    callback2, cookie2 = await env.start_login()
    code1 = parse_qs(urlsplit(callback).query)["code"][0]
    state2 = parse_qs(urlsplit(callback2).query)["state"][0]
    replay = await env.call("GET", f"/auth/github/callback?code={code1}&state={state2}", cookie2)
    assert replay.status == 400 and err(replay)["code"] == "invalid_grant" and "bad_verification_code" in err(replay)["message"]
    # state from another browser (no / another state cookie), and a made-up state
    callback3, _ = await env.start_login()
    assert err(await env.call("GET", callback3, f"{STATE_COOKIE}=other"))["code"] == "invalid_state"
    assert err(await env.call("GET", "/auth/github/callback?code=x&state=made-up", f"{STATE_COOKIE}=made-up"))["code"] == "invalid_state"
    # an expired state
    callback4, cookie4 = await env.start_login()
    env.now += 601
    assert err(await env.call("GET", callback4, cookie4))["code"] == "invalid_state"
    env.http.close()


async def test_allow_lists(gh: MockGithub) -> None:
    env = Env(gh, allowed_orgs=("Acme",))
    callback, cookie = await env.start_login()
    r = await env.call("GET", callback, cookie)
    assert r.status == 403 and err(r)["code"] == "not_allowed" and "octocat" in err(r)["message"]
    assert not any(k == b"set-cookie" and v.startswith(COOKIE_NAME.encode()) for k, v in r.headers)
    gh.orgs["octocat"] = ["acme"]
    callback, cookie = await env.start_login()
    r = await env.call("GET", callback, cookie)
    assert r.status == 200 and orjson.loads((await env.call("GET", "/auth/me", session_of(env, r))).body)["admin"] is False
    env.http.close()


async def test_device_flow(gh: MockGithub) -> None:
    env = Env(gh, allowed_users=("octocat",))
    gh.device_script = ["authorization_pending", "slow_down"]
    r = await env.call("POST", "/auth/device/request")
    doc = orjson.loads(r.body)
    assert r.status == 200 and doc["user_code"] == "ABCD-1234" and doc["interval"] == 5
    assert "device_code" not in doc  # GitHub's code stays in the gateway
    poll = {"device_id": doc["device_id"]}
    early = await env.call("POST", "/auth/device/poll", body=poll)  # before the interval
    assert err(early)["code"] == "slow_down" and err(early)["interval"] == 10
    env.now += 10
    pending = await env.call("POST", "/auth/device/poll", body=poll)
    assert pending.status == 400 and err(pending)["code"] == "authorization_pending"
    env.now += 10
    slow = await env.call("POST", "/auth/device/poll", body=poll)
    assert err(slow)["code"] == "slow_down" and err(slow)["interval"] == 15
    env.now += 15
    ok = await env.call("POST", "/auth/device/poll", body=poll)
    doc = orjson.loads(ok.body)
    assert ok.status == 200 and doc["name"] == "gh-octocat" and doc["key"].startswith("rgw_")
    assert env.issued == [("octocat", {"key": doc["key"], "providers": ["openrouter"], "models": [], "rate_limit_rpm": 20, "rate_limit_burst": 0})]
    env.now += 15
    assert err(await env.call("POST", "/auth/device/poll", body=poll))["code"] == "expired_token"  # single use
    env.http.close()


async def test_device_flow_expired_denied_and_not_allowed(gh: MockGithub) -> None:
    env = Env(gh, allowed_users=("someone-else",))
    for step, status, code in (("expired_token", 400, "expired_token"), ("access_denied", 403, "access_denied")):
        gh.device_script = [step]
        doc = orjson.loads((await env.call("POST", "/auth/device/request")).body)
        env.now += 5
        r = await env.call("POST", "/auth/device/poll", body={"device_id": doc["device_id"]})
        assert r.status == status and err(r)["code"] == code
    doc = orjson.loads((await env.call("POST", "/auth/device/request")).body)
    env.now += 5
    r = await env.call("POST", "/auth/device/poll", body={"device_id": doc["device_id"]})
    assert r.status == 403 and err(r)["code"] == "not_allowed" and env.issued == []
    # expired locally (expires_in = 900)
    doc = orjson.loads((await env.call("POST", "/auth/device/request")).body)
    env.now += 901
    assert err(await env.call("POST", "/auth/device/poll", body={"device_id": doc["device_id"]}))["code"] == "expired_token"
    assert err(await env.call("POST", "/auth/device/poll", body={}))["code"] == "invalid_request"
    assert (await env.call("GET", "/auth/device/poll")).status == 405
    env.http.close()
