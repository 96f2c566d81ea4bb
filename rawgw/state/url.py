"""State server URLs: ``redis://``, ``rediss://`` (TLS) and ``unix://``.

Accepted forms (issue 12)::

    redis://[user:pass@]host[:port][/db]     plain TCP, port 6379 by default
    rediss://[user:pass@]host[:port][/db]    TLS, verified against the system trust store
                                             (or SSL_CERT_FILE) via ssl.create_default_context()
    unix:///path/to/redis.sock[?db=N]        a local socket; credentials as unix://user:pass@/path

``masked()`` is the only form that may reach a log, an error, a metric or ``rawgw check``:
the password is replaced by ``***``. Every ValueError raised here names the URL masked.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["StateURL", "mask_url", "parse_state_url"]

SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PORT = 6379
# //user:pass@ or //:pass@ — what must never be shown, even in a URL we could not parse;
# greedy up to the last "@" so that an unencoded "@" or "/" in the password is masked too
_USERINFO = re.compile(r"(//[^/@:]*):.*@")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (works on URLs that do not parse)."""
    return _USERINFO.sub(r"\1:***@", url)


@dataclass(frozen=True, slots=True)
class StateURL:
    """A parsed state server address; ``password`` never appears in a repr."""

    scheme: str  # "redis" | "rediss" | "unix"
    host: str = ""  # TCP schemes only
    port: int = DEFAULT_PORT
    path: str = ""  # unix scheme only: the socket path
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    def masked(self) -> str:
        """The URL as it may be shown: password replaced by ``***``."""
        auth = ""
        if self.username is not None or self.password is not None:
            auth = (self.username or "") + (":***" if self.password is not None else "") + "@"
        if self.scheme == "unix":
            db = f"?db={self.db}" if self.db else ""
            return f"unix://{auth}{self.path}{db}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{auth}{host}:{self.port}/{self.db}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying client context for ``rediss://`` (honours SSL_CERT_FILE), else None."""
        if not self.tls:
            return None
        return ssl.create_default_context()


def parse_state_url(url: str) -> StateURL:
    """Parse a state server URL; ValueError (with the URL masked) when it is not usable."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        port_value = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"state url {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"state url {shown!r}: scheme must be one of redis://, rediss://, unix://")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password == "":
        password = None
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"db"})
    if unknown:
        raise ValueError(f"state url {shown!r}: unknown query parameter(s) {', '.join(unknown)}")
    if scheme == "unix":
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"state url {shown!r}: unix:// needs an absolute socket path (unix:///run/redis.sock)")
        if parts.hostname:
            raise ValueError(f"state url {shown!r}: unix:// takes no host (write unix:///path, three slashes)")
        db = _db(query.get("db", ["0"])[-1], shown)
        return StateURL(scheme, path=path, db=db, username=username, password=password)
    if not parts.hostname:
        raise ValueError(f"state url {shown!r}: missing host")
    if "db" in query:
        raise ValueError(f"state url {shown!r}: give the database as the path (redis://host:6379/2)")
    db_text = parts.path.lstrip("/")
    if "/" in db_text:
        raise ValueError(f"state url {shown!r}: the path must be a database number")
    db = _db(db_text or "0", shown)
    port = DEFAULT_PORT if port_value is None else port_value
    if port == 0:
        raise ValueError(f"state url {shown!r}: port must be 1-65535")
    return StateURL(scheme, host=parts.hostname, port=port, db=db, username=username, password=password)


def _db(text: str, shown: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"state url {shown!r}: database must be a non-negative integer, got {text!r}")
    return int(text)
