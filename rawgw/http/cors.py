"""CORS (Fetch standard) for browser clients: one policy object built at config load."""

from __future__ import annotations

Header = tuple[bytes, bytes]

# With CORS on, the gateway's Access-Control-* answer replaces the provider's.
CORS_RESPONSE_HEADERS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-max-age",
    }
)

# The request headers the gateway accepts from a browser (and forwards where they matter).
ALLOW_HEADERS = (
    b"authorization, content-type, x-api-key, anthropic-version, anthropic-beta, "
    b"anthropic-dangerous-direct-browser-access, openai-organization, openai-project, openai-beta, "
    b"http-referer, x-title, x-request-id, x-session-id, x-rawgw-timeout, x-stainless-os, x-stainless-lang, "
    b"x-stainless-package-version, x-stainless-runtime, x-stainless-runtime-version, "
    b"x-stainless-arch, x-stainless-retry-count, x-stainless-timeout, x-stainless-helper-method, cache-control"
)
ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"


class Cors:
    """Which origins may call the gateway from a browser, and the headers that says so."""

    __slots__ = ("any", "enabled", "origins")

    def __init__(self, origins: tuple[str, ...] | list[str]) -> None:
        self.origins = frozenset(o.encode("latin-1") for o in origins)
        self.enabled = bool(origins)
        self.any = b"*" in self.origins

    def headers(self, origin: bytes | None) -> list[Header]:
        """Added to every answer to a request with this ``Origin``."""
        if not self.enabled:
            return []
        if self.any:
            return [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", b"*")]
        if origin is not None and origin in self.origins:
            return [(b"access-control-allow-origin", origin), (b"vary", b"Origin"), (b"access-control-expose-headers", b"*")]
        return []

    def preflight(self, origin: bytes) -> list[Header]:
        """The 204 answer to ``OPTIONS`` with an ``Origin``: a fixed allow list, never an echo."""
        headers = self.headers(origin)
        if not headers:
            return []
        headers += [
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", ALLOW_HEADERS),
            (b"access-control-max-age", b"600"),
        ]
        return headers

    def early_error_headers(self) -> list[Header]:
        """For errors written before a request could be parsed (400/408/431): no Origin known."""
        return [(b"access-control-allow-origin", b"*")] if self.any else []
