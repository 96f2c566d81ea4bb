"""A whole response the gateway makes itself, as a value.

Local endpoints (health, metrics, model lists, the admin API, sign-in) return a
``Reply``; the dispatcher adds the per-request headers (request id, CORS, timing)
and writes it. Endpoint code never touches a connection or an exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

Header = tuple[bytes, bytes]

JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: bytes = JSON
    headers: tuple[Header, ...] = ()

    @classmethod
    def json(cls, status: int, value: object, headers: tuple[Header, ...] = ()) -> Reply:
        return cls(status, orjson.dumps(value), JSON, headers)
