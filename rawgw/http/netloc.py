"""Host and authority text (RFC 3986 §3.2.2: an IPv6 literal goes in brackets)."""

from __future__ import annotations


def bracket(host: str) -> str:
    """``::1`` → ``[::1]``; names and IPv4 addresses unchanged."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def authority(host: str, port: int, default_port: int | None = None) -> str:
    """``host[:port]``, the port left out when it is the scheme's default."""
    h = bracket(host)
    return h if port == default_port else f"{h}:{port}"
