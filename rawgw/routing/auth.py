"""Gateway-key authentication (SPEC 5.1): Bearer or x-api-key, constant-time compare."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from rawgw.config import GatewayKey


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The credential the client sent, if any (Authorization: Bearer, else x-api-key)."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and api_key is None:
            api_key = value.strip()
    return api_key


def authenticate(keys: tuple[GatewayKey, ...], encoded: list[bytes], presented: bytes | None) -> GatewayKey | None:
    """The matching gateway key or None; every key is compared, so timing tells nothing."""
    if presented is None:
        return None
    match: GatewayKey | None = None
    for key, value in zip(keys, encoded):
        if hmac.compare_digest(value, presented):
            match = key
    return match
