"""Response cache for non-streaming chat completions (``[cache]``).

Keyed by the canonical request — the upstream model after mapping plus the body
with sorted keys — and the gateway key's scope, so two keys never share answers.
LRU with a TTL and ``max_entries``; only 2xx answers are stored. Per process; with
``[state] url`` an entry is also stored on the state server (``encode_entry``), so
that every process and instance sharing it finds it.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

# Shared-cache keys of the /v1/models lists (rawgw.endpoints.models) start with this; the
# admin cache clear (rawgw.state.shared) keeps them: model lists are not responses.
MODELS_CACHE_PREFIX = b"models:"

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    headers: tuple[Header, ...]
    body: bytes
    provider: str
    expires: float


class ResponseCache:
    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()

    @staticmethod
    def key(scope: str, upstream_model: str | None, parsed: dict[str, Any], path: str) -> bytes:
        body = dict(parsed)
        body["model"] = upstream_model
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(scope.encode() + b"\0" + path.encode() + b"\0" + canonical).digest()

    def get(self, key: bytes, now: float | None = None) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= (time.monotonic() if now is None else now):
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry

    def put(self, key: bytes, status: int, headers: list[Header], body: bytes, provider: str) -> None:
        if not 200 <= status < 300:
            return
        self.entries[key] = Entry(status, tuple(headers), body, provider, time.monotonic() + self.ttl_s)
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)


def encode_entry(status: int, headers: list[Header] | tuple[Header, ...], body: bytes, provider: str) -> bytes:
    """A cached response as stored on the state server: JSON head, NUL, the body bytes."""
    head = orjson.dumps({"s": status, "p": provider, "h": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]})
    return head + b"\0" + body  # orjson escapes control characters: no NUL in the head


def decode_entry(data: bytes) -> tuple[int, list[Header], bytes, str] | None:
    head, sep, body = data.partition(b"\0")
    if not sep:
        return None
    try:
        doc = orjson.loads(head)
        headers = [(str(n).encode("latin-1"), str(v).encode("latin-1")) for n, v in doc["h"]]
        return int(doc["s"]), headers, body, str(doc["p"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, UnicodeEncodeError):
        return None
