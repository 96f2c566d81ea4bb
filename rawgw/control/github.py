"""Sign-in with GitHub: the web flow (browser pages) and the device flow (RFC 8628, CLIs).

Wiring (for the dispatcher), when ``config.auth.github`` is set::

    gh = GithubSignIn(config.auth.github, PoolHttp(), signer, issue_key)
    # issue_key = lambda login, fields: admin_api.upsert_key(f"github:{login}", f"gh-{login}", fields)
    reply = await gh.handle(method, target, cookie_header, body, own_origin, secure)

for ``/auth/github/login``, ``/auth/github/callback``, ``/auth/me``, ``/auth/logout``,
``/auth/device/request`` and ``/auth/device/poll``: no principal needed (these ARE the
sign-in); ``own_origin`` is ``scheme://host[:port]`` of the request (for the default
redirect URL and the CSRF check), ``secure`` whether the client leg is TLS.

Web flow: ``/auth/github/login`` answers 302 to ``{oauth_base}/login/oauth/authorize`` with a
random ``state``, kept in a short-lived pending store AND in a ``rawgw_oauth`` cookie (so a
callback started in another browser — login CSRF — fails). ``/auth/github/callback``
checks both (single use), exchanges ``code`` at ``{oauth_base}/login/oauth/access_token``,
reads ``{api_base}/user`` (and ``/user/orgs`` when ``allowed_orgs`` is set), applies the
allow-list, and sets the session cookie on a 200 page that moves on to ``/admin`` (or ``/dashboard`` with ``?next=/dashboard``) (a
SameSite=Strict cookie set during a cross-site redirect chain would not be sent on the
next hop). The GitHub access token is used for these two reads and dropped.

Device flow: ``POST /auth/device/request`` gets a code from ``{oauth_base}/login/device/code``
and answers ``user_code``, ``verification_uri``, ``interval``, ``expires_in`` and an opaque
``device_id`` (GitHub's ``device_code`` stays in the gateway). ``POST /auth/device/poll``
with ``{"device_id": ...}`` polls GitHub once: ``authorization_pending`` /
``slow_down`` (interval += 5) / ``expired_token`` / ``access_denied`` become 400/400/400/403
OpenAI-shaped errors with that ``code`` (and ``interval``); on success a personal gateway
key ``gh-<login>`` with ``[auth.github] key_defaults`` is written through the overlay and
its secret returned once.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

import h11
import orjson

from rawgw.config import GithubAuth
from rawgw.control.admin_api import error
from rawgw.control.cookies import SessionSigner, clear_cookie
from rawgw.errors import GatewayError
from rawgw.http.reply import Reply
from rawgw.upstream.fetch import BodyCollector
from rawgw.upstream.pool import Origin, Pools

Headers = list[tuple[bytes, bytes]]
Http = Callable[[str, str, list[tuple[str, str]], bytes], Awaitable[tuple[int, Headers, bytes]]]
IssueKey = Callable[[str, dict[str, Any]], Awaitable[str]]  # (login, key fields) -> secret

STATE_COOKIE: Final = "rawgw_oauth"
PENDING_TTL_S: Final = 600.0
MAX_PENDING: Final = 10000
DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
_LOGIN: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_HTML: Final = b"text/html; charset=utf-8"
NEXT_PAGES: Final = frozenset({"/admin", "/dashboard"})


class PoolHttp:
    """The ``http`` function over rawgw.upstream (OriginPool), bodies allowed.

    ``rawgw.upstream.fetch.fetch`` sends no body; this is its small POST-capable twin.
    """

    def __init__(self, timeout_s: float = 15.0, max_header_bytes: int = 16384) -> None:
        self.timeout_s = timeout_s
        self.pools = Pools(max_header_bytes)

    async def __call__(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> tuple[int, Headers, bytes]:
        u = urlsplit(url)
        scheme = u.scheme.lower()
        origin = Origin(scheme, u.hostname or "", u.port or (443 if scheme == "https" else 80))
        pool = self.pools.get(origin, 8, 30.0)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        hdrs = [("host", origin.authority), ("user-agent", "rawgw"), *headers]
        if body or method == "POST":
            hdrs.append(("content-length", str(len(body))))
        request = h11.Request(method=method, target=target, headers=hdrs)
        conn = await pool.acquire(self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s):
                head = await conn.start(request, body, self.timeout_s)
                collector = BodyCollector(1024 * 1024)
                conn.stream_to(collector)
                data = await collector.done
        except BaseException:
            conn.detach()
            raise
        return head.status_code, list(head.headers), data

    def close(self) -> None:
        self.pools.close()


@dataclass(slots=True)
class _Device:
    device_code: str
    interval: float
    expires_at: float
    next_poll: float


class _Expiring(OrderedDict[str, tuple[float, Any]]):
    """Insertion-ordered entries with a deadline; bounded."""

    def add(self, key: str, value: Any, deadline: float, now: float) -> None:
        while self and (len(self) >= MAX_PENDING or next(iter(self.values()))[0] <= now):
            self.popitem(last=False)
        self[key] = (deadline, value)

    def take(self, key: str, now: float) -> Any | None:
        item = self.pop(key, None)
        if item is None or item[0] <= now:
            return None
        return item[1]


class GithubSignIn:
    def __init__(
        self,
        cfg: GithubAuth,
        http: Http,
        signer: SessionSigner,
        issue_key: IssueKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.http = http
        self.signer = signer
        self.issue_key = issue_key
        self.clock = clock
        self.states = _Expiring()
        self.devices = _Expiring()

    async def handle(self, method: bytes, target: str, cookie: bytes | None, body: bytes, own_origin: str, secure: bool) -> Reply:
        path, _, query = target.partition("?")
        routes: dict[str, tuple[bytes, Callable[[], Awaitable[Reply]]]] = {
            "/auth/github/login": (b"GET", lambda: self._sync(self.login(own_origin, secure, query))),
            "/auth/github/callback": (b"GET", lambda: self.callback(query, cookie, own_origin, secure)),
            "/auth/me": (b"GET", lambda: self._sync(self.me(cookie))),
            "/auth/logout": (b"POST", lambda: self._sync(self.logout(secure))),
            "/auth/device/request": (b"POST", self.device_request),
            "/auth/device/poll": (b"POST", lambda: self.device_poll(body)),
        }
        entry = routes.get(path)
        if entry is None:
            return error(404, f"unknown path {path}", "unknown_path")
        if method != entry[0]:
            return error(405, f"use {entry[0].decode()}", "method_not_allowed", ((b"allow", entry[0]),))
        try:
            return await entry[1]()
        except GatewayError as exc:
            return Reply(exc.status, exc.body())
        except (OSError, TimeoutError, ValueError) as exc:
            # network trouble reaching GitHub; the message never carries a token
            return error(502, f"cannot reach GitHub: {type(exc).__name__}", "github_unreachable")

    @staticmethod
    async def _sync(reply: Reply) -> Reply:
        return reply

    def redirect_uri(self, own_origin: str) -> str:
        return self.cfg.redirect_url or own_origin.rstrip("/") + "/auth/github/callback"

    # ---------------------------------------------------------------- web flow

    def login(self, own_origin: str, secure: bool, query: str = "") -> Reply:
        now = self.clock()
        state = secrets.token_urlsafe(24)
        # where the browser goes once signed in: one of the gateway's pages, never a URL
        # from the query (an open redirect)
        after = (parse_qs(query).get("next") or ["/admin"])[0]
        self.states.add(state, after if after in NEXT_PAGES else "/admin", now + PENDING_TTL_S, now)
        query = urlencode(
            {"client_id": self.cfg.client_id, "redirect_uri": self.redirect_uri(own_origin), "state": state, "scope": "read:org", "allow_signup": "false"}
        )
        # SameSite=Lax: this cookie must come back on GitHub's top-level redirect
        cookie = f"{STATE_COOKIE}={state}; Path=/auth/github; Max-Age={int(PENDING_TTL_S)}; HttpOnly; SameSite=Lax"
        headers = (
            (b"location", f"{self.cfg.oauth_base}/login/oauth/authorize?{query}".encode()),
            (b"set-cookie", (cookie + ("; Secure" if secure else "")).encode()),
            (b"cache-control", b"no-store"),
        )
        return Reply(302, b"", _HTML, headers)

    async def callback(self, query: str, cookie: bytes | None, own_origin: str, secure: bool) -> Reply:
        q = {k: v[0] for k, v in parse_qs(query).items()}
        if "error" in q:
            raise GatewayError(403, f"GitHub sign-in was not completed ({q['error'][:60]})", code="access_denied")
        state, code = q.get("state", ""), q.get("code", "")
        bound = _cookie_value(cookie, STATE_COOKIE)
        # single use: taken from the store whether or not the rest succeeds
        after = self.states.take(state, self.clock())
        if not state or not code or after is None or bound is None or not secrets.compare_digest(bound, state):
            raise GatewayError(400, "sign-in state mismatch or expired: start again at /auth/github/login", code="invalid_state")
        token = await self._exchange({"client_id": self.cfg.client_id, "client_secret": self.cfg.client_secret, "code": code, "redirect_uri": self.redirect_uri(own_origin)})
        login, admin = await self._authorize(token)
        session = self.signer.issue(login, admin)
        page = (
            f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={after}">'
            f'<title>Signed in</title><a href="{after}">Continue</a>'
        ).encode()
        headers = (self.signer.set_cookie(session, secure), _expire_state(secure), (b"cache-control", b"no-store"))
        return Reply(200, page, _HTML, headers)

    def me(self, cookie: bytes | None) -> Reply:
        s = self.signer.from_cookie_header(cookie)
        if s is None:
            raise GatewayError(401, "not signed in", code="not_signed_in")
        return Reply.json(200, {"login": s.login, "admin": s.admin, "expires": s.expiry, "csrf_token": self.signer.csrf_token(s)})

    def logout(self, secure: bool) -> Reply:
        return Reply.json(200, {"signed_out": True}, (clear_cookie(secure),))

    # ---------------------------------------------------------------- device flow

    async def device_request(self) -> Reply:
        status, _, body = await self._post(f"{self.cfg.oauth_base}/login/device/code", {"client_id": self.cfg.client_id, "scope": "read:org"})
        doc = _json(body)
        if status != 200 or not isinstance(doc.get("device_code"), str):
            raise GatewayError(502, f"GitHub refused the device code request ({_gh_error(doc, status)})", code="github_error")
        now = self.clock()
        expires_in = float(doc.get("expires_in", 900))
        interval = float(doc.get("interval", 5))
        device_id = secrets.token_urlsafe(24)
        self.devices.add(device_id, _Device(doc["device_code"], interval, now + expires_in, now + interval), now + expires_in, now)
        return Reply.json(
            200,
            {
                "device_id": device_id,
                "user_code": doc.get("user_code"),
                "verification_uri": doc.get("verification_uri"),
                "interval": interval,
                "expires_in": expires_in,
            },
        )

    async def device_poll(self, body: bytes) -> Reply:
        try:
            device_id = orjson.loads(body).get("device_id")
        except (orjson.JSONDecodeError, AttributeError):
            device_id = None
        if not isinstance(device_id, str):
            raise GatewayError(400, 'body must be {"device_id": "..."} from /auth/device/request', code="invalid_request")
        now = self.clock()
        entry = self.devices.get(device_id)
        if entry is None or entry[0] <= now:
            self.devices.pop(device_id, None)
            raise GatewayError(400, "device code expired or unknown: request a new one", code="expired_token")
        dev: _Device = entry[1]
        if now < dev.next_poll:
            dev.interval += 5  # RFC 8628 §3.5: polling too fast
            dev.next_poll = now + dev.interval
            return _poll_error(400, "polling too fast: wait interval seconds", "slow_down", dev.interval)
        dev.next_poll = now + dev.interval
        status, _, raw = await self._post(
            f"{self.cfg.oauth_base}/login/oauth/access_token",
            {"client_id": self.cfg.client_id, "device_code": dev.device_code, "grant_type": DEVICE_GRANT},
        )
        doc = _json(raw)
        err = doc.get("error")
        if err == "authorization_pending":
            return _poll_error(400, "waiting for the user to enter the code at GitHub", "authorization_pending", dev.interval)
        if err == "slow_down":
            dev.interval = max(dev.interval + 5, float(doc.get("interval", 0)))
            dev.next_poll = now + dev.interval
            return _poll_error(400, "polling too fast: wait interval seconds", "slow_down", dev.interval)
        if err in ("expired_token", "access_denied"):
            self.devices.pop(device_id, None)
            if err == "expired_token":
                raise GatewayError(400, "device code expired: request a new one", code="expired_token")
            raise GatewayError(403, "the user denied the sign-in at GitHub", code="access_denied")
        token = doc.get("access_token")
        if status != 200 or not isinstance(token, str):
            self.devices.pop(device_id, None)
            raise GatewayError(502, f"GitHub refused the device code ({_gh_error(doc, status)})", code="github_error")
        self.devices.pop(device_id, None)  # single use, whatever follows
        login, admin = await self._authorize(token)
        d = self.cfg.key_defaults
        fields: dict[str, Any] = {
            "key": "rgw_" + secrets.token_urlsafe(32),
            "providers": list(d.providers),
            "models": list(d.models),
            "rate_limit_rpm": d.rate_limit_rpm,
            "rate_limit_burst": d.rate_limit_burst,
        }
        secret = await self.issue_key(login, fields)
        return Reply.json(200, {"login": login, "admin": admin, "name": f"gh-{login}", "key": secret, "note": "the key is shown only this once"})

    # ---------------------------------------------------------------- GitHub calls

    async def _post(self, url: str, form: dict[str, str]) -> tuple[int, Headers, bytes]:
        headers = [("accept", "application/json"), ("content-type", "application/x-www-form-urlencoded")]
        return await self.http("POST", url, headers, urlencode(form).encode())

    async def _exchange(self, form: dict[str, str]) -> str:
        status, _, raw = await self._post(f"{self.cfg.oauth_base}/login/oauth/access_token", form)
        doc = _json(raw)
        token = doc.get("access_token")
        if status != 200 or not isinstance(token, str):
            # bad_verification_code: wrong, expired or replayed code
            raise GatewayError(400, f"GitHub refused the sign-in code ({_gh_error(doc, status)}); codes are single-use: start again", code="invalid_grant")
        return token

    async def _get(self, url: str, token: str) -> Any:
        headers = [("accept", "application/vnd.github+json"), ("authorization", f"Bearer {token}")]
        status, _, raw = await self.http("GET", url, headers, b"")
        if status != 200:
            raise GatewayError(502, f"GitHub answered {status} to {urlsplit(url).path}", code="github_error")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError(502, f"GitHub sent invalid JSON for {urlsplit(url).path}", code="github_error") from None

    async def _authorize(self, token: str) -> tuple[str, bool]:
        """The GitHub login behind ``token`` and whether it is an admin; 403 outside the allow-list."""
        user = await self._get(f"{self.cfg.api_base}/user", token)
        login = user.get("login") if isinstance(user, dict) else None
        if not isinstance(login, str) or not _LOGIN.fullmatch(login):
            raise GatewayError(502, "GitHub sent no valid login", code="github_error")
        low = login.lower()
        admins = {a.lower() for a in self.cfg.admins}
        allowed = low in admins or low in {u.lower() for u in self.cfg.allowed_users}
        if not allowed and self.cfg.allowed_orgs:
            orgs = await self._get(f"{self.cfg.api_base}/user/orgs", token)
            names = {o.get("login", "").lower() for o in orgs if isinstance(o, dict)} if isinstance(orgs, list) else set()
            allowed = bool(names & {o.lower() for o in self.cfg.allowed_orgs})
        if not allowed:
            raise GatewayError(403, f"GitHub user {login} is not allowed to sign in here", code="not_allowed")
        return login, low in admins


def _poll_error(status: int, message: str, code: str, interval: float) -> Reply:
    err = GatewayError(status, message, code=code)
    return Reply.json(status, {"error": {"message": message, "type": err.type, "code": code, "interval": interval}})


def _json(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _gh_error(doc: dict[str, Any], status: int) -> str:
    err = doc.get("error")
    return err[:60] if isinstance(err, str) and err.isascii() else f"HTTP {status}"


def _cookie_value(header: bytes | None, name: str) -> str | None:
    if not header:
        return None
    for pair in header.decode("latin-1").split(";"):
        k, _, v = pair.strip().partition("=")
        if k == name:
            return v
    return None


def _expire_state(secure: bool) -> tuple[bytes, bytes]:
    value = f"{STATE_COOKIE}=; Path=/auth/github; Max-Age=0; HttpOnly; SameSite=Lax" + ("; Secure" if secure else "")
    return (b"set-cookie", value.encode())
