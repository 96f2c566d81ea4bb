"""X-Session-ID tracking (the Node gateway's ``/session/...``).

Wiring (for the dispatcher):

- on a proxied request: ``sid = valid_session_id(header)``; when not None, after the
  request is recorded call ``tracker.record(sid, key_name, model, prompt, completion)``
  (from the same place the Recorder counts tokens) and echo ``x-session-id`` in the
  response headers. Response bodies are never touched (SPEC 5.6). An invalid header is
  ignored: no session is made up.
- ``GET /session/status``, ``GET /session/{id}``, ``DELETE /session/{id}``:
  ``tracker.handle(principal, method, path)`` with the rawgw.control.admin_api Principal of
  the caller's key (or signed-in user). A session is visible to the key that made it, and
  to admins; others get 404 (not 403: a session id is not confirmed to exist).
- configuration: ``server.session_ttl_s`` (idle lifetime) and ``server.max_sessions`` (LRU
  bound); ``reconfigure`` on reload.

All state is in memory, per process; the clock is injected (loop.time or time.monotonic
for ages, time.time for the wall-clock stamps shown).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from rawgw.control.admin_api import Principal, error
from rawgw.http.reply import Reply

_VALID: Final = re.compile(rb"[\x21-\x7e]{1,128}")
MAX_MODELS: Final = 64  # a session naming more models is not made bigger than this


def valid_session_id(value: bytes | None) -> str | None:
    """1-128 visible ASCII characters, else None (the header is then ignored)."""
    if value is None or not _VALID.fullmatch(value):
        return None
    return value.decode("ascii")


@dataclass(slots=True)
class SessionStats:
    id: str
    key_name: str
    first_seen: float
    last_seen: float
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    models: set[str] = field(default_factory=set)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key_name": self.key_name,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "models": sorted(self.models),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


class SessionTracker:
    def __init__(self, ttl_s: float = 3600.0, max_sessions: int = 10000, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.clock = clock
        # least recently seen first: eviction and expiry both pop from the front
        self.sessions: OrderedDict[tuple[str, str], SessionStats] = OrderedDict()

    def reconfigure(self, ttl_s: float, max_sessions: int) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._expire(self.clock())

    def _expire(self, now: float) -> None:
        s = self.sessions
        while s:
            oldest = next(iter(s.values()))
            if now - oldest.last_seen < self.ttl_s and len(s) <= self.max_sessions:
                break
            s.popitem(last=False)

    def record(self, sid: str, key_name: str, model: str | None, prompt: int = 0, completion: int = 0) -> SessionStats:
        """Count one request. Sessions are per key: two keys using the same id do not
        see (or add to) each other's counters."""
        now = self.clock()
        slot = (key_name, sid)
        st = self.sessions.get(slot)
        if st is None or now - st.last_seen >= self.ttl_s:
            st = SessionStats(sid, key_name, now, now)
            self.sessions[slot] = st
        self.sessions.move_to_end(slot)
        st.last_seen = now
        st.requests += 1
        st.prompt_tokens += prompt
        st.completion_tokens += completion
        if model and len(st.models) < MAX_MODELS:
            st.models.add(model)
        self._expire(now)
        return st

    def visible(self, principal: Principal) -> list[SessionStats]:
        self._expire(self.clock())
        return [s for s in self.sessions.values() if principal.admin or s.key_name == principal.name]

    def handle(self, principal: Principal | None, method: bytes, path: str) -> Reply:
        if principal is None:
            return error(401, "a gateway key is required", "invalid_api_key")
        rest = path.partition("?")[0][len("/session/") :]
        if rest == "status":
            if method != b"GET":
                return error(405, "use GET", "method_not_allowed", ((b"allow", b"GET"),))
            return Reply.json(200, {"sessions": [s.view() for s in reversed(self.visible(principal))]})
        from urllib.parse import unquote

        sid = unquote(rest)
        found = [s for s in self.visible(principal) if s.id == sid]
        if not found or valid_session_id(sid.encode("utf-8", "replace")) is None:
            return error(404, "no such session for this key", "session_not_found")
        if method == b"GET":
            views = [s.view() for s in found]
            return Reply.json(200, views[0] if len(views) == 1 else {"sessions": views})
        if method == b"DELETE":
            for s in found:
                del self.sessions[(s.key_name, s.id)]
            return Reply.json(200, {"deleted": sid})
        return error(405, "use GET or DELETE", "method_not_allowed", ((b"allow", b"GET, DELETE"),))
