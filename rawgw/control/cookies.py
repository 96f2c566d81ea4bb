"""Signed session cookies for the browser pages (GitHub web sign-in).

A session is ``id|login|admin|expiry`` plus an HMAC-SHA256 over exactly that text, with a
key kept in ``gateway.d/session.key`` (32 random bytes, 0600, created when absent — so a
deleted key file logs everybody out on the next start). The cookie holds no secret of its
own: it only proves "the gateway signed this login until then". Comparison is
constant-time (hmac.compare_digest).

Dispatcher rules (the lead wires them; tests in tests/test_control_cookies.py pin the
functions):

1. The cookie is NEVER accepted on proxied paths (``/v1/...``, ``/{provider}/...``): only
   gateway keys authenticate model traffic. Use :func:`cookie_allowed` on the path.
2. On ``/admin/...``, ``/auth/me``, ``/auth/logout``, ``/session/...``, ``/metrics.json``
   and the pages, a valid cookie gives ``Principal("github", login, admin)``; an
   ``Authorization`` key wins when both are sent.
3. CSRF: a state-changing request (anything but GET/HEAD/OPTIONS) authenticated by the
   cookie needs :func:`csrf_ok`: an ``Origin`` equal to the gateway's own origin, or an
   ``X-CSRF-Token`` equal to :meth:`SessionSigner.csrf_token` of that session (the page
   gets it from ``/auth/me``). Else 403 ``csrf_failed``. SameSite=Strict is the first
   line, this is the second.
4. Set-Cookie gets ``Secure`` when the client connection is TLS (or the configured public
   URL is https).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from rawgw.control.overlay import OVERLAY_DIR

COOKIE_NAME: Final = "rawgw_session"
KEY_FILE: Final = "session.key"
SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})
# paths where a cookie may stand for a principal (prefix match); never the proxied ones
COOKIE_EXACT: Final = frozenset({"/admin", "/metrics.json", "/dashboard"})
COOKIE_PREFIXES: Final = ("/admin/", "/auth/", "/session/")


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    login: str
    admin: bool
    expiry: int  # unix seconds


def load_signing_key(config_dir: str) -> bytes:
    """``gateway.d/session.key`` next to the config, created (0600) if absent. Blocking:
    call at startup or through asyncio.to_thread.

    Worker processes start together: the key is written to a temp file and hard-linked into
    place, so a reader never sees a half-written file and exactly one key wins."""
    directory = os.path.join(config_dir, OVERLAY_DIR)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, KEY_FILE)
    for _ in range(2):
        try:
            with open(path, "rb") as fh:
                key = fh.read()
            if len(key) >= 32:
                return key
            os.unlink(path)  # too short to be ours: replace it
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".session.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won: read its key
        finally:
            os.unlink(tmp)
    with open(path, "rb") as fh:
        return fh.read()


class SessionSigner:
    def __init__(self, key: bytes, ttl_s: float = 12 * 3600, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.ttl_s = ttl_s
        self.clock = clock

    def __repr__(self) -> str:  # the key never in a repr
        return "SessionSigner(…)"

    def _mac(self, text: str, purpose: bytes = b"session") -> str:
        return hmac.new(self._key, purpose + b"\0" + text.encode(), hashlib.sha256).hexdigest()

    def issue(self, login: str, admin: bool) -> Session:
        return Session(secrets.token_urlsafe(12), login, admin, int(self.clock() + self.ttl_s))

    def encode(self, s: Session) -> str:
        text = f"{s.id}|{s.login}|{int(s.admin)}|{s.expiry}"
        return f"{text}|{self._mac(text)}"

    def decode(self, value: str) -> Session | None:
        """The session if the signature holds and it has not expired, else None."""
        parts = value.split("|")
        if len(parts) != 5:
            return None
        sid, login, admin, expiry, mac = parts
        text = f"{sid}|{login}|{admin}|{expiry}"
        if not hmac.compare_digest(self._mac(text), mac):
            return None
        if admin not in ("0", "1") or not expiry.isdigit() or int(expiry) <= self.clock():
            return None
        return Session(sid, login, admin == "1", int(expiry))

    def from_cookie_header(self, header: bytes | None) -> Session | None:
        """The session from a ``Cookie`` header (RFC 6265 §5.4), if any valid one."""
        if not header:
            return None
        for pair in header.decode("latin-1").split(";"):
            name, _, value = pair.strip().partition("=")
            if name == COOKIE_NAME:
                s = self.decode(value)
                if s is not None:
                    return s
        return None

    def csrf_token(self, s: Session) -> str:
        return self._mac(s.id, b"csrf")

    def set_cookie(self, s: Session, secure: bool) -> tuple[bytes, bytes]:
        max_age = max(0, s.expiry - int(self.clock()))
        return _cookie(self.encode(s), max_age, secure)


def clear_cookie(secure: bool) -> tuple[bytes, bytes]:
    return _cookie("", 0, secure)


def _cookie(value: str, max_age: int, secure: bool) -> tuple[bytes, bytes]:
    attrs = f"{COOKIE_NAME}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    return (b"set-cookie", (attrs + ("; Secure" if secure else "")).encode())


def cookie_allowed(path: str) -> bool:
    """Rule 1: the cookie is a principal only on the control plane's own paths."""
    return path in COOKIE_EXACT or path.startswith(COOKIE_PREFIXES)


def csrf_ok(
    signer: SessionSigner, session: Session, method: bytes, origin: bytes | None, own_origin: str, token: bytes | None
) -> bool:
    """Rule 3: safe methods pass; others need a same-origin Origin or the session's token."""
    if method in SAFE_METHODS:
        return True
    if origin is not None and origin.decode("latin-1").rstrip("/") == own_origin.rstrip("/"):
        return True
    return token is not None and hmac.compare_digest(token, signer.csrf_token(session).encode())
