"""The control plane behind the dispatcher: who is calling, and which rawgw.control module answers.

Paths (``Endpoint.kind == "control"``): ``GET /admin`` (the page, public), ``/admin/...``
(admin API), ``/auth/...`` (GitHub sign-in, public: these ARE the sign-in) and
``/session/...`` (X-Session-ID counters). The principal comes from a gateway key
(Authorization: Bearer / x-api-key; a wrong key is 401 even if a cookie is also sent) or,
on these paths only, from the signed session cookie; a state-changing call authenticated by
the cookie must pass the CSRF rule (rawgw.control.cookies). The proxied ``/v1/...`` paths
never get here and never look at a cookie.

Admin changes are applied in this process at once (``Gateway.reload``). Other processes:
with ``--workers N`` this worker signals the supervisor, which forwards SIGHUP to every
worker (each re-reads config + overlay). Other instances, with ``[state]``: the overlay's
text is stored on the state server and an ``overlay_changed`` event published; each
instance writes it to its own ``gateway.d/admin.toml`` and reloads (``from_cluster``). The
last change wins; a change made while the state server is down stays local.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from rawgw.config import ConfigError
from rawgw.configfile import load_config
from rawgw.control import overlay
from rawgw.control.admin_api import AdminAPI, AuditLog, Principal
from rawgw.control.cookies import SessionSigner, cookie_allowed, csrf_ok, load_signing_key
from rawgw.control.github import GithubSignIn, PoolHttp
from rawgw.control.sessions import SessionTracker, valid_session_id
from rawgw.control.usage import UsageWindow
from rawgw.errors import GatewayError
from rawgw.http.headers import get_header
from rawgw.http.reply import Reply
from rawgw.routing.auth import authenticate, presented_key

if TYPE_CHECKING:
    from rawgw.cache import ResponseCache
    from rawgw.config import Config, GatewayKey, GithubAuth
    from rawgw.observe.record import RequestRecord
    from rawgw.request import Incoming
    from rawgw.routing.keys import KeyPool

HTML = b"text/html; charset=utf-8"
WWW_AUTHENTICATE = (b"www-authenticate", b'Bearer realm="rawgw"')
PROXIED = frozenset({"routed", "passthrough", "provider"})


class _Router(Protocol):
    @property
    def pools(self) -> dict[str, KeyPool]: ...


log = logging.getLogger("rawgw.control")


class ControlHost(Protocol):
    """What the control plane reads from the running gateway (all on the loop)."""

    config: Config
    keys: tuple[GatewayKey, ...]
    encoded_keys: list[bytes]
    cache: ResponseCache | None
    workers: int

    @property
    def router(self) -> _Router: ...

    def reload(self, config: Config) -> None: ...

    def providers_status(self) -> dict[str, Any]: ...

    async def clear_shared_cache(self) -> int: ...

    @property
    def shares_state(self) -> bool: ...

    async def share_overlay(self, text: bytes) -> None: ...


class _AdminContext:
    """rawgw.control.admin_api.AdminContext over the gateway."""

    def __init__(self, plane: ControlPlane, audit: AuditLog) -> None:
        self.plane = plane
        self.host = plane.host
        self._audit = audit

    def config(self) -> Config:
        return self.host.config

    def apply(self, config: Config) -> None:
        self.plane.apply(config)

    async def clear_cache(self) -> int:
        cache = self.host.cache
        if cache is None:
            return 0
        n = len(cache.entries)
        cache.entries.clear()
        return n + await self.host.clear_shared_cache()

    def enable_key(self, provider: str, index: int) -> bool:
        pool = self.host.router.pools.get(provider)
        # KeyPool.enable tells the state backend: with [state] url, every instance
        return pool is not None and pool.enable(index)

    def providers(self) -> dict[str, Any]:
        return self.host.providers_status()

    def usage(self, window_s: float) -> dict[str, Any]:
        return self.plane.usage.summary(window_s)

    def audit(self, who: str, action: str, detail: Mapping[str, Any]) -> None:
        self._audit(who, action, detail)


class ControlPlane:
    def __init__(self, host: ControlHost, put_log: Callable[[str, dict[str, Any]], None]) -> None:
        self.host = host
        cfg = host.config
        self.sessions = SessionTracker(cfg.server.session_ttl_s, cfg.server.max_sessions)
        self.usage = UsageWindow()
        self.api = AdminAPI(_AdminContext(self, AuditLog(put_log)))
        self.changed: list[Callable[[], None]] = []
        if host.workers > 1:
            self.changed.append(_signal_supervisor)
        if host.shares_state:
            self.changed.append(self._share_overlay)
        self._tasks: set[asyncio.Task[None]] = set()
        self.signer: SessionSigner | None = None
        self.github: GithubSignIn | None = None
        self._github_cfg: GithubAuth | None = None
        self._http: PoolHttp | None = None
        self.configure(cfg)

    # ---- config ---------------------------------------------------------------

    def configure(self, cfg: Config) -> None:
        """After every load or reload: session limits, the sign-in (rebuilt only when
        [auth.github] changed, so pending logins survive an unrelated change)."""
        self.sessions.reconfigure(cfg.server.session_ttl_s, cfg.server.max_sessions)
        gh = cfg.auth.github
        if gh == self._github_cfg:
            return
        self._github_cfg = gh
        if gh is None:
            self.github = None
            return
        if self.signer is None:
            # Read once (startup, or the first reload that turns sign-in on): a small file.
            key = load_signing_key(os.path.dirname(os.path.abspath(cfg.path))) if cfg.path else os.urandom(32)
            self.signer = SessionSigner(key)
        if self._http is None:
            self._http = PoolHttp()
        self.github = GithubSignIn(gh, self._http, self.signer, self._issue_key)

    def apply(self, config: Config) -> None:
        """An admin change validated and written: swap it in here, then tell the others."""
        self.host.reload(config)
        for hook in self.changed:
            hook()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _share_overlay(self) -> None:
        path = self.host.config.path
        if path is not None:
            self._spawn(self._send_overlay(overlay.overlay_path(path)))

    async def _send_overlay(self, path: str) -> None:
        try:
            text = await asyncio.to_thread(_read_bytes, path)
        except OSError as exc:
            log.warning("admin overlay not shared: cannot read %s: %s", path, exc.strerror or exc)
            return
        await self.host.share_overlay(text)

    def from_cluster(self, text: bytes) -> None:
        """The state server's overlay (another instance's admin change, or the one stored
        when this process joined): write it to this instance's overlay file and reload."""
        path = self.host.config.path
        if path is not None:
            self._spawn(self._apply_cluster_overlay(path, text))

    async def _apply_cluster_overlay(self, config_path: str, text: bytes) -> None:
        target = overlay.overlay_path(config_path)
        try:
            current = await asyncio.to_thread(_read_bytes, target)
        except OSError:
            current = None
        if current == text:
            return  # ours (or already applied)
        try:
            doc = overlay.parse_text(text)
            await asyncio.to_thread(overlay.write_overlay, target, doc)
            cfg = await asyncio.to_thread(load_config, config_path)
        except (ConfigError, OSError) as exc:
            errors = exc.errors if isinstance(exc, ConfigError) else [str(exc)]
            log.warning("admin overlay from the state server not applied: %s", "; ".join(errors))
            return
        self.host.reload(cfg)
        log.info("admin overlay from the state server applied")

    async def _issue_key(self, login: str, fields: dict[str, Any]) -> str:
        await self.api.upsert_key(f"github:{login}", f"gh-{login}", fields)
        return str(fields["key"])

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    # ---- per request ----------------------------------------------------------

    def observe(self, rec: RequestRecord) -> None:
        """Each finished request: windowed usage and X-Session-ID counters (proxied only)."""
        if rec.kind not in PROXIED:
            return
        prompt = rec.prompt_tokens or 0
        completion = rec.completion_tokens or 0
        if rec.provider:  # answered by a provider (or from its cache), not refused at the door
            self.usage.add(rec.key_name, rec.provider, rec.upstream_model or rec.client_model or "", prompt, completion)
        if rec.session_id is not None:
            self.sessions.record(rec.session_id, rec.key_name, rec.client_model, prompt, completion)

    def cookie_session(self, inc: Incoming) -> Principal | None:
        """The signed-in GitHub user on a control-plane path (cookies.py rule 1), admin as the
        running config says (a login removed from ``admins`` loses /admin at once)."""
        signer, gh = self.signer, self.host.config.auth.github
        if signer is None or gh is None or not cookie_allowed(inc.endpoint.path):
            return None
        s = signer.from_cookie_header(get_header(inc.headers, b"cookie"))
        if s is None:
            return None
        return Principal("github", s.login, s.login.lower() in {a.lower() for a in gh.admins})

    def lets_in(self, inc: Incoming) -> bool:
        """A local path without a key: a signed-in user (``/metrics.json``, ``/dashboard``), or
        the dashboard page itself when sign-in is configured (it holds no data; it shows
        the sign-in screen)."""
        if inc.endpoint.path == "/dashboard" and self.host.config.auth.github is not None:
            return True
        return self.cookie_session(inc) is not None

    def principal(self, inc: Incoming) -> Principal | None:
        presented = presented_key(inc.headers)
        if presented is not None:
            key = authenticate(self.host.keys, self.host.encoded_keys, presented)
            if key is None:
                raise GatewayError(401, "invalid gateway key", headers=[WWW_AUTHENTICATE])
            inc.key = key
            return Principal("key", key.name, key.admin)
        who = self.cookie_session(inc)
        if who is not None and self.signer is not None:
            s = self.signer.from_cookie_header(get_header(inc.headers, b"cookie"))
            token = get_header(inc.headers, b"x-csrf-token")
            if s is not None and not csrf_ok(self.signer, s, inc.method, inc.origin, self.own_origin(inc), token):
                raise GatewayError(
                    403, "cross-site request refused: send a same-origin Origin or the X-CSRF-Token from /auth/me", code="csrf_failed"
                )
        return who

    def secure(self) -> bool:
        """Cookies get ``Secure`` when the gateway is reached over https (the client leg
        speaks plain HTTP; TLS is terminated in front, and redirect_url names it)."""
        gh = self.host.config.auth.github
        return gh is not None and gh.redirect_url.startswith("https://")

    def own_origin(self, inc: Incoming) -> str:
        host = (get_header(inc.headers, b"host") or b"").decode("latin-1")
        return ("https://" if self.secure() else "http://") + host

    async def answer(self, inc: Incoming, body: bytes) -> Reply:
        path = inc.endpoint.path
        method = inc.method
        target = inc.request.target.decode("latin-1")
        if path == "/admin":
            if method not in (b"GET", b"HEAD"):
                raise GatewayError(405, "/admin accepts GET and HEAD only", headers=[(b"allow", b"GET, HEAD")])
            from rawgw.control.admin_page import PAGE

            return Reply(200, PAGE, HTML, ((b"cache-control", b"no-store"),))
        if path.startswith("/auth/"):
            gh = self.github
            if gh is None:
                raise GatewayError(404, "sign-in with GitHub is not configured ([auth.github])", code="unknown_path")
            return await gh.handle(method, target, get_header(inc.headers, b"cookie"), body, self.own_origin(inc), self.secure())
        who = self.principal(inc)
        if path.startswith("/session/"):
            reply = self.sessions.handle(who, method, path)
        else:
            reply = await self.api.handle(who, method, target, body)
        if reply.status == 401:
            # RFC 9110 §15.5.2: a 401 MUST carry a challenge
            reply = Reply(reply.status, reply.body, reply.content_type, (*reply.headers, WWW_AUTHENTICATE))
        return reply


def session_header(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """A valid X-Session-ID (1–128 visible ASCII) as sent, else None: none is made up."""
    value = get_header(headers, b"x-session-id")
    return value if value is not None and valid_session_id(value) is not None else None


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _signal_supervisor() -> None:
    # rawgw.workers forwards SIGHUP to every worker: each re-reads config + overlay
    try:
        os.kill(os.getppid(), signal.SIGHUP)
    except OSError:
        pass
