"""An IMF-fixdate ``Date`` value, formatted at most once per second (RFC 9110 §5.6.7)."""

from __future__ import annotations

import time
from email.utils import formatdate

_cached_second = -1
_cached_value = b""


def http_date() -> bytes:
    global _cached_second, _cached_value
    now = int(time.time())
    if now != _cached_second:
        _cached_value = formatdate(now, usegmt=True).encode("ascii")
        _cached_second = now
    return _cached_value
