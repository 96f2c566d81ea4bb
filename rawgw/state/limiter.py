"""Cluster-wide gateway-key rate limits: RPM and TPM token buckets in ONE atomic script.

One ``EVALSHA`` per request (``EVAL`` once after ``NOSCRIPT``, e.g. a restarted server)
reserves 1 request and N tokens (the caller's prompt estimate + ``max_tokens``) from the
key's two buckets, all or nothing: when either bucket lacks what is asked, neither is
touched. ``refund()`` gives back the tokens the response did not use.

Semantics match ``rawgw.routing.ratelimit`` (SPEC 5) with workers=1: a bucket holds at
most ``burst`` (at least 1), refills at ``rate_per_minute / 60`` per second, starts
full. The TPM bucket's capacity is ``tpm_burst`` (default: one minute of tokens).
Differences, on purpose: the clock is the server's (``redis.call('TIME')``), so every
process and instance shares one time line whatever its own clock says; a reservation
larger than the TPM capacity can never succeed and says so (``reason="too_large"``)
instead of waiting forever.

Storage: one hash per gateway key, ``{<prefix>rl:v1:<key name>}`` (the braces are a
Redis Cluster hash tag: the one key of the script always lives in one slot), fields
``r`` (request tokens), ``t`` (TPM tokens), ``s`` (stamp, ms). Its PEXPIRE is the time
until both buckets are full again, after which a missing hash and a full bucket are the
same thing: idle keys vanish, and memory eviction of the hash (volatile-* policies)
only ever errs toward allowing. The ``v1`` is the script's version: a rolling deploy
with a changed layout uses ``v2`` keys and never reads the old ones. The key name is
the gateway key's ``name`` from the config, never its secret.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from rawgw.state.client import StateClient, StateReplyError

__all__ = ["LIMITER_VERSION", "Decision", "SharedLimiter"]

LIMITER_VERSION = "v1"

# KEYS[1] the key's hash.  ARGV: 1 rpm (0: no RPM limit), 2 rpm burst, 3 tpm (0: none),
# 4 tpm burst, 5 tokens to reserve, 6 now in ms ("" = server TIME; tests only).
# Returns {allowed, reason, rpm remaining, rpm reset ms, tpm remaining, tpm reset ms,
# retry-after ms} — integers only (Lua numbers are truncated to integers on return).
# reason: 0 allowed, 1 rpm, 2 tpm, 3 tpm reservation larger than the bucket.
LIMIT_SCRIPT = """-- rawgw limiter v1: RPM + TPM token buckets, all or nothing
local rpm = tonumber(ARGV[1])
local rcap = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local tcap = tonumber(ARGV[4])
local need = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local h = redis.call('HMGET', KEYS[1], 'r', 't', 's')
local r = tonumber(h[1]) or rcap
local tk = tonumber(h[2]) or tcap
local s = tonumber(h[3]) or now
local dt = now - s
if dt < 0 then dt = 0 end
local rrate = rpm / 60000
local trate = tpm / 60000
if rpm > 0 then r = math.min(rcap, r + dt * rrate) end
if tpm > 0 then tk = math.min(tcap, tk + dt * trate) end
local reason = 0
local retry = 0
if rpm > 0 and r < 1 then
  reason = 1
  retry = (1 - r) / rrate
end
if tpm > 0 and need > tk then
  if need > tcap then
    reason = 3
    retry = -1
  else
    if reason == 0 then reason = 2 end
    if retry >= 0 then retry = math.max(retry, (need - tk) / trate) end
  end
end
if reason == 0 then
  if rpm > 0 then r = r - 1 end
  if tpm > 0 then tk = tk - need end
end
local rreset = 0
local treset = 0
if rpm > 0 then rreset = (rcap - r) / rrate end
if tpm > 0 then treset = (tcap - tk) / trate end
if reason == 0 or reason == 1 or reason == 2 then
  redis.call('HSET', KEYS[1], 'r', string.format('%.17g', r), 't', string.format('%.17g', tk), 's', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(rreset, treset)) + 1000)
end
local allowed = 0
if reason == 0 then allowed = 1 end
return {allowed, reason, math.floor(r), math.ceil(rreset), math.floor(tk), math.ceil(treset), math.ceil(retry)}
"""

# KEYS[1] the key's hash.  ARGV: 1 tokens to give back, 2 tpm burst.  A refund never
# lifts the bucket above its capacity; a hash that already expired (full) stays absent.
REFUND_SCRIPT = """-- rawgw limiter v1: refund unused TPM tokens
local t = tonumber(redis.call('HGET', KEYS[1], 't'))
if not t then return 0 end
local n = math.min(tonumber(ARGV[2]), t + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 't', string.format('%.17g', n))
return 1
"""

REASONS = {0: "", 1: "rpm", 2: "tpm", 3: "too_large"}


@dataclass(frozen=True, slots=True)
class Decision:
    """One reservation's outcome, enough for ``x-ratelimit-*`` and ``Retry-After``.

    ``reason``: "" (allowed), "rpm", "tpm" (a bucket lacks what was asked; both may be
    short, "rpm" is reported then), "too_large" (the reservation exceeds the TPM bucket:
    no wait helps, ``retry_after_s`` is None). Remaining counts are after this request;
    ``reset_*_s`` is the time until that bucket is full again.
    """

    allowed: bool
    reason: str
    limit_requests: int
    remaining_requests: int
    reset_requests_s: float
    limit_tokens: int
    remaining_tokens: int
    reset_tokens_s: float
    retry_after_s: float | None

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The x-ratelimit-* response headers (requests, and tokens when TPM is set)."""
        out = []
        if self.limit_requests:
            out += [
                (b"x-ratelimit-limit-requests", str(self.limit_requests).encode()),
                (b"x-ratelimit-remaining-requests", str(self.remaining_requests).encode()),
            ]
        if self.limit_tokens:
            out += [
                (b"x-ratelimit-limit-tokens", str(self.limit_tokens).encode()),
                (b"x-ratelimit-remaining-tokens", str(self.remaining_tokens).encode()),
            ]
        if self.retry_after_s is not None and not self.allowed:
            out.append((b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode()))
        return out


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class SharedLimiter:
    """RPM/TPM limits of gateway keys, kept on the state server (see module docstring).

    Every method is one round trip bounded by the client's ``timeout_ms`` and raises
    ``StateError`` when the server is down, slow or answers an error: the caller then
    decides with its in-process ``RateLimiter`` (limits become per process).
    """

    def __init__(self, client: StateClient, prefix: str = "rawgw:") -> None:
        self.client = client
        self.prefix = prefix
        self._limit_sha = _sha1(LIMIT_SCRIPT)
        self._refund_sha = _sha1(REFUND_SCRIPT)

    def key(self, key_name: str) -> str:
        """The hash of one gateway key (hash-tagged, versioned; the name, never the secret)."""
        return "{" + f"{self.prefix}rl:{LIMITER_VERSION}:{key_name}" + "}"

    async def reserve(
        self,
        key_name: str,
        *,
        rpm: int,
        rpm_burst: int = 0,
        tpm: int = 0,
        tpm_burst: int = 0,
        tokens: int = 0,
        timeout_ms: float | None = None,
        _now_ms: float | None = None,
    ) -> Decision:
        """Take 1 request from the RPM bucket and ``tokens`` from the TPM bucket, or neither.

        ``rpm``/``tpm`` 0 means that bucket is not limited. ``rpm_burst`` 0 means 1 (as
        today's ``rate_limit_burst``); ``tpm_burst`` 0 means ``tpm``. ``_now_ms`` replaces
        the server clock: for tests that compare decisions with the in-process limiter.
        """
        rcap = max(1, rpm_burst or 1)
        tcap = max(1, tpm_burst or tpm)
        args = (rpm, rcap, tpm, tcap, max(0, tokens), "" if _now_ms is None else repr(float(_now_ms)))
        reply = await self._eval(self._limit_sha, LIMIT_SCRIPT, self.key(key_name), args, timeout_ms)
        allowed, reason, r_left, r_reset, t_left, t_reset, retry = (int(x) for x in reply)
        return Decision(
            allowed=bool(allowed),
            reason=REASONS.get(reason, "rpm"),
            limit_requests=rpm,
            remaining_requests=max(0, r_left) if rpm else 0,
            reset_requests_s=r_reset / 1000.0,
            limit_tokens=tpm,
            remaining_tokens=max(0, t_left) if tpm else 0,
            reset_tokens_s=t_reset / 1000.0,
            retry_after_s=None if retry < 0 else retry / 1000.0,
        )

    async def refund(self, key_name: str, tokens: int, *, tpm: int, tpm_burst: int = 0, timeout_ms: float | None = None) -> None:
        """Give back ``tokens`` reserved but not used (reservation − real usage), capped at capacity."""
        if tokens <= 0 or tpm <= 0:
            return
        tcap = max(1, tpm_burst or tpm)
        await self._eval(self._refund_sha, REFUND_SCRIPT, self.key(key_name), (tokens, tcap), timeout_ms)

    async def _eval(self, sha: str, script: str, key: str, args: tuple[int | str, ...], timeout_ms: float | None) -> list[int]:
        try:
            reply = await self.client.call("EVALSHA", sha, 1, key, *args, timeout_ms=timeout_ms)
        except StateReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # First use on this server (or it restarted empty): EVAL runs and caches it.
            reply = await self.client.call("EVAL", script, 1, key, *args, timeout_ms=timeout_ms)
        return reply  # type: ignore[no-any-return]
