"""Every use of h11's private API, in one place (tests/test_h11compat.py fails loudly
if h11 changes any of them).

- ``h11.Request/Response(..., _parsed=True)``: skips h11's per-header regex
  re-validation for heads whose names and values were already validated (parsed
  by h11 from a peer, checked by the config loader, or our constants). Framing
  checks (Content-Length/Transfer-Encoding) still run.
- ``Headers._full_items``: h11's backing list of (raw name, lower name, value);
  scanning it is ~6× faster than ``Sequence.__iter__`` over ``Headers``.
- ``h11._headers.Headers`` and ``object.__setattr__`` on a (frozen) ``h11.Request``:
  the server leg drops header fields with "_" in their names and rewrites an
  absolute-form target in place, so the request the gateway dispatches is the one
  h11 parsed (no second validation pass).

rawgw does not monkeypatch h11: strict chunk lines are checked by
``rawgw.http.strict.ChunkLines``.
"""

from __future__ import annotations

from collections.abc import Iterable

import h11
from h11._headers import Headers

Header = tuple[bytes, bytes]


def trusted_request(method: bytes, target: bytes, headers: list[Header]) -> h11.Request:
    """An h11 Request built from already-validated parts (no per-header regexes)."""
    return h11.Request(method=method, target=target, headers=headers, _parsed=True)


def trusted_response(status: int, headers: list[Header], reason: bytes) -> h11.Response:
    """An h11 Response built from already-validated parts (no per-header regexes)."""
    return h11.Response(status_code=status, headers=headers, reason=reason, _parsed=True)


def plain_headers(headers: Iterable[Header]) -> list[Header]:
    """h11's Headers as a plain (lowercase name, value) list, once per message."""
    items = getattr(headers, "_full_items", None)
    if items is not None:
        return [(name, value) for _, name, value in items]
    return list(headers)


def full_items(request: h11.Request) -> list[tuple[bytes, bytes, bytes]]:
    """h11's (raw name, lowercase name, value) list: no Sequence iteration in Python."""
    items = getattr(request.headers, "_full_items", None)
    return items if items is not None else [(n, n, v) for n, v in request.headers]


def replace_headers(request: h11.Request, items: list[tuple[bytes, bytes, bytes]]) -> None:
    """Give a parsed request a subset of its own ``full_items`` (already validated)."""
    object.__setattr__(request, "headers", Headers(items))


def replace_target(request: h11.Request, target: bytes) -> None:
    """Rewrite a parsed request's target (absolute-form to origin-form)."""
    object.__setattr__(request, "target", target)
