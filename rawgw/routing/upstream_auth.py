"""SPEC 5.4: how a provider key is presented upstream — the one copy.

OpenAI-compatible providers take ``Authorization: Bearer``; Anthropic takes
``x-api-key`` plus an ``anthropic-version`` (the client's own, when it sent one).
"""

from __future__ import annotations

Header = tuple[bytes, bytes]

ANTHROPIC_VERSION = b"2023-06-01"


def auth_headers(provider_type: str, key: str, client_sent_version: bool = False) -> list[Header]:
    """The credential headers for one upstream request."""
    if provider_type == "anthropic":
        out = [(b"x-api-key", key.encode())]
        if not client_sent_version:
            out.append((b"anthropic-version", ANTHROPIC_VERSION))
        return out
    return [(b"authorization", b"Bearer " + key.encode())]
