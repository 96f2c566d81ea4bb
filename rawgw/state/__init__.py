"""Shared state across processes and instances on Redis/Valkey (issue 12).

The gateway reaches it through ``backend`` (LocalState, the in-process default, or
RedisState when ``[state] url`` is set):

- ``url``: ``redis://``, ``rediss://``, ``unix://`` parsing, ``masked()`` for display;
- ``client``: one pipelined RESP2 connection per process over ``hiredis.Reader``, every
  call bounded by ``timeout_ms``, background reconnect, pub/sub on a second connection;
- ``limiter``: RPM + TPM token buckets of a gateway key in one atomic Lua script;
- ``shared``: key events (cooldown, disabled, breaker), the half-open probe lock, the
  response cache and per-minute usage counters.

Every failure is a ``StateError``: the gateway answers from in-process state instead.
"""
