"""rawgw.control.cookies: signature, expiry, tampering, key file, Set-Cookie attributes,
the CSRF rule and the paths a cookie may authenticate. Pure functions, injected clock."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rawgw.control.cookies import (
    COOKIE_NAME,
    SessionSigner,
    clear_cookie,
    cookie_allowed,
    csrf_ok,
    load_signing_key,
)

KEY = b"k" * 32


def test_round_trip_expiry_and_tampering() -> None:
    now = [1000.0]
    signer = SessionSigner(KEY, ttl_s=60, clock=lambda: now[0])
    s = signer.issue("octocat", admin=True)
    value = signer.encode(s)
    assert signer.decode(value) == s and s.expiry == 1060
    sid, login, admin, expiry, mac = value.split("|")
    assert signer.decode(f"{sid}|{login}|0|{expiry}|{mac}") is None  # admin flag flipped
    assert signer.decode(f"{sid}|evil|{admin}|{expiry}|{mac}") is None
    assert signer.decode(f"{sid}|{login}|{admin}|9999999999|{mac}") is None  # lifetime stretched
    assert signer.decode(value[:-1] + ("0" if value[-1] != "0" else "1")) is None
    assert SessionSigner(b"x" * 32, clock=lambda: now[0]).decode(value) is None  # other key
    assert signer.decode("garbage") is None
    now[0] = 1060.0
    assert signer.decode(value) is None  # expired


def test_cookie_header_and_set_cookie() -> None:
    signer = SessionSigner(KEY, ttl_s=60, clock=lambda: 1000.0)
    s = signer.issue("octocat", admin=False)
    header = f"a=b; {COOKIE_NAME}=bogus; {COOKIE_NAME}={signer.encode(s)}".encode()
    assert signer.from_cookie_header(header) == s
    assert signer.from_cookie_header(None) is None and signer.from_cookie_header(b"a=b") is None
    name, value = signer.set_cookie(s, secure=False)
    assert name == b"set-cookie"
    assert value.endswith(b"; Path=/; Max-Age=60; HttpOnly; SameSite=Strict")
    assert signer.set_cookie(s, secure=True)[1].endswith(b"SameSite=Strict; Secure")
    assert clear_cookie(True)[1] == f"{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure".encode()
    assert "k" * 8 not in repr(signer)


def test_csrf_rule() -> None:
    signer = SessionSigner(KEY, clock=lambda: 1000.0)
    s = signer.issue("octocat", admin=True)
    own = "http://127.0.0.1:8080"
    assert csrf_ok(signer, s, b"GET", None, own, None)
    assert csrf_ok(signer, s, b"POST", b"http://127.0.0.1:8080", own, None)
    assert not csrf_ok(signer, s, b"POST", b"http://evil.example", own, None)
    assert not csrf_ok(signer, s, b"DELETE", None, own, None)
    token = signer.csrf_token(s).encode()
    assert csrf_ok(signer, s, b"DELETE", b"http://evil.example", own, token)
    other = signer.issue("octocat", admin=True)
    assert not csrf_ok(signer, s, b"POST", None, own, signer.csrf_token(other).encode())


def test_cookie_never_on_proxied_paths() -> None:
    for path in ("/admin", "/admin/keys", "/auth/me", "/session/status", "/metrics.json", "/dashboard"):
        assert cookie_allowed(path), path
    for path in ("/v1/chat/completions", "/v1/models", "/openrouter/v1/chat/completions", "/administrator", "/"):
        assert not cookie_allowed(path), path


def test_signing_key_file(tmp_path: Path) -> None:
    key = load_signing_key(str(tmp_path))
    path = tmp_path / "gateway.d" / "session.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_signing_key(str(tmp_path)) == key  # kept across restarts
    path.unlink()
    assert load_signing_key(str(tmp_path)) != key  # rotated when absent
